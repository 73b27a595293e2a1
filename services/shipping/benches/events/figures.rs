//! The figures of a phase, from what the clients saw and the shipments shipping stored. Pure:
//! no processes, no clock.

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::fleet::{Cpu, Shipment};

/// p50, p99 and the largest of a set of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest-rank percentiles of `values` (0 for none).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let r = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values
                .get(r.clamp(1, values.len().max(1)) - 1)
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            p50: rank(50.0),
            p99: rank(99.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }

    /// Of call durations.
    pub fn of_durations(calls: &[Duration]) -> Self {
        Self::of(calls.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }
}

impl fmt::Display for Quantiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: f64| {
            if v < 100.0 {
                format!("{v:.1} ms")
            } else {
                format!("{v:.0} ms")
            }
        };
        write!(
            f,
            "p50 {}, p99 {}, max {}",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// The path from commit (or publish) to handled, over a phase's shipments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Handled {
    /// Events handled.
    pub events: usize,
    /// From the first `placedAt` to the last `createdAtMs`, seconds.
    pub span_s: f64,
    /// `createdAtMs - placedAt` of each shipment.
    pub latency: Quantiles,
}

impl Handled {
    /// From the shipments of one phase's orders.
    pub fn of(shipments: &[Shipment]) -> Result<Self> {
        let pairs: Vec<(i64, i64)> = shipments
            .iter()
            .map(|s| {
                let placed: jiff::Timestamp = s
                    .placed_at
                    .parse()
                    .with_context(|| format!("placedAt {:?}", s.placed_at))?;
                Ok((placed.as_millisecond(), s.created_at_ms))
            })
            .collect::<Result<_>>()?;
        let first = pairs.iter().map(|p| p.0).min().unwrap_or_default();
        let last = pairs.iter().map(|p| p.1).max().unwrap_or_default();
        Ok(Self {
            events: pairs.len(),
            span_s: ((last - first).max(1) as f64) / 1e3,
            latency: Quantiles::of(pairs.iter().map(|(p, h)| (h - p) as f64).collect()),
        })
    }

    /// Events a second from the first commit to the last handled.
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.span_s
    }
}

/// CPU seconds per 1,000 of `n`.
pub fn per_thousand(seconds: f64, n: usize) -> f64 {
    seconds / n.max(1) as f64 * 1000.0
}

/// Both services' CPU over a phase, per 1,000 orders (orders) and events (shipping).
pub fn cpu_line(cpu: Cpu, orders: usize, events: usize) -> String {
    format!(
        "CPU: shipping {:.3} s per 1,000 events ({:.2} s), orders {:.3} s per 1,000 orders ({:.2} s, API and relay)",
        per_thousand(cpu.shipping, events),
        cpu.shipping,
        per_thousand(cpu.orders, orders),
        cpu.orders
    )
}
