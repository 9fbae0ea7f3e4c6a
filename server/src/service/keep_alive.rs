//! KeepAlive streams: each request extends the session's lease at the
//! master ([`gaios_state::master::session_leases`]) and acknowledges the
//! events its client has; the events applied commands number for the
//! session are pushed from the replica's outbox as they arrive. One stream
//! serves one session, and only with its secret.

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use std::time::Instant;

use gaios_proto::cell::v1 as api;

use super::errors::{failure_status, session_ended};
use super::{Caller, CellService, duration_ms};

/// The most events in one KeepAlive message.
pub const EVENTS_PER_MESSAGE_MAX: usize = 64;
/// KeepAlive messages queued for one stream before the sender waits.
pub(super) const KEEPALIVE_QUEUE_MAX: usize = 16;

impl CellService {
    /// Serves one KeepAlive stream: each request extends the session's lease
    /// and acknowledges events; events are pushed as they are applied.
    pub(super) async fn keep_alive_loop(
        self,
        mut inbound: Streaming<api::KeepAliveRequest>,
        outbound: mpsc::Sender<Result<api::KeepAliveResponse, Status>>,
        caller: Caller,
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
                        match self.keep_alive_once(&mut session, &request, &caller) {
                            Ok(events) => {
                                sent_through = sent_through.max(request.acknowledged_event);
                                if let Some(last) = events.last() {
                                    sent_through = sent_through.max(last.number);
                                }
                                Ok(api::KeepAliveResponse { lease_ms, events, header: Some(self.response_header()) })
                            }
                            Err(status) => Err(status),
                        }
                    }
                    Ok(None) => break,
                    // tonic's decoder refuses a message over the limit with
                    // OUT_OF_RANGE: the client is told, as a unary request
                    // over the limit is (RESOURCE_EXHAUSTED), and the stream
                    // ends. A message that does not decode is INTERNAL, as
                    // gRPC answers an undecodable unary request. Any other
                    // error is the connection's: nobody to tell.
                    Err(status) if status.code() == tonic::Code::OutOfRange => {
                        Err(Status::resource_exhausted("a KeepAlive message over the request message limit"))
                    }
                    Err(status) if status.code() == tonic::Code::Internal && std::error::Error::source(&status).is_none() => {
                        Err(Status::internal("a KeepAlive message that does not decode"))
                    }
                    Err(_) => break,
                },
                changed = session_changed(&mut watcher) => {
                    if changed.is_err() {
                        // The watcher was forgotten; watch again.
                        watcher = session.map(|id| (id, self.shared.watch_session(id)));
                    }
                    let Some(session_id) = session else { continue };
                    let events = self.shared.outbox().events_after(session_id, sent_through, EVENTS_PER_MESSAGE_MAX);
                    if let Some(last) = events.last() {
                        sent_through = last.number;
                        if events.len() >= EVENTS_PER_MESSAGE_MAX
                            && let Some((_, receiver)) = watcher.as_mut()
                        {
                            // More may be queued: come round again at once
                            // rather than wait for the next change.
                            receiver.mark_changed();
                        }
                        Ok(api::KeepAliveResponse { lease_ms: 0, events, header: Some(self.response_header()) })
                    } else if !self.shared.state().has_session(session_id) {
                        Err(session_ended(session_id, "expired or closed"))
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
    pub(super) fn keep_alive_once(
        &self,
        session: &mut Option<u64>,
        request: &api::KeepAliveRequest,
        caller: &Caller,
    ) -> Result<Vec<api::Event>, Status> {
        if request.session_id == 0 {
            return Err(Status::invalid_argument("session_id 0 names no session"));
        }
        if session.is_some_and(|id| id != request.session_id) {
            return Err(Status::invalid_argument("one KeepAlive stream serves one session"));
        }
        self.read_gate()?;
        {
            let state = self.shared.state();
            if !state.has_session(request.session_id) {
                return Err(session_ended(request.session_id, "expired or closed"));
            }
            // Only the session's own client keeps it alive and gets its
            // events; the stream serves it only from here on.
            state.authorize_session(request.session_id, &request.session_secret).map_err(|f| failure_status(&f))?;
        }
        self.check_owner(caller, request.session_id)?;
        *session = Some(request.session_id);
        let events = {
            let mut outbox = self.shared.outbox();
            outbox.acknowledge(request.session_id, request.acknowledged_event);
            outbox.events_after(request.session_id, request.acknowledged_event, EVENTS_PER_MESSAGE_MAX)
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
