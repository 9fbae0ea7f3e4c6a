//! The sessions workload: `count` sessions kept alive for `hold`, counting
//! the spurious expiries (a session the cluster ended although its client
//! kept it alive) and the replicas' CPU and memory meanwhile.
//!
//! - Gaios: `CreateSession`, then one `KeepAlive` stream per session, a
//!   request every quarter of the lease (what the client library does), the
//!   streams multiplexed over HTTP/2 connections to the master,
//!   [`STREAMS_PER_CONNECTION`] each. A stream the cell ends (the session
//!   expired) is a spurious expiry.
//! - etcd: a lease per session with the same TTL as Gaios's session lease,
//!   one `LeaseKeepAlive` stream per lease, a request every quarter of the
//!   TTL; an answer with TTL 0 (the lease is gone) is a spurious expiry.
//! - ZooKeeper: a session is a TCP connection (its client pings by itself);
//!   [`ZOOKEEPER_SESSIONS_PER_PROCESS`] sessions per worker process (the fd
//!   limit), `Expired` states are spurious expiries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_client::Tls;
use gaios_proto::cell::v1 as api;
use gaios_proto::cell::v1::cell_client::CellClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::ProcessUsage;

/// The session lease (etcd: lease TTL; ZooKeeper: session timeout), the same
/// for every system: Gaios's default, 12 s.
pub const SESSION_LEASE: Duration = Duration::from_secs(12);
/// KeepAlive streams per HTTP/2 connection to the Gaios master (under the
/// server's limit of concurrent streams per connection).
pub const STREAMS_PER_CONNECTION: usize = 100;
/// ZooKeeper sessions held by one worker process.
pub const ZOOKEEPER_SESSIONS_PER_PROCESS: usize = 5_000;
/// Sessions created concurrently.
const CREATE_CONCURRENCY: usize = 64;

/// What one sessions run saw.
#[derive(Clone, Debug, Default)]
pub struct SessionsResult {
    /// Sessions asked for.
    pub sessions: usize,
    /// How long setting them up took.
    pub setup: Duration,
    /// Sessions the cluster ended while their clients kept them alive.
    pub spurious_expiries: u64,
    /// Keep-alive requests answered during the hold (ZooKeeper's client
    /// pings by itself: not counted).
    pub keep_alives: Option<u64>,
    /// Keep-alive streams that broke and were reopened (not expiries).
    pub reconnects: u64,
    /// The replicas' CPU use during the hold, in cores (summed over the five).
    pub cpu_cores: f64,
    /// The replicas' resident memory at the end of the hold, summed, in MiB.
    pub rss_mib: f64,
}

/// An endpoint of the Gaios replica at `address`, over TLS with `tls`.
fn endpoint(address: &str, tls: Option<&Tls>) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?.tcp_nodelay(true).connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config())?;
    }
    Ok(endpoint)
}

/// Gaios: `count` sessions on the cell at `addresses` (replica pids
/// `pids`), over TLS with `tls`. The sessions follow the master as the
/// client library does: a call or stream the master cannot take
/// (`UNAVAILABLE`, a broken connection) goes again to the master the
/// replicas name then, so a change of master during a long set-up costs
/// reconnects, not the run.
pub async fn gaios(addresses: &[String], tls: Option<&Tls>, pids: &[u32], count: usize, hold: Duration) -> anyhow::Result<SessionsResult> {
    let master = settled_master(addresses, tls).await.context("no Gaios master that creates sessions")?;
    let connections = count.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let masters = Arc::new(MasterChannels::connect(addresses, tls, master, connections).await?);

    // Each session is kept alive from the moment it exists, as the client
    // library does, so the set-up also shows what thousands of live
    // KeepAlive streams cost while sessions are being created.
    let run = Run::new(count);
    let mut holding = JoinSet::new();
    for i in 0..count {
        let masters = masters.clone();
        let (counters, stop, creating, created) = run.task();
        holding.spawn(async move {
            let permit = creating.acquire_owned().await?;
            let session = create_gaios_session(&masters, i).await;
            drop(permit);
            let _ = created.send(session.as_ref().map(|_| ()).map_err(|status| status.message().to_string())).await;
            let created = session.context("CreateSession")?;
            // Every call on the session carries its secret.
            let session = (created.session_id, created.session_secret);
            keep_gaios_session_alive(&masters, i, session.clone(), stop, counters).await;
            anyhow::Ok(session)
        });
    }
    let (ids, result) = run.hold(&mut holding, count, "CreateSession", pids, hold).await?;

    // End the sessions (bounded concurrency), so later workloads share the
    // cell with nothing left behind.
    let mut closing = JoinSet::new();
    for (i, (session_id, session_secret)) in ids.into_iter().enumerate() {
        if closing.len() >= CREATE_CONCURRENCY {
            closing.join_next().await;
        }
        let mut cell = CellClient::new(masters.channel(i).await.1);
        closing.spawn(async move { cell.close_session(api::CloseSessionRequest { session_id, session_secret }).await.is_ok() });
    }
    while closing.join_next().await.is_some() {}
    Ok(result)
}

/// How long a session's creation follows changes of master before the run
/// gives up.
const CREATE_DEADLINE: Duration = Duration::from_secs(30);

/// Creates session `i` on the master, following it through a change.
async fn create_gaios_session(masters: &MasterChannels, i: usize) -> Result<api::CreateSessionResponse, tonic::Status> {
    let until = Instant::now() + CREATE_DEADLINE;
    loop {
        let (master, channel) = masters.channel(i).await;
        let request = api::CreateSessionRequest { client_name: format!("bench-session-{i}") };
        match CellClient::new(channel).create_session(request).await {
            Ok(created) => return Ok(created.into_inner()),
            Err(status) if follows_master(&status) && Instant::now() < until => {
                masters.follow(&master).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Whether a failed call should go again to the master the replicas name:
/// the answerer is not (or no longer) master, or the connection broke.
fn follows_master(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

/// Connections to the master, replaced when the master changes.
struct MasterChannels {
    addresses: Vec<String>,
    tls: Option<Tls>,
    /// The master's address and the connections to it.
    current: tokio::sync::Mutex<(String, Vec<Channel>)>,
}

impl MasterChannels {
    /// `connections` connections to `master`.
    async fn connect(addresses: &[String], tls: Option<&Tls>, master: String, connections: usize) -> anyhow::Result<MasterChannels> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            channels.push(endpoint(&master, tls)?.connect().await.with_context(|| format!("connect to {master}"))?);
        }
        Ok(MasterChannels { addresses: addresses.to_vec(), tls: tls.cloned(), current: tokio::sync::Mutex::new((master, channels)) })
    }

    /// The master's address and the connection session `i` uses.
    async fn channel(&self, i: usize) -> (String, Channel) {
        let current = self.current.lock().await;
        (current.0.clone(), current.1[i % current.1.len()].clone())
    }

    /// A call to `seen` failed as one the master cannot take: unless another
    /// session already moved on from `seen`, asks the replicas which one is
    /// master now and, if another, connects to it (lazily: the sessions'
    /// next calls open the connections).
    async fn follow(&self, seen: &str) {
        let mut current = self.current.lock().await;
        if current.0 != seen {
            return;
        }
        let Some(master) = master_address(&self.addresses, self.tls.as_ref()).await else { return };
        if master == seen {
            return;
        }
        let channels: Result<Vec<Channel>, _> = (0..current.1.len()).map(|_| endpoint(&master, self.tls.as_ref()).map(|e| e.connect_lazy())).collect();
        if let Ok(channels) = channels {
            *current = (master, channels);
        }
    }
}

/// What the tasks of one sessions run share. Each task sets up its session
/// (at most [`CREATE_CONCURRENCY`] at once), reports the set-up, and keeps
/// the session alive until the stop signal.
struct Run {
    counters: Arc<Counters>,
    stop: tokio::sync::watch::Sender<bool>,
    setting_up: Arc<tokio::sync::Semaphore>,
    reports: (tokio::sync::mpsc::Sender<SetUp>, tokio::sync::mpsc::Receiver<SetUp>),
    started: Instant,
}

/// One session's set-up: done, or why not.
type SetUp = Result<(), String>;

impl Run {
    fn new(count: usize) -> Run {
        Run {
            counters: Arc::new(Counters::default()),
            stop: tokio::sync::watch::channel(false).0,
            setting_up: Arc::new(tokio::sync::Semaphore::new(CREATE_CONCURRENCY)),
            reports: tokio::sync::mpsc::channel(count.max(1)),
            started: Instant::now(),
        }
    }

    /// What one task needs.
    fn task(&self) -> (Arc<Counters>, Stop, Arc<tokio::sync::Semaphore>, tokio::sync::mpsc::Sender<SetUp>) {
        (self.counters.clone(), self.stop.subscribe(), self.setting_up.clone(), self.reports.0.clone())
    }

    /// Waits until all `count` sessions are set up (failing on the first
    /// that was not), holds them for `hold` while measuring the replicas
    /// `pids`, stops the tasks and returns what they return, with the result.
    async fn hold<T: 'static>(
        mut self,
        holding: &mut JoinSet<anyhow::Result<T>>,
        count: usize,
        what: &str,
        pids: &[u32],
        hold: Duration,
    ) -> anyhow::Result<(Vec<T>, SessionsResult)> {
        for done in 0..count {
            if let Err(why) = self.reports.1.recv().await.unwrap_or_else(|| Err("the task ended".into())) {
                anyhow::bail!("{what} failed after {done} of {count}: {why}");
            }
        }
        let setup = self.started.elapsed();
        let before = ProcessUsage::of(pids);
        tokio::time::sleep(hold).await;
        let after = ProcessUsage::of(pids);
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(count);
        while let Some(joined) = holding.join_next().await {
            out.push(joined??);
        }
        Ok((out, self.counters.result(count, setup, &before, &after, hold)))
    }
}

/// The master, once it creates sessions: the cell may still be settling
/// after the workload before (a failover), and the sessions of one run all
/// live on one master, so a probe session is created (and closed) first,
/// retrying `UNAVAILABLE` answers on the master found then for up to 20 s.
/// (A probe whose `CreateSession` was cut off by a change of master may
/// still take effect; that session expires a lease later.)
async fn settled_master(addresses: &[String], tls: Option<&Tls>) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let master = master_address(addresses, tls).await?;
        let endpoint = endpoint(&master, tls).ok()?;
        if let Ok(channel) = endpoint.connect().await {
            let mut cell = CellClient::new(channel);
            let probe = api::CreateSessionRequest { client_name: "bench-probe".into() };
            match cell.create_session(probe).await {
                Ok(created) => {
                    let created = created.into_inner();
                    let close = api::CloseSessionRequest { session_id: created.session_id, session_secret: created.session_secret };
                    let _ = cell.close_session(close).await;
                    return Some(master);
                }
                Err(status) if status.code() != tonic::Code::Unavailable => return None,
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Which replica is master, by asking them.
async fn master_address(addresses: &[String], tls: Option<&Tls>) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let statuses = gaios_client::cell_status(addresses, tls).await;
        if let Some(master) = statuses.iter().find(|s| s.role() == api::Role::Master) {
            return Some(master.members.iter().find(|m| m.id == master.id).map(|m| m.client_address.clone()).unwrap_or_default())
                .filter(|a| !a.is_empty());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Turns true when the hold is over.
type Stop = tokio::sync::watch::Receiver<bool>;

#[derive(Default)]
struct Counters {
    expired: AtomicU64,
    answered: AtomicU64,
    reconnects: AtomicU64,
}

impl Counters {
    fn result(&self, sessions: usize, setup: Duration, before: &ProcessUsage, after: &ProcessUsage, hold: Duration) -> SessionsResult {
        SessionsResult {
            sessions,
            setup,
            spurious_expiries: self.expired.load(Ordering::Relaxed),
            keep_alives: Some(self.answered.load(Ordering::Relaxed)),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            cpu_cores: after.cpu_seconds_since(before) / hold.as_secs_f64(),
            rss_mib: after.rss_bytes as f64 / f64::from(1 << 20),
        }
    }
}

/// One Gaios session's keep-alive loop until `stop` says so; session `i`
/// of the run, on the master's connection `i` uses.
async fn keep_gaios_session_alive(masters: &MasterChannels, i: usize, session: (u64, bytes::Bytes), mut stop: Stop, counters: Arc<Counters>) {
    let (session_id, session_secret) = session;
    let keep_alive = |acknowledged_event| api::KeepAliveRequest { session_id, acknowledged_event, session_secret: session_secret.clone() };
    let interval = SESSION_LEASE / 4;
    let mut acknowledged = 0;
    while !*stop.borrow() {
        let (master, channel) = masters.channel(i).await;
        let (requests, receiver) = tokio::sync::mpsc::channel(2);
        let _ = requests.try_send(keep_alive(acknowledged));
        let mut cell = CellClient::new(channel);
        let response = match cell.keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver)).await {
            Ok(response) => response,
            Err(status) => {
                if stream_ended(Some(&status), masters, &master, &counters).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut answers = response.into_inner();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticker.tick() => {
                    let _ = requests.try_send(keep_alive(acknowledged));
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) => {
                        if answer.lease_ms > 0 {
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(last) = answer.events.last() {
                            acknowledged = acknowledged.max(last.number);
                        }
                    }
                    Ok(None) => {
                        stream_ended(None, masters, &master, &counters).await;
                        break;
                    }
                    Err(status) => {
                        if stream_ended(Some(&status), masters, &master, &counters).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// A session's KeepAlive stream to `master` failed with `status` (`None`:
/// the cell closed it). `FAILED_PRECONDITION` means the cell ended the
/// session: an expiry, counted, and true is returned. Anything else is a
/// reconnect, counted, after the replicas are asked which one is master.
async fn stream_ended(status: Option<&tonic::Status>, masters: &MasterChannels, master: &str, counters: &Counters) -> bool {
    if status.is_some_and(|status| status.code() == tonic::Code::FailedPrecondition) {
        counters.expired.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counters.reconnects.fetch_add(1, Ordering::Relaxed);
    masters.follow(master).await;
    false
}

/// etcd: `count` leases kept alive.
pub async fn etcd(endpoints: &[String], pids: &[u32], count: usize, hold: Duration) -> anyhow::Result<SessionsResult> {
    let client = etcd_client::Client::connect(endpoints, None).await.context("connect to etcd")?;
    let ttl = i64::try_from(SESSION_LEASE.as_secs()).unwrap_or(12);
    let run = Run::new(count);
    let mut holding = JoinSet::new();
    for _ in 0..count {
        let mut client = client.clone();
        let (counters, stop, granting, granted) = run.task();
        holding.spawn(async move {
            let permit = granting.acquire_owned().await?;
            let lease = client.lease_grant(ttl, None).await;
            drop(permit);
            let _ = granted.send(lease.as_ref().map(|_| ()).map_err(ToString::to_string)).await;
            let id = lease.context("LeaseGrant")?.id();
            keep_etcd_lease_alive(client, id, stop, counters).await;
            anyhow::Ok(id)
        });
    }
    let (ids, result) = run.hold(&mut holding, count, "LeaseGrant", pids, hold).await?;

    let mut revoking = JoinSet::new();
    for &id in &ids {
        if revoking.len() >= CREATE_CONCURRENCY {
            revoking.join_next().await;
        }
        let mut client = client.clone();
        revoking.spawn(async move { client.lease_revoke(id).await.is_ok() });
    }
    while revoking.join_next().await.is_some() {}
    Ok(result)
}

async fn keep_etcd_lease_alive(mut client: etcd_client::Client, id: i64, mut stop: Stop, counters: Arc<Counters>) {
    let interval = SESSION_LEASE / 4;
    while !*stop.borrow() {
        let Ok((mut keeper, mut answers)) = client.lease_keep_alive(id).await else {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticker.tick() => {
                    if keeper.keep_alive().await.is_err() {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        counters.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {
                        counters.expired.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(None) | Err(_) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

/// ZooKeeper: `count` sessions in worker processes of this binary
/// (`gaios-bench zookeeper-sessions-worker`), each holding at most
/// [`ZOOKEEPER_SESSIONS_PER_PROCESS`].
pub async fn zookeeper(cluster: &str, pids: &[u32], count: usize, hold: Duration) -> anyhow::Result<SessionsResult> {
    let workers = count.div_ceil(ZOOKEEPER_SESSIONS_PER_PROCESS).max(1);
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for worker in 0..workers {
        let share = (count / workers) + usize::from(worker < count % workers);
        let child = tokio::process::Command::new(&exe)
            .args(["zookeeper-sessions-worker", cluster, &share.to_string(), &hold.as_secs().to_string()])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a ZooKeeper sessions worker")?;
        children.push(child);
    }
    // Each worker prints "ready" once its sessions are up, then waits for a
    // line on stdin to start holding, so every worker holds at once.
    let mut outputs = Vec::new();
    for child in &mut children {
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = lines.next_line().await?.unwrap_or_default();
        anyhow::ensure!(ready == "ready", "a ZooKeeper sessions worker failed to set up: {ready:?}");
        outputs.push(lines);
    }
    let setup = started.elapsed();
    let before = ProcessUsage::of(pids);
    for child in &mut children {
        let stdin = child.stdin.as_mut().context("worker stdin")?;
        tokio::io::AsyncWriteExt::write_all(stdin, b"go\n").await?;
    }
    let mut totals = SessionsResult { sessions: count, setup, ..SessionsResult::default() };
    for lines in &mut outputs {
        let line = lines.next_line().await?.unwrap_or_default();
        let mut fields = line.split_whitespace().filter_map(|f| f.split_once('='));
        for (key, value) in fields.by_ref() {
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "expired" => totals.spurious_expiries += value,
                "disconnects" => totals.reconnects += value,
                _ => {}
            }
        }
    }
    let after = ProcessUsage::of(pids);
    for child in &mut children {
        let _ = child.wait().await;
    }
    totals.cpu_cores = after.cpu_seconds_since(&before) / hold.as_secs_f64();
    totals.rss_mib = after.rss_bytes as f64 / f64::from(1 << 20);
    Ok(totals)
}

/// The worker: opens `count` ZooKeeper sessions, prints `ready`, waits for a
/// line on stdin, holds them for `hold`, then prints
/// `expired=E disconnects=D` and closes them.
pub async fn zookeeper_worker(cluster: &str, count: usize, hold: Duration) -> anyhow::Result<()> {
    let mut clients = Vec::with_capacity(count);
    let mut connecting = JoinSet::new();
    for _ in 0..count {
        if connecting.len() >= CREATE_CONCURRENCY
            && let Some(client) = connecting.join_next().await
        {
            clients.push(client??);
        }
        let cluster = cluster.to_string();
        connecting.spawn(async move {
            anyhow::Ok(zookeeper_client::Client::connector().session_timeout(SESSION_LEASE).connect(&cluster).await?)
        });
    }
    while let Some(client) = connecting.join_next().await {
        clients.push(client??);
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let counters = Arc::new(Counters::default());
    let stop = Instant::now() + hold;
    let mut watching = JoinSet::new();
    for client in &clients {
        let mut watcher = client.state_watcher();
        let counters = counters.clone();
        watching.spawn(async move {
            loop {
                let state = tokio::select! {
                    _ = tokio::time::sleep_until(stop.into()) => return,
                    state = watcher.changed() => state,
                };
                match state {
                    zookeeper_client::SessionState::Expired => {
                        counters.expired.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    zookeeper_client::SessionState::Disconnected => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    zookeeper_client::SessionState::Closed | zookeeper_client::SessionState::AuthFailed => return,
                    _ => {}
                }
            }
        });
    }
    while watching.join_next().await.is_some() {}
    println!("expired={} disconnects={}", counters.expired.load(Ordering::Relaxed), counters.reconnects.load(Ordering::Relaxed));
    drop(clients);
    Ok(())
}
