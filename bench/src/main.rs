//! `gaios-bench`: measures Gaios, etcd and ZooKeeper on this machine with
//! the same workloads and 256-byte values, and writes one table per
//! workload with the ratios Gaios/etcd and Gaios/ZooKeeper, the targets,
//! and PNG plots.
//!
//! ```sh
//! scripts/bench                                   # everything, release build, bench/results/<date>.md
//! scripts/bench --workloads failover              # one workload alone
//! cargo run --release -p gaios-bench -- --quick   # seconds per workload
//! ```
//!
//! Gaios runs as five `gaios-server` processes (the test harness's cell);
//! etcd and ZooKeeper as five members each, started by `bench/scripts/peers`
//! when installed. ZooKeeper's lock is the standard recipe (an ephemeral
//! sequential node, waiting on its predecessor), from `zookeeper-client`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gaios_bench::failover::{self, Fault, Target};
use gaios_bench::sessions::{self, SessionsResult};
use gaios_bench::systems::{self, Op, PeerCluster, PeerKind, System, measure};
use gaios_bench::{Samples, median_ms, plots, ratio};
use gaios_tests::progress::{Meter, Progress};

/// The benchmark's command line.
#[derive(Debug, Parser)]
#[command(name = "gaios-bench", about = "Gaios beside etcd and ZooKeeper on the same machine")]
struct Args {
    /// Seconds per workload instead of the full profile (checks that the
    /// bench works; not for comparison).
    #[arg(long)]
    quick: bool,
    /// Workloads to run (comma-separated): write, throughput, tls, read,
    /// lock, failover, sessions.
    #[arg(long, value_delimiter = ',', default_value = "write,throughput,tls,read,lock,failover,sessions")]
    workloads: Vec<String>,
    /// Run Gaios without TLS (`--insecure`), as before TLS existed. By
    /// default its replicas and clients speak mutual TLS.
    #[arg(long)]
    plaintext: bool,
    /// Skip etcd and ZooKeeper even if installed.
    #[arg(long)]
    gaios_only: bool,
    /// Skip ZooKeeper even if installed.
    #[arg(long)]
    no_zookeeper: bool,
    /// Where to write the markdown report; the plots go to a directory of
    /// the same name without `.md`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Faults of each kind per system (default 5; 1 with --quick).
    #[arg(long)]
    failover_runs: Option<usize>,
    /// Session counts of the sessions workload (default 10000,20000; 200
    /// with --quick).
    #[arg(long, value_delimiter = ',')]
    sessions: Option<Vec<usize>>,
    /// How long the sessions are held, in seconds (default 60; 5 with
    /// --quick).
    #[arg(long)]
    hold_secs: Option<u64>,
    /// Extra flags for every gaios-server (space-separated), e.g. other
    /// timeouts: `--server-args "--election-timeout-ms 1000"`.
    #[arg(long, allow_hyphen_values = true)]
    server_args: Option<String>,
}

/// A table row: the same measurement on each system.
struct Row {
    label: String,
    gaios: Option<Samples>,
    etcd: Option<Samples>,
    zookeeper: Option<Samples>,
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

fn p(samples: &Option<Samples>, q: f64) -> Option<f64> {
    samples.as_ref().and_then(|s| s.percentile_ms(q))
}

fn rate(samples: &Option<Samples>) -> Option<f64> {
    samples.as_ref().and_then(Samples::ops_per_second)
}

/// One table: latency (p50/p99 per system, ratios of p50) or throughput
/// (ops/s per system, ratios of ops/s).
fn table(title: &str, rows: &[Row], throughput: bool) -> String {
    let mut out = format!("### {title}\n\n");
    if throughput {
        out.push_str("| case | Gaios ops/s | etcd ops/s | ZooKeeper ops/s | Gaios/etcd | Gaios/ZooKeeper | Gaios p50 / p99 ms | etcd p50 / p99 ms | ZooKeeper p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|\n");
    } else {
        out.push_str("| case | Gaios p50 / p99 ms | etcd p50 / p99 ms | ZooKeeper p50 / p99 ms | Gaios/etcd (p50) | Gaios/ZooKeeper (p50) |\n|---|---|---|---|---|---|\n");
    }
    let both = |s: &Option<Samples>| format!("{} / {}", fmt(p(s, 50.0), 2), fmt(p(s, 99.0), 2));
    for row in rows {
        if throughput {
            let (g, e, z) = (rate(&row.gaios), rate(&row.etcd), rate(&row.zookeeper));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.label,
                fmt(g, 0),
                fmt(e, 0),
                fmt(z, 0),
                ratio(g, e),
                ratio(g, z),
                both(&row.gaios),
                both(&row.etcd),
                both(&row.zookeeper),
            );
        } else {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.label,
                both(&row.gaios),
                both(&row.etcd),
                both(&row.zookeeper),
                ratio(p(&row.gaios, 50.0), p(&row.etcd, 50.0)),
                ratio(p(&row.gaios, 50.0), p(&row.zookeeper, 50.0)),
            );
        }
    }
    out.push('\n');
    out
}

/// The systems of one run.
struct Systems {
    gaios: System,
    etcd: Option<PeerCluster>,
    zookeeper: Option<PeerCluster>,
    /// The system that runs now; the others are paused.
    focused: std::sync::Mutex<Option<Which>>,
    /// The operations measured, and the phase shown on stderr.
    meter: Arc<Meter>,
    /// The workload that runs now (`2/6 throughput`), for the phase.
    workload: std::sync::Mutex<String>,
}

/// One of the three systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Gaios,
    Etcd,
    ZooKeeper,
}

/// How long a system has to agree on a leader after being continued.
const FOCUS_DEADLINE: Duration = Duration::from_secs(60);

impl Systems {
    fn pids(&self, cell: &gaios_tests::Cell, which: Which) -> Vec<u32> {
        match which {
            Which::Gaios => (0..cell.members.len()).filter_map(|i| cell.pid(i)).collect(),
            Which::Etcd => self.etcd.as_ref().map(peer_pids).unwrap_or_default(),
            Which::ZooKeeper => self.zookeeper.as_ref().map(peer_pids).unwrap_or_default(),
        }
    }

    /// Gives the machine to one system: the other two are paused
    /// (SIGSTOP), this one continued and waited for until it agrees on a
    /// leader, so that no system is measured while another one's
    /// heartbeats, timers and fsyncs compete for the two cores and the disk.
    async fn focus(&self, cell: &gaios_tests::Cell, which: Which) -> anyhow::Result<()> {
        let workload = self.workload.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.meter.set_phase(format!("workload {workload} on {which:?}"));
        if *self.focused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == Some(which) {
            return Ok(());
        }
        for other in [Which::Gaios, Which::Etcd, Which::ZooKeeper] {
            if other != which {
                for pid in self.pids(cell, other) {
                    let _ = systems::signal(pid, "STOP");
                }
            }
        }
        for pid in self.pids(cell, which) {
            let _ = systems::signal(pid, "CONT");
        }
        let until = std::time::Instant::now() + FOCUS_DEADLINE;
        loop {
            let led = match which {
                Which::Gaios => {
                    let all: Vec<usize> = (0..cell.members.len()).collect();
                    gaios_tests::wait_for_master(cell, &all, Duration::from_millis(1)).await.is_some()
                }
                Which::Etcd => self.peer_leader(self.etcd.as_ref()).await,
                Which::ZooKeeper => self.peer_leader(self.zookeeper.as_ref()).await,
            };
            if led {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < until, "{which:?} did not agree on a leader within {FOCUS_DEADLINE:?} of being continued");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *self.focused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(which);
        Ok(())
    }

    async fn peer_leader(&self, peer: Option<&PeerCluster>) -> bool {
        match peer {
            Some(peer) => peer.leader().await.is_some(),
            None => true,
        }
    }

    /// Runs the same measurement on every system present, each alone.
    async fn row(&self, cell: &gaios_tests::Cell, label: &str, clients: usize, duration: Duration, count: usize, op: Op) -> anyhow::Result<Row> {
        self.focus(cell, Which::Gaios).await?;
        let gaios = Some(measure(&self.gaios, clients, duration, count, op, &self.meter).await?);
        let etcd = match &self.etcd {
            Some(peer) => {
                self.focus(cell, Which::Etcd).await?;
                Some(measure(&peer.system(), clients, duration, count, op, &self.meter).await?)
            }
            None => None,
        };
        let zookeeper = match &self.zookeeper {
            Some(peer) => {
                self.focus(cell, Which::ZooKeeper).await?;
                Some(measure(&peer.system(), clients, duration, count, op, &self.meter).await?)
            }
            None => None,
        };
        Ok(Row { label: label.to_string(), gaios, etcd, zookeeper })
    }
}

/// What the targets table needs, filled in as workloads run.
#[derive(Default)]
struct Figures {
    write: Option<Row>,
    throughput_100: Option<Row>,
    lock_1: Option<Row>,
    gaios_read: Option<Samples>,
    etcd_serializable: Option<Samples>,
    failover: Vec<(String, Fault, Vec<Duration>)>,
    sessions: Vec<(String, SessionsResult)>,
}

/// One run of the benchmark: the systems, what is measured so far, and
/// where it goes; one method per workload.
struct Run {
    args: Args,
    cell: gaios_tests::Cell,
    systems: Systems,
    report: String,
    figures: Figures,
    /// Where the plots go, if plotting (the font is installed).
    plot_dir: Option<PathBuf>,
    duration: Duration,
    count: usize,
    failover_runs: usize,
    session_counts: Vec<usize>,
    hold: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The ZooKeeper sessions workload's worker processes.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("zookeeper-sessions-worker") {
        let (Some(cluster), Some(count), Some(hold)) = (argv.get(2), argv.get(3), argv.get(4)) else {
            anyhow::bail!("usage: gaios-bench zookeeper-sessions-worker CLUSTER COUNT HOLD_SECS");
        };
        return sessions::zookeeper_worker(cluster, count.parse()?, Duration::from_secs(hold.parse()?)).await;
    }
    let args = Args::parse();
    let plot_dir = args.out.as_ref().map(|out| out.with_extension(""));
    if let Some(dir) = &plot_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let font_missing = plot_dir.is_some() && !plots::font_available();
    // Progress on stderr every few seconds until main returns.
    let meter = Arc::new(Meter::default());
    meter.set_phase("starting the systems");
    let _progress = Progress::start("bench", None, false, Arc::clone(&meter));

    // The peers, if installed; stopped however main ends (an error, a
    // panic unwinding).
    let peers_dir = std::env::temp_dir().join(format!("gaios-bench-peers-{}", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts").join("peers");
    let _stop_peers = StopPeers { script: script.clone(), dir: peers_dir.clone() };
    let mut run = Run::start(args, plot_dir.filter(|_| !font_missing), meter, &script, &peers_dir).await?;
    let workloads = run.args.workloads.clone();
    for (index, workload) in workloads.iter().enumerate() {
        eprintln!("workload {workload}…");
        let stage = format!("{}/{} {workload}", index + 1, workloads.len());
        run.systems.meter.set_phase(format!("workload {stage}"));
        *run.systems.workload.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
        match workload.as_str() {
            "write" => run.write().await?,
            "throughput" => run.throughput().await?,
            "tls" => run.tls().await?,
            "read" => run.read().await?,
            "lock" => run.lock().await?,
            "failover" => run.failover().await?,
            "sessions" => run.sessions().await?,
            other => anyhow::bail!("unknown workload {other:?}"),
        }
        // What is measured so far survives a later failure.
        run.save()?;
    }
    let sessions_max = run.session_counts.iter().max().copied().unwrap_or(0);
    run.report.push_str(&targets(&run.figures, sessions_max));
    if font_missing {
        let _ = writeln!(run.report, "No plots: the font {} is missing (`bench/scripts/peers install` installs it).\n", plots::FONT_PATH);
    }
    let Run { report, args, cell, .. } = run;
    drop(cell);
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

impl Run {
    /// Starts Gaios (five real replicas) and the peers that are installed,
    /// and begins the report.
    async fn start(args: Args, plot_dir: Option<PathBuf>, meter: Arc<Meter>, script: &Path, peers_dir: &Path) -> anyhow::Result<Run> {
        let (duration, count) = if args.quick { (Duration::from_secs(2), 200) } else { (Duration::from_secs(15), 2_000) };
        let failover_runs = args.failover_runs.unwrap_or(if args.quick { 1 } else { 5 });
        let session_counts = args.sessions.clone().unwrap_or_else(|| if args.quick { vec![200] } else { vec![10_000, 20_000] });
        let hold = Duration::from_secs(args.hold_secs.unwrap_or(if args.quick { 5 } else { 60 }));
        let server_args: Vec<&str> = args.server_args.as_deref().map(|a| a.split_whitespace().collect()).unwrap_or_default();
        let cell = start_gaios(&server_args, !args.plaintext).await?;
        let gaios = System::gaios(&cell);
        let etcd_installed = !args.gaios_only && Command::new("etcd").arg("--version").output().is_ok();
        let zookeeper_installed =
            !args.gaios_only && !args.no_zookeeper && Path::new("/usr/share/java/zookeeper.jar").exists();
        let etcd = if etcd_installed { Some(PeerCluster::start(script, PeerKind::Etcd, &peers_dir.join("etcd"))?) } else { None };
        let zookeeper =
            if zookeeper_installed { Some(PeerCluster::start(script, PeerKind::ZooKeeper, &peers_dir.join("zk"))?) } else { None };
        let systems = Systems { gaios, etcd, zookeeper, focused: std::sync::Mutex::new(None), meter, workload: std::sync::Mutex::new(String::new()) };
        let report = header(&args, etcd_installed, zookeeper_installed);
        Ok(Run { args, cell, systems, report, figures: Figures::default(), plot_dir, duration, count, failover_runs, session_counts, hold })
    }

    /// Where the plot `name` goes, if plotting.
    fn plot(&self, name: &str) -> Option<PathBuf> {
        self.plot_dir.as_ref().map(|dir| dir.join(name))
    }

    /// The report's link to the plot `name`.
    fn plot_link(&self, name: &str) -> String {
        let dir = self.plot_dir.as_ref().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().to_string()).unwrap_or_default();
        format!("![{name}]({dir}/{name})\n\n")
    }

    /// Writes the report so far, if asked to.
    fn save(&self) -> anyhow::Result<()> {
        if let Some(out) = &self.args.out {
            std::fs::write(out, &self.report).with_context(|| format!("write {}", out.display()))?;
        }
        Ok(())
    }

    /// Write latency, one client.
    async fn write(&mut self) -> anyhow::Result<()> {
        let row = self.systems.row(&self.cell, "write", 1, self.duration, self.count, Op::Write).await?;
        self.report.push_str(&table("Write latency, 1 client, 256-byte values", std::slice::from_ref(&row), false));
        if let Some(path) = self.plot("write-latency.png") {
            plots::latency_cdf(&path, "Write latency, 1 client", &row_series(&row))?;
            self.report.push_str(&self.plot_link("write-latency.png"));
        }
        self.figures.write = Some(row);
        Ok(())
    }

    /// Write throughput at 10, 100 (and 1000) clients.
    async fn throughput(&mut self) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        let levels: &[usize] = if self.args.quick { &[10, 100] } else { &[10, 100, 1000] };
        for &clients in levels {
            rows.push(self.systems.row(&self.cell, &format!("{clients} clients"), clients, self.duration, usize::MAX, Op::Write).await?);
        }
        self.report.push_str(&table("Write throughput, 256-byte values", &rows, true));
        if let Some(path) = self.plot("write-throughput.png") {
            let mut series = Vec::new();
            for (name, pick) in system_pickers() {
                let points: Vec<(usize, f64)> = rows
                    .iter()
                    .zip(levels)
                    .filter_map(|(row, &clients)| rate(pick(row)).map(|r| (clients, r)))
                    .collect();
                if !points.is_empty() {
                    series.push((name.to_string(), points));
                }
            }
            plots::throughput(&path, "Write throughput against concurrent clients", &series)?;
            self.report.push_str(&self.plot_link("write-throughput.png"));
        }
        self.figures.throughput_100 = rows.into_iter().find(|row| row.label == "100 clients");
        Ok(())
    }

    /// What TLS costs Gaios: write latency (1 client) and throughput (100
    /// clients) on this run's cell and on a second cell that differs only
    /// in TLS, measured in turns (rounds interleaved, each cell alone on
    /// the machine), with the median and spread of the ratios.
    async fn tls(&mut self) -> anyhow::Result<()> {
        let server_args: Vec<&str> = self.args.server_args.as_deref().map(|a| a.split_whitespace().collect()).unwrap_or_default();
        // The peers wait paused; the main cell is paused while the other
        // one runs, and the other way round.
        for which in [Which::Etcd, Which::ZooKeeper] {
            for pid in self.systems.pids(&self.cell, which) {
                let _ = systems::signal(pid, "STOP");
            }
        }
        *self.systems.focused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let main_tls = !self.args.plaintext;
        let other = start_gaios(&server_args, !main_tls).await?;
        let (tls_cell, plain_cell) = if main_tls { (&self.cell, &other) } else { (&other, &self.cell) };
        let rounds = if self.args.quick { 1 } else { 3 };
        let clients = if self.args.quick { 10 } else { 100 };
        let mut latency: [Vec<Samples>; 2] = [Vec::new(), Vec::new()];
        let mut throughput: [Vec<Samples>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which goes first, so neither always follows the other.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let (cell, paused) = if side == 0 { (tls_cell, plain_cell) } else { (plain_cell, tls_cell) };
                let name = if side == 0 { "TLS" } else { "plaintext" };
                self.systems.meter.set_phase(format!("workload tls: Gaios with {name}, round {}/{rounds}", round + 1));
                give_machine_to(cell, paused).await?;
                let system = System::gaios(cell);
                latency[side].push(measure(&system, 1, self.duration, self.count, Op::Write, &self.systems.meter).await?);
                throughput[side].push(measure(&system, clients, self.duration, usize::MAX, Op::Write, &self.systems.meter).await?);
            }
        }
        // Back to the main cell alone; the next workload focuses again.
        give_machine_to(&self.cell, &other).await?;
        drop(other);
        let mut out = format!(
            "### The cost of TLS (Gaios)

The same workloads on two five-replica cells that differ only in TLS (mutual TLS between replicas and for clients, or `--insecure` plaintext), each alone on the machine, {rounds} round(s) taken in turns. Ratios: TLS / plaintext per round; median [min–max].

"
        );
        out.push_str("| case | TLS | plaintext | TLS / plaintext |
|---|---|---|---|
");
        let p50 = |s: &Samples| s.percentile_ms(50.0);
        let per_round = |pick: &dyn Fn(&Samples) -> Option<f64>, rows: &[Vec<Samples>; 2]| -> Vec<f64> {
            rows[0].iter().zip(&rows[1]).filter_map(|(t, p)| pick(t).zip(pick(p)).filter(|(_, p)| *p > 0.0).map(|(t, p)| t / p)).collect()
        };
        let summary = |values: &[f64], digits: usize| -> String {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            match (sorted.first(), sorted.last()) {
                (Some(low), Some(high)) => format!("{:.digits$} [{low:.digits$}–{high:.digits$}]", sorted[sorted.len() / 2]),
                _ => "-".to_string(),
            }
        };
        let column = |rows: &[Samples], pick: &dyn Fn(&Samples) -> Option<f64>, digits: usize| {
            let values: Vec<f64> = rows.iter().filter_map(pick).collect();
            summary(&values, digits)
        };
        let _ = writeln!(
            out,
            "| write p50 ms, 1 client | {} | {} | {} |",
            column(&latency[0], &p50, 2),
            column(&latency[1], &p50, 2),
            summary(&per_round(&p50, &latency), 2)
        );
        let ops = |s: &Samples| s.ops_per_second();
        let _ = writeln!(
            out,
            "| write throughput ops/s, {clients} clients | {} | {} | {} |",
            column(&throughput[0], &ops, 0),
            column(&throughput[1], &ops, 0),
            summary(&per_round(&ops, &throughput), 2)
        );
        out.push('\n');
        self.report.push_str(&out);
        Ok(())
    }

    /// Read latency, one client (and etcd's serializable read beside).
    async fn read(&mut self) -> anyhow::Result<()> {
        let lease_read = self.systems.row(&self.cell, "Gaios lease read; etcd linearizable; ZooKeeper getData", 1, self.duration, self.count, Op::Read { serializable: false }).await?;
        let mut rows = vec![lease_read];
        if let Some(etcd) = &self.systems.etcd {
            self.systems.focus(&self.cell, Which::Etcd).await?;
            let serializable = measure(&etcd.system(), 1, self.duration, self.count, Op::Read { serializable: true }, &self.systems.meter).await?;
            self.figures.etcd_serializable = Some(serializable.clone());
            rows.push(Row { label: "etcd serializable".into(), gaios: rows[0].gaios.clone(), etcd: Some(serializable), zookeeper: None });
        }
        self.figures.gaios_read = rows[0].gaios.clone();
        self.report.push_str(&table("Read latency, 1 client", &rows, false));
        if let Some(path) = self.plot("read-latency.png") {
            let mut series = row_series(&rows[0]);
            if let Some(serializable) = rows.get(1).and_then(|r| r.etcd.as_ref()) {
                series.push(("etcd serializable".to_string(), serializable));
            }
            for entry in &mut series {
                if entry.0 == "etcd" {
                    entry.0 = "etcd linearizable".to_string();
                }
            }
            plots::latency_cdf(&path, "Read latency, 1 client", &series)?;
            self.report.push_str(&self.plot_link("read-latency.png"));
        }
        Ok(())
    }

    /// Lock acquire + release, alone and contended.
    async fn lock(&mut self) -> anyhow::Result<()> {
        let one = self.systems.row(&self.cell, "1 client", 1, self.duration, self.count, Op::Lock(false)).await?;
        let ten = self.systems.row(&self.cell, "10 contending clients", 10, self.duration, usize::MAX, Op::Lock(true)).await?;
        let rows = [one, ten];
        self.report.push_str(&table("Lock acquire + release", &rows, false));
        if let Some(path) = self.plot("lock-latency.png") {
            plots::latency_cdf(&path, "Lock acquire + release, 1 client", &row_series(&rows[0]))?;
            self.report.push_str(&self.plot_link("lock-latency.png"));
        }
        self.figures.lock_1 = rows.into_iter().next();
        Ok(())
    }

    /// Fault of the master/leader to the first acknowledged write.
    async fn failover(&mut self) -> anyhow::Result<()> {
        let mut out = String::from("### Failover: fault of the master/leader → first acknowledged write\n\n");
        let _ = writeln!(out, "Each client retries a request after {} ms without an answer. {} runs per cell.\n", failover::ATTEMPT_TIMEOUT.as_millis(), self.failover_runs);
        out.push_str("| fault | Gaios median (runs) ms | etcd median (runs) ms | ZooKeeper median (runs) ms | Gaios/etcd | Gaios/ZooKeeper |\n|---|---|---|---|---|---|\n");
        for fault in [Fault::Kill, Fault::Stop] {
            let mut failures = std::collections::BTreeMap::new();
            self.systems.focus(&self.cell, Which::Gaios).await?;
            let gaios = failover::run(&mut Target::Gaios(&mut self.cell), fault, self.failover_runs).await?;
            let etcd = match &self.systems.etcd {
                Some(peer) => {
                    self.systems.focus(&self.cell, Which::Etcd).await?;
                    failover_or_report(failover::run(&mut Target::Peer(peer), fault, self.failover_runs).await, &mut failures, "etcd")
                }
                None => None,
            };
            let zookeeper = match &self.systems.zookeeper {
                Some(peer) => {
                    self.systems.focus(&self.cell, Which::ZooKeeper).await?;
                    failover_or_report(failover::run(&mut Target::Peer(peer), fault, self.failover_runs).await, &mut failures, "ZooKeeper")
                }
                None => None,
            };
            let cell_text = |name: &str, times: &Option<Vec<Duration>>| match times {
                Some(times) => format!(
                    "{} ({})",
                    fmt(median_ms(times), 0),
                    times.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ")
                ),
                None => failures.get(name).map_or("-".to_string(), |why| format!("failed: {why}")),
            };
            let median = |times: &Option<Vec<Duration>>| times.as_deref().and_then(median_ms);
            let gaios = Some(gaios);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                fault.name(),
                cell_text("Gaios", &gaios),
                cell_text("etcd", &etcd),
                cell_text("ZooKeeper", &zookeeper),
                ratio(median(&gaios), median(&etcd)),
                ratio(median(&gaios), median(&zookeeper)),
            );
            for (name, times) in [("Gaios", gaios), ("etcd", etcd), ("ZooKeeper", zookeeper)] {
                if let Some(times) = times {
                    self.figures.failover.push((name.to_string(), fault, times));
                }
            }
        }
        out.push('\n');
        self.report.push_str(&out);
        Ok(())
    }

    /// Sessions kept alive: set-up, spurious expiries, CPU, memory.
    async fn sessions(&mut self) -> anyhow::Result<()> {
        let mut out = format!(
            "### Sessions kept alive for {} s\n\nLease (etcd: lease TTL; ZooKeeper: session timeout) {} s, a keep-alive every quarter of it. CPU: the five replicas' CPU time during the hold over its length (2 cores = 2.0). Memory: the five replicas' resident memory at the end, summed.\n\n",
            self.hold.as_secs(),
            sessions::SESSION_LEASE.as_secs()
        );
        out.push_str("| sessions | system | set-up s | spurious expiries | keep-alives answered | streams reopened | CPU (cores) | memory MiB |\n|---|---|---|---|---|---|---|---|\n");
        for &n in &self.session_counts {
            let gaios_pids = self.systems.pids(&self.cell, Which::Gaios);
            let addresses: Vec<String> = self.cell.members.iter().map(|m| m.client.to_string()).collect();
            let tls = self.cell.client_tls("admin");
            self.systems.focus(&self.cell, Which::Gaios).await?;
            // Gaios failing fails the run; a peer failing (its
            // limits, not ours) is reported in its row.
            let mut results = vec![("Gaios".to_string(), Ok(sessions::gaios(&addresses, tls.as_ref(), &gaios_pids, n, self.hold).await?))];
            if let Some(peer) = &self.systems.etcd {
                self.systems.focus(&self.cell, Which::Etcd).await?;
                results.push(("etcd".to_string(), sessions::etcd(&peer.addresses, &peer_pids(peer), n, self.hold).await));
            }
            if let Some(peer) = &self.systems.zookeeper {
                self.systems.focus(&self.cell, Which::ZooKeeper).await?;
                results.push(("ZooKeeper".to_string(), sessions::zookeeper(&peer.addresses.join(","), &peer_pids(peer), n, self.hold).await));
            }
            for (name, result) in results {
                eprintln!("sessions: {n} {name}: {result:?}");
                match result {
                    Ok(result) => {
                        let _ = writeln!(
                            out,
                            "| {n} | {name} | {:.1} | {} | {} | {} | {:.2} | {:.0} |",
                            result.setup.as_secs_f64(),
                            result.spurious_expiries,
                            result.keep_alives.map_or("-".to_string(), |k| k.to_string()),
                            result.reconnects,
                            result.cpu_cores,
                            result.rss_mib
                        );
                        self.figures.sessions.push((name, result));
                    }
                    Err(error) => {
                        let why = table_cell(&format!("{error:#}"));
                        let _ = writeln!(out, "| {n} | {name} | failed: {why} | - | - | - | - | - |");
                    }
                }
            }
        }
        out.push('\n');
        self.report.push_str(&out);
        Ok(())
    }
}

/// Starts a five-replica Gaios cell (with TLS if `tls`) and waits for its
/// master.
async fn start_gaios(server_args: &[&str], tls: bool) -> anyhow::Result<gaios_tests::Cell> {
    let members = gaios_tests::Cell::free_members();
    let cell = gaios_tests::Cell::start_full(server_args, members, std::collections::BTreeMap::new(), std::collections::BTreeMap::new(), tls);
    let all: Vec<usize> = (0..gaios_tests::REPLICAS as usize).collect();
    gaios_tests::wait_for_master(&cell, &all, gaios_tests::FIRST_MASTER_DEADLINE).await.context("Gaios elected no master")?;
    Ok(cell)
}

/// Pauses the cell `paused` (SIGSTOP) and continues `cell`, waiting until
/// it agrees on a master again.
async fn give_machine_to(cell: &gaios_tests::Cell, paused: &gaios_tests::Cell) -> anyhow::Result<()> {
    for index in 0..paused.members.len() {
        paused.signal(index, libc::SIGSTOP);
    }
    for index in 0..cell.members.len() {
        cell.signal(index, libc::SIGCONT);
    }
    let all: Vec<usize> = (0..cell.members.len()).collect();
    gaios_tests::wait_for_master(cell, &all, FOCUS_DEADLINE).await.context("Gaios agreed on no master after being continued")?;
    Ok(())
}

/// A peer's failover runs, or `None` with the reason kept in `failures`
/// for its cell: the peer's limits, not a reason to lose the whole report.
fn failover_or_report(
    result: anyhow::Result<Vec<Duration>>,
    failures: &mut std::collections::BTreeMap<&'static str, String>,
    name: &'static str,
) -> Option<Vec<Duration>> {
    result.map_err(|error| failures.insert(name, table_cell(&format!("{error:#}")))).ok()
}

/// `text` made safe for one markdown table cell.
fn table_cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

type Picker = fn(&Row) -> &Option<Samples>;

/// The systems' columns of a row, by name.
fn system_pickers() -> [(&'static str, Picker); 3] {
    [("Gaios", |r| &r.gaios), ("etcd", |r| &r.etcd), ("ZooKeeper", |r| &r.zookeeper)]
}

/// A row's samples, named by system, for a latency plot.
fn row_series(row: &Row) -> Vec<(String, &Samples)> {
    system_pickers().into_iter().filter_map(|(name, pick)| pick(row).as_ref().map(|s| (name.to_string(), s))).collect()
}

fn peer_pids(peer: &PeerCluster) -> Vec<u32> {
    (0..peer.addresses.len()).filter_map(|i| peer.pid(i)).collect()
}

/// The targets of issue 6, each as measured in this run.
fn targets(figures: &Figures, sessions_max: usize) -> String {
    let mut out = String::from("### Targets\n\n| target | measured | met |\n|---|---|---|\n");
    let mut line = |target: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {target} | {measured} | {met} |");
    };
    let ratio_of = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
    let write = figures.write.as_ref().and_then(|r| ratio_of(p(&r.gaios, 50.0), p(&r.etcd, 50.0)));
    line("write latency, 1 client, ≤ 0.5× etcd (p50)", fmt(write, 2), write.map(|r| r <= 0.5));
    let t = figures.throughput_100.as_ref();
    let vs_etcd = t.and_then(|r| ratio_of(rate(&r.gaios), rate(&r.etcd)));
    let vs_zk = t.and_then(|r| ratio_of(rate(&r.gaios), rate(&r.zookeeper)));
    line("write throughput, 100 clients, ≥ 2× etcd", fmt(vs_etcd, 2), vs_etcd.map(|r| r >= 2.0));
    line("write throughput, 100 clients, ≥ 2× ZooKeeper", fmt(vs_zk, 2), vs_zk.map(|r| r >= 2.0));
    let lock = figures.lock_1.as_ref().and_then(|r| ratio_of(p(&r.gaios, 50.0), p(&r.etcd, 50.0)));
    line("lock acquire + release, 1 client, ≤ 1/3 etcd (p50)", fmt(lock, 2), lock.map(|r| r <= 1.0 / 3.0));
    let read = ratio_of(
        figures.gaios_read.as_ref().and_then(|s| s.percentile_ms(50.0)),
        figures.etcd_serializable.as_ref().and_then(|s| s.percentile_ms(50.0)),
    );
    line("master-lease read ≤ 0.5× etcd serializable read (p50)", fmt(read, 2), read.map(|r| r <= 0.5));
    for (fault, limit_ms) in [(Fault::Kill, 600.0), (Fault::Stop, 1500.0)] {
        let median = figures.failover.iter().find(|(name, f, _)| name == "Gaios" && *f == fault).and_then(|(_, _, t)| median_ms(t));
        line(&format!("{} failover ≤ {limit_ms:.0} ms median", fault.name()), fmt(median, 0).to_string() + " ms", median.map(|m| m <= limit_ms));
    }
    let spurious = figures.sessions.iter().rfind(|(name, r)| name == "Gaios" && r.sessions >= 20_000).map(|(_, r)| r.spurious_expiries);
    let measured = match (spurious, figures.sessions.is_empty()) {
        (Some(spurious), _) => format!("{spurious} spurious expiries"),
        (None, true) => "-".to_string(),
        (None, false) => format!("only {sessions_max} sessions run"),
    };
    line("20,000 sessions, 0 spurious expiries (Gaios)", measured, spurious.map(|s| s == 0));
    out.push('\n');
    out
}

/// The report's first lines: command, machine, versions, configurations.
fn header(args: &Args, etcd: bool, zookeeper: bool) -> String {
    let run = |program: &str, arguments: &[&str]| {
        Command::new(program)
            .args(arguments)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kib| kib.parse::<f64>().ok()))
        .map_or("unknown".to_string(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let commit = run("git", &["-C", &workspace.to_string_lossy(), "describe", "--always", "--dirty"]);
    let mut out = String::from("# Gaios benchmark\n\n");
    let _ = writeln!(out, "- Command: `gaios-bench {}`", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let _ = writeln!(out, "- Date: {}", run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(
        out,
        "- Machine: {cpu}, {} cores, {memory}; {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        run("uname", &["-sr"])
    );
    let _ = writeln!(
        out,
        "- Profile: {}; Gaios {} build at {commit}{}",
        if args.quick { "quick (seconds per workload; not for comparison)" } else { "full" },
        if cfg!(debug_assertions) { "**debug**" } else { "release" },
        args.server_args.as_ref().map_or(String::new(), |a| format!(", servers run with `{a}`"))
    );
    let _ = writeln!(
        out,
        "- etcd: {}; ZooKeeper: {}",
        if etcd { run("dpkg-query", &["-W", "-f", "etcd-server ${Version}", "etcd-server"]) } else { "not run".into() },
        if zookeeper { run("dpkg-query", &["-W", "-f", "zookeeper ${Version}", "zookeeper"]) } else { "not run".into() }
    );
    let _ = writeln!(
        out,
        "- Gaios: {} (etcd and ZooKeeper run plaintext, their default; the `tls` workload measures what TLS costs Gaios)",
        if args.plaintext { "plaintext (`--plaintext`, replicas run `--insecure`)" } else { "mutual TLS between replicas and for clients (rustls, ECDSA P-256 certificates)" }
    );
    out.push_str("- Every system: five members on 127.0.0.1, data on the same disk, default settings (Gaios: heartbeat 50 ms, master lease 250 ms, election timeout 300–450 ms; etcd: heartbeat 100 ms, election timeout 1000 ms; ZooKeeper: tickTime 2000 ms, syncLimit 5, initLimit 10); every client in one process; 256-byte values. While one system is measured, the other two are paused (SIGSTOP), so that each has the machine to itself.\n\n");
    out
}

/// Stops the peer clusters and removes their data when dropped.
struct StopPeers {
    script: PathBuf,
    dir: PathBuf,
}

impl Drop for StopPeers {
    fn drop(&mut self) {
        for kind in ["etcd", "zk"] {
            let _ = Command::new(&self.script).arg("stop").arg(self.dir.join(kind)).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
