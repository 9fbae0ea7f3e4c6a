//! Connecting, the session and its KeepAlives, and calls that survive a
//! master failover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use gaios_proto::cell::v1::cell_client::CellClient;
use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::error::{Error, Redirect, is_retryable, redirect};
use crate::routing::{Next, Router, SILENT_PASSED_OVER};
use crate::handle::{Handle, OpenOptions};
use crate::lease;
use crate::tls::Tls;

/// How the library behaves; [`Options::default`] suits most applications.
#[derive(Debug, Clone)]
pub struct Options {
    /// After the local lease runs out without an answer, how long calls
    /// wait (and the session is in jeopardy) before the library declares
    /// the session expired. Chubby's default, 45 s.
    pub grace_period: Duration,
    /// How long one attempt of a call may take before the library assumes
    /// the replica hung and tries another (a hung master is noticed even
    /// while requests keep flowing).
    pub attempt_timeout: Duration,
    /// How long a call keeps retrying through elections and failovers.
    pub call_deadline: Duration,
    /// A name for operators, kept with the session.
    pub client_name: String,
    /// Whether to learn the other members' client addresses from the cell
    /// (on by default). Turn it off when the replicas' own addresses are
    /// not reachable from here (the client talks to the cell through a
    /// proxy or a NAT): then only the given addresses are used.
    pub learn_members: bool,
    /// TLS to the cell (required by a cell not started `--insecure`).
    pub tls: Option<Tls>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace_period: Duration::from_secs(45),
            attempt_timeout: Duration::from_secs(5),
            call_deadline: Duration::from_secs(45),
            client_name: "gaios-client".to_string(),
            learn_members: true,
            tls: None,
        }
    }
}

/// The health of the session, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// The lease is current: locks and cached data can be trusted.
    Safe,
    /// The local lease ran out without an answer from a master; calls wait
    /// for the grace period. The local lease ends a clock-drift margin
    /// before the master can expire the session (see
    /// [`crate::CLOCK_DRIFT_PPM`]), so jeopardy begins before the cell can
    /// give this session's locks to anyone else: locks may be lost; stop
    /// acting on them ([`crate::Lock::at_risk`]).
    Jeopardy,
    /// The session ended; its locks and ephemeral nodes are gone.
    Expired,
}

/// What happened, as delivered on a handle's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The file's contents were written.
    ContentsModified,
    /// The directory gained a child (named in the event's path).
    ChildAdded,
    /// The directory lost a child.
    ChildRemoved,
    /// A file in the directory was written.
    ChildModified,
    /// Somebody was granted the node's lock.
    LockAcquired,
    /// Somebody waits for a lock this handle holds.
    ConflictingLockRequest,
    /// The node was deleted; the handle is invalid.
    HandleInvalid,
    /// A new master took over: re-read what you cache.
    MasterFailover,
    /// Events were lost (the numbers jumped by more than one); re-read what
    /// you cache. `count` is how many.
    Missed {
        /// How many events were missed.
        count: u64,
    },
}

/// One event of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its number in the session (the first event after a gap for
    /// `Missed`).
    pub number: u64,
    /// The handle it is for; 0 for session-wide events.
    pub handle: u64,
    /// The node concerned, if any.
    pub path: String,
    /// What happened.
    pub kind: EventKind,
}

/// Session events kept for slow receivers; beyond this a receiver sees a
/// lag and is told with a `Missed` event.
const EVENTS_BUFFERED_MAX: usize = 1024;
/// The longest the library waits between two connection attempts (less up
/// to half of it at random, see [`back_off`]). A dead master's successor is
/// elected about a master lease (250 ms) after its last heartbeat; retries
/// this close together reach it within 50 ms (20 to 40 a second per client
/// while no master answers).
const BACKOFF_MAX: Duration = Duration::from_millis(50);
/// How long connecting to one replica may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Inner {
    /// The replicas' client addresses: those given to `connect`, and those
    /// learned from the cell's `Status` (see [`Inner::learn_members`]).
    addresses: std::sync::Mutex<Vec<String>>,
    pub(crate) options: Options,
    master: Mutex<Option<(String, CellClient<Channel>)>>,
    next_address: AtomicUsize,
    /// Where a failed attempt sends the next one.
    router: std::sync::Mutex<Router>,
    pub(crate) session_id: u64,
    /// The session's secret from `CreateSession`; every call that names the
    /// session carries it (see `gaios.cell.v1.CreateSessionResponse`).
    pub(crate) session_secret: bytes::Bytes,
    next_request: AtomicU64,
    pub(crate) state: watch::Sender<SessionState>,
    pub(crate) events: broadcast::Sender<Event>,
}

/// The most replica addresses a client keeps (given and learned).
pub(crate) const ADDRESSES_MAX: usize = 64;
/// The longest address learned from the cell.
const ADDRESS_BYTES_MAX: usize = 256;

/// A connection to a cell with one session, kept alive in the background
/// until [`Client::close`] or drop.
pub struct Client {
    inner: Arc<Inner>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("session_id", &self.inner.session_id).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the cell at `addresses` (`host:port` of any replicas),
    /// finds the master, and starts a session.
    pub async fn connect(addresses: &[String], options: Options) -> Result<Client, Error> {
        if addresses.is_empty() {
            return Err(Error::BadAddress(String::new()));
        }
        for address in addresses {
            if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
                return Err(Error::BadAddress(address.clone()));
            }
        }
        let (state, _) = watch::channel(SessionState::Safe);
        let (events, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let mut inner = Inner {
            addresses: std::sync::Mutex::new(addresses.to_vec()),
            options,
            master: Mutex::new(None),
            next_address: AtomicUsize::new(0),
            router: std::sync::Mutex::new(Router::default()),
            session_id: 0,
            session_secret: bytes::Bytes::new(),
            next_request: AtomicU64::new(1),
            state,
            events,
        };
        let name = inner.options.client_name.clone();
        let created_at = Instant::now();
        let created = inner
            .call(move |mut cell| {
                let request = api::CreateSessionRequest { client_name: name.clone() };
                async move { cell.create_session(request).await }
            })
            .await?;
        inner.session_id = created.session_id;
        inner.session_secret = created.session_secret;
        inner.learn_members().await;
        let inner = Arc::new(inner);
        let lease = Duration::from_millis(created.lease_ms);
        let keepalive = tokio::spawn(keep_alive(inner.clone(), lease::local_end(created_at, lease), lease));
        Ok(Client { inner, keepalive })
    }

    /// The session's id.
    pub fn session_id(&self) -> u64 {
        self.inner.session_id
    }

    /// The session's secret, for an application that makes raw gRPC calls
    /// on this session (`RequestHeader.session_secret`,
    /// `HandleRef.session_secret`). Whoever knows it can act for the
    /// session: keep it as you would a password.
    pub fn session_secret(&self) -> &[u8] {
        &self.inner.session_secret
    }

    /// The session's state now, and changes to it: `Safe`, then `Jeopardy`
    /// when the local lease runs out unanswered, then `Safe` again or
    /// `Expired`.
    pub fn session_state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    /// Every event of the session (all handles), from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Opens (and perhaps creates) the node at `path`.
    pub async fn open(&self, path: &str, options: OpenOptions) -> Result<Handle, Error> {
        Handle::open(self.inner.clone(), path, options).await
    }

    /// Whether `sequencer` is current in the cell: the node is the same
    /// instance and the holding the sequencer names (its mode and its
    /// grant's generation) still holds the lock.
    pub async fn check_sequencer(&self, sequencer: &api::Sequencer) -> Result<bool, Error> {
        self.inner.check_sequencer(sequencer).await
    }

    /// Every replica's view of the cell (those that answer within a
    /// second), in the order of the addresses.
    pub async fn status(&self) -> Vec<api::StatusResponse> {
        cell_status(&self.inner.addresses(), self.inner.options.tls.as_ref()).await
    }

    /// Ends the session: locks are released and ephemeral nodes deleted.
    pub async fn close(self) -> Result<(), Error> {
        self.keepalive.abort();
        let request = api::CloseSessionRequest { session_id: self.inner.session_id, session_secret: self.inner.session_secret.clone() };
        let result = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.close_session(request).await }
            })
            .await
            .map(|_| ());
        self.inner.state.send_replace(SessionState::Expired);
        result
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.keepalive.abort();
        // Nothing keeps the session alive any more: locks still held through
        // it are at risk from now on.
        self.inner.state.send_if_modified(|state| {
            let safe = *state == SessionState::Safe;
            if safe {
                *state = SessionState::Jeopardy;
            }
            safe
        });
    }
}

/// Asks every replica at `addresses` for its `Status` (one second each),
/// over TLS if `tls` is given.
pub async fn cell_status(addresses: &[String], tls: Option<&Tls>) -> Vec<api::StatusResponse> {
    let mut out = Vec::new();
    for address in addresses {
        let call = async {
            let mut cell = connect(address, tls).await?;
            cell.status(api::StatusRequest {}).await.ok().map(Response::into_inner)
        };
        if let Ok(Some(status)) = tokio::time::timeout(CONNECT_TIMEOUT, call).await {
            out.push(status);
        }
    }
    out
}

/// Asks the first replica at `addresses` that answers who the cell takes
/// this client for: its certificate's identity and the groups the replica's
/// configuration puts it in.
pub async fn who_am_i(addresses: &[String], tls: Option<&Tls>) -> Result<api::WhoAmIResponse, Error> {
    let mut last = Error::NoMaster(format!("no replica at {addresses:?} answered"));
    for address in addresses {
        let Some(mut cell) = connect(address, tls).await else { continue };
        match tokio::time::timeout(CONNECT_TIMEOUT, cell.who_am_i(api::WhoAmIRequest {})).await {
            Ok(Ok(answer)) => return Ok(answer.into_inner()),
            Ok(Err(status)) => last = Error::from_status(&status),
            Err(_) => {}
        }
    }
    Err(last)
}

pub(crate) async fn connect(address: &str, tls: Option<&Tls>) -> Option<CellClient<Channel>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{address}")).ok()?.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config()).ok()?;
    }
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await.ok()?.ok()?;
    Some(CellClient::new(channel).max_decoding_message_size(32 << 20))
}

impl Inner {
    /// The request header of a new mutating call; retries of that call
    /// reuse it, so the cell applies it at most once.
    pub(crate) fn header(&self) -> Option<api::RequestHeader> {
        Some(api::RequestHeader {
            session_id: self.session_id,
            request_number: self.next_request.fetch_add(1, Ordering::Relaxed),
            session_secret: self.session_secret.clone(),
        })
    }

    /// Names a handle of this session, for calls that only read.
    pub(crate) fn handle_ref(&self, handle: u64) -> Option<api::HandleRef> {
        Some(api::HandleRef { session_id: self.session_id, handle, session_secret: self.session_secret.clone() })
    }

    /// A client of the replica believed to be master (or the next address
    /// to try).
    async fn master(&self) -> Option<(String, CellClient<Channel>)> {
        let mut master = self.master.lock().await;
        if let Some(current) = master.as_ref() {
            return Some(current.clone());
        }
        let address = {
            let addresses = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let router = self.router();
            let now = Instant::now();
            // The next address in turn, passing over one that just let an
            // attempt time out (unless it is the only one).
            let mut address = None;
            for _ in 0..addresses.len().max(1) {
                let index = self.next_address.fetch_add(1, Ordering::Relaxed) % addresses.len().max(1);
                address = addresses.get(index).cloned();
                if address.as_ref().is_some_and(|address| !router.passed_over(address, now)) {
                    break;
                }
            }
            address?
        };
        let Some(cell) = connect(&address, self.options.tls.as_ref()).await else {
            self.router().silent(&address, Instant::now(), SILENT_PASSED_OVER);
            return None;
        };
        *master = Some((address.clone(), cell.clone()));
        Some((address, cell))
    }

    /// The replicas' client addresses known now.
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Learns the cell's members' client addresses from the master's
    /// `Status`, so that a client given one address can still find a new
    /// master when that replica is gone. At most [`ADDRESSES_MAX`] are
    /// kept; an address that does not look like `host:port` is ignored.
    pub(crate) async fn learn_members(&self) {
        if !self.options.learn_members {
            return;
        }
        let Some((_, mut cell)) = self.master().await else { return };
        let Ok(Ok(status)) = tokio::time::timeout(CONNECT_TIMEOUT, cell.status(api::StatusRequest {})).await else { return };
        let mut addresses = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for member in status.into_inner().members {
            let address = member.client_address;
            let plausible = !address.is_empty() && address.len() <= ADDRESS_BYTES_MAX && address.contains(':');
            if plausible && addresses.len() < ADDRESSES_MAX && !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }

    /// `address` failed an attempt; `redirect` is what its answer said
    /// about the master. The next attempt goes to the master it names, to
    /// the same replica if it is a master that cannot serve yet (for a
    /// while, see [`crate::routing`]), or to the next address in turn.
    async fn forget(&self, address: &str, redirect: Option<Redirect>) -> Next {
        let next = self.router().next(address, redirect.as_ref(), Instant::now());
        let mut master = self.master.lock().await;
        match &next {
            Next::Same => {}
            Next::Elsewhere => {
                if master.as_ref().is_some_and(|(current, _)| current == address) {
                    *master = None;
                }
            }
            Next::To(hint) => {
                if master.as_ref().is_some_and(|(current, _)| current == address) {
                    *master = None;
                }
                match connect(hint, self.options.tls.as_ref()).await {
                    Some(cell) => *master = Some((hint.clone(), cell)),
                    None => self.router().silent(hint, Instant::now(), SILENT_PASSED_OVER),
                }
            }
        }
        next
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `call` against the master until it answers, following
    /// redirects and retrying through failovers, with the attempt timeout.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(CellClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(self.options.attempt_timeout, call).await
    }

    /// [`Inner::call`] with an explicit attempt timeout (for waits that may
    /// legitimately take long).
    pub(crate) async fn call_with<T, F, Fut>(&self, attempt_timeout: Duration, call: F) -> Result<T, Error>
    where
        F: Fn(CellClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.options.call_deadline;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("no replica answered");
        loop {
            if self.session_id != 0 && *self.state.borrow() == SessionState::Expired {
                return Err(Error::SessionExpired);
            }
            if let Some((address, cell)) = self.master().await {
                match tokio::time::timeout(attempt_timeout, call(cell)).await {
                    Ok(Ok(response)) => {
                        self.router().served(&address);
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) if is_retryable(&status) => {
                        last = format!("{address}: {}", status.message());
                        let _ = self.forget(&address, redirect(&status)).await;
                    }
                    Ok(Err(status)) => {
                        let error = Error::from_status(&status);
                        if error == Error::SessionExpired {
                            self.state.send_replace(SessionState::Expired);
                        }
                        return Err(error);
                    }
                    Err(_) => {
                        last = format!("{address} did not answer within {attempt_timeout:?}");
                        self.router().silent(&address, Instant::now(), SILENT_PASSED_OVER);
                        let _ = self.forget(&address, None).await;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoMaster(last));
            }
            back_off(&mut backoff).await;
        }
    }

    pub(crate) async fn check_sequencer(&self, sequencer: &api::Sequencer) -> Result<bool, Error> {
        let request = api::CheckSequencerRequest { sequencer: Some(sequencer.clone()) };
        self.call(move |mut cell| {
            let request = request.clone();
            async move { cell.check_sequencer(request).await }
        })
        .await
        .map(|answer| answer.valid)
    }
}

/// The session's background work until it is expired: the KeepAlive
/// streams, and beside them the lease clock that moves the session to
/// jeopardy and expiry (see [`lease::clock`]).
async fn keep_alive(inner: Arc<Inner>, lease_end: Instant, lease: Duration) {
    let (lease_ends, lease_end_changes) = watch::channel(lease_end);
    tokio::select! {
        () = lease::clock(&inner, lease_end_changes) => {}
        () = keep_alive_streams(inner.clone(), lease_ends, lease) => {}
    }
}

/// The KeepAlive loop: a stream to the master, a request every quarter of
/// the lease; each answer moves the local lease's end, counted
/// conservatively from when its request was sent (see [`lease::local_end`]).
async fn keep_alive_streams(inner: Arc<Inner>, lease_end: watch::Sender<Instant>, lease: Duration) {
    let interval = (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(3));
    // An answer later than this means the replica hung.
    let answer_within = (lease / 2).max(Duration::from_millis(500));
    // A replica that hung is passed over for a quarter of the lease at most,
    // so that a master that was only slow is back before the session's
    // lease runs out.
    let pass_over = lease / 4;
    let mut last_event = 0u64;
    let mut backoff = Duration::from_millis(20);
    'streams: loop {
        let Some((address, mut cell)) = inner.master().await else {
            back_off(&mut backoff).await;
            continue;
        };
        let (requests, receiver) = mpsc::channel(4);
        let mut sent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
        let request = |acknowledged: u64| api::KeepAliveRequest {
            session_id: inner.session_id,
            acknowledged_event: acknowledged,
            session_secret: inner.session_secret.clone(),
        };
        // The send time is read before the request can leave: the local
        // lease counts from a moment no later than the master's receipt.
        let sending = Instant::now();
        let _ = requests.try_send(request(last_event));
        sent.push_back(sending);
        let opened = tokio::time::timeout(answer_within, cell.keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))).await;
        let mut responses = match opened {
            Ok(Ok(response)) => {
                // A new stream, perhaps on a new master: the members may
                // have changed since the client last asked.
                let learner = inner.clone();
                tokio::spawn(async move { learner.learn_members().await });
                response.into_inner()
            }
            Ok(Err(status)) => {
                if ends_session(&status) {
                    inner.state.send_replace(SessionState::Expired);
                    return;
                }
                let _ = inner.forget(&address, redirect(&status)).await;
                back_off(&mut backoff).await;
                continue;
            }
            Err(_) => {
                inner.router().silent(&address, Instant::now(), pass_over);
                let _ = inner.forget(&address, None).await;
                continue;
            }
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if sent.front().is_some_and(|at| at.elapsed() > answer_within) {
                        // The master hung; find another.
                        inner.router().silent(&address, Instant::now(), pass_over);
                        break;
                    }
                    let sending = Instant::now();
                    if requests.try_send(request(last_event)).is_ok() {
                        sent.push_back(sending);
                    }
                }
                message = responses.message() => match message {
                    Ok(Some(answer)) => {
                        backoff = Duration::from_millis(20);
                        inner.router().served(&address);
                        if answer.lease_ms > 0
                            && let Some(at) = sent.pop_front() {
                                // The clock makes the session safe again
                                // (after these events are delivered).
                                let granted = lease::local_end(at, Duration::from_millis(answer.lease_ms));
                                lease_end.send_if_modified(|end| {
                                    let later = granted > *end;
                                    if later {
                                        *end = granted;
                                    }
                                    later
                                });
                            }
                        for event in answer.events {
                            deliver(&inner, &mut last_event, event);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if ends_session(&status) {
                            inner.state.send_replace(SessionState::Expired);
                            return;
                        }
                        // To the master a redirect names at once; the
                        // same replica or the next after the backoff.
                        if !matches!(inner.forget(&address, redirect(&status)).await, Next::To(_)) {
                            back_off(&mut backoff).await;
                        }
                        continue 'streams;
                    }
                }
            }
        }
        let _ = inner.forget(&address, None).await;
    }
}

/// Waits `backoff`, less up to half of it at random (so that the clients of
/// a cell do not retry in step after a failover), then doubles it up to
/// [`BACKOFF_MAX`].
async fn back_off(backoff: &mut Duration) {
    use std::hash::{BuildHasher as _, Hasher as _};
    // Every `RandomState` has new keys: a random number without a crate.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let half = *backoff / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).saturating_add(1);
    tokio::time::sleep(half + Duration::from_nanos(random % spread)).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

fn ends_session(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition && crate::error::reason(status) == Some(api::ErrorReason::SessionEnded)
}

/// Hands one event to the application, once, noting gaps.
fn deliver(inner: &Inner, last: &mut u64, event: api::Event) {
    if event.number <= *last {
        return; // a repeat after a reconnect
    }
    if event.number > *last + 1 && *last != 0 {
        let count = event.number - *last - 1;
        let _ = inner.events.send(Event { number: event.number, handle: 0, path: String::new(), kind: EventKind::Missed { count } });
    }
    *last = event.number;
    let kind = match api::EventKind::try_from(event.kind) {
        Ok(api::EventKind::ContentsModified) => EventKind::ContentsModified,
        Ok(api::EventKind::ChildAdded) => EventKind::ChildAdded,
        Ok(api::EventKind::ChildRemoved) => EventKind::ChildRemoved,
        Ok(api::EventKind::ChildModified) => EventKind::ChildModified,
        Ok(api::EventKind::LockAcquired) => EventKind::LockAcquired,
        Ok(api::EventKind::ConflictingLockRequest) => EventKind::ConflictingLockRequest,
        Ok(api::EventKind::HandleInvalid) => EventKind::HandleInvalid,
        Ok(api::EventKind::MasterFailover) => EventKind::MasterFailover,
        _ => return,
    };
    let _ = inner.events.send(Event { number: event.number, handle: event.handle, path: event.path, kind });
}

