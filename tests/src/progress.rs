//! Progress of a long run on stderr, shared by the chaos suite and the
//! benchmark: every [`INTERVAL`] one line with the time elapsed (of the
//! total, when known), the faults injected so far (when the run injects
//! any), the operations per second over the last interval and what the run
//! is doing now.
//!
//! On a terminal the line is rewritten in place (`\r`); otherwise each
//! report is a plain line, so a log stays readable. The reporter is a
//! thread of its own (it needs no runtime and a busy runtime cannot starve
//! it) that the run stops by dropping its [`Progress`], however the run
//! ends.
//!
//! The run counts into a shared [`Meter`]: the chaos suite's recorder
//! counts every operation of every workload and each fault the nemesis
//! injects; the benchmark counts the operations its clients complete.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the reporter writes.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What a run has done so far; the reporter reads it, the run writes it.
#[derive(Debug, Default)]
pub struct Meter {
    operations: AtomicU64,
    faults: AtomicU64,
    phase: Mutex<String>,
}

impl Meter {
    /// Counts `n` completed operations (of any outcome).
    pub fn operations(&self, n: u64) {
        self.operations.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one fault injected.
    pub fn fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Says what the run is doing now (shown at the end of the line).
    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = phase.into();
    }

    fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// One report's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Since the reporter started.
    pub elapsed: Duration,
    /// How long the run is planned to take, if known.
    pub total: Option<Duration>,
    /// Faults injected so far, for runs that inject faults.
    pub faults: Option<u64>,
    /// Operations completed per second over the last interval.
    pub operations_per_second: f64,
    /// What the run is doing (may be empty).
    pub phase: String,
}

/// The report line for `snapshot`, without a line ending, e.g.
/// `chaos long: 3m05s of 20m00s (15%) | 12 faults | 1834 ops/s | faults`.
/// The percentage stops at 100 (the checks run after the planned time).
pub fn line(label: &str, snapshot: &Snapshot) -> String {
    let mut out = format!("{label}: {}", clock(snapshot.elapsed));
    if let Some(total) = snapshot.total {
        let percent = if total.is_zero() { 100 } else { (snapshot.elapsed.as_secs_f64() / total.as_secs_f64() * 100.0).min(100.0) as u64 };
        out.push_str(&format!(" of {} ({percent}%)", clock(total)));
    }
    if let Some(faults) = snapshot.faults {
        out.push_str(&format!(" | {faults} fault{}", if faults == 1 { "" } else { "s" }));
    }
    out.push_str(&format!(" | {:.0} ops/s", snapshot.operations_per_second.max(0.0)));
    if !snapshot.phase.is_empty() {
        out.push_str(" | ");
        out.push_str(&snapshot.phase);
    }
    out
}

/// `42s`, `3m05s`, `1h02m05s`.
fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3_600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m{seconds:02}s"),
    }
}

/// A running reporter; dropping it stops it (see the module docs).
#[derive(Debug)]
pub struct Progress {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `meter` under `label` every [`INTERVAL`]; `total`
    /// is the planned length, `faults` whether to show the fault count.
    pub fn start(label: impl Into<String>, total: Option<Duration>, faults: bool, meter: Arc<Meter>) -> Progress {
        let label = label.into();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("progress".into()).spawn(move || {
            let terminal = std::io::stderr().is_terminal();
            let started = Instant::now();
            let (mut last_at, mut last_operations) = (started, 0);
            // Both a stop and a dropped sender end the loop.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                let now = Instant::now();
                let operations = meter.operations.load(Ordering::Relaxed);
                let seconds = now.duration_since(last_at).as_secs_f64();
                let snapshot = Snapshot {
                    elapsed: now.duration_since(started),
                    total,
                    faults: faults.then(|| meter.faults.load(Ordering::Relaxed)),
                    operations_per_second: if seconds > 0.0 { operations.saturating_sub(last_operations) as f64 / seconds } else { 0.0 },
                    phase: meter.phase(),
                };
                (last_at, last_operations) = (now, operations);
                let text = line(&label, &snapshot);
                // `\x1b[K` clears what a longer previous line left.
                if terminal { eprint!("\r{text}\x1b[K") } else { eprintln!("{text}") }
            }
            if terminal {
                eprintln!();
            }
        });
        // Without a thread there is no progress, and the run goes on.
        Progress { stop: Some(stop), thread: thread.ok() }
    }
}

impl Drop for Progress {
    /// Stops the reporter and waits for it (at most one line's writing).
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_elapsed_of_total_faults_rate_and_phase() {
        let snapshot = Snapshot {
            elapsed: Duration::from_secs(185),
            total: Some(Duration::from_secs(1_200)),
            faults: Some(12),
            operations_per_second: 1_834.4,
            phase: "faults".into(),
        };
        assert_eq!(line("chaos long", &snapshot), "chaos long: 3m05s of 20m00s (15%) | 12 faults | 1834 ops/s | faults");
        let bench = Snapshot { elapsed: Duration::from_secs(3_725), total: None, faults: None, operations_per_second: 0.0, phase: String::new() };
        assert_eq!(line("bench", &bench), "bench: 1h02m05s | 0 ops/s");
        let over = Snapshot { elapsed: Duration::from_secs(130), total: Some(Duration::from_secs(90)), faults: Some(1), ..bench };
        assert_eq!(line("chaos short", &over), "chaos short: 2m10s of 1m30s (100%) | 1 fault | 0 ops/s");
        let zero = Snapshot { elapsed: Duration::from_secs(7), total: Some(Duration::ZERO), ..over };
        assert_eq!(line("x", &zero), "x: 7s of 0s (100%) | 1 fault | 0 ops/s");
    }

    #[test]
    fn dropping_the_reporter_stops_its_thread_at_once() {
        let meter = Arc::new(Meter::default());
        let progress = Progress::start("test", None, true, Arc::clone(&meter));
        meter.operations(3);
        meter.fault();
        // Dropped on another thread, so that a reporter that does not stop
        // fails this test instead of hanging it.
        let (dropped, done) = mpsc::channel();
        std::thread::spawn(move || {
            drop(progress);
            let _ = dropped.send(());
        });
        assert!(done.recv_timeout(INTERVAL / 2).is_ok(), "the reporter did not stop when its Progress was dropped");
        // The thread held the other reference; joined, it released it.
        assert_eq!(Arc::strong_count(&meter), 1);
    }
}
