//! The benchmark that measures Gaios beside etcd and ZooKeeper in the same
//! run, on the same machine, with the same workloads and payloads.
//!
//! This is the first slice of the benchmark milestone: the peers' script
//! (`bench/scripts/peers`), latency statistics, and the `gaios-bench` binary
//! with the write, throughput, read and lock workloads against Gaios, etcd
//! and ZooKeeper. Failover, sessions, plots and the results file are not
//! written yet.

use std::time::Duration;

/// Latency samples of one measurement, in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    micros: Vec<u64>,
    /// How long the measurement ran, for throughput.
    pub elapsed: Duration,
}

/// The most samples kept per measurement (beyond it, new samples are not
/// kept; counts still are, through `ops`).
pub const SAMPLES_MAX: usize = 2_000_000;

impl Samples {
    /// Records one operation's latency.
    pub fn push(&mut self, latency: Duration) {
        if self.micros.len() < SAMPLES_MAX {
            self.micros.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// Merges another client's samples.
    pub fn extend(&mut self, other: &Samples) {
        let room = SAMPLES_MAX.saturating_sub(self.micros.len());
        self.micros.extend(other.micros.iter().take(room));
    }

    /// How many operations were recorded.
    pub fn ops(&self) -> usize {
        self.micros.len()
    }

    /// The `p`-th percentile latency in milliseconds (nearest rank).
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        Some(sorted[index] as f64 / 1000.0)
    }

    /// Operations per second over `elapsed`.
    pub fn ops_per_second(&self) -> Option<f64> {
        let seconds = self.elapsed.as_secs_f64();
        (seconds > 0.0).then(|| self.ops() as f64 / seconds)
    }
}

/// `a / b`, formatted for a table ("-" when either is missing).
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        samples.elapsed = Duration::from_secs(2);
        assert_eq!(samples.percentile_ms(50.0), Some(50.0));
        assert_eq!(samples.percentile_ms(99.0), Some(99.0));
        assert_eq!(samples.percentile_ms(100.0), Some(100.0));
        assert_eq!(samples.ops_per_second(), Some(50.0));
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(None, Some(4.0)), "-");
        assert_eq!(Samples::default().percentile_ms(50.0), None);
    }
}
