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
use crate::membership::{ChangeError, ConfigHistory, MembershipChange, changed};
use crate::message::{Message, NackReason};
use crate::ready::{Envelope, Ready, RoleChange};
use crate::rng::Rng;
use crate::types::{Ballot, Durable, Entry, HardState, Membership, ROUND_MAX, ReplicaId, SLOT_MAX, Slot, Snapshot, Value};

/// The most a catch-up retry's interval grows: `catch_up_retry_ticks`
/// times this, after retries that brought nothing.
pub const CATCH_UP_BACKOFF_MAX: u64 = 8;

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
    /// A round, slot or ballot in the durable state is outside the bounds
    /// the protocol allows ([`crate::types::ROUND_MAX`],
    /// [`crate::types::SLOT_MAX`], a member's ballot): the disk does not
    /// hold what this code wrote.
    #[error("durable state is out of range: {0}")]
    OutOfRange(&'static str),
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
    /// Messages dropped because they broke a bound of the protocol (see
    /// [`Message::validate`]) or came from a stranger, since the start.
    pub rejected_messages: u64,
    /// Times a phase 1 met two different values reported chosen for one
    /// slot, since the start. Always 0 unless an acceptor lied or the
    /// protocol has a bug; the candidate then refuses to become master.
    pub conflicting_chosen_reports: u64,
    /// The slot of the change that put the configuration in force (0: the
    /// founding one, or the snapshot's).
    pub membership_slot: Slot,
    /// Whether this replica is a voter of the configuration in force.
    pub voter: bool,
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
    /// Voters asked to promise: those of the configuration after our chosen
    /// prefix, then those of each change the promises reveal.
    asked: BTreeSet<ReplicaId>,
}

/// What a phase 1 learned from the complete promises it holds.
#[derive(Default)]
struct Recovered {
    /// slot -> the value reported chosen.
    chosen: BTreeMap<Slot, Value>,
    /// slot -> the highest-ballot value reported accepted.
    highest: BTreeMap<Slot, (Ballot, Value)>,
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
    /// master, then the start of each lease; moved later by the ticks this
    /// replica stalled ([`Replica::stalled`]).
    quorum_tick: u64,
    /// The start of the newest lease a majority confirmed (when we became
    /// master before any): `quorum_tick` without the stall discount, so
    /// that a confirmation is recognised as one after a stall.
    confirmed_tick: u64,
    /// Per replica (learners included), the chosen prefix it last reported.
    progress: BTreeMap<ReplicaId, Slot>,
    /// The newest configuration (by the slot of its change) that the lease
    /// was last counted over: see [`Replica::recount_lease`].
    lease_counted_over: Slot,
    /// The configurations our in-flight slots would put in force, by slot
    /// (at most one that we proposed; phase 1 may recover others).
    in_flight_configs: BTreeMap<Slot, Membership>,
    /// A change accepted by `propose_change`, waiting for the slots in
    /// flight to be chosen before it goes out alone.
    change: Option<Membership>,
}

/// A replica asking whether a majority would promise a new ballot before it
/// runs phase 1 (see [`Message::PreVote`]).
#[derive(Debug)]
struct PreCandidate {
    ballot: Ballot,
    votes: BTreeSet<ReplicaId>,
}

#[derive(Debug)]
enum Role {
    Follower,
    PreCandidate(PreCandidate),
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
    /// The configurations in force along the log.
    configs: ConfigHistory,
    /// See [`Self::members_version`].
    members_version: u64,
    chosen_through: Slot,
    applied: Slot,
    /// The highest chosen prefix a master announced to us.
    known_chosen_through: Slot,
    catch_up_sent_tick: Option<u64>,
    /// The last slot our latest catch-up request can bring: the request
    /// from `s` is answered with at most [`Config::accept_window_slots`]
    /// chosen entries from `s` on, so this is `s` plus that window, less
    /// one. We ask again at once only when our chosen prefix reaches it
    /// (see [`Self::on_catch_up`]).
    catch_up_until: Slot,
    /// Chosen entries a catch-up told us past the slot after our chosen
    /// prefix: an answer comes in many messages, which may arrive out of
    /// order. Only slots within [`Config::accept_window_slots`] of our
    /// chosen prefix are kept, and only entries no larger than
    /// [`Config::entry_bytes_max`], so this holds fewer entries than that
    /// window and no more bytes than one promise may carry
    /// (`promise_parts_max` messages); they are learned once the slots
    /// before them are.
    catch_up_early: BTreeMap<Slot, Entry>,
    /// The bytes of `catch_up_early`'s entries, at most
    /// [`Config::catch_up_answer_bytes_max`].
    catch_up_early_bytes: usize,
    /// How many retry intervals the next catch-up retry waits: doubled (up
    /// to [`CATCH_UP_BACKOFF_MAX`]) by each retry that follows a request
    /// nothing came of, back to 1 when the chosen prefix moves. On a link
    /// slower than one answer per retry interval this keeps the sender from
    /// queueing copy after copy of the same answer.
    catch_up_backoff: u64,

    // Proposer.
    role: Role,
    master_hint: Option<ReplicaId>,
    /// The tick we last heard from a master (a heartbeat or an accept we
    /// obeyed), moved later by the ticks we stalled since; a replica that
    /// heard one within an election timeout refuses pre-votes.
    master_heard_tick: Option<u64>,
    election_deadline: u64,
    highest_round_seen: u64,
    /// Ticks discounted as stalled ([`Self::stalled`]) since the last
    /// confirmation (a quorum of heartbeat acknowledgements on the master,
    /// a master heard elsewhere); at most
    /// [`STALL_DISCOUNT_ELECTION_TIMEOUTS`] election timeouts.
    stall_credit: u64,

    // Output.
    out: Ready,
    hard_state_dirty: bool,
    /// The promised ballot as last written with a sync.
    synced_promised: Ballot,
    self_inbox: VecDeque<Message>,
    ready_outstanding: bool,

    // Counters.
    rejected_messages: u64,
    conflicting_chosen_reports: u64,
}

/// How many (longest) election timeouts of stalled ticks
/// [`Replica::stalled`] discounts between two confirmations that the cell
/// follows its master: a stall of every replica at once up to that long
/// (1.8 s with the server's defaults) costs no election, and a replica that
/// stalls again and again still campaigns or steps down within one election
/// timeout more.
pub const STALL_DISCOUNT_ELECTION_TIMEOUTS: u64 = 4;

impl Replica {
    /// Starts a replica from what it kept durably (`Durable::default()` for a
    /// new one). A restarted acceptor promises nothing for `lease_ticks`: it
    /// may have granted a lease before it stopped and cannot know to whom.
    /// Every number read back is checked against the protocol's bounds.
    pub fn new(config: Config, durable: Durable) -> Result<Self, StartError> {
        config.validate()?;
        check_durable(&durable)?;
        let log_start = durable.snapshot.as_ref().map_or(0, |s| s.slot);
        let log: BTreeMap<Slot, (Ballot, Value)> = durable
            .entries
            .into_iter()
            .filter(|e| e.slot > log_start)
            .map(|e| (e.slot, (e.ballot, e.value)))
            .collect();
        let applied = durable.applied.max(log_start);
        let chosen_through = durable.hard_state.chosen_through.max(applied).max(log_start);
        if let Some(slot) = (applied + 1..=chosen_through).find(|slot| !log.contains_key(slot)) {
            return Err(StartError::MissingChosenEntry(slot));
        }
        // A snapshot stored before configurations changed holds an empty
        // one: the founding configuration is still in force.
        let mut configs = match &durable.snapshot {
            Some(snapshot) if !snapshot.membership.members.is_empty() => {
                ConfigHistory::new(snapshot.slot, snapshot.membership.clone())
            }
            Some(snapshot) => ConfigHistory::new(snapshot.slot, config.first_membership()),
            None => ConfigHistory::new(0, config.first_membership()),
        };
        for (&slot, (_, value)) in log.range(..=chosen_through) {
            if let Value::Reconfigure(membership) = value {
                configs.record(slot, membership.clone());
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
            configs,
            members_version: 0,
            chosen_through,
            applied,
            known_chosen_through: chosen_through,
            catch_up_sent_tick: None,
            catch_up_until: 0,
            catch_up_early: BTreeMap::new(),
            catch_up_early_bytes: 0,
            catch_up_backoff: 1,
            role: Role::Follower,
            master_hint: None,
            master_heard_tick: None,
            stall_credit: 0,
            election_deadline,
            highest_round_seen: durable.hard_state.promised.round,
            out: Ready::default(),
            hard_state_dirty: false,
            synced_promised: durable.hard_state.promised,
            self_inbox: VecDeque::new(),
            ready_outstanding: false,
            rejected_messages: 0,
            conflicting_chosen_reports: 0,
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
            Role::Follower | Role::PreCandidate(_) | Role::Candidate(_) => {
                if self.now < self.election_deadline {
                    self.resend_prepares();
                } else if self.is_voter() {
                    self.start_pre_vote();
                } else {
                    self.ask_around();
                }
            }
        }
        if let Some(master) = self.master_hint.filter(|_| self.chosen_through < self.known_chosen_through) {
            self.request_catch_up(master);
        }
        self.drain_self_inbox();
        self.check_invariants();
    }

    /// Tells the core that the next `ticks` ticks passed while this replica
    /// could not listen: its driver was blocked (a synced write held up by a
    /// disk stall) or its process was paused. Call it before delivering
    /// those ticks with [`Self::tick`].
    ///
    /// The liveness timers do not count those ticks: a follower's election
    /// timeout, the window in which it refuses pre-votes because it heard a
    /// master, and the master's quorum check (it steps down when no
    /// majority acknowledged a heartbeat for an election timeout) run on
    /// time this replica spent able to hear. Otherwise a stall that hits
    /// every replica at once (the flush of a disk they share, a hiccup of
    /// their host) ends with every timer expired before the messages that
    /// waited in the inboxes are read, and costs an election although no
    /// replica failed. (The master's accepts are resent when due, as after
    /// any silence: a resend is never deferred, so a lost accept goes again
    /// on time however often the master stalls.)
    ///
    /// Nothing safety rests on moves: the lease an acceptor granted and the
    /// master's own lease run in real time, and every tick is still
    /// delivered, so both run out during the stall as they must. A replica
    /// that stalls alone is replaced as before by the others, whose timers
    /// ran. Two bounds keep a replica that is merely slow live:
    ///
    /// - fewer ticks than a heartbeat interval are no stall (a busy turn of
    ///   the driver, not a blocked one) and are counted as usual;
    /// - between two confirmations (a majority acknowledging the master's
    ///   heartbeat, a follower hearing its master) at most
    ///   [`STALL_DISCOUNT_ELECTION_TIMEOUTS`] election timeouts of ticks are
    ///   discounted, so a master cut off from a majority steps down, and a
    ///   follower of a dead master campaigns, within one more than that
    ///   however often they stall (2.25 s with the server's defaults). A
    ///   stall of every replica longer than that costs an election.
    pub fn stalled(&mut self, ticks: u64) {
        if ticks < self.config.heartbeat_ticks {
            return;
        }
        let discount_max = self.config.election_ticks_max.saturating_mul(STALL_DISCOUNT_ELECTION_TIMEOUTS);
        let credit = ticks.min(discount_max.saturating_sub(self.stall_credit));
        self.stall_credit += credit;
        if let Role::Master(master) = &mut self.role {
            master.quorum_tick = master.quorum_tick.saturating_add(credit);
        } else {
            self.election_deadline = self.election_deadline.saturating_add(credit);
            self.master_heard_tick = self.master_heard_tick.map(|heard| heard.saturating_add(credit));
        }
    }

    /// Tells the core that the connection `peer` sent on closed: its
    /// process exited (a crash, a SIGKILL, a shutdown) or it dropped the
    /// connection. If `peer` is the master this follower follows, that
    /// master is probably gone, so the follower does not wait out a whole
    /// election timeout of silence: it campaigns as soon as the lease it
    /// granted that master runs out, plus a little jitter (one tick up to a
    /// heartbeat interval) against duels between followers that all saw the
    /// close, and it stops refusing others' pre-votes on that master's
    /// account.
    ///
    /// Safety does not rest on it: the lease still runs out in full before
    /// any acceptor promises another ballot. A close of a master that is in
    /// fact alive (a reset connection, a restarted transport) costs nothing:
    /// its next heartbeat renews the lease and the timer, the pre-vote of a
    /// follower that campaigns anyway is refused by the replicas that still
    /// hear that master, and a master's own campaign is never hastened.
    pub fn peer_lost(&mut self, peer: ReplicaId) {
        if !matches!(self.role, Role::Follower) || self.master_hint != Some(peer) || !self.is_voter() {
            return;
        }
        self.master_heard_tick = None;
        let jitter = self.rng.range(1, self.config.heartbeat_ticks.max(1));
        let campaign_at = self.lease_grant.until.max(self.now).saturating_add(jitter);
        self.election_deadline = self.election_deadline.min(campaign_at);
    }

    /// Handles a message from another replica. Messages from non-members or
    /// from ourselves, and messages that break a bound of the protocol
    /// ([`Message::validate`]), are dropped and counted
    /// ([`Status::rejected_messages`]); nothing that arrives can make the
    /// replica panic or overflow.
    pub fn step(&mut self, from: ReplicaId, message: Message) {
        if from == self.config.id || !self.knows(from) {
            self.rejected_messages += 1;
            return;
        }
        if message.validate(from, &self.config).is_err() {
            self.rejected_messages += 1;
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

    /// Proposes a change of the configuration. Only a master whose phase 1
    /// slots are all chosen accepts one, and only one at a time: it goes out
    /// alone once the slots in flight are chosen, and nothing is proposed
    /// after it until it is chosen (see `docs/MEMBERSHIP.md`). Unless
    /// `force`, a change that would leave fewer than three voters, a new
    /// configuration whose reachable voters (those that acknowledged a
    /// heartbeat within an election timeout) make no majority, or the
    /// promotion of a learner more than `learner_lag_slots_max` slots behind
    /// is refused. Returns the configuration the change makes; it is in
    /// force once [`Self::membership`] says so, or lost with mastership.
    pub fn propose_change(&mut self, change: &MembershipChange, force: bool) -> Result<Membership, ChangeError> {
        let hint = self.master_hint;
        let Role::Master(master) = &self.role else {
            return Err(ChangeError::NotMaster { master_hint: hint });
        };
        if self.chosen_through < master.recovered_through {
            return Err(ChangeError::Recovering);
        }
        if master.change.is_some() || !master.in_flight_configs.is_empty() {
            return Err(ChangeError::InFlight);
        }
        let next = changed(self.membership(), change)?;
        if !force {
            let voters = next.voters().count();
            if voters < 3 && voters < self.membership().voters().count() {
                return Err(ChangeError::TooFewVoters { voters });
            }
            let reachable = next.voters().filter(|&id| self.reachable(master, id)).count();
            if reachable < next.quorum() {
                return Err(ChangeError::WouldLoseQuorum { reachable, needed: next.quorum() });
            }
            if let MembershipChange::Promote(id) = change {
                let learned = master.progress.get(id).copied().unwrap_or(0);
                let bound = self.config.learner_lag_slots_max;
                if learned.saturating_add(bound) < self.chosen_through {
                    return Err(ChangeError::NotCaughtUp { id: *id, learned, chosen: self.chosen_through, bound });
                }
            }
        }
        let Role::Master(master) = &mut self.role else { return Err(ChangeError::NotMaster { master_hint: hint }) };
        master.change = Some(next.clone());
        Ok(next)
    }

    /// True when the master heard `id` acknowledge a heartbeat recently
    /// enough for that acknowledgement to count toward a lease now (itself
    /// always): a change whose new voters are reachable this way keeps the
    /// master's lease when it is counted again.
    fn reachable(&self, master: &Master, id: ReplicaId) -> bool {
        let window = self.config.lease_ticks - self.config.lease_drift_ticks;
        id == self.config.id || master.heartbeat_acks.get(&id).is_some_and(|&sent| self.now.saturating_sub(sent) < window)
    }

    /// Tells the replica the application snapshotted its state through
    /// `snapshot.slot`; the log at or below it is dropped and the snapshot is
    /// kept to send to replicas that fall behind it. The core fills in the
    /// snapshot's configuration.
    pub fn compact(&mut self, mut snapshot: Snapshot) -> Result<(), CompactError> {
        if snapshot.slot > self.applied {
            return Err(CompactError::NotApplied { snapshot: snapshot.slot, applied: self.applied });
        }
        if snapshot.slot <= self.log_start {
            return Ok(());
        }
        snapshot.membership = self.configs.after(snapshot.slot).clone();
        self.drop_log_through(snapshot.slot);
        self.out.snapshot = Some(snapshot.clone());
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Starts phase 1 now, without a pre-vote, instead of waiting for the
    /// election timeout (tests and operators use it to move mastership).
    pub fn campaign(&mut self) {
        if !self.is_voter() || self.defer_for_lease() {
            return;
        }
        let Some(round) = self.next_round() else { return };
        self.reset_election_timer();
        if let Role::Master(_) = self.role {
            self.step_down();
        }
        let from_slot = self.chosen_through + 1;
        let Some(own_parts) = self.promise_parts(from_slot) else {
            // Our own log runs further past our chosen prefix than a phase 1
            // may recover: we lag and must catch up before leading, from
            // anyone (the master we followed may be the one that died).
            self.role = Role::Follower;
            self.ask_around();
            return;
        };
        let ballot = Ballot::new(round, self.config.id);
        self.highest_round_seen = round;
        self.promised = ballot;
        self.hard_state_dirty = true;
        let asked: BTreeSet<ReplicaId> = self.membership().voters().collect();
        // The ballot goes out only once it is durable, so a restart can never
        // reuse it with other values.
        let me = self.config.id;
        for &to in asked.iter().filter(|&&to| to != me) {
            self.send_persisted(to, Message::Prepare { ballot, from_slot });
        }
        self.role = Role::Candidate(Candidate {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            ballot_durable: false,
            asked,
        });
        self.send_promise(self.config.id, ballot, own_parts);
    }

    /// Our own acceptor still honours another master's lease (or waits out
    /// its restart) and would refuse our ballot: try again as soon as that
    /// lease runs out, with a little jitter against duels. Returns whether
    /// the election was deferred.
    fn defer_for_lease(&mut self) -> bool {
        if !self.lease_blocks(self.config.id) {
            return false;
        }
        let jitter = self.rng.range(0, self.config.election_ticks_max - self.config.election_ticks_min);
        self.election_deadline = self.lease_grant.until + jitter;
        true
    }

    /// The round of our next ballot, above every round promised or seen;
    /// `None` once rounds are exhausted ([`crate::types::ROUND_MAX`], which
    /// a real cell never reaches: only a forged round could bring it close,
    /// and those are dropped).
    fn next_round(&self) -> Option<u64> {
        let round = self.promised.round.max(self.highest_round_seen).checked_add(1)?;
        (round <= ROUND_MAX).then_some(round)
    }

    /// Election timeout: before running phase 1 (which raises our promise
    /// and so refuses the current master's ballot), ask the others whether
    /// they would promise. A replica that still hears from a master says
    /// no, so a replica that restarted, rejoined or was cut off alone cannot
    /// depose a master the others follow.
    fn start_pre_vote(&mut self) {
        if self.defer_for_lease() {
            return;
        }
        let Some(round) = self.next_round() else { return };
        self.reset_election_timer();
        if let Role::Master(_) = self.role {
            self.step_down();
        }
        let ballot = Ballot::new(round, self.config.id);
        self.role = Role::PreCandidate(PreCandidate { ballot, votes: BTreeSet::from([self.config.id]) });
        for to in self.voter_peers() {
            self.send(to, Message::PreVote { ballot });
        }
        self.count_pre_votes();
    }

    /// Acceptor rule for pre-votes: grant when we would promise the ballot
    /// now and have not heard from a master for an election timeout. Nothing
    /// changes here, so a pre-vote costs no write.
    fn on_pre_vote(&mut self, from: ReplicaId, ballot: Ballot) {
        // The master we follow may ask itself (it stepped down and runs
        // phase 1 again); anyone else is refused while that master is heard.
        let master_live = self.is_master()
            || (self.master_hint != Some(from)
                && self.master_heard_tick.is_some_and(|heard| self.now.saturating_sub(heard) < self.config.election_ticks_min));
        let granted = ballot > self.promised && !self.lease_blocks(from) && !master_live;
        self.send(from, Message::PreVoteReply { ballot, granted, promised: self.promised });
    }

    /// Pre-candidate rule: a majority of grants (ours included) from the
    /// voters of the configuration in force starts phase 1. A refusal means
    /// the refuser hears a master we do not, perhaps one our configuration
    /// does not know yet: ask it for what we miss.
    fn on_pre_vote_reply(&mut self, from: ReplicaId, ballot: Ballot, granted: bool) {
        let Role::PreCandidate(pre) = &mut self.role else { return };
        if pre.ballot != ballot {
            return;
        }
        if !granted {
            self.request_catch_up(from);
            return;
        }
        pre.votes.insert(from);
        self.count_pre_votes();
    }

    fn count_pre_votes(&mut self) {
        if matches!(&self.role, Role::PreCandidate(pre) if self.membership().is_quorum(&pre.votes)) {
            self.campaign();
        }
    }

    /// A replica that may not campaign (a learner, or one removed) and heard
    /// no master for an election timeout asks the members it knows, one per
    /// timeout in turn, for what it misses: the master may be one its
    /// configuration does not know yet.
    fn ask_around(&mut self) {
        self.reset_election_timer();
        let mut known: BTreeSet<ReplicaId> = self.membership().ids().collect();
        known.extend(self.config.contacts.iter().copied());
        known.remove(&self.config.id);
        let known: Vec<ReplicaId> = known.into_iter().collect();
        if known.is_empty() {
            return;
        }
        let pick = known[self.rng.range(0, known.len() as u64 - 1) as usize];
        self.catch_up_sent_tick = None;
        self.request_catch_up(pick);
    }

    // ----------------------------------------------------------------------
    // Output.

    /// True when [`ready`](Self::ready) has work to hand out.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.hard_state_dirty
            || self.applied < self.chosen_through
            || !self.self_inbox.is_empty()
            || matches!(&self.role, Role::Master(m) if self.may_propose(m))
    }

    /// Takes the work accumulated since the last call. Proposals queued since
    /// then are batched into slots here. Call [`advance`](Self::advance) with
    /// the result before calling `ready` again.
    pub fn ready(&mut self) -> Ready {
        debug_assert!(!self.ready_outstanding, "ready() called twice without advance()");
        self.flush_proposals();
        self.drain_self_inbox();
        let mut committed = Vec::new();
        let mut committed_bytes: usize = 0;
        while self.applied < self.chosen_through && committed.len() < self.config.entries_per_message_max {
            let slot = self.applied + 1;
            let Some((ballot, value)) = self.log.get(&slot) else {
                debug_assert!(false, "chosen slot {slot} missing from the log");
                break;
            };
            let entry = Entry { slot, ballot: *ballot, value: value.clone() };
            committed_bytes = committed_bytes.saturating_add(entry.encoded_bytes());
            if !committed.is_empty() && committed_bytes > self.config.message_bytes_max {
                break;
            }
            committed.push(entry);
            self.applied = slot;
        }
        let mut ready = std::mem::take(&mut self.out);
        ready.committed = committed;
        if std::mem::take(&mut self.hard_state_dirty) {
            ready.hard_state = Some(self.hard_state());
        }
        ready.must_sync = !ready.entries.is_empty()
            || ready.snapshot.is_some()
            || ready.compact_through.is_some()
            || ready.hard_state.is_some_and(|h| h.promised != self.synced_promised);
        self.ready_outstanding = true;
        ready
    }

    /// Reports that `ready` was carried out: its write is durable, its
    /// messages sent, its entries applied. The replica's own votes, which rest
    /// on that write, are counted now.
    pub fn advance(&mut self, ready: Ready) {
        self.ready_outstanding = false;
        if ready.must_sync
            && let Some(hard_state) = ready.hard_state
        {
            self.synced_promised = hard_state.promised;
        }
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

    /// The configuration in force after the chosen prefix.
    pub fn membership(&self) -> &Membership {
        self.configs.after(self.chosen_through)
    }

    /// The slot of the change that put [`Self::membership`] in force (0 for
    /// the founding configuration, or the snapshot's slot).
    pub fn membership_slot(&self) -> Slot {
        self.configs.latest_slot()
    }

    /// True when this replica is a voter of the configuration in force:
    /// only voters campaign, and only their votes count.
    pub fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }

    /// Every member of a configuration this replica knows (the history
    /// along its log, and a change its master has in flight), by id, the
    /// newest entry for each: whom the driver must be able to reach.
    pub fn known_members(&self) -> BTreeMap<ReplicaId, crate::types::Member> {
        let mut known: BTreeMap<ReplicaId, crate::types::Member> = BTreeMap::new();
        let in_flight = match &self.role {
            Role::Master(m) => m.in_flight_configs.values().collect(),
            _ => Vec::new(),
        };
        for config in self.configs.all().chain(in_flight) {
            for member in &config.members {
                known.insert(member.id, member.clone());
            }
        }
        known
    }

    /// Grows whenever [`Self::known_members`] may have changed, so the
    /// driver asks for it only then.
    pub fn members_version(&self) -> u64 {
        self.members_version
    }

    /// On the master, the chosen prefix each replica last reported (learners
    /// included); empty elsewhere.
    pub fn progress(&self) -> BTreeMap<ReplicaId, Slot> {
        match &self.role {
            Role::Master(m) => m.progress.clone(),
            _ => BTreeMap::new(),
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
            Role::PreCandidate(_) => ("pre-candidate", None),
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
            rejected_messages: self.rejected_messages,
            conflicting_chosen_reports: self.conflicting_chosen_reports,
            membership_slot: self.membership_slot(),
            voter: self.is_voter(),
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
            Message::HeartbeatAck { ballot, sent_tick, chosen_through } => {
                self.on_heartbeat_ack(from, ballot, sent_tick, chosen_through)
            }
            Message::Nack { ballot, promised, reason } => self.on_nack(from, ballot, promised, reason),
            Message::CatchUpRequest { from_slot } => self.on_catch_up_request(from, from_slot),
            Message::CatchUp { entries } => self.on_catch_up(from, entries),
            Message::InstallSnapshot { snapshot } => self.on_install_snapshot(snapshot),
            Message::PreVote { ballot } => self.on_pre_vote(from, ballot),
            Message::PreVoteReply { ballot, granted, promised } => {
                self.note_round(promised.round);
                self.on_pre_vote_reply(from, ballot, granted)
            }
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
        // A candidate whose first unchosen slot we compacted away, or to
        // whom our log past it cannot be told in `promise_parts_max` bounded
        // parts, must catch up first.
        let behind = NackReason::Behind { chosen_through: self.chosen_through };
        if from_slot <= self.log_start {
            self.nack(from, ballot, behind);
            return;
        }
        let Some(parts) = self.promise_parts(from_slot) else {
            self.nack(from, ballot, behind);
            return;
        };
        if ballot > self.promised {
            self.promised = ballot;
            self.hard_state_dirty = true;
            if self.own_ballot().is_some_and(|own| own < ballot) {
                self.step_down();
            }
            if let Role::PreCandidate(_) = self.role {
                self.role = Role::Follower;
            }
        }
        self.master_hint = None;
        self.reset_election_timer();
        self.send_promise(from, ballot, parts);
    }

    /// Our entries at or above `from_slot`, cut into promise parts bounded
    /// by count and bytes; `None` when they need more than
    /// `promise_parts_max` parts or reach past the recovery window
    /// ([`Config::recovery_slots_max`]).
    fn promise_parts(&self, from_slot: Slot) -> Option<Vec<Vec<Entry>>> {
        let last = self.log.range(from_slot..).next_back().map(|(&slot, _)| slot);
        if last.is_some_and(|last| last - from_slot >= self.config.recovery_slots_max()) {
            return None;
        }
        let entries = self.log.range(from_slot..).map(|(&slot, (ballot, value))| Entry {
            slot,
            ballot: *ballot,
            value: value.clone(),
        });
        let parts = chunk_entries(entries, &self.config, self.config.promise_parts_max as usize)?;
        Some(if parts.is_empty() { vec![Vec::new()] } else { parts })
    }

    /// Sends our promise of `ballot` in its parts. It leaves only once the
    /// promise is durable.
    fn send_promise(&mut self, to: ReplicaId, ballot: Ballot, parts: Vec<Vec<Entry>>) {
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        for (part, entries) in (0..count).zip(parts) {
            let message = Message::Promise { ballot, chosen_through: self.chosen_through, entries, part, parts: count };
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
        let missing: Vec<ReplicaId> = candidate
            .asked
            .iter()
            .copied()
            .filter(|&p| p != self.config.id && !candidate.promises.contains_key(&p))
            .collect();
        for to in missing {
            self.send(to, Message::Prepare { ballot, from_slot });
        }
    }

    /// Candidate rule for phase 1b: collect promises (every part of each);
    /// majorities of every configuration along the way make us master (see
    /// [`Self::phase_one_done`]). A part reporting slots outside the recovery
    /// window from our first unchosen slot is malformed and dropped.
    fn on_promise(&mut self, from: ReplicaId, ballot: Ballot, chosen_through: Slot, part: Promised) {
        let parts_max = self.config.promise_parts_max;
        let window = self.config.recovery_slots_max();
        let Role::Candidate(candidate) = &mut self.role else { return };
        if candidate.ballot != ballot || part.parts == 0 || part.parts > parts_max || part.part >= part.parts {
            return;
        }
        let from_slot = candidate.from_slot;
        if part.entries.iter().any(|e| e.slot < from_slot || e.slot - from_slot >= window) {
            self.rejected_messages += 1;
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
        let complete = promise.received.len() == promise.parts as usize;
        promise.received.insert(part.part, part.entries);
        let completed = !complete && promise.received.len() == promise.parts as usize;
        if from == self.config.id {
            candidate.ballot_durable = true;
        }
        if completed {
            self.phase_one_done();
        }
    }

    /// What the complete promises report, from the slot after our chosen
    /// prefix: the value reported chosen and the highest-ballot value
    /// accepted, per slot. `None` when two different values are reported
    /// chosen for one slot (counted; see [`Self::become_master`]).
    fn recovered(&mut self) -> Option<Recovered> {
        let Role::Candidate(candidate) = &self.role else { return None };
        let mut recovered = Recovered::default();
        let mut conflict = false;
        for promise in candidate.promises.values() {
            if promise.received.len() != promise.parts as usize {
                continue;
            }
            for entry in promise.received.values().flatten() {
                if entry.slot <= self.chosen_through {
                    continue;
                }
                if entry.slot <= promise.chosen_through {
                    match recovered.chosen.get(&entry.slot) {
                        Some(value) if *value != entry.value => conflict = true,
                        Some(_) => {}
                        None => {
                            recovered.chosen.insert(entry.slot, entry.value.clone());
                        }
                    }
                }
                if recovered.highest.get(&entry.slot).is_none_or(|(known, _)| entry.ballot > *known) {
                    recovered.highest.insert(entry.slot, (entry.ballot, entry.value.clone()));
                }
            }
        }
        if conflict {
            // Not a panic: the report came over the network. The simulator
            // fails any run where this counter moves.
            self.conflicting_chosen_reports += 1;
            self.step_down();
            return None;
        }
        Some(recovered)
    }

    /// The configurations that govern the slots phase 1 recovers: the one
    /// after our chosen prefix, then the one each recovered change would put
    /// in force (the value reported chosen at its slot, or else the
    /// highest-ballot one). Read from the complete promises in place, so
    /// that every promise that completes costs no copy of the values.
    fn recovered_chain(&self) -> Vec<Membership> {
        let mut chain = vec![self.membership().clone()];
        let Role::Candidate(candidate) = &self.role else { return chain };
        // slot -> (reported chosen, ballot, value): a chosen report wins.
        let mut pick: BTreeMap<Slot, (bool, Ballot, &Value)> = BTreeMap::new();
        for promise in candidate.promises.values().filter(|p| p.received.len() == p.parts as usize) {
            for entry in promise.received.values().flatten().filter(|e| e.slot > self.chosen_through) {
                let candidate = (entry.slot <= promise.chosen_through, entry.ballot, &entry.value);
                let better = pick.get(&entry.slot).is_none_or(|&(chosen, ballot, _)| (candidate.0, candidate.1) > (chosen, ballot));
                if better {
                    pick.insert(entry.slot, candidate);
                }
            }
        }
        for (_, _, value) in pick.into_values() {
            if let Value::Reconfigure(next) = value {
                chain.push(next.clone());
            }
        }
        chain
    }

    /// Candidate rule: phase 1 is done once the complete promises include a
    /// majority of every configuration that governs a slot from our first
    /// unchosen one to the highest reported (and of the one after the last
    /// change recovered). Each configuration differs from the one before by
    /// one voter, so walking the chain majority by majority sees every value
    /// that may have been chosen in any of those slots. Voters of
    /// configurations the promises reveal are asked as they appear. A
    /// candidate that is no voter of the last configuration gives up.
    fn phase_one_done(&mut self) {
        let chain = self.recovered_chain();
        let Role::Candidate(candidate) = &mut self.role else { return };
        let complete: BTreeSet<ReplicaId> = candidate
            .promises
            .iter()
            .filter(|(_, p)| p.received.len() == p.parts as usize)
            .map(|(&id, _)| id)
            .collect();
        let (ballot, from_slot) = (candidate.ballot, candidate.from_slot);
        let new_voters: Vec<ReplicaId> =
            chain.iter().flat_map(Membership::voters).filter(|id| candidate.asked.insert(*id)).collect();
        let me = self.config.id;
        for to in new_voters.into_iter().filter(|&to| to != me) {
            self.send_persisted(to, Message::Prepare { ballot, from_slot });
        }
        if !chain.iter().all(|config| config.is_quorum(&complete)) {
            return;
        }
        if !chain.last().is_some_and(|config| config.is_voter(self.config.id)) {
            self.step_down();
            return;
        }
        let Some(recovered) = self.recovered() else { return };
        self.become_master(recovered);
    }

    /// Phase 1 is done: for every slot from the candidate's first unchosen one
    /// to the highest any promise reported, re-propose the value accepted in
    /// the highest ballot, or the value an acceptor reports chosen, or a
    /// no-op for a gap.
    ///
    /// Two different values reported chosen for one slot cannot both be
    /// true: it is an invariant violation (an acceptor's chosen prefix
    /// lied, or the protocol has a bug), never a choice. The candidate counts
    /// it ([`Status::conflicting_chosen_reports`]) and gives up the candidacy
    /// rather than choose ([`Self::recovered`]); the simulator fails any run
    /// in which it happens.
    fn become_master(&mut self, recovered: Recovered) {
        let Role::Candidate(candidate) = std::mem::replace(&mut self.role, Role::Follower) else {
            return;
        };
        let ballot = candidate.ballot;
        let Recovered { mut chosen, mut highest } = recovered;
        let last_reported = highest.keys().next_back().copied().unwrap_or(0);
        let recovered_through = last_reported.max(self.chosen_through);
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
            confirmed_tick: self.now,
            progress: BTreeMap::new(),
            lease_counted_over: 0,
            in_flight_configs: BTreeMap::new(),
            change: None,
        });
        self.master_hint = Some(self.config.id);
        self.stall_credit = 0;
        // A master learns nothing from catch-ups (see `on_catch_up`).
        self.forget_early_through(Slot::MAX);
        self.out.role_changes.push(RoleChange::BecameMaster { ballot, recovered_through });
        let mut proposals = Vec::new();
        for slot in self.chosen_through + 1..=recovered_through {
            let (known_chosen, value) = match (chosen.remove(&slot), highest.remove(&slot)) {
                (Some(value), _) => (true, value),
                (None, Some((_, value))) => (false, value),
                (None, None) => (false, Value::Noop),
            };
            proposals.push(Entry { slot, ballot, value: value.clone() });
            let Role::Master(master) = &mut self.role else { return };
            if let Value::Reconfigure(membership) = &value {
                master.in_flight_configs.insert(slot, membership.clone());
                self.members_version += 1;
            }
            master.in_flight.insert(
                slot,
                InFlight { value, votes: BTreeSet::new(), sent_tick: self.now, chosen: known_chosen },
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

    /// Whether the master has something to propose now. A change in flight
    /// is a stop sign: nothing goes out after it until it is chosen. A change
    /// waiting goes out alone once the slots in flight are chosen, and
    /// commands wait behind it.
    fn may_propose(&self, master: &Master) -> bool {
        if !master.in_flight_configs.is_empty() {
            return false;
        }
        if master.change.is_some() {
            return master.in_flight.is_empty();
        }
        !master.queue.is_empty() && self.window_has_room(master)
    }

    /// Master rule: batch queued commands into new slots while the window of
    /// slots in flight has room, and send one accept for all of them; or
    /// send a waiting change alone (see [`Self::may_propose`]).
    fn flush_proposals(&mut self) {
        let mut proposals = Vec::new();
        loop {
            let Role::Master(master) = &self.role else { return };
            if !self.may_propose(master) {
                break;
            }
            if master.next_slot <= self.chosen_through || master.next_slot > SLOT_MAX {
                // A new value at a slot already chosen would be a second
                // value for it. The core never gets here (a master learns
                // chosen slots only from its own ballot); should it ever,
                // give up mastership rather than propose.
                debug_assert!(false, "master's next slot {} is not past chosen {}", master.next_slot, self.chosen_through);
                self.step_down();
                return;
            }
            let Role::Master(master) = &mut self.role else { return };
            if let Some(membership) = master.change.take() {
                let slot = master.next_slot;
                master.next_slot += 1;
                master.in_flight_configs.insert(slot, membership.clone());
                self.members_version += 1;
                let value = Value::Reconfigure(membership);
                master.in_flight.insert(
                    slot,
                    InFlight { value: value.clone(), votes: BTreeSet::new(), sent_tick: self.now, chosen: false },
                );
                proposals.push(Entry { slot, ballot: master.ballot, value });
                self.recount_lease();
                break;
            }
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
        let members = self.recipients();
        let chunks = chunk_entries(proposals.into_iter(), &self.config, usize::MAX).unwrap_or_default();
        for chunk in chunks {
            for &to in &members {
                let message = Message::Accept { ballot, entries: chunk.clone(), chosen_through: self.chosen_through };
                self.send(to, message);
            }
        }
    }

    /// Acceptor rule for phase 2a: accept unless a higher ballot was promised.
    /// The accepted notice leaves only once the entries are durable.
    ///
    /// A follower accepts no slot past its accept window
    /// ([`Config::accept_window_slots`]) from its own chosen prefix: it
    /// catches up first (the master resends the slot while it is open, and
    /// a majority of others may choose it meanwhile). So every replica's
    /// log past its chosen prefix fits in one promise, and the replica with
    /// the highest chosen prefix among any majority can always run phase 1.
    /// The master's own acceptor is not bound: its proposals are at most a
    /// window of slots in flight, or what phase 1 recovered, past its chosen
    /// prefix.
    fn on_accept(&mut self, from: ReplicaId, ballot: Ballot, entries: Vec<Entry>, chosen_through: Slot) {
        if ballot.replica != from {
            return;
        }
        if !self.follow(from, ballot) {
            return;
        }
        // The window counts from our chosen prefix once we learned what
        // the master says is chosen among what we already hold (the learner
        // rule, as after the accept), so a follower in step with a full
        // pipeline takes the slot the master proposes as it chooses one.
        let window_end = if from == self.config.id {
            Slot::MAX
        } else {
            self.learn_chosen_through(ballot, chosen_through);
            self.chosen_through.saturating_add(self.config.accept_window_slots())
        };
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
            if entry.slot > window_end {
                // Too far ahead of what we know chosen: catch up first.
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
    /// Only the votes of the slot's configuration's voters count (see
    /// [`Self::governing`]); a learner's accepted notice counts for nothing.
    fn on_accepted(&mut self, from: ReplicaId, ballot: Ballot, slots: &[Slot]) {
        let Role::Master(master) = &self.role else { return };
        if master.ballot != ballot {
            return;
        }
        let counted: Vec<(Slot, usize)> = slots
            .iter()
            .filter(|slot| master.in_flight.contains_key(slot))
            .filter_map(|&slot| {
                let config = self.governing(master, slot);
                config.is_voter(from).then(|| (slot, config.quorum()))
            })
            .collect();
        let Role::Master(master) = &mut self.role else { return };
        for (slot, quorum) in counted {
            if let Some(in_flight) = master.in_flight.get_mut(&slot) {
                in_flight.votes.insert(from);
                if in_flight.votes.len() >= quorum {
                    in_flight.chosen = true;
                }
            }
        }
        self.advance_master_chosen();
    }

    /// The configuration that governs an open `slot` of this master: the
    /// one its newest change proposed before `slot` would put in force, or
    /// else the one in force after the chosen prefix.
    fn governing<'a>(&'a self, master: &'a Master, slot: Slot) -> &'a Membership {
        match master.in_flight_configs.range(..slot).next_back() {
            Some((_, membership)) => membership,
            None => self.configs.after(slot.saturating_sub(1)),
        }
    }

    /// Every replica the master talks to: the members of the configuration
    /// in force, of any change in flight, and of the configuration before
    /// the last change (so that a removed member learns it was removed), and
    /// itself.
    fn recipients(&self) -> Vec<ReplicaId> {
        let mut ids: BTreeSet<ReplicaId> = self.membership().ids().collect();
        if let Some(previous) = self.configs.previous() {
            ids.extend(previous.ids());
        }
        if let Role::Master(master) = &self.role {
            for config in master.in_flight_configs.values() {
                ids.extend(config.ids());
            }
        }
        ids.insert(self.config.id);
        ids.into_iter().collect()
    }

    /// Learner rule for configurations: a change takes force once its slot
    /// is chosen. A replica no longer a voter stops leading (a master that
    /// removed itself first tells the others what is chosen) and never
    /// campaigns again.
    fn note_chosen(&mut self, slot: Slot) {
        let Some((_, Value::Reconfigure(membership))) = self.log.get(&slot) else { return };
        self.configs.record(slot, membership.clone());
        self.members_version += 1;
        if let Role::Master(master) = &mut self.role {
            master.in_flight_configs.remove(&slot);
        }
        if self.is_voter() {
            return;
        }
        match self.role {
            Role::Master(_) => {
                self.send_heartbeats();
                self.step_down();
            }
            Role::Candidate(_) | Role::PreCandidate(_) => self.step_down(),
            Role::Follower => {}
        }
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
            self.note_chosen(next);
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
        let recipients = self.recipients();
        let Role::Master(master) = &mut self.role else { return };
        master.last_heartbeat_tick = now;
        let ballot = master.ballot;
        for to in recipients {
            self.send(to, Message::Heartbeat { ballot, chosen_through, sent_tick: now });
        }
    }

    /// Master rule: resend accepts that a majority has not acknowledged in
    /// `accept_retry_ticks`, to the slot's voters that have not (learners
    /// fill their gaps by catch-up).
    fn resend_accepts(&mut self) {
        let now = self.now;
        let retry = self.config.accept_retry_ticks;
        let Role::Master(master) = &self.role else { return };
        let ballot = master.ballot;
        let mut per_acceptor: BTreeMap<ReplicaId, Vec<Entry>> = BTreeMap::new();
        let mut resent = Vec::new();
        for (&slot, in_flight) in &master.in_flight {
            if in_flight.chosen || now.saturating_sub(in_flight.sent_tick) < retry {
                continue;
            }
            resent.push(slot);
            for to in self.governing(master, slot).voters() {
                if to != self.config.id && !in_flight.votes.contains(&to) {
                    per_acceptor.entry(to).or_default().push(Entry { slot, ballot, value: in_flight.value.clone() });
                }
            }
        }
        let Role::Master(master) = &mut self.role else { return };
        for slot in resent {
            if let Some(in_flight) = master.in_flight.get_mut(&slot) {
                in_flight.sent_tick = now;
            }
        }
        let chosen_through = self.chosen_through;
        for (to, entries) in per_acceptor {
            for chunk in chunk_entries(entries.into_iter(), &self.config, usize::MAX).unwrap_or_default() {
                self.send(to, Message::Accept { ballot, entries: chunk, chosen_through });
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
        // A learner grants the lease too, though the master does not count
        // it: if it is promoted before the lease runs out, the master may
        // count an acknowledgement it sent as a learner.
        self.lease_grant = LeaseGrant { holder: Some(from), until: self.now + self.config.lease_ticks };
        self.learn_chosen_through(ballot, chosen_through);
        self.send_persisted(from, Message::HeartbeatAck { ballot, sent_tick, chosen_through: self.chosen_through });
    }

    /// Master rule for the lease: it runs from the send tick of the newest
    /// heartbeat a majority acknowledged, for `lease_ticks - lease_drift_ticks`.
    ///
    /// The acknowledgements must come from a majority of the voters of every
    /// configuration that governs an open slot (the one in force and any
    /// change in flight): a candidate holds a majority of one of them (see
    /// [`Self::phase_one_done`]) and so meets an acceptor bound by the lease.
    /// A learner's acknowledgement counts for nothing, but tells the master
    /// how far it has learned.
    fn on_heartbeat_ack(&mut self, from: ReplicaId, ballot: Ballot, sent_tick: u64, chosen_through: Slot) {
        let lease_ticks = self.config.lease_ticks - self.config.lease_drift_ticks;
        let Role::Master(master) = &mut self.role else { return };
        if master.ballot != ballot || sent_tick > self.now {
            return;
        }
        let acked = master.heartbeat_acks.entry(from).or_insert(0);
        *acked = (*acked).max(sent_tick);
        let learned = master.progress.entry(from).or_insert(0);
        *learned = (*learned).max(chosen_through);
        if let Some(start) = self.lease_start() {
            let newest = self.newest_governing_slot();
            let Role::Master(master) = &mut self.role else { return };
            if start + lease_ticks > master.lease_until {
                master.lease_until = start + lease_ticks;
                master.lease_counted_over = newest;
            }
            if start > master.confirmed_tick {
                master.confirmed_tick = start;
                master.quorum_tick = master.quorum_tick.max(start);
                self.stall_credit = 0;
            }
        }
    }

    /// The send tick of the newest heartbeat that a majority of the voters
    /// of every configuration governing the master's open slots (the one in
    /// force and any change in flight) acknowledged; `None` if some
    /// configuration has no such majority yet.
    fn lease_start(&self) -> Option<u64> {
        let Role::Master(master) = &self.role else { return None };
        let in_force = self.configs.after(self.chosen_through);
        let mut start = u64::MAX;
        for config in std::iter::once(in_force).chain(master.in_flight_configs.values()) {
            let mut ticks: Vec<u64> = config.voters().filter_map(|id| master.heartbeat_acks.get(&id).copied()).collect();
            let quorum = config.quorum();
            if ticks.len() < quorum {
                return None;
            }
            ticks.sort_unstable_by(|a, b| b.cmp(a));
            start = start.min(ticks[quorum - 1]);
        }
        Some(start)
    }

    /// The slot of the change that made the newest configuration governing
    /// the master's open slots (in flight, or else in force).
    fn newest_governing_slot(&self) -> Slot {
        let in_flight = match &self.role {
            Role::Master(m) => m.in_flight_configs.keys().next_back().copied(),
            _ => None,
        };
        in_flight.unwrap_or_else(|| self.configs.latest_slot())
    }

    /// When a change is proposed, a lease counted over a configuration
    /// older than the one in force is counted again from scratch over the
    /// configurations now governing the open slots, and may shrink or end:
    /// such a lease is two changes from the new one, whose majorities need
    /// not meet its own. A lease counted over the configuration in force (or
    /// a newer one) is one change away from anything a candidate may hold,
    /// and stands.
    fn recount_lease(&mut self) {
        let lease_ticks = self.config.lease_ticks - self.config.lease_drift_ticks;
        let in_force = self.configs.latest_slot();
        if matches!(&self.role, Role::Master(m) if m.lease_counted_over >= in_force) {
            return;
        }
        let start = self.lease_start();
        let newest = self.newest_governing_slot();
        let Role::Master(master) = &mut self.role else { return };
        master.lease_until = start.map_or(0, |start| start + lease_ticks);
        master.lease_counted_over = newest;
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
            if let Role::PreCandidate(_) = self.role {
                self.role = Role::Follower;
            }
            self.master_hint = Some(from);
            self.master_heard_tick = Some(self.now);
            self.stall_credit = 0;
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
                    self.campaign();
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
    ///
    /// This is exact because a master vouches only for what it knows: the
    /// prefix chosen before its phase 1 (where it proposed nothing, so no
    /// acceptor holds an entry of its ballot there) and the slots chosen in
    /// its own ballot, whose values are its proposals. A master never learns
    /// a slot from another replica's catch-up or snapshot (see
    /// [`Self::on_catch_up`]), so it can never vouch for one of its own
    /// unchosen proposals.
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
                    self.note_chosen(next);
                }
                _ => {
                    let Some(entry) = self.catch_up_early.remove(&next) else { break };
                    self.learn_chosen(entry);
                }
            }
        }
        self.learn_early();
        if self.chosen_through < chosen_through {
            self.request_catch_up(ballot.replica);
        }
    }

    fn request_catch_up(&mut self, to: ReplicaId) {
        if to == self.config.id || self.is_master() {
            return;
        }
        if let Some(sent) = self.catch_up_sent_tick {
            if self.now.saturating_sub(sent) < self.config.catch_up_retry_ticks.saturating_mul(self.catch_up_backoff) {
                return;
            }
            // A retry: nothing came of the last request in time.
            self.catch_up_backoff = self.catch_up_backoff.saturating_mul(2).min(CATCH_UP_BACKOFF_MAX);
        }
        self.catch_up_sent_tick = Some(self.now);
        let from_slot = self.chosen_through + 1;
        self.catch_up_until = from_slot.saturating_add(self.config.accept_window_slots().max(1) - 1);
        self.send(to, Message::CatchUpRequest { from_slot });
    }

    /// Any replica answers a catch-up request with the chosen entries it
    /// holds from the requested slot on, or with its snapshot when it has
    /// compacted past the requested slot.
    ///
    /// The answer is as large as a promise may be and no larger: at most
    /// [`Config::accept_window_slots`] entries, in at most
    /// `promise_parts_max` messages, each bounded by count and bytes as
    /// every message is. So a follower closes the whole accept window it
    /// refuses past in one round trip, however few entries fit in one
    /// message; one batch per round trip fell behind a master choosing
    /// faster than that, and the followers refusing its new slots could not
    /// form a majority with it (cell simulator seed 1421).
    fn on_catch_up_request(&mut self, from: ReplicaId, from_slot: Slot) {
        if from_slot <= self.log_start {
            if let Some(snapshot) = &self.snapshot {
                let snapshot = snapshot.clone();
                self.send(from, Message::InstallSnapshot { snapshot });
            }
            return;
        }
        let window = self.config.accept_window_slots().max(1);
        let last = self.chosen_through.min(from_slot.saturating_add(window - 1));
        // At most `catch_up_answer_bytes_max` bytes (and at least one
        // entry): a window of the largest entries would be a promise's worth
        // (a GiB with the server's limits) for every request.
        let budget = self.config.catch_up_answer_bytes_max();
        let mut answered: usize = 0;
        let entries = (from_slot..=last)
            .map_while(|slot| {
                let (ballot, value) = self.log.get(&slot)?;
                Some(Entry { slot, ballot: *ballot, value: value.clone() })
            })
            .take_while(|entry| {
                let first = answered == 0;
                answered = answered.saturating_add(entry.encoded_bytes());
                first || answered <= budget
            });
        let batches = chunk_entries_prefix(entries, &self.config, self.config.promise_parts_max as usize);
        for entries in batches {
            self.send(from, Message::CatchUp { entries });
        }
    }

    /// Learner rule: entries in a catch-up are chosen; take those that extend
    /// our chosen prefix, keep those a little ahead of it (an answer's
    /// messages may arrive out of order), and ask for more if still behind.
    ///
    /// We ask again at once only when our chosen prefix reaches the last
    /// slot our latest request can bring ([`Self::request_catch_up`]): one
    /// request is answered with many messages, and asking again on each of
    /// them would multiply requests and answers. An answer that stops
    /// short (the sender knows no more, or part of it was lost) is asked
    /// again `catch_up_retry_ticks` after its latest message, as any lost
    /// request is.
    ///
    /// A master ignores catch-ups (and snapshots): it recovered every slot
    /// from its first unchosen one in phase 1 and never asks for them, so one
    /// that reaches it answers an old request from before it led. Taking it
    /// would let the master announce, under its own ballot, a prefix that
    /// covers its own unchosen proposals; a follower still on that ballot
    /// would then apply them (finding 1 of the safety review: two values
    /// chosen for one slot). Learning that it was deposed is left to the
    /// higher ballots it will meet.
    fn on_catch_up(&mut self, from: ReplicaId, entries: Vec<Entry>) {
        if self.is_master() {
            return;
        }
        let before = self.chosen_through;
        let ahead_max = self.chosen_through.saturating_add(self.config.accept_window_slots());
        for entry in entries {
            if entry.slot == self.chosen_through + 1 {
                self.learn_chosen(entry);
                self.learn_early();
            } else if entry.slot > self.chosen_through
                && entry.slot <= ahead_max
                && entry.encoded_bytes() <= self.config.entry_bytes_max()
                && !self.catch_up_early.contains_key(&entry.slot)
                && self.catch_up_early_bytes.saturating_add(entry.encoded_bytes()) <= self.config.catch_up_answer_bytes_max()
            {
                // Kept for later: fewer than a window of entries no larger
                // than a master makes, and no more bytes than one answer
                // may carry (copied, so a small entry does not pin the whole
                // message it came in). A second report for a slot is the
                // same chosen value; the first one stays.
                self.catch_up_early_bytes = self.catch_up_early_bytes.saturating_add(entry.encoded_bytes());
                let value = detached(entry.value);
                self.catch_up_early.insert(entry.slot, Entry { value, ..entry });
            }
        }
        self.learn_early();
        if self.chosen_through > before {
            self.catch_up_backoff = 1;
            if self.chosen_through >= self.catch_up_until {
                // Ask on while it gives a whole answer: the sender may know
                // more than any master told us (a learner asking a member
                // it knows, before it knows the master).
                self.catch_up_sent_tick = None;
                self.request_catch_up(from);
            } else if self.catch_up_sent_tick.is_some() {
                // The answer is still coming (a window of large entries
                // takes a while): the retry counts from its latest message,
                // lest we ask for the same window again meanwhile.
                self.catch_up_sent_tick = Some(self.now);
            }
        }
    }

    /// Forgets the catch-up entries kept ahead for slots up to `slot`.
    fn forget_early_through(&mut self, slot: Slot) {
        let mut freed: usize = 0;
        self.catch_up_early.retain(|&early, entry| {
            let keep = early > slot;
            if !keep {
                freed = freed.saturating_add(entry.encoded_bytes());
            }
            keep
        });
        self.catch_up_early_bytes = self.catch_up_early_bytes.saturating_sub(freed);
    }

    /// Learns the catch-up entries kept ahead of our chosen prefix that now
    /// extend it, and forgets those it passed by other means.
    fn learn_early(&mut self) {
        if self.is_master() {
            self.forget_early_through(Slot::MAX);
            return;
        }
        while let Some(entry) = self.catch_up_early.remove(&(self.chosen_through + 1)) {
            self.catch_up_early_bytes = self.catch_up_early_bytes.saturating_sub(entry.encoded_bytes());
            self.learn_chosen(entry);
        }
        self.forget_early_through(self.chosen_through);
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
        self.note_chosen(slot);
    }

    /// Learner rule: a snapshot past our chosen prefix replaces the log below
    /// it; the application loads it before applying anything after it. A
    /// master ignores it, as it ignores catch-ups ([`Self::on_catch_up`]).
    /// The driver must drop, before `step`, a snapshot whose data the
    /// application cannot load: from here on the log it covers is gone.
    fn on_install_snapshot(&mut self, snapshot: Snapshot) {
        if self.is_master() || snapshot.slot <= self.chosen_through {
            return;
        }
        let slot = snapshot.slot;
        self.drop_log_through(slot);
        self.configs.reset(slot, snapshot.membership.clone());
        self.members_version += 1;
        if !self.is_voter() && !matches!(self.role, Role::Follower) {
            self.step_down();
        }
        self.chosen_through = slot;
        self.known_chosen_through = self.known_chosen_through.max(slot);
        self.applied = slot;
        self.hard_state_dirty = true;
        self.catch_up_sent_tick = None;
        self.forget_early_through(slot);
        self.out.snapshot = Some(snapshot.clone());
        self.out.install_snapshot = true;
        self.snapshot = Some(snapshot);
    }

    fn drop_log_through(&mut self, slot: Slot) {
        self.configs.compact(slot);
        self.members_version += 1;
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
            self.members_version += 1;
        }
        self.role = Role::Follower;
        self.reset_election_timer();
    }

    fn own_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Follower | Role::PreCandidate(_) => None,
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

    /// The other voters of the configuration in force.
    fn voter_peers(&self) -> Vec<ReplicaId> {
        self.membership().voters().filter(|&m| m != self.config.id).collect()
    }

    /// True when `id` is a member of a configuration this replica knows (or
    /// of a change it has in flight, or one its phase 1 revealed, or one of
    /// its contacts); messages from anyone else are dropped.
    fn knows(&self, id: ReplicaId) -> bool {
        self.configs.knows(id)
            || self.config.contacts.contains(&id)
            || match &self.role {
                Role::Master(m) => m.in_flight_configs.values().any(|c| c.contains(id)),
                Role::Candidate(c) => c.asked.contains(&id),
                Role::Follower | Role::PreCandidate(_) => false,
            }
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

/// Cuts `entries` into messages of at most `entries_per_message_max`
/// entries and `message_bytes_max` bytes each (an entry larger than that
/// bound, which [`Config::validate`] rules out, still goes alone). Returns
/// `None` as soon as more than `chunks_max` chunks would be needed, without
/// cloning the rest.
fn chunk_entries(entries: impl Iterator<Item = Entry>, config: &Config, chunks_max: usize) -> Option<Vec<Vec<Entry>>> {
    let (chunks, all) = chunk_entries_while(entries, config, chunks_max);
    all.then_some(chunks)
}

/// `value` with its bytes copied out of the message they arrived in, so
/// that keeping it does not keep that whole message's buffer alive.
fn detached(value: Value) -> Value {
    match value {
        Value::Batch(commands) => Value::Batch(commands.iter().map(|command| Bytes::copy_from_slice(command)).collect()),
        other => other,
    }
}

/// Like [`chunk_entries`], but keeps the chunks that fit in `chunks_max` and
/// drops the rest.
fn chunk_entries_prefix(entries: impl Iterator<Item = Entry>, config: &Config, chunks_max: usize) -> Vec<Vec<Entry>> {
    chunk_entries_while(entries, config, chunks_max).0
}

/// The chunks of [`chunk_entries`], at most `chunks_max` of them, and
/// whether every entry fitted in them.
fn chunk_entries_while(
    entries: impl Iterator<Item = Entry>,
    config: &Config,
    chunks_max: usize,
) -> (Vec<Vec<Entry>>, bool) {
    let mut chunks: Vec<Vec<Entry>> = Vec::new();
    let mut bytes: usize = 0;
    for entry in entries {
        let size = entry.encoded_bytes();
        match chunks.last_mut() {
            Some(last)
                if last.len() < config.entries_per_message_max
                    && bytes.saturating_add(size) <= config.message_bytes_max =>
            {
                bytes = bytes.saturating_add(size);
                last.push(entry);
            }
            _ => {
                if chunks.len() == chunks_max {
                    return (chunks, false);
                }
                chunks.push(vec![entry]);
                bytes = size;
            }
        }
    }
    (chunks, true)
}

/// Checks what was read back from disk against the protocol's bounds; the
/// core does arithmetic on these numbers and must never overflow on them.
fn check_durable(durable: &Durable) -> Result<(), StartError> {
    let ballot_ok = |ballot: &Ballot| *ballot == Ballot::ZERO || (ballot.in_range() && ballot.replica != 0);
    if !ballot_ok(&durable.hard_state.promised) {
        return Err(StartError::OutOfRange("the promised ballot"));
    }
    if durable.hard_state.chosen_through > SLOT_MAX || durable.applied > SLOT_MAX {
        return Err(StartError::OutOfRange("the chosen or applied slot"));
    }
    let bad_membership = |m: &Membership| !m.members.is_empty() && m.validate().is_err();
    if durable.snapshot.as_ref().is_some_and(|s| s.slot > SLOT_MAX || bad_membership(&s.membership)) {
        return Err(StartError::OutOfRange("the snapshot's slot or configuration"));
    }
    let bad_config = |e: &Entry| matches!(&e.value, Value::Reconfigure(m) if m.validate().is_err());
    if durable.entries.iter().any(bad_config) {
        return Err(StartError::OutOfRange("a configuration in the log"));
    }
    if durable.entries.iter().any(|e| !e.in_range() || !ballot_ok(&e.ballot)) {
        return Err(StartError::OutOfRange("a log entry's slot or ballot"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
