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
//!   mastership began ([`ReplicaStatus::can_serve_reads`]).
//!
//! Any other replica answers `UNAVAILABLE` with the master's address in the
//! details. Handlers are thin: checks and error codes live in
//! [`gaios_state`] and [`crate::errors`].
//!
//! Every call that names a session must carry the session's secret
//! (`CreateSession` draws it: 16 bytes from the operating system); a missing
//! or wrong one is refused with `PERMISSION_DENIED` here, early, and again
//! when the command is applied.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gaios_paxos::{Ballot, ReplicaId};
use gaios_proto::cell::v1 as api;
use gaios_proto::cell::v1::cell_server::{Cell, CellServer};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use gaios_proto::state::v1 as wire;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::PeerSpec;
use crate::driver::{ReplicaStatus, Role};
use crate::errors::{failure_status, master_not_ready, not_master, propose_status, session_ended};
use gaios_state::limits::CONTENTS_BYTES_MAX;
use gaios_state::validate;
use crate::shared::Shared;
use gaios_state::limits::SESSION_SECRET_BYTES;
use gaios_state::machine::Outcome;
use crate::transport::TransportStats;

/// The largest message a client may send: a file's contents and the rest of
/// the request (paths are at most 1 KiB).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = CONTENTS_BYTES_MAX + (64 << 10);
/// The largest message the service sends: contents and stat, or a long
/// directory listing.
pub const CLIENT_RESPONSE_BYTES_MAX: usize = 16 << 20;
/// How long an `Acquire` with `wait_ms` 0 waits.
pub const ACQUIRE_WAIT_MS_DEFAULT: u64 = 60_000;
/// The most events in one KeepAlive message.
pub const EVENTS_PER_MESSAGE_MAX: usize = 64;
/// KeepAlive messages queued for one stream before the sender waits.
const KEEPALIVE_QUEUE_MAX: usize = 16;

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
}

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
        CellService { cell_id, incarnation, members: members.into(), status, stats, shared }
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

    fn client_address(&self, id: Option<ReplicaId>) -> String {
        id.and_then(|id| self.members.iter().find(|peer| peer.id == id))
            .map(|peer| peer.client_address.to_string())
            .unwrap_or_default()
    }

    /// `Ok` if this replica may answer reads now, else the `UNAVAILABLE`
    /// that sends the client to the master.
    fn check_can_read(&self) -> Result<(), Status> {
        let status = self.status.borrow().clone();
        if status.can_serve_reads(Instant::now()) {
            return Ok(());
        }
        if status.role == Role::Master {
            return Err(master_not_ready(status.id, &self.client_address(Some(status.id))));
        }
        Err(not_master(status.master, &self.client_address(status.master), "this replica is not the master"))
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
    /// never changes, so a stale state cannot wrongly refuse). A session
    /// this replica does not know is left to `apply` to judge.
    fn authorize(&self, session_id: u64, secret: &[u8]) -> Result<(), Status> {
        validate::session(session_id, secret).map_err(|invalid| failure_status(&invalid))?;
        match self.shared.state().authorize_session(session_id, secret) {
            Err(failure) if failure.code == tonic::Code::PermissionDenied as i32 => Err(failure_status(&failure)),
            _ => Ok(()),
        }
    }

    /// Proposes a session's mutating call.
    async fn call(&self, header: Option<api::RequestHeader>, call: wire::session_call::Call) -> Result<Outcome, Status> {
        let header = header.ok_or_else(|| Status::invalid_argument("the request header is missing"))?;
        let call = wire::SessionCall {
            session_id: header.session_id,
            request_number: header.request_number,
            session_secret: header.session_secret,
            call: Some(call),
        };
        // The same checks `apply` makes, before the call costs a slot.
        validate::session_call(&call).map_err(|invalid| failure_status(&invalid))?;
        self.authorize(call.session_id, &call.session_secret)?;
        self.propose(wire::command::Kind::Call(call)).await
    }
}

/// The `Cell` service as served. tonic refuses a unary request over the
/// message limit with `OUT_OF_RANGE`; gRPC's own servers, and Gaios's
/// documentation, say `RESOURCE_EXHAUSTED`, so that answer's status is
/// rewritten. Such a refusal is a trailers-only answer, whose status is in
/// the headers; the handlers never answer `OUT_OF_RANGE` themselves. Left as
/// tonic says (in trailers, not rewritten): an answer over the response
/// limit, and an oversized message on the KeepAlive stream.
#[derive(Clone)]
pub struct CellEndpoint(CellServer<CellService>);

impl tonic::server::NamedService for CellEndpoint {
    const NAME: &'static str = <CellServer<CellService> as tonic::server::NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for CellEndpoint
where
    CellServer<CellService>: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    <CellServer<CellService> as Service<http::Request<B>>>::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = <CellServer<CellService> as Service<http::Request<B>>>::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut answer = answer.await?;
            let out_of_range = http::HeaderValue::from(tonic::Code::OutOfRange as i32);
            if answer.headers().get(GRPC_STATUS) == Some(&out_of_range) {
                answer.headers_mut().insert(GRPC_STATUS, http::HeaderValue::from(tonic::Code::ResourceExhausted as i32));
            }
            Ok(answer)
        })
    }
}

/// The header (or trailer) that carries a gRPC status code.
const GRPC_STATUS: &str = "grpc-status";

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
        Ok(Response::new(api::FindMasterResponse {
            master_id: status.master.unwrap_or(0),
            master_client_address: self.client_address(status.master),
            ballot: ballot(master_ballot),
            answered_by: status.id,
        }))
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
        Ok(Response::new(api::StatusResponse {
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
            members: self
                .members
                .iter()
                .map(|peer| api::Member {
                    id: peer.id,
                    client_address: peer.client_address.to_string(),
                    peer_address: peer.peer_address.to_string(),
                })
                .collect(),
            cell_id: self.cell_id.clone(),
            inbox_dropped: self.stats.inbox_dropped.load(Ordering::Relaxed),
            incarnation: self.incarnation.get(),
            peer_wrong_cell_dropped: self.stats.wrong_cell_dropped.load(Ordering::Relaxed),
            peer_wrong_incarnation_dropped: self.stats.wrong_incarnation_dropped.load(Ordering::Relaxed),
            sessions,
            nodes,
            locks_held,
            snapshot_slot: status.snapshot_slot,
        }))
    }

    async fn create_session(
        &self,
        request: Request<api::CreateSessionRequest>,
    ) -> Result<Response<api::CreateSessionResponse>, Status> {
        let request = request.into_inner();
        validate::client_name(&request.client_name).map_err(|invalid| failure_status(&invalid))?;
        // Drawn here, on the master, and carried in the command, so applying
        // stays deterministic; only this call's answer hands it out.
        let mut secret = [0u8; SESSION_SECRET_BYTES];
        getrandom::fill(&mut secret)
            .map_err(|error| Status::internal(format!("cannot draw a session secret from the operating system: {error}")))?;
        let session_secret = bytes::Bytes::copy_from_slice(&secret);
        let create = wire::CreateSession { client_name: request.client_name, session_secret: session_secret.clone() };
        let outcome = self.propose(wire::command::Kind::CreateSession(create)).await?;
        let Some(wire::outcome::Result::SessionCreated(created)) = outcome.result else {
            return Err(unexpected(&outcome));
        };
        self.shared.leases().grant(created.session_id, Instant::now());
        Ok(Response::new(api::CreateSessionResponse {
            session_id: created.session_id,
            lease_ms: duration_ms(self.shared.session_lease),
            session_secret,
        }))
    }

    type KeepAliveStream = ReceiverStream<Result<api::KeepAliveResponse, Status>>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<api::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let inbound = request.into_inner();
        let (outbound, stream) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        tokio::spawn(self.clone().keep_alive_loop(inbound, outbound));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn close_session(
        &self,
        request: Request<api::CloseSessionRequest>,
    ) -> Result<Response<api::CloseSessionResponse>, Status> {
        let request = request.into_inner();
        let session_id = request.session_id;
        self.authorize(session_id, &request.session_secret)?;
        let end = wire::EndSession { session_id, expired: false, session_secret: request.session_secret };
        expect_done(self.propose(wire::command::Kind::EndSession(end)).await?)?;
        self.shared.leases().forget(session_id);
        Ok(Response::new(api::CloseSessionResponse {}))
    }

    async fn open(&self, request: Request<api::OpenRequest>) -> Result<Response<api::OpenResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        let outcome = self.call(header, wire::session_call::Call::Open(request)).await?;
        match outcome.result {
            Some(wire::outcome::Result::Opened(opened)) => Ok(Response::new(opened)),
            _ => Err(unexpected(&outcome)),
        }
    }

    async fn close(&self, request: Request<api::CloseRequest>) -> Result<Response<api::CloseResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(header, wire::session_call::Call::Close(request)).await?)?;
        Ok(Response::new(api::CloseResponse {}))
    }

    async fn get_contents_and_stat(
        &self,
        request: Request<api::GetContentsAndStatRequest>,
    ) -> Result<Response<api::GetContentsAndStatResponse>, Status> {
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_can_read()?;
        let (contents, stat) =
            self.shared.state().get_contents_and_stat(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        Ok(Response::new(api::GetContentsAndStatResponse { contents, stat: Some(stat) }))
    }

    async fn get_stat(&self, request: Request<api::GetStatRequest>) -> Result<Response<api::GetStatResponse>, Status> {
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_can_read()?;
        let stat = self.shared.state().get_stat(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        Ok(Response::new(api::GetStatResponse { stat: Some(stat) }))
    }

    async fn read_dir(&self, request: Request<api::ReadDirRequest>) -> Result<Response<api::ReadDirResponse>, Status> {
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_can_read()?;
        let (names, stat) =
            self.shared.state().read_dir(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        Ok(Response::new(api::ReadDirResponse { names, stat: Some(stat) }))
    }

    async fn set_contents(
        &self,
        request: Request<api::SetContentsRequest>,
    ) -> Result<Response<api::SetContentsResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        let outcome = self.call(header, wire::session_call::Call::SetContents(request)).await?;
        match outcome.result {
            Some(wire::outcome::Result::Written(written)) => Ok(Response::new(written)),
            _ => Err(unexpected(&outcome)),
        }
    }

    async fn delete(&self, request: Request<api::DeleteRequest>) -> Result<Response<api::DeleteResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(header, wire::session_call::Call::Delete(request)).await?)?;
        Ok(Response::new(api::DeleteResponse {}))
    }

    async fn acquire(&self, request: Request<api::AcquireRequest>) -> Result<Response<api::AcquireResponse>, Status> {
        let mut request = request.into_inner();
        validate_acquire(&request)?;
        let wait_ms = if request.wait_ms == 0 { ACQUIRE_WAIT_MS_DEFAULT } else { request.wait_ms };
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let header = request.header.take().ok_or_else(|| Status::invalid_argument("the request header is missing"))?;
        // Before the wait is counted: a caller without the session's secret
        // must not be able to keep another client's dropped wait from being
        // cancelled (see `Shared::begin_wait`).
        self.authorize(header.session_id, &header.session_secret)?;
        let wait = wire::CancelWait {
            session_id: header.session_id,
            handle: request.handle,
            session_secret: header.session_secret.clone(),
            request_number: header.request_number,
            keep_granted: true,
        };
        // If this call ends any other way than with the lock, a definite
        // refusal, or its own cancel answered (the client hung up, the
        // command's fate is unknown, the master lost its lease), the handle
        // must not stay in line, nor keep a lock granted to this wait that
        // nobody will hear of (see `Shared::begin_wait`).
        let mut live = self.shared.begin_wait(wait.clone());
        let result = self.acquire_and_wait(header, request, &wait, deadline).await;
        let settled = match &result {
            Ok(_) => true,
            Err(status) => status.code() != tonic::Code::Unavailable,
        };
        if settled {
            live.disarm();
        }
        result.map(Response::new)
    }

    async fn try_acquire(&self, request: Request<api::AcquireRequest>) -> Result<Response<api::AcquireResponse>, Status> {
        let mut request = request.into_inner();
        validate_acquire(&request)?;
        let header = request.header.take();
        let outcome = self.call(header, wire::session_call::Call::TryAcquire(request)).await?;
        match acquired_sequencer(&outcome) {
            Some(sequencer) => Ok(Response::new(api::AcquireResponse { sequencer: Some(sequencer) })),
            None => Err(unexpected(&outcome)),
        }
    }

    async fn release(&self, request: Request<api::ReleaseRequest>) -> Result<Response<api::ReleaseResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(header, wire::session_call::Call::Release(request)).await?)?;
        Ok(Response::new(api::ReleaseResponse {}))
    }

    async fn get_sequencer(
        &self,
        request: Request<api::GetSequencerRequest>,
    ) -> Result<Response<api::GetSequencerResponse>, Status> {
        let handle = handle_ref(request.into_inner().handle)?;
        self.check_can_read()?;
        let sequencer =
            self.shared.state().get_sequencer(handle.session_id, &handle.session_secret, handle.handle).map_err(|f| failure_status(&f))?;
        Ok(Response::new(api::GetSequencerResponse { sequencer: Some(sequencer) }))
    }

    async fn check_sequencer(
        &self,
        request: Request<api::CheckSequencerRequest>,
    ) -> Result<Response<api::CheckSequencerResponse>, Status> {
        let sequencer = request.into_inner().sequencer;
        validate::sequencer(sequencer.as_ref()).map_err(|invalid| failure_status(&invalid))?;
        let sequencer = sequencer.unwrap_or_default();
        self.check_can_read()?;
        Ok(Response::new(self.shared.state().check_sequencer(&sequencer)))
    }

    async fn set_sequencer(
        &self,
        request: Request<api::SetSequencerRequest>,
    ) -> Result<Response<api::SetSequencerResponse>, Status> {
        let mut request = request.into_inner();
        let header = request.header.take();
        expect_done(self.call(header, wire::session_call::Call::SetSequencer(request)).await?)?;
        Ok(Response::new(api::SetSequencerResponse {}))
    }
}

impl CellService {
    /// Proposes the `Acquire` and, if the handle was queued, waits for the
    /// lock (see [`CellService::wait_for_lock`]).
    async fn acquire_and_wait(
        &self,
        header: api::RequestHeader,
        request: api::AcquireRequest,
        wait: &wire::CancelWait,
        deadline: Instant,
    ) -> Result<api::AcquireResponse, Status> {
        let outcome = self.call(Some(header), wire::session_call::Call::Acquire(request)).await?;
        if let Some(sequencer) = acquired_sequencer(&outcome) {
            return Ok(api::AcquireResponse { sequencer: Some(sequencer) });
        }
        if !matches!(outcome.result, Some(wire::outcome::Result::Queued(_))) {
            return Err(unexpected(&outcome));
        }
        self.wait_for_lock(wait, deadline).await
    }

    /// Waits until the queued handle of `wait` holds its lock, the wait
    /// becomes impossible (handle closed, session ended, node deleted), this
    /// replica stops being a master that can serve, or `deadline` passes;
    /// then gives up its place in line with `wait` as a `CancelWait`
    /// command (which keeps and returns a lock granted just before).
    ///
    /// The state is read only after checking that this replica can serve:
    /// a deposed master's applied state may still show a grant that is
    /// gone (the node deleted, the session expired on the new master).
    async fn wait_for_lock(&self, wait: &wire::CancelWait, deadline: Instant) -> Result<api::AcquireResponse, Status> {
        let (session_id, handle) = (wait.session_id, wait.handle);
        let mut applied = self.shared.watch_applied();
        loop {
            self.check_can_read()?;
            {
                let state = self.shared.state();
                if let Some(sequencer) = state.holding(session_id, handle) {
                    return Ok(api::AcquireResponse { sequencer: Some(sequencer) });
                }
                if !state.is_waiting(session_id, handle) {
                    return Err(Status::failed_precondition(
                        "the handle no longer waits for the lock (closed, session ended or node deleted)",
                    ));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Wake on every applied batch, and at least every 100 ms to
            // notice a lost lease.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, applied.changed()).await;
        }
        let outcome = self.propose(wire::command::Kind::CancelWait(wire::CancelWait { keep_granted: true, ..wait.clone() })).await?;
        match acquired_sequencer(&outcome) {
            // Granted just before the cancel was applied.
            Some(sequencer) => Ok(api::AcquireResponse { sequencer: Some(sequencer) }),
            None => Err(Status::deadline_exceeded("the lock was not granted within wait_ms; no longer waiting")),
        }
    }

    /// Serves one KeepAlive stream: each request extends the session's lease
    /// and acknowledges events; events are pushed as they are applied.
    async fn keep_alive_loop(
        self,
        mut inbound: Streaming<api::KeepAliveRequest>,
        outbound: mpsc::Sender<Result<api::KeepAliveResponse, Status>>,
    ) {
        let mut session = None;
        let mut sent_through = 0;
        // Woken only when this stream's session gets events or ends.
        let mut watcher: Option<(u64, watch::Receiver<()>)> = None;
        let lease_ms = duration_ms(self.shared.session_lease);
        loop {
            let answer = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if watcher.is_none() && request.session_id != 0 {
                            // Before the first read of its events.
                            watcher = Some((request.session_id, self.shared.watch_session(request.session_id)));
                        }
                        match self.keep_alive_once(&mut session, &request) {
                            Ok(events) => {
                                sent_through = sent_through.max(request.acknowledged_event);
                                if let Some(last) = events.last() {
                                    sent_through = sent_through.max(last.number);
                                }
                                Ok(api::KeepAliveResponse { lease_ms, events })
                            }
                            Err(status) => Err(status),
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                changed = session_changed(&mut watcher) => {
                    if changed.is_err() {
                        // The watcher was forgotten; watch again.
                        watcher = session.map(|id| (id, self.shared.watch_session(id)));
                    }
                    let Some(session_id) = session else { continue };
                    let (events, open) = {
                        let state = self.shared.state();
                        (state.events_after(session_id, sent_through, EVENTS_PER_MESSAGE_MAX), state.has_session(session_id))
                    };
                    if let Some(last) = events.last() {
                        sent_through = last.number;
                        if events.len() >= EVENTS_PER_MESSAGE_MAX
                            && let Some((_, receiver)) = watcher.as_mut()
                        {
                            // More may be queued: come round again at once
                            // rather than wait for the next change.
                            receiver.mark_changed();
                        }
                        Ok(api::KeepAliveResponse { lease_ms: 0, events })
                    } else if !open {
                        Err(Status::failed_precondition(format!("session {session_id} has ended (expired or closed)")))
                    } else {
                        continue;
                    }
                }
            };
            let ended = answer.is_err();
            if outbound.send(answer).await.is_err() || ended {
                break;
            }
        }
        if let Some((id, receiver)) = watcher {
            drop(receiver);
            self.shared.unwatch_session(id);
        }
    }

    /// One KeepAlive request: checks, extends the lease, trims and returns
    /// the events the client has not acknowledged.
    fn keep_alive_once(&self, session: &mut Option<u64>, request: &api::KeepAliveRequest) -> Result<Vec<api::Event>, Status> {
        if request.session_id == 0 {
            return Err(Status::invalid_argument("session_id 0 names no session"));
        }
        if session.is_some_and(|id| id != request.session_id) {
            return Err(Status::invalid_argument("one KeepAlive stream serves one session"));
        }
        self.check_can_read()?;
        let events = {
            let mut state = self.shared.state();
            if !state.has_session(request.session_id) {
                return Err(session_ended(request.session_id, "expired or closed"));
            }
            // Only the session's own client keeps it alive and gets its
            // events; the stream serves it only from here on.
            state.authorize_session(request.session_id, &request.session_secret).map_err(|f| failure_status(&f))?;
            *session = Some(request.session_id);
            state.acknowledge_events(request.session_id, request.acknowledged_event);
            state.events_after(request.session_id, request.acknowledged_event, EVENTS_PER_MESSAGE_MAX)
        };
        // A lease that already ran out is not renewed: the master has
        // proposed (or is about to propose) the session's expiry, and
        // answering now would tell the client it is safe while the expiry
        // commits and its locks go to others.
        if self.shared.leases().renew(request.session_id, Instant::now()).is_err() {
            return Err(session_ended(
                request.session_id,
                "its lease ran out before this KeepAlive arrived; the master is expiring it",
            ));
        }
        Ok(events)
    }
}

/// Resolves when the watched session changed; never without a watcher.
async fn session_changed(watcher: &mut Option<(u64, watch::Receiver<()>)>) -> Result<(), watch::error::RecvError> {
    match watcher {
        Some((_, receiver)) => receiver.changed().await,
        None => std::future::pending().await,
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
        }
    }

    fn apply(state: &mut StateMachine, kind: wire::command::Kind) -> Outcome {
        state.apply(&wire::Command { now_ms: 1_000, lock_clock_ms: 1_000, kind: Some(kind), ..Default::default() })
    }

    /// A state in which session 1's handle 1 holds the lock on `/lock`.
    fn state_with_a_holding() -> (StateMachine, u64, bytes::Bytes, u64) {
        use wire::command::Kind;
        use wire::session_call::Call;
        let mut state = StateMachine::new();
        let secret = bytes::Bytes::from_static(b"0123456789abcdef");
        apply(&mut state, Kind::CreateSession(wire::CreateSession { client_name: "t".into(), session_secret: secret.clone() }));
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
        let (shared, proposals) = Shared::new(state, Duration::from_secs(10));
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
        let refused = service.keep_alive_once(&mut None, &request).expect_err("a lease that ran out was renewed");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let reason = tonic_types::StatusExt::get_error_details(&refused).error_info().map(|info| info.reason.clone());
        assert_eq!(reason.as_deref(), Some("SESSION_ENDED"), "the client must read it as the end: {refused:?}");
        assert_eq!(service.shared.leases().deadline(session), Some(ran_out), "the deadline moved");
        // A lease still running is renewed.
        let running = Instant::now() + Duration::from_millis(500);
        service.shared.leases().grant(session, running - Duration::from_secs(10));
        service.keep_alive_once(&mut None, &request).expect("a running lease is renewed");
        assert!(service.shared.leases().deadline(session).is_some_and(|deadline| deadline > running));
    }
}
