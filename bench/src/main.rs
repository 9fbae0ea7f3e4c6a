//! `gaios-bench`: measures Gaios, etcd and ZooKeeper on this machine with
//! the same workloads and 256-byte values, and prints one table per
//! workload with the ratios Gaios/etcd and Gaios/ZooKeeper.
//!
//! ```sh
//! bench/scripts/peers install
//! cargo run --release -p gaios-bench -- --quick          # seconds per workload
//! cargo run --release -p gaios-bench -- --workloads write,read
//! ```
//!
//! Gaios runs as five `gaios-server` processes (the test harness's cell);
//! etcd and ZooKeeper as five members each, started by `bench/scripts/peers`
//! when installed. ZooKeeper's lock is the standard recipe (an ephemeral
//! sequential node, waiting on its predecessor), from `zookeeper-client`.

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
#[command(name = "gaios-bench", about = "Gaios beside etcd and ZooKeeper on the same machine")]
struct Args {
    /// Seconds per workload instead of the full profile.
    #[arg(long)]
    quick: bool,
    /// Workloads to run (comma-separated): write, throughput, read, lock.
    #[arg(long, value_delimiter = ',', default_value = "write,throughput,read,lock")]
    workloads: Vec<String>,
    /// Skip etcd and ZooKeeper even if installed.
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
    /// The comma-separated connect string.
    ZooKeeper(String),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Gaios(_) => "Gaios",
            System::Etcd(_) => "etcd",
            System::ZooKeeper(_) => "ZooKeeper",
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
            System::ZooKeeper(cluster) => {
                let client = zookeeper_client::Client::connect(cluster).await?;
                let path = format!("/bench-{id}");
                let options = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
                match client.create(&path, b"", &options).await {
                    Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                    Err(error) => return Err(error.into()),
                }
                Ok(Conn::ZooKeeper { client, path })
            }
        }
    }
}

// One per benchmark client; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Conn {
    /// `locks`: a handle per lock name, opened once (a lock round trip is
    /// then an acquire and a release, as with etcd).
    Gaios { client: Client, handle: gaios_client::Handle, locks: std::collections::BTreeMap<String, gaios_client::Handle> },
    Etcd { client: etcd_client::Client, key: String },
    ZooKeeper { client: zookeeper_client::Client, path: String },
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
            Conn::ZooKeeper { client, path } => {
                client.set_data(path, value, None).await?;
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
            Conn::ZooKeeper { client, path } => {
                client.get_data(path).await?;
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
            Conn::ZooKeeper { client, .. } => {
                // The standard recipe: an ephemeral sequential node under the
                // lock's directory, waiting on the predecessor's deletion.
                let directory = format!("/zk{name}");
                let prefix = zookeeper_client::LockPrefix::new_curator(&directory, "lock-")?;
                let parents = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
                let options = zookeeper_client::LockOptions::new(zookeeper_client::Acls::anyone_all()).with_ancestor_options(parents)?;
                let lock = client.lock(prefix, b"", options).await?;
                // Release now and wait for it, like the others; the guard's
                // own background delete would not be waited for.
                client.delete(lock.lock_path(), None).await?;
                std::mem::forget(lock);
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
    zookeeper: Option<Samples>,
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

/// One table: latency (p50/p99 per system, ratios of p50) or throughput
/// (ops/s per system, ratios of ops/s).
fn table(title: &str, rows: &[Row], throughput: bool) -> String {
    let mut out = format!("### {title}\n\n");
    if throughput {
        out.push_str("| case | Gaios ops/s | etcd ops/s | ZooKeeper ops/s | Gaios/etcd | Gaios/ZooKeeper | Gaios p99 ms | etcd p99 ms | ZooKeeper p99 ms |\n|---|---|---|---|---|---|---|---|---|\n");
    } else {
        out.push_str("| case | Gaios p50 / p99 ms | etcd p50 / p99 ms | ZooKeeper p50 / p99 ms | Gaios/etcd (p50) | Gaios/ZooKeeper (p50) |\n|---|---|---|---|---|---|\n");
    }
    for row in rows {
        let p = |s: &Option<Samples>, q: f64| s.as_ref().and_then(|s| s.percentile_ms(q));
        let rate = |s: &Option<Samples>| s.as_ref().and_then(Samples::ops_per_second);
        if throughput {
            let (g, e, z) = (rate(&row.gaios), rate(&row.etcd), rate(&row.zookeeper));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.label,
                fmt(g, 0),
                fmt(e, 0),
                fmt(z, 0),
                ratio(g, e),
                ratio(g, z),
                fmt(p(&row.gaios, 99.0), 2),
                fmt(p(&row.etcd, 99.0), 2),
                fmt(p(&row.zookeeper, 99.0), 2),
            ));
        } else {
            let both = |s: &Option<Samples>| format!("{} / {}", fmt(p(s, 50.0), 2), fmt(p(s, 99.0), 2));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.label,
                both(&row.gaios),
                both(&row.etcd),
                both(&row.zookeeper),
                ratio(p(&row.gaios, 50.0), p(&row.etcd, 50.0)),
                ratio(p(&row.gaios, 50.0), p(&row.zookeeper, 50.0)),
            ));
        }
    }
    out.push('\n');
    out
}

/// The systems of one run.
struct Systems {
    gaios: System,
    etcd: Option<System>,
    zookeeper: Option<System>,
}

impl Systems {
    /// Runs the same measurement on every system present.
    async fn row(&self, label: &str, clients: usize, duration: Duration, count: usize, op: fn(usize) -> Op) -> anyhow::Result<Row> {
        let gaios = Some(measure(&self.gaios, clients, duration, count, op).await?);
        let etcd = match &self.etcd {
            Some(system) => Some(measure(system, clients, duration, count, op).await?),
            None => None,
        };
        let zookeeper = match &self.zookeeper {
            Some(system) => Some(measure(system, clients, duration, count, op).await?),
            None => None,
        };
        Ok(Row { label: label.to_string(), gaios, etcd, zookeeper })
    }
}

/// Starts a peer cluster with `bench/scripts/peers`, returning its client
/// addresses.
fn start_peer(peers: &PathBuf, kind: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    let output = Command::new(peers).args(["start", kind]).arg(dir).output().with_context(|| format!("start {kind}"))?;
    anyhow::ensure!(output.status.success(), "{kind} did not start: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_string())
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

    // The peers, if installed.
    let peers_dir = std::env::temp_dir().join(format!("gaios-bench-peers-{}", std::process::id()));
    let peers = env_script("peers");
    let etcd_installed = !args.gaios_only && Command::new("etcd").arg("--version").output().is_ok();
    let zookeeper_installed = !args.gaios_only && std::path::Path::new("/usr/share/java/zookeeper.jar").exists();
    // Stops the peers however main ends (an error, a panic unwinding).
    let _stop_peers = StopPeers { script: peers.clone(), dir: peers_dir.clone() };
    let etcd = if etcd_installed {
        let endpoints = start_peer(&peers, "etcd", &peers_dir.join("etcd"))?;
        Some(System::Etcd(endpoints.split(',').map(str::to_string).collect()))
    } else {
        None
    };
    let zookeeper = if zookeeper_installed { Some(System::ZooKeeper(start_peer(&peers, "zookeeper", &peers_dir.join("zk"))?)) } else { None };
    let systems = Systems { gaios, etcd, zookeeper };

    let mut report = format!(
        "# Gaios benchmark\n\nCommand: `gaios-bench {}`  \nMachine: {} cores; {}  \nStarted: {}  \nGaios build: {}; etcd: {}; ZooKeeper: {}\n\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        if args.quick { "quick profile (seconds per workload; not for comparison)" } else { "full profile" },
        started_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string() + " s since the Unix epoch",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        if etcd_installed { version("etcd") } else { "not installed".to_string() },
        if zookeeper_installed { "3.8 (Debian)".to_string() } else { "not installed".to_string() },
    );
    for workload in &args.workloads {
        match workload.as_str() {
            "write" => {
                let row = systems.row("write", 1, duration, count, |_| Op::Write).await?;
                report.push_str(&table("Write latency, 1 client, 256-byte values", &[row], false));
            }
            "throughput" => {
                let mut rows = Vec::new();
                let levels: &[usize] = if args.quick { &[10, 100] } else { &[10, 100, 1000] };
                for &clients in levels {
                    rows.push(systems.row(&format!("{clients} clients"), clients, duration, usize::MAX, |_| Op::Write).await?);
                }
                report.push_str(&table("Write throughput, 256-byte values", &rows, true));
            }
            "read" => {
                let mut rows = vec![systems.row("Gaios lease read; etcd linearizable; ZooKeeper getData", 1, duration, count, |_| Op::Read { serializable: false }).await?];
                if let Some(etcd) = &systems.etcd {
                    let serializable = measure(etcd, 1, duration, count, |_| Op::Read { serializable: true }).await?;
                    rows.push(Row { label: "etcd serializable".into(), gaios: rows[0].gaios.clone(), etcd: Some(serializable), zookeeper: None });
                }
                report.push_str(&table("Read latency, 1 client", &rows, false));
            }
            "lock" => {
                let one = systems.row("1 client", 1, duration, count, |_| Op::Lock(false)).await?;
                let ten = systems.row("10 contending clients", 10, duration, usize::MAX, |_| Op::Lock(true)).await?;
                report.push_str(&table("Lock acquire + release", &[one, ten], false));
            }
            other => anyhow::bail!("unknown workload {other:?}"),
        }
    }
    drop(cell);
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
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
