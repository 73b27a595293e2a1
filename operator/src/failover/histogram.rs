//! Prometheus histograms as the traffic figures read them: cumulative counts by bucket upper
//! bound (`le`), the difference of two scrapes of one pod (what `increase(...[window])` sees),
//! the sum over pods (`sum by (le)`), and a quantile by linear interpolation within its bucket,
//! as `histogram_quantile` computes it.
//!
//! Pure: numbers in, numbers out. No data gives `None`, never a made-up value.

/// Cumulative bucket counts, ascending by upper bound; a complete histogram ends with `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// A histogram from `(upper bound, cumulative count)` pairs in any order; samples of one
    /// bound (several series of one metric) are summed.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let mut h = Self::default();
        for (le, count) in buckets {
            h.add(le, count);
        }
        h
    }

    /// Adds `count` to the bucket of upper bound `le` (a NaN bound or a count that cannot be a
    /// counter's is ignored). Keeps the buckets in order: a scrape has a dozen bounds.
    pub fn add(&mut self, le: f64, count: f64) {
        if le.is_nan() || !count.is_finite() || count < 0.0 {
            return;
        }
        match self.buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
            Ok(i) => self.buckets[i].1 += count,
            Err(i) => self.buckets.insert(i, (le, count)),
        }
    }

    /// The bucket bounds and cumulative counts.
    pub fn buckets(&self) -> &[(f64, f64)] {
        &self.buckets
    }

    /// Observations counted: the `+Inf` bucket's count; `None` without one.
    pub fn count(&self) -> Option<f64> {
        self.buckets
            .last()
            .filter(|(le, _)| *le == f64::INFINITY)
            .map(|(_, c)| *c)
    }

    /// Whether this scrape can follow `earlier`: the same bounds, and no count lower (else the
    /// process restarted and its counters began again). [`Histogram::since`] without the copy.
    pub fn follows(&self, earlier: &Histogram) -> bool {
        self.buckets.len() == earlier.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .all(|(&(le, now), &(le0, then))| le == le0 && now >= then)
    }

    /// The observations since `earlier`, a previous scrape of the same series: `None` when the
    /// bounds differ or a count went down (the process restarted; its counters began again).
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        if self.buckets.len() != earlier.buckets.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.buckets.len());
        for (&(le, now), &(le0, then)) in self.buckets.iter().zip(&earlier.buckets) {
            if le != le0 || now < then {
                return None;
            }
            out.push((le, now - then));
        }
        Some(Histogram { buckets: out })
    }

    /// The sum of several histograms, bucket by bucket (`sum by (le)`). Pods normally share
    /// their bounds; where one lacks a bound of another, its count at that bound is the count
    /// of its largest bound below it (observations known to be at or below it), so the sum stays
    /// cumulative. `None` when there is nothing to sum.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Histogram>) -> Option<Histogram> {
        let all: Vec<&Histogram> = all.into_iter().filter(|h| !h.buckets.is_empty()).collect();
        let first = all.first()?;
        if all.iter().all(|h| h.buckets.len() == first.buckets.len())
            && all.iter().all(|h| {
                h.buckets
                    .iter()
                    .zip(&first.buckets)
                    .all(|(a, b)| a.0 == b.0)
            })
        {
            let mut out = (*first).clone();
            for h in &all[1..] {
                for (o, (_, c)) in out.buckets.iter_mut().zip(&h.buckets) {
                    o.1 += c;
                }
            }
            return Some(out);
        }
        let mut bounds: Vec<f64> = all
            .iter()
            .flat_map(|h| h.buckets.iter().map(|(le, _)| *le))
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = bounds
            .into_iter()
            .map(|le| (le, all.iter().map(|h| h.at_or_below(le)).sum()))
            .collect();
        Some(Histogram { buckets })
    }

    /// The cumulative count of the largest bound at or below `le` (0 below the first bound).
    fn at_or_below(&self, le: f64) -> f64 {
        let i = self.buckets.partition_point(|(b, _)| *b <= le);
        i.checked_sub(1).map_or(0.0, |i| self.buckets[i].1)
    }

    /// The `q`-quantile (0 to 1) of the observations, as Prometheus's `histogram_quantile`: the
    /// bucket holding the `q · count`-th observation, and linear interpolation between its lower
    /// bound (0 for the first bucket) and its upper bound. In the `+Inf` bucket it is the largest
    /// finite bound. `None` without a `+Inf` bucket, a finite bucket or observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.buckets.len() < 2 {
            return None;
        }
        let total = self.count()?;
        if total <= 0.0 {
            return None;
        }
        // Counts must not go down from one bound to the next; a difference of scrapes taken
        // while the pod was counting may be off by an observation in flight.
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut running = 0.0_f64;
        for &(le, c) in &self.buckets {
            running = running.max(c);
            cumulative.push((le, running));
        }
        let rank = q * total;
        let b = cumulative.partition_point(|(_, c)| *c < rank);
        let last = cumulative.len() - 1;
        if b >= last {
            return Some(cumulative[last - 1].0);
        }
        let (upper, count) = cumulative[b];
        if b == 0 && upper <= 0.0 {
            return Some(upper);
        }
        let (lower, below) = match b.checked_sub(1) {
            Some(p) => cumulative[p],
            None => (0.0, 0.0),
        };
        let in_bucket = count - below;
        if in_bucket <= 0.0 {
            return Some(upper);
        }
        Some(lower + (upper - lower) * (rank - below) / in_bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn h(buckets: &[(f64, f64)]) -> Histogram {
        Histogram::from_buckets(buckets.iter().copied())
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantile_interpolates_within_the_bucket_as_prometheus_does() {
        // 100 observations: 90 at most 5 ms, 8 more at most 10 ms, 2 more at most 25 ms. The
        // 99th is the first of the two in (10, 25]: 10 + 15 · (99 − 98) / 2 = 17.5 ms; the
        // median is the 50th of the 90 in [0, 5]: 5 · 50 / 90 ms.
        let x = h(&[(0.005, 90.0), (0.01, 98.0), (0.025, 100.0), (INF, 100.0)]);
        assert!(close(x.quantile(0.99), 0.0175), "{:?}", x.quantile(0.99));
        assert!(close(x.quantile(0.5), 0.005 * 50.0 / 90.0));
        // Every observation in the first bucket: 0.99 of the way to its bound.
        let fast = h(&[(0.005, 200.0), (0.01, 200.0), (INF, 200.0)]);
        assert!(close(fast.quantile(0.99), 0.00495));
        // Two observations past the last finite bound: the largest finite bound.
        let slow = h(&[(0.1, 98.0), (1.0, 98.0), (INF, 100.0)]);
        assert!(close(slow.quantile(0.99), 1.0));
    }

    #[test]
    fn no_observations_or_no_inf_bucket_give_no_quantile() {
        // No data is no figure: never a 0.
        assert_eq!(h(&[(0.005, 0.0), (INF, 0.0)]).quantile(0.99), None);
        assert_eq!(h(&[(0.005, 3.0), (0.01, 4.0)]).quantile(0.99), None);
        assert_eq!(Histogram::default().quantile(0.99), None);
        assert_eq!(h(&[(INF, 5.0)]).quantile(0.99), None);
    }

    #[test]
    fn the_window_is_the_difference_of_two_scrapes() {
        // What the window saw is later minus earlier, bucket by bucket; a reset or other bounds
        // say nothing.
        let t0 = h(&[(0.005, 1000.0), (0.1, 1010.0), (INF, 1010.0)]);
        let t1 = h(&[(0.005, 1090.0), (0.1, 1110.0), (INF, 1110.0)]);
        let d = t1.since(&t0).expect("same series");
        assert_eq!(d.buckets(), &[(0.005, 90.0), (0.1, 100.0), (INF, 100.0)]);
        // The 99th of 100 is the 9th of the 10 in (5 ms, 100 ms]: 5 + 95 · 9 / 10 ms.
        assert!(close(d.quantile(0.99), 0.005 + 0.095 * 0.9));
        assert_eq!(t0.since(&t1), None, "counts went down: a restart");
        assert!(t1.follows(&t0) && !t0.follows(&t1));
        assert_eq!(h(&[(0.01, 1.0), (INF, 1.0)]).since(&t0), None);
    }

    #[test]
    fn pods_sum_bucket_by_bucket_even_with_other_bounds() {
        // The sum over pods is per bound; a pod without a bound counts what it has below it.
        let a = h(&[(0.005, 10.0), (0.01, 20.0), (INF, 20.0)]);
        let b = h(&[(0.005, 5.0), (0.01, 5.0), (INF, 10.0)]);
        let s = Histogram::sum([&a, &b]).expect("two pods");
        assert_eq!(s.buckets(), &[(0.005, 15.0), (0.01, 25.0), (INF, 30.0)]);
        let c = h(&[(0.0075, 4.0), (INF, 4.0)]);
        let s = Histogram::sum([&a, &c]).expect("two pods");
        assert_eq!(
            s.buckets(),
            &[(0.005, 10.0), (0.0075, 14.0), (0.01, 24.0), (INF, 24.0)]
        );
        assert_eq!(Histogram::sum([]), None);
    }

    #[test]
    fn several_series_of_one_bound_add_up() {
        // Two routes' buckets of the same bound are one bucket of the pod.
        let x = h(&[
            (0.005, 3.0),
            (INF, 4.0),
            (0.005, 2.0),
            (INF, 2.0),
            (f64::NAN, 1.0),
        ]);
        assert_eq!(x.buckets(), &[(0.005, 5.0), (INF, 6.0)]);
        assert_eq!(x.count(), Some(6.0));
    }
}
