//! One replica of the cell: proposer, acceptor and learner in one
//! deterministic state machine. It does no IO; see [`crate::Ready`] for what
//! the driver must do with its output.
//!
//! Each rule of the protocol is one function, named after it: `campaign`,
//! `on_prepare`, `on_promise`, `become_master`, `flush_proposals`,
//! `on_accept`, `on_accepted`, `on_heartbeat`, `on_heartbeat_ack`, `on_nack`,
//! `on_catch_up_request`, `on_catch_up`, `on_install_snapshot`, `step_down`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::message::{Message, NackReason};
use crate::ready::{Envelope, Ready, RoleChange};
use crate::rng::Rng;
use crate::types::{Ballot, Durable, Entry, HardState, ReplicaId, Slot, Snapshot, Value};

/// Why a replica could not start from its durable state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The durable state claims a slot is chosen but holds no value for it.
    #[error("durable state says slot {0} is chosen but the log has no entry for it")]
    MissingChosenEntry(Slot),
}

/// Why a proposal was refused. The caller may retry elsewhere or later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the master proposes; `master_hint` is the last master this replica
    /// heard from, if any.
    #[error("this replica is not the master (master hint: {master_hint:?})")]
    NotMaster {
        /// The replica believed to be master.
        master_hint: Option<ReplicaId>,
    },
    /// The master's proposal queue is full; retry after some are chosen.
    #[error("the proposal queue is full")]
    QueueFull,
    /// The command is larger than `command_bytes_max`.
    #[error("command of {size_bytes} bytes exceeds the limit of {limit_bytes}")]
    CommandTooLarge {
        /// The command's size.
        size_bytes: usize,
        /// The configured limit.
        limit_bytes: usize,
    },
}

/// Why a snapshot could not be used to compact the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// The snapshot covers slots the application has not been handed yet.
    #[error("snapshot at slot {snapshot} is past the applied slot {applied}")]
    NotApplied {
        /// The snapshot's slot.
        snapshot: Slot,
        /// The last slot handed out for applying.
        applied: Slot,
    },
}

/// A point-in-time view of the replica, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: ReplicaId,
    /// The replica's tick counter.
    pub now_tick: u64,
    /// "follower", "candidate" or "master".
    pub role: &'static str,
    /// The ballot this replica leads with, if candidate or master.
    pub own_ballot: Option<Ballot>,
    /// The highest ballot promised.
    pub promised: Ballot,
    /// The master this replica last heard from.
    pub master_hint: Option<ReplicaId>,
    /// The chosen prefix.
    pub chosen_through: Slot,
    /// The last slot handed out for applying.
    pub applied: Slot,
    /// The slot below which the log is compacted.
    pub log_start: Slot,
    /// Entries held in the log.
    pub log_len: usize,
    /// The master's lease end (exclusive), in this replica's ticks.
    pub lease_until_tick: Option<u64>,
}

/// The promise an acceptor made by acknowledging a heartbeat: until `until`,
/// it promises no ballot of any replica but `holder`.
#[derive(Clone, Copy, Debug)]
struct LeaseGrant {
    /// The master the lease was granted to; `None` after a restart, when the
    /// acceptor cannot know whom it granted a lease before it crashed.
    holder: Option<ReplicaId>,
    until: u64,
}

/// A slot the master proposed and has not yet seen chosen.
#[derive(Debug)]
struct InFlight {
    value: Value,
    votes: BTreeSet<ReplicaId>,
    sent_tick: u64,
    chosen: bool,
}

/// One part of a promise, as it arrived.
struct Promised {
    entries: Vec<Entry>,
    part: u32,
    parts: u32,
}

/// The parts of one acceptor's promise received so far.
#[derive(Debug)]
struct PromiseParts {
    chosen_through: Slot,
    parts: u32,
    received: BTreeMap<u32, Vec<Entry>>,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    from_slot: Slot,
    /// Promises received, by acceptor.
    promises: BTreeMap<ReplicaId, PromiseParts>,
    /// True once our own promise of `ballot` is durable; from then on the
    /// prepare may be re-sent at any time.
    ballot_durable: bool,
}

#[derive(Debug)]
struct Master {
    ballot: Ballot,
    next_slot: Slot,
    recovered_through: Slot,
    in_flight: BTreeMap<Slot, InFlight>,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Per acceptor, the send tick of the newest heartbeat it acknowledged.
    heartbeat_acks: BTreeMap<ReplicaId, u64>,
    last_heartbeat_tick: u64,
    lease_until: u64,
    /// The last tick a majority was known to follow us: when we became
    /// master, then the start of each lease.
    quorum_tick: u64,
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate(Candidate),
    Master(Master),
}

/// A replica's Paxos state. Feed it [`tick`](Self::tick),
/// [`step`](Self::step) and [`propose`](Self::propose); take its work with
/// [`ready`](Self::ready) and report completion with
/// [`advance`](Self::advance).
#[derive(Debug)]
pub struct Replica {
    config: Config,
    rng: Rng,
    now: u64,

    // Acceptor.
    promised: Ballot,
    log: BTreeMap<Slot, (Ballot, Value)>,
    log_start: Slot,
    snapshot: Option<Snapshot>,
    lease_grant: LeaseGrant,

    // Learner.
    chosen_through: Slot,
    applied: Slot,
    /// The highest chosen prefix a master announced to us.
    known_chosen_through: Slot,
    catch_up_sent_tick: Option<u64>,

    // Proposer.
    role: Role,
    master_hint: Option<ReplicaId>,
    election_deadline: u64,
    highest_round_seen: u64,

    // Output.
    out: Ready,
    hard_state_dirty: bool,
    self_inbox: VecDeque<Message>,
    ready_outstanding: bool,
}

impl Replica {
    /// Starts a replica from what it kept durably (`Durable::default()` for a
    /// new one). A restarted acceptor promises nothing for `lease_ticks`: it
    /// may have granted a lease before it stopped and cannot know to whom.
    pub fn new(config: Config, durable: Durable) -> Result<Self, StartError> {
        config.validate()?;
        let log_start = durable.snapshot.as_ref().map_or(0, |s| s.slot);
        let log: BTreeMap<Slot, (Ballot, Value)> = durable
            .entries
            .into_iter()
            .filter(|e| e.slot > log_start)
            .map(|e| (e.slot, (e.ballot, e.value)))
            .collect();
        let applied = durable.applied.max(log_start);
        let chosen_through = durable.hard_state.chosen_through.max(applied).max(log_start);
        for slot in applied + 1..=chosen_through {
            if !log.contains_key(&slot) {
                return Err(StartError::MissingChosenEntry(slot));
            }
        }
        let mut rng = Rng::new(config.seed);
        let election_deadline = rng.range(config.election_ticks_min, config.election_ticks_max);
        let lease_ticks = config.lease_ticks;
        Ok(Replica {
            rng,
            now: 0,
            promised: durable.hard_state.promised,
            log,
            log_start,
            snapshot: durable.snapshot,
            lease_grant: LeaseGrant { holder: None, until: lease_ticks },
            chosen_through,
            applied,
            known_chosen_through: chosen_through,
            catch_up_sent_tick: None,
            role: Role::Follower,
            master_hint: None,
            election_deadline,
            highest_round_seen: durable.hard_state.promised.round,
            out: Ready::default(),
            hard_state_dirty: false,
            self_inbox: VecDeque::new(),
            ready_outstanding: false,
            config,
        })
    }

    // ----------------------------------------------------------------------
    // Inputs.

    /// Advances the replica's clock by one tick: heartbeats and resends on the
    /// master, elections on the others, catch-up retries everywhere.
    pub fn tick(&mut self) {
        self.now += 1;
        match &self.role {
            Role::Master(_) => self.tick_master(),
            Role::Follower | Role::Candidate(_) => {
                if self.now >= self.election_deadline {
                    self.campaign();
                } else {
                    self.resend_prepares();
                }
            }
        }
        if let Some(master) = self.master_hint.filter(|_| self.chosen_through < self.known_chosen_through) {
            self.request_catch_up(master);
        }
        self.drain_self_inbox();
        self.check_invariants();
    }

    /// Handles a message from another replica. Messages from non-members, or
    /// that claim a ballot their sender does not own, are ignored.
    pub fn step(&mut self, from: ReplicaId, message: Message) {
        if from == self.config.id || !self.config.members.contains(&from) {
            return;
        }
        self.handle(from, message);
        self.drain_self_inbox();
        self.check_invariants();
    }

    /// Queues a command for the next free slot. Only the master accepts
    /// proposals; the command is chosen, or lost with the master's
    /// mastership, which the driver learns from a `LostMastership` role change.
    pub fn propose(&mut self, command: Bytes) -> Result<(), ProposeError> {
        if command.len() > self.config.command_bytes_max {
            return Err(ProposeError::CommandTooLarge {
                size_bytes: command.len(),
                limit_bytes: self.config.command_bytes_max,
            });
        }
        let hint = self.master_hint;
        let Role::Master(master) = &mut self.role else {
            return Err(ProposeError::NotMaster { master_hint: hint });
        };
        if master.queue.len() >= self.config.proposals_queued_max
            || master.queued_bytes + command.len() > self.config.proposals_queued_bytes_max
        {
            return Err(ProposeError::QueueFull);
        }
        master.queued_bytes += command.len();
        master.queue.push_back(command);
        Ok(())
    }

    /// Tells the replica the application snapshotted its state through
    /// `snapshot.slot`; the log at or below it is dropped and the snapshot is
    /// kept to send to replicas that fall behind it.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<(), CompactError> {
        if snapshot.slot > self.applied {
            return Err(CompactError::NotApplied { snapshot: snapshot.slot, applied: self.applied });
        }
        if snapshot.slot <= self.log_start {
            return Ok(());
        }
        self.drop_log_through(snapshot.slot);
        self.out.snapshot = Some(snapshot.clone());
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Starts phase 1 now instead of waiting for the election timeout.
    pub fn campaign(&mut self) {
        if self.lease_blocks(self.config.id) {
            // Our own acceptor still honours another master's lease (or waits
            // out its restart) and would refuse our ballot: try again as soon
            // as that lease runs out, with a little jitter against duels.
            let jitter = self.rng.range(0, self.config.election_ticks_max - self.config.election_ticks_min);
            self.election_deadline = self.lease_grant.until + jitter;
            return;
        }
        self.reset_election_timer();
        if let Role::Master(_) = self.role {
            self.step_down();
        }
        let round = self.promised.round.max(self.highest_round_seen) + 1;
        let ballot = Ballot::new(round, self.config.id);
        self.highest_round_seen = round;
        self.promised = ballot;
        self.hard_state_dirty = true;
        let from_slot = self.chosen_through + 1;
        self.role =
            Role::Candidate(Candidate { ballot, from_slot, promises: BTreeMap::new(), ballot_durable: false });
        // The ballot goes out only once it is durable, so a restart can never
        // reuse it with other values.
        for to in self.peers() {
            self.send_persisted(to, Message::Prepare { ballot, from_slot });
        }
        self.send_promise(self.config.id, ballot, from_slot);
    }

    // ----------------------------------------------------------------------
    // Output.

    /// True when [`ready`](Self::ready) has work to hand out.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.hard_state_dirty
            || self.applied < self.chosen_through
            || !self.self_inbox.is_empty()
            || matches!(&self.role, Role::Master(m) if !m.queue.is_empty() && self.window_has_room(m))
    }

    /// Takes the work accumulated since the last call. Proposals queued since
    /// then are batched into slots here. Call [`advance`](Self::advance) with
    /// the result before calling `ready` again.
    pub fn ready(&mut self) -> Ready {
        debug_assert!(!self.ready_outstanding, "ready() called twice without advance()");
        self.flush_proposals();
        self.drain_self_inbox();
        let mut committed = Vec::new();
        while self.applied < self.chosen_through && committed.len() < self.config.entries_per_message_max {
            let slot = self.applied + 1;
            let Some((ballot, value)) = self.log.get(&slot) else {
                debug_assert!(false, "chosen slot {slot} missing from the log");
                break;
            };
            committed.push(Entry { slot, ballot: *ballot, value: value.clone() });
            self.applied = slot;
        }
        let mut ready = std::mem::take(&mut self.out);
        ready.committed = committed;
        if std::mem::take(&mut self.hard_state_dirty) {
            ready.hard_state = Some(self.hard_state());
        }
        self.ready_outstanding = true;
        ready
    }

    /// Reports that `ready` was carried out: its write is durable, its
    /// messages sent, its entries applied. The replica's own votes, which rest
    /// on that write, are counted now.
    pub fn advance(&mut self, ready: Ready) {
        self.ready_outstanding = false;
        for message in ready.self_messages {
            self.handle(self.config.id, message);
        }
        self.drain_self_inbox();
        self.check_invariants();
    }

    // ----------------------------------------------------------------------
    // Queries.

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    /// The configuration the replica runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True while this replica is the master (phase 1 done for its ballot).
    pub fn is_master(&self) -> bool {
        matches!(self.role, Role::Master(_))
    }

    /// The master's ballot, if this replica is the master.
    pub fn master_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Master(m) => Some(m.ballot),
            _ => None,
        }
    }

    /// The replica this one believes is master (itself included).
    pub fn master_hint(&self) -> Option<ReplicaId> {
        if self.is_master() { Some(self.config.id) } else { self.master_hint }
    }

    /// The tick (exclusive) until which this master holds its lease: no other
    /// replica can become master before it. `None` if not master or the lease
    /// has run out.
    pub fn lease_until(&self) -> Option<u64> {
        match &self.role {
            Role::Master(m) if self.now < m.lease_until => Some(m.lease_until),
            _ => None,
        }
    }

    /// True while this replica is master and holds a valid lease.
    pub fn lease_valid(&self) -> bool {
        self.lease_until().is_some()
    }

    /// The slot a master must have applied before it serves reads from its
    /// applied state: the last slot its phase 1 recovered. `None` if not master.
    pub fn read_barrier(&self) -> Option<Slot> {
        match &self.role {
            Role::Master(m) => Some(m.recovered_through),
            _ => None,
        }
    }

    /// The chosen prefix.
    pub fn chosen_through(&self) -> Slot {
        self.chosen_through
    }

    /// The last slot handed out for applying.
    pub fn applied(&self) -> Slot {
        self.applied
    }

    /// The replica's tick counter.
    pub fn now_tick(&self) -> u64 {
        self.now
    }

    /// The acceptor's durable state as it stands in memory.
    pub fn hard_state(&self) -> HardState {
        HardState { promised: self.promised, chosen_through: self.chosen_through }
    }

    /// A summary for status pages and tests.
    pub fn status(&self) -> Status {
        let (role, own_ballot) = match &self.role {
            Role::Follower => ("follower", None),
            Role::Candidate(c) => ("candidate", Some(c.ballot)),
            Role::Master(m) => ("master", Some(m.ballot)),
        };
        Status {
            id: self.config.id,
            now_tick: self.now,
            role,
            own_ballot,
            promised: self.promised,
            master_hint: self.master_hint(),
            chosen_through: self.chosen_through,
            applied: self.applied,
            log_start: self.log_start,
            log_len: self.log.len(),
            lease_until_tick: self.lease_until(),
        }
    }

    // ----------------------------------------------------------------------
    // Dispatch.

    fn handle(&mut self, from: ReplicaId, message: Message) {
        match message {
            Message::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot),
            Message::Promise { ballot, chosen_through, entries, part, parts } => {
                self.on_promise(from, ballot, chosen_through, Promised { entries, part, parts })
            }
            Message::Accept { ballot, entries, chosen_through } => {
                self.on_accept(from, ballot, entries, chosen_through)
            }
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, &slots),
            Message::Heartbeat { ballot, chosen_through, sent_tick } => {
                self.on_heartbeat(from, ballot, chosen_through, sent_tick)
            }
            Message::HeartbeatAck { ballot, sent_tick } => self.on_heartbeat_ack(from, ballot, sent_tick),
            Message::Nack { ballot, promised, reason } => self.on_nack(from, ballot, promised, reason),
            Message::CatchUpRequest { from_slot } => self.on_catch_up_request(from, from_slot),
            Message::CatchUp { entries } => self.on_catch_up(from, entries),
            Message::InstallSnapshot { snapshot } => self.on_install_snapshot(snapshot),
        }
    }

    fn drain_self_inbox(&mut self) {
        while let Some(message) = self.self_inbox.pop_front() {
            self.handle(self.config.id, message);
        }
    }

    // ----------------------------------------------------------------------
    // Phase 1.

    /// Acceptor rule for phase 1a: promise `ballot` unless a higher ballot was
    /// promised, a lease to another replica is live, or the candidate is too
    /// far behind to be told everything in one promise.
    fn on_prepare(&mut self, from: ReplicaId, ballot: Ballot, from_slot: Slot) {
        if ballot.replica != from {
            return;
        }
        self.note_round(ballot.round);
        if ballot < self.promised {
            self.nack(from, ballot, NackReason::HigherBallot);
            return;
        }
        if self.lease_blocks(ballot.replica) {
            self.nack(from, ballot, NackReason::LeaseHeld);
            return;
        }
        let behind = NackReason::Behind { chosen_through: self.chosen_through };
        if from_slot <= self.log_start {
            self.nack(from, ballot, behind);
            return;
        }
        let parts_needed = self.log.range(from_slot..).count().div_ceil(self.config.entries_per_message_max);
        if parts_needed > self.config.promise_parts_max as usize {
            self.nack(from, ballot, behind);
            return;
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.hard_state_dirty = true;
            if self.own_ballot().is_some_and(|own| own < ballot) {
                self.step_down();
            }
        }
        self.master_hint = None;
        self.reset_election_timer();
        self.send_promise(from, ballot, from_slot);
    }

    /// Sends our promise of `ballot`, with every entry at or above
    /// `from_slot`, in as many bounded parts as it takes. It leaves only once
    /// the promise is durable.
    fn send_promise(&mut self, to: ReplicaId, ballot: Ballot, from_slot: Slot) {
        let entries = self.entries_from(from_slot);
        let chunks: Vec<Vec<Entry>> = if entries.is_empty() {
            vec![Vec::new()]
        } else {
            entries.chunks(self.config.entries_per_message_max).map(<[Entry]>::to_vec).collect()
        };
        let parts = chunks.len() as u32;
        for (part, entries) in chunks.into_iter().enumerate() {
            let message =
                Message::Promise { ballot, chosen_through: self.chosen_through, entries, part: part as u32, parts };
            self.send_persisted(to, message);
        }
    }

    /// Candidate rule: re-send the prepare every tick to acceptors that have
    /// not promised (it was lost, or refused while a lease ran), so a master
    /// is elected as soon as the old master's lease allows.
    fn resend_prepares(&mut self) {
        let Role::Candidate(candidate) = &self.role else { return };
        if !candidate.ballot_durable {
            return;
        }
        let (ballot, from_slot) = (candidate.ballot, candidate.from_slot);
        let missing: Vec<ReplicaId> =
            self.peers().into_iter().filter(|p| !candidate.promises.contains_key(p)).collect();
        for to in missing {
            self.send(to, Message::Prepare { ballot, from_slot });
        }
    }

    /// Candidate rule for phase 1b: collect promises (every part of each); a
    /// majority makes us master.
    fn on_promise(&mut self, from: ReplicaId, ballot: Ballot, chosen_through: Slot, part: Promised) {
        let quorum = self.config.quorum();
        let parts_max = self.config.promise_parts_max;
        let Role::Candidate(candidate) = &mut self.role else { return };
        if candidate.ballot != ballot || part.parts == 0 || part.parts > parts_max || part.part >= part.parts {
            return;
        }
        let promise = candidate.promises.entry(from).or_insert_with(|| PromiseParts {
            chosen_through,
            parts: part.parts,
            received: BTreeMap::new(),
        });
        if promise.parts != part.parts || promise.chosen_through != chosen_through {
            // Parts of two different promises of the same ballot cannot
            // happen; ignore the odd one rather than mix them.
            return;
        }
        promise.received.insert(part.part, part.entries);
        if from == self.config.id {
            candidate.ballot_durable = true;
        }
        let complete = candidate.promises.values().filter(|p| p.received.len() == p.parts as usize).count();
        if complete >= quorum {
            self.become_master();
        }
    }

    /// Phase 1 is done: for every slot from the candidate's first unchosen one
    /// to the highest any promise reported, re-propose the value accepted in
    /// the highest ballot (or the chosen value, or a no-op for a gap).
    fn become_master(&mut self) {
        let Role::Candidate(candidate) = std::mem::replace(&mut self.role, Role::Follower) else {
            return;
        };
        let ballot = candidate.ballot;
        // slot -> (known chosen, ballot, value)
        let mut merged: BTreeMap<Slot, (bool, Ballot, Value)> = BTreeMap::new();
        for promise in candidate.promises.into_values() {
            if promise.received.len() != promise.parts as usize {
                continue;
            }
            let acceptor_chosen_through = promise.chosen_through;
            for entry in promise.received.into_values().flatten() {
                if entry.slot < candidate.from_slot {
                    continue;
                }
                let chosen = entry.slot <= acceptor_chosen_through;
                let replace = match merged.get(&entry.slot) {
                    None => true,
                    Some((known_chosen, known_ballot, _)) => {
                        !known_chosen && (chosen || entry.ballot > *known_ballot)
                    }
                };
                if replace {
                    merged.insert(entry.slot, (chosen, entry.ballot, entry.value));
                }
            }
        }
        let recovered_through = merged.keys().next_back().copied().unwrap_or(0).max(self.chosen_through);
        self.role = Role::Master(Master {
            ballot,
            next_slot: recovered_through + 1,
            recovered_through,
            in_flight: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            heartbeat_acks: BTreeMap::new(),
            last_heartbeat_tick: self.now,
            lease_until: 0,
            quorum_tick: self.now,
        });
        self.master_hint = Some(self.config.id);
        self.out.role_changes.push(RoleChange::BecameMaster { ballot, recovered_through });
        let mut proposals = Vec::new();
        for slot in self.chosen_through + 1..=recovered_through {
            let (chosen, value) = match merged.remove(&slot) {
                Some((chosen, _, value)) => (chosen, value),
                None => (false, Value::Noop),
            };
            proposals.push(Entry { slot, ballot, value: value.clone() });
            let Role::Master(master) = &mut self.role else { return };
            master.in_flight.insert(
                slot,
                InFlight { value, votes: BTreeSet::new(), sent_tick: self.now, chosen },
            );
        }
        self.send_accepts(proposals);
        self.advance_master_chosen();
        self.send_heartbeats();
    }

    // ----------------------------------------------------------------------
    // Phase 2.

    fn window_has_room(&self, master: &Master) -> bool {
        master.next_slot.saturating_sub(self.chosen_through + 1) < self.config.slots_in_flight_max
    }

    /// Master rule: batch queued commands into new slots while the window of
    /// slots in flight has room, and send one accept for all of them.
    fn flush_proposals(&mut self) {
        let mut proposals = Vec::new();
        loop {
            let Role::Master(master) = &self.role else { return };
            if master.queue.is_empty() || !self.window_has_room(master) {
                break;
            }
            let Role::Master(master) = &mut self.role else { return };
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            while let Some(command) = master.queue.front() {
                let fits = batch.is_empty()
                    || (batch.len() < self.config.batch_commands_max
                        && batch_bytes + command.len() <= self.config.batch_bytes_max);
                if !fits {
                    break;
                }
                batch_bytes += command.len();
                master.queued_bytes -= command.len();
                if let Some(command) = master.queue.pop_front() {
                    batch.push(command);
                }
            }
            let slot = master.next_slot;
            master.next_slot += 1;
            let value = Value::Batch(batch);
            master.in_flight.insert(
                slot,
                InFlight { value: value.clone(), votes: BTreeSet::new(), sent_tick: self.now, chosen: false },
            );
            proposals.push(Entry { slot, ballot: master.ballot, value });
        }
        self.send_accepts(proposals);
    }

    /// Sends accepts for `proposals` (all in the master's ballot) to every
    /// member, ourselves included, in messages of bounded size.
    fn send_accepts(&mut self, proposals: Vec<Entry>) {
        let Some(ballot) = self.master_ballot() else { return };
        let members = self.config.members.clone();
        for chunk in proposals.chunks(self.config.entries_per_message_max) {
            for &to in &members {
                let message =
                    Message::Accept { ballot, entries: chunk.to_vec(), chosen_through: self.chosen_through };
                self.send(to, message);
            }
        }
    }

    /// Acceptor rule for phase 2a: accept unless a higher ballot was promised.
    /// The accepted notice leaves only once the entries are durable.
    fn on_accept(&mut self, from: ReplicaId, ballot: Ballot, entries: Vec<Entry>, chosen_through: Slot) {
        if ballot.replica != from {
            return;
        }
        if !self.follow(from, ballot) {
            return;
        }
        let mut slots = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.ballot != ballot {
                continue;
            }
            if entry.slot <= self.chosen_through {
                // Already chosen here; the master can only be re-proposing the
                // chosen value.
                slots.push(entry.slot);
                continue;
            }
            self.log.insert(entry.slot, (ballot, entry.value.clone()));
            slots.push(entry.slot);
            self.out.entries.push(entry);
        }
        if !slots.is_empty() {
            self.send_persisted(from, Message::Accepted { ballot, slots });
        }
        self.learn_chosen_through(ballot, chosen_through);
    }

    /// Master rule for phase 2b: a slot accepted by a majority in our ballot is
    /// chosen.
    fn on_accepted(&mut self, from: ReplicaId, ballot: Ballot, slots: &[Slot]) {
        let quorum = self.config.quorum();
        let Role::Master(master) = &mut self.role else { return };
        if master.ballot != ballot {
            return;
        }
        for slot in slots {
            if let Some(in_flight) = master.in_flight.get_mut(slot) {
                in_flight.votes.insert(from);
                if in_flight.votes.len() >= quorum {
                    in_flight.chosen = true;
                }
            }
        }
        self.advance_master_chosen();
    }

    /// Moves the master's chosen prefix over every chosen slot in flight.
    fn advance_master_chosen(&mut self) {
        loop {
            let next = self.chosen_through + 1;
            let Role::Master(master) = &mut self.role else { return };
            let Some(in_flight) = master.in_flight.get(&next) else { return };
            if !in_flight.chosen {
                return;
            }
            let ballot = master.ballot;
            let Some(in_flight) = master.in_flight.remove(&next) else { return };
            if self.log.get(&next) != Some(&(ballot, in_flight.value.clone())) {
                // Our own acceptor has not written it (or holds an older
                // value): write the chosen value.
                self.log.insert(next, (ballot, in_flight.value.clone()));
                self.out.entries.push(Entry { slot: next, ballot, value: in_flight.value });
            }
            self.chosen_through = next;
            self.known_chosen_through = self.known_chosen_through.max(next);
            self.hard_state_dirty = true;
        }
    }

    // ----------------------------------------------------------------------
    // Heartbeats and the master lease.

    fn tick_master(&mut self) {
        let Role::Master(master) = &self.role else { return };
        if self.now.saturating_sub(master.quorum_tick) > self.config.election_ticks_max {
            // Check quorum: no majority acknowledged a heartbeat for an
            // election timeout. Our heartbeats may still reach acceptors (a
            // one-way partition) and keep their lease grants alive, which
            // would block every other candidate; stop sending them.
            self.step_down();
            return;
        }
        if self.now - master.last_heartbeat_tick >= self.config.heartbeat_ticks {
            self.send_heartbeats();
        }
        self.resend_accepts();
    }

    fn send_heartbeats(&mut self) {
        let now = self.now;
        let chosen_through = self.chosen_through;
        let Role::Master(master) = &mut self.role else { return };
        master.last_heartbeat_tick = now;
        let ballot = master.ballot;
        for to in self.config.members.clone() {
            self.send(to, Message::Heartbeat { ballot, chosen_through, sent_tick: now });
        }
    }

    /// Master rule: resend accepts that a majority has not acknowledged in
    /// `accept_retry_ticks`, to the acceptors that have not.
    fn resend_accepts(&mut self) {
        let now = self.now;
        let retry = self.config.accept_retry_ticks;
        let Role::Master(master) = &mut self.role else { return };
        let ballot = master.ballot;
        let mut per_acceptor: BTreeMap<ReplicaId, Vec<Entry>> = BTreeMap::new();
        for (&slot, in_flight) in master.in_flight.iter_mut() {
            if in_flight.chosen || now - in_flight.sent_tick < retry {
                continue;
            }
            in_flight.sent_tick = now;
            for &to in &self.config.members {
                if to != self.config.id && !in_flight.votes.contains(&to) {
                    per_acceptor.entry(to).or_default().push(Entry { slot, ballot, value: in_flight.value.clone() });
                }
            }
        }
        let chosen_through = self.chosen_through;
        for (to, entries) in per_acceptor {
            for chunk in entries.chunks(self.config.entries_per_message_max) {
                self.send(to, Message::Accept { ballot, entries: chunk.to_vec(), chosen_through });
            }
        }
    }

    /// Acceptor rule for heartbeats: follow the master, grant it the lease,
    /// learn what is chosen.
    fn on_heartbeat(&mut self, from: ReplicaId, ballot: Ballot, chosen_through: Slot, sent_tick: u64) {
        if ballot.replica != from {
            return;
        }
        if !self.follow(from, ballot) {
            return;
        }
        self.lease_grant = LeaseGrant { holder: Some(from), until: self.now + self.config.lease_ticks };
        self.send_persisted(from, Message::HeartbeatAck { ballot, sent_tick });
        self.learn_chosen_through(ballot, chosen_through);
    }

    /// Master rule for the lease: it runs from the send tick of the newest
    /// heartbeat a majority acknowledged, for `lease_ticks - lease_drift_ticks`.
    fn on_heartbeat_ack(&mut self, from: ReplicaId, ballot: Ballot, sent_tick: u64) {
        let quorum = self.config.quorum();
        let lease_ticks = self.config.lease_ticks - self.config.lease_drift_ticks;
        let Role::Master(master) = &mut self.role else { return };
        if master.ballot != ballot || sent_tick > self.now {
            return;
        }
        let acked = master.heartbeat_acks.entry(from).or_insert(0);
        *acked = (*acked).max(sent_tick);
        let mut ticks: Vec<u64> = master.heartbeat_acks.values().copied().collect();
        if ticks.len() < quorum {
            return;
        }
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        let start = ticks[quorum - 1];
        master.lease_until = master.lease_until.max(start + lease_ticks);
        master.quorum_tick = master.quorum_tick.max(start);
    }

    /// Accept rules shared by accepts and heartbeats: refuse a ballot below the
    /// promised one; otherwise promise it, step down if it outranks ours, and
    /// take its sender as master. Returns whether the message is to be obeyed.
    fn follow(&mut self, from: ReplicaId, ballot: Ballot) -> bool {
        self.note_round(ballot.round);
        if ballot < self.promised {
            self.nack(from, ballot, NackReason::HigherBallot);
            return false;
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.hard_state_dirty = true;
        }
        if self.own_ballot().is_some_and(|own| own < ballot) {
            self.step_down();
        }
        if from != self.config.id {
            self.master_hint = Some(from);
            self.reset_election_timer();
        }
        true
    }

    fn on_nack(&mut self, from: ReplicaId, ballot: Ballot, promised: Ballot, reason: NackReason) {
        self.note_round(promised.round);
        match &self.role {
            Role::Candidate(candidate) if candidate.ballot == ballot => match reason {
                NackReason::HigherBallot if promised > ballot => self.step_down(),
                NackReason::Behind { chosen_through } if chosen_through > self.chosen_through => {
                    self.known_chosen_through = self.known_chosen_through.max(chosen_through);
                    self.request_catch_up(from);
                }
                _ => {}
            },
            Role::Master(master) if master.ballot == ballot && promised > ballot => {
                // Some acceptor promised a higher ballot. If our lease is still
                // valid no one else can be master yet: run phase 1 again at once
                // with a higher ballot, which our lease-holding acceptors grant.
                let lease_valid = self.lease_valid();
                self.step_down();
                if lease_valid {
                    self.election_deadline = self.now;
                }
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------------
    // Learning what is chosen, catch-up and snapshots.

    /// Learner rule: the master in `ballot` says every slot through
    /// `chosen_through` is chosen; our entries accepted in that same ballot
    /// hold the chosen values. For the rest, ask the master.
    fn learn_chosen_through(&mut self, ballot: Ballot, chosen_through: Slot) {
        self.known_chosen_through = self.known_chosen_through.max(chosen_through);
        if self.is_master() {
            return;
        }
        while self.chosen_through < chosen_through {
            let next = self.chosen_through + 1;
            match self.log.get(&next) {
                Some((accepted, _)) if *accepted == ballot => {
                    self.chosen_through = next;
                    self.hard_state_dirty = true;
                }
                _ => break,
            }
        }
        if self.chosen_through < chosen_through {
            self.request_catch_up(ballot.replica);
        }
    }

    fn request_catch_up(&mut self, to: ReplicaId) {
        if to == self.config.id {
            return;
        }
        if self.catch_up_sent_tick.is_some_and(|sent| self.now - sent < self.config.catch_up_retry_ticks) {
            return;
        }
        self.catch_up_sent_tick = Some(self.now);
        self.send(to, Message::CatchUpRequest { from_slot: self.chosen_through + 1 });
    }

    /// Any replica answers a catch-up request with chosen entries it holds, or
    /// with its snapshot when it has compacted past the requested slot.
    fn on_catch_up_request(&mut self, from: ReplicaId, from_slot: Slot) {
        if from_slot <= self.log_start {
            if let Some(snapshot) = &self.snapshot {
                let snapshot = snapshot.clone();
                self.send(from, Message::InstallSnapshot { snapshot });
            }
            return;
        }
        let mut entries = Vec::new();
        let mut slot = from_slot;
        while slot <= self.chosen_through && entries.len() < self.config.entries_per_message_max {
            let Some((ballot, value)) = self.log.get(&slot) else { break };
            entries.push(Entry { slot, ballot: *ballot, value: value.clone() });
            slot += 1;
        }
        if !entries.is_empty() {
            self.send(from, Message::CatchUp { entries });
        }
    }

    /// Learner rule: entries in a catch-up are chosen; take those that extend
    /// our chosen prefix, and ask for more if still behind.
    fn on_catch_up(&mut self, from: ReplicaId, entries: Vec<Entry>) {
        let before = self.chosen_through;
        for entry in entries {
            if entry.slot != self.chosen_through + 1 {
                continue;
            }
            self.learn_chosen(entry);
        }
        if self.chosen_through > before {
            self.catch_up_sent_tick = None;
            if self.chosen_through < self.known_chosen_through {
                self.request_catch_up(from);
            }
        }
    }

    /// Records `entry` as the chosen value of the slot after our chosen prefix.
    fn learn_chosen(&mut self, entry: Entry) {
        let slot = entry.slot;
        if self.log.get(&slot) != Some(&(entry.ballot, entry.value.clone())) {
            self.log.insert(slot, (entry.ballot, entry.value.clone()));
            self.out.entries.push(entry);
        }
        self.chosen_through = slot;
        self.known_chosen_through = self.known_chosen_through.max(slot);
        self.hard_state_dirty = true;
        if let Role::Master(master) = &mut self.role {
            master.in_flight.remove(&slot);
        }
    }

    /// Learner rule: a snapshot past our chosen prefix replaces the log below
    /// it; the application loads it before applying anything after it.
    fn on_install_snapshot(&mut self, snapshot: Snapshot) {
        if snapshot.slot <= self.chosen_through {
            return;
        }
        let slot = snapshot.slot;
        self.drop_log_through(slot);
        self.chosen_through = slot;
        self.known_chosen_through = self.known_chosen_through.max(slot);
        self.applied = slot;
        self.hard_state_dirty = true;
        self.catch_up_sent_tick = None;
        if let Role::Master(master) = &mut self.role {
            master.in_flight.retain(|&s, _| s > slot);
            master.next_slot = master.next_slot.max(slot + 1);
        }
        self.out.snapshot = Some(snapshot.clone());
        self.out.install_snapshot = true;
        self.snapshot = Some(snapshot);
    }

    fn drop_log_through(&mut self, slot: Slot) {
        self.log = self.log.split_off(&(slot + 1));
        self.log_start = slot;
        self.out.entries.retain(|e| e.slot > slot);
        self.out.compact_through = Some(self.out.compact_through.map_or(slot, |c| c.max(slot)));
    }

    // ----------------------------------------------------------------------
    // Roles and helpers.

    /// States what must hold between any two inputs. A broken invariant is a
    /// bug: debug builds (and so the simulator) stop at once.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(self.log_start <= self.applied, "applied {} below the snapshot {}", self.applied, self.log_start);
        assert!(self.applied <= self.chosen_through, "applied {} past chosen {}", self.applied, self.chosen_through);
        assert!(self.log.keys().next().is_none_or(|&first| first > self.log_start), "log holds compacted slots");
        for slot in self.applied + 1..=self.chosen_through {
            assert!(self.log.contains_key(&slot), "chosen slot {slot} missing from the log");
        }
        if let Some(own) = self.own_ballot() {
            assert_eq!(own.replica, self.config.id, "leading with another replica's ballot");
            assert!(own <= self.promised, "leading with ballot {own} below our own promise {}", self.promised);
        }
        if let Role::Master(master) = &self.role {
            assert!(master.next_slot > self.chosen_through, "next slot {} not past chosen", master.next_slot);
            let open = self.chosen_through + 1..master.next_slot;
            assert!(master.in_flight.keys().all(|s| open.contains(s)), "in-flight slot outside the open range");
            assert!(master.queue.len() <= self.config.proposals_queued_max, "proposal queue over its bound");
        }
    }

    /// Gives up candidacy or mastership. A master's queued proposals are dropped.
    fn step_down(&mut self) {
        if let Role::Master(master) = &self.role {
            self.out.role_changes.push(RoleChange::LostMastership { ballot: master.ballot });
        }
        self.role = Role::Follower;
        self.reset_election_timer();
    }

    fn own_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Follower => None,
            Role::Candidate(c) => Some(c.ballot),
            Role::Master(m) => Some(m.ballot),
        }
    }

    /// True while our acceptor's lease grant forbids promising `replica`'s ballots.
    fn lease_blocks(&self, replica: ReplicaId) -> bool {
        self.now < self.lease_grant.until && self.lease_grant.holder != Some(replica)
    }

    fn note_round(&mut self, round: u64) {
        self.highest_round_seen = self.highest_round_seen.max(round);
    }

    fn reset_election_timer(&mut self) {
        self.election_deadline =
            self.now + self.rng.range(self.config.election_ticks_min, self.config.election_ticks_max);
    }

    fn entries_from(&self, from_slot: Slot) -> Vec<Entry> {
        self.log
            .range(from_slot..)
            .map(|(&slot, (ballot, value))| Entry { slot, ballot: *ballot, value: value.clone() })
            .collect()
    }

    fn peers(&self) -> Vec<ReplicaId> {
        self.config.members.iter().copied().filter(|&m| m != self.config.id).collect()
    }

    fn nack(&mut self, to: ReplicaId, ballot: Ballot, reason: NackReason) {
        let message = Message::Nack { ballot, promised: self.promised, reason };
        self.send(to, message);
    }

    /// Sends a message that does not depend on anything not yet durable.
    fn send(&mut self, to: ReplicaId, message: Message) {
        if to == self.config.id {
            self.self_inbox.push_back(message);
        } else {
            self.out.messages.push(Envelope { to, message });
        }
    }

    /// Sends a message that must wait until the current write is durable.
    fn send_persisted(&mut self, to: ReplicaId, message: Message) {
        if to == self.config.id {
            self.out.self_messages.push(message);
        } else {
            self.out.persisted_messages.push(Envelope { to, message });
        }
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
