//! One simulated replica's application side, as the server's driver and
//! `Cell` service do it: the applied state, and as master its duties
//! ([`MasterDuties`], the same code the driver runs), its session leases,
//! the calls waiting for their command to be applied, and `Acquire` calls
//! waiting in line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gaios_paxos::ready::RoleChange;
use gaios_paxos::sim::{Cluster, ReplicaView};
use gaios_paxos::{Entry, Value};
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use gaios_state::StateMachine;
use gaios_state::master::{MasterDuties, SessionLeases};

use crate::DUTY_INTERVAL_US;
use prost::Message as _;

use crate::{Answer, Cell, Event, Request};

/// A call waiting for its command to be applied on this replica.
#[derive(Clone, Debug)]
pub struct Waiting {
    client: usize,
    attempt: u64,
    kind: wire::command::Kind,
}

/// An `Acquire` waiting in line on this master (the `Cell` service's
/// `wait_for_lock`).
#[derive(Clone, Debug)]
pub struct LockWait {
    client: usize,
    attempt: u64,
    cancel: wire::CancelWait,
    /// When it gives up, on this replica's clock.
    deadline: Instant,
}

/// A replica's application side; see the module docs.
#[derive(Debug)]
pub struct CellReplica {
    /// The applied state.
    pub state: StateMachine,
    /// Names this process in the commands it proposes (its id and
    /// incarnation), so only it answers their outcomes.
    tag: u64,
    next_proposal: u64,
    leases: SessionLeases,
    duties: MasterDuties,
    /// Became master with this ballot; `MasterTookOver` not yet proposed.
    took_over: Option<(u64, u64)>,
    /// Lost mastership: the waiting calls must hear it.
    lost: bool,
    pending: BTreeMap<u64, Waiting>,
    waits: Vec<LockWait>,
    /// When its duties last ran, on its clock (µs since it started).
    duties_at_us: Option<u64>,
}

impl CellReplica {
    /// A replica before its first start.
    pub fn new(session_lease: Duration) -> CellReplica {
        CellReplica {
            state: StateMachine::new(),
            tag: 0,
            next_proposal: 1,
            leases: SessionLeases::new(session_lease),
            duties: MasterDuties::new(),
            took_over: None,
            lost: false,
            pending: BTreeMap::new(),
            waits: Vec::new(),
            duties_at_us: None,
        }
    }

    /// Starts (a new process, with `state` from its snapshot) or installs a
    /// peer's snapshot (the same process: only the state changes).
    pub fn restore(&mut self, view: ReplicaView, state: StateMachine) {
        let tag = (view.id << 32) | view.incarnation;
        if tag != self.tag {
            self.crashed();
            self.tag = tag;
        }
        self.state = state;
    }

    /// The process died: everything but the disk is gone.
    pub fn crashed(&mut self) {
        self.duties.reset(&mut self.leases);
        self.took_over = None;
        self.lost = false;
        self.pending.clear();
        self.waits.clear();
        self.duties_at_us = None;
    }

    /// As the driver's `became_master` and `lost_mastership`.
    pub fn role_change(&mut self, change: &RoleChange) {
        self.duties.reset(&mut self.leases);
        match change {
            RoleChange::BecameMaster { ballot, .. } => self.took_over = Some((ballot.round, ballot.replica)),
            RoleChange::LostMastership { .. } => {
                self.took_over = None;
                self.lost = true;
            }
        }
    }

    /// Stamps and encodes `kind` as this master's next command.
    fn command(&mut self, kind: wire::command::Kind, now_us: u64, local: Instant) -> (u64, Bytes) {
        let number = self.next_proposal;
        self.next_proposal += 1;
        let command = wire::Command {
            proposer_incarnation: self.tag,
            proposal_number: number,
            // The wall clock: simulated time (never before the state's).
            now_ms: (now_us / 1_000).max(self.state.now_ms()),
            lock_clock_ms: self.duties.lock_clock_ms(local),
            kind: Some(kind),
        };
        (number, Bytes::from(command.encode_to_vec()))
    }
}

impl Cell {
    /// Proposes `kind` at replica `node`; `Some(number)` if its core took it.
    fn propose_at(&mut self, cluster: &mut dyn Cluster, node: usize, kind: wire::command::Kind) -> Option<u64> {
        let now_us = cluster.now_us();
        // The driver stamps a command in the turn that proposes it.
        let turn = self.base + Duration::from_micros(cluster.view(node).turn_local_us);
        let (number, bytes) = self.replicas[node].command(kind, now_us, turn);
        debug_assert!(bytes.len() <= crate::COMMAND_BYTES_MAX, "a command of {} bytes", bytes.len());
        cluster.propose(node, bytes).ok().map(|()| number)
    }

    /// Proposes `MasterTookOver` for new masters and tells the calls that
    /// waited on replicas that lost mastership that their outcome is
    /// unknown.
    pub(crate) fn answer_role_changes(&mut self, cluster: &mut dyn Cluster) {
        let now_us = cluster.now_us();
        for node in 0..self.replicas.len() {
            if let Some((round, replica)) = self.replicas[node].took_over.take() {
                let _ = self.propose_at(cluster, node, MasterDuties::took_over(round, replica));
            }
            if std::mem::take(&mut self.replicas[node].lost) {
                let pending = std::mem::take(&mut self.replicas[node].pending);
                let waits = std::mem::take(&mut self.replicas[node].waits);
                let calls = pending.into_values().map(|w| (w.client, w.attempt)).chain(waits.into_iter().map(|w| (w.client, w.attempt)));
                for (client, attempt) in calls.collect::<Vec<_>>() {
                    self.send(now_us, Event::Answer { client, attempt, answer: Answer::Indeterminate });
                }
            }
        }
    }

    /// Replica `node` serves a client's request, as the `Cell` service does.
    pub(crate) fn serve(&mut self, cluster: &mut dyn Cluster, node: usize, client: usize, attempt: u64, request: Request) -> Result<(), String> {
        let now_us = cluster.now_us();
        let view = cluster.view(node);
        if !view.running {
            return Ok(());
        }
        let answer = |answer| Event::Answer { client, attempt, answer };
        // Replica ids are 1..=n in index order.
        let hint = view.master_hint.filter(|&id| id != view.id).and_then(|id| usize::try_from(id).ok()?.checked_sub(1));
        if !view.can_serve_now() {
            self.send(now_us, answer(Answer::NotMaster(hint)));
            return Ok(());
        }
        match request {
            Request::KeepAlive { session, secret } => {
                let local = self.local_now(cluster, node);
                let replica = &mut self.replicas[node];
                let alive = replica.state.has_session(session)
                    && replica.state.authorize_session(session, &secret).is_ok()
                    && replica.leases.renew(session, local).is_ok();
                self.send(now_us, answer(Answer::KeepAlive(alive)));
            }
            Request::CheckSequencer(sequencer) => {
                let checked = self.replicas[node].state.check_sequencer(&sequencer);
                self.history.sequencer_reported(view.id, &sequencer, checked.valid, now_us)?;
                self.report.sequencer_checks += 1;
                self.send(now_us, answer(Answer::Sequencer(checked)));
            }
            Request::Propose(kind) => match self.propose_at(cluster, node, kind.clone()) {
                Some(number) => {
                    self.replicas[node].pending.insert(number, Waiting { client, attempt, kind });
                }
                None => self.send(now_us, answer(Answer::NotMaster(hint))),
            },
        }
        Ok(())
    }

    /// Replica `node` applies a chosen entry: every command in the batch
    /// (the simulator's own 8-byte ones are not commands and are skipped, as
    /// the driver skips what does not decode), checked after each; answers
    /// the calls of this process that waited for them.
    pub(crate) fn apply_entry(&mut self, cluster: &dyn Cluster, node: usize, entry: &Entry) -> Result<(), String> {
        let now_us = cluster.now_us();
        let view = cluster.view(node);
        let Value::Batch(commands) = &entry.value else {
            return self.history.slot_applied(view.id, entry.slot, &[], &self.replicas[node].state);
        };
        let mut outcomes = Vec::with_capacity(commands.len());
        for bytes in commands {
            let Ok(command) = wire::Command::decode(bytes.as_ref()) else { continue };
            let outcome = self.replicas[node].state.apply(&command).outcome;
            self.replicas[node].state.check_invariants();
            self.report.commands_applied += 1;
            self.history.command_applied(view.id, entry.slot, &command, &outcome, &self.replicas[node].state, now_us, &self.clients, &mut self.report)?;
            let replica = &mut self.replicas[node];
            if command.proposer_incarnation == replica.tag
                && let Some(waiting) = replica.pending.remove(&command.proposal_number)
            {
                self.answer_outcome(cluster, node, waiting, outcome.clone());
            }
            outcomes.push(outcome);
        }
        self.settle_waits(cluster, node);
        self.history.slot_applied(view.id, entry.slot, &outcomes, &self.replicas[node].state)
    }

    /// The outcome of a call this replica proposed, as its handler answers
    /// it: a new session gets a lease; an `Acquire` queued in line waits;
    /// a `CancelWait` answers the `Acquire` it ended.
    fn answer_outcome(&mut self, cluster: &dyn Cluster, node: usize, waiting: Waiting, outcome: wire::Outcome) {
        let now_us = cluster.now_us();
        let local = self.local_now(cluster, node);
        let Waiting { client, attempt, kind } = waiting;
        let replica = &mut self.replicas[node];
        match (&kind, &outcome.result) {
            (wire::command::Kind::CreateSession(_), Some(wire::outcome::Result::SessionCreated(created))) => {
                replica.leases.grant(created.session_id, local);
            }
            (wire::command::Kind::Call(call), Some(wire::outcome::Result::Queued(_))) => {
                if let Some(wire::session_call::Call::Acquire(acquire)) = &call.call {
                    replica.waits.push(LockWait {
                        client,
                        attempt,
                        cancel: wire::CancelWait {
                            session_id: call.session_id,
                            handle: acquire.handle,
                            session_secret: call.session_secret.clone(),
                            request_number: call.request_number,
                            keep_granted: true,
                        },
                        deadline: local + Duration::from_millis(acquire.wait_ms),
                    });
                    return;
                }
            }
            (wire::command::Kind::CancelWait(_), Some(wire::outcome::Result::Done(_))) => {
                // Not granted in time.
                let failure = wire::Failure { code: 4, message: "the wait ran out".into(), reason: 0 };
                let outcome = wire::Outcome { result: Some(wire::outcome::Result::Failure(failure)) };
                self.send(now_us, Event::Answer { client, attempt, answer: Answer::Outcome(outcome) });
                return;
            }
            _ => {}
        }
        self.send(now_us, Event::Answer { client, attempt, answer: Answer::Outcome(outcome) });
    }

    /// `Acquire` calls waiting in line on replica `node`: granted ones are
    /// answered with their sequencer; ones no longer in line (their session
    /// ended) hear so.
    fn settle_waits(&mut self, cluster: &dyn Cluster, node: usize) {
        let now_us = cluster.now_us();
        let replica = &mut self.replicas[node];
        let mut answers = Vec::new();
        replica.waits.retain(|wait| {
            let (session, handle) = (wait.cancel.session_id, wait.cancel.handle);
            if let Some(sequencer) = replica.state.holding(session, handle) {
                let granted = wire::Outcome {
                    result: Some(wire::outcome::Result::Acquired(api::AcquireResponse { header: None, sequencer: Some(sequencer) })),
                };
                answers.push((wait.client, wait.attempt, Answer::Outcome(granted)));
                return false;
            }
            if !replica.state.is_waiting(session, handle) {
                answers.push((wait.client, wait.attempt, Answer::Indeterminate));
                return false;
            }
            true
        });
        for (client, attempt, answer) in answers {
            self.send(now_us, Event::Answer { client, attempt, answer });
        }
    }

    /// Every master runs its duties as its driver does: at most every
    /// `DUTY_INTERVAL`, on the clock its turn read when it began (which a
    /// pause may have left behind: the core's lease is of that time too)
    /// ([`MasterDuties::tick`]); its handlers give up the waits whose
    /// deadline passed with a `CancelWait`. Before, the checks see every
    /// replica as it is after this event ([`History::observe`]).
    pub(crate) fn duties(&mut self, cluster: &mut dyn Cluster) -> Result<(), String> {
        for node in 0..self.replicas.len() {
            let view = cluster.view(node);
            self.history.observe(node, &view);
            if !view.running || !view.is_master {
                continue;
            }
            let clock_us = view.turn_local_us;
            if self.replicas[node].duties_at_us.is_some_and(|at| clock_us < at.saturating_add(DUTY_INTERVAL_US)) {
                continue;
            }
            self.replicas[node].duties_at_us = Some(clock_us);
            let clock = self.base + Duration::from_micros(clock_us);
            let replica = &mut self.replicas[node];
            let due = replica.duties.tick(view.can_serve, &replica.state, &mut replica.leases, clock);
            for kind in due {
                if let wire::command::Kind::EndSession(end) = &kind {
                    let deadline = self.replicas[node].leases.deadline(end.session_id);
                    let deadline_us = deadline.map(|deadline| u64::try_from(deadline.duration_since(self.base).as_micros()).unwrap_or(u64::MAX));
                    self.history.expiry_proposed(node, view.id, end.session_id, deadline_us, clock_us)?;
                    cluster.note(format!("master {} proposes to expire session {}", view.id, end.session_id));
                }
                if self.propose_at(cluster, node, kind.clone()).is_some() {
                    let replica = &mut self.replicas[node];
                    replica.duties.proposed(&kind, &replica.state, &mut replica.leases);
                }
            }
            if !view.can_serve_now() {
                continue;
            }
            // A wait whose deadline passed gives up its place with a
            // `CancelWait` and is answered by its outcome (a wait whose
            // cancel the core refused tries again at the next duties).
            let local = self.local_now(cluster, node);
            let waits = std::mem::take(&mut self.replicas[node].waits);
            for wait in waits {
                if wait.deadline > local {
                    self.replicas[node].waits.push(wait);
                    continue;
                }
                let kind = wire::command::Kind::CancelWait(wait.cancel.clone());
                match self.propose_at(cluster, node, kind.clone()) {
                    Some(number) => {
                        self.replicas[node].pending.insert(number, Waiting { client: wait.client, attempt: wait.attempt, kind });
                    }
                    None => self.replicas[node].waits.push(wait),
                }
            }
        }
        Ok(())
    }
}
