//! The client-facing `Cell` gRPC service.
//!
//! `FindMaster` and `Status` read the latest [`ReplicaStatus`] the driver
//! published, so every replica answers them, master or not, which is how a
//! client finds the master by asking any replica.
//!
//! Everything else is the Chubby API, and only the master answers it:
//! - a **write** is validated, proposed through the driver, and answered
//!   once its command is chosen and applied (the outcome comes from the
//!   state machine, and a retry with the same request number gets the same
//!   one);
//! - a **read** is answered from the master's applied state, only while it
//!   holds the master lease and has applied everything chosen before its
//!   mastership began (the [`read_gate`], by the replica's one rule
//!   [`crate::replica::status::may_serve`]).
//!
//! Any other replica answers `UNAVAILABLE` with the master's address in the
//! details. Handlers are thin: checks and error codes live in
//! [`gaios_state`] and [`crate::service::errors`].
//!
//! Every call that names a session must carry the session's secret
//! (`CreateSession` draws it: 16 bytes from the operating system); a missing
//! or wrong one is refused with `PERMISSION_DENIED` here, early, and again
//! when the command is applied.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gaios_paxos::{Ballot, MembershipChange, ReplicaId};
use gaios_proto::cell::v1 as api;
use gaios_proto::cell::v1::cell_server::{Cell, CellServer};
use gaios_proto::state::v1 as wire;
use gaios_state::limits::{CONTENTS_BYTES_MAX, IDENTITY_BYTES_MAX, SESSION_SECRET_BYTES};
use gaios_state::machine::Outcome;
use gaios_state::validate;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ops::config::{Groups, PeerSpec};
use crate::replica::status::{MemberView, ReplicaStatus, Role};
use crate::replica::transport::TransportStats;
use crate::shared::Shared;
use errors::{change_status, failure_status, propose_status, with_reason};
use keep_alive::KEEPALIVE_QUEUE_MAX;

mod endpoint;
pub mod errors;
pub mod keep_alive;
pub mod lock_wait;
mod read_gate;

pub use endpoint::CellEndpoint;

/// The largest message a client may send: a file's contents and the rest of
/// the request (paths are at most 1 KiB).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = CONTENTS_BYTES_MAX + (64 << 10);
/// The highest replica id a new member may take: ids are never reused, and
/// this keeps a careless (or hostile) request from using up the id space.
pub const REPLICA_ID_MAX: u64 = (1 << 32) - 1;

/// The largest message the service sends: contents and stat, or a long
/// directory listing.
pub const CLIENT_RESPONSE_BYTES_MAX: usize = 16 << 20;

/// What [`CellService::authorize`] does with a session the applied state
/// does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unknown {
    /// Refuse it if this replica may serve (it would know the session).
    Refuse,
    /// Leave it to `apply` (a retried `CloseSession` is answered as done).
    LeaveToApply,
}

/// Answers the `Cell` service; see the module docs.
#[derive(Debug, Clone)]
pub struct CellService {
    cell_id: String,
    /// This replica's incarnation, shown by `Status`.
    incarnation: NonZeroU64,
    members: Arc<[PeerSpec]>,
    status: watch::Receiver<ReplicaStatus>,
    stats: Arc<TransportStats>,
    shared: Arc<Shared>,
    /// Whether clients come over TLS: then every call has an identity (its
    /// certificate's CN) and a session serves only the one that created it.
    tls: bool,
    /// The groups for ACLs, the cell-admin group (which alone may change
    /// the members, with TLS) included.
    groups: Arc<Groups>,
}

/// Who is calling: the CN of the client's TLS certificate; `None` on an
/// `--insecure` cell.
pub(super) type Caller = Option<String>;

impl CellService {
    /// A service for the cell `cell_id` with `members`, answered by the
    /// replica of `incarnation`, reading `status` and the driver's `shared`
    /// state.
    pub fn new(
        cell_id: String,
        incarnation: NonZeroU64,
        members: Vec<PeerSpec>,
        status: watch::Receiver<ReplicaStatus>,
        stats: Arc<TransportStats>,
        shared: Arc<Shared>,
    ) -> Self {
        CellService { cell_id, incarnation, members: members.into(), status, stats, shared, tls: false, groups: Arc::default() }
    }

    /// The groups for ACLs, the cell-admin group included: a session
    /// records its identity's groups when this replica creates it.
    #[must_use]
    pub fn with_groups(mut self, groups: Groups) -> Self {
        self.groups = Arc::new(groups);
        self
    }

    /// Makes every call need a TLS client certificate that names an
    /// identity (see [`Self::caller`]).
    #[must_use]
    pub fn with_client_identities(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// The caller's identity: the subject CN of its TLS client certificate
    /// (the handshake already checked the certificate against the cell's
    /// CA). `UNAUTHENTICATED` if TLS is on and the certificate names none.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if !self.tls {
            return Ok(None);
        }
        let identity = request.peer_certs().and_then(|certificates| crate::ops::tls::client_identity(&certificates));
        match identity {
            Some(identity) if !identity.is_empty() && identity.len() <= IDENTITY_BYTES_MAX => Ok(Some(identity)),
            _ => Err(Status::unauthenticated(format!(
                "the client certificate names no identity: its subject needs a common name (CN) of 1 to {IDENTITY_BYTES_MAX} bytes"
            ))),
        }
    }

    /// Refuses a call on `session_id` from another identity than the one
    /// that created it (an identity never changes, so the applied state,
    /// however stale, judges right). `apply` checks only the secret, so a
    /// session this replica does not hold yet (a master just elected,
    /// still applying what its predecessor chose) must not get a command
    /// through: with TLS it waits until the replica may serve (then it has
    /// applied every session a client was told of, and the other checks
    /// refuse an unknown one).
    ///
    /// A session whose identity's groups in this replica's configuration
    /// are no longer the ones it was created with (an operator changed
    /// `--group` or `--admin`) is answered as ended (`SESSION_ENDED`): its
    /// KeepAlives are refused too, so it expires within a lease, and the
    /// client starts a new session judged by the new groups. So taking an
    /// identity out of a group (or out of the administrators) reaches its
    /// open sessions within a session lease.
    pub(super) fn check_owner(&self, caller: &Caller, session_id: u64) -> Result<(), Status> {
        // Whether the caller is the owner, and whether the session's groups
        // are still its identity's; `None` if the session is unknown.
        let judged = {
            let state = self.shared.state();
            state.session_owner(session_id).map(|owner| {
                let owns = owner == caller.as_deref().unwrap_or("");
                let groups_current = owner.is_empty() || state.session_groups(session_id).is_some_and(|groups| self.groups.are_those_of(owner, groups));
                (owns, groups_current)
            })
        };
        match judged {
            Some((false, _)) => Err(with_reason(
                tonic::Code::PermissionDenied,
                api::ErrorReason::SessionOwnerMismatch,
                format!("session {session_id} belongs to another identity than this client certificate's"),
            )),
            Some((true, false)) => Err(with_reason(
                tonic::Code::FailedPrecondition,
                api::ErrorReason::SessionEnded,
                format!("session {session_id} was created with other groups than its identity has now (--group, --admin): start a new session"),
            )),
            None if self.tls => self.read_gate(),
            _ => Ok(()),
        }
    }

    /// Who answers, and from which state: this replica, the master it
    /// follows (by ballot), and how far it has applied.
    pub(super) fn response_header(&self) -> api::ResponseHeader {
        let (id, master_ballot) = {
            let status = self.status.borrow();
            let ballot = match status.role {
                Role::Master => status.own_ballot.unwrap_or(status.promised),
                Role::Follower | Role::Candidate if status.master.is_some() => status.promised,
                Role::Follower | Role::Candidate => Ballot::ZERO,
            };
            (status.id, ballot)
        };
        api::ResponseHeader { cell_id: self.cell_id.clone(), replica_id: id, master_ballot: ballot(master_ballot), applied_slot: self.shared.applied() }
    }

    /// `message` with its header, as tonic's answer.
    #[allow(clippy::unnecessary_wraps)]
    fn answer<T: Answer>(&self, mut message: T) -> Result<Response<T>, Status> {
        message.set_header(self.response_header());
        Ok(Response::new(message))
    }

    /// Wraps the service for tonic with explicit message-size bounds (a
    /// larger request is refused with `RESOURCE_EXHAUSTED`, see
    /// [`CellEndpoint`]).
    pub fn into_server(self) -> CellEndpoint {
        CellEndpoint(
            CellServer::new(self)
                .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
        )
    }

    /// The client address of `id`: from the configuration in force, or the
    /// `--peer` flags.
    fn client_address(&self, id: Option<ReplicaId>) -> String {
        let Some(id) = id else { return String::new() };
        let status = self.status.borrow();
        if let Some(member) = status.members.iter().find(|member| member.id == id) {
            return member.client_address.clone();
        }
        drop(status);
        self.members.iter().find(|peer| peer.id == id).map(|peer| peer.client_address.to_string()).unwrap_or_default()
    }

    /// Proposes `kind` and returns its outcome, or the status of a failure.
    async fn propose(&self, kind: wire::command::Kind) -> Result<Outcome, Status> {
        let outcome = self.shared.propose(kind).await.map_err(|error| propose_status(&error, |id| self.client_address(id)))?;
        match &outcome.result {
            Some(wire::outcome::Result::Failure(failure)) => Err(failure_status(failure)),
            Some(_) => Ok(outcome),
            None => Err(Status::internal("the command had no outcome")),
        }
    }

    /// Refuses a call that names `session_id` without its secret, as early
    /// as this replica can tell: a secret of the wrong length, or one that
    /// differs from the session's in the applied state (a session's secret
    /// never changes, so a stale state cannot wrongly refuse).
    ///
    /// A session the applied state does not hold is refused here too
    /// (`SESSION_ENDED`, what `apply` would answer) when this replica may
    /// serve: such a master has applied every session a client was ever told
    /// of (the read gate's rule), so a call naming an ended or made-up
    /// session costs no slot. Otherwise, and for `CloseSession` (closing an
    /// ended session is answered as done), it is left to `apply` to judge.
    fn authorize(&self, caller: &Caller, session_id: u64, secret: &[u8], unknown: Unknown) -> Result<(), Status> {
        validate::session(session_id, secret).map_err(|invalid| failure_status(&invalid))?;
        self.check_owner(caller, session_id)?;
        match self.shared.state().authorize_session(session_id, secret) {
            Err(failure) if failure.code == tonic::Code::PermissionDenied as i32 => Err(failure_status(&failure)),
            Err(failure) if unknown == Unknown::Refuse && self.read_gate().is_ok() => Err(failure_status(&failure)),
            _ => Ok(()),
        }
    }

    /// Proposes a session's mutating call.
    async fn call(&self, caller: &Caller, header: Option<api::RequestHeader>, call: wire::session_call::Call) -> Result<Outcome, Status> {
        let header = header.ok_or_else(|| Status::invalid_argument("the request header is missing"))?;
        let call = wire::SessionCall {
            session_id: header.session_id,
            request_number: header.request_number,
            session_secret: header.session_secret,
            call: Some(call),
        };
        // The same checks `apply` makes, before the call costs a slot.
        validate::session_call(&call).map_err(|invalid| failure_status(&invalid))?;
        self.authorize(caller, call.session_id, &call.session_secret, Unknown::Refuse)?;
        self.propose(wire::command::Kind::Call(call)).await
    }
}

/// The answers of the `Cell` service: each carries a `ResponseHeader`.
pub(super) trait Answer {
    /// Sets the answer's header.
    fn set_header(&mut self, header: api::ResponseHeader);
}

macro_rules! answers {
    ($($answer:ty),* $(,)?) => {
        $(impl Answer for $answer {
            fn set_header(&mut self, header: api::ResponseHeader) {
                self.header = Some(header);
            }
        })*
    };
}

answers!(
    api::FindMasterResponse,
    api::StatusResponse,
    api::ChangeMembershipResponse,
    api::CreateSessionResponse,
    api::KeepAliveResponse,
    api::CloseSessionResponse,
    api::OpenResponse,
    api::CloseResponse,
    api::GetContentsAndStatResponse,
    api::GetStatResponse,
    api::ReadDirResponse,
    api::SetContentsResponse,
    api::DeleteResponse,
    api::AcquireResponse,
    api::ReleaseResponse,
    api::GetSequencerResponse,
    api::CheckSequencerResponse,
    api::SetSequencerResponse,
    api::GetAclResponse,
    api::SetAclResponse,
    api::WhoAmIResponse,
);

/// The configuration in force as the API shows it.
fn api_members(members: &[MemberView]) -> Vec<api::Member> {
    members
        .iter()
        .map(|member| api::Member {
            id: member.id,
            client_address: member.client_address.clone(),
            peer_address: member.peer_address.clone(),
            voter: member.voter,
            incarnation: member.incarnation,
            learned_through: member.learned_through,
        })
        .collect()
}

fn ballot(ballot: Ballot) -> Option<api::Ballot> {
    (ballot != Ballot::ZERO).then_some(api::Ballot { round: ballot.round, replica: ballot.replica })
}

fn handle_ref(handle: Option<api::HandleRef>) -> Result<api::HandleRef, Status> {
    let handle = handle.ok_or_else(|| Status::invalid_argument("the handle is missing"))?;
    validate::session(handle.session_id, &handle.session_secret)
        .and_then(|()| validate::handle(handle.handle))
        .map_err(|invalid| failure_status(&invalid))?;
    Ok(handle)
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

fn expect_done(outcome: Outcome) -> Result<(), Status> {
    match outcome.result {
        Some(wire::outcome::Result::Done(_)) => Ok(()),
        _ => Err(unexpected(&outcome)),
    }
}

fn acquired_sequencer(outcome: &Outcome) -> Option<api::Sequencer> {
    match &outcome.result {
        Some(wire::outcome::Result::Acquired(acquired)) => acquired.sequencer.clone(),
        _ => None,
    }
}

fn validate_acquire(request: &api::AcquireRequest) -> Result<(), Status> {
    validate::acquire(request).map(|_| ()).map_err(|invalid| failure_status(&invalid))
}

#[tonic::async_trait]
impl Cell for CellService {
    async fn find_master(
        &self,
        _request: Request<api::FindMasterRequest>,
    ) -> Result<Response<api::FindMasterResponse>, Status> {
        let status = self.status.borrow().clone();
        let master_ballot = match status.role {
            Role::Master => status.own_ballot.unwrap_or(status.promised),
            Role::Follower | Role::Candidate => status.promised,
        };
        self.answer(api::FindMasterResponse {
 header: None,
            master_id: status.master.unwrap_or(0),
            master_client_address: self.client_address(status.master),
            ballot: ballot(master_ballot),
            answered_by: status.id,
            members: api_members(&status.members),
            membership_slot: status.membership_slot,
        })
    }

    async fn status(&self, _request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let status = self.status.borrow().clone();
        let role = match status.role {
            Role::Follower => api::Role::Follower,
            Role::Candidate => api::Role::Candidate,
            Role::Master => api::Role::Master,
        };
        let (sessions, nodes, locks_held) = {
            let state = self.shared.state();
            (state.session_count() as u64, state.node_count() as u64, state.locks_held() as u64)
        };
        let lease_remaining_ms = status
            .lease_valid_until
            .map(|until| until.saturating_duration_since(Instant::now()).as_millis())
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(u64::MAX));
        self.answer(api::StatusResponse {
 header: None,
            id: status.id,
            role: role.into(),
            promised: ballot(status.promised),
            own_ballot: status.own_ballot.and_then(ballot),
            master_id: status.master.unwrap_or(0),
            master_client_address: self.client_address(status.master),
            chosen_through: status.chosen_through,
            applied: status.applied,
            log_start: status.log_start,
            lease_remaining_ms,
            members: api_members(&status.members),
            membership_slot: status.membership_slot,
            highest_member_id: status.highest_member_id,
            cell_id: self.cell_id.clone(),
            inbox_dropped: self.stats.inbox_dropped.load(Ordering::Relaxed),
            incarnation: self.incarnation.get(),
            peer_wrong_cell_dropped: self.stats.wrong_cell_dropped.load(Ordering::Relaxed),
            peer_wrong_incarnation_dropped: self.stats.wrong_incarnation_dropped.load(Ordering::Relaxed),
            peer_identity_dropped: self.stats.identity_dropped.load(Ordering::Relaxed),
            tls_handshakes_failed: self.stats.tls_handshakes_failed.load(Ordering::Relaxed),
            sessions,
            nodes,
            locks_held,
            snapshot_slot: status.snapshot_slot,
        })
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::ChangeMembershipResponse>, Status> {
        use api::change_membership_request::Change;
        let caller = self.caller(&request)?;
        if let Some(identity) = &caller
            && !self.groups.is_admin(identity)
        {
            return Err(with_reason(
                tonic::Code::PermissionDenied,
                api::ErrorReason::NotAnAdmin,
                format!("changing the members needs a cell administrator; {identity:?} is not one (see --admin)"),
            ));
        }
        let request = request.into_inner();
        let change = match request.change {
            Some(Change::AddLearner(learner)) => {
                if learner.id == 0 || learner.id > REPLICA_ID_MAX || learner.incarnation == 0 {
                    return Err(Status::invalid_argument(format!(
                        "a learner needs an id in 1..={REPLICA_ID_MAX} and a non-zero incarnation"
                    )));
                }
                for address in [&learner.peer_address, &learner.client_address] {
                    if address.is_empty() || address.len() > gaios_paxos::types::ADDRESS_BYTES_MAX {
                        return Err(Status::invalid_argument(format!(
                            "a learner's addresses must be 1 to {} bytes",
                            gaios_paxos::types::ADDRESS_BYTES_MAX
                        )));
                    }
                }
                MembershipChange::AddLearner(gaios_paxos::Member {
                    id: learner.id,
                    voter: false,
                    incarnation: learner.incarnation,
                    peer_address: learner.peer_address,
                    client_address: learner.client_address,
                })
            }
            Some(Change::Promote(0) | Change::Remove(0)) => return Err(Status::invalid_argument("replica id 0 is reserved")),
            Some(Change::Promote(id)) => MembershipChange::Promote(id),
            Some(Change::Remove(id)) => MembershipChange::Remove(id),
            None => return Err(Status::invalid_argument("no change given")),
        };
        let (membership, slot) = self
            .shared
            .change_membership(change, request.force)
            .await
            .map_err(|refusal| change_status(&refusal, |id| self.client_address(id)))?;
        let status = self.status.borrow().clone();
        let members = membership
            .members
            .iter()
            .map(|member| {
                let known = status.members.iter().find(|view| view.id == member.id);
                api::Member {
                    id: member.id,
                    client_address: known.map_or_else(|| member.client_address.clone(), |view| view.client_address.clone()),
                    peer_address: known.map_or_else(|| member.peer_address.clone(), |view| view.peer_address.clone()),
                    voter: member.voter,
                    incarnation: member.incarnation,
                    learned_through: None,
                }
            })
            .collect();
        self.answer(api::ChangeMembershipResponse { header: None, members, membership_slot: slot })
    }

    async fn create_session(
        &self,
        request: Request<api::CreateSessionRequest>,
    ) -> Result<Response<api::CreateSessionResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        validate::client_name(&request.client_name).map_err(|invalid| failure_status(&invalid))?;
        // Drawn here, on the master, and carried in the command, so applying
        // stays deterministic; only this call's answer hands it out.
        let mut secret = [0u8; SESSION_SECRET_BYTES];
        getrandom::fill(&mut secret)
            .map_err(|error| Status::internal(format!("cannot draw a session secret from the operating system: {error}")))?;
        let session_secret = bytes::Bytes::copy_from_slice(&secret);
        let groups = caller.as_deref().map(|identity| self.groups.of(identity)).unwrap_or_default();
        let create = wire::CreateSession {
            client_name: request.client_name,
            session_secret: session_secret.clone(),
            owner: caller.unwrap_or_default(),
            groups,
        };
        let outcome = self.propose(wire::command::Kind::CreateSession(create)).await?;
        let Some(wire::outcome::Result::SessionCreated(created)) = outcome.result else {
            return Err(unexpected(&outcome));
        };
        self.shared.leases().grant(created.session_id, Instant::now());
        self.answer(api::CreateSessionResponse {
 header: None,
            session_id: created.session_id,
            lease_ms: duration_ms(self.shared.session_lease),
            session_secret,
        })
    }

    type KeepAliveStream = ReceiverStream<Result<api::KeepAliveResponse, Status>>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<api::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let caller = self.caller(&request)?;
        let inbound = request.into_inner();
        let (outbound, stream) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        tokio::spawn(self.clone().keep_alive_loop(inbound, outbound, caller));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn close_session(
        &self,
        request: Request<api::CloseSessionRequest>,
    ) -> Result<Response<api::CloseSessionResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let session_id = request.session_id;
        self.authorize(&caller, session_id, &request.session_secret, Unknown::LeaveToApply)?;
        let end = wire::EndSession { session_id, expired: false, session_secret: request.session_secret };
        expect_done(self.propose(wire::command::Kind::EndSession(end)).await?)?;
        self.shared.leases().forget(session_id);
        self.answer(api::CloseSessionResponse::default())
    }

    async fn open(&self, request: Request<api::OpenRequest>) -> Result<Response<api::OpenResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        let outcome = self.call(&caller, header, wire::session_call::Call::Open(request)).await?;
        match outcome.result {
            Some(wire::outcome::Result::Opened(opened)) => self.answer(opened),
            _ => Err(unexpected(&outcome)),
        }
    }

    async fn close(&self, request: Request<api::CloseRequest>) -> Result<Response<api::CloseResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(&caller, header, wire::session_call::Call::Close(request)).await?)?;
        self.answer(api::CloseResponse::default())
    }

    async fn get_contents_and_stat(
        &self,
        request: Request<api::GetContentsAndStatRequest>,
    ) -> Result<Response<api::GetContentsAndStatResponse>, Status> {
        let caller = self.caller(&request)?;
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_owner(&caller, handle.session_id)?;
        self.read_gate()?;
        let (contents, stat) =
            self.shared.state().get_contents_and_stat(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        self.answer(api::GetContentsAndStatResponse { header: None, contents, stat: Some(stat) })
    }

    async fn get_stat(&self, request: Request<api::GetStatRequest>) -> Result<Response<api::GetStatResponse>, Status> {
        let caller = self.caller(&request)?;
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_owner(&caller, handle.session_id)?;
        self.read_gate()?;
        let stat = self.shared.state().get_stat(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        self.answer(api::GetStatResponse { header: None, stat: Some(stat) })
    }

    async fn read_dir(&self, request: Request<api::ReadDirRequest>) -> Result<Response<api::ReadDirResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let handle = handle_ref(request.handle)?;
        validate::read_dir_page(request.page_size, &request.page_token).map_err(|invalid| failure_status(&invalid))?;
        self.check_owner(&caller, handle.session_id)?;
        self.read_gate()?;
        let (names, stat, next_page_token) = self
            .shared
            .state()
            .read_dir(handle.session_id, &handle.session_secret, handle.handle, request.page_size, &request.page_token)
            .map_err(|f| failure_status(&f))?;
        self.answer(api::ReadDirResponse { header: None, names, stat: Some(stat), next_page_token })
    }

    async fn set_contents(
        &self,
        request: Request<api::SetContentsRequest>,
    ) -> Result<Response<api::SetContentsResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        let outcome = self.call(&caller, header, wire::session_call::Call::SetContents(request)).await?;
        match outcome.result {
            Some(wire::outcome::Result::Written(written)) => self.answer(written),
            _ => Err(unexpected(&outcome)),
        }
    }

    async fn delete(&self, request: Request<api::DeleteRequest>) -> Result<Response<api::DeleteResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(&caller, header, wire::session_call::Call::Delete(request)).await?)?;
        self.answer(api::DeleteResponse::default())
    }

    async fn acquire(&self, request: Request<api::AcquireRequest>) -> Result<Response<api::AcquireResponse>, Status> {
        let caller = self.caller(&request)?;
        self.acquire_waiting(&caller, request.into_inner()).await.and_then(|answer| self.answer(answer))
    }

    async fn try_acquire(&self, request: Request<api::AcquireRequest>) -> Result<Response<api::AcquireResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        validate_acquire(&request)?;
        let header = request.header.take();
        let outcome = self.call(&caller, header, wire::session_call::Call::TryAcquire(request)).await?;
        match acquired_sequencer(&outcome) {
            Some(sequencer) => self.answer(api::AcquireResponse { header: None, sequencer: Some(sequencer) }),
            None => Err(unexpected(&outcome)),
        }
    }

    async fn release(&self, request: Request<api::ReleaseRequest>) -> Result<Response<api::ReleaseResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(&caller, header, wire::session_call::Call::Release(request)).await?)?;
        self.answer(api::ReleaseResponse::default())
    }

    async fn get_sequencer(
        &self,
        request: Request<api::GetSequencerRequest>,
    ) -> Result<Response<api::GetSequencerResponse>, Status> {
        let caller = self.caller(&request)?;
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_owner(&caller, handle.session_id)?;
        self.read_gate()?;
        let sequencer =
            self.shared.state().get_sequencer(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        self.answer(api::GetSequencerResponse { header: None, sequencer: Some(sequencer) })
    }

    async fn check_sequencer(
        &self,
        request: Request<api::CheckSequencerRequest>,
    ) -> Result<Response<api::CheckSequencerResponse>, Status> {
        let sequencer = request.into_inner().sequencer;
        validate::sequencer(sequencer.as_ref()).map_err(|invalid| failure_status(&invalid))?;
        let sequencer = sequencer.unwrap_or_default();
        self.read_gate()?;
        self.answer(self.shared.state().check_sequencer(&sequencer))
    }

    async fn set_sequencer(
        &self,
        request: Request<api::SetSequencerRequest>,
    ) -> Result<Response<api::SetSequencerResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(&caller, header, wire::session_call::Call::SetSequencer(request)).await?)?;
        self.answer(api::SetSequencerResponse::default())
    }

    async fn get_acl(&self, request: Request<api::GetAclRequest>) -> Result<Response<api::GetAclResponse>, Status> {
        let caller = self.caller(&request)?;
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_owner(&caller, handle.session_id)?;
        self.read_gate()?;
        let (acl, stat) =
            self.shared.state().get_acl(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        self.answer(api::GetAclResponse { header: None, acl: Some(acl), stat: Some(stat) })
    }

    async fn set_acl(&self, request: Request<api::SetAclRequest>) -> Result<Response<api::SetAclResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut request = request.into_inner();
        let header = request.header.take();
        let outcome = self.call(&caller, header, wire::session_call::Call::SetAcl(request)).await?;
        match outcome.result {
            Some(wire::outcome::Result::AclSet(set)) => self.answer(set),
            _ => Err(unexpected(&outcome)),
        }
    }

    async fn who_am_i(&self, request: Request<api::WhoAmIRequest>) -> Result<Response<api::WhoAmIResponse>, Status> {
        let identity = self.caller(&request)?.unwrap_or_default();
        let groups = if identity.is_empty() { Vec::new() } else { self.groups.of(&identity) };
        self.answer(api::WhoAmIResponse { header: None, identity, groups, tls: self.tls })
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaios_state::machine::StateMachine;

    fn status(role: Role, lease_valid_until: Option<Instant>) -> ReplicaStatus {
        ReplicaStatus {
            id: 1,
            role,
            promised: Ballot::ZERO,
            own_ballot: None,
            master: None,
            chosen_through: 3,
            applied: 3,
            log_start: 0,
            installed_snapshot: None,
            lease_valid_until,
            read_barrier: Some(1),
            snapshot_slot: 0,
            members: Arc::default(),
            membership_slot: 0,
            highest_member_id: 0,
        }
    }

    fn apply(state: &mut StateMachine, kind: wire::command::Kind) -> Outcome {
        state.apply(&wire::Command { now_ms: 1_000, lock_clock_ms: 1_000, kind: Some(kind), ..Default::default() }).outcome
    }

    /// A state in which session 1's handle 1 holds the lock on `/lock`.
    fn state_with_a_holding() -> (StateMachine, u64, bytes::Bytes, u64) {
        use wire::command::Kind;
        use wire::session_call::Call;
        let mut state = StateMachine::new();
        let secret = bytes::Bytes::from_static(b"0123456789abcdef");
        apply(&mut state, Kind::CreateSession(wire::CreateSession { client_name: "t".into(), session_secret: secret.clone(), ..Default::default() }));
        let call = |number, call| {
            Kind::Call(wire::SessionCall { session_id: 1, request_number: number, session_secret: secret.clone(), call: Some(call) })
        };
        let open = api::OpenRequest { path: "/lock".into(), create: true, ..Default::default() };
        apply(&mut state, call(1, Call::Open(open)));
        let acquire = api::AcquireRequest { handle: 1, mode: api::LockMode::Exclusive as i32, ..Default::default() };
        apply(&mut state, call(2, Call::TryAcquire(acquire)));
        assert!(state.holding(1, 1).is_some());
        (state, 1, secret, 1)
    }

    fn service(state: StateMachine, status: ReplicaStatus) -> (CellService, watch::Sender<ReplicaStatus>, mpsc::Receiver<crate::shared::Proposal>) {
        let (shared, proposals, _changes) = Shared::new(state, Duration::from_secs(10));
        let (sender, receiver) = watch::channel(status);
        let service = CellService::new("test".into(), NonZeroU64::MIN, Vec::new(), receiver, Arc::new(TransportStats::default()), Arc::new(shared));
        (service, sender, proposals)
    }

    /// A master whose lease ran out may have been deposed, and the lock it
    /// sees in its applied state may have gone to someone else since: it
    /// must check that it can serve before it reads the state.
    #[tokio::test]
    async fn a_master_that_cannot_serve_hands_out_no_lock_from_its_state() {
        let (state, session, secret, handle) = state_with_a_holding();
        let lapsed = Instant::now().checked_sub(Duration::from_millis(1));
        let (service, _status, _proposals) = service(state, status(Role::Master, lapsed));
        let deadline = Instant::now() + Duration::from_millis(50);
        let wait = wire::CancelWait { session_id: session, handle, session_secret: secret, request_number: 3, keep_granted: true };
        let result = service.wait_for_lock(&wait, deadline).await;
        let refused = result.expect_err("a master without a lease must not answer from its state");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }

    /// A master that may serve knows every session a client was told of:
    /// a call naming another is refused before it costs a slot. A replica
    /// that cannot serve leaves it to `apply`, and so does a close.
    #[tokio::test]
    async fn a_serving_master_refuses_an_unknown_session_without_a_slot() {
        let (state, session, secret, _) = state_with_a_holding();
        let valid = Instant::now().checked_add(Duration::from_secs(60));
        let (service, status_sender, mut proposals) = service(state, status(Role::Master, valid));
        let refused = service.authorize(&None, session + 41, &secret, Unknown::Refuse).expect_err("an unknown session");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let reason = tonic_types::StatusExt::get_error_details(&refused).error_info().map(|info| info.reason.clone());
        assert_eq!(reason.as_deref(), Some("SESSION_ENDED"));
        service.authorize(&None, session, &secret, Unknown::Refuse).expect("the session it holds");
        service.authorize(&None, session + 41, &secret, Unknown::LeaveToApply).expect("a close is left to apply");
        status_sender.send_replace(status(Role::Follower, valid));
        service.authorize(&None, session + 41, &secret, Unknown::Refuse).expect("a replica that cannot serve leaves it to apply");
        assert!(proposals.try_recv().is_err(), "nothing was proposed");
    }

    /// With TLS, `apply` cannot tell whose a session is: a replica that
    /// does not hold the session yet (a master still applying what its
    /// predecessor chose) must not propose for it, even for a close.
    #[tokio::test]
    async fn with_tls_a_session_not_applied_yet_waits_for_the_read_gate() {
        let (state, session, secret, _) = state_with_a_holding();
        let valid = Instant::now().checked_add(Duration::from_secs(60));
        let (service, status_sender, mut proposals) = service(state, status(Role::Master, valid));
        let service = service.with_client_identities(true);
        let bob = Some("bob".to_string());
        status_sender.send_replace(status(Role::Follower, valid));
        for unknown in [Unknown::Refuse, Unknown::LeaveToApply] {
            let refused = service.authorize(&bob, session + 41, &secret, unknown).expect_err("an unknown session while not serving");
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        }
        // A session it holds is judged by its owner (empty here: made
        // without TLS), whatever the gate.
        let refused = service.authorize(&bob, session, &secret, Unknown::Refuse).expect_err("bob on an ownerless session");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(proposals.try_recv().is_err(), "nothing was proposed");
    }

    /// The limits table of `cell.proto` says what the code enforces: each
    /// row's number is its constant's value, and every constant has a row.
    #[test]
    fn the_limits_in_cell_proto_are_the_codes() {
        use gaios_state::limits::*;
        let constants: [(&str, u64); 21] = [
            ("CLIENT_MESSAGE_BYTES_MAX", CLIENT_MESSAGE_BYTES_MAX as u64),
            ("CLIENT_RESPONSE_BYTES_MAX", CLIENT_RESPONSE_BYTES_MAX as u64),
            ("CONTENTS_BYTES_MAX", CONTENTS_BYTES_MAX as u64),
            ("PATH_BYTES_MAX", PATH_BYTES_MAX as u64),
            ("COMPONENT_BYTES_MAX", COMPONENT_BYTES_MAX as u64),
            ("PATH_DEPTH_MAX", PATH_DEPTH_MAX as u64),
            ("CLIENT_NAME_BYTES_MAX", CLIENT_NAME_BYTES_MAX as u64),
            ("IDENTITY_BYTES_MAX", IDENTITY_BYTES_MAX as u64),
            ("ACL_ENTRIES_MAX", ACL_ENTRIES_MAX as u64),
            ("ACL_BYTES_MAX", ACL_BYTES_MAX as u64),
            ("READ_DIR_PAGE_MAX", READ_DIR_PAGE_MAX as u64),
            ("SESSIONS_MAX", SESSIONS_MAX as u64),
            ("HANDLES_PER_SESSION_MAX", HANDLES_PER_SESSION_MAX as u64),
            ("HANDLES_MAX", HANDLES_MAX as u64),
            ("NODES_MAX", NODES_MAX as u64),
            ("WAITERS_PER_LOCK_MAX", WAITERS_PER_LOCK_MAX as u64),
            ("ANSWERS_PER_SESSION_MAX", ANSWERS_PER_SESSION_MAX as u64),
            ("EVENTS_QUEUED_PER_SESSION_MAX", EVENTS_QUEUED_PER_SESSION_MAX as u64),
            ("ACQUIRE_WAIT_MS_MAX", ACQUIRE_WAIT_MS_MAX),
            ("LOCK_DELAY_MS_MAX", LOCK_DELAY_MS_MAX),
            ("STATE_BYTES_MAX", STATE_BYTES_MAX as u64),
        ];
        let proto = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/gaios/cell/v1/cell.proto"));
        let mut rows = std::collections::BTreeMap::new();
        for line in proto.lines() {
            let cells: Vec<&str> = line.trim_start_matches("//").split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            if let [_, limit, constant] = cells.as_slice()
                && constant.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && let Some(number) = limit.split_whitespace().next().and_then(|n| n.parse::<u64>().ok())
            {
                rows.insert(constant.to_string(), number);
            }
        }
        for (name, value) in constants {
            assert_eq!(rows.get(name), Some(&value), "cell.proto's limits table, row {name}");
        }
        assert_eq!(rows.len(), constants.len(), "a row names no constant this test knows: {rows:?}");
    }

    /// A session is judged by the groups it was created with; once the
    /// replica's configuration gives its identity other groups (an operator
    /// took it out of one), its calls and KeepAlives are answered as
    /// ended, so it expires within a lease.
    #[tokio::test]
    async fn a_session_whose_identitys_groups_changed_is_answered_as_ended() {
        use wire::command::Kind;
        let mut state = StateMachine::new();
        for (secret, groups) in [(*b"0123456789abcdef", vec![]), (*b"fedcba9876543210", vec!["ops".to_string()])] {
            let create = wire::CreateSession { client_name: "t".into(), session_secret: bytes::Bytes::copy_from_slice(&secret), owner: "alice".into(), groups };
            apply(&mut state, Kind::CreateSession(create));
        }
        let valid = Instant::now().checked_add(Duration::from_secs(60));
        let (service, _status, _proposals) = service(state, status(Role::Master, valid));
        let groups = Groups::from_flags(&["ops=alice".to_string()], &[]).expect("groups");
        let service = service.with_client_identities(true).with_groups(groups);
        let alice = Some("alice".to_string());
        let refused = service.check_owner(&alice, 1).expect_err("a session created before alice joined ops");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let reason = tonic_types::StatusExt::get_error_details(&refused).error_info().map(|info| info.reason.clone());
        assert_eq!(reason.as_deref(), Some("SESSION_ENDED"));
        service.check_owner(&alice, 2).expect("a session with alice's groups of now");
    }

    /// A waiting `Acquire` whose handle no longer waits (and holds nothing)
    /// is told so with a reason a program can match on, `WAIT_ENDED`; a
    /// handle that holds the lock gets its sequencer.
    #[tokio::test]
    async fn an_acquire_whose_wait_ended_is_told_why() {
        let (state, session, secret, handle) = state_with_a_holding();
        let valid = Instant::now().checked_add(Duration::from_secs(60));
        let (service, _status, _proposals) = service(state, status(Role::Master, valid));
        let deadline = Instant::now() + Duration::from_secs(5);
        let wait = |handle| wire::CancelWait { session_id: session, handle, session_secret: secret.clone(), ..Default::default() };
        let held = service.wait_for_lock(&wait(handle), deadline).await.expect("the holder gets its sequencer");
        assert!(held.sequencer.is_some());
        let ended = service.wait_for_lock(&wait(handle + 1), deadline).await.expect_err("a handle that does not wait");
        assert_eq!(ended.code(), tonic::Code::FailedPrecondition, "{ended:?}");
        let reason = tonic_types::StatusExt::get_error_details(&ended).error_info().map(|info| info.reason.clone());
        assert_eq!(reason.as_deref(), Some("WAIT_ENDED"), "{ended:?}");
    }

    /// Once a session's lease ran out at the master (which proposes its
    /// expiry), a late KeepAlive must not renew it: the client would be told
    /// it is safe while the expiry commits and its lock goes to another.
    #[tokio::test]
    async fn a_keep_alive_after_the_lease_ran_out_is_refused_not_renewed() {
        let (state, session, secret, _) = state_with_a_holding();
        let valid = Instant::now().checked_add(Duration::from_secs(60));
        let (service, _status, _proposals) = service(state, status(Role::Master, valid));
        let request = api::KeepAliveRequest { session_id: session, acknowledged_event: 0, session_secret: secret };
        let ran_out = Instant::now().checked_sub(Duration::from_millis(1)).expect("an instant in the past");
        service.shared.leases().grant(session, ran_out - Duration::from_secs(10));
        let refused = service.keep_alive_once(&mut None, &request, &None).expect_err("a lease that ran out was renewed");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let reason = tonic_types::StatusExt::get_error_details(&refused).error_info().map(|info| info.reason.clone());
        assert_eq!(reason.as_deref(), Some("SESSION_ENDED"), "the client must read it as the end: {refused:?}");
        assert_eq!(service.shared.leases().deadline(session), Some(ran_out), "the deadline moved");
        // A lease still running is renewed.
        let running = Instant::now() + Duration::from_millis(500);
        service.shared.leases().grant(session, running - Duration::from_secs(10));
        service.keep_alive_once(&mut None, &request, &None).expect("a running lease is renewed");
        assert!(service.shared.leases().deadline(session).is_some_and(|deadline| deadline > running));
    }
}
