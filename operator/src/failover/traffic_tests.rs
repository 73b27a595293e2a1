//! Tests of the traffic figures: windows over scrapes, the figures of a group of pods compared
//! with hand-computed values, rounding, and when figures are written.

use super::*;

const INF: f64 = f64::INFINITY;
const W: Duration = Duration::from_secs(30);

fn sample(requests: f64, errors: f64, fast: f64, slow: f64) -> TrafficSample {
    // `fast` requests took at most 5 ms, `slow` ones at most 100 ms.
    TrafficSample {
        requests,
        errors,
        latency: Some(Histogram::from_buckets([
            (0.005, fast),
            (0.1, fast + slow),
            (INF, fast + slow),
        ])),
    }
}

fn rates(requests: f64, errors: f64, seconds: f64, hist: &[(f64, f64)]) -> PodRates {
    PodRates {
        seconds,
        requests,
        errors,
        latency: (!hist.is_empty()).then(|| Histogram::from_buckets(hist.iter().copied())),
    }
}

#[test]
fn a_window_gives_the_rates_between_its_baseline_and_the_newest_scrape() {
    // Scraped every second for 40 s at 10 requests a second, one of them failing: the rates
    // come from the newest scrape and the last one at or before the window's start, and the
    // history is thinned to a handful of samples.
    let t0 = Instant::now();
    let mut w = TrafficWindow::new(W);
    for s in 0..=40u32 {
        let n = f64::from(s) * 10.0;
        w.record(
            t0 + Duration::from_secs(u64::from(s)),
            Some(sample(n, n / 10.0, n, 0.0)),
        );
    }
    assert!(w.snaps.len() <= 9, "{} samples kept", w.snaps.len());
    let r = w.rates(t0 + Duration::from_secs(40)).expect("rates");
    assert!(r.seconds >= 30.0 && r.seconds <= 36.0, "{}", r.seconds);
    assert!((r.requests / r.seconds - 10.0).abs() < 1e-9);
    assert!((r.errors / r.requests - 0.1).abs() < 1e-9);
    let h = r.latency.expect("histogram");
    assert_eq!(h.count(), Some(r.requests));
}

#[test]
fn restarts_missing_counters_and_silence_give_no_rates() {
    // A counter that went down starts the history again; a scrape without the counter ends it;
    // a pod not scraped for a window has no rates.
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut w = TrafficWindow::new(W);
    w.record(at(0), Some(sample(100.0, 0.0, 100.0, 0.0)));
    assert_eq!(w.rates(at(0)), None, "one scrape is no rate");
    w.record(at(10), Some(sample(200.0, 0.0, 200.0, 0.0)));
    assert!(w.rates(at(10)).is_some());
    w.record(at(20), Some(sample(5.0, 0.0, 5.0, 0.0)));
    assert_eq!(w.rates(at(20)), None, "the restart forgot the history");
    w.record(at(30), Some(sample(25.0, 0.0, 25.0, 0.0)));
    let r = w.rates(at(30)).expect("rates since the restart");
    assert_eq!((r.requests, r.seconds), (20.0, 10.0));
    assert_eq!(w.rates(at(61)), None, "not scraped for a window");
    w.record(at(62), None);
    assert_eq!(w.rates(at(62)), None);
}

#[test]
fn figures_of_a_group_match_hand_computed_values() {
    // Pod a: 100 requests in 10 s, 10 failed, all within 5 ms. Pod b: 50 in 10 s, none failed,
    // 40 within 5 ms and 10 within 100 ms. Together: 15 requests a second, 10 / 150 failed,
    // and the 99th of 150 latencies (rank 148.5) lies 8.5 of the way through the 10 in
    // (5 ms, 100 ms]: 5 + 95 · 8.5 / 10 = 85.75 ms.
    let a = rates(
        100.0,
        10.0,
        10.0,
        &[(0.005, 100.0), (0.1, 100.0), (INF, 100.0)],
    );
    let b = rates(50.0, 0.0, 10.0, &[(0.005, 40.0), (0.1, 50.0), (INF, 50.0)]);
    let f = figures([&a, &b]).expect("two pods");
    assert!((f.requests_per_second - 15.0).abs() < 1e-9);
    assert!(f
        .error_ratio
        .is_some_and(|r| (r - 10.0 / 150.0).abs() < 1e-9));
    assert!(
        f.p99_seconds.is_some_and(|p| (p - 0.08575).abs() < 1e-9),
        "{:?}",
        f.p99_seconds
    );
    assert_eq!(f.pods, 2);
    // Rounded for status: three significant digits, the ratio to three decimals.
    let s = status(Some(&f), None, None, W, Time(jiff::Timestamp::UNIX_EPOCH)).expect("figures");
    assert_eq!(s.requests_per_second, Some(15.0));
    assert_eq!(s.error_ratio, Some(0.067));
    assert_eq!(s.p99_latency_millis, Some(85.8));
    assert_eq!((s.pods, s.window_seconds), (Some(2), Some(30)));
    assert_eq!((s.canary, s.stable), (None, None));
}

#[test]
fn no_data_is_no_figure() {
    // No pods: no figures at all. No requests: a rate of 0 (measured) but no error ratio and
    // no p99. Fewer than 100 requests or no histogram: no p99.
    assert_eq!(figures([]), None);
    assert_eq!(
        status(None, None, None, W, Time(jiff::Timestamp::UNIX_EPOCH)),
        None
    );
    let idle = rates(0.0, 0.0, 30.0, &[(0.005, 0.0), (INF, 0.0)]);
    let f = figures([&idle]).expect("one pod");
    assert_eq!(
        (f.requests_per_second, f.error_ratio, f.p99_seconds),
        (0.0, None, None)
    );
    let few = rates(99.0, 0.0, 30.0, &[(0.005, 99.0), (INF, 99.0)]);
    assert_eq!(figures([&few]).and_then(|f| f.p99_seconds), None);
    let no_histogram = rates(500.0, 5.0, 30.0, &[]);
    let f = figures([&no_histogram]).expect("one pod");
    assert_eq!((f.error_ratio, f.p99_seconds), (Some(0.01), None));
}

#[test]
fn three_significant_digits() {
    // Display rounding keeps three significant digits at any scale.
    assert_eq!(significant(1234.5), 1230.0);
    assert_eq!(significant(12.3456), 12.3);
    assert_eq!(significant(0.0123456), 0.0123);
    assert_eq!(significant(4.95), 4.95);
    assert_eq!(significant(0.0), 0.0);
}

fn figures_at(rps: f64, p99: Option<f64>, canary: bool) -> TrafficStatus {
    let f = TrafficFigures {
        requests_per_second: Some(rps),
        error_ratio: Some(0.0),
        p99_latency_millis: p99,
        pods: Some(2),
    };
    TrafficStatus {
        requests_per_second: f.requests_per_second,
        error_ratio: f.error_ratio,
        p99_latency_millis: f.p99_latency_millis,
        pods: f.pods,
        window_seconds: Some(30),
        observed_at: None,
        canary: canary.then(|| f.clone()),
        stable: canary.then_some(f),
    }
}

#[test]
fn figures_are_written_when_they_move_and_at_most_once_an_interval() {
    // The first figures go out at once; within the interval nothing does; after it only figures
    // that moved, or that are `refresh` old; figures that went are withdrawn after the interval.
    let p = PublishPolicy::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut pb = Publisher::default();
    assert!(!pb.offer(None, at(0), false, &p), "nothing to show");
    assert!(pb.offer(Some(figures_at(10.0, Some(5.0), false)), at(0), false, &p));
    assert!(!pb.offer(Some(figures_at(50.0, Some(5.0), false)), at(10), false, &p));
    assert!(
        !pb.offer(Some(figures_at(10.5, Some(5.4), false)), at(31), false, &p),
        "moved by less than a tenth: nothing changed, no write"
    );
    assert!(pb.offer(Some(figures_at(10.0, Some(6.0), false)), at(32), false, &p));
    assert!(!pb.offer(Some(figures_at(10.0, Some(6.0), false)), at(63), false, &p));
    assert!(
        pb.offer(Some(figures_at(10.0, Some(6.0), false)), at(332), false, &p),
        "refresh"
    );
    assert!(!pb.offer(None, at(340), false, &p));
    assert!(
        pb.offer(None, at(362), false, &p),
        "gone after the interval"
    );
    assert_eq!(pb.current(), None);
}

#[test]
fn an_analysis_is_published_at_once_and_refreshed_every_two_seconds() {
    // Canary figures appearing go out at once; while analysing, the interval is 2 s; figures
    // resumed from status are kept for an interval.
    let p = PublishPolicy::default();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut pb = Publisher::resume(Some(figures_at(10.0, Some(5.0), false)), at(0));
    assert!(!pb.offer(
        Some(figures_at(20.0, Some(5.0), false)),
        at(1000),
        false,
        &p
    ));
    assert!(pb.offer(Some(figures_at(10.0, Some(5.0), true)), at(1500), true, &p));
    assert!(!pb.offer(Some(figures_at(10.0, Some(50.0), true)), at(2500), true, &p));
    assert!(pb.offer(Some(figures_at(10.0, Some(50.0), true)), at(3600), true, &p));
    assert!(
        pb.offer(
            Some(figures_at(10.0, Some(50.0), false)),
            at(3700),
            false,
            &p
        ),
        "ended"
    );
    assert_eq!(pb.current().and_then(|t| t.canary.as_ref()), None);
}
