//! The chaos suite: five real replicas whose peer traffic runs through a
//! fault proxy, nemeses on a seeded schedule, concurrent workloads whose
//! every operation is recorded, and checkers over the histories.
//!
//! Faults (see [`Fault`] and [`nemesis`]): SIGKILL of the master, a
//! follower or two replicas; SIGSTOP of the master for longer than the
//! master lease; the master isolated; a majority/minority split with the
//! master in the minority; a bridge; one-way loss; delayed links (all links
//! by tens of milliseconds, or one link by seconds); one directed link held
//! for seconds and then delivered in order, alone or while the master is
//! isolated or paused; a lock holder and a leader (client processes)
//! paused past their session lease; a follower restarted, or restarted
//! after missing hundreds of large writes; a replica's data directory
//! wiped (it must refuse to start), then that machine replaced by a new
//! replica (a new id, the same addresses) with `gaios-server init --join`
//! and `gaios member replace` while the workloads run. Some replicas run with clocks at different rates (libfaketime),
//! inside the drift bound ([`clock`]). At most two replicas are down or
//! cut off at once; a separate check at the end kills three and shows that
//! the cell refuses writes rather than losing them, and a last scenario
//! puts a master's clock outside the bound to show the checker catches the
//! stale reads that follows.
//!
//! Workloads and their checkers:
//! 1. **registers**: read, write and compare-and-set on a few files, plus
//!    reads straight from every replica, checked per file for
//!    linearizability ([`crate::linearizability`]);
//! 2. **fenced locks** (separate processes, [`workers`]): holders of one
//!    exclusive lock act on a resource that checks sequencers with a
//!    `Fence` and the cell; the same acts on an unguarded copy are the
//!    control, which must show overlapping holders once a holder was
//!    paused past its session lease;
//! 3. **election** (separate processes): candidates campaign on one file;
//!    at most one leader per lock generation, and a new leader only after
//!    the previous began to resign;
//! 4. **sessions and ephemerals**: an ephemeral node disappears only after
//!    its session ended, and always after;
//! 5. **unique-value set**: every acknowledged create is present at the end.
//!
//! Besides, every fault is charged with the master elections that happened
//! until the next one ([`elections`]), and a follower that restarts or
//! rejoins must cause none.

pub mod workers;

mod checks;
mod clock;
mod elections;
mod nemesis;
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_client::{Client, Error, OpenOptions, Options};
use serde_json::json;
use tokio::sync::watch;

pub use clock::{CLOCK_DRIFT_BOUND, OUT_OF_BOUND_RATE};

use crate::linearizability::Op;
use crate::progress::{Meter, Progress};
use crate::proxy::Network;
use crate::rng::Rng;
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
    /// The profile of the test command: about ninety seconds of faults
    /// (the mandatory faults alone take about that long).
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
    /// One directed link delayed by 1-3 s.
    SlowLink,
    /// One directed link held for 1-5 s (nothing crosses it), then
    /// delivered in order.
    HoldLink,
    /// A follower's link held for 1-5 s while the master is isolated or
    /// paused for 1.5-3 s inside that time.
    HoldLinkDeposeMaster,
    /// The lock holder (in the middle of its work) and the election leader
    /// SIGSTOPped past their session lease, then resumed.
    PauseClient,
    /// A follower SIGKILLed and restarted 3 s later, nothing else
    /// happening: it must cause no election.
    RestartFollower,
    /// A follower SIGKILLed while hundreds of 256 KiB writes are
    /// acknowledged, then restarted: it must catch up and cause no election.
    /// Runs once, at the end of the run.
    RejoinAfterWrites,
    /// A follower SIGKILLed, its data directory deleted, and started again:
    /// it must refuse to start; it stays down, the cell serves with four.
    WipeReplica,
}

impl Fault {
    /// Faults drawn at random once the mandatory ones ran (the one-shot
    /// faults, [`Fault::RejoinAfterWrites`] and [`Fault::WipeReplica`], are
    /// not among them: the first runs once at the very end, since on today's
    /// code it can leave the cell without a master; the second once, right
    /// after the mandatory faults in the short profile, half-way through a
    /// long one).
    const RANDOM: [Fault; 14] = [
        Fault::KillMaster,
        Fault::KillFollower,
        Fault::KillTwo,
        Fault::PauseMaster,
        Fault::IsolateMaster,
        Fault::SplitMinority,
        Fault::Bridge,
        Fault::OneWayFromMaster,
        Fault::Delay,
        Fault::SlowLink,
        Fault::HoldLink,
        Fault::HoldLinkDeposeMaster,
        Fault::PauseClient,
        Fault::RestartFollower,
    ];

    /// Every run begins with these, in this order.
    const MANDATORY: [Fault; 7] = [
        Fault::KillMaster,
        Fault::PauseMaster,
        Fault::IsolateMaster,
        Fault::HoldLinkDeposeMaster,
        Fault::SlowLink,
        Fault::PauseClient,
        Fault::RestartFollower,
    ];

    /// The fault's name in the report.
    pub fn name(self) -> &'static str {
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
            Fault::SlowLink => "slow-link",
            Fault::HoldLink => "hold-link",
            Fault::HoldLinkDeposeMaster => "hold-link-depose-master",
            Fault::PauseClient => "pause-client",
            Fault::RestartFollower => "restart-follower",
            Fault::RejoinAfterWrites => "rejoin-after-writes",
            Fault::WipeReplica => "wipe-replica",
        }
    }

    /// Every fault's name: what a long run injects at least once.
    pub fn all_names() -> Vec<&'static str> {
        let one_shot = [Fault::RejoinAfterWrites, Fault::WipeReplica];
        let mut names: Vec<&'static str> = Fault::RANDOM.iter().chain(&Fault::MANDATORY).chain(&one_shot).map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        names
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

/// One fault as injected.
#[derive(Debug, Clone)]
struct FaultRecord {
    name: &'static str,
    master: Option<u64>,
    detail: String,
    start: u64,
    heal: u64,
}

/// Everything the workloads and the nemesis record, timed in microseconds
/// since the run began on `CLOCK_MONOTONIC` ([`crate::monotonic_us`]), the
/// clock the worker processes use too.
struct Recorder {
    start_us: u64,
    counts: Mutex<BTreeMap<&'static str, Counts>>,
    registers: Mutex<BTreeMap<String, Vec<Op>>>,
    writes_ok: Mutex<Vec<(u64, u64)>>,
    faults: Mutex<Vec<FaultRecord>>,
    heals: Mutex<Vec<u64>>,
    locks: Mutex<LockLog>,
    leaders: Mutex<Vec<Leadership>>,
    ephemerals: Mutex<Ephemerals>,
    set_acknowledged: Mutex<BTreeSet<String>>,
    ballots: Mutex<elections::BallotLog>,
    /// Operations and faults so far, for the progress line on stderr.
    meter: Arc<Meter>,
}

#[derive(Default)]
struct LockLog {
    /// (generation, worker, granted at), as the holders reported them.
    grants: Vec<(u64, usize, u64)>,
}

#[derive(Debug, Clone)]
struct Leadership {
    generation: u64,
    candidate: usize,
    started: u64,
    /// When it began to resign.
    resigned: Option<u64>,
    /// Whether the cell acknowledged the resignation (its session and lock
    /// lasted until then).
    resign_ok: Option<bool>,
    /// When it learnt it had lost leadership (its session expired).
    lost: Option<u64>,
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
    fn new() -> Recorder {
        Recorder {
            start_us: crate::monotonic_us(),
            counts: Mutex::new(BTreeMap::new()),
            registers: Mutex::new(BTreeMap::new()),
            writes_ok: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            heals: Mutex::new(Vec::new()),
            locks: Mutex::new(LockLog::default()),
            leaders: Mutex::new(Vec::new()),
            ephemerals: Mutex::new(Ephemerals::default()),
            set_acknowledged: Mutex::new(BTreeSet::new()),
            ballots: Mutex::new(elections::BallotLog::default()),
            meter: Arc::new(Meter::default()),
        }
    }

    fn now(&self) -> u64 {
        crate::monotonic_us().saturating_sub(self.start_us)
    }

    fn count(&self, workload: &'static str, outcome: Outcome) {
        self.meter.operations(1);
        let mut counts = lock(&self.counts);
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

/// How long the replacement of the wiped replica may take.
const REPLACE_DEADLINE: Duration = Duration::from_secs(90);

/// Starts a new replica (the next free id) on the wiped machine at `victim`
/// with `gaios-server init --join` and runs `gaios member replace`; then
/// checks the configuration holds five voters with the newcomer and without
/// the wiped replica. Says what happened.
async fn replace_wiped(cell: &mut Cell, victim: usize, addresses: &[String]) -> Result<String, String> {
    let old = cell.members[victim];
    let config = gaios_client::membership::configuration(addresses, client_tls().as_ref()).await.map_err(|e| format!("cannot read the configuration: {e}"))?;
    let newcomer = crate::Member { id: config.highest_member_id + 1, ..old };
    let contacts: Vec<crate::Member> = cell.members.iter().copied().filter(|m| m.id != old.id).collect();
    cell.replace_at(victim, newcomer, &contacts);
    let began = Instant::now();
    let mut command = tokio::process::Command::new(crate::binary("gaios"));
    command
        .arg("--cell")
        .arg(addresses.join(","))
        .args(["member", "replace", &old.id.to_string(), "--id", &newcomer.id.to_string()])
        .args(["--peer", &newcomer.peer.to_string(), "--client", &newcomer.client.to_string()])
        .args(["--timeout-ms", &REPLACE_DEADLINE.as_millis().to_string()])
        .env_remove("GAIOS_CELL")
        .envs(tls_env())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(REPLACE_DEADLINE + Duration::from_secs(10), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("cannot run gaios member replace: {error}")),
        Err(_) => return Err(format!("gaios member replace did not finish within {REPLACE_DEADLINE:?}")),
    };
    let took = began.elapsed();
    if !output.status.success() {
        return Err(format!("gaios member replace {} by {} failed: {}", old.id, newcomer.id, String::from_utf8_lossy(&output.stderr).trim()));
    }
    let config = gaios_client::membership::configuration(addresses, client_tls().as_ref()).await.map_err(|e| format!("cannot read the configuration: {e}"))?;
    let voters: Vec<u64> = config.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    if voters.len() != REPLICAS as usize || !voters.contains(&newcomer.id) || voters.contains(&old.id) {
        return Err(format!("after replacing {} by {}, the voters are {voters:?}", old.id, newcomer.id));
    }
    Ok(format!("replica {} replaced by {} (same addresses) in {:.1} s; voters {voters:?}", old.id, newcomer.id, took.as_secs_f64()))
}

/// Whether an error means the operation surely did not take effect.
pub fn definite(error: &Error) -> bool {
    matches!(
        error,
        Error::NotFound(_) | Error::AlreadyExists(_) | Error::LockHeld(_) | Error::FailedPrecondition { .. } | Error::InvalidArgument(_)
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
    /// What the run's nemeses were meant to provoke and the checkers did
    /// not see (a nemesis that does not bite proves nothing): empty in a
    /// good run.
    pub missing: Vec<String>,
    /// Where the JSON report was written.
    pub path: PathBuf,
}

/// The replicas' session lease (`--session-lease-ms`): short, so a paused
/// client loses its session within a few seconds.
const SESSION_LEASE_MS: u64 = 3_000;

/// The TLS folder of this process's chaos cell (set once, when the run
/// starts its cell with TLS; `GAIOS_CHAOS_TLS=0` runs it in plaintext).
static TLS_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Names the run's TLS folder to the worker processes.
const TLS_DIR_VAR: &str = "GAIOS_CHAOS_TLS_DIR";

/// The TLS material of the run's clients: the cell's `admin` certificate,
/// from the folder of the run's cell (in the test process) or the one
/// `GAIOS_CHAOS_TLS_DIR` names (in the worker processes); `None` for a
/// plaintext run and outside chaos runs.
pub fn client_tls() -> Option<gaios_client::Tls> {
    let dir = TLS_DIR.get().cloned().or_else(|| std::env::var_os(TLS_DIR_VAR).map(std::path::PathBuf::from))?;
    gaios_client::Tls::from_files(&dir.join("ca.pem"), &dir.join("client-admin.pem"), &dir.join("client-admin.key")).ok()
}

/// The environment that points a process (a worker, the `gaios` tool) at
/// the run's TLS material.
pub fn tls_env() -> Vec<(&'static str, std::path::PathBuf)> {
    TLS_DIR.get().map_or_else(Vec::new, |dir| {
        vec![
            (TLS_DIR_VAR, dir.clone()),
            ("GAIOS_CACERT", dir.join("ca.pem")),
            ("GAIOS_CERT", dir.join("client-admin.pem")),
            ("GAIOS_KEY", dir.join("client-admin.key")),
        ]
    })
}

/// A channel endpoint for the client address `address`, over TLS when the
/// run uses it.
pub fn endpoint(address: &str) -> Option<tonic::transport::Endpoint> {
    match client_tls() {
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{address}")).ok()?.tls_config(tls.config()).ok(),
        None => tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok(),
    }
}

/// The client options of every workload: `name` identifies the session.
/// Options not named here (the library may grow some) keep their defaults.
#[allow(clippy::needless_update)]
pub fn client_options(name: &str) -> Options {
    Options {
        grace_period: Duration::from_secs(8),
        attempt_timeout: Duration::from_millis(1_500),
        call_deadline: Duration::from_secs(6),
        client_name: name.to_string(),
        tls: client_tls(),
        ..Options::default()
    }
}

/// How long a workload waits for the cell before giving up (the nemesis
/// never takes a quorum away for this long).
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

async fn connect(addresses: &[String]) -> Client {
    connect_as(addresses, "chaos").await
}

/// Opens a session as `name`, retrying for up to a minute; panics after
/// that (the cell is gone for longer than any fault lasts).
pub async fn connect_as(addresses: &[String], name: &str) -> Client {
    let until = Instant::now() + CONNECT_DEADLINE;
    loop {
        match Client::connect(addresses, client_options(name)).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(error) => panic!("chaos: no session could be created for {CONNECT_DEADLINE:?}: {error}"),
        }
    }
}

/// Lock holders and election candidates (separate processes each).
const LOCK_WORKERS: usize = 3;
const CANDIDATES: usize = 3;
/// How often a client pause that caught no lock holder at work is tried
/// again.
const PAUSE_CLIENT_RETRIES: u32 = 2;
/// Attempts of the out-of-bound clock scenario before it gives up.
const SKEW_ATTEMPTS: u32 = 3;

/// Runs the suite with `profile` and returns the report. The nemesis stops
/// after `profile.duration` (the mandatory faults always run); the checks
/// run after the cell is healed.
pub async fn run(profile: Profile) -> anyhow::Result<Report> {
    // Every random choice of the run comes from a fork of this one seed.
    let root = Rng::new(profile.seed);
    // libfaketime must fake the monotonic clock, or the clock nemeses test
    // nothing: a process at half speed must measure half the real time.
    let probe = tempfile::tempdir()?;
    let measured_rate = workers::measure_clock_rate(0.5, Duration::from_secs(1), probe.path())
        .await
        .context("checking that libfaketime fakes CLOCK_MONOTONIC")?;
    anyhow::ensure!(
        (measured_rate - 0.5).abs() < 0.1,
        "libfaketime does not slow CLOCK_MONOTONIC down: a process at rate 0.5 measured {measured_rate:.3}"
    );
    let rates = clock::in_bound_rates(&mut root.fork("clock/rates"));

    let lease = SESSION_LEASE_MS.to_string();
    // The proxy sits in front of every replica's real peer listener; each
    // replica reaches each other one through its own directed link.
    let (members, reserved) = Cell::reserve_members();
    let targets: Vec<(u64, std::net::SocketAddr)> = members.iter().map(|m| (m.id, m.peer)).collect();
    let network = Network::start_with_seed(&targets, root.fork("proxy").next_u64()).await?;
    // The proxy's links are bound; free the replicas' ports for them.
    drop(reserved);
    let network = &network;
    let tls = std::env::var("GAIOS_CHAOS_TLS").map_or(true, |v| v != "0");
    let mut cell = Cell::start_full(&["--session-lease-ms", &lease], members, network.routes(), rates.clone(), tls);
    if tls {
        // One chaos run per process.
        let _ = TLS_DIR.set(cell.tls_dir());
    }
    let addresses: Vec<String> = cell.members.iter().map(|m| m.client.to_string()).collect();

    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    if crate::wait_for_master(&cell, &all, crate::FIRST_MASTER_DEADLINE).await.is_none() {
        anyhow::bail!("no master at the start\n{}", cell.logs());
    }
    let recorder = Arc::new(Recorder::new());
    let setup = connect(&addresses).await;
    for directory in ["/chaos", "/chaos/eph", "/chaos/set"] {
        setup.open(directory, OpenOptions::new().create().directory()).await?;
    }
    let _ = setup.close().await;

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for worker in 0..3 {
        tasks.push(tokio::spawn(workloads::registers(worker, addresses.clone(), recorder.clone(), stop.clone(), root.fork(&format!("workload/registers/{worker}")))));
    }
    for reader in 0..2 {
        tasks.push(tokio::spawn(workloads::pinned_reads(100 + reader, addresses.clone(), recorder.clone(), stop.clone(), root.fork(&format!("workload/pinned-reads/{reader}")))));
    }
    for worker in 0..2 {
        tasks.push(tokio::spawn(workloads::ephemerals(worker, addresses.clone(), recorder.clone(), stop.clone(), root.fork(&format!("workload/ephemerals/{worker}")))));
    }
    tasks.push(tokio::spawn(workloads::observe_ephemerals(addresses.clone(), recorder.clone(), stop.clone())));
    for worker in 0..2 {
        tasks.push(tokio::spawn(workloads::unique_set(worker, addresses.clone(), recorder.clone(), stop.clone())));
    }
    let spawn = workers::Spawn { addresses: &addresses, epoch_us: recorder.start_us, seed: root.fork("workers").next_u64(), log_dir: cell.dir.path() };
    let workers = workers::Workers::start(LOCK_WORKERS, CANDIDATES, &spawn, &recorder)?;
    let (monitor_stop, monitor_stopped) = watch::channel(false);
    let monitor = tokio::spawn(elections::monitor(cell.members.iter().map(|m| m.client).collect(), recorder.clone(), monitor_stopped));

    // The nemesis.
    let mut fault_counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut nemesis = nemesis::Nemesis {
        cell: &mut cell,
        network,
        recorder: &recorder,
        workers: Some(&workers),
        addresses: &addresses,
        rng: root.fork("nemesis"),
        down_for_good: None,
        rejoins: Vec::new(),
        wipe: None,
        client_pauses: Vec::new(),
    };
    // Progress on stderr until the run returns, however it ends.
    let _progress = Progress::start(format!("chaos {} seed {}", profile.name, profile.seed), Some(profile.duration), true, Arc::clone(&recorder.meter));
    let started = Instant::now();
    let until = started + profile.duration;
    // The short profile wipes a replica right after the other mandatory
    // faults; a long one half-way through.
    let mut mandatory = Fault::MANDATORY.to_vec();
    if profile.name != "long" {
        mandatory.push(Fault::WipeReplica);
    }
    let wipe_at = started + profile.duration / 2;
    let mut step = 0usize;
    let mut pause_retries = 0;
    let mut deck: Vec<Fault> = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    while step < mandatory.len() || Instant::now() < until {
        let fault = match mandatory.get(step) {
            Some(&fault) => fault,
            None if nemesis.wipe.is_none() && Instant::now() >= wipe_at => Fault::WipeReplica,
            None => {
                // A shuffled deck of every random fault, dealt to its end
                // before it is shuffled again: a long run injects each kind.
                if deck.is_empty() {
                    deck = Fault::RANDOM.to_vec();
                    nemesis.rng.shuffle(&mut deck);
                }
                deck.pop().unwrap_or(Fault::KillFollower)
            }
        };
        step += 1;
        recorder.meter.set_phase(format!("fault {}", fault.name()));
        nemesis.inject(fault).await;
        injected(&mut fault_counts, &recorder, fault.name());
        // A client pause proves something only if it caught a lock holder
        // at work (none may hold the lock while the cell recovers): try
        // again later, a bounded number of times.
        let caught_holder = nemesis.client_pauses.iter().any(|pause| pause.lock_holder.is_some());
        if fault == Fault::PauseClient && !caught_holder && pause_retries < PAUSE_CLIENT_RETRIES {
            pause_retries += 1;
            mandatory.push(Fault::PauseClient);
        }
        let pause = nemesis.rng.between(Duration::from_secs(2), Duration::from_secs(4));
        tokio::time::sleep(pause).await;
    }
    let nemesis::Nemesis { down_for_good, mut rejoins, wipe, client_pauses, rng: nemesis_rng, .. } = nemesis;
    recorder.meter.set_phase("healing");
    network.heal();
    for index in 0..REPLICAS as usize {
        if !cell.is_running(index) && Some(index) != down_for_good {
            cell.restart(index);
        }
    }
    // Let the workloads run on the healed cell, then stop them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let mut workers = workers;
    let workers_exited_early = workers.exited_early();
    let resource = Arc::clone(&workers.resource);
    workers.stop().await;
    let live: Vec<usize> = (0..REPLICAS as usize).filter(|&index| Some(index) != down_for_good).collect();
    let healed = crate::wait_for_master(&cell, &live, crate::FIRST_MASTER_DEADLINE).await.is_some();

    // Checks.
    recorder.meter.set_phase("checks");
    let mut violations = BTreeMap::new();
    violations.insert("cell: no master once the faults healed", u64::from(!healed));
    violations.insert("registers: non-linearizable files", checks::check_registers(&recorder));
    let locks = checks::check_locks(&recorder, &resource);
    violations.insert("fenced locks: stale sequencers accepted", locks.fenced_stale);
    violations.insert("fenced locks: holders acting at once on the fenced resource", locks.fenced_overlaps);
    violations.insert("fenced locks: two holders in one generation", locks.doubled);
    let elections = checks::check_elections(&recorder);
    let overlapping_leaders = elections.overlapping;
    violations.insert("election: bad leader successions", elections.bad_successions);
    violations.insert("wiped replica: started on an empty data directory", wipe.iter().filter(|w| !w.refused).count() as u64);
    let mut unchecked: Vec<&str> = Vec::new();
    let mut lost = 0;
    let skew = if healed {
        // Abandoned sessions need their lease (and a failover's fresh lease) to end.
        tokio::time::sleep(Duration::from_millis(3 * SESSION_LEASE_MS)).await;
        let ephemerals = checks::check_ephemerals(&recorder, &addresses).await;
        violations.insert("ephemerals: deleted before their session ended", ephemerals.deleted_early.len() as u64);
        violations.insert("ephemerals: still present after their session ended", ephemerals.lingering.len() as u64);
        lost = checks::check_set(&recorder, &addresses).await;
        violations.insert("unique set: acknowledged writes lost", lost);
        let accepted_without_quorum = checks::check_three_down(&mut cell, &addresses, &recorder).await;
        violations.insert("three down: writes acknowledged without a quorum", accepted_without_quorum);
        // The scenario outside the clock-drift bound: expected to be caught.
        let attempts = if profile.name == "long" { 2 * SKEW_ATTEMPTS } else { SKEW_ATTEMPTS };
        let start = recorder.now();
        recorder.meter.set_phase("fault clock-outside-bound");
        let skew = clock::out_of_bound(&mut cell, network, &recorder, down_for_good, attempts, &mut root.fork("clock/out-of-bound")).await;
        let detail = format!("replica {} at x{}, {} attempts", skew.replica, skew.rate, skew.attempts);
        lock(&recorder.faults).push(FaultRecord { name: "clock-outside-bound", master: None, detail, start, heal: recorder.now() });
        injected(&mut fault_counts, &recorder, "clock-outside-bound");
        skew
    } else {
        unchecked.extend(["ephemerals", "unique set", "three down", "clock outside the bound"]);
        clock::SkewOutcome { problems: vec!["not run: the cell had no master".into()], ..clock::SkewOutcome::default() }
    };
    let sessions_expired_under_faults = lock(&recorder.ephemerals).expired_early.len();

    // Last, as it may leave the cell without a master on today's code
    // (issue 11, findings 4 and 9): a follower that missed hundreds of
    // large writes comes back.
    if healed {
        let mut last = nemesis::Nemesis {
            cell: &mut cell,
            network,
            recorder: &recorder,
            workers: None,
            addresses: &addresses,
            rng: nemesis_rng,
            down_for_good,
            rejoins: Vec::new(),
            wipe: None,
            client_pauses: Vec::new(),
        };
        recorder.meter.set_phase(format!("fault {}", Fault::RejoinAfterWrites.name()));
        last.inject(Fault::RejoinAfterWrites).await;
        injected(&mut fault_counts, &recorder, Fault::RejoinAfterWrites.name());
        rejoins.append(&mut last.rejoins);
    } else {
        unchecked.push("rejoin after large writes");
    }

    // Very last (its peer links bypass the fault proxy, which the steps
    // above rely on): the wiped machine comes back as a new replica (a new
    // id, the same addresses) through `gaios member replace`, while a
    // unique-set workload writes; none of its acknowledged creates may be
    // lost.
    let mut replacement = None;
    if let (true, Some(_), Some(victim)) = (healed, wipe.as_ref(), down_for_good) {
        recorder.meter.set_phase("fault replace-wiped");
        let (stop_tx, stop) = watch::channel(false);
        let writers: Vec<_> =
            (0..2).map(|worker| tokio::spawn(workloads::unique_set(10 + worker, addresses.clone(), recorder.clone(), stop.clone()))).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = recorder.now();
        let outcome = replace_wiped(&mut cell, victim, &addresses).await;
        let detail = match &outcome {
            Ok(detail) | Err(detail) => detail.clone(),
        };
        lock(&recorder.faults).push(FaultRecord { name: "replace-wiped", master: None, detail, start, heal: recorder.now() });
        injected(&mut fault_counts, &recorder, "replace-wiped");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(true);
        for writer in writers {
            let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
        }
        let lost_after = checks::check_set(&recorder, &addresses).await;
        violations.insert("replace: acknowledged creates lost while replacing the wiped replica", lost_after);
        replacement = Some(outcome);
    } else if wipe.is_some() {
        unchecked.push("replacing the wiped replica");
    }
    violations.insert("replace: the wiped replica was not replaced by gaios member replace", u64::from(matches!(replacement, Some(Err(_)))));
    let end = recorder.now();
    let _ = monitor_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), monitor).await;
    violations.insert("rejoin: elections caused by a follower's restart", rejoins.iter().filter(|r| r.caused_election()).count() as u64);
    violations.insert("rejoin: follower not caught up", rejoins.iter().filter(|r| r.caught_up_ms.is_none()).count() as u64);
    violations.insert(
        "rejoin: no master after large writes with a follower down",
        rejoins.iter().filter(|r| !r.settled_before_restart).count() as u64,
    );
    let total: u64 = violations.values().sum();

    let mut missing = Vec::new();
    let holders_paused = client_pauses.iter().filter(|p| p.lock_holder.is_some()).count();
    if holders_paused == 0 {
        missing.push("no lock holder was paused in the middle of its work".to_string());
    } else if locks.control_overlaps == 0 {
        missing.push(format!(
            "the unguarded control saw no overlapping holders although {holders_paused} lock holders were paused past their session lease"
        ));
    }
    if !skew.found {
        missing.push(format!(
            "the out-of-bound clock scenario found no stale read ({}; problems: {:?})",
            skew.verdict, skew.problems
        ));
    }

    let heal_latencies = checks::heal_to_write_ms(&recorder);
    let counts = lock(&recorder.counts).clone();
    let faults = lock(&recorder.faults).clone();
    let per_fault = elections_per_fault(&faults, &lock(&recorder.ballots), end);
    let ids: Vec<u64> = cell.members.iter().map(|m| m.id).collect();
    let json = json!({
        "profile": profile.name,
        "seed": profile.seed,
        "duration_s": profile.duration.as_secs(),
        "operations": counts.iter().map(|(w, c)| (w.to_string(), json!({"ok": c.ok, "fail": c.fail, "indeterminate": c.indeterminate}))).collect::<serde_json::Map<_, _>>(),
        "faults": fault_counts,
        "fault_log": faults.iter().zip(&per_fault.windows).map(|(f, &(elections, rises))| json!({
            "fault": f.name, "master": f.master, "detail": f.detail, "start_ms": f.start / 1000, "heal_ms": f.heal / 1000,
            "elections": elections, "ballot_rises": rises,
        })).collect::<Vec<_>>(),
        "elections_per_fault": per_fault.by_kind.iter().map(|(kind, e)| (kind.to_string(), json!({
            "faults": e.faults, "elections": e.elections, "ballot_rises": e.rises, "most_in_one_fault": e.most,
        }))).collect::<serde_json::Map<_, _>>(),
        "rejoins": rejoins.iter().map(nemesis::Rejoin::json).collect::<Vec<_>>(),
        "wipe": wipe.as_ref().map(|w| json!({"replica": w.replica, "refused_to_start": w.refused, "detail": w.detail})),
        "heal_to_first_write_ms": {"p50": checks::percentile(&heal_latencies, 50), "p99": checks::percentile(&heal_latencies, 99), "samples": heal_latencies.len()},
        "violations": violations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "control": {
            "client_pauses": client_pauses.iter().map(|p| json!({"lock_holder": p.lock_holder, "leader": p.leader})).collect::<Vec<_>>(),
            "lock_holders_paused": holders_paused,
            "unfenced_overlaps": locks.control_overlaps,
            "unfenced_stale_acts": locks.control_stale,
            "fenced_overlaps": locks.fenced_overlaps,
            "fenced_stale_accepted": locks.fenced_stale,
            "fenced_refused": locks.fenced_refused,
        },
        "control_unfenced_overlaps": locks.control_overlaps,
        "election_overlapping_leaders": overlapping_leaders,
        "clock": {
            "drift_bound": CLOCK_DRIFT_BOUND,
            "rates": rates.iter().map(|(&index, &rate)| (ids[index].to_string(), json!(rate))).collect::<serde_json::Map<_, _>>(),
            "faketime_probe": {"rate": 0.5, "measured": measured_rate},
        },
        "clock_skew_scenario": skew.json(),
        "ephemeral_sessions_expired_by_the_cell": sessions_expired_under_faults,
        "acknowledged_writes_lost": lost,
        "workers_exited_early": workers_exited_early,
        "missing_findings": missing,
        "unchecked": unchecked,
        "longest_time_without_an_acknowledged_write_ms": checks::longest_write_gap_ms(&recorder),
        "replay": replay_command(&profile),
    });
    let table = summary_table(&Summary {
        counts: &counts,
        faults: &fault_counts,
        per_fault: &per_fault,
        heals: &heal_latencies,
        violations: &violations,
        locks: &locks,
        overlapping_leaders,
        rejoins: &rejoins,
        wipe: wipe.as_ref(),
        rates: &rates,
        ids: &ids,
        skew: &skew,
        missing: &missing,
        lost,
        profile: &profile,
    });
    std::fs::create_dir_all(&profile.results_dir)?;
    let path = profile.results_dir.join(format!("chaos-{}-seed-{}.json", profile.name, profile.seed));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    if total > 0 || !missing.is_empty() {
        keep_logs(&cell, &profile.results_dir.join(format!("chaos-{}-seed-{}-logs", profile.name, profile.seed)));
    }
    drop(cell);
    Ok(Report { json, table, violations: total, missing, path })
}

/// Counts one fault `name` injected, in the report and on the progress line.
fn injected(fault_counts: &mut BTreeMap<&'static str, u64>, recorder: &Recorder, name: &'static str) {
    *fault_counts.entry(name).or_default() += 1;
    recorder.meter.fault();
}

/// Copies the replicas' and workers' logs of a failing run next to its
/// report (the cell's own directory is deleted with it).
fn keep_logs(cell: &Cell, to: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cell.dir.path()) else { return };
    if std::fs::create_dir_all(to).is_err() {
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "log")
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::copy(&path, to.join(name));
        }
    }
    println!("chaos: logs kept in {}", to.display());
}

/// Elections charged to faults.
struct PerFault {
    /// (elections, ballot rises) per fault, in the order of the fault log.
    windows: Vec<(u64, u64)>,
    /// Per kind of fault.
    by_kind: BTreeMap<&'static str, KindElections>,
}

#[derive(Debug, Default, Clone, Copy)]
struct KindElections {
    faults: u64,
    elections: u64,
    rises: u64,
    most: u64,
}

/// Charges each election to the fault whose window (from its start to the
/// next fault's, or to `end`) it happened in.
fn elections_per_fault(faults: &[FaultRecord], ballots: &elections::BallotLog, end: u64) -> PerFault {
    let mut windows = Vec::new();
    let mut by_kind: BTreeMap<&'static str, KindElections> = BTreeMap::new();
    for (i, fault) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map_or(end, |next| next.start).max(fault.start);
        let (elections, rises) = ballots.in_window(fault.start, until);
        windows.push((elections, rises));
        let kind = by_kind.entry(fault.name).or_default();
        kind.faults += 1;
        kind.elections += elections;
        kind.rises += rises;
        kind.most = kind.most.max(elections);
    }
    PerFault { windows, by_kind }
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

/// Everything the summary table shows.
struct Summary<'a> {
    counts: &'a BTreeMap<&'static str, Counts>,
    faults: &'a BTreeMap<&'static str, u64>,
    per_fault: &'a PerFault,
    heals: &'a [u64],
    violations: &'a BTreeMap<&'static str, u64>,
    locks: &'a checks::LockFindings,
    overlapping_leaders: u64,
    rejoins: &'a [nemesis::Rejoin],
    wipe: Option<&'a nemesis::Wipe>,
    rates: &'a BTreeMap<usize, f64>,
    ids: &'a [u64],
    skew: &'a clock::SkewOutcome,
    missing: &'a [String],
    lost: u64,
    profile: &'a Profile,
}

fn summary_table(s: &Summary<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let p = s.profile;
    let _ = writeln!(out, "chaos profile {} seed {} ({} s of faults)\n", p.name, p.seed, p.duration.as_secs());
    out.push_str("| workload | ok | failed | indeterminate |\n|---|---|---|---|\n");
    for (workload, c) in s.counts {
        let _ = writeln!(out, "| {workload} | {} | {} | {} |", c.ok, c.fail, c.indeterminate);
    }
    out.push_str("\n| fault | injected | elections | per fault | most in one | ballot rises |\n|---|---|---|---|---|---|\n");
    for (fault, n) in s.faults {
        let e = s.per_fault.by_kind.get(fault).copied().unwrap_or_default();
        let mean = if e.faults == 0 { 0.0 } else { e.elections as f64 / e.faults as f64 };
        let _ = writeln!(out, "| {fault} | {n} | {} | {mean:.2} | {} | {} |", e.elections, e.most, e.rises);
    }
    let show = |v: Option<u64>| v.map_or("-".to_string(), |ms| format!("{ms} ms"));
    let _ = writeln!(
        out,
        "\nheal -> first successful write: p50 {} p99 {} ({} heals)",
        show(checks::percentile(s.heals, 50)),
        show(checks::percentile(s.heals, 99)),
        s.heals.len()
    );
    out.push_str(
        "\n| follower returning | replica | large writes missed | elections (ballot rises) while down | caught up | elections (ballot rises) after restart | ballot at restart -> after |\n|---|---|---|---|---|---|---|\n",
    );
    for r in s.rejoins {
        let ballot = |b: elections::Ballot| format!("{}.{}", b.0, b.1);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {} ({}){} | {} -> {} |",
            r.kind,
            r.replica,
            r.writes,
            r.elections_while_down,
            r.ballot_rises_while_down,
            show(r.caught_up_ms),
            r.elections,
            r.ballot_rises,
            if r.caused_election() {
                " ELECTION"
            } else if !r.settled_before_restart {
                " (no master before it: not judged)"
            } else {
                ""
            },
            ballot(r.promised_before),
            ballot(r.promised_after)
        );
    }
    match s.wipe {
        Some(w) => {
            let _ = writeln!(out, "\nwiped replica {}: {}", w.replica, if w.refused { "refused to start" } else { "STARTED (violation)" });
        }
        None => out.push_str("\nwiped replica: none this run\n"),
    }
    let rates: Vec<String> = s.rates.iter().map(|(&i, &r)| format!("{}: x{r:.4}", s.ids[i])).collect();
    let _ = writeln!(out, "clock rates (bound {:.1} % between replicas): {}", CLOCK_DRIFT_BOUND * 100.0, rates.join(", "));
    out.push_str("\n| checker | violations |\n|---|---|\n");
    for (checker, n) in s.violations {
        let _ = writeln!(out, "| {checker} | {n} |");
    }
    let l = s.locks;
    let _ = writeln!(
        out,
        "\ncontrol (no fencing): overlapping holders {}, acts from superseded holders {}\nfenced resource: overlapping holders {}, stale accepted {}, refused {}\nelection: leaders that overlapped after a pause (unfenced, expected) {}\nacknowledged writes lost: {}",
        l.control_overlaps, l.control_stale, l.fenced_overlaps, l.fenced_stale, l.fenced_refused, s.overlapping_leaders, s.lost
    );
    let k = s.skew;
    let _ = writeln!(
        out,
        "\nclock outside the bound (replica {} at x{}): became master {}/{} attempts; isolated master answered {} reads; {} writes acknowledged by the new master; stale reads {} (up to {} ms stale); linearizability: {}{}",
        k.replica,
        k.rate,
        k.mastered,
        k.attempts,
        k.isolated_reads,
        k.writes_acknowledged,
        k.stale_reads,
        k.stale_for_ms_max,
        k.verdict.chars().take(160).collect::<String>(),
        if k.found { " (expected: the checker bites)" } else { " (NOT FOUND)" }
    );
    for problem in &k.problems {
        let _ = writeln!(out, "  clock scenario: {problem}");
    }
    for missing in s.missing {
        let _ = writeln!(out, "MISSING: {missing}");
    }
    out
}
