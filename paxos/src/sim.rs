//! A deterministic simulator for the Paxos core.
//!
//! It owns the clock, the network and the disks of five replicas, and it is
//! meant to be as hostile as production:
//!
//! - the network drops, duplicates, delays and reorders messages and can be
//!   partitioned (isolate the master, minority/majority splits, one-way
//!   loss, a bridge); it **holds** a whole directed link, or one message,
//!   for up to many election timeouts and then delivers what it held (as a
//!   stalled TCP stream or a reconnecting gRPC channel does), some messages
//!   sent over a cut link arrive that late instead of being lost, and it
//!   **replays** old messages long after they were sent;
//! - **gray failures** around the master (and sometimes one follower beside
//!   it): each directed link between that group and the rest fails on its
//!   own, so a master that can no longer reach a majority may still hear
//!   some replicas, and go on believing it leads while the others elect;
//! - forged and garbage messages arrive: from strangers, from a replica
//!   claiming to be the receiver, and from members with extreme field values
//!   (rounds and slots near `u64::MAX`, parts that cannot exist, entries in
//!   the wrong ballot, snapshots whose data does not load). Each must be
//!   dropped and counted, and must change nothing;
//! - replicas crash and restart, and a crash is sometimes a **power loss**:
//!   writes the core let go unsynced (`Ready::must_sync` false) are lost
//!   from some point on, as RocksDB's point-in-time recovery allows;
//!   restarted replicas rebuild their state from their snapshot and log
//!   only, as the server does;
//! - replicas pause (as under SIGSTOP: on resume they first catch up on the
//!   ticks they missed), alone or all at once (a stall of a disk they
//!   share), and each replica's clock runs at its own rate, within
//!   `clock_drift_ppm` (by default the bound the lease is built for,
//!   [`crate::config::CLOCK_DRIFT_PPM_MAX`]);
//! - swarm testing: half the seeds use every kind of fault, the others a
//!   random subset of kinds, denser or sparser, so that some seeds pile up a
//!   few kinds and reach combinations an even mix rarely does;
//! - the configuration changes under all of this: learners join (new
//!   replicas started with empty disks), are promoted, and members (the
//!   master too) are removed, one change in eight forced past the master's
//!   checks, half the time in bursts a few ticks apart; a lagging voter
//!   sometimes campaigns at once, without a pre-vote, so that only the
//!   master lease keeps it out;
//! - each seed picks its own timeouts, coarse ticks (a lease of five ticks)
//!   and a wide election timeout spread among them, with the smallest lease
//!   margin the configuration accepts, its own message bounds (tiny ones
//!   included) and how much log replicas keep (some seeds snapshot every
//!   few slots, so late catch-up requests are answered with a snapshot of
//!   the newest state).
//!
//! After every event the simulator checks:
//! - at most one value is chosen per slot (from a ledger of every durable
//!   accept, not from what replicas claim): a value is chosen when a
//!   majority of the voters of the configuration governing its slot (as
//!   the master of that ballot knew it) accepted it in one ballot, so a
//!   learner's vote, or a configuration acting before it is chosen, shows;
//! - every value a replica applies is the chosen one, and applied prefixes
//!   agree (a hash chain per slot);
//! - at most one running replica believes it holds a valid master lease, and
//!   one that may answer reads from its applied state (lease valid, read
//!   barrier applied) has applied every write a master acknowledged;
//! - no message carries more entries or bytes than the configured bounds;
//! - a restarted replica finds every chosen slot it had applied on its disk;
//!
//! and at the end of each fault period, with the faults healed and at least a
//! majority up, that a new proposal is chosen within `liveness_ticks`
//! (liveness). At the end every replica must catch up with everything chosen,
//! so no acknowledged proposal is lost.
//!
//! Everything derives from one seed: the same seed replays the same run.
//!
//! The replicas run an [`Application`]: by default none beyond the hash
//! chain above; [`run_application`] runs another one (the whole-cell
//! simulator in `gaios-cellsim` runs the real state machine, the master's
//! duties and simulated clients this way), under every fault and check
//! above, and with its own checks after every event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use bytes::Bytes;

use crate::config::Config;
use crate::message::Message;
use crate::ready::{Envelope, Ready};
use crate::replica::{ProposeError, Replica};
use crate::rng::Rng;
use crate::membership::MembershipChange;
use crate::types::{Ballot, Durable, Entry, HardState, Member, Membership, ReplicaId, Slot, Snapshot, Value};

/// How a simulation run is shaped. `Options::default()` is the profile the
/// test command runs for each seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of replicas.
    pub replicas: u64,
    /// Fault periods per run; each is followed by a heal and a liveness check.
    pub fault_periods: u32,
    /// Length of one fault period, in nominal ticks.
    pub fault_period_ticks: u64,
    /// After a heal, a new proposal must be chosen within this many ticks.
    pub liveness_ticks: u64,
    /// How far a replica's clock rate may differ from nominal, in parts per
    /// million.
    pub clock_drift_ppm: u64,
    /// Keep this many events for the trace printed on a violation.
    pub trace_events: usize,
    /// The command that replays a seed, with `{seed}` for the seed, printed
    /// with a violation.
    pub replay_with: &'static str,
    /// Whether the nemesis changes the configuration: adds learners (new
    /// replicas), promotes them, removes voters and learners (the master
    /// included), sometimes forced past the safety checks of
    /// `propose_change`, and restarts removed replicas from their old disks.
    pub membership_changes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicas: 5,
            fault_periods: 3,
            fault_period_ticks: 400,
            liveness_ticks: 400,
            clock_drift_ppm: crate::config::CLOCK_DRIFT_PPM_MAX,
            trace_events: 60,
            replay_with: "GAIOS_SEED={seed} cargo test -p gaios-paxos --test simulation",
            membership_changes: true,
        }
    }
}

/// A broken invariant, with what is needed to replay it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed of the run.
    pub seed: u64,
    /// Simulated time, in microseconds.
    pub time_us: u64,
    /// What went wrong.
    pub message: String,
    /// The last events before the violation, oldest first.
    pub trace: Vec<String>,
    /// The command that replays it (empty: the Paxos simulation's).
    pub replay: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} at t={}us: {}", self.seed, self.time_us, self.message)?;
        if self.replay.is_empty() {
            writeln!(f, "replay with: GAIOS_SEED={} cargo test -p gaios-paxos --test simulation", self.seed)?;
        } else {
            writeln!(f, "replay with: {}", self.replay)?;
        }
        writeln!(f, "last events:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a successful run did, for the soak's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Slots chosen.
    pub chosen_slots: u64,
    /// Client commands acknowledged (seen applied).
    pub acknowledged: u64,
    /// Masters elected (BecameMaster reports).
    pub elections: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Pauses injected.
    pub pauses: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Snapshots installed from another replica.
    pub snapshots_installed: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// The longest time from a heal to the first new chosen proposal, in ticks.
    pub worst_recovery_ticks: u64,
    /// Links or single messages held for a long time and then delivered.
    pub holds: u64,
    /// Old messages delivered again.
    pub replays: u64,
    /// Forged or garbage messages injected (every one was dropped and counted).
    pub forged: u64,
    /// Crashes that lost the unsynced tail of the disk.
    pub power_losses: u64,
    /// Configuration changes chosen.
    pub membership_changes: u64,
}

/// Runs one seed with `options`.
pub fn run(seed: u64, options: &Options) -> Result<Report, Violation> {
    run_application(seed, options, &mut NoApplication)
}

/// Runs one seed with `options`, the replicas running `application`
/// besides the hash chain.
pub fn run_application(seed: u64, options: &Options, application: &mut dyn Application) -> Result<Report, Violation> {
    let mut sim = Simulation::new(seed, options.clone(), application);
    let result = sim.run_all();
    result.map(|()| sim.report.clone())
}

/// Runs one seed with a custom configuration hook, for tests that break the
/// protocol's configuration on purpose.
pub fn run_with(seed: u64, options: &Options, adjust: &dyn Fn(&mut Config)) -> Result<Report, Violation> {
    let mut none = NoApplication;
    let mut sim = Simulation::new(seed, options.clone(), &mut none);
    for node in &mut sim.nodes {
        adjust(&mut node.config);
    }
    sim.restart_all_fresh();
    let result = sim.run_all();
    result.map(|()| sim.report.clone())
}

const TICK_US: u64 = 1_000;
/// The most messages a held link keeps; beyond it the link drops them.
const HELD_PER_LINK_MAX: usize = 4_096;
/// The nemesis kinds are numbered 0 to this.
const NEMESIS_KINDS_MAX: u64 = 17;
/// The most replicas a run adds to the five it starts with.
const JOINS_MAX: u64 = 6;
/// The most recent messages of one kind kept for replays.
const SENT_LOG_PER_KIND_MAX: usize = 512;

#[derive(Debug)]
enum Event {
    Tick { node: usize, incarnation: u64 },
    Deliver { from: ReplicaId, to: usize, message: Message },
    /// The end of a hold on the directed link: what it held goes out in order.
    ReleaseLink { from: ReplicaId, to: ReplicaId },
    DiskDone { node: usize, incarnation: u64 },
    Resume { node: usize },
    /// The connection replica `from` sent on to replica `to` closed, as the
    /// transport sees when a peer's process dies or a proxy resets it.
    ConnectionClosed { from: ReplicaId, to: usize, incarnation: u64 },
    Propose,
    Nemesis,
    /// The next change of a burst of configuration changes, `left` more
    /// after it.
    Reconfigure { left: u64 },
    Compact { node: usize, incarnation: u64 },
}

/// What a replica looks like to an [`Application`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    /// Its id.
    pub id: ReplicaId,
    /// Counts its starts (a restart is a new process with empty memory).
    pub incarnation: u64,
    /// Its process is up and not paused.
    pub running: bool,
    /// It believes it is master.
    pub is_master: bool,
    /// It may serve as master: master, master lease valid, read barrier
    /// applied (the driver's rule before it serves reads or runs duties).
    pub can_serve: bool,
    /// The last slot it applied.
    pub applied: Slot,
    /// The replica it believes is master (a redirect's hint), if any.
    pub master_hint: Option<ReplicaId>,
    /// Its own monotonic clock since this incarnation started, in
    /// microseconds: simulated time at this replica's clock rate (it runs
    /// on while the process is paused, as `CLOCK_MONOTONIC` does).
    pub local_us: u64,
    /// Its clock when its current turn began, as its driver read it then:
    /// `local_us`, except in a turn a pause cut in two, where the core's
    /// ticks (and so `can_serve`) are still those of before the pause.
    pub turn_local_us: u64,
    /// On its own clock, when its master lease runs out unless a majority
    /// acknowledges a newer heartbeat (`None`: no lease held): the time its
    /// driver publishes for the handlers, which check it against the clock.
    pub lease_valid_until_us: Option<u64>,
}

impl ReplicaView {
    /// Whether its request handlers may serve from its applied state now:
    /// `can_serve`, with the master lease checked against the clock (as the
    /// server's `ReplicaStatus::can_serve_reads` does), so that a turn cut
    /// in two by a pause does not serve on a lease that ran out meanwhile.
    pub fn can_serve_now(&self) -> bool {
        self.can_serve && self.lease_valid_until_us.is_some_and(|until| self.local_us < until)
    }
}

/// The cluster as an [`Application`] sees it between events.
pub trait Cluster {
    /// Simulated time, in microseconds.
    fn now_us(&self) -> u64;
    /// How many replicas there are (indexes `0..replicas()`).
    fn replicas(&self) -> usize;
    /// Replica `node` now.
    fn view(&self, node: usize) -> ReplicaView;
    /// Hands `command` to replica `node`'s core, as its driver does with a
    /// client's command; the simulator drives the core after the call.
    fn propose(&mut self, node: usize, command: Bytes) -> Result<(), ProposeError>;
    /// Adds a line to the trace printed with a violation.
    fn note(&mut self, line: String);
}

/// An application the replicas run beside the simulator's hash chain: it
/// applies every chosen entry on each replica, snapshots and restores its
/// state when the core compacts or installs, and acts between events (a
/// master's duties, clients). An `Err` is a violation of its invariants.
pub trait Application {
    /// The largest command it proposes, in bytes (the cores' bound).
    fn command_bytes_max(&self) -> usize;
    /// Replica `node` starts: from a snapshot's application part, or from
    /// nothing (a fresh disk). Also on the install of a peer's snapshot.
    fn restore(&mut self, cluster: &dyn Cluster, node: usize, data: Option<&[u8]>) -> Result<(), String>;
    /// Whether `data` would restore (a driver checks a peer's snapshot
    /// before its core sees it).
    fn loads(&self, data: &[u8]) -> bool;
    /// Replica `node`'s state, to be kept in a snapshot at its applied slot.
    fn snapshot(&mut self, node: usize) -> Bytes;
    /// Replica `node` applies the chosen `entry` (the simulator has checked
    /// it is the chosen value, in slot order).
    fn apply(&mut self, cluster: &dyn Cluster, node: usize, entry: &Entry) -> Result<(), String>;
    /// Replica `node` became master or lost mastership.
    fn role_change(&mut self, node: usize, change: &crate::ready::RoleChange);
    /// Replica `node`'s process died (its memory is gone).
    fn crashed(&mut self, node: usize);
    /// Runs after every event: acts (proposes) and checks.
    fn step(&mut self, cluster: &mut dyn Cluster) -> Result<(), String>;
    /// The run ended with every replica caught up: final checks.
    fn finish(&mut self, cluster: &dyn Cluster) -> Result<(), String>;
}

/// No application beyond the hash chain: the Paxos simulation's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoApplication;

impl Application for NoApplication {
    fn command_bytes_max(&self) -> usize {
        8
    }
    fn restore(&mut self, _: &dyn Cluster, _: usize, _: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
    fn loads(&self, data: &[u8]) -> bool {
        data.is_empty()
    }
    fn snapshot(&mut self, _: usize) -> Bytes {
        Bytes::new()
    }
    fn apply(&mut self, _: &dyn Cluster, _: usize, _: &Entry) -> Result<(), String> {
        Ok(())
    }
    fn role_change(&mut self, _: usize, _: &crate::ready::RoleChange) {}
    fn crashed(&mut self, _: usize) {}
    fn step(&mut self, _: &mut dyn Cluster) -> Result<(), String> {
        Ok(())
    }
    fn finish(&mut self, _: &dyn Cluster) -> Result<(), String> {
        Ok(())
    }
}

/// The application the simulator runs: it keeps a hash chain of applied
/// values, so two replicas with the same hash at a slot applied the same
/// prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct App {
    applied: Slot,
    hash: u64,
}

impl App {
    fn encode(&self) -> Bytes {
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(&self.applied.to_be_bytes());
        data.extend_from_slice(&self.hash.to_be_bytes());
        Bytes::from(data)
    }

    fn decode(data: &[u8]) -> Option<App> {
        let applied = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
        let hash = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
        Some(App { applied, hash })
    }
}

/// Whether the application could load `snapshot` (the hash chain's 16
/// bytes, then the [`Application`]'s part): the check a driver makes before
/// it steps an `InstallSnapshot`.
fn snapshot_loads(snapshot: &Snapshot, application: &dyn Application) -> bool {
    App::decode(&snapshot.data).is_some_and(|app| app.applied == snapshot.slot)
        && snapshot.data.get(16..).is_some_and(|data| application.loads(data))
}

fn chain(hash: u64, value: &Value) -> u64 {
    // FNV-1a over the previous hash and the value.
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ hash;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match value {
        Value::Noop => eat(b"noop"),
        Value::Batch(commands) => {
            for command in commands {
                eat(&(command.len() as u64).to_be_bytes());
                eat(command);
            }
        }
        Value::Reconfigure(membership) => {
            eat(b"reconfigure");
            for member in &membership.members {
                eat(&member.id.to_be_bytes());
                eat(&[u8::from(member.voter)]);
            }
        }
    }
    h
}

/// What a replica wrote: hard state, log, snapshot.
#[derive(Clone, Debug, Default)]
struct DiskState {
    hard_state: HardState,
    entries: BTreeMap<Slot, Entry>,
    snapshot: Option<Snapshot>,
}

/// One `Ready`'s write.
#[derive(Clone, Debug)]
struct DiskWrite {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    compact_through: Option<Slot>,
}

impl DiskState {
    fn apply(&mut self, write: &DiskWrite) {
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        for entry in &write.entries {
            self.entries.insert(entry.slot, entry.clone());
        }
        if let Some(snapshot) = &write.snapshot {
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(slot) = write.compact_through {
            self.entries = self.entries.split_off(&(slot + 1));
        }
    }
}

/// A disk with a write-ahead log: writes are kept in order; a synced write
/// makes itself and everything before it survive a power loss, while the
/// unsynced tail survives a process crash (it is in the OS's cache) but a
/// power loss keeps only some prefix of it.
#[derive(Clone, Debug, Default)]
struct Disk {
    synced: DiskState,
    unsynced: Vec<DiskWrite>,
}

impl Disk {
    fn write(&mut self, write: DiskWrite, sync: bool) {
        self.unsynced.push(write);
        if sync {
            for write in std::mem::take(&mut self.unsynced) {
                self.synced.apply(&write);
            }
        }
    }

    /// What a process reading the disk sees.
    fn visible(&self) -> DiskState {
        let mut state = self.synced.clone();
        for write in &self.unsynced {
            state.apply(write);
        }
        state
    }

    /// Power fails: the first `kept` unsynced writes reach the platter, the
    /// rest are gone.
    fn power_loss(&mut self, kept: usize) {
        let unsynced = std::mem::take(&mut self.unsynced);
        for write in unsynced.iter().take(kept) {
            self.synced.apply(write);
        }
    }
}

struct Node {
    id: ReplicaId,
    config: Config,
    core: Option<Replica>,
    incarnation: u64,
    disk: Disk,
    /// The application's state: rebuilt on start from the snapshot, then
    /// moved by every committed entry.
    app: App,
    outstanding: Option<Ready>,
    tick_period_us: u64,
    /// When this incarnation started (simulated µs), for its local clock.
    started_us: u64,
    /// When its core's ticks last caught up with its clock (a tick, a
    /// start, a resume), in simulated µs.
    ticked_us: u64,
    /// While the application acts in the second half of a turn a pause cut
    /// in two: when that turn began, in simulated µs.
    turn_began_us: Option<u64>,
    paused_since: Option<u64>,
    deferred: Vec<Event>,
    last_compacted: Slot,
    compact_every: u64,
}

impl Node {
    /// A replica with an empty disk, not started.
    fn new(config: Config, compact_every: u64) -> Self {
        Node {
            id: config.id,
            config,
            core: None,
            incarnation: 0,
            disk: Disk::default(),
            app: App::default(),
            outstanding: None,
            tick_period_us: TICK_US,
            started_us: 0,
            ticked_us: 0,
            turn_began_us: None,
            paused_since: None,
            deferred: Vec::new(),
            last_compacted: 0,
            compact_every,
        }
    }
}

struct Simulation<'a> {
    seed: u64,
    /// The application the replicas run (taken out while it is called).
    application: Option<&'a mut dyn Application>,
    /// Replicas the application proposed to since they were last driven.
    proposed_to: BTreeSet<usize>,
    options: Options,
    rng: Rng,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    seq: u64,
    nodes: Vec<Node>,
    // Network faults.
    blocked: BTreeSet<(ReplicaId, ReplicaId)>,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    /// Chance that one message is held for many election timeouts (a
    /// stalled stream, a retransmit after a long pause), per mille.
    long_hold_per_mille: u64,
    /// Chance that a message sent over a cut link is not lost but arrives
    /// many election timeouts later, when its stream reconnects, per mille.
    late_over_cut_per_mille: u64,
    delay_us_max: u64,
    faults_active: bool,
    /// This seed's disk: a synced write takes up to this long.
    disk_latency_us_max: u64,
    /// Swarm testing: the nemesis kinds this seed uses (a random subset of
    /// all of them) and how far apart its faults come, so that some seeds
    /// pile up few kinds of fault densely and reach combinations that an
    /// even mix of everything rarely does.
    nemesis_kinds: Vec<u64>,
    nemesis_gap_ticks: (u64, u64),
    /// Directed links holding everything sent on them until released.
    held_links: BTreeMap<(ReplicaId, ReplicaId), Vec<Message>>,
    /// The next message on this link is held for this long (µs).
    hold_next: Option<((ReplicaId, ReplicaId), u64)>,
    /// Recent messages by kind, for replays: (from, to, message). Kept per
    /// kind so that rare kinds (catch-up requests, promises, snapshots) are
    /// replayed as often as the heartbeats that outnumber them.
    sent_log: BTreeMap<&'static str, std::collections::VecDeque<(ReplicaId, ReplicaId, Message)>>,
    // Checkers' state.
    ledger: BTreeMap<(Slot, Ballot), (Value, BTreeSet<ReplicaId>)>,
    /// Slot -> the value a majority of the voters of the configuration
    /// governing the slot accepted in one ballot (from the ledger). Filled
    /// in slot order: a slot's configuration is known only once every slot
    /// before it is settled.
    chosen: BTreeMap<Slot, Value>,
    /// Every slot through this one is in `chosen`.
    settled_through: Slot,
    /// The configurations along the chosen log, by the slot of their change
    /// (0: the founding one), computed by the checker itself.
    configs: BTreeMap<Slot, Membership>,
    chain: BTreeMap<Slot, u64>,
    next_command: u64,
    proposed_at: BTreeMap<u64, u64>,
    acknowledged: BTreeMap<u64, Slot>,
    /// The highest slot a master applied (and so acknowledged to a client).
    acked_through: Slot,
    heal_time_us: Option<u64>,
    trace: std::collections::VecDeque<String>,
    report: Report,
}

fn violation(sim: &Simulation<'_>, message: String) -> Violation {
    let mut trace: Vec<String> = sim.trace.iter().cloned().collect();
    for node in &sim.nodes {
        let state = match &node.core {
            None => "down".to_string(),
            Some(core) => format!("{:?}", core.status()),
        };
        let paused = if node.paused_since.is_some() { " (paused)" } else { "" };
        trace.push(format!("replica {}{paused}: {state}", node.id));
    }
    let replay = sim.options.replay_with.replace("{seed}", &sim.seed.to_string());
    Violation { seed: sim.seed, time_us: sim.now_us, message, trace, replay }
}

/// The replicas of a new simulation, with the limits and timeouts this seed
/// draws: small windows, tiny messages, coarse ticks and frequent snapshots
/// all get exercised across seeds.
fn seeded_nodes(rng: &mut Rng, replicas: u64, command_bytes_max: usize) -> Vec<Node> {
    let members: Vec<ReplicaId> = (1..=replicas).collect();
    // Vary the limits per seed so small windows, tiny messages and
    // frequent snapshots all get exercised.
    let slots_in_flight_max = [1, 3, 16, 64][rng.range(0, 3) as usize];
    let entries_per_message_max = [1, 2, 8, 256][rng.range(0, 3) as usize];
    let batch_commands_max = [1, 4, 64][rng.range(0, 2) as usize];
    // Timeouts per seed, coarse ticks included: (lease, heartbeat,
    // election min, election max) in ticks; the master's margin is the
    // smallest the configuration accepts, so the lease is tested at the
    // edge of the drift bound.
    let (lease_ticks, heartbeat_ticks, election_min, election_max) =
        [(10, 2, 10, 20), (5, 1, 6, 9), (6, 2, 6, 10), (20, 4, 20, 40), (10, 2, 10, 50)][rng.range(0, 4) as usize];
    let lease_drift_ticks = crate::config::lease_drift_ticks_for(lease_ticks).unwrap_or(lease_ticks);
    // Commands are 8 bytes (the application's may be longer); a message
    // holds one full entry at least, and sometimes no more.
    let batch_bytes_max = command_bytes_max * batch_commands_max;
    let message_entries_max = [1, 3, 64][rng.range(0, 2) as usize];
    // How often replicas snapshot and drop their log: a third of the seeds
    // keep almost none, so that lagging replicas (and late requests) are
    // answered with a snapshot of the newest state; a third keep hundreds
    // of slots, so that a candidate several changes behind runs phase 1
    // over them instead of being told it is behind.
    let (compact_low, compact_high) = [(4, 40), (1, 3), (400, 800)][rng.range(0, 2) as usize];
    let mut nodes = Vec::new();
    for &id in &members {
        let mut config = Config::new(id, members.clone());
        config.election_ticks_min = election_min;
        config.election_ticks_max = election_max;
        config.heartbeat_ticks = heartbeat_ticks;
        config.lease_ticks = lease_ticks;
        config.lease_drift_ticks = lease_drift_ticks;
        config.accept_retry_ticks = 2 * heartbeat_ticks;
        config.catch_up_retry_ticks = 2 * heartbeat_ticks;
        config.slots_in_flight_max = slots_in_flight_max;
        config.entries_per_message_max = entries_per_message_max;
        config.batch_commands_max = batch_commands_max;
        config.batch_bytes_max = batch_bytes_max;
        config.command_bytes_max = command_bytes_max;
        config.proposals_queued_max = 64;
        config.message_bytes_max = config.entry_bytes_max() * message_entries_max;
        // Phase 1 recovers at most `promise_parts_max` full parts past a
        // candidate's chosen prefix; keep that window at least eight
        // pipelines long, as the server's is (16,384 slots, 256 pipelines).
        // With one entry per message and 64 parts it is one pipeline, and a
        // few masters deposed in a row leave every live replica holding more
        // unlearned slots than any of them may recover: no one can lead
        // until the replica that knows them returns (seed 11265 of the
        // simulator once showed it). Acceptors, for their part, accept no
        // further past their own chosen prefix than one promise can report
        // (`Config::accept_window_slots`): followers whose catch-up (one
        // entry per message) fell behind the master's pace once held 76
        // slots past what they knew chosen when the master died, and none
        // of the four survivors could ever lead (seed 556 of the cell
        // simulator).
        config.promise_parts_max = config
            .promise_parts_max
            .max(u32::try_from((8 * slots_in_flight_max).div_ceil(entries_per_message_max as u64)).unwrap_or(u32::MAX));
        nodes.push(Node::new(config, rng.range(compact_low, compact_high)));
    }
    nodes
}

impl<'a> Simulation<'a> {
    fn new(seed: u64, options: Options, application: &'a mut dyn Application) -> Self {
        let command_bytes_max = application.command_bytes_max();
        let mut rng = Rng::new(seed);
        let nodes = seeded_nodes(&mut rng, options.replicas, command_bytes_max);
        let genesis = Membership::genesis(&(1..=options.replicas).collect::<Vec<_>>());
        let mut sim = Simulation {
            seed,
            application: Some(application),
            proposed_to: BTreeSet::new(),
            options,
            rng,
            now_us: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            seq: 0,
            nodes,
            blocked: BTreeSet::new(),
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            long_hold_per_mille: 0,
            late_over_cut_per_mille: 0,
            delay_us_max: 500,
            faults_active: false,
            disk_latency_us_max: 0,
            nemesis_kinds: Vec::new(),
            nemesis_gap_ticks: (5, 60),
            held_links: BTreeMap::new(),
            hold_next: None,
            sent_log: BTreeMap::new(),
            ledger: BTreeMap::new(),
            chosen: BTreeMap::new(),
            settled_through: 0,
            configs: BTreeMap::from([(0, genesis)]),
            chain: BTreeMap::new(),
            next_command: 1,
            proposed_at: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            acked_through: 0,
            heal_time_us: None,
            trace: std::collections::VecDeque::new(),
            report: Report::default(),
        };
        // Fast (NVMe-like) to slow disks, per seed.
        sim.disk_latency_us_max = [60, 300, 1_500][sim.rng.range(0, 2) as usize];
        // Swarm testing: half the seeds use every kind of fault; the others
        // a random subset (each kind kept with probability one half), and
        // faults come denser or sparser per seed.
        let all: Vec<u64> = (0..=NEMESIS_KINDS_MAX).filter(|&kind| kind != 16 || sim.options.membership_changes).collect();
        sim.nemesis_kinds = if sim.rng.chance(1, 2) {
            all
        } else {
            let some: Vec<u64> = all.iter().copied().filter(|_| sim.rng.chance(1, 2)).collect();
            if some.is_empty() { all } else { some }
        };
        sim.nemesis_gap_ticks = [(5, 60), (2, 20), (20, 120)][sim.rng.range(0, 2) as usize];
        sim.restart_all_fresh();
        sim
    }

    fn restart_all_fresh(&mut self) {
        self.queue.clear();
        self.events.clear();
        for index in 0..self.nodes.len() {
            self.nodes[index].core = None;
            // Construction cannot fail for a fresh disk with a valid config;
            // an invalid config shows up as a violation in run_all.
            let _ = self.start(index);
        }
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.seq += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((self.now_us + delay_us, self.seq, id)));
    }

    fn note(&mut self, line: String) {
        if self.options.trace_events == 0 {
            return;
        }
        if self.trace.len() == self.options.trace_events {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now_us));
    }

    /// Calls the application with the simulation as its [`Cluster`].
    fn with_application<R>(&mut self, call: impl FnOnce(&mut dyn Application, &mut Self) -> R) -> R {
        let application = self.application.take().expect("the application is never called from within itself");
        let result = call(&mut *application, self);
        self.application = Some(application);
        result
    }

    /// Whether the application could load `snapshot`.
    fn loads(&mut self, snapshot: &Snapshot) -> bool {
        self.with_application(|application, _| snapshot_loads(snapshot, application))
    }

    /// Lets the application act and check after an event, then drives the
    /// replicas it proposed to.
    fn step_application(&mut self) -> Result<(), Violation> {
        let result = self.with_application(|application, sim| application.step(sim));
        if let Err(message) = result {
            return Err(violation(self, message));
        }
        for index in std::mem::take(&mut self.proposed_to) {
            self.drive(index)?;
        }
        Ok(())
    }

    fn run_all(&mut self) -> Result<(), Violation> {
        for node in &self.nodes {
            if node.core.is_none() {
                return Err(violation(self, format!("replica {} failed to start", node.id)));
            }
        }
        self.schedule(0, Event::Propose);
        for _ in 0..self.options.fault_periods {
            // Fault period.
            self.faults_active = true;
            self.drop_per_mille = self.rng.range(0, 100);
            self.duplicate_per_mille = self.rng.range(0, 50);
            self.long_hold_per_mille = self.rng.range(0, 20);
            self.late_over_cut_per_mille = if self.rng.chance(1, 2) { 0 } else { self.rng.range(10, 300) };
            self.delay_us_max = self.rng.range(50, 3_000);
            let first = self.rng.range(0, 20) * TICK_US;
            self.schedule(first, Event::Nemesis);
            let end = self.now_us + self.options.fault_period_ticks * TICK_US;
            self.run_until(end, |_| false)?;
            // Heal and check liveness.
            self.faults_active = false;
            self.heal(false)?;
            let healed_at = self.now_us;
            self.heal_time_us = Some(healed_at);
            let deadline = healed_at + self.options.liveness_ticks * TICK_US;
            let first_command_after_heal = self.next_command;
            let done = self.run_until(deadline, |sim| {
                sim.acknowledged.range(first_command_after_heal..).next().is_some()
            })?;
            if !done {
                return Err(violation(
                    self,
                    format!(
                        "liveness: nothing proposed after the heal at t={healed_at}us was chosen within {} ticks",
                        self.options.liveness_ticks
                    ),
                ));
            }
            let recovery = (self.now_us - healed_at) / TICK_US;
            self.report.worst_recovery_ticks = self.report.worst_recovery_ticks.max(recovery);
            self.heal_time_us = None;
        }
        // Final: everyone up and connected; every replica must catch up with
        // everything chosen.
        self.heal(true)?;
        let deadline = self.now_us + self.options.liveness_ticks * 4 * TICK_US;
        // Replicas removed from the configuration (or added by a change
        // never chosen) need not catch up.
        let done = self.run_until(deadline, |sim| {
            let target = sim.chain.keys().next_back().copied().unwrap_or(0);
            let members = sim.latest_configuration();
            sim.nodes.iter().filter(|n| members.contains(n.id)).all(|n| n.app.applied >= target)
        })?;
        let members = self.latest_configuration().clone();
        if !done {
            let lagging: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| members.contains(n.id))
                .map(|n| format!("{}@{}", n.id, n.app.applied))
                .collect();
            return Err(violation(self, format!("replicas of {members} did not catch up: {}", lagging.join(" "))));
        }
        for node in self.nodes.iter().filter(|n| members.contains(n.id)) {
            let expected = self.chain.get(&node.app.applied).copied();
            if expected != Some(node.app.hash) {
                return Err(violation(self, format!("replica {} ends with a diverged state", node.id)));
            }
        }
        // Every acknowledged command is in the chosen log.
        for (command, slot) in &self.acknowledged {
            let present = match self.chosen.get(slot) {
                Some(Value::Batch(commands)) => commands.iter().any(|c| c[..] == command.to_be_bytes()),
                _ => false,
            };
            if !present {
                return Err(violation(self, format!("acknowledged command {command} lost from slot {slot}")));
            }
        }
        if let Err(message) = self.with_application(|application, sim| application.finish(sim)) {
            return Err(violation(self, message));
        }
        self.report.chosen_slots = self.chosen.len() as u64;
        self.report.acknowledged = self.acknowledged.len() as u64;
        Ok(())
    }

    /// Runs events until `deadline_us` or until `stop` holds; returns whether
    /// `stop` held.
    fn run_until(&mut self, deadline_us: u64, stop: impl Fn(&Simulation<'_>) -> bool) -> Result<bool, Violation> {
        while let Some(&Reverse((time, _, id))) = self.queue.peek() {
            if stop(self) {
                return Ok(true);
            }
            if time > deadline_us {
                break;
            }
            self.queue.pop();
            self.now_us = time;
            let Some(event) = self.events.remove(&id) else { continue };
            self.dispatch(event)?;
            self.check_leases()?;
            self.step_application()?;
        }
        let stopped = stop(self);
        self.now_us = self.now_us.max(deadline_us);
        Ok(stopped)
    }

    fn dispatch(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].core.is_none() {
                    return Ok(());
                }
                if self.nodes[node].paused_since.is_some() {
                    // A paused process notices missed ticks on resume.
                    return Ok(());
                }
                if let Some(core) = &mut self.nodes[node].core {
                    core.tick();
                }
                self.nodes[node].ticked_us = self.now_us;
                let period = self.nodes[node].tick_period_us;
                self.schedule(period, Event::Tick { node, incarnation });
                self.drive(node)
            }
            Event::Deliver { from, to, message } => {
                if self.nodes[to].core.is_none() {
                    return Ok(());
                }
                if self.nodes[to].paused_since.is_some() {
                    self.nodes[to].deferred.push(Event::Deliver { from, to, message });
                    return Ok(());
                }
                self.report.messages_delivered += 1;
                if let Message::InstallSnapshot { snapshot } = &message
                    && !self.loads(snapshot)
                {
                    // The driver's duty: a snapshot the application cannot
                    // load never reaches the core.
                    return Err(violation(self, format!("replica {from} sent a snapshot that does not load")));
                }
                if let Some(core) = &mut self.nodes[to].core {
                    core.step(from, message);
                }
                self.drive(to)
            }
            Event::DiskDone { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].core.is_none() {
                    return Ok(());
                }
                if self.nodes[node].paused_since.is_some() {
                    self.nodes[node].deferred.push(Event::DiskDone { node, incarnation });
                    return Ok(());
                }
                self.disk_done(node)?;
                self.drive(node)
            }
            Event::Compact { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation
                    && self.nodes[node].core.is_some()
                    && self.nodes[node].paused_since.is_none()
                {
                    return self.compact(node);
                }
                Ok(())
            }
            Event::Resume { node } => self.resume(node),
            Event::ConnectionClosed { from, to, incarnation } => {
                if self.nodes[to].incarnation != incarnation || self.nodes[to].core.is_none() {
                    return Ok(());
                }
                if self.nodes[to].paused_since.is_some() {
                    self.nodes[to].deferred.push(Event::ConnectionClosed { from, to, incarnation });
                    return Ok(());
                }
                if let Some(core) = &mut self.nodes[to].core {
                    core.peer_lost(from);
                }
                self.drive(to)
            }
            Event::ReleaseLink { from, to } => {
                self.release_link(from, to);
                Ok(())
            }
            Event::Propose => {
                self.propose();
                let gap = self.rng.range(300, 3_000);
                self.schedule(gap, Event::Propose);
                Ok(())
            }
            Event::Reconfigure { left } => {
                if self.faults_active {
                    self.reconfigure()?;
                    if left > 0 {
                        let gap = self.rng.range(2, 12) * TICK_US;
                        self.schedule(gap, Event::Reconfigure { left: left - 1 });
                    }
                }
                Ok(())
            }
            Event::Nemesis => {
                if self.faults_active {
                    self.nemesis()?;
                    let (low, high) = self.nemesis_gap_ticks;
                    let gap = self.rng.range(low, high) * TICK_US;
                    self.schedule(gap, Event::Nemesis);
                }
                Ok(())
            }
        }
    }

    /// Takes a `Ready` when the replica has one and no write is outstanding:
    /// sends what may go now and starts the disk write.
    fn drive(&mut self, index: usize) -> Result<(), Violation> {
        loop {
            let node = &mut self.nodes[index];
            if node.outstanding.is_some() || node.paused_since.is_some() {
                return Ok(());
            }
            let Some(core) = &mut node.core else { return Ok(()) };
            if !core.has_ready() {
                return Ok(());
            }
            let mut ready = core.ready();
            let from = node.id;
            let messages = std::mem::take(&mut ready.messages);
            // An unsynced write returns at once (it only reaches the OS).
            let needs_disk = !ready.nothing_to_persist() && ready.must_sync;
            node.outstanding = Some(ready);
            for envelope in messages {
                self.send(from, envelope)?;
            }
            if needs_disk {
                let latency = self.rng.range(10, self.disk_latency_us_max);
                let incarnation = self.nodes[index].incarnation;
                self.schedule(latency, Event::DiskDone { node: index, incarnation });
                return Ok(());
            }
            self.disk_done(index)?;
        }
    }

    /// The write of the outstanding `Ready` is done (synced if the core
    /// said it must be): record it on the disk and in the ledger, send what
    /// waited for it, apply, advance.
    fn disk_done(&mut self, index: usize) -> Result<(), Violation> {
        let Some(mut ready) = self.nodes[index].outstanding.take() else { return Ok(()) };
        let id = self.nodes[index].id;
        if !ready.nothing_to_persist() {
            let write = DiskWrite {
                hard_state: ready.hard_state,
                entries: ready.entries.clone(),
                snapshot: ready.snapshot.clone(),
                compact_through: ready.compact_through,
            };
            self.nodes[index].disk.write(write, ready.must_sync);
        }
        // The ledger: an Accepted notice leaving now means the acceptor holds
        // the value durably.
        let persisted: Vec<Message> = ready
            .persisted_messages
            .iter()
            .map(|e| e.message.clone())
            .chain(ready.self_messages.iter().cloned())
            .collect();
        let written: BTreeMap<(Slot, Ballot), Value> =
            ready.entries.iter().map(|e| ((e.slot, e.ballot), e.value.clone())).collect();
        for message in &persisted {
            if let Message::Accepted { ballot, slots } = message {
                for &slot in slots {
                    // A slot acknowledged without a write was already chosen
                    // here; it adds no new vote to the ledger.
                    if let Some(value) = written.get(&(slot, *ballot)) {
                        self.record_accept(id, *ballot, slot, value.clone())?;
                    }
                }
            }
        }
        for envelope in std::mem::take(&mut ready.persisted_messages) {
            self.send(id, envelope)?;
        }
        if let Some(snapshot) = ready.snapshot.as_ref().filter(|_| ready.install_snapshot) {
            let Some(app) = App::decode(&snapshot.data) else {
                return Err(violation(self, format!("replica {id} got an undecodable snapshot")));
            };
            if app.applied != snapshot.slot || self.chain.get(&snapshot.slot) != Some(&app.hash) {
                return Err(violation(self, format!("replica {id} installed a snapshot that diverges at slot {}", snapshot.slot)));
            }
            self.nodes[index].app = app;
            let data = snapshot.data.slice(16..);
            if let Err(message) = self.with_application(|application, sim| application.restore(sim, index, Some(&data))) {
                return Err(violation(self, format!("replica {id} cannot install a snapshot: {message}")));
            }
            self.report.snapshots_installed += 1;
            self.note(format!("replica {id} installed snapshot at slot {}", snapshot.slot));
        }
        for entry in &ready.committed {
            self.apply(index, entry)?;
        }
        for change in &ready.role_changes {
            if matches!(change, crate::ready::RoleChange::BecameMaster { .. }) {
                self.report.elections += 1;
            }
            self.note(format!("replica {id}: {change:?}"));
            self.with_application(|application, _| application.role_change(index, change));
        }
        if let Some(core) = &mut self.nodes[index].core {
            core.advance(ready);
        }
        let node = &self.nodes[index];
        if node.app.applied >= node.last_compacted + node.compact_every {
            let incarnation = node.incarnation;
            let delay = self.rng.range(0, 2_000);
            self.schedule(delay, Event::Compact { node: index, incarnation });
        }
        Ok(())
    }

    fn record_accept(&mut self, acceptor: ReplicaId, ballot: Ballot, slot: Slot, value: Value) -> Result<(), Violation> {
        let record = self.ledger.entry((slot, ballot)).or_insert_with(|| (value.clone(), BTreeSet::new()));
        if record.0 != value {
            return Err(violation(self, format!("two values accepted for slot {slot} in ballot {ballot}")));
        }
        record.1.insert(acceptor);
        let acceptors = record.1.clone();
        if slot <= self.settled_through {
            // The slot's configuration is known: a second quorum must agree.
            let governing = self.governing_for(slot, ballot);
            if governing.is_quorum(&acceptors) && self.chosen.get(&slot) != Some(&value) {
                return Err(violation(
                    self,
                    format!("safety: two different values chosen for slot {slot} (second in ballot {ballot}, by {acceptors:?} of {governing})"),
                ));
            }
            return Ok(());
        }
        self.settle()
    }

    /// The configuration governing `slot`, by the checker's own reckoning
    /// from the settled log (valid for slots up to `settled_through + 1`).
    fn governing(&self, slot: Slot) -> &Membership {
        let (_, membership) = self.configs.range(..slot).next_back().expect("the founding configuration is at slot 0");
        membership
    }

    /// The configuration under which the master of `ballot` counted votes
    /// for `slot`: the one the newest change chosen before `slot` puts in
    /// force, if that change's value was accepted in a ballot no higher than
    /// `ballot` (so that master proposed it or learned it in its phase 1);
    /// else the one before, and so on. A master of an older ballot, deposed
    /// before a change, never counted under it: accepts it won from
    /// acceptors outside its successor's phase 1 may happen to make a
    /// majority of a configuration two changes later without anything
    /// having been chosen.
    fn governing_for(&self, slot: Slot, ballot: Ballot) -> &Membership {
        for (&change, membership) in self.configs.range(..slot).rev() {
            let Some(chosen) = self.chosen.get(&change) else { return membership };
            let known = self.ledger.range((change, Ballot::ZERO)..=(change, ballot)).any(|(_, (value, _))| value == chosen);
            if known {
                return membership;
            }
        }
        self.governing(1)
    }

    /// Moves `settled_through` over every next slot that a majority of the
    /// voters of its configuration (as the master of the ballot counted it,
    /// [`Self::governing_for`]) accepted in one ballot, per the ledger of
    /// durable accepts (not what any replica claims), and puts each change
    /// it meets in force for the slots after it. Two values with such a
    /// majority in one slot are a violation.
    fn settle(&mut self) -> Result<(), Violation> {
        loop {
            let slot = self.settled_through + 1;
            let mut found: Option<Value> = None;
            for ((_, ballot), (value, acceptors)) in
                self.ledger.range((slot, Ballot::ZERO)..=(slot, Ballot::new(u64::MAX, u64::MAX)))
            {
                let governing = self.governing_for(slot, *ballot);
                if !governing.is_quorum(acceptors) {
                    continue;
                }
                match &found {
                    Some(other) if other != value => {
                        return Err(violation(
                            self,
                            format!("safety: two different values chosen for slot {slot} (one in ballot {ballot}, by {acceptors:?} of {governing})"),
                        ));
                    }
                    _ => found = Some(value.clone()),
                }
            }
            let Some(value) = found else { return Ok(()) };
            if let Value::Reconfigure(membership) = &value {
                self.configs.insert(slot, membership.clone());
                self.report.membership_changes += 1;
                self.note(format!("configuration {membership} chosen at slot {slot}"));
            }
            self.chosen.insert(slot, value);
            self.settled_through = slot;
        }
    }

    fn apply(&mut self, index: usize, entry: &Entry) -> Result<(), Violation> {
        let id = self.nodes[index].id;
        let app = self.nodes[index].app;
        if entry.slot != app.applied + 1 {
            return Err(violation(self, format!("replica {id} applied slot {} after {}", entry.slot, app.applied)));
        }
        match self.chosen.get(&entry.slot) {
            Some(value) if *value == entry.value => {}
            Some(_) => {
                return Err(violation(self, format!("replica {id} applied a value for slot {} that is not the chosen one", entry.slot)));
            }
            None => {
                let governing = self.governing(entry.slot).clone();
                return Err(violation(
                    self,
                    format!("replica {id} applied slot {} which no majority of its configuration's voters ({governing}) accepted in one ballot", entry.slot),
                ));
            }
        }
        let hash = chain(app.hash, &entry.value);
        match self.chain.get(&entry.slot) {
            Some(&expected) if expected != hash => {
                return Err(violation(self, format!("replica {id}'s applied prefix diverges at slot {}", entry.slot)));
            }
            Some(_) => {}
            None => {
                self.chain.insert(entry.slot, hash);
            }
        }
        let app = App { applied: entry.slot, hash };
        if self.nodes[index].core.as_ref().is_some_and(Replica::is_master) {
            // A master answers a write once it has applied it.
            self.acked_through = self.acked_through.max(entry.slot);
        }
        self.nodes[index].app = app;
        if let Err(message) = self.with_application(|application, sim| application.apply(sim, index, entry)) {
            return Err(violation(self, message));
        }
        if let Value::Batch(commands) = &entry.value {
            // The simulator's own commands are 8 bytes; the application's
            // are its business.
            for command in commands.iter().filter(|command| command.len() == 8) {
                if let Some(bytes) = command.get(0..8) {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(bytes);
                    self.acknowledged.entry(u64::from_be_bytes(raw)).or_insert(entry.slot);
                }
            }
        }
        Ok(())
    }

    fn compact(&mut self, index: usize) -> Result<(), Violation> {
        let state = self.with_application(|application, _| application.snapshot(index));
        let node = &mut self.nodes[index];
        let mut data = node.app.encode().to_vec();
        data.extend_from_slice(&state);
        let snapshot = Snapshot { slot: node.app.applied, data: Bytes::from(data), membership: Membership::default() };
        let Some(core) = &mut node.core else { return Ok(()) };
        // The snapshot reaches the disk through the next Ready, atomically
        // with the compaction of the log it covers.
        if core.compact(snapshot).is_ok() {
            node.last_compacted = node.app.applied;
        }
        self.drive(index)
    }

    fn send(&mut self, from: ReplicaId, envelope: Envelope) -> Result<(), Violation> {
        let Envelope { to, message } = envelope;
        let config = &self.nodes[0].config;
        let (count_max, bytes_max) = (config.entries_per_message_max, config.message_bytes_max);
        let (carried, bytes) = match &message {
            Message::Promise { entries, .. } | Message::Accept { entries, .. } | Message::CatchUp { entries } => {
                (entries.len(), entries.iter().map(Entry::encoded_bytes).sum())
            }
            Message::Accepted { slots, .. } => (slots.len(), 0),
            _ => (0, 0),
        };
        if carried > count_max || bytes > bytes_max {
            return Err(violation(
                self,
                format!(
                    "a {} from {from} carries {carried} entries of {bytes} bytes, over the bounds {count_max} and {bytes_max}",
                    message.kind()
                ),
            ));
        }
        if let Some(to_from) = message.validate(from, &self.nodes[0].config).err() {
            return Err(violation(self, format!("replica {from} sent a {} that breaks a bound: {to_from}", message.kind())));
        }
        let Some(to_index) = self.nodes.iter().position(|n| n.id == to) else { return Ok(()) };
        let log = self.sent_log.entry(message.kind()).or_default();
        if log.len() == SENT_LOG_PER_KIND_MAX {
            log.pop_front();
        }
        log.push_back((from, to, message.clone()));
        if self.blocked.contains(&(from, to)) {
            // Usually lost; sometimes the stream reconnects and delivers it
            // long after.
            if self.rng.chance(self.late_over_cut_per_mille, 1_000) {
                let hold_us = self.hold_ticks() * TICK_US;
                self.report.holds += 1;
                self.schedule(hold_us, Event::Deliver { from, to: to_index, message });
            }
            return Ok(());
        }
        if self.rng.chance(self.drop_per_mille, 1_000) {
            return Ok(());
        }
        if let Some(held) = self.held_links.get_mut(&(from, to)) {
            if held.len() < HELD_PER_LINK_MAX {
                held.push(message);
            }
            return Ok(());
        }
        if let Some((link, hold_us)) = self.hold_next
            && link == (from, to)
        {
            self.hold_next = None;
            self.note(format!("holding one {} from {from} to {to} for {hold_us}us", message.kind()));
            self.schedule(hold_us, Event::Deliver { from, to: to_index, message });
            return Ok(());
        }
        // Faults are spread over message kinds, not messages: the rare kinds
        // (phase 1, catch-up, snapshots, pre-votes, refusals), whose late
        // arrival breaks the most assumptions, are held ten times as often
        // as the heartbeats and accepts that outnumber them.
        let periodic = matches!(
            message,
            Message::Heartbeat { .. } | Message::HeartbeatAck { .. } | Message::Accept { .. } | Message::Accepted { .. }
        );
        let hold_per_mille = if periodic { self.long_hold_per_mille } else { self.long_hold_per_mille * 10 };
        if self.rng.chance(hold_per_mille, 1_000) {
            let hold_us = self.hold_ticks() * TICK_US;
            self.report.holds += 1;
            self.schedule(hold_us, Event::Deliver { from, to: to_index, message });
            return Ok(());
        }
        let copies = if self.rng.chance(self.duplicate_per_mille, 1_000) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.range(20, self.delay_us_max);
            self.schedule(delay, Event::Deliver { from, to: to_index, message: message.clone() });
        }
        Ok(())
    }

    /// Delivers, in the order sent, what a held link kept.
    fn release_link(&mut self, from: ReplicaId, to: ReplicaId) {
        let Some(held) = self.held_links.remove(&(from, to)) else { return };
        let Some(to_index) = self.nodes.iter().position(|n| n.id == to) else { return };
        self.note(format!("release link {from}->{to}: {} messages", held.len()));
        for (order, message) in (0u64..).zip(held) {
            self.schedule(20 + order, Event::Deliver { from, to: to_index, message });
        }
    }

    /// Only a running replica can act on its lease; two valid at once would
    /// let two masters answer reads. And a master that may answer a read from
    /// its applied state (lease valid, read barrier applied) must already
    /// have applied every write any master acknowledged: else the read is stale.
    fn check_leases(&self) -> Result<(), Violation> {
        for node in &self.nodes {
            if let Some(core) = &node.core
                && core.status().conflicting_chosen_reports > 0
            {
                return Err(violation(
                    self,
                    format!("replica {}'s phase 1 met two different values reported chosen for one slot", node.id),
                ));
            }
        }
        for node in self.nodes.iter().filter(|n| n.paused_since.is_none()) {
            let Some(core) = &node.core else { continue };
            let serves_reads = core.lease_valid() && core.read_barrier().is_some_and(|b| node.app.applied >= b);
            if serves_reads && node.app.applied < self.acked_through {
                return Err(violation(
                    self,
                    format!(
                        "stale read: master {} would answer from slot {} but slot {} was acknowledged",
                        node.id, node.app.applied, self.acked_through
                    ),
                ));
            }
        }
        let holders: Vec<ReplicaId> = self
            .nodes
            .iter()
            .filter(|n| n.paused_since.is_none())
            .filter(|n| n.core.as_ref().is_some_and(Replica::lease_valid))
            .map(|n| n.id)
            .collect();
        if holders.len() > 1 {
            return Err(violation(self, format!("replicas {holders:?} all believe they hold a valid master lease")));
        }
        Ok(())
    }

    fn propose(&mut self) {
        let command = self.next_command;
        self.next_command += 1;
        let data = Bytes::copy_from_slice(&command.to_be_bytes());
        // Ask the replicas in a seeded order, following master hints, as a
        // client library would.
        let start = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
        let mut target = start;
        for _ in 0..self.nodes.len() {
            let node = &mut self.nodes[target];
            let next = match (&mut node.core, node.paused_since) {
                (Some(core), None) => match core.propose(data.clone()) {
                    Ok(()) => {
                        self.proposed_at.insert(command, self.now_us);
                        let _ = self.drive(target);
                        return;
                    }
                    Err(ProposeError::NotMaster { master_hint: Some(hint) }) => {
                        self.nodes.iter().position(|n| n.id == hint)
                    }
                    Err(_) => None,
                },
                _ => None,
            };
            target = next.filter(|&n| n != target).unwrap_or((target + 1) % self.nodes.len());
        }
    }

    fn start(&mut self, index: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        node.outstanding = None;
        node.deferred.clear();
        node.paused_since = None;
        // As the server does: the application's state is the snapshot's, and
        // the core hands every chosen entry after it to be applied again.
        let disk = node.disk.visible();
        let app = match &disk.snapshot {
            Some(snapshot) => App::decode(&snapshot.data).filter(|app| app.applied == snapshot.slot),
            None => Some(App::default()),
        };
        let Some(app) = app else {
            let id = node.id;
            return Err(violation(self, format!("replica {id} restarts from a snapshot it cannot load")));
        };
        node.app = app;
        node.started_us = self.now_us;
        node.ticked_us = self.now_us;
        node.turn_began_us = None;
        node.last_compacted = disk.snapshot.as_ref().map_or(0, |s| s.slot);
        let data = disk.snapshot.as_ref().map(|snapshot| snapshot.data.slice(16.min(snapshot.data.len())..));
        if let Err(message) = self.with_application(|application, sim| application.restore(sim, index, data.as_deref())) {
            let id = self.nodes[index].id;
            return Err(violation(self, format!("replica {id} restarts from a snapshot it cannot load: {message}")));
        }
        let node = &mut self.nodes[index];
        let durable = Durable {
            hard_state: disk.hard_state,
            entries: disk.entries.into_values().collect(),
            snapshot: disk.snapshot,
            applied: app.applied,
        };
        let mut config = node.config.clone();
        config.seed = self.seed.wrapping_mul(31).wrapping_add(node.id * 1_000 + node.incarnation);
        let drift = self.options.clock_drift_ppm;
        let ppm = self.rng.range(0, 2 * drift) as i64 - drift as i64;
        node.tick_period_us = (TICK_US as i64 + TICK_US as i64 * ppm / 1_000_000) as u64;
        match Replica::new(config, durable) {
            Ok(core) => node.core = Some(core),
            Err(error) => {
                let id = node.id;
                return Err(violation(self, format!("replica {id} cannot restart from its disk: {error}")));
            }
        }
        let incarnation = self.nodes[index].incarnation;
        let first_tick = self.rng.range(1, TICK_US);
        self.schedule(first_tick, Event::Tick { node: index, incarnation });
        Ok(())
    }

    /// Crashes a replica: its process dies; with `power_loss`, its machine
    /// too, and the unsynced tail of its disk is cut at a random point.
    fn crash(&mut self, index: usize, power_loss: bool) {
        let kept = self.rng.range(0, self.nodes[index].disk.unsynced.len() as u64) as usize;
        let node = &mut self.nodes[index];
        node.core = None;
        node.outstanding = None;
        node.deferred.clear();
        node.paused_since = None;
        node.incarnation += 1;
        self.report.crashes += 1;
        let id = node.id;
        if power_loss {
            let lost = node.disk.unsynced.len() - kept;
            node.disk.power_loss(kept);
            self.report.power_losses += 1;
            self.note(format!("power loss at replica {id}: {lost} unsynced writes lost"));
        } else {
            // The process died on a machine that lives on: its kernel
            // closes its connections, and the peers see them close.
            self.note(format!("crash replica {id}"));
            for to in (0..self.nodes.len()).filter(|&to| to != index) {
                self.close_connection(id, to);
            }
        }
        self.with_application(|application, _| application.crashed(index));
    }

    /// The connection `from` sends on to replica `to` closes, seen after a
    /// network delay (a running replica of the current incarnation only).
    fn close_connection(&mut self, from: ReplicaId, to: usize) {
        if self.nodes[to].core.is_none() {
            return;
        }
        let incarnation = self.nodes[to].incarnation;
        let delay = self.rng.range(20, self.delay_us_max);
        self.schedule(delay, Event::ConnectionClosed { from, to, incarnation });
    }

    fn resume(&mut self, index: usize) -> Result<(), Violation> {
        let Some(since) = self.nodes[index].paused_since.take() else { return Ok(()) };
        if self.nodes[index].core.is_some() && self.rng.chance(1, 2) {
            // The pause cut a turn in two: its driver had read the clock
            // and delivered the ticks, and now finishes the turn (the write
            // the pause held up, what it applies, the master's duties, the
            // core's output) before it reads the clock again. Its core still
            // holds the lease of before the pause; messages wait for the
            // next turn.
            let node = &mut self.nodes[index];
            let turn_began = since.min(node.ticked_us + node.tick_period_us - 1).max(node.ticked_us);
            node.turn_began_us = Some(turn_began);
            let (writes, rest): (Vec<Event>, Vec<Event>) =
                std::mem::take(&mut node.deferred).into_iter().partition(|event| matches!(event, Event::DiskDone { .. }));
            node.deferred = rest;
            let id = node.id;
            self.note(format!("replica {id} resumes in the middle of a turn begun at t={turn_began}"));
            let mut finished = Ok(());
            for write in writes {
                finished = finished.and_then(|()| self.dispatch(write));
            }
            let finished = finished.and_then(|()| self.step_application());
            self.nodes[index].turn_began_us = None;
            finished?;
        }
        let node = &mut self.nodes[index];
        let missed = (self.now_us - since) / node.tick_period_us;
        if let Some(core) = &mut node.core {
            // As the driver does: the ticks passed while the process could
            // not listen.
            core.stalled(missed);
            for _ in 0..missed {
                core.tick();
            }
        }
        node.ticked_us = self.now_us;
        let id = node.id;
        let incarnation = node.incarnation;
        let deferred = std::mem::take(&mut node.deferred);
        let period = node.tick_period_us;
        self.note(format!("resume replica {id} after {missed} missed ticks"));
        self.schedule(period, Event::Tick { node: index, incarnation });
        for event in deferred {
            self.schedule(0, event);
        }
        self.drive(index)
    }

    fn master_index(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.core.as_ref().is_some_and(Replica::is_master))
    }

    fn nemesis(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let down = self.nodes.iter().filter(|n| n.core.is_none()).count();
        let pick = self.nemesis_kinds[self.rng.range(0, self.nemesis_kinds.len() as u64 - 1) as usize];
        match pick {
            0 | 1 => {
                // Crash the master or anyone; at most three down at once.
                if down < 3 {
                    let target = match (pick, self.master_index()) {
                        (0, Some(m)) => m,
                        _ => self.rng.range(0, n as u64 - 1) as usize,
                    };
                    if self.nodes[target].core.is_some() {
                        let power_loss = self.rng.chance(1, 2);
                        self.crash(target, power_loss);
                    }
                }
            }
            2 | 3 => {
                let crashed: Vec<usize> = (0..n).filter(|&i| self.nodes[i].core.is_none()).collect();
                if !crashed.is_empty() {
                    let target = crashed[self.rng.range(0, crashed.len() as u64 - 1) as usize];
                    let id = self.nodes[target].id;
                    self.note(format!("restart replica {id}"));
                    self.start(target)?;
                }
            }
            4 if self.rng.chance(1, 4) => {
                // Pause every replica at once for the same time, as a stall
                // of a disk they share (or of their host) holds up every
                // synced write: on resume all timers have run out together.
                let lease = self.nodes.iter().map(|n| n.config.lease_ticks).max().unwrap_or(1);
                let length = self.rng.range(1, 3 * lease) * TICK_US;
                let now = self.now_us;
                let mut paused = 0;
                for index in 0..n {
                    let node = &mut self.nodes[index];
                    if node.core.is_some() && node.paused_since.is_none() {
                        node.paused_since = Some(now);
                        paused += 1;
                        self.schedule(length, Event::Resume { node: index });
                    }
                }
                self.note(format!("pause {paused} replicas at once for {length}us"));
                self.report.pauses += 1;
            }
            4 => {
                // Pause a replica (often the master) for longer than a lease.
                let target = match self.master_index() {
                    Some(m) if self.rng.chance(2, 3) => m,
                    _ => self.rng.range(0, n as u64 - 1) as usize,
                };
                if self.nodes[target].core.is_some() && self.nodes[target].paused_since.is_none() {
                    self.nodes[target].paused_since = Some(self.now_us);
                    let lease = self.nodes[target].config.lease_ticks;
                    let length = self.rng.range(1, 3 * lease) * TICK_US;
                    let id = self.nodes[target].id;
                    self.note(format!("pause replica {id} for {}us", length));
                    self.report.pauses += 1;
                    self.schedule(length, Event::Resume { node: target });
                }
            }
            // Isolating the master is a gray failure half the time.
            5 if self.rng.chance(1, 2) => self.partition(15),
            5..=7 | 14 | 15 => self.partition(pick),
            8 => {
                self.blocked.clear();
                self.note("heal partitions".to_string());
            }
            9 | 10 => self.hold_link(),
            11 => {
                let link = self.random_link();
                let hold_us = self.hold_ticks() * TICK_US;
                self.hold_next = Some((link, hold_us));
                self.report.holds += 1;
            }
            12 => self.replay(),
            16 => {
                // Half the time a burst of changes a few ticks apart: a
                // promotion and a removal back to back replace a member,
                // and two changes make majorities that need not meet.
                self.reconfigure()?;
                if self.rng.chance(1, 2) {
                    let left = self.rng.range(1, 6);
                    let gap = self.rng.range(2, 12) * TICK_US;
                    self.schedule(gap, Event::Reconfigure { left });
                }
            }
            17 => self.campaign_at_once()?,
            _ => self.forge()?,
        }
        Ok(())
    }

    /// Asks the master for one configuration change: promote a learner, add
    /// a new replica as a learner (started at once with an empty disk, as an
    /// operator would), or remove a member (the master itself sometimes).
    /// One change in eight is forced past the master's checks (but never
    /// below three voters), so the cell may lose its quorum until the heal.
    fn reconfigure(&mut self) -> Result<(), Violation> {
        let Some(index) = self.master_index().filter(|&i| self.nodes[i].paused_since.is_none()) else { return Ok(()) };
        let Some(core) = &self.nodes[index].core else { return Ok(()) };
        let membership = core.membership().clone();
        let learners: Vec<ReplicaId> = membership.members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
        let voters = membership.voters().count();
        let joined = self.nodes.len() as u64 - self.options.replicas;
        let change = if !learners.is_empty() && self.rng.chance(2, 3) {
            MembershipChange::Promote(learners[self.rng.range(0, learners.len() as u64 - 1) as usize])
        } else if joined < JOINS_MAX && (voters <= 3 || self.rng.chance(1, 2)) {
            let id = self.options.replicas + joined + 1;
            let address = format!("replica-{id}");
            MembershipChange::AddLearner(Member {
                id,
                voter: false,
                incarnation: 1,
                peer_address: address.clone(),
                client_address: address,
            })
        } else {
            let ids: Vec<ReplicaId> = membership.ids().collect();
            MembershipChange::Remove(ids[self.rng.range(0, ids.len() as u64 - 1) as usize])
        };
        let keeps_three = !matches!(change, MembershipChange::Remove(id) if membership.is_voter(id) && voters <= 3);
        let force = keeps_three && self.rng.chance(1, 8);
        let master = self.nodes[index].id;
        let Some(core) = &mut self.nodes[index].core else { return Ok(()) };
        let outcome = core.propose_change(&change, force);
        self.note(format!("master {master} asked to {change:?} (forced: {force}): {outcome:?}"));
        if let (Ok(_), MembershipChange::AddLearner(member)) = (&outcome, &change) {
            let mut config = self.nodes[0].config.clone();
            config.id = member.id;
            config.contacts = membership.ids().collect();
            let compact_every = self.nodes[self.rng.range(0, self.nodes.len() as u64 - 1) as usize].compact_every;
            self.nodes.push(Node::new(config, compact_every));
            let joiner = self.nodes.len() - 1;
            self.start(joiner)?;
        }
        self.drive(index)
    }

    /// A voter that is not master (most often the one furthest behind) runs
    /// phase 1 at once, without a pre-vote, as an operator moving
    /// mastership would make it: the master lease alone must keep it from
    /// taking over while the lease runs, whatever changes it missed.
    fn campaign_at_once(&mut self) -> Result<(), Violation> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].paused_since.is_none())
            .filter(|&i| self.nodes[i].core.as_ref().is_some_and(|c| !c.is_master() && c.is_voter()))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let lagging = candidates.iter().copied().min_by_key(|&i| self.nodes[i].core.as_ref().map_or(0, Replica::chosen_through));
        let index = match lagging {
            Some(i) if self.rng.chance(3, 4) => i,
            _ => candidates[self.rng.range(0, candidates.len() as u64 - 1) as usize],
        };
        let id = self.nodes[index].id;
        self.note(format!("replica {id} campaigns at once"));
        if let Some(core) = &mut self.nodes[index].core {
            core.campaign();
        }
        self.drive(index)
    }

    /// The newest configuration the checker knows chosen.
    fn latest_configuration(&self) -> &Membership {
        self.configs.values().next_back().expect("the founding configuration is at slot 0")
    }

    /// A directed link, often one that touches the master.
    fn random_link(&mut self) -> (ReplicaId, ReplicaId) {
        let ids: Vec<ReplicaId> = self.nodes.iter().map(|n| n.id).collect();
        let pick = |sim: &mut Simulation<'_>| ids[sim.rng.range(0, ids.len() as u64 - 1) as usize];
        let master = self.master_index().map(|i| self.nodes[i].id);
        let a = match master {
            Some(m) if self.rng.chance(1, 2) => m,
            _ => pick(self),
        };
        let mut b = pick(self);
        while b == a {
            b = pick(self);
        }
        if self.rng.chance(1, 2) { (a, b) } else { (b, a) }
    }

    /// How long a hold lasts: from two to twenty election timeouts.
    fn hold_ticks(&mut self) -> u64 {
        let election = self.nodes[0].config.election_ticks_min;
        self.rng.range(2, 20) * election
    }

    /// Holds everything on one directed link for many election timeouts,
    /// then delivers it in order, as a stalled stream does.
    fn hold_link(&mut self) {
        let (from, to) = self.random_link();
        if self.held_links.contains_key(&(from, to)) {
            return;
        }
        let ticks = self.hold_ticks();
        self.held_links.insert((from, to), Vec::new());
        self.report.holds += 1;
        self.note(format!("hold link {from}->{to} for {ticks} ticks"));
        self.schedule(ticks * TICK_US, Event::ReleaseLink { from, to });
    }

    /// Delivers a few old messages again, long after they were sent.
    fn replay(&mut self) {
        let count = self.rng.range(1, 8);
        for _ in 0..count {
            let kinds: Vec<&'static str> = self.sent_log.keys().copied().collect();
            if kinds.is_empty() {
                return;
            }
            let kind = kinds[self.rng.range(0, kinds.len() as u64 - 1) as usize];
            let Some(log) = self.sent_log.get(kind) else { return };
            let index = self.rng.range(0, log.len() as u64 - 1) as usize;
            let Some((from, to, message)) = log.get(index).cloned() else { return };
            let Some(to_index) = self.nodes.iter().position(|n| n.id == to) else { continue };
            let delay = self.rng.range(20, self.delay_us_max);
            self.note(format!("replay an old {} from {from} to {to}", message.kind()));
            self.report.replays += 1;
            self.schedule(delay, Event::Deliver { from, to: to_index, message });
        }
    }

    /// Steps forged or garbage messages into running replicas: each must be
    /// dropped and counted by the core (or, for a snapshot that does not
    /// load, by the driver before the core sees it).
    fn forge(&mut self) -> Result<(), Violation> {
        let count = self.rng.range(1, 4);
        for _ in 0..count {
            let running: Vec<usize> =
                (0..self.nodes.len()).filter(|&i| self.nodes[i].core.is_some() && self.nodes[i].paused_since.is_none()).collect();
            if running.is_empty() {
                return Ok(());
            }
            let index = running[self.rng.range(0, running.len() as u64 - 1) as usize];
            let to = self.nodes[index].id;
            let (from, message) = forged_message(&mut self.rng, &self.nodes[index].config, to);
            let kind = message.kind();
            self.report.forged += 1;
            if let Message::InstallSnapshot { snapshot } = &message
                && !self.loads(snapshot)
            {
                // Dropped by the driver before the core.
                continue;
            }
            let Some(core) = &mut self.nodes[index].core else { continue };
            let before = core.status().rejected_messages;
            core.step(from, message.clone());
            let after = core.status().rejected_messages;
            if after != before + 1 {
                return Err(violation(
                    self,
                    format!("replica {to} took a forged {kind} from {from} instead of dropping it: {message:?}"),
                ));
            }
            self.drive(index)?;
        }
        Ok(())
    }

    fn partition(&mut self, pick: u64) {
        let ids: Vec<ReplicaId> = self.nodes.iter().map(|n| n.id).collect();
        self.blocked.clear();
        self.report.partitions += 1;
        let master = self.master_index().map(|i| self.nodes[i].id);
        match pick {
            5 => self.partition_isolate(&ids, master),
            6 => self.partition_split(&ids, master),
            15 => self.partition_gray(&ids, master),
            14 => self.partition_directed(&ids),
            _ => self.partition_one_way(&ids, master),
        }
        // A third of the time a proxy resets what it cuts: the receivers see
        // connections of live replicas (the master's too) close.
        if self.rng.chance(1, 3) {
            let cut: Vec<(ReplicaId, ReplicaId)> = self.blocked.iter().copied().collect();
            for (from, to) in cut {
                if let Some(to) = self.nodes.iter().position(|n| n.id == to) {
                    self.close_connection(from, to);
                }
            }
            self.note("partition: the cut connections are reset".to_string());
        }
    }

    /// Isolates the master (or a random replica), both ways.
    fn partition_isolate(&mut self, ids: &[ReplicaId], master: Option<ReplicaId>) {
        // Isolate the master (or a random replica), both ways.
        let lonely = master.unwrap_or(ids[self.rng.range(0, ids.len() as u64 - 1) as usize]);
        for &other in ids {
            if other != lonely {
                self.blocked.insert((lonely, other));
                self.blocked.insert((other, lonely));
            }
        }
        self.note(format!("partition: isolate {lonely}"));
    }

    /// Splits the cell into a minority and a majority, perhaps with a bridge.
    fn partition_split(&mut self, ids: &[ReplicaId], master: Option<ReplicaId>) {
        // Split into a minority and a majority; the master sometimes in
        // the minority. With a bridge, one replica sees both sides.
        let mut shuffled = ids.to_vec();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.range(0, i as u64) as usize;
            shuffled.swap(i, j);
        }
        // Half the time the master is in the minority, where it may
        // go on believing it leads until its check-quorum fires.
        if let Some(position) = master.and_then(|m| shuffled.iter().position(|&id| id == m))
            && self.rng.chance(1, 2)
        {
            shuffled.swap(0, position);
        }
        let minority: BTreeSet<ReplicaId> = shuffled[..ids.len() / 2].iter().copied().collect();
        let bridge = if self.rng.chance(1, 3) { Some(shuffled[ids.len() - 1]) } else { None };
        for &a in ids {
            for &b in ids {
                let split = minority.contains(&a) != minority.contains(&b);
                if split && bridge != Some(a) && bridge != Some(b) {
                    self.blocked.insert((a, b));
                }
            }
        }
        self.note(format!("partition: minority {minority:?} bridge {bridge:?}"));
    }

    /// A gray failure around the master: directed links cut at random.
    fn partition_gray(&mut self, ids: &[ReplicaId], master: Option<ReplicaId>) {
        // A gray failure around the master (and, half the time, one
        // follower beside it, as on a shared switch): each directed
        // link between that group and the rest fails on its own, so
        // the group may hear replicas it cannot reach, or reach
        // replicas it cannot hear. A master cut off this way can go
        // on believing it leads while the others elect.
        let lonely = master.unwrap_or(ids[self.rng.range(0, ids.len() as u64 - 1) as usize]);
        let mut group = BTreeSet::from([lonely]);
        if self.rng.chance(1, 2) {
            group.insert(ids[self.rng.range(0, ids.len() as u64 - 1) as usize]);
        }
        let cut_in_four = self.rng.range(1, 3);
        for &a in ids {
            for &b in ids {
                if group.contains(&a) != group.contains(&b) && self.rng.chance(cut_in_four, 4) {
                    self.blocked.insert((a, b));
                }
            }
        }
        let cut: Vec<String> = self.blocked.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        self.note(format!("partition: gray failure around {group:?}, cut {}", cut.join(" ")));
    }

    /// Cuts every directed link with probability one in three.
    fn partition_directed(&mut self, ids: &[ReplicaId]) {
        // Every directed link cut with probability one in three: an
        // arbitrary asymmetric network, where a replica may reach
        // another that cannot answer it.
        for &a in ids {
            for &b in ids {
                if a != b && self.rng.chance(1, 3) {
                    self.blocked.insert((a, b));
                }
            }
        }
        let cut: Vec<String> = self.blocked.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        self.note(format!("partition: directed links cut {}", cut.join(" ")));
    }

    /// One-way loss at one replica.
    fn partition_one_way(&mut self, ids: &[ReplicaId], master: Option<ReplicaId>) {
        // One-way loss: a replica (often the master) can send but not
        // receive, or receive but not send.
        let one = master.unwrap_or(ids[self.rng.range(0, ids.len() as u64 - 1) as usize]);
        let outbound = self.rng.chance(1, 2);
        for &other in ids {
            if other != one {
                if outbound {
                    self.blocked.insert((one, other));
                } else {
                    self.blocked.insert((other, one));
                }
            }
        }
        self.note(format!("partition: one-way loss at {one} (outbound: {outbound})"));
    }

    /// Ends a fault period: links healed (held ones deliver what they held),
    /// loss and duplication off, paused replicas resumed, and all crashed
    /// replicas restarted (but up to two unless `everyone`).
    fn heal(&mut self, everyone: bool) -> Result<(), Violation> {
        self.blocked.clear();
        self.hold_next = None;
        let held: Vec<(ReplicaId, ReplicaId)> = self.held_links.keys().copied().collect();
        for (from, to) in held {
            self.release_link(from, to);
        }
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        self.long_hold_per_mille = 0;
        self.late_over_cut_per_mille = 0;
        self.note("heal: links, pauses, restarts".to_string());
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused_since.is_some() {
                self.resume(index)?;
            }
        }
        // Up to two replicas stay down, but never so many voters that the
        // configuration in force, or one voter away from it (a change may be
        // in flight), loses its majority.
        let keep_down = if everyone { 0 } else { self.rng.range(0, 2) as usize };
        let latest = self.latest_configuration().clone();
        let mut voters_down_max = latest.voters().count().saturating_sub(latest.quorum()).saturating_sub(1);
        let mut kept = 0;
        let crashed: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].core.is_none()).collect();
        for index in crashed {
            let voter = latest.is_voter(self.nodes[index].id);
            if kept < keep_down && (!voter || voters_down_max > 0) {
                kept += 1;
                if voter {
                    voters_down_max -= 1;
                }
                continue;
            }
            self.start(index)?;
        }
        Ok(())
    }
}

impl Cluster for Simulation<'_> {
    fn now_us(&self) -> u64 {
        self.now_us
    }

    fn replicas(&self) -> usize {
        self.nodes.len()
    }

    fn view(&self, node: usize) -> ReplicaView {
        let n = &self.nodes[node];
        let running = n.core.is_some() && n.paused_since.is_none();
        let core = n.core.as_ref();
        let is_master = core.is_some_and(Replica::is_master);
        let can_serve = is_master
            && core.is_some_and(|core| core.lease_valid() && core.read_barrier().is_some_and(|barrier| n.app.applied >= barrier));
        let local = |at_us: u64| at_us.saturating_sub(n.started_us).saturating_mul(TICK_US) / n.tick_period_us.max(1);
        // The lease runs out when the core's tick reaches `until`: ticks
        // come one period apart from the last one delivered.
        let lease_valid_until_us = core.filter(|_| is_master).and_then(|core| {
            let ticks_left = core.lease_until()?.saturating_sub(core.now_tick());
            Some(local(n.ticked_us.saturating_add(ticks_left.saturating_mul(n.tick_period_us))))
        });
        ReplicaView {
            id: n.id,
            incarnation: n.incarnation,
            running,
            is_master,
            can_serve,
            applied: n.app.applied,
            master_hint: core.and_then(Replica::master_hint),
            local_us: local(self.now_us),
            turn_local_us: local(n.turn_began_us.unwrap_or(self.now_us)),
            lease_valid_until_us,
        }
    }

    fn propose(&mut self, node: usize, command: Bytes) -> Result<(), ProposeError> {
        let n = &mut self.nodes[node];
        let Some(core) = n.core.as_mut().filter(|_| n.paused_since.is_none()) else {
            return Err(ProposeError::NotMaster { master_hint: None });
        };
        core.propose(command)?;
        self.proposed_to.insert(node);
        Ok(())
    }

    fn note(&mut self, line: String) {
        Simulation::note(self, line);
    }
}

/// A message no correct replica sends: from a stranger or from the receiver
/// itself, or from a member with at least one field outside the protocol's
/// bounds (extreme rounds and slots, parts that cannot exist, entries in the
/// wrong ballot or not contiguous, too many entries, a snapshot that does not
/// load). A member's message with every field in range is not forged here:
/// Paxos trusts its members; authenticating them is TLS's job.
fn forged_message(rng: &mut Rng, config: &Config, to: ReplicaId) -> (ReplicaId, Message) {
    use crate::message::NackReason;
    use crate::types::{ROUND_MAX, SLOT_MAX};
    let members = &config.members;
    let member = members[rng.range(0, members.len() as u64 - 1) as usize];
    let peer = members.iter().copied().find(|&m| m != to).unwrap_or(member);
    // Slots past SLOT_MAX, rounds past ROUND_MAX.
    let huge = [u64::MAX, u64::MAX - 1, 1 << 63, SLOT_MAX + 1];
    let extreme = |rng: &mut Rng| huge[rng.range(0, huge.len() as u64 - 1) as usize];
    let ok_ballot = Ballot::new(rng.range(1, 50), peer);
    let bad_ballot = |rng: &mut Rng| {
        let rounds = [u64::MAX, 1 << 63, ROUND_MAX + 1, ROUND_MAX + 1 + rng.range(0, 1 << 20)];
        Ballot::new(rounds[rng.range(0, 3) as usize], peer)
    };
    let entry = |slot: Slot, ballot: Ballot| Entry { slot, ballot, value: Value::Batch(vec![Bytes::from_static(b"forged!!")]) };
    let message = match rng.range(0, 16) {
        0 => Message::Prepare { ballot: bad_ballot(rng), from_slot: 1 },
        1 => Message::Prepare { ballot: ok_ballot, from_slot: [0, extreme(rng)][rng.range(0, 1) as usize] },
        2 => Message::Promise { ballot: ok_ballot, chosen_through: 0, entries: vec![], part: 3, parts: [0, 2, u32::MAX][rng.range(0, 2) as usize] },
        3 => Message::Promise { ballot: ok_ballot, chosen_through: extreme(rng), entries: vec![], part: 0, parts: 1 },
        4 => Message::Accept { ballot: ok_ballot, entries: vec![entry(extreme(rng), ok_ballot)], chosen_through: 0 },
        5 => Message::Accept { ballot: ok_ballot, entries: vec![entry(1, Ballot::new(ok_ballot.round + 1, peer))], chosen_through: 0 },
        6 => Message::Accept {
            ballot: ok_ballot,
            entries: (1..=config.entries_per_message_max as u64 + 1).map(|slot| entry(slot, ok_ballot)).collect(),
            chosen_through: 0,
        },
        7 => Message::Accepted { ballot: ok_ballot, slots: vec![[0, extreme(rng)][rng.range(0, 1) as usize]] },
        8 => Message::Heartbeat { ballot: bad_ballot(rng), chosen_through: 0, sent_tick: extreme(rng) },
        9 => Message::Heartbeat { ballot: ok_ballot, chosen_through: extreme(rng), sent_tick: 0 },
        10 => Message::Nack { ballot: ok_ballot, promised: bad_ballot(rng), reason: NackReason::HigherBallot },
        11 => Message::Nack { ballot: ok_ballot, promised: ok_ballot, reason: NackReason::Behind { chosen_through: extreme(rng) } },
        12 => Message::CatchUp { entries: vec![entry(2, ok_ballot), entry(1, ok_ballot)] },
        13 => Message::CatchUpRequest { from_slot: [0, extreme(rng)][rng.range(0, 1) as usize] },
        14 => Message::InstallSnapshot {
            snapshot: Snapshot {
                slot: rng.range(1, 1 << 20),
                data: Bytes::from_static(b"garbage, not a state"),
                membership: Membership::genesis(members),
            },
        },
        15 => {
            // Sometimes a configuration without a voter instead of a slot
            // out of range.
            let (slot, membership) = if rng.chance(1, 2) {
                (extreme(rng), Membership::genesis(members))
            } else {
                (rng.range(1, 1 << 20), Membership::default())
            };
            Message::InstallSnapshot { snapshot: Snapshot { slot, data: App { applied: slot, hash: 0 }.encode(), membership } }
        }
        _ => Message::PreVote { ballot: Ballot::new(1, to) },
    };
    // Sometimes the envelope lies instead: a stranger, or the receiver.
    let from = match rng.range(0, 5) {
        0 => [0, 99, u64::MAX][rng.range(0, 2) as usize],
        1 => to,
        _ => peer,
    };
    (from, message)
}
