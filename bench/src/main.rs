//! `gaios-bench`: measures Gaios and etcd (and, later, ZooKeeper) on this
//! machine with the same workloads and 256-byte values, and prints one table
//! per workload with the ratios.
//!
//! ```sh
//! bench/scripts/peers install
//! cargo run --release -p gaios-bench -- --quick          # seconds per workload
//! cargo run --release -p gaios-bench -- --workloads write,read
//! ```
//!
//! Gaios runs as five `gaios-server` processes (the test harness's cell);
//! etcd as five members started by `bench/scripts/peers`, when installed.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use gaios_bench::{Samples, ratio};
use gaios_client::{Client, LockMode, OpenOptions, Options};
use tokio::sync::Mutex;

/// The benchmark's command line.
#[derive(Debug, Parser)]
#[command(name = "gaios-bench", about = "Gaios beside etcd on the same machine")]
struct Args {
    /// Seconds per workload instead of the full profile.
    #[arg(long)]
    quick: bool,
    /// Workloads to run (comma-separated): write, throughput, read, lock.
    #[arg(long, value_delimiter = ',', default_value = "write,throughput,read,lock")]
    workloads: Vec<String>,
    /// Skip etcd even if installed.
    #[arg(long)]
    gaios_only: bool,
    /// Where to write the markdown report.
    #[arg(long)]
    out: Option<PathBuf>,
}

const VALUE_BYTES: usize = 256;

/// A system under test: one connection per benchmark client.
#[derive(Clone)]
enum System {
    Gaios(Vec<String>),
    Etcd(Vec<String>),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Gaios(_) => "Gaios",
            System::Etcd(_) => "etcd",
        }
    }

    async fn connect(&self, id: usize) -> anyhow::Result<Conn> {
        match self {
            System::Gaios(addresses) => {
                let client = Client::connect(addresses, Options::default()).await?;
                let handle = client.open(&format!("/bench-{id}"), OpenOptions::new().create().event_mask(0)).await?;
                Ok(Conn::Gaios { client, handle, locks: std::collections::BTreeMap::new() })
            }
            System::Etcd(endpoints) => {
                let client = etcd_client::Client::connect(endpoints, None).await?;
                Ok(Conn::Etcd { client, key: format!("/bench-{id}") })
            }
        }
    }
}

enum Conn {
    /// `locks`: a handle per lock name, opened once (a lock round trip is
    /// then an acquire and a release, as with etcd).
    Gaios { client: Client, handle: gaios_client::Handle, locks: std::collections::BTreeMap<String, gaios_client::Handle> },
    Etcd { client: etcd_client::Client, key: String },
}

impl Conn {
    async fn write(&mut self, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Gaios { handle, .. } => {
                handle.set_contents(value.to_vec(), None).await?;
            }
            Conn::Etcd { client, key } => {
                client.put(key.as_str(), value, None).await?;
            }
        }
        Ok(())
    }

    /// A read; `serializable` only matters for etcd.
    async fn read(&mut self, serializable: bool) -> anyhow::Result<()> {
        match self {
            Conn::Gaios { handle, .. } => {
                handle.contents().await?;
            }
            Conn::Etcd { client, key } => {
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                client.get(key.as_str(), options).await?;
            }
        }
        Ok(())
    }

    /// Acquires and releases the exclusive lock named `name`.
    async fn lock_round_trip(&mut self, name: &str) -> anyhow::Result<()> {
        match self {
            Conn::Gaios { client, locks, .. } => {
                let handle = match locks.get(name) {
                    Some(handle) => handle.clone(),
                    None => {
                        let handle = client.open(name, OpenOptions::new().create().event_mask(0)).await?;
                        locks.insert(name.to_string(), handle.clone());
                        handle
                    }
                };
                let lock = handle.acquire(LockMode::Exclusive, Duration::from_secs(30)).await?;
                lock.release().await?;
            }
            Conn::Etcd { client, .. } => {
                let locked = client.lock(name, None).await?;
                client.unlock(locked.key()).await?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        if let Conn::Gaios { client, .. } = self {
            let _ = client.close().await;
        }
    }
}

/// Runs `op` on `clients` connections concurrently for `duration` (or
/// `count` operations each, whichever first) and merges the latencies.
async fn measure<F>(system: &System, clients: usize, duration: Duration, count: usize, op: F) -> anyhow::Result<Samples>
where
    F: Fn(usize) -> Op + Send + Sync + Copy + 'static,
{
    let mut conns = Vec::with_capacity(clients);
    for id in 0..clients {
        conns.push(system.connect(id).await.with_context(|| format!("connect client {id} to {}", system.name()))?);
    }
    let value = Arc::new(vec![b'v'; VALUE_BYTES]);
    let merged = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut conn) in conns.into_iter().enumerate() {
        let value = value.clone();
        let merged = merged.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut done = 0;
            while done < count && started.elapsed() < duration {
                let begin = Instant::now();
                let result = match op(id) {
                    Op::Write => conn.write(&value).await,
                    Op::Read { serializable } => conn.read(serializable).await,
                    Op::Lock(shared) => {
                        let name = if shared { "/bench-lock".to_string() } else { format!("/bench-lock-{id}") };
                        conn.lock_round_trip(&name).await
                    }
                };
                if result.is_ok() {
                    samples.push(begin.elapsed());
                }
                done += 1;
            }
            merged.lock().await.extend(&samples);
            conn.close().await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let mut samples = merged.lock().await.clone();
    samples.elapsed = started.elapsed();
    Ok(samples)
}

#[derive(Clone, Copy)]
enum Op {
    Write,
    Read { serializable: bool },
    /// `true`: all clients contend for one lock.
    Lock(bool),
}

struct Row {
    label: String,
    gaios: Option<Samples>,
    etcd: Option<Samples>,
}

fn table(title: &str, rows: &[Row], throughput: bool) -> String {
    let mut out = format!("### {title}\n\n");
    if throughput {
        out.push_str("| case | Gaios ops/s | etcd ops/s | Gaios/etcd | Gaios p50 ms | Gaios p99 ms | etcd p50 ms | etcd p99 ms |\n|---|---|---|---|---|---|---|---|\n");
    } else {
        out.push_str("| case | Gaios p50 ms | Gaios p99 ms | etcd p50 ms | etcd p99 ms | Gaios/etcd (p50) |\n|---|---|---|---|---|---|\n");
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for row in rows {
        let g50 = row.gaios.as_ref().and_then(|s| s.percentile_ms(50.0));
        let g99 = row.gaios.as_ref().and_then(|s| s.percentile_ms(99.0));
        let e50 = row.etcd.as_ref().and_then(|s| s.percentile_ms(50.0));
        let e99 = row.etcd.as_ref().and_then(|s| s.percentile_ms(99.0));
        if throughput {
            let g = row.gaios.as_ref().and_then(Samples::ops_per_second);
            let e = row.etcd.as_ref().and_then(Samples::ops_per_second);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.label,
                g.map_or("-".into(), |v| format!("{v:.0}")),
                e.map_or("-".into(), |v| format!("{v:.0}")),
                ratio(g, e),
                fmt(g50),
                fmt(g99),
                fmt(e50),
                fmt(e99)
            ));
        } else {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.label,
                fmt(g50),
                fmt(g99),
                fmt(e50),
                fmt(e99),
                ratio(g50, e50)
            ));
        }
    }
    out.push('\n');
    out
}

async fn both(
    gaios: &System,
    etcd: Option<&System>,
    clients: usize,
    duration: Duration,
    count: usize,
    op: fn(usize) -> Op,
) -> anyhow::Result<(Option<Samples>, Option<Samples>)> {
    let g = measure(gaios, clients, duration, count, op).await?;
    let e = match etcd {
        Some(etcd) => Some(measure(etcd, clients, duration, count, op).await?),
        None => None,
    };
    Ok((Some(g), e))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (duration, count) = if args.quick { (Duration::from_secs(2), 200) } else { (Duration::from_secs(15), 2_000) };
    let started_at = std::time::SystemTime::now();

    // Gaios: five real replicas.
    let cell = gaios_tests::Cell::start();
    let all: Vec<usize> = (0..gaios_tests::REPLICAS as usize).collect();
    gaios_tests::wait_for_master(&cell, &all, gaios_tests::FIRST_MASTER_DEADLINE).await.context("Gaios elected no master")?;
    let gaios = System::Gaios(cell.members.iter().map(|m| m.client.to_string()).collect());

    // etcd, if installed.
    let peers_dir = std::env::temp_dir().join(format!("gaios-bench-peers-{}", std::process::id()));
    let peers = env_script("peers");
    let etcd = if args.gaios_only || Command::new("etcd").arg("--version").output().is_err() {
        None
    } else {
        let output = Command::new(&peers).args(["start", "etcd"]).arg(&peers_dir).output().context("start etcd")?;
        anyhow::ensure!(output.status.success(), "etcd did not start: {}", String::from_utf8_lossy(&output.stderr));
        let endpoints = String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_string();
        Some(System::Etcd(endpoints.split(',').map(str::to_string).collect()))
    };

    let mut report = format!(
        "# Gaios benchmark\n\nCommand: `gaios-bench {}`  \nMachine: {} cores; {}  \nStarted: {}  \nGaios build: {}; etcd: {}\n\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        if args.quick { "quick profile (seconds per workload; not for comparison)" } else { "full profile" },
        started_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string() + " s since the Unix epoch",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        etcd.as_ref().map_or("not installed".to_string(), |_| version("etcd")),
    );
    for workload in &args.workloads {
        match workload.as_str() {
            "write" => {
                let (g, e) = both(&gaios, etcd.as_ref(), 1, duration, count, |_| Op::Write).await?;
                report.push_str(&table("Write latency, 1 client, 256-byte values", &[Row { label: "write".into(), gaios: g, etcd: e }], false));
            }
            "throughput" => {
                let mut rows = Vec::new();
                let levels: &[usize] = if args.quick { &[10, 100] } else { &[10, 100, 1000] };
                for &clients in levels {
                    let (g, e) = both(&gaios, etcd.as_ref(), clients, duration, usize::MAX, |_| Op::Write).await?;
                    rows.push(Row { label: format!("{clients} clients"), gaios: g, etcd: e });
                }
                report.push_str(&table("Write throughput", &rows, true));
            }
            "read" => {
                let (g, e) = both(&gaios, etcd.as_ref(), 1, duration, count, |_| Op::Read { serializable: false }).await?;
                let mut rows = vec![Row { label: "Gaios master-lease read vs etcd linearizable".into(), gaios: g.clone(), etcd: e }];
                if let Some(etcd) = etcd.as_ref() {
                    let s = measure(etcd, 1, duration, count, |_| Op::Read { serializable: true }).await?;
                    rows.push(Row { label: "Gaios master-lease read vs etcd serializable".into(), gaios: g, etcd: Some(s) });
                }
                report.push_str(&table("Read latency, 1 client", &rows, false));
            }
            "lock" => {
                let (g1, e1) = both(&gaios, etcd.as_ref(), 1, duration, count, |_| Op::Lock(false)).await?;
                let (g10, e10) = both(&gaios, etcd.as_ref(), 10, duration, usize::MAX, |_| Op::Lock(true)).await?;
                report.push_str(&table(
                    "Lock acquire + release",
                    &[
                        Row { label: "1 client".into(), gaios: g1, etcd: e1 },
                        Row { label: "10 contending clients".into(), gaios: g10, etcd: e10 },
                    ],
                    false,
                ));
            }
            other => anyhow::bail!("unknown workload {other:?}"),
        }
    }
    if etcd.is_some() {
        let _ = Command::new(&peers).arg("stop").arg(&peers_dir).status();
    }
    let _ = std::fs::remove_dir_all(&peers_dir);
    drop(cell);
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

/// A script of `bench/scripts/`.
fn env_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

fn version(binary: &str) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
