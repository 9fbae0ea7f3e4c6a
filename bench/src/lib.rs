//! The benchmark that measures Gaios beside etcd and ZooKeeper in the same
//! run, on the same machine, with the same workloads and payloads.
//!
//! - [`systems`]: how a benchmark client talks to each system, and how the
//!   benchmark controls each cluster (leader, pids, kill, pause, restart);
//! - [`failover`]: time from SIGKILL/SIGSTOP of the leader to the first
//!   acknowledged write;
//! - [`sessions`]: thousands of sessions kept alive, spurious expiries, the
//!   replicas' CPU and memory;
//! - [`plots`]: PNG plots of latency distributions and throughput;
//! - here: latency samples, ratios and process usage from `/proc`.
//!
//! The `gaios-bench` binary runs the workloads and writes the report.

pub mod failover;
pub mod plots;
pub mod sessions;
pub mod systems;

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

    /// The latency distribution as (milliseconds, fraction of operations at
    /// or below it), at most `points` points, for plots.
    pub fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 || points == 0 {
            return Vec::new();
        }
        let step = n.div_ceil(points).max(1);
        let mut out: Vec<(f64, f64)> =
            (step - 1..n).step_by(step).map(|i| (sorted[i] as f64 / 1000.0, (i + 1) as f64 / n as f64)).collect();
        if out.last().is_none_or(|last| last.1 < 1.0) {
            out.push((sorted[n - 1] as f64 / 1000.0, 1.0));
        }
        out
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

/// The median of some durations, in milliseconds.
pub fn median_ms(times: &[Duration]) -> Option<f64> {
    let mut sorted: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// CPU time and resident memory of some processes, from `/proc`.
#[derive(Clone, Debug, Default)]
pub struct ProcessUsage {
    /// User plus system CPU time, summed, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident memory, summed, in bytes.
    pub rss_bytes: u64,
    /// Context switches (voluntary and not) of the processes' threads that
    /// live now, summed. A thread that ended took its count with it (a
    /// runtime's idle blocking threads end after a while), so a difference
    /// over a run can only undercount: by the whole count of a thread that
    /// ended meanwhile (the difference saturates at 0).
    pub context_switches: u64,
}

impl ProcessUsage {
    /// Reads the processes' usage now; processes that are gone count 0.
    pub fn of(pids: &[u32]) -> ProcessUsage {
        let mut usage = ProcessUsage::default();
        for pid in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                usage.cpu_ticks += cpu_ticks_of_stat(&stat).unwrap_or(0);
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                usage.rss_bytes += rss_bytes_of_status(&status).unwrap_or(0);
            }
            let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for thread in threads.flatten() {
                if let Ok(status) = std::fs::read_to_string(thread.path().join("status")) {
                    usage.context_switches += context_switches_of_status(&status);
                }
            }
        }
        usage
    }

    /// CPU seconds used since `before`.
    pub fn cpu_seconds_since(&self, before: &ProcessUsage) -> f64 {
        self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks_per_second()
    }
}

/// CPU time of the process `pid`'s live threads, summed, in nanoseconds:
/// the first field of each `/proc/PID/task/TID/schedstat` (time on a CPU,
/// counted by the scheduler to the nanosecond, where `/proc/PID/stat`
/// counts 10 ms ticks). A thread that ended took its time with it, so a
/// difference can only undercount.
pub fn threads_cpu_ns(pid: u32) -> u64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("schedstat")).ok())
        .filter_map(|schedstat| cpu_ns_of_schedstat(&schedstat))
        .fold(0, u64::saturating_add)
}

/// The time on a CPU (ns) from a `schedstat` line: "on-CPU wait slices".
pub fn cpu_ns_of_schedstat(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; the
/// command name in parentheses may hold spaces).
pub fn cpu_ticks_of_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after ")": field 3 (state) is index 0, so field 14 is index 11.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `voluntary_ctxt_switches` plus `nonvoluntary_ctxt_switches` from a
/// thread's `/proc/PID/task/TID/status` (0 for lines that are missing).
pub fn context_switches_of_status(status: &str) -> u64 {
    status
        .lines()
        .filter(|line| line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .fold(0, u64::saturating_add)
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
pub fn rss_bytes_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The median, least and greatest of some values (None when there are
/// none): how a figure measured in several rounds is reported.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some((median, sorted[0], sorted[n - 1]))
}

/// `median [min–max]` of some values with `digits` decimals ("-" for
/// none; the median alone for one value).
pub fn spread_text(values: &[f64], digits: usize) -> String {
    match spread(values) {
        None => "-".to_string(),
        Some((median, _, _)) if values.len() == 1 => format!("{median:.digits$}"),
        Some((median, low, high)) => format!("{median:.digits$} [{low:.digits$}–{high:.digits$}]"),
    }
}

/// The machine's floor for a replicated write: what one synced write to the
/// data disk and one loopback round trip cost here, measured, so a write's
/// latency can be compared with what the hardware allows.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    /// Median latency of writing 4 KiB and `fdatasync` on the data disk.
    pub fdatasync: Duration,
    /// Median round trip of 64 bytes over a loopback TCP connection.
    pub round_trip: Duration,
    /// Five writers at once, each writing 4 KiB and `fdatasync`ing its own
    /// file on the data disk, as a cell's five replicas do for every write
    /// when they share one disk: the median time until the third is done
    /// (a majority is durable), and until the fifth. On a disk that carries
    /// out one flush at a time these are several times
    /// [`Floor::fdatasync`]; not part of [`Floor::write`], which follows
    /// the floor as the benchmark's targets define it. `None` if it could
    /// not be measured (the other figures stand).
    pub cell_sync: Option<CellSync>,
}

/// See [`Floor::cell_sync`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CellSync {
    /// Until three of the five writers are done.
    pub majority: Duration,
    /// Until all five are.
    pub all: Duration,
}

/// How many writers [`CellSync`] runs at once, and how many of them make a
/// majority.
const CELL_WRITERS: usize = 5;
const CELL_MAJORITY: usize = 3;

impl Floor {
    /// The least a replicated write can take: the client's round trip to
    /// the master, the master's round trip to a follower, and one sync
    /// (master and follower sync in parallel).
    pub fn write(&self) -> Duration {
        self.fdatasync + self.round_trip * 2
    }

    /// Measures both in `dir` (on the disk the systems keep their data on)
    /// and on 127.0.0.1, `rounds` times each.
    pub fn measure(dir: &std::path::Path, rounds: usize) -> std::io::Result<Floor> {
        use std::io::{Read as _, Write as _};
        let rounds = rounds.max(1);
        let path = dir.join(format!("gaios-bench-floor-{}", std::process::id()));
        let mut file = std::fs::File::create(&path)?;
        let block = [0x5a_u8; 4096];
        let mut syncs = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = std::time::Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            syncs.push(started.elapsed());
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let mut buffer = [0_u8; 64];
            for _ in 0..rounds {
                socket.read_exact(&mut buffer)?;
                socket.write_all(&buffer)?;
            }
            Ok(())
        });
        let mut socket = std::net::TcpStream::connect(address)?;
        socket.set_nodelay(true)?;
        let mut buffer = [0_u8; 64];
        let mut trips = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = std::time::Instant::now();
            socket.write_all(&buffer)?;
            socket.read_exact(&mut buffer)?;
            trips.push(started.elapsed());
        }
        echo.join().map_err(|_| std::io::Error::other("the echo thread panicked"))??;
        syncs.sort();
        trips.sort();
        let cell_sync = CellSync::measure(dir, rounds.div_ceil(4)).ok();
        Ok(Floor { fdatasync: syncs[syncs.len() / 2], round_trip: trips[trips.len() / 2], cell_sync })
    }
}

impl CellSync {
    /// Runs [`CELL_WRITERS`] threads, each on a file of its own in `dir`,
    /// `rounds` times: in each round all start together (a barrier), each
    /// writes 4 KiB and syncs it, and the round ends when all are done. A
    /// round's times are counted from the first writer's start, so a writer
    /// the scheduler let start late counts as late.
    pub fn measure(dir: &std::path::Path, rounds: usize) -> std::io::Result<CellSync> {
        use std::io::Write as _;
        use std::time::Instant;
        let rounds = rounds.max(1);
        let start = std::sync::Arc::new(std::sync::Barrier::new(CELL_WRITERS));
        // Every writer first waits for the go; if one cannot be started,
        // those that were are told to end without meeting at the barrier.
        let mut gos = Vec::with_capacity(CELL_WRITERS);
        let mut writers = Vec::with_capacity(CELL_WRITERS);
        for writer in 0..CELL_WRITERS {
            let path = dir.join(format!("gaios-bench-cell-sync-{}-{writer}", std::process::id()));
            let start = start.clone();
            let (go, going) = std::sync::mpsc::channel::<bool>();
            let spawned = std::thread::Builder::new().name(format!("cell-sync-{writer}")).spawn(move || -> std::io::Result<Vec<(Instant, Instant)>> {
                if going.recv() != Ok(true) {
                    return Ok(Vec::new());
                }
                let block = [0x5a_u8; 4096];
                let mut times = Vec::with_capacity(rounds);
                let mut file = std::fs::File::create(&path);
                let mut failed = None;
                for _ in 0..rounds {
                    // A writer that failed still meets the others at the
                    // barrier every round, so that none waits forever.
                    start.wait();
                    let Ok(open) = file.as_mut() else { continue };
                    if failed.is_some() {
                        continue;
                    }
                    let started = Instant::now();
                    match open.write_all(&block).and_then(|()| open.sync_data()) {
                        Ok(()) => times.push((started, Instant::now())),
                        Err(error) => failed = Some(error),
                    }
                }
                let _ = std::fs::remove_file(&path);
                file?;
                failed.map_or(Ok(times), Err)
            });
            match spawned {
                Ok(handle) => {
                    gos.push(go);
                    writers.push(handle);
                }
                Err(error) => {
                    for go in gos {
                        let _ = go.send(false);
                    }
                    for writer in writers {
                        let _ = writer.join();
                    }
                    return Err(error);
                }
            }
        }
        for go in gos {
            let _ = go.send(true);
        }
        let mut per_writer = Vec::with_capacity(CELL_WRITERS);
        for writer in writers {
            per_writer.push(writer.join().map_err(|_| std::io::Error::other("a sync writer panicked"))??);
        }
        let (mut majority, mut all) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for round in 0..rounds {
            let times: Vec<(Instant, Instant)> = per_writer.iter().filter_map(|times| times.get(round).copied()).collect();
            let Some(first) = times.iter().map(|(started, _)| *started).min() else { continue };
            let mut done: Vec<Duration> = times.iter().map(|(_, ended)| ended.saturating_duration_since(first)).collect();
            done.sort();
            if let (Some(third), Some(last)) = (done.get(CELL_MAJORITY - 1), done.last()) {
                majority.push(*third);
                all.push(*last);
            }
        }
        majority.sort();
        all.sort();
        let median = |sorted: &[Duration]| sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        Ok(CellSync { majority: median(&majority), all: median(&all) })
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
        let cdf = samples.cdf(10);
        assert_eq!(cdf.len(), 10);
        assert_eq!(cdf[0], (10.0, 0.1));
        assert_eq!(cdf[9], (100.0, 1.0));
    }

    #[test]
    fn medians() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        assert_eq!(median_ms(&ms(&[300, 100, 200])), Some(200.0));
        assert_eq!(median_ms(&ms(&[400, 100, 200, 300])), Some(250.0));
        assert_eq!(median_ms(&[]), None);
    }

    #[test]
    fn proc_fields_are_parsed() {
        let stat = "1234 (gaios server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(cpu_ticks_of_stat(stat), Some(300));
        let status = "Name:\tetcd\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads: 4\n";
        assert_eq!(rss_bytes_of_status(status), Some(2048 * 1024));
        let thread = "Name:\tetcd\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches_of_status(thread), 127);
        assert_eq!(context_switches_of_status("Name:\tx\n"), 0);
        assert_eq!(cpu_ns_of_schedstat("340153756 359744 20\n"), Some(340_153_756));
        assert_eq!(cpu_ns_of_schedstat(""), None);
        // This process has used some CPU and memory, and its threads have
        // slept (this test's thread, at least while the runtime started).
        std::thread::sleep(Duration::from_millis(2));
        let me = ProcessUsage::of(&[std::process::id()]);
        assert!(me.rss_bytes > 0);
        assert!(me.context_switches > 0);
        assert!(threads_cpu_ns(std::process::id()) > 0, "this process has run");
    }

    #[test]
    fn a_figure_of_several_rounds_is_its_median_and_range() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[2.0]), Some((2.0, 2.0, 2.0)));
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[f64::NAN, 1.0]), Some((1.0, 1.0, 1.0)), "a NaN is no figure");
        assert_eq!(spread_text(&[0.5], 2), "0.50");
        assert_eq!(spread_text(&[0.9, 0.5, 0.7], 2), "0.70 [0.50–0.90]");
        assert_eq!(spread_text(&[], 2), "-");
    }

    #[test]
    fn the_floor_is_measured_on_the_disk_and_the_loopback() {
        let dir = std::env::temp_dir();
        let floor = Floor::measure(&dir, 20).expect("measure");
        assert!(floor.fdatasync > Duration::ZERO && floor.round_trip > Duration::ZERO);
        assert_eq!(floor.write(), floor.fdatasync + floor.round_trip * 2);
        // A majority of five concurrent syncs is durable no later than all
        // five, and was measured (a sync takes some time).
        let cell_sync = floor.cell_sync.expect("five writers measured");
        assert!(cell_sync.majority > Duration::ZERO);
        assert!(cell_sync.majority <= cell_sync.all);
        // Files are removed after.
        let prefix = format!("gaios-bench-cell-sync-{}-", std::process::id());
        let left = std::fs::read_dir(&dir).expect("list").flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count();
        assert_eq!(left, 0, "the sync writers left files behind");
    }
}
