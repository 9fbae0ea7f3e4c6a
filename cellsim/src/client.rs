//! Simulated clients, as the client library behaves: one session each,
//! kept alive by KeepAlives to the master (a client counts on its session
//! only while its own lease runs: from the moment it *sent* the KeepAlive
//! the master last answered, a lease shortened by the clock-drift bound);
//! one call at a time, retried with the **same request number** after a
//! lost answer or a change of master; files opened, locks taken (exclusive
//! or shared, `TryAcquire` or a waiting `Acquire`) and released, writes
//! with compare-and-set, sequencer checks, sessions closed, and pauses past
//! the lease.

use std::collections::BTreeMap;

use bytes::Bytes;
use gaios_paxos::config::CLOCK_DRIFT_PPM_MAX;
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;

use crate::{Answer, Cell, Event, Request};

/// Files the clients share.
pub const FILES: usize = 3;
/// A call not answered within this long is sent again (µs).
pub const CALL_TIMEOUT_US: u64 = 20_000;

/// A session as its client knows it.
#[derive(Clone, Debug)]
pub struct Session {
    /// Its id.
    pub id: u64,
    /// Its secret.
    pub secret: Bytes,
    /// Until when the client counts on it (simulated µs).
    pub lease_until_us: u64,
    /// The next request number.
    next_request: u64,
    /// Open handles by file: (handle, last content generation seen).
    handles: BTreeMap<usize, (u64, Option<u64>)>,
    /// Locks this client was told it holds, by file.
    pub holding: BTreeMap<usize, api::Sequencer>,
}

/// A call in flight.
#[derive(Clone, Debug)]
struct Call {
    attempt: u64,
    /// When this attempt was sent (µs).
    sent_us: u64,
    /// When to send it again if no answer came (µs).
    resend_at_us: u64,
    request: Request,
    /// The file it concerns, if any.
    file: Option<usize>,
}

/// One simulated client.
#[derive(Clone, Debug)]
pub struct Client {
    index: usize,
    /// Its session, once told.
    pub session: Option<Session>,
    call: Option<Call>,
    keep_alive: Option<Call>,
    next_keep_alive_us: u64,
    /// The replica it believes is master.
    target: usize,
    replicas: usize,
    paused_until_us: u64,
    /// The target was chosen by a redirect: a retry goes there.
    redirected: bool,
    next_attempt: u64,
    sessions_opened: u64,
}

impl Client {
    /// Client `index` of a cell of `replicas` replicas.
    pub fn new(index: usize, replicas: usize) -> Client {
        Client {
            index,
            session: None,
            call: None,
            keep_alive: None,
            next_keep_alive_us: 0,
            target: index % replicas,
            replicas,
            paused_until_us: 0,
            redirected: false,
            next_attempt: 1,
            sessions_opened: 0,
        }
    }

    /// After a refusal: the replica the answer names becomes the target,
    /// or else the next one.
    fn redirect(&mut self, answer: &Answer) {
        self.target = match answer {
            Answer::NotMaster(Some(master)) => *master,
            _ => (self.target + 1) % self.replicas,
        };
        self.redirected = true;
    }

    /// A client told it owns `session` until `lease_until_us` and holds
    /// `holding`, for the checkers' tests.
    #[cfg(test)]
    pub(crate) fn holding(index: usize, session: u64, lease_until_us: u64, holding: Vec<api::Sequencer>) -> Client {
        let mut client = Client::new(index, 5);
        client.session = Some(Session {
            id: session,
            secret: Bytes::new(),
            lease_until_us,
            next_request: 1,
            handles: BTreeMap::new(),
            holding: holding.into_iter().enumerate().collect(),
        });
        client
    }

    /// Whether the client counts on its session at `now_us`.
    pub fn lease_valid(&self, now_us: u64) -> bool {
        self.session.as_ref().is_some_and(|s| now_us < s.lease_until_us)
    }

    /// The locks this client believes it holds at `now_us` (none once its
    /// lease ran out), by path.
    pub fn believed_locks(&self, now_us: u64) -> impl Iterator<Item = &api::Sequencer> {
        self.session.iter().filter(move |_| self.lease_valid(now_us)).flat_map(|s| s.holding.values())
    }
}

/// The lease a client counts on from a KeepAlive (or a `CreateSession`)
/// sent at `sent_us`: the master's lease, shortened by the clock-drift
/// bound, since a master whose clock runs fast ends it early. Simulated
/// clients read exact simulated time, so only the master's rate counts:
/// `lease × (1 − ρ)`; the client library (`client/src/lease.rs`) also
/// allows for its own clock running slow, `lease × (1 − ρ) / (1 + ρ)`.
fn lease_end_us(sent_us: u64, lease_us: u64) -> u64 {
    sent_us + lease_us - lease_us * CLOCK_DRIFT_PPM_MAX / 1_000_000 - 100
}

fn path(file: usize) -> String {
    format!("/f{file}")
}

impl Cell {
    fn send_call(&mut self, now_us: u64, client: usize, request: Request, file: Option<usize>, keep_alive: bool) {
        let c = &mut self.clients[client];
        let attempt = c.next_attempt;
        c.next_attempt += 1;
        let timeout = if keep_alive { CALL_TIMEOUT_US / 4 } else { CALL_TIMEOUT_US };
        let call = Call { attempt, sent_us: now_us, resend_at_us: now_us + timeout, request: request.clone(), file };
        if keep_alive {
            c.keep_alive = Some(call);
        } else {
            c.call = Some(call);
        }
        let node = c.target;
        self.send(now_us, Event::Request { node, client, attempt, request });
    }

    /// Sends the outstanding call again (same request, same request
    /// number), perhaps to another replica.
    fn retry(&mut self, now_us: u64, client: usize, keep_alive: bool, other_replica: bool) {
        let c = &mut self.clients[client];
        if other_replica && !std::mem::take(&mut c.redirected) {
            c.target = (c.target + 1 + self.rng.range(0, c.replicas as u64 - 2) as usize) % c.replicas;
        }
        let call = if keep_alive { c.keep_alive.take() } else { c.call.take() };
        let Some(call) = call else { return };
        if !keep_alive {
            self.report.retries += 1;
        }
        self.send_call(now_us, client, call.request, call.file, keep_alive);
    }

    /// A client acts: retries what timed out, keeps its session alive, and
    /// otherwise starts a new call.
    pub(crate) fn wake(&mut self, now_us: u64, client: usize) {
        let lease_us = self.session_lease_us;
        if now_us < self.clients[client].paused_until_us {
            return;
        }
        if self.rng.chance(1, 400) && self.clients[client].session.is_some() {
            // A pause past the lease (a stalled process, a long GC).
            let length = self.rng.range(lease_us / 2, 2 * lease_us);
            self.clients[client].paused_until_us = now_us + length;
            self.report.client_pauses += 1;
            return;
        }
        let c = &self.clients[client];
        if c.keep_alive.as_ref().is_some_and(|k| now_us >= k.resend_at_us) {
            self.retry(now_us, client, true, true);
        } else if c.keep_alive.is_none() && c.session.is_some() && now_us >= c.next_keep_alive_us {
            let session = c.session.as_ref().map(|s| (s.id, s.secret.clone()));
            if let Some((session, secret)) = session {
                self.send_call(now_us, client, Request::KeepAlive { session, secret }, None, true);
            }
        }
        let c = &self.clients[client];
        if c.call.as_ref().is_some_and(|call| now_us >= call.resend_at_us) {
            self.retry(now_us, client, false, true);
            return;
        }
        if c.call.is_some() {
            return;
        }
        let Some(session) = c.session.clone() else {
            let name = format!("client-{}-{}", self.clients[client].index, self.clients[client].sessions_opened);
            let secret = Bytes::from(self.rng.next_u64().to_be_bytes().repeat(2));
            // Each client has an identity, and the even ones are in group
            // `ops`, which some files' ACLs let alone write.
            let index = self.clients[client].index;
            let groups = if index.is_multiple_of(2) { vec![OPS_GROUP.to_string()] } else { Vec::new() };
            let create = wire::CreateSession { client_name: name, session_secret: secret, owner: format!("client-{index}"), groups };
            self.send_call(now_us, client, Request::Propose(wire::command::Kind::CreateSession(create)), None, false);
            return;
        };
        if !self.clients[client].lease_valid(now_us) {
            // In jeopardy: only KeepAlives until the master answers.
            return;
        }
        self.new_call(now_us, client, &session);
    }

    /// A client in a live session starts a new call on one of the files:
    /// opens it, takes or gives up its lock, checks a sequencer, writes, or
    /// closes the session.
    fn new_call(&mut self, now_us: u64, client: usize, session: &Session) {
        let file = self.rng.range(0, FILES as u64 - 1) as usize;
        let handle = session.handles.get(&file).copied();
        let held = session.holding.contains_key(&file);
        let pick = self.rng.range(0, 99);
        let call = |call: wire::session_call::Call, number: u64| {
            wire::command::Kind::Call(wire::SessionCall {
                session_id: session.id,
                request_number: number,
                session_secret: session.secret.clone(),
                call: Some(call),
            })
        };
        let number = session.next_request;
        use wire::session_call::Call as C;
        let kind = match (handle, pick) {
            (None, _) => {
                let lock_delay_ms = [0, 5, 20][self.rng.range(0, 2) as usize];
                let open = api::OpenRequest {
                    path: path(file),
                    create: true,
                    kind: api::NodeKind::File as i32,
                    event_mask: gaios_state::limits::EVENT_MASK_ALL,
                    lock_delay_ms,
                    ..Default::default()
                };
                call(C::Open(open), number)
            }
            (Some(_), 0..=4) => {
                // Anyone's sequencer, perhaps long stale.
                if let Some(sequencer) = self.history.some_sequencer(&mut self.rng) {
                    self.send_call(now_us, client, Request::CheckSequencer(sequencer), None, false);
                }
                return;
            }
            (Some((handle, _)), 0..=39) if !held => {
                let mode = if self.rng.chance(2, 3) { api::LockMode::Exclusive } else { api::LockMode::Shared };
                let acquire = api::AcquireRequest { handle, mode: mode as i32, wait_ms: self.rng.range(2, 40), ..Default::default() };
                if self.rng.chance(1, 2) { call(C::TryAcquire(acquire), number) } else { call(C::Acquire(acquire), number) }
            }
            (Some((handle, _)), 0..=59) if held => {
                // The client stops counting on the lock once it asks to give it up.
                if let Some(s) = self.clients[client].session.as_mut() {
                    s.holding.remove(&file);
                }
                call(C::Release(api::ReleaseRequest { handle, ..Default::default() }), number)
            }
            (Some((_, _)), 60..=64) => {
                if let Some(sequencer) = session.holding.get(&file).cloned() {
                    self.send_call(now_us, client, Request::CheckSequencer(sequencer), None, false);
                }
                return;
            }
            (Some((handle, generation)), 65..=97) => {
                let contents = Bytes::from(format!("{}:{number}", self.clients[client].index));
                let if_content_generation = if self.rng.chance(3, 4) { generation } else { None };
                call(C::SetContents(api::SetContentsRequest { handle, contents, if_content_generation, ..Default::default() }), number)
            }
            (Some((handle, _)), 98) => {
                // Anyone may change a file's ACL (`*` in change-ACL): to
                // open, or to writes (and so locks) for group ops alone.
                let acl = if self.rng.chance(1, 2) { open_acl() } else { api::Acl { write: vec![format!("group:{OPS_GROUP}")], ..open_acl() } };
                call(C::SetAcl(api::SetAclRequest { handle, acl: Some(acl), ..Default::default() }), number)
            }
            (Some(_), 99) => {
                // Closing: nothing of the session counts any more.
                let close = wire::EndSession { session_id: session.id, expired: false, session_secret: session.secret.clone() };
                self.clients[client].session = None;
                self.clients[client].keep_alive = None;
                self.send_call(now_us, client, Request::Propose(wire::command::Kind::EndSession(close)), None, false);
                return;
            }
            _ => return,
        };
        if let Some(s) = self.clients[client].session.as_mut() {
            s.next_request += 1;
        }
        self.send_call(now_us, client, Request::Propose(kind), Some(file), false);
    }

    /// A client hears an answer.
    pub(crate) fn hear(&mut self, now_us: u64, client: usize, attempt: u64, answer: Answer) -> Result<(), String> {
        if self.clients[client].keep_alive.as_ref().is_some_and(|k| k.attempt == attempt) {
            self.hear_keep_alive(now_us, client, answer);
            return Ok(());
        }
        let Some(call) = self.clients[client].call.clone().filter(|call| call.attempt == attempt) else {
            // An answer to an attempt given up: the retry gets its own.
            return Ok(());
        };
        let outcome = match answer {
            Answer::NotMaster(_) | Answer::Indeterminate => {
                // The master it names, or another replica, soon, with the
                // same request number.
                let backoff = self.rng.range(300, 2_000);
                self.clients[client].call = Some(Call { resend_at_us: now_us + backoff, ..call });
                self.clients[client].redirect(&answer);
                return Ok(());
            }
            Answer::KeepAlive(_) => return Ok(()),
            Answer::Sequencer(_) => {
                self.clients[client].call = None;
                return Ok(());
            }
            Answer::Outcome(outcome) => outcome,
        };
        self.clients[client].call = None;
        self.take_outcome(now_us, client, &call, outcome)
    }

    /// A client hears the answer to its KeepAlive.
    fn hear_keep_alive(&mut self, now_us: u64, client: usize, answer: Answer) {
        let lease_us = self.session_lease_us;
        let Some(call) = self.clients[client].keep_alive.take() else { return };
        let c = &mut self.clients[client];
        match answer {
            Answer::KeepAlive(true) => {
                if let Some(session) = c.session.as_mut() {
                    session.lease_until_us = session.lease_until_us.max(lease_end_us(call.sent_us, lease_us));
                }
                c.next_keep_alive_us = now_us + lease_us / 5;
            }
            Answer::KeepAlive(false) => {
                // The session ended: everything it held is gone.
                c.session = None;
                c.call = None;
            }
            other => {
                // Not the master: ask the one it names, or another, soon.
                let backoff = self.rng.range(300, 2_000);
                c.keep_alive = Some(Call { resend_at_us: now_us + backoff, ..call });
                c.redirect(&other);
            }
        }
    }

    /// A client takes the outcome of its call: notes its session, handles,
    /// locks and generations, and tells the checker what it was told.
    fn take_outcome(&mut self, now_us: u64, client: usize, call: &Call, outcome: wire::Outcome) -> Result<(), String> {
        let lease_us = self.session_lease_us;
        use wire::outcome::Result as R;
        match (&call.request, outcome.result) {
            (Request::Propose(wire::command::Kind::CreateSession(create)), Some(R::SessionCreated(created))) => {
                let lease_until_us = lease_end_us(call.sent_us, lease_us);
                self.history.session_told(created.session_id, client, lease_until_us)?;
                let c = &mut self.clients[client];
                c.sessions_opened += 1;
                c.next_keep_alive_us = now_us + lease_us / 5;
                c.session = Some(Session {
                    id: created.session_id,
                    secret: create.session_secret.clone(),
                    lease_until_us,
                    next_request: 1,
                    handles: BTreeMap::new(),
                    holding: BTreeMap::new(),
                });
                self.report.sessions_created += 1;
            }
            (_, Some(R::Opened(opened))) => {
                if let (Some(file), Some(session)) = (call.file, self.clients[client].session.as_mut()) {
                    session.handles.insert(file, (opened.handle, opened.stat.map(|s| s.content_generation)));
                }
            }
            (_, Some(R::Written(written))) => {
                self.report.writes += 1;
                if let (Some(file), Some(session)) = (call.file, self.clients[client].session.as_mut())
                    && let Some(handle) = session.handles.get_mut(&file)
                {
                    handle.1 = written.stat.map(|s| s.content_generation);
                }
            }
            (_, Some(R::Acquired(acquired))) => {
                let Some(sequencer) = acquired.sequencer else { return Err("an Acquired outcome without a sequencer".into()) };
                if self.clients[client].lease_valid(now_us) {
                    self.history.lock_told(client, &sequencer, now_us, &self.clients)?;
                    self.report.locks_granted += 1;
                    if let (Some(file), Some(session)) = (call.file, self.clients[client].session.as_mut()) {
                        session.holding.insert(file, sequencer);
                    }
                }
            }
            (_, Some(R::AclSet(_))) => self.report.acl_changes += 1,
            (_, Some(R::Failure(failure))) => {
                let reason = api::ErrorReason::try_from(failure.reason).unwrap_or_default();
                match reason {
                    api::ErrorReason::AclDenied => self.report.acl_denials += 1,
                    api::ErrorReason::SessionEnded => self.clients[client].session = None,
                    api::ErrorReason::HandleInvalid => {
                        if let (Some(file), Some(session)) = (call.file, self.clients[client].session.as_mut()) {
                            session.handles.remove(&file);
                        }
                    }
                    api::ErrorReason::GenerationMismatch => {
                        if let (Some(file), Some(session)) = (call.file, self.clients[client].session.as_mut())
                            && let Some(handle) = session.handles.get_mut(&file)
                        {
                            handle.1 = None;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The group the even clients are in.
const OPS_GROUP: &str = "ops";

/// An ACL with `*` in every list.
fn open_acl() -> api::Acl {
    let anyone = vec!["*".to_string()];
    api::Acl { read: anyone.clone(), write: anyone.clone(), change_acl: anyone }
}
