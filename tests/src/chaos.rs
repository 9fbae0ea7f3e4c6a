//! The chaos suite: five real replicas whose peer traffic runs through a
//! fault proxy, nemeses on a seeded schedule, five concurrent workloads
//! whose every operation is recorded, and checkers over the histories.
//!
//! Faults (see [`Fault`]): SIGKILL of the master, a follower or two
//! replicas, SIGSTOP of the master for longer than the master lease, the
//! master isolated, a majority/minority split with the master in the
//! minority, a bridge, one-way loss, delayed links, and restarts and heals.
//! At most two replicas are down or cut off at once; a separate check at the
//! end kills three and shows that the cell refuses writes rather than
//! losing them.
//!
//! Workloads and their checkers:
//! 1. **registers**: read, write and compare-and-set on a few files, checked
//!    per file for linearizability ([`crate::linearizability`]);
//! 2. **fenced locks**: holders of one exclusive lock update a resource that
//!    checks sequencers with a [`Fence`] and the cell; the same work on an
//!    unfenced resource is the control;
//! 3. **election**: candidates campaign on one file; at most one leader per
//!    lock generation, and a new leader only after the previous released;
//! 4. **sessions and ephemerals**: an ephemeral node disappears only after
//!    its session ended, and always after;
//! 5. **unique-value set**: every acknowledged create is present at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gaios_client::{Client, Error, Fence, LockMode, OpenOptions, Options, election};
use serde_json::json;
use tokio::sync::watch;

use crate::linearizability::{self, Op, OpKind, OpResult, Verdict};
use crate::proxy::Network;
use crate::{Cell, REPLICAS};

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `short` or `long`.
    pub name: String,
    /// How long faults are injected.
    pub duration: Duration,
    /// The seed of the schedule and the workloads' choices.
    pub seed: u64,
    /// Where the JSON report goes.
    pub results_dir: PathBuf,
}

impl Profile {
    /// The profile of the test command: about ninety seconds of faults.
    pub fn short(seed: u64) -> Profile {
        Profile { name: "short".into(), duration: Duration::from_secs(90), seed, results_dir: results_dir() }
    }

    /// A long run of `duration`.
    pub fn long(duration: Duration, seed: u64) -> Profile {
        Profile { name: "long".into(), duration, seed, results_dir: results_dir() }
    }

    /// `GAIOS_CHAOS=long` (with `GAIOS_CHAOS_MINUTES`, default 20) or the
    /// short profile; `GAIOS_CHAOS_SEED` fixes the seed.
    pub fn from_env() -> Profile {
        let seed = std::env::var("GAIOS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(random_seed);
        match std::env::var("GAIOS_CHAOS").as_deref() {
            Ok("long") => {
                let minutes = std::env::var("GAIOS_CHAOS_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(20);
                Profile::long(Duration::from_secs(60 * minutes), seed)
            }
            _ => Profile::short(seed),
        }
    }
}

fn results_dir() -> PathBuf {
    std::env::var_os("GAIOS_CHAOS_RESULTS").map_or_else(|| std::env::temp_dir().join("gaios-chaos-results"), PathBuf::from)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() % 1_000_000
}

/// A tiny seeded generator (xorshift64*), so a seed replays the schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = u64::try_from((high - low).as_millis()).unwrap_or(0);
        low + Duration::from_millis(self.below(span + 1))
    }
}

/// One fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the master, restart it later.
    KillMaster,
    /// SIGKILL a follower, restart it later.
    KillFollower,
    /// SIGKILL two replicas at once (the master among them or not).
    KillTwo,
    /// SIGSTOP the master for longer than the master lease, then SIGCONT.
    PauseMaster,
    /// Cut every link to and from the master.
    IsolateMaster,
    /// The master and one follower on one side, three on the other.
    SplitMinority,
    /// Two groups that cannot talk, joined by one replica that sees both.
    Bridge,
    /// The master's messages to everyone are lost; it still hears them.
    OneWayFromMaster,
    /// Every link delayed by 30-80 ms.
    Delay,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::KillMaster,
        Fault::KillFollower,
        Fault::KillTwo,
        Fault::PauseMaster,
        Fault::IsolateMaster,
        Fault::SplitMinority,
        Fault::Bridge,
        Fault::OneWayFromMaster,
        Fault::Delay,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillMaster => "kill-master",
            Fault::KillFollower => "kill-follower",
            Fault::KillTwo => "kill-two",
            Fault::PauseMaster => "pause-master",
            Fault::IsolateMaster => "isolate-master",
            Fault::SplitMinority => "split-minority",
            Fault::Bridge => "bridge",
            Fault::OneWayFromMaster => "one-way-from-master",
            Fault::Delay => "delay",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect (or, for a read, returned).
    Ok,
    /// It surely did not take effect.
    Fail,
    /// It may or may not have taken effect.
    Indeterminate,
}

/// Counts per workload.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    fail: u64,
    indeterminate: u64,
}

/// Everything the workloads and the nemesis record, timed in microseconds
/// since the run began.
struct Recorder {
    start: Instant,
    counts: Mutex<BTreeMap<&'static str, Counts>>,
    registers: Mutex<BTreeMap<String, Vec<Op>>>,
    writes_ok: Mutex<Vec<(u64, u64)>>,
    faults: Mutex<Vec<serde_json::Value>>,
    heals: Mutex<Vec<u64>>,
    locks: Mutex<LockLog>,
    leaders: Mutex<Vec<Leadership>>,
    ephemerals: Mutex<Ephemerals>,
    set_acknowledged: Mutex<BTreeSet<String>>,
}

#[derive(Default)]
struct LockLog {
    /// (generation, worker, granted at)
    grants: Vec<(u64, usize, u64)>,
    /// (generation, worker, check invoked at, accepted)
    fenced: Vec<(u64, usize, u64, bool)>,
    /// (worker, from, to): when a worker believed it held the lock.
    held: Vec<(usize, u64, u64)>,
}

#[derive(Debug, Clone)]
struct Leadership {
    generation: u64,
    candidate: usize,
    started: u64,
    /// When it began to resign (None if it lost leadership instead).
    resigned: Option<u64>,
}

#[derive(Default)]
struct Ephemerals {
    /// name -> (created at, ended at: close invoked or client abandoned)
    nodes: BTreeMap<String, (u64, Option<u64>)>,
    /// Nodes whose session the cell expired before the workload ended it
    /// (the client saw `Expired`): their disappearance is legitimate.
    expired_early: BTreeSet<String>,
    /// (read invoked, read completed, names present)
    observations: Vec<(u64, u64, BTreeSet<String>)>,
}

impl Recorder {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn count(&self, workload: &'static str, outcome: Outcome) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = counts.entry(workload).or_default();
        match outcome {
            Outcome::Ok => entry.ok += 1,
            Outcome::Fail => entry.fail += 1,
            Outcome::Indeterminate => entry.indeterminate += 1,
        }
    }

    fn write_ok(&self, invoked: u64, completed: u64) {
        lock(&self.writes_ok).push((invoked, completed));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether an error means the operation surely did not take effect.
fn definite(error: &Error) -> bool {
    matches!(
        error,
        Error::NotFound(_) | Error::AlreadyExists(_) | Error::LockHeld(_) | Error::FailedPrecondition(_) | Error::InvalidArgument(_)
    )
}

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    /// The JSON report (also written to the results directory).
    pub json: serde_json::Value,
    /// The summary table.
    pub table: String,
    /// Violations found by all checkers together.
    pub violations: u64,
    /// Where the JSON report was written.
    pub path: PathBuf,
}

const SESSION_LEASE_MS: u64 = 3_000;
/// At least the master lease (the server's default is 250 ms); pauses last
/// longer than this.
const MASTER_LEASE: Duration = Duration::from_millis(1_000);

fn client_options() -> Options {
    Options {
        grace_period: Duration::from_secs(8),
        attempt_timeout: Duration::from_millis(1_500),
        call_deadline: Duration::from_secs(6),
        client_name: "chaos".into(),
    }
}

/// How long a workload waits for the cell before giving up (the nemesis
/// never takes a quorum away for this long).
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

async fn connect(addresses: &[String]) -> Client {
    let until = Instant::now() + CONNECT_DEADLINE;
    loop {
        match Client::connect(addresses, client_options()).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(error) => panic!("chaos: no session could be created for {CONNECT_DEADLINE:?}: {error}"),
        }
    }
}


/// Runs the suite with `profile` and returns the report. The nemesis stops
/// after `profile.duration`; the checks run after the cell is healed.
pub async fn run(profile: Profile) -> anyhow::Result<Report> {
    let lease = SESSION_LEASE_MS.to_string();
    // The proxy sits in front of every replica's real peer listener; each
    // replica reaches each other one through its own directed link.
    let (members, reserved) = Cell::reserve_members();
    let targets: Vec<(u64, std::net::SocketAddr)> = members.iter().map(|m| (m.id, m.peer)).collect();
    let network = Network::start(&targets).await?;
    // The proxy's links are bound; free the replicas' ports for them.
    drop(reserved);
    let mut routes = BTreeMap::new();
    for from in &members {
        for to in &members {
            if from.id != to.id {
                routes.insert((from.id, to.id), network.address(from.id, to.id));
            }
        }
    }
    let network = &network;
    let mut cell = Cell::start_on(&["--session-lease-ms", &lease], members, routes);
    let addresses: Vec<String> = cell.members.iter().map(|m| m.client.to_string()).collect();

    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    if crate::wait_for_master(&cell, &all, crate::FIRST_MASTER_DEADLINE).await.is_none() {
        anyhow::bail!("no master at the start\n{}", cell.logs());
    }
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        counts: Mutex::new(BTreeMap::new()),
        registers: Mutex::new(BTreeMap::new()),
        writes_ok: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        heals: Mutex::new(Vec::new()),
        locks: Mutex::new(LockLog::default()),
        leaders: Mutex::new(Vec::new()),
        ephemerals: Mutex::new(Ephemerals::default()),
        set_acknowledged: Mutex::new(BTreeSet::new()),
    });
    let setup = connect(&addresses).await;
    for directory in ["/chaos", "/chaos/eph", "/chaos/set"] {
        setup.open(directory, OpenOptions::new().create().directory()).await?;
    }

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut rng = Rng::new(profile.seed);
    for worker in 0..3 {
        tasks.push(tokio::spawn(registers(worker, addresses.clone(), recorder.clone(), stop.clone(), Rng::new(rng.next_u64()))));
    }
    for reader in 0..2 {
        tasks.push(tokio::spawn(pinned_reads(100 + reader, addresses.clone(), recorder.clone(), stop.clone(), Rng::new(rng.next_u64()))));
    }
    let fence = Arc::new(Fence::new());
    for worker in 0..3 {
        tasks.push(tokio::spawn(fenced_locks(worker, addresses.clone(), recorder.clone(), stop.clone(), fence.clone())));
    }
    for candidate in 0..3 {
        tasks.push(tokio::spawn(elections(candidate, addresses.clone(), recorder.clone(), stop.clone(), Rng::new(rng.next_u64()))));
    }
    for worker in 0..2 {
        tasks.push(tokio::spawn(ephemerals(worker, addresses.clone(), recorder.clone(), stop.clone(), Rng::new(rng.next_u64()))));
    }
    tasks.push(tokio::spawn(observe_ephemerals(addresses.clone(), recorder.clone(), stop.clone())));
    for worker in 0..2 {
        tasks.push(tokio::spawn(unique_set(worker, addresses.clone(), recorder.clone(), stop.clone())));
    }

    // The nemesis.
    let mut fault_counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mandatory = [Fault::KillMaster, Fault::PauseMaster, Fault::IsolateMaster];
    let until = Instant::now() + profile.duration;
    let mut step = 0usize;
    tokio::time::sleep(Duration::from_secs(3)).await;
    while Instant::now() < until {
        let fault = mandatory.get(step).copied().unwrap_or_else(|| Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize]);
        step += 1;
        let hold = rng.between(Duration::from_millis(1_500), Duration::from_millis(4_000));
        inject(&mut cell, network, fault, hold, &recorder, &mut rng).await;
        *fault_counts.entry(fault.name()).or_default() += 1;
        tokio::time::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(4))).await;
    }
    network.heal();
    for index in 0..REPLICAS as usize {
        if !cell.is_running(index) {
            cell.restart(index);
        }
    }
    // Let the workloads run on the healed cell, then stop them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    if crate::wait_for_master(&cell, &all, crate::FIRST_MASTER_DEADLINE).await.is_none() {
        anyhow::bail!("no master after healing\n{}", cell.logs());
    }

    // Checks.
    let mut violations = BTreeMap::new();
    violations.insert("registers: non-linearizable files", check_registers(&recorder));
    let (stale, doubled, control) = check_locks(&recorder);
    violations.insert("fenced locks: stale sequencers accepted", stale);
    violations.insert("fenced locks: two holders in one generation", doubled);
    violations.insert("election: bad leader successions", check_elections(&recorder));
    // Abandoned sessions need their lease (and a failover's fresh lease) to end.
    tokio::time::sleep(Duration::from_millis(3 * SESSION_LEASE_MS)).await;
    let (early, lingering) = check_ephemerals(&recorder, &addresses).await;
    violations.insert("ephemerals: deleted before their session ended", early);
    violations.insert("ephemerals: still present after their session ended", lingering);
    let lost = check_set(&recorder, &addresses).await;
    let sessions_expired_under_faults = lock(&recorder.ephemerals).expired_early.len();
    violations.insert("unique set: acknowledged writes lost", lost);
    let accepted_without_quorum = check_three_down(&mut cell, &addresses, &recorder).await;
    violations.insert("three down: writes acknowledged without a quorum", accepted_without_quorum);
    let total: u64 = violations.values().sum();

    let heal_latencies = heal_to_write_ms(&recorder);
    let counts = lock(&recorder.counts).clone();
    let json = json!({
        "profile": profile.name,
        "seed": profile.seed,
        "duration_s": profile.duration.as_secs(),
        "operations": counts.iter().map(|(w, c)| (w.to_string(), json!({"ok": c.ok, "fail": c.fail, "indeterminate": c.indeterminate}))).collect::<serde_json::Map<_, _>>(),
        "faults": fault_counts,
        "fault_log": lock(&recorder.faults).clone(),
        "heal_to_first_write_ms": {"p50": percentile(&heal_latencies, 50), "p99": percentile(&heal_latencies, 99), "samples": heal_latencies.len()},
        "violations": violations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "control_unfenced_overlaps": control,
        "ephemeral_sessions_expired_by_the_cell": sessions_expired_under_faults,
        "acknowledged_writes_lost": lost,
        "replay": replay_command(&profile),
    });
    let table = summary_table(&counts, &fault_counts, &heal_latencies, &violations, control, lost, &profile);
    std::fs::create_dir_all(&profile.results_dir)?;
    let path = profile.results_dir.join(format!("chaos-{}-seed-{}.json", profile.name, profile.seed));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    drop(cell);
    Ok(Report { json, table, violations: total, path })
}

/// How to replay `profile`.
pub fn replay_command(profile: &Profile) -> String {
    if profile.name == "long" {
        format!(
            "GAIOS_CHAOS=long GAIOS_CHAOS_MINUTES={} GAIOS_CHAOS_SEED={} cargo run -p gaios-tests --bin gaios-chaos",
            profile.duration.as_secs() / 60,
            profile.seed
        )
    } else {
        format!("GAIOS_CHAOS_SEED={} cargo test -p gaios-tests --test chaos -- --nocapture", profile.seed)
    }
}

/// The master's index per the replicas' statuses (one that says master and
/// holds a lease), if any.
async fn master_index(cell: &Cell) -> Option<usize> {
    for index in 0..REPLICAS as usize {
        if !cell.is_running(index) {
            continue;
        }
        if let Some(status) = crate::status(cell.members[index].client).await
            && status.role() == gaios_proto::cell::v1::Role::Master && status.lease_remaining_ms > 0 {
                return Some(index);
            }
    }
    None
}

async fn inject(cell: &mut Cell, network: &Network, fault: Fault, hold: Duration, recorder: &Recorder, rng: &mut Rng) {
    let master = master_index(cell).await;
    let ids: Vec<u64> = cell.members.iter().map(|m| m.id).collect();
    let master_id = master.map(|i| ids[i]);
    let others: Vec<usize> = (0..ids.len()).filter(|&i| Some(i) != master).collect();
    let pick = |rng: &mut Rng, from: &[usize]| from[rng.below(from.len() as u64) as usize];
    let started = recorder.now();
    let mut detail = String::new();
    let mut killed = Vec::new();
    let mut paused = None;
    match (fault, master) {
        (Fault::KillMaster, Some(m)) => killed.push(m),
        (Fault::KillFollower, _) | (Fault::KillMaster, None) => killed.push(pick(rng, &others)),
        (Fault::KillTwo, _) => {
            let first = master.unwrap_or_else(|| pick(rng, &others));
            let rest: Vec<usize> = (0..ids.len()).filter(|&i| i != first).collect();
            killed.push(first);
            killed.push(pick(rng, &rest));
        }
        (Fault::PauseMaster, Some(m)) => paused = Some(m),
        (Fault::PauseMaster, None) => paused = Some(pick(rng, &others)),
        (Fault::IsolateMaster, _) => {
            let target = master_id.unwrap_or(ids[pick(rng, &others)]);
            network.isolate(target);
            detail = format!("isolated replica {target}");
        }
        (Fault::SplitMinority, _) => {
            let target = master_id.unwrap_or(ids[0]);
            let partner = ids[pick(rng, &others)];
            let minority = [target, partner];
            let majority: Vec<u64> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
            network.partition(&[&minority, &majority]);
            detail = format!("{minority:?} | {majority:?}");
        }
        (Fault::Bridge, _) => {
            let bridge = master_id.unwrap_or(ids[0]);
            let rest: Vec<u64> = ids.iter().copied().filter(|&id| id != bridge).collect();
            network.bridge(&rest[..2], bridge, &rest[2..]);
            detail = format!("{:?} <- {bridge} -> {:?}", &rest[..2], &rest[2..]);
        }
        (Fault::OneWayFromMaster, _) => {
            let from = master_id.unwrap_or(ids[0]);
            for &to in &ids {
                if to != from {
                    network.one_way(from, to);
                }
            }
            detail = format!("messages from {from} lost");
        }
        (Fault::Delay, _) => {
            let delay = rng.between(Duration::from_millis(30), Duration::from_millis(80));
            network.delay_all(delay);
            detail = format!("every link delayed {delay:?}");
        }
    }
    for &index in &killed {
        cell.kill(index);
    }
    if let Some(index) = paused {
        cell.signal(index, libc::SIGSTOP);
    }
    if !killed.is_empty() {
        detail = format!("SIGKILL {:?}", killed.iter().map(|&i| ids[i]).collect::<Vec<_>>());
    }
    let hold = if paused.is_some() {
        detail = format!("SIGSTOP {} for {hold:?}", ids[paused.unwrap_or(0)]);
        hold.max(MASTER_LEASE * 2)
    } else {
        hold
    };
    tokio::time::sleep(hold).await;
    if let Some(index) = paused {
        cell.signal(index, libc::SIGCONT);
    }
    for &index in &killed {
        cell.restart(index);
    }
    network.heal();
    let healed = recorder.now();
    lock(&recorder.heals).push(healed);
    lock(&recorder.faults).push(json!({
        "fault": fault.name(),
        "master": master_id,
        "detail": detail,
        "start_ms": started / 1000,
        "heal_ms": healed / 1000,
    }));
}

// ---------------------------------------------------------------------------
// Workloads.
// ---------------------------------------------------------------------------

const REGISTER_FILES: u64 = 3;
/// How long the register workload uses one file per key before moving on.
const REGISTER_PERIOD_SECS: u64 = 20;

async fn registers(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    let mut client = connect(&addresses).await;
    let mut counter = 0u64;
    let mut handles: BTreeMap<String, gaios_client::Handle> = BTreeMap::new();
    let mut last_generation: BTreeMap<String, u64> = BTreeMap::new();
    while !*stop.borrow() {
        let key = rng.below(REGISTER_FILES);
        // A fresh file per key every period, which keeps each file's history
        // (and its linearizability search) small; all workers agree on the
        // file by the run's clock.
        let period = recorder.start.elapsed().as_secs() / REGISTER_PERIOD_SECS;
        let path = format!("/chaos/r{key}-{period}");
        let handle = match handles.get(&path) {
            Some(handle) => handle.clone(),
            None => match client.open(&path, OpenOptions::new().create().event_mask(0)).await {
                Ok(handle) => {
                    handles.insert(path.clone(), handle.clone());
                    handle
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    handles.clear();
                    continue;
                }
                Err(_) => continue,
            },
        };
        counter += 1;
        let value = (worker as u64 + 1) * 1_000_000_000 + counter;
        let invoke = recorder.now();
        let choice = rng.below(3);
        let (kind, result, complete) = match choice {
            0 => match handle.contents().await {
                Ok((contents, stat)) => {
                    let value = std::str::from_utf8(&contents).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                    last_generation.insert(path.clone(), stat.content_generation);
                    recorder.count("registers", Outcome::Ok);
                    (OpKind::Read, OpResult::Read { value, generation: stat.content_generation }, Some(recorder.now()))
                }
                Err(error) => {
                    recorder.count("registers", Outcome::Fail);
                    if error == Error::SessionExpired {
                        client = connect(&addresses).await;
                        handles.clear();
                    }
                    continue; // a failed read says nothing
                }
            },
            1 => match handle.set_contents(value.to_string(), None).await {
                Ok(stat) => {
                    let done = recorder.now();
                    recorder.count("registers", Outcome::Ok);
                    recorder.write_ok(invoke, done);
                    let written = OpResult::Written { generation: Some(stat.content_generation) };
                    (OpKind::Write(value), written, Some(done))
                }
                Err(error) => {
                    if error == Error::SessionExpired {
                        client = connect(&addresses).await;
                        handles.clear();
                    }
                    recorder.count("registers", Outcome::Indeterminate);
                    (OpKind::Write(value), OpResult::Unknown, None)
                }
            },
            _ => {
                let expected = last_generation.get(&path).copied().unwrap_or(1);
                match handle.set_contents(value.to_string(), Some(expected)).await {
                    Ok(_) => {
                        let done = recorder.now();
                        recorder.count("registers", Outcome::Ok);
                        recorder.write_ok(invoke, done);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::CasOk, Some(done))
                    }
                    Err(Error::FailedPrecondition(_)) => {
                        recorder.count("registers", Outcome::Fail);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::CasFailed, Some(recorder.now()))
                    }
                    Err(error) => {
                        if error == Error::SessionExpired {
                            client = connect(&addresses).await;
                            handles.clear();
                        }
                        recorder.count("registers", Outcome::Indeterminate);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::Unknown, None)
                    }
                }
            }
        };
        lock(&recorder.registers).entry(path).or_default().push(Op { client: worker, invoke, complete, kind, result });
    }
    let _ = client.close().await;
}

/// Reads the register files straight from each replica in turn, without
/// following redirects: a replica that is not the master must refuse, and
/// one that was deposed (isolated, paused) must not answer from its stale
/// state. Every answer goes into the register histories.
async fn pinned_reads(reader: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    use gaios_proto::cell::v1 as pb;
    let mut client = connect(&addresses).await;
    let mut handles: BTreeMap<String, u64> = BTreeMap::new();
    let mut channels: BTreeMap<usize, pb::cell_client::CellClient<tonic::transport::Channel>> = BTreeMap::new();
    let mut next = 0usize;
    while !*stop.borrow() {
        let key = rng.below(REGISTER_FILES);
        let period = recorder.start.elapsed().as_secs() / REGISTER_PERIOD_SECS;
        let path = format!("/chaos/r{key}-{period}");
        let handle = match handles.get(&path) {
            Some(&handle) => handle,
            None => match client.open(&path, OpenOptions::new().create().event_mask(0)).await {
                Ok(handle) => {
                    handles.insert(path.clone(), handle.id());
                    handle.id()
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    handles.clear();
                    continue;
                }
                Err(_) => continue,
            },
        };
        next = (next + 1) % addresses.len();
        if let std::collections::btree_map::Entry::Vacant(e) = channels.entry(next) {
            let endpoint = format!("http://{}", addresses[next]);
            if let Ok(Ok(cell)) = tokio::time::timeout(Duration::from_millis(500), pb::cell_client::CellClient::connect(endpoint)).await {
                e.insert(cell);
            } else {
                continue;
            }
        }
        let Some(cell) = channels.get_mut(&next) else { continue };
        let request = pb::GetContentsAndStatRequest { handle: Some(pb::HandleRef { session_id: client.session_id(), handle, session_secret: client.session_secret().to_vec().into() }) };
        let invoke = recorder.now();
        match tokio::time::timeout(Duration::from_millis(500), cell.get_contents_and_stat(request)).await {
            Ok(Ok(answer)) => {
                let complete = recorder.now();
                let answer = answer.into_inner();
                let value = std::str::from_utf8(&answer.contents).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                let generation = answer.stat.map_or(0, |s| s.content_generation);
                recorder.count("pinned-reads", Outcome::Ok);
                let op = Op { client: reader, invoke, complete: Some(complete), kind: OpKind::Read, result: OpResult::Read { value, generation } };
                lock(&recorder.registers).entry(path).or_default().push(op);
            }
            Ok(Err(_)) => recorder.count("pinned-reads", Outcome::Fail),
            Err(_) => {
                recorder.count("pinned-reads", Outcome::Fail);
                channels.remove(&next);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = client.close().await;
}

async fn fenced_locks(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, fence: Arc<Fence>) {
    let mut client = connect(&addresses).await;
    while !*stop.borrow() {
        let handle = match client.open("/chaos/lock", OpenOptions::new().create().event_mask(0)).await {
            Ok(handle) => handle,
            Err(Error::SessionExpired) => {
                client = connect(&addresses).await;
                continue;
            }
            Err(_) => continue,
        };
        let lock_held = match handle.acquire(LockMode::Exclusive, Duration::from_secs(3)).await {
            Ok(held) => held,
            Err(error) => {
                recorder.count("fenced-locks", if definite(&error) || matches!(error, Error::Timeout(_)) { Outcome::Fail } else { Outcome::Indeterminate });
                if error == Error::SessionExpired {
                    client = connect(&addresses).await;
                }
                let _ = handle.close().await;
                continue;
            }
        };
        let granted = recorder.now();
        recorder.count("fenced-locks", Outcome::Ok);
        let generation = lock_held.sequencer().lock_generation;
        lock(&recorder.locks).grants.push((generation, worker, granted));
        for _ in 0..3 {
            let invoked = recorder.now();
            let accepted = fence.check_with_cell(&client, lock_held.sequencer()).await.is_ok();
            lock(&recorder.locks).fenced.push((generation, worker, invoked, accepted));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let released_at = recorder.now();
        lock(&recorder.locks).held.push((worker, granted, released_at));
        let _ = lock_held.release().await;
        let _ = handle.close().await;
    }
    let _ = client.close().await;
}

async fn elections(candidate: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    let mut client = connect(&addresses).await;
    while !*stop.borrow() {
        let campaign = election::campaign(&client, "/chaos/election", format!("candidate-{candidate}"));
        let leadership = match tokio::time::timeout(Duration::from_secs(10), campaign).await {
            Ok(Ok(leadership)) => leadership,
            Ok(Err(error)) => {
                recorder.count("election", if definite(&error) { Outcome::Fail } else { Outcome::Indeterminate });
                if error == Error::SessionExpired {
                    client = connect(&addresses).await;
                }
                continue;
            }
            Err(_) => {
                recorder.count("election", Outcome::Fail);
                // The abandoned wait may still be granted later: start over
                // with a fresh session so no stale wait stays in line.
                let _ = client.close().await;
                client = connect(&addresses).await;
                continue;
            }
        };
        recorder.count("election", Outcome::Ok);
        let started = recorder.now();
        let generation = leadership.sequencer().lock_generation;
        let hold = rng.between(Duration::from_millis(200), Duration::from_millis(800));
        let lost = tokio::select! {
            () = tokio::time::sleep(hold) => false,
            () = leadership.lost() => true,
        };
        let resigned = if lost {
            None
        } else {
            let at = recorder.now();
            let _ = leadership.resign().await;
            Some(at)
        };
        lock(&recorder.leaders).push(Leadership { generation, candidate, started, resigned });
        if lost {
            client = connect(&addresses).await;
        }
    }
    let _ = client.close().await;
}

async fn ephemerals(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let client = connect(&addresses).await;
        let name = format!("w{worker}-{n}");
        let path = format!("/chaos/eph/{name}");
        match client.open(&path, OpenOptions::new().create_new().ephemeral().event_mask(0)).await {
            Ok(_) => {
                recorder.count("ephemerals", Outcome::Ok);
                lock(&recorder.ephemerals).nodes.insert(name.clone(), (recorder.now(), None));
            }
            Err(error) => {
                recorder.count("ephemerals", if definite(&error) { Outcome::Fail } else { Outcome::Indeterminate });
            }
        }
        tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_millis(2_000))).await;
        let ended = recorder.now();
        let expired = *client.session_state().borrow() == gaios_client::SessionState::Expired;
        {
            let mut log = lock(&recorder.ephemerals);
            if let Some(node) = log.nodes.get_mut(&name) {
                node.1 = Some(ended);
            }
            if expired {
                log.expired_early.insert(name.clone());
            }
        }
        if rng.below(2) == 0 {
            let _ = client.close().await;
        } else {
            drop(client); // abandoned: the cell expires it after its lease
        }
    }
}

async fn observe_ephemerals(addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>) {
    let mut client = connect(&addresses).await;
    let mut directory = None;
    while !*stop.borrow() {
        if directory.is_none() {
            directory = client.open("/chaos/eph", OpenOptions::new().event_mask(0)).await.ok();
        }
        if let Some(handle) = &directory {
            let invoked = recorder.now();
            match handle.read_dir().await {
                Ok(names) => {
                    let completed = recorder.now();
                    lock(&recorder.ephemerals).observations.push((invoked, completed, names.into_iter().collect()));
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    directory = None;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = client.close().await;
}

async fn unique_set(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>) {
    let mut client = connect(&addresses).await;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let name = format!("v{worker}-{n}");
        let invoked = recorder.now();
        match client.open(&format!("/chaos/set/{name}"), OpenOptions::new().create().event_mask(0)).await {
            Ok(handle) => {
                let done = recorder.now();
                recorder.count("unique-set", Outcome::Ok);
                recorder.write_ok(invoked, done);
                lock(&recorder.set_acknowledged).insert(name);
                let _ = handle.close().await;
            }
            Err(error) => {
                recorder.count("unique-set", if definite(&error) { Outcome::Fail } else { Outcome::Indeterminate });
                if error == Error::SessionExpired {
                    client = connect(&addresses).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.close().await;
}

// ---------------------------------------------------------------------------
// Checkers.
// ---------------------------------------------------------------------------

/// Budget of the linearizability search per file.
const SEARCH_BUDGET: usize = 5_000_000;

fn check_registers(recorder: &Recorder) -> u64 {
    let histories = lock(&recorder.registers).clone();
    let mut bad = 0;
    for (path, history) in histories {
        match linearizability::check((0, 1), &history, SEARCH_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation } => {
                eprintln!("chaos: {path} is not linearizable: {explanation}");
                bad += 1;
            }
            Verdict::Unknown { reason } => eprintln!("chaos: {path}: linearizability unknown ({reason}); not counted"),
        }
    }
    bad
}

/// (stale sequencers accepted, two holders in one generation, unfenced
/// control overlaps).
fn check_locks(recorder: &Recorder) -> (u64, u64, u64) {
    let log = lock(&recorder.locks);
    let mut holders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for &(generation, worker, _) in &log.grants {
        holders.entry(generation).or_default().insert(worker);
    }
    let doubled = holders.values().filter(|workers| workers.len() > 1).count() as u64;
    // Stale: accepted although a newer generation had already been granted
    // before the check began.
    let stale = log
        .fenced
        .iter()
        .filter(|&&(generation, _, invoked, accepted)| {
            accepted && log.grants.iter().any(|&(newer, _, granted)| newer > generation && granted < invoked)
        })
        .count() as u64;
    let mut control = 0;
    for (i, a) in log.held.iter().enumerate() {
        for b in &log.held[i + 1..] {
            if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 {
                control += 1;
            }
        }
    }
    (stale, doubled, control)
}

fn check_elections(recorder: &Recorder) -> u64 {
    let mut leaders = lock(&recorder.leaders).clone();
    leaders.sort_by_key(|l| l.generation);
    let mut bad = 0;
    let mut per_generation: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for leader in &leaders {
        per_generation.entry(leader.generation).or_default().insert(leader.candidate);
    }
    bad += per_generation.values().filter(|c| c.len() > 1).count() as u64;
    for pair in leaders.windows(2) {
        let (previous, next) = (&pair[0], &pair[1]);
        if let Some(resigned) = previous.resigned
            && next.started < resigned && next.generation > previous.generation {
                eprintln!("chaos: leader of generation {} started before generation {} resigned", next.generation, previous.generation);
                bad += 1;
            }
    }
    bad
}

async fn check_ephemerals(recorder: &Recorder, addresses: &[String]) -> (u64, u64) {
    let client = connect(addresses).await;
    let present: BTreeSet<String> = match client.open("/chaos/eph", OpenOptions::new().event_mask(0)).await {
        Ok(handle) => handle.read_dir().await.unwrap_or_default().into_iter().collect(),
        Err(_) => BTreeSet::new(),
    };
    let _ = client.close().await;
    let ephemerals = lock(&recorder.ephemerals);
    let mut early = 0;
    for (name, &(created, ended)) in &ephemerals.nodes {
        if ephemerals.expired_early.contains(name) {
            continue;
        }
        // Absent from a listing that was complete before the session ended.
        let deleted_early = ephemerals.observations.iter().any(|(invoked, completed, names)| {
            *invoked > created && ended.is_none_or(|end| *completed < end) && !names.contains(name)
        });
        if deleted_early {
            eprintln!("chaos: ephemeral {name} vanished before its session ended");
            early += 1;
        }
    }
    let lingering = present.iter().filter(|name| ephemerals.nodes.get(*name).is_some_and(|(_, ended)| ended.is_some())).count() as u64
        + present.iter().filter(|name| !ephemerals.nodes.contains_key(*name)).count() as u64;
    (early, lingering)
}

async fn check_set(recorder: &Recorder, addresses: &[String]) -> u64 {
    let client = connect(addresses).await;
    let present: BTreeSet<String> = match client.open("/chaos/set", OpenOptions::new().event_mask(0)).await {
        Ok(handle) => handle.read_dir().await.unwrap_or_default().into_iter().collect(),
        Err(_) => BTreeSet::new(),
    };
    let _ = client.close().await;
    let acknowledged = lock(&recorder.set_acknowledged);
    let lost: Vec<&String> = acknowledged.iter().filter(|name| !present.contains(*name)).collect();
    if !lost.is_empty() {
        eprintln!("chaos: acknowledged but missing: {lost:?}");
    }
    lost.len() as u64
}

/// Kills three replicas and tries to write: no write may be acknowledged.
async fn check_three_down(cell: &mut Cell, addresses: &[String], recorder: &Recorder) -> u64 {
    let client = connect(addresses).await;
    let handle = client.open("/chaos/quorum", OpenOptions::new().create().event_mask(0)).await.ok();
    for index in 0..3 {
        cell.kill(index);
    }
    let started = recorder.now();
    let mut acknowledged = 0;
    if let Some(handle) = &handle {
        for attempt in 0..2 {
            if handle.set_contents(format!("without quorum {attempt}"), None).await.is_ok() {
                acknowledged += 1;
            }
        }
    }
    lock(&recorder.faults).push(json!({"fault": "kill-three", "detail": "SIGKILL replicas 1-3; writes must be refused", "start_ms": started / 1000, "heal_ms": recorder.now() / 1000}));
    for index in 0..3 {
        cell.restart(index);
    }
    drop(client);
    acknowledged
}

fn heal_to_write_ms(recorder: &Recorder) -> Vec<u64> {
    let heals = lock(&recorder.heals).clone();
    let mut writes = lock(&recorder.writes_ok).clone();
    writes.sort_by_key(|&(_, completed)| completed);
    let mut out = Vec::new();
    for heal in heals {
        if let Some(&(_, completed)) = writes.iter().find(|&&(invoked, _)| invoked >= heal) {
            out.push((completed - heal) / 1000);
        }
    }
    out.sort_unstable();
    out
}

fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) * p).div_ceil(100);
    sorted.get(index).copied()
}

fn summary_table(
    counts: &BTreeMap<&'static str, Counts>,
    faults: &BTreeMap<&'static str, u64>,
    heals: &[u64],
    violations: &BTreeMap<&'static str, u64>,
    control: u64,
    lost: u64,
    profile: &Profile,
) -> String {
    let mut out = String::new();
    out.push_str(&format!("chaos profile {} seed {} ({} s of faults)\n\n", profile.name, profile.seed, profile.duration.as_secs()));
    out.push_str("| workload | ok | failed | indeterminate |\n|---|---|---|---|\n");
    for (workload, c) in counts {
        out.push_str(&format!("| {workload} | {} | {} | {} |\n", c.ok, c.fail, c.indeterminate));
    }
    out.push_str("\n| fault | injected |\n|---|---|\n");
    for (fault, n) in faults {
        out.push_str(&format!("| {fault} | {n} |\n"));
    }
    let show = |v: Option<u64>| v.map_or("-".to_string(), |ms| format!("{ms} ms"));
    out.push_str(&format!(
        "\nheal -> first successful write: p50 {} p99 {} ({} heals)\n",
        show(percentile(heals, 50)),
        show(percentile(heals, 99)),
        heals.len()
    ));
    out.push_str("\n| checker | violations |\n|---|---|\n");
    for (checker, n) in violations {
        out.push_str(&format!("| {checker} | {n} |\n"));
    }
    out.push_str(&format!("\ncontrol (no fencing): overlapping holders {control}\nacknowledged writes lost: {lost}\n"));
    out
}
