//! A process's memory as Linux reports it, for the tests and benchmarks that bound it.

use anyhow::{Context, Result};

/// Resident and peak resident memory (`VmRSS`, `VmHWM`) of process `pid` (a number, or
/// `"self"`), in MiB, from `/proc/<pid>/status`.
pub fn resident_mib(pid: &str) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in {path}"))?;
        let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory_below_its_peak() {
        let (rss, peak) = resident_mib("self").expect("own status");
        assert!(rss > 0.0 && rss <= peak, "rss {rss} peak {peak}");
    }
}
