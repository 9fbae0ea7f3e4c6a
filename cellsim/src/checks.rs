//! What the whole-cell simulator checks, after every command applied and
//! every answer a client hears; each `Err` is a violation with the seed.
//!
//! - **Replicas agree:** the outcomes of each slot hash alike on every
//!   replica that applies it, and every [`STATE_SAMPLE_SLOTS`]th slot the
//!   whole state's snapshot does too (and a restored snapshot matches what
//!   was applied at its slot); at the end, replicas at equal slots hold the
//!   same replicated state.
//! - **Locks:** on every replica after every command, at most one exclusive
//!   holder per lock and never an exclusive holder beside shared ones; and
//!   across clients, no client is told it holds a lock while another client
//!   counts on a conflicting holding of it (a client counts on its locks
//!   only while its session lease runs, as Chubby's library does).
//! - **Sequencers:** a serving master never reports current a sequencer
//!   older than a grant of its lock already told to a client (an exclusive
//!   grant ends every older holding; a shared one every older exclusive).
//! - **Sessions:** no session is expired while its client's lease (which
//!   ends no later than the master's copy) still runs; a master proposes an
//!   expiry only once its own copy of the lease ran out, and only if it could
//!   serve (it held its master lease, on its own clock, and had applied its
//!   read barrier) through the whole lease before, so that no KeepAlive could
//!   have gone unanswered for want of a master (a gap shorter than
//!   [`GAP_UNSEEN_US`], between two runs of its duties, excepted).
//! - **At most once:** every application of one (session, request number)
//!   answers as the first did (or says the number fell out of the window,
//!   or the session ended): a retried write or create never applies twice.

use std::collections::{BTreeMap, BTreeSet};

use gaios_paxos::Slot;
use gaios_paxos::rng::Rng;
use gaios_paxos::sim::{Cluster, ReplicaView};
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use gaios_state::StateMachine;
use prost::Message as _;

use crate::CellReport;
use crate::client::Client;
use crate::replica::CellReplica;

/// The whole state is hashed and compared every this many slots.
pub const STATE_SAMPLE_SLOTS: u64 = 8;
/// Sequencers kept for later checks.
const TOLD_SEQUENCERS_MAX: usize = 64;
/// A gap in a master's serving this short may fall between two runs of its
/// duties, which then never see it (they run every `DUTY_INTERVAL_US`).
pub const GAP_UNSEEN_US: u64 = 2 * crate::DUTY_INTERVAL_US;
/// Gaps in serving kept per replica, newest last.
const SERVING_GAPS_MAX: usize = 32;

/// When a replica could serve, on its own clock (µs since its incarnation
/// started): what the checks saw of it after every event.
#[derive(Debug, Default)]
struct Serving {
    incarnation: u64,
    /// The end of the master lease seen last, if it could serve then.
    lease_until_us: Option<u64>,
    /// Since when it cannot serve, if it cannot now.
    gap_since_us: Option<u64>,
    /// Past gaps (from, to) of at least [`GAP_UNSEEN_US`], newest last.
    gaps: std::collections::VecDeque<(u64, u64)>,
}

/// FNV-1a, for hashes compared within one run.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = hash ^ 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the checks remember of the run.
#[derive(Debug, Default)]
pub struct History {
    /// The hash of each slot's outcomes, from the first replica to apply it.
    outcomes: BTreeMap<Slot, u64>,
    /// The hash of the whole state at sampled slots.
    states: BTreeMap<Slot, u64>,
    /// The first answer to each (session, request number) and its slot.
    answers: BTreeMap<(u64, u64), (Slot, wire::Outcome)>,
    /// The handles each session opened (applied).
    handles: BTreeMap<u64, BTreeSet<u64>>,
    /// Which client was told it owns each session.
    owners: BTreeMap<u64, usize>,
    /// When each session's expiry was first applied (µs).
    expired_at: BTreeMap<u64, u64>,
    /// The newest lock generation told to a client, per path: of any grant,
    /// and of an exclusive grant.
    told_any: BTreeMap<String, u64>,
    told_exclusive: BTreeMap<String, u64>,
    /// Recent sequencers told to clients, for checks.
    told: std::collections::VecDeque<api::Sequencer>,
    /// The slot each replica applies now (set by `command_applied`).
    slot: Slot,
    /// The session lease the masters grant, in µs.
    session_lease_us: u64,
    /// When each replica (by index) could serve.
    serving: BTreeMap<usize, Serving>,
}

impl History {
    /// A replica restored a snapshot at `slot`: it must be the state
    /// applied there.
    pub fn restored(&mut self, replica: u64, slot: Slot, state: &StateMachine) -> Result<(), String> {
        if slot.is_multiple_of(STATE_SAMPLE_SLOTS)
            && let Some(&expected) = self.states.get(&slot)
            && fnv(0, &state.snapshot()) != expected
        {
            return Err(format!("replica {replica} restored a snapshot at slot {slot} that differs from the state applied there"));
        }
        Ok(())
    }

    /// A replica applied `slot` with these outcomes; compares with every
    /// other replica's.
    pub fn slot_applied(&mut self, replica: u64, slot: Slot, outcomes: &[wire::Outcome], state: &StateMachine) -> Result<(), String> {
        let hash = outcomes.iter().fold(slot, |hash, outcome| fnv(hash, &outcome.encode_to_vec()));
        if *self.outcomes.entry(slot).or_insert(hash) != hash {
            return Err(format!("replica {replica}'s outcomes at slot {slot} differ from another replica's"));
        }
        if slot.is_multiple_of(STATE_SAMPLE_SLOTS) {
            let hash = fnv(0, &state.snapshot());
            if *self.states.entry(slot).or_insert(hash) != hash {
                return Err(format!("replica {replica}'s state after slot {slot} differs from another replica's"));
            }
        }
        Ok(())
    }

    /// A replica applied `command` with `outcome` at simulated time `now_us`.
    #[allow(clippy::too_many_arguments)]
    pub fn command_applied(
        &mut self,
        replica: u64,
        slot: Slot,
        command: &wire::Command,
        outcome: &wire::Outcome,
        state: &StateMachine,
        now_us: u64,
        clients: &[Client],
        report: &mut CellReport,
    ) -> Result<(), String> {
        self.slot = slot;
        use wire::command::Kind;
        match &command.kind {
            Some(Kind::Call(call)) => {
                let key = (call.session_id, call.request_number);
                match self.answers.get(&key) {
                    None => {
                        self.answers.insert(key, (slot, outcome.clone()));
                    }
                    Some((first_slot, first)) => {
                        if *first_slot != slot {
                            report.duplicates_applied += 1;
                        }
                        let reason = match &outcome.result {
                            Some(wire::outcome::Result::Failure(failure)) => failure.reason,
                            _ => 0,
                        };
                        let excused = reason == api::ErrorReason::RequestNumberTooOld as i32
                            || reason == api::ErrorReason::SessionEnded as i32;
                        if first != outcome && !excused {
                            return Err(format!(
                                "request {} of session {} applied twice: replica {replica} answered {outcome:?} at slot {slot}, \
                                 but it first answered {first:?} at slot {first_slot}",
                                call.request_number, call.session_id
                            ));
                        }
                    }
                }
                if let Some(wire::outcome::Result::Opened(opened)) = &outcome.result {
                    self.handles.entry(call.session_id).or_default().insert(opened.handle);
                }
            }
            Some(Kind::EndSession(end)) if end.expired && !self.expired_at.contains_key(&end.session_id) => {
                if matches!(outcome.result, Some(wire::outcome::Result::Done(_))) {
                    self.expired_at.insert(end.session_id, now_us);
                    report.sessions_expired += 1;
                    if let Some(&owner) = self.owners.get(&end.session_id) {
                        let client = &clients[owner];
                        if let Some(session) = client.session.as_ref().filter(|s| s.id == end.session_id)
                            && now_us < session.lease_until_us
                        {
                            return Err(format!(
                                "session {} of client {owner} expired (applied on replica {replica} at slot {slot}, t={now_us}us) \
                                 while its lease ran to t={}us",
                                end.session_id, session.lease_until_us
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
        self.check_holders(replica, state)
    }

    /// At most one exclusive holder per lock, never beside shared holders.
    fn check_holders(&self, replica: u64, state: &StateMachine) -> Result<(), String> {
        let mut holders: BTreeMap<String, Vec<api::Sequencer>> = BTreeMap::new();
        for session in state.session_ids() {
            for &handle in self.handles.get(&session).into_iter().flatten() {
                if let Some(sequencer) = state.holding(session, handle) {
                    holders.entry(sequencer.path.clone()).or_default().push(sequencer);
                }
            }
        }
        for (path, held) in holders {
            let exclusive = held.iter().filter(|s| s.mode == api::LockMode::Exclusive as i32).count();
            if exclusive > 1 || (exclusive == 1 && held.len() > 1) {
                return Err(format!("replica {replica} at slot {}: lock {path} has conflicting holders {held:?}", self.slot));
            }
        }
        Ok(())
    }

    /// Checks run with sessions of `session_lease_us`.
    pub fn new(session_lease_us: u64) -> History {
        History { session_lease_us, ..History::default() }
    }

    /// Replica `node` as it is after an event: whether it can serve now, on
    /// its own clock, and whether the lease seen last ran out since (then
    /// it stopped serving when it did, whether or not its core noticed).
    pub fn observe(&mut self, node: usize, view: &ReplicaView) {
        let serving = self.serving.entry(node).or_default();
        if serving.incarnation != view.incarnation {
            *serving = Serving { incarnation: view.incarnation, ..Serving::default() };
        }
        let now = view.local_us;
        if let Some(until) = serving.lease_until_us
            && until <= now
        {
            serving.gap_since_us.get_or_insert(until);
        }
        let lease_until = view.lease_valid_until_us.filter(|&until| view.can_serve && now < until);
        match lease_until {
            None => {
                serving.gap_since_us.get_or_insert(now);
            }
            Some(_) => {
                // Only gaps the duties must have seen are kept (and held
                // against an expiry), so that short ones never push a long
                // one out.
                if let Some(since) = serving.gap_since_us.take()
                    && now.saturating_sub(since) >= GAP_UNSEEN_US
                {
                    if serving.gaps.len() == SERVING_GAPS_MAX {
                        serving.gaps.pop_front();
                    }
                    serving.gaps.push_back((since, now));
                }
            }
        }
        serving.lease_until_us = lease_until;
    }

    /// Replica `node` (id `replica`), master, proposes to expire `session` at
    /// `clock_us` on its own clock (as its duties read it), with its copy of
    /// the lease running to `deadline_us`.
    pub fn expiry_proposed(&mut self, node: usize, replica: u64, session: u64, deadline_us: Option<u64>, clock_us: u64) -> Result<(), String> {
        let Some(deadline) = deadline_us else {
            return Err(format!("master {replica} proposed to expire session {session}, whose lease it does not track"));
        };
        if deadline > clock_us {
            return Err(format!(
                "master {replica} proposed to expire session {session} {}us before its lease ran out",
                deadline - clock_us
            ));
        }
        // It must have served from a full lease before `clock_us` until then.
        let from = clock_us.saturating_sub(self.session_lease_us);
        let Some(serving) = self.serving.get(&node) else { return Ok(()) };
        let open = serving.gap_since_us.map(|since| (since, u64::MAX));
        for (since, to) in serving.gaps.iter().copied().chain(open) {
            let seen = to.saturating_sub(since) >= GAP_UNSEEN_US;
            if seen && since < clock_us && to > from {
                let to = if to == u64::MAX { "now".to_string() } else { format!("t={to}us") };
                return Err(format!(
                    "master {replica} proposed at t={clock_us}us (its clock) to expire session {session}, whose lease ran to \
                     t={deadline}us, but it could not serve from t={since}us to {to}: a KeepAlive then went unanswered"
                ));
            }
        }
        Ok(())
    }

    /// `client` was told it owns `session` and counts on it until
    /// `lease_until_us`.
    pub fn session_told(&mut self, session: u64, client: usize, lease_until_us: u64) -> Result<(), String> {
        self.owners.insert(session, client);
        match self.expired_at.get(&session) {
            Some(&at) if at < lease_until_us => Err(format!(
                "session {session} of client {client} was expired at t={at}us, before the lease its creation promised \
                 ran out (t={lease_until_us}us)"
            )),
            _ => Ok(()),
        }
    }

    /// `client` was told it holds `sequencer`'s lock at `now_us`: no other
    /// client may count on a conflicting holding of it.
    pub fn lock_told(&mut self, client: usize, sequencer: &api::Sequencer, now_us: u64, clients: &[Client]) -> Result<(), String> {
        let exclusive = sequencer.mode == api::LockMode::Exclusive as i32;
        for (other, c) in clients.iter().enumerate().filter(|&(other, _)| other != client) {
            for held in c.believed_locks(now_us).filter(|held| held.path == sequencer.path) {
                if exclusive || held.mode == api::LockMode::Exclusive as i32 {
                    return Err(format!(
                        "client {client} was told it holds {sequencer:?} at t={now_us}us while client {other} holds {held:?} \
                         (its lease runs to t={}us)",
                        c.session.as_ref().map_or(0, |s| s.lease_until_us)
                    ));
                }
            }
        }
        let any = self.told_any.entry(sequencer.path.clone()).or_default();
        *any = (*any).max(sequencer.lock_generation);
        if exclusive {
            let newest = self.told_exclusive.entry(sequencer.path.clone()).or_default();
            *newest = (*newest).max(sequencer.lock_generation);
        }
        if self.told.len() == TOLD_SEQUENCERS_MAX {
            self.told.pop_front();
        }
        self.told.push_back(sequencer.clone());
        Ok(())
    }

    /// A sequencer once told to some client, for a check.
    pub fn some_sequencer(&self, rng: &mut Rng) -> Option<api::Sequencer> {
        if self.told.is_empty() {
            return None;
        }
        self.told.get(rng.range(0, self.told.len() as u64 - 1) as usize).cloned()
    }

    /// A serving master reported whether `sequencer` is current.
    pub fn sequencer_reported(&self, replica: u64, sequencer: &api::Sequencer, valid: bool, now_us: u64) -> Result<(), String> {
        if !valid {
            return Ok(());
        }
        let newer_exclusive = self.told_exclusive.get(&sequencer.path).copied().unwrap_or(0);
        let newer_any = self.told_any.get(&sequencer.path).copied().unwrap_or(0);
        let exclusive = sequencer.mode == api::LockMode::Exclusive as i32;
        if newer_exclusive > sequencer.lock_generation || (exclusive && newer_any > sequencer.lock_generation) {
            return Err(format!(
                "master {replica} reported {sequencer:?} current at t={now_us}us after a grant of generation {} was told to a client",
                if newer_exclusive > sequencer.lock_generation { newer_exclusive } else { newer_any }
            ));
        }
        Ok(())
    }

    /// The end: replicas at equal slots hold equal states.
    pub fn finish(&self, cluster: &dyn Cluster, replicas: &[CellReplica]) -> Result<(), String> {
        for a in 0..replicas.len() {
            for b in a + 1..replicas.len() {
                let (va, vb) = (cluster.view(a), cluster.view(b));
                if va.applied == vb.applied && !replicas[a].state.same_replicated_state(&replicas[b].state) {
                    return Err(format!("replicas {} and {} hold different states at slot {}", va.id, vb.id, va.applied));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequencer(mode: api::LockMode, lock_generation: u64) -> api::Sequencer {
        api::Sequencer { path: "/f0".into(), mode: mode as i32, lock_generation, instance: 2 }
    }

    fn written(content_generation: u64) -> wire::Outcome {
        let stat = api::Stat { content_generation, ..Default::default() };
        wire::Outcome { result: Some(wire::outcome::Result::Written(api::SetContentsResponse { header: None, stat: Some(stat) })) }
    }

    fn write_call(session: u64, request_number: u64) -> wire::Command {
        let call = wire::SessionCall { session_id: session, request_number, ..Default::default() };
        wire::Command { kind: Some(wire::command::Kind::Call(call)), ..Default::default() }
    }

    #[test]
    fn a_lock_told_while_another_client_counts_on_a_conflicting_holding_is_a_violation() {
        use api::LockMode::{Exclusive, Shared};
        let clients = vec![Client::holding(0, 1, 1_000, vec![]), Client::holding(1, 2, 1_000, vec![sequencer(Shared, 4)])];
        let mut history = History::default();
        assert!(history.lock_told(0, &sequencer(Shared, 5), 500, &clients).is_ok(), "two shared holders conflict");
        assert!(history.lock_told(0, &sequencer(Exclusive, 6), 500, &clients).is_err());
        // Once client 1's lease ran out it counts on nothing.
        assert!(history.lock_told(0, &sequencer(Exclusive, 6), 1_000, &clients).is_ok());
    }

    #[test]
    fn a_sequencer_reported_current_after_a_newer_grant_was_told_is_a_violation() {
        use api::LockMode::{Exclusive, Shared};
        let mut history = History::default();
        history.lock_told(0, &sequencer(Shared, 3), 0, &[]).expect("told");
        assert!(history.sequencer_reported(1, &sequencer(Shared, 2), true, 10).is_ok(), "shared holders coexist");
        assert!(history.sequencer_reported(1, &sequencer(Exclusive, 2), true, 10).is_err());
        history.lock_told(0, &sequencer(Exclusive, 7), 0, &[]).expect("told");
        assert!(history.sequencer_reported(1, &sequencer(Shared, 3), true, 10).is_err());
        assert!(history.sequencer_reported(1, &sequencer(Shared, 3), false, 10).is_ok());
        assert!(history.sequencer_reported(1, &sequencer(Exclusive, 7), true, 10).is_ok());
    }

    #[test]
    fn a_retried_request_that_answers_differently_was_applied_twice() {
        let state = StateMachine::new();
        let mut report = CellReport::default();
        let mut history = History::default();
        history.command_applied(1, 5, &write_call(1, 9), &written(3), &state, 0, &[], &mut report).expect("first");
        history.command_applied(2, 5, &write_call(1, 9), &written(3), &state, 0, &[], &mut report).expect("another replica");
        history.command_applied(1, 8, &write_call(1, 9), &written(3), &state, 0, &[], &mut report).expect("a retry answered alike");
        assert_eq!(report.duplicates_applied, 1);
        assert!(history.command_applied(1, 9, &write_call(1, 9), &written(4), &state, 0, &[], &mut report).is_err());
    }

    #[test]
    fn a_session_expired_while_its_client_counts_on_it_is_a_violation() {
        let state = StateMachine::new();
        let mut report = CellReport::default();
        let expire = |session| wire::Command {
            kind: Some(wire::command::Kind::EndSession(wire::EndSession { session_id: session, expired: true, ..Default::default() })),
            ..Default::default()
        };
        let done = wire::Outcome { result: Some(wire::outcome::Result::Done(wire::Done {})) };
        let clients = vec![Client::holding(0, 1, 1_000, vec![]), Client::holding(1, 2, 1_000, vec![])];
        let mut history = History::default();
        history.session_told(1, 0, 1_000).expect("told");
        history.session_told(2, 1, 1_000).expect("told");
        assert!(history.command_applied(1, 3, &expire(1), &done, &state, 999, &clients, &mut report).is_err());
        assert!(history.command_applied(1, 3, &expire(2), &done, &state, 1_000, &clients, &mut report).is_ok());
        // A creation answered after the session had already expired.
        assert!(history.session_told(2, 1, 1_001).is_err());
        // A master proposes an expiry only once its own copy ran out.
        assert!(history.expiry_proposed(0, 1, 1, Some(5_000), 5_000).is_ok());
        assert!(history.expiry_proposed(0, 1, 1, Some(5_001), 5_000).is_err());
        assert!(history.expiry_proposed(0, 1, 1, None, 5_000).is_err());
    }

    #[test]
    fn an_expiry_needs_a_full_lease_of_serving_before_it() {
        let view = |local_us, lease_valid_until_us| ReplicaView {
            id: 1,
            incarnation: 1,
            running: true,
            is_master: true,
            can_serve: true,
            applied: 0,
            master_hint: Some(1),
            local_us,
            turn_local_us: local_us,
            lease_valid_until_us,
        };
        let mut history = History::new(30_000);
        history.observe(0, &view(1_000, Some(10_000)));
        // Its core never noticed: the lease ran out at t=10ms all the same.
        history.observe(0, &view(20_000, Some(10_000)));
        history.observe(0, &view(21_000, Some(40_000)));
        let expired = history.expiry_proposed(0, 1, 7, Some(40_000), 45_000);
        assert!(expired.as_ref().is_err_and(|e| e.contains("could not serve from t=10000us to t=21000us")), "{expired:?}");
        assert!(history.expiry_proposed(0, 1, 7, Some(40_000), 52_000).is_ok(), "a full lease served since");
        // A gap too short for the duties to see is not held against it.
        history.observe(0, &view(39_000, Some(59_000)));
        history.observe(0, &view(60_000, Some(59_000)));
        history.observe(0, &view(60_500, Some(90_000)));
        assert!(history.expiry_proposed(0, 1, 7, Some(80_000), 80_000).is_ok());
        // An open gap: the lease ran out during a pause it has not noticed.
        history.observe(0, &view(95_000, Some(90_000)));
        assert!(history.expiry_proposed(0, 1, 7, Some(89_000), 89_500).is_ok(), "decided while it still served");
        assert!(history.expiry_proposed(0, 1, 7, Some(89_000), 95_000).is_err(), "decided after its lease ran out");
    }
}
