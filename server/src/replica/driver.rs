//! The driver loop: the one task that owns a replica's Paxos core and its
//! storage and does the IO the core asks for, in the order of the driver
//! contract (see `gaios_paxos`'s crate docs).
//!
//! Each turn of the loop:
//!
//! 1. delivers every tick that is due, counted from elapsed monotonic time
//!    (not from how often the timer fired), so that after the process was
//!    paused (SIGSTOP, a long GC-like stall) all missed ticks reach the core
//!    **before** any message that arrived meanwhile. The master lease depends
//!    on it: an acceptor that slept must first see its lease grants expire in
//!    its own time, never act on stale time. The ticks that passed while the
//!    loop could not listen are first reported as a stall, which the core's
//!    election and quorum-check timers do not count (so a disk stall that
//!    holds up every replica's synced write at once costs no election);
//! 2. steps a bounded number of messages from the inbox, then tells the
//!    core which peers' connections closed (a dead master's followers then
//!    campaign once its lease runs out, see `Replica::peer_lost`);
//! 3. proposes a bounded batch of the commands the gRPC handlers queued
//!    (see [`crate::shared`]);
//! 4. while the core has a `Ready`: sends its `messages`, makes it durable
//!    with one synced write, sends its `persisted_messages`, installs a
//!    snapshot from another replica if there is one, applies the committed
//!    commands to the state machine (handing each outcome to the call that
//!    waits for it) and feeds them to the snapshot thread's copy of the
//!    state, and advances the core; every `snapshot_every_slots` applied
//!    slots it asks the snapshot thread for a snapshot
//!    ([`crate::replica::snapshotter`]), and when one comes back (its data
//!    already written) lets the core compact the log behind it;
//! 5. as master, does the master's duties: expires sessions whose lease ran
//!    out and moves the clock when a lock-delay ends (both by proposing
//!    commands), and after an election gives every session a fresh lease;
//! 6. follows the configuration: keeps the peer directory and the sending
//!    tasks to every member the core knows, answers a configuration change
//!    once it is in force, and stops for good (recording it) once a
//!    configuration without this replica is chosen;
//! 7. publishes a [`ReplicaStatus`] for the cell service.
//!
//! The applied state lives in memory and in snapshots. After a restart it is
//! rebuilt from the last snapshot, and the core hands the chosen commands
//! after it to be applied again; so the snapshot record, written in the same
//! synced batch as the log compaction, *is* the applied state on disk, and
//! applying adds no write of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gaios_paxos::{
    Ballot, Membership, Message, ProposeError as CoreProposeError, Ready, Replica, ReplicaId, RoleChange, Slot, Snapshot,
    StartError, Value,
};
use gaios_proto::state::v1 as wire;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::service::errors::ProposeError;
use gaios_state::master::MasterDuties;
use crate::ops::metrics::Metrics;
use crate::ops::config::PeerSpec;
use crate::shared::{ChangeRefusal, ChangeRequest, Proposal, Shared};
use gaios_state::machine::{Outcome, SnapshotError, StateMachine};
use crate::replica::snapshotter::{Snapshotter, SnapshotterError, Taken};
use crate::replica::storage::{Storage, StorageError};
use crate::replica::status::{MemberView, ReplicaStatus, Role, may_serve};
use crate::replica::transport::{Inbound, Outbound, PeerDirectory, PeerEntry};
use crate::replica::turn_cost::TurnCost;

/// The most queued commands proposed in one turn of the loop.
pub const PROPOSALS_PER_TURN_MAX: usize = 1024;
/// The most commands this master has proposed and not yet seen applied;
/// beyond it handlers are told the master is overloaded.
pub const PENDING_MAX: usize = 16_384;
/// The most closed connections told to the core in one turn (a handful of
/// peers; the channel holds [`CLOSED_CONNECTIONS_MAX`]).
const CLOSED_PER_TURN_MAX: usize = 64;
/// Closed connections waiting for the driver; more are dropped (they only
/// hasten an election).
pub const CLOSED_CONNECTIONS_MAX: usize = 64;
/// How often the master looks for expired sessions and ended lock-delays.
pub const DUTY_INTERVAL: Duration = Duration::from_millis(50);

/// The most inbox messages stepped in one turn of the loop, so that ticks
/// and `Ready`s are not starved by a flood of messages.
pub const MESSAGES_PER_TURN_MAX: usize = 1024;
/// How long one turn of the loop carries out `Ready`s before it lets ticks,
/// messages and the status through (a restarted replica replays up to
/// `snapshot_every_slots` slots, which can take seconds); the rest waits
/// for the next turn, which comes at once.
pub const READY_TIME_PER_TURN: Duration = Duration::from_millis(20);
/// A turn of the loop that takes this long is logged (a synced write that
/// stalled, a large install): heartbeats wait for it.
const SLOW_TURN: Duration = Duration::from_millis(100);
/// In debug builds the driver rechecks the whole state after the `Ready`s
/// it applies while the state is below this footprint (above it a check
/// costs more than the writes it checks).
const CHECK_STATE_BYTES_MAX: usize = 8 << 20;
/// ...and only once the time since the last check is this many times what
/// that check took, so checks take at most about a tenth of a debug
/// replica's time whatever the state's size: a small state is checked after
/// almost every `Ready`, a large one less often. A check walks the whole
/// state, so checking a large one after every `Ready` made each turn of a
/// debug build cost O(state) (200 ms at a few MiB): a directory of 100,000
/// children took the cell into an election storm (turns longer than the
/// master lease) and expired its sessions.
const CHECK_SPACING_FACTOR: u32 = 10;

/// Where the outcome of a configuration change goes: the configuration in
/// force and its slot, or why it was refused.
type ChangeReply = oneshot::Sender<Result<(Membership, Slot), ChangeRefusal>>;

/// What the driver needs besides the core and its IO.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Snapshot the state (and compact the log) every this many slots.
    pub snapshot_every_slots: u64,
    /// How long a session lives without a KeepAlive.
    pub session_lease: Duration,
    /// Where to count.
    pub metrics: Arc<Metrics>,
    /// The peers the transport talks to; the driver keeps it to the members
    /// the core knows.
    pub peers: PeerDirectory,
    /// The `--peer` flags: the addresses of members whose configuration
    /// records none (the founding members).
    pub flag_members: Vec<PeerSpec>,
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The Paxos core refused the durable state or the configuration.
    #[error("cannot start the Paxos core: {0}")]
    Start(#[from] StartError),
    /// A write or read failed. The driver stops rather than going on: after a
    /// failed fsync nothing says what is on disk, and a replica must never
    /// vote on state it may not have kept.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// A snapshot (from disk or from another replica) does not describe a
    /// state this code could have made.
    #[error("bad snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The snapshot thread failed (see [`SnapshotterError`]).
    #[error("snapshots: {0}")]
    Snapshotter(#[from] SnapshotterError),
    /// A configuration without this replica was chosen: it has stopped, and
    /// its data directory refuses to start again.
    #[error("this replica was removed from the cell by the configuration change at slot {slot}; it stopped and will not start again")]
    Removed {
        /// The slot of the change.
        slot: Slot,
    },
}

/// Owns the core and the storage of one replica; see the module docs.
#[derive(Debug)]
pub struct Driver {
    replica: Replica,
    storage: Storage,
    inbox: mpsc::Receiver<Inbound>,
    /// The peers whose connection to this replica closed, as the transport
    /// saw them ([`Driver::with_closed_connections`]).
    closed: Option<mpsc::Receiver<ReplicaId>>,
    outbound: Outbound,
    tick: Duration,
    status: watch::Sender<ReplicaStatus>,
    /// The last slot applied to the state machine.
    applied: Slot,
    installed_snapshot: Option<Slot>,
    snapshot_slot: Slot,
    shared: Arc<Shared>,
    proposals: mpsc::Receiver<Proposal>,
    options: DriverOptions,
    /// Drawn at start, so that outcomes reach the calls of this process
    /// only (never those of an earlier run with the same numbers).
    incarnation: u64,
    next_proposal: u64,
    pending: BTreeMap<u64, oneshot::Sender<Result<Outcome, ProposeError>>>,
    /// The master's duties (the session leases they move live in
    /// `Shared`, for the KeepAlive handler), and when they last ran.
    duties: MasterDuties,
    duties_at: Instant,
    /// When this turn began: the clock its ticks were counted from. The
    /// rest of the turn (the master's duties, the stamps on its commands)
    /// keeps to it, so that a pause in the middle of a turn (a SIGSTOP, a
    /// stalled disk) cannot let them act on a lease of before the pause at
    /// a time after it: the core learns of the missed ticks next turn.
    turn_began: Instant,
    /// A peer's snapshot checked (restored into a state by the transport)
    /// before the core saw it, waiting for the core to hand it back for
    /// installing: its slot and the state.
    checked_snapshot: Option<(Slot, StateMachine)>,
    /// Takes snapshots off this thread (see [`crate::replica::snapshotter`]).
    snapshotter: Snapshotter,
    /// The core's count of rejected peer messages at the last turn, so the
    /// metric is fed the difference.
    rejected_seen: u64,
    changes: mpsc::Receiver<ChangeRequest>,
    /// The change proposed for a caller, and the caller, until the change
    /// is in force or mastership is lost.
    change_waiting: Option<(Membership, ChangeReply)>,
    /// The core's `members_version` the peer directory was last built from.
    members_seen: Option<u64>,
    /// Whether a configuration in force listed this replica (a joining
    /// replica is not listed until its addition is chosen); once one did, a
    /// configuration without it means it was removed.
    was_member: bool,
    /// The configuration in force as `Status` shows it.
    members_view: Arc<Vec<MemberView>>,
    /// The current turn's costs (logged if the turn is slow).
    cost: TurnCost,
    /// When the state was last checked and how long that took (debug
    /// builds).
    last_check: Option<(Instant, Duration)>,
}

impl Driver {
    /// Rebuilds the state machine and the core from `storage` with
    /// `config`; returns the driver, a receiver of its status, and what it
    /// shares with the gRPC handlers.
    pub fn new(
        config: gaios_paxos::Config,
        storage: Storage,
        inbox: mpsc::Receiver<Inbound>,
        outbound: Outbound,
        tick: Duration,
        options: DriverOptions,
    ) -> Result<(Driver, watch::Receiver<ReplicaStatus>, Arc<Shared>), DriverError> {
        let mut durable = storage.load()?;
        let (mut state, snapshot_slot) = match &durable.snapshot {
            Some(snapshot) => (StateMachine::restore(&snapshot.data)?, snapshot.slot),
            None => (StateMachine::new(), 0),
        };
        // Checked once per `Ready` instead (see `apply`).
        state.set_check_after_apply(false);
        // The state is the snapshot's: the core must hand every chosen
        // command after it to be applied again.
        durable.applied = snapshot_slot;
        let replica = Replica::new(config, durable)?;
        let snapshotter = Snapshotter::start(state.clone(), snapshot_slot, storage.snapshot_store())?;
        // A founding member was a member from the start (even if its disk
        // holds a configuration without it, chosen before it could record
        // its removal); a joining replica becomes one once its addition is
        // in force.
        let was_member = replica.config().members.contains(&replica.id()) || replica.membership().contains(replica.id());
        let members_view = Arc::new(members_view(&replica, &options.flag_members));
        let mut first_status = status_of(&replica, None, Instant::now(), tick);
        first_status.members = members_view.clone();
        let (status, status_rx) = watch::channel(first_status);
        let (shared, proposals, changes) = Shared::new(state, options.session_lease);
        let shared = Arc::new(shared);
        let driver = Driver {
            replica,
            storage,
            inbox,
            closed: None,
            outbound,
            tick,
            status,
            applied: snapshot_slot,
            installed_snapshot: None,
            snapshot_slot,
            shared: shared.clone(),
            proposals,
            options,
            incarnation: incarnation(),
            next_proposal: 1,
            pending: BTreeMap::new(),
            duties: MasterDuties::new(),
            duties_at: Instant::now(),
            turn_began: Instant::now(),
            checked_snapshot: None,
            snapshotter,
            rejected_seen: 0,
            changes,
            change_waiting: None,
            members_seen: None,
            was_member,
            members_view,
            cost: TurnCost::begin(),
            last_check: None,
        };
        Ok((driver, status_rx, shared))
    }

    /// Runs the loop until `shutdown` turns true (or its sender is dropped),
    /// or until storage fails. Needs a multi-threaded runtime: the synced
    /// writes block the thread (`block_in_place`).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), DriverError> {
        let span = tracing::info_span!("replica", id = self.replica.id());
        async move {
            let start = Instant::now();
            let mut ticks_delivered: u64 = 0;
            let mut timer = tokio::time::interval(self.tick);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Events of a turn sit in a span naming the ballot promised when
            // the turn began; it is rebuilt when that ballot changes (a
            // span's fields can be added to but not replaced).
            let mut promised = self.replica.hard_state().promised;
            let mut ballot_span = tracing::info_span!("paxos", ballot = %promised);
            tracing::info!(applied = self.applied, "driver started");
            let mut more_ready = false;
            loop {
                let mut first = None;
                let mut first_proposal = None;
                let mut change = None;
                let mut taken = None;
                let mut closed = None;
                tokio::select! {
                    biased;
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                    }
                    _ = timer.tick() => {}
                    message = self.inbox.recv() => match message {
                        Some(message) => first = Some(message),
                        None => break,
                    },
                    Some(proposal) = self.proposals.recv() => first_proposal = Some(proposal),
                    Some(peer) = next_closed(&mut self.closed) => closed = Some(peer),
                    Some(request) = self.changes.recv() => change = Some(request),
                    result = self.snapshotter.next_taken(), if self.snapshotter.taking() => taken = Some(result),
                    // `Ready`s left over from the last turn go on at once.
                    () = std::future::ready(()), if more_ready => {}
                }

                let now_promised = self.replica.hard_state().promised;
                if now_promised != promised {
                    promised = now_promised;
                    ballot_span = tracing::info_span!("paxos", ballot = %promised);
                }
                let _entered = ballot_span.enter();
                self.cost = TurnCost::begin();

                // 1. Ticks first, from elapsed time, before any message.
                // Even a pause of hours is a few hundred thousand cheap ticks.
                // Beyond the one tick a turn may wait for, they passed while
                // the loop could not listen (a synced write held up by the
                // disk, a paused process): the core's liveness timers do not
                // count them, if they are more than a heartbeat interval and
                // within a bound ([`Replica::stalled`]).
                self.turn_began = Instant::now();
                let due = ticks_due(self.turn_began.saturating_duration_since(start), self.tick);
                let stalled = stalled_ticks(due, ticks_delivered);
                if stalled > 0 {
                    self.replica.stalled(stalled);
                }
                while ticks_delivered < due {
                    self.replica.tick();
                    ticks_delivered += 1;
                }

                // 2. A bounded batch of messages.
                let mut stepped = 0;
                if let Some(message) = first {
                    self.step(message);
                    stepped += 1;
                }
                while stepped < MESSAGES_PER_TURN_MAX {
                    let Ok(message) = self.inbox.try_recv() else { break };
                    self.step(message);
                    stepped += 1;
                }
                // Closed connections after the messages stepped this turn
                // (a heartbeat still waiting in a full inbox may yet reset
                // the election timer: the election then comes a little
                // later, no harm done).
                let more_closed = std::iter::from_fn(|| self.closed.as_mut()?.try_recv().ok());
                for peer in closed.into_iter().chain(more_closed).take(CLOSED_PER_TURN_MAX) {
                    tracing::info!(peer, "connection from peer closed");
                    self.replica.peer_lost(peer);
                }

                // 3. Commands from the handlers.
                if let Some(proposal) = first_proposal {
                    self.propose(proposal);
                }
                for _ in 1..PROPOSALS_PER_TURN_MAX {
                    let Ok(proposal) = self.proposals.try_recv() else { break };
                    self.propose(proposal);
                }

                // The select above is biased toward ticks and messages; a
                // change waiting behind them is taken here.
                if let Some(request) = change.or_else(|| self.changes.try_recv().ok()) {
                    self.propose_change(request);
                }

                // A snapshot the snapshot thread took: the core compacts.
                if let Some(result) = taken {
                    self.snapshot_taken(result)?;
                }

                // 4. The core's work, for at most READY_TIME_PER_TURN.
                more_ready = self.process_ready()?;

                // 5. The master's duties (even with `Ready`s left over: a
                // loaded master may always have some).
                if self.turn_began.saturating_duration_since(self.duties_at) >= DUTY_INTERVAL {
                    self.duties_at = self.turn_began;
                    self.master_duties();
                    more_ready |= self.process_ready()?;
                }

                // 6. The configuration.
                self.follow_configuration()?;

                // 7. Status.
                let last_tick_at = start + self.tick.saturating_mul(u32::try_from(ticks_delivered).unwrap_or(u32::MAX));
                self.publish(last_tick_at);
                self.cost.end(SLOW_TURN);
            }
            for (_, reply) in std::mem::take(&mut self.pending) {
                let _ = reply.send(Err(ProposeError::Indeterminate));
            }
            if let Some((_, reply)) = self.change_waiting.take() {
                let _ = reply.send(Err(ChangeRefusal::Indeterminate));
            }
            tracing::info!("driver stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Steps one peer message into the core. A snapshot must come checked
    /// (the core drops its log as soon as it takes one): the transport
    /// checked its length and CRC-32 and restored it into a state, off this
    /// thread; the state is kept for the install.
    fn step(&mut self, inbound: Inbound) {
        if let Message::InstallSnapshot { snapshot } = &inbound.message {
            let Some(state) = inbound.checked else {
                self.options.metrics.snapshots_rejected_total.inc();
                tracing::warn!(from = inbound.from, slot = snapshot.slot, "dropping a snapshot that the transport did not check");
                return;
            };
            // One the core will ignore must not displace one it will take.
            if snapshot.slot > self.replica.chosen_through() && !self.replica.is_master() {
                self.checked_snapshot = Some((snapshot.slot, *state));
            }
        }
        self.replica.step(inbound.from, inbound.message);
        let rejected = self.replica.status().rejected_messages;
        if rejected > self.rejected_seen {
            self.options.metrics.peer_messages_rejected_total.add(rejected - self.rejected_seen);
            self.rejected_seen = rejected;
        }
    }

    /// Carries out the `Ready`s the core has, in the contract's order, for
    /// at most [`READY_TIME_PER_TURN`]; returns whether some are left.
    fn process_ready(&mut self) -> Result<bool, DriverError> {
        let started = Instant::now();
        while self.replica.has_ready() {
            if started.elapsed() >= READY_TIME_PER_TURN {
                // A checked snapshot stays for the `Ready` that installs it.
                return Ok(true);
            }
            let ready: Ready = self.replica.ready();
            // A change proposed in this Ready may address a member the
            // directory does not hold yet.
            self.refresh_peers();
            for envelope in &ready.messages {
                self.outbound.send(envelope.to, &envelope.message);
            }
            // A snapshot from another replica was restored when its message
            // was stepped; it is made durable only as that checked state.
            let installed = match (&ready.snapshot, ready.install_snapshot) {
                (Some(snapshot), true) => match self.checked_snapshot.take() {
                    Some((slot, state)) if slot == snapshot.slot => Some((slot, state, snapshot.data.clone())),
                    _ => Some((snapshot.slot, StateMachine::restore(&snapshot.data)?, snapshot.data.clone())),
                },
                _ => None,
            };
            if !ready.nothing_to_persist() {
                // The core says whether the write must be synced: a Ready
                // that only moves the chosen prefix need not be (its entries
                // were synced when accepted, and the WAL keeps writes in
                // order), which spares every write a second fsync on the
                // master. The simulator loses such unsynced tails on power
                // loss, so the rule is tested as it runs here.
                let storage = &self.storage;
                let persist_began = Instant::now();
                if ready.must_sync {
                    let started = Instant::now();
                    tokio::task::block_in_place(|| storage.persist(&ready))?;
                    self.options.metrics.observe_fsync(started.elapsed());
                } else {
                    // No fsync, but RocksDB may still stall a write.
                    tokio::task::block_in_place(|| storage.persist_with(&ready, false))?;
                }
                self.cost.persist += persist_began.elapsed();
            }
            for envelope in &ready.persisted_messages {
                self.outbound.send(envelope.to, &envelope.message);
            }
            if let Some((slot, mut state, data)) = installed {
                state.set_check_after_apply(false);
                self.shared.outbox().retain_open(&state);
                let replaced = std::mem::replace(&mut *self.shared.state_mut(), state);
                // Freed after the lock is released (a large state takes a
                // while to free).
                drop(replaced);
                self.shared.all_sessions_touched();
                tracing::info!(slot, bytes = data.len(), "installed a snapshot from another replica");
                self.installed_snapshot = Some(slot);
                self.snapshot_slot = slot;
                self.applied = self.applied.max(slot);
                self.snapshotter.installed(slot, data)?;
            }
            self.apply(&ready.committed)?;
            for change in &ready.role_changes {
                match change {
                    RoleChange::BecameMaster { ballot, recovered_through } => {
                        tracing::info!(%ballot, recovered_through, "became master");
                        self.options.metrics.elections_total.inc();
                        self.became_master(*ballot);
                    }
                    RoleChange::LostMastership { ballot } => {
                        tracing::info!(%ballot, "lost mastership");
                        self.options.metrics.lost_mastership_total.inc();
                        self.lost_mastership();
                    }
                }
            }
            self.replica.advance(ready);
            self.maybe_snapshot()?;
        }
        // A checked snapshot the core did not take (it learned the slots
        // another way meanwhile) is not kept around.
        self.checked_snapshot = None;
        Ok(false)
    }

    /// Applies chosen commands in slot order, answers the calls of this
    /// process that wait for them, and hands the events they numbered to
    /// the outbox (locks taken in the order state, then outbox).
    fn apply(&mut self, committed: &[gaios_paxos::Entry]) -> Result<(), DriverError> {
        let Some(last) = committed.last() else { return Ok(()) };
        let locking = Instant::now();
        let mut state = self.shared.state_mut();
        let mut outbox = self.shared.outbox();
        let applying = Instant::now();
        self.cost.state_lock += applying.saturating_duration_since(locking);
        let mut touched = BTreeSet::new();
        for entry in committed {
            if entry.slot <= self.applied {
                continue;
            }
            if let Value::Batch(commands) = &entry.value {
                self.options.metrics.observe_batch(commands.len());
                for bytes in commands {
                    let command = match wire::Command::decode(bytes.as_ref()) {
                        Ok(command) => command,
                        Err(error) => {
                            // Every replica skips it alike; nobody waits
                            // for it (a master encodes what it proposes).
                            tracing::error!(slot = entry.slot, %error, "skipping a command that does not decode");
                            continue;
                        }
                    };
                    let outcome = outbox.record(state.apply(&command), &mut touched);
                    self.options.metrics.applied_commands_total.inc();
                    if command.proposer_incarnation == self.incarnation
                        && let Some(reply) = self.pending.remove(&command.proposal_number) {
                            let _ = reply.send(Ok(outcome));
                        }
                }
            }
            self.applied = entry.slot;
        }
        if cfg!(debug_assertions) && state.footprint_bytes() <= CHECK_STATE_BYTES_MAX {
            let due = self.last_check.is_none_or(|(at, took)| at.elapsed() >= took.saturating_mul(CHECK_SPACING_FACTOR));
            if due {
                let began = Instant::now();
                state.check_invariants();
                self.last_check = Some((Instant::now(), began.elapsed()));
            }
        }
        self.options.metrics.chosen_slots_total.add(committed.len() as u64);
        self.options.metrics.sessions.set(i64::try_from(state.session_count()).unwrap_or(i64::MAX));
        self.options.metrics.locks_held.set(i64::try_from(state.locks_held()).unwrap_or(i64::MAX));
        drop(outbox);
        drop(state);
        self.cost.apply += applying.elapsed();
        self.shared.sessions_touched(touched);
        self.shared.applied_through(last.slot);
        // The snapshot thread's copy follows, after the calls were answered.
        self.snapshotter.applied(committed)?;
        Ok(())
    }

    /// Asks the snapshot thread for a snapshot at the applied slot once
    /// `snapshot_every_slots` slots were applied since the last snapshot
    /// (and none is being taken).
    fn maybe_snapshot(&mut self) -> Result<(), DriverError> {
        // Replicas take their snapshots at staggered slots (by id, up to
        // 3/8 of the interval apart), so that they do not all encode and
        // write at the same moment.
        let every = self.options.snapshot_every_slots;
        let stagger = (self.replica.id() % 4).saturating_mul(every / 8);
        if self.snapshotter.taking() || self.applied < self.snapshot_slot.saturating_add(every).saturating_add(stagger) {
            return Ok(());
        }
        self.snapshotter.take(self.applied)?;
        Ok(())
    }

    /// The snapshot thread took a snapshot (its data is durable): the core
    /// compacts its log behind it, and the next `Ready` records it.
    fn snapshot_taken(&mut self, result: Result<Taken, SnapshotterError>) -> Result<(), DriverError> {
        let taken = match result {
            Ok(taken) => taken,
            Err(error @ SnapshotterError::Diverged { .. }) => {
                // A bug: start the snapshot thread again from a copy of the
                // state (slow for a large state, but this never happens).
                tracing::error!(%error, "the snapshot thread's copy of the state diverged; starting it again");
                let state = StateMachine::clone(&self.shared.state());
                self.snapshotter = Snapshotter::start(state, self.applied, self.storage.snapshot_store())?;
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let Taken { slot, data, encoding, writing } = taken;
        if slot <= self.snapshot_slot {
            // A snapshot from another replica was installed meanwhile.
            tracing::info!(slot, installed = self.snapshot_slot, "not compacting behind the snapshot taken: a newer one is installed");
            return Ok(());
        }
        let bytes = data.len();
        match self.replica.compact(Snapshot { slot, data, membership: gaios_paxos::Membership::default() }) {
            Ok(()) => {
                tracing::info!(slot, bytes, encoding_ms = encoding.as_millis(), writing_ms = writing.as_millis(), "took a snapshot");
                self.snapshot_slot = slot;
                self.options.metrics.snapshots_total.inc();
            }
            // A snapshot from another replica was installed meanwhile.
            Err(error) => tracing::info!(%error, "not compacting behind the snapshot taken"),
        }
        Ok(())
    }

    /// Queues a handler's command in the core, or answers why not.
    fn propose(&mut self, proposal: Proposal) {
        if self.pending.len() >= PENDING_MAX {
            let _ = proposal.reply.send(Err(ProposeError::Overloaded));
            return;
        }
        let number = self.next_proposal;
        match self.propose_command(proposal.kind, number) {
            Ok(()) => {
                self.next_proposal += 1;
                self.pending.insert(number, proposal.reply);
            }
            Err(error) => {
                let _ = proposal.reply.send(Err(error));
            }
        }
    }

    fn propose_command(&mut self, kind: wire::command::Kind, number: u64) -> Result<(), ProposeError> {
        // Never stamp a time before the state's clock (this master's clock
        // may be behind the last one's); the state would ignore it anyway.
        // Lock-delays run on the lock-delay clock, not on this wall clock.
        let now_ms = wall_clock_ms().max(self.shared.state().now_ms());
        let command = wire::Command {
            proposer_incarnation: self.incarnation,
            proposal_number: number,
            now_ms,
            lock_clock_ms: self.duties.lock_clock_ms(self.turn_began),
            kind: Some(kind),
        };
        self.options.metrics.proposals_total.inc();
        self.replica.propose(Bytes::from(command.encode_to_vec())).map_err(|error| match error {
            CoreProposeError::NotMaster { master_hint } => ProposeError::NotMaster { master: master_hint },
            CoreProposeError::QueueFull => ProposeError::Overloaded,
            CoreProposeError::CommandTooLarge { size_bytes, limit_bytes } => {
                ProposeError::TooLarge { size_bytes, limit_bytes }
            }
            _ => ProposeError::Overloaded,
        })
    }

    /// A new master: the log records the failover (every session gets a
    /// master-failover event). Session leases start only once this master
    /// can serve, and hear KeepAlives (see `master_duties`).
    fn became_master(&mut self, ballot: Ballot) {
        self.duties.reset(&mut self.shared.leases());
        // Number 0 is never pending: nobody waits for this command.
        if let Err(error) = self.propose_command(MasterDuties::took_over(ballot.round, ballot.replica), 0) {
            tracing::warn!(%error, "cannot record the failover");
        }
    }

    /// Calls waiting for commands hear that the outcome is unknown; the
    /// session leases of this reign are forgotten.
    fn lost_mastership(&mut self) {
        for (_, reply) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(ProposeError::Indeterminate));
        }
        // A change this master removed itself with is in force by now.
        if let Some((target, reply)) = self.change_waiting.take() {
            let answer = if *self.replica.membership() == target {
                Ok((target, self.replica.membership_slot()))
            } else {
                Err(ChangeRefusal::Indeterminate)
            };
            let _ = reply.send(answer);
        }
        self.duties.reset(&mut self.shared.leases());
    }

    /// Runs the master's duties ([`MasterDuties::tick`]): only a master that
    /// may serve (it holds the master lease and its state is current) expires
    /// sessions whose lease ran out and moves the clock when a lock-delay
    /// ended, since only then do clients' KeepAlives reach it; each time it
    /// becomes able to serve, every session gets a full lease from then.
    fn master_duties(&mut self) {
        if self.replica.is_master() {
            // How far learners have come, for `gaios member list`.
            self.members_view = Arc::new(members_view(&self.replica, &self.options.flag_members));
        }
        let can_serve = may_serve(self.replica.is_master(), self.replica.lease_valid(), self.replica.read_barrier(), self.applied);
        // The clock of the turn, which the core's lease is of.
        let now = self.turn_began;
        let due = {
            let state = self.shared.state();
            self.duties.tick(can_serve, &state, &mut self.shared.leases(), now)
        };
        for kind in due {
            if let wire::command::Kind::EndSession(end) = &kind {
                tracing::info!(session = end.session_id, "session lease ran out; expiring it");
            }
            if self.propose_command(kind.clone(), 0).is_ok() {
                let state = self.shared.state();
                self.duties.proposed(&kind, &state, &mut self.shared.leases());
            }
        }
    }

    /// Hands a configuration change to the core; the caller hears back once
    /// it is in force ([`Self::follow_configuration`]), or why not.
    fn propose_change(&mut self, request: ChangeRequest) {
        if self.change_waiting.is_some() {
            let _ = request.reply.send(Err(ChangeRefusal::Busy));
            return;
        }
        match self.replica.propose_change(&request.change, request.force) {
            Ok(target) => {
                tracing::info!(change = ?request.change, force = request.force, %target, "proposing a configuration change");
                self.change_waiting = Some((target, request.reply));
            }
            Err(error) => {
                tracing::info!(change = ?request.change, %error, "configuration change refused");
                let _ = request.reply.send(Err(ChangeRefusal::Refused(error)));
            }
        }
    }

    /// Follows the configuration the core knows: rebuilds the peer
    /// directory and the sending tasks when it changed, answers the change
    /// a caller waits for once it is in force, and stops the replica for
    /// good once a configuration without it is in force.
    fn follow_configuration(&mut self) -> Result<(), DriverError> {
        if self.change_waiting.as_ref().is_some_and(|(target, _)| self.replica.membership() == target)
            && let Some((target, reply)) = self.change_waiting.take()
        {
            tracing::info!(%target, slot = self.replica.membership_slot(), "configuration change in force");
            let _ = reply.send(Ok((target, self.replica.membership_slot())));
        }
        self.refresh_peers();
        let me = self.replica.id();
        let in_force = self.replica.membership().contains(me);
        if in_force {
            self.was_member = true;
        } else if self.was_member {
            let slot = self.replica.membership_slot();
            tracing::warn!(slot, "this replica was removed from the cell; stopping for good");
            tokio::task::block_in_place(|| self.storage.mark_removed(slot))?;
            return Err(DriverError::Removed { slot });
        }
        Ok(())
    }

    /// Rebuilds the peer directory, the sending tasks and the members view
    /// when the members the core knows changed.
    fn refresh_peers(&mut self) {
        let version = self.replica.members_version();
        if self.members_seen == Some(version) {
            return;
        }
        self.members_seen = Some(version);
        let me = self.replica.id();
        let peers: BTreeMap<ReplicaId, PeerEntry> = self
            .replica
            .known_members()
            .into_values()
            .filter(|member| member.id != me)
            .filter_map(|member| {
                let address = resolve(&member.peer_address, member.id, &self.options.flag_members, |p| p.peer_address)?;
                Some((member.id, PeerEntry { address, incarnation: member.incarnation }))
            })
            .collect();
        self.options.peers.set(peers);
        self.outbound.update(&self.options.peers);
        self.members_view = Arc::new(members_view(&self.replica, &self.options.flag_members));
    }

    /// Hears from the transport which peers' connections closed.
    #[must_use]
    pub fn with_closed_connections(mut self, closed: mpsc::Receiver<ReplicaId>) -> Self {
        self.closed = Some(closed);
        self
    }

    /// Publishes the status if it changed; `last_tick_at` is when the core's
    /// current tick began, from which the lease's end is placed in time.
    fn publish(&self, last_tick_at: Instant) {
        let mut status = status_of(&self.replica, self.installed_snapshot, last_tick_at, self.tick);
        status.applied = self.applied;
        status.snapshot_slot = self.snapshot_slot;
        status.members = self.members_view.clone();
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

/// Of the ticks due at the start of a turn, how many passed while the loop
/// could not listen: all but the one an idle loop waits for.
fn stalled_ticks(due: u64, delivered: u64) -> u64 {
    due.saturating_sub(delivered).saturating_sub(1)
}

/// The next peer whose connection closed; never, without a transport that
/// tells.
async fn next_closed(closed: &mut Option<mpsc::Receiver<ReplicaId>>) -> Option<ReplicaId> {
    match closed {
        Some(closed) => closed.recv().await,
        None => std::future::pending().await,
    }
}

/// How many ticks are due after `elapsed` time at one tick per `tick`.
fn ticks_due(elapsed: Duration, tick: Duration) -> u64 {
    let tick_nanos = tick.as_nanos().max(1);
    u64::try_from(elapsed.as_nanos() / tick_nanos).unwrap_or(u64::MAX)
}

fn status_of(replica: &Replica, installed_snapshot: Option<Slot>, last_tick_at: Instant, tick: Duration) -> ReplicaStatus {
    let status = replica.status();
    let role = match status.role {
        "master" => Role::Master,
        "candidate" => Role::Candidate,
        _ => Role::Follower,
    };
    let lease_valid_until = status.lease_until_tick.map(|until| {
        let ticks_left = until.saturating_sub(status.now_tick);
        last_tick_at + tick.saturating_mul(u32::try_from(ticks_left).unwrap_or(u32::MAX))
    });
    ReplicaStatus {
        id: status.id,
        role,
        promised: status.promised,
        own_ballot: status.own_ballot,
        master: status.master_hint,
        chosen_through: status.chosen_through,
        applied: status.applied,
        log_start: status.log_start,
        installed_snapshot,
        lease_valid_until,
        read_barrier: replica.read_barrier(),
        snapshot_slot: 0,
        members: Arc::default(),
        membership_slot: status.membership_slot,
        highest_member_id: replica.membership().highest_id,
    }
}

/// The address of member `id`: this replica's `--peer` flag for it if it
/// has one (an operator may route each replica's links its own way, as the
/// chaos suite's fault proxy does), else the one the configuration records.
fn resolve(recorded: &str, id: ReplicaId, flags: &[PeerSpec], pick: impl Fn(&PeerSpec) -> std::net::SocketAddr) -> Option<String> {
    if let Some(peer) = flags.iter().find(|peer| peer.id == id) {
        return Some(pick(peer).to_string());
    }
    (!recorded.is_empty()).then(|| recorded.to_string())
}

/// The configuration in force as `Status` shows it, with the master's view
/// of how far each member has learned.
fn members_view(replica: &Replica, flags: &[PeerSpec]) -> Vec<MemberView> {
    let progress = replica.progress();
    replica
        .membership()
        .members
        .iter()
        .map(|member| MemberView {
            id: member.id,
            voter: member.voter,
            incarnation: member.incarnation,
            peer_address: resolve(&member.peer_address, member.id, flags, |p| p.peer_address).unwrap_or_default(),
            client_address: resolve(&member.client_address, member.id, flags, |p| p.client_address).unwrap_or_default(),
            learned_through: if member.id == replica.id() && replica.is_master() {
                Some(replica.chosen_through())
            } else {
                progress.get(&member.id).copied()
            },
        })
        .collect()
}

/// The wall clock in ms since the Unix epoch, for the master's timestamps
/// in commands (the state machine never reads a clock itself).
fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A random number drawn at start (std's hasher keys are random per
/// process), naming this run of the replica in the commands it proposes.
fn incarnation() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_due_counts_whole_ticks_of_elapsed_time() {
        let tick = Duration::from_millis(50);
        assert_eq!(ticks_due(Duration::ZERO, tick), 0);
        assert_eq!(ticks_due(Duration::from_millis(49), tick), 0);
        assert_eq!(ticks_due(Duration::from_millis(50), tick), 1);
        // A 10 s pause makes 200 ticks due at once.
        assert_eq!(ticks_due(Duration::from_secs(10), tick), 200);
    }

    #[test]
    fn a_turn_stalled_for_all_ticks_but_the_one_it_waited_for() {
        assert_eq!(stalled_ticks(5, 5), 0, "woken by a message within the tick");
        assert_eq!(stalled_ticks(6, 5), 0, "woken by the tick");
        assert_eq!(stalled_ticks(7, 5), 1);
        // A 10 s pause at 50 ms ticks.
        assert_eq!(stalled_ticks(205, 5), 199);
        assert_eq!(stalled_ticks(3, 5), 0, "never negative");
    }
}
