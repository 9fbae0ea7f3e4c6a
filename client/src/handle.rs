//! Handles on nodes, and the locks taken through them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gaios_proto::cell::v1 as api;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Event, EventKind, Inner, SessionState};
use crate::error::Error;

/// The lock-delay a handle gets unless [`OpenOptions::lock_delay`] says
/// otherwise: if a session ends while holding the lock (it expired: its
/// holder crashed, hung or was cut off from the cell), nobody gets the lock
/// for this long.
///
/// What it protects: requests the deposed holder sent before it stopped,
/// still on their way to the services it talks to. Services that check
/// sequencers ([`crate::Fence`]) reject them anyway; lock-delay covers the
/// ones that cannot. A holder is told to stop at jeopardy
/// ([`Lock::at_risk`]), before the cell can expire its session, so the
/// delay has to cover only what was already in flight then. Chubby's
/// default is one minute; Gaios chooses 15 s because a crashed holder blocks
/// everyone for the session lease plus the lock-delay (27 s with the cell's
/// default 12 s lease, against 72 s with Chubby's minute), and 15 s still
/// exceeds the 10 s `gaios lock` and `gaios elect` give a stopped CMD
/// between SIGTERM and SIGKILL. A release, a handle's close or a closed
/// session starts no lock-delay; set 0 for holders that act on nothing
/// outside the cell, or whose services all fence with sequencers.
pub const LOCK_DELAY_DEFAULT: Duration = Duration::from_secs(15);

/// How to open a node. The default opens an existing node, asks for
/// every event and sets the lock-delay to [`LOCK_DELAY_DEFAULT`].
///
/// Opening an existing node needs some permission of its ACL, and read
/// permission when the handle asks for events about the node (the default
/// does: use [`OpenOptions::event_mask`] with 0 to open a node one may
/// only write). Creating one needs write permission on its directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    create: Option<Create>,
    event_mask: u32,
    lock_delay: Duration,
}

#[derive(Debug, Clone, Default)]
struct Create {
    exclusive: bool,
    directory: bool,
    ephemeral: bool,
    contents: Bytes,
    acl: Option<api::Acl>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { create: None, event_mask: 0xff, lock_delay: LOCK_DELAY_DEFAULT }
    }
}

impl OpenOptions {
    /// Opens an existing node.
    pub fn new() -> Self {
        OpenOptions::default()
    }

    /// Creates a file if none exists.
    pub fn create(mut self) -> Self {
        self.create.get_or_insert_with(Create::default);
        self
    }

    /// Creates, and fails with [`Error::AlreadyExists`] if the node exists.
    pub fn create_new(mut self) -> Self {
        self.create.get_or_insert_with(Create::default).exclusive = true;
        self
    }

    /// Creates a directory rather than a file.
    pub fn directory(mut self) -> Self {
        self.create.get_or_insert_with(Create::default).directory = true;
        self
    }

    /// Creates an ephemeral node, deleted when this session ends.
    pub fn ephemeral(mut self) -> Self {
        self.create.get_or_insert_with(Create::default).ephemeral = true;
        self
    }

    /// A new node's ACL; without one it takes its directory's.
    pub fn acl(mut self, acl: api::Acl) -> Self {
        self.create.get_or_insert_with(Create::default).acl = Some(acl);
        self
    }

    /// A new file's first contents.
    pub fn contents(mut self, contents: impl Into<Bytes>) -> Self {
        self.create.get_or_insert_with(Create::default).contents = contents.into();
        self
    }

    /// The events wanted (an OR of `gaios.cell.v1.EventKind` bits).
    pub fn event_mask(mut self, mask: u32) -> Self {
        self.event_mask = mask;
        self
    }

    /// If this session ends while holding the node's lock, nobody gets it
    /// for this long (at most 60 s; [`LOCK_DELAY_DEFAULT`] unless set).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }
}

/// How to hold a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One holder.
    Exclusive,
    /// Many holders, no exclusive one.
    Shared,
}

impl LockMode {
    fn to_proto(self) -> i32 {
        match self {
            LockMode::Exclusive => api::LockMode::Exclusive as i32,
            LockMode::Shared => api::LockMode::Shared as i32,
        }
    }
}

/// An open handle on one instance of a node. Cheap to clone; it stays
/// valid across master failovers and becomes invalid if the node is
/// deleted.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
    id: u64,
    path: String,
    created: bool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).field("path", &self.path).finish()
    }
}

impl Handle {
    pub(crate) async fn open(inner: Arc<Inner>, path: &str, options: OpenOptions) -> Result<Handle, Error> {
        let create = options.create.clone().unwrap_or_default();
        let request = api::OpenRequest {
            header: inner.header(),
            path: path.to_string(),
            create: options.create.is_some(),
            exclusive_create: create.exclusive,
            kind: if create.directory { api::NodeKind::Directory } else { api::NodeKind::File } as i32,
            ephemeral: create.ephemeral,
            initial_contents: create.contents,
            event_mask: options.event_mask,
            lock_delay_ms: u64::try_from(options.lock_delay.as_millis()).unwrap_or(u64::MAX),
            acl: create.acl,
        };
        let opened = inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.open(request).await }
            })
            .await?;
        Ok(Handle { inner, id: opened.handle, path: path.to_string(), created: opened.created })
    }

    /// The handle's id in the session.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether opening this handle created the node.
    pub fn created(&self) -> bool {
        self.created
    }

    fn reference(&self) -> Option<api::HandleRef> {
        self.inner.handle_ref(self.id)
    }

    /// A file's contents and stat.
    pub async fn contents(&self) -> Result<(Bytes, api::Stat), Error> {
        let request = api::GetContentsAndStatRequest { handle: self.reference() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.get_contents_and_stat(request).await }
            })
            .await?;
        Ok((answer.contents, answer.stat.unwrap_or_default()))
    }

    /// The node's stat.
    pub async fn stat(&self) -> Result<api::Stat, Error> {
        let request = api::GetStatRequest { handle: self.reference() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.get_stat(request).await }
            })
            .await?;
        Ok(answer.stat.unwrap_or_default())
    }

    /// A directory's children's names, all of them, in byte order: page
    /// after page (see [`Handle::read_dir_page`] for what a listing that
    /// spans pages promises).
    pub async fn read_dir(&self) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.read_dir_page(0, &token).await?;
            names.extend(page);
            if next.is_empty() {
                return Ok(names);
            }
            token = next;
        }
    }

    /// One page of a directory's children: at most `page_size` names (0:
    /// the cell's largest page, 10000) after `page_token` (empty for the
    /// first page), and the token of the next page (empty after the
    /// last). A child present throughout is listed exactly once over the
    /// pages; one added or removed meanwhile may or may not be.
    pub async fn read_dir_page(&self, page_size: u32, page_token: &str) -> Result<(Vec<String>, String), Error> {
        let request = api::ReadDirRequest { handle: self.reference(), page_size, page_token: page_token.to_string() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.read_dir(request).await }
            })
            .await?;
        Ok((answer.names, answer.next_page_token))
    }

    /// Writes the file whole; with `if_generation`, only if its content
    /// generation is that one (else [`Error::FailedPrecondition`]).
    pub async fn set_contents(&self, contents: impl Into<Bytes>, if_generation: Option<u64>) -> Result<api::Stat, Error> {
        let request = api::SetContentsRequest {
            header: self.inner.header(),
            handle: self.id,
            contents: contents.into(),
            if_content_generation: if_generation,
        };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.set_contents(request).await }
            })
            .await?;
        Ok(answer.stat.unwrap_or_default())
    }

    /// The node's ACL, and its stat (whose `acl_generation` names this ACL
    /// for a conditional [`Handle::set_acl`]). Needs read or change-ACL
    /// permission.
    pub async fn acl(&self) -> Result<(api::Acl, api::Stat), Error> {
        let request = api::GetAclRequest { handle: self.reference() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.get_acl(request).await }
            })
            .await?;
        Ok((answer.acl.unwrap_or_default(), answer.stat.unwrap_or_default()))
    }

    /// Replaces the node's ACL; with `if_acl_generation`, only if its ACL
    /// generation is that one (else [`Error::FailedPrecondition`]). Needs
    /// change-ACL permission.
    pub async fn set_acl(&self, acl: api::Acl, if_acl_generation: Option<u64>) -> Result<api::Stat, Error> {
        let request = api::SetAclRequest { header: self.inner.header(), handle: self.id, acl: Some(acl), if_acl_generation };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.set_acl(request).await }
            })
            .await?;
        Ok(answer.stat.unwrap_or_default())
    }

    /// Deletes the node (a directory only when empty).
    pub async fn delete(&self) -> Result<(), Error> {
        let request = api::DeleteRequest { header: self.inner.header(), handle: self.id };
        self.inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.delete(request).await }
            })
            .await
            .map(|_| ())
    }

    /// Takes the node's lock, waiting up to `wait` in line
    /// ([`Error::Timeout`] if not granted by then).
    pub async fn acquire(&self, mode: LockMode, wait: Duration) -> Result<Lock, Error> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let request = api::AcquireRequest { header: self.inner.header(), handle: self.id, mode: mode.to_proto(), wait_ms };
        // The call itself waits, so its attempts may last as long.
        let attempt = wait + self.inner.options.attempt_timeout;
        let events = self.inner.events.subscribe();
        let answer = self
            .inner
            .call_with(attempt, move |mut cell| {
                let request = request.clone();
                async move { cell.acquire(request).await }
            })
            .await?;
        self.lock_from(answer.sequencer, events)
    }

    /// Takes the node's lock if it is free now ([`Error::LockHeld`] if not).
    pub async fn try_acquire(&self, mode: LockMode) -> Result<Lock, Error> {
        let request = api::AcquireRequest { header: self.inner.header(), handle: self.id, mode: mode.to_proto(), wait_ms: 0 };
        let events = self.inner.events.subscribe();
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.try_acquire(request).await }
            })
            .await?;
        self.lock_from(answer.sequencer, events)
    }

    /// The lock granted with `sequencer`, followed from the `events` of the
    /// session subscribed to before the grant was asked for (so a deletion
    /// right after the grant is not missed).
    fn lock_from(&self, sequencer: Option<api::Sequencer>, events: broadcast::Receiver<Event>) -> Result<Lock, Error> {
        let sequencer = sequencer.ok_or_else(|| Error::Unexpected("a lock without a sequencer".into()))?;
        let (states, state) = watch::channel(LockState::Held);
        tokio::spawn(follow_lock(states, self.clone(), sequencer.clone(), events));
        Ok(Lock { handle: self.clone(), sequencer, state })
    }

    /// Makes this handle's later calls fail once `sequencer` is stale.
    pub async fn set_sequencer(&self, sequencer: &api::Sequencer) -> Result<(), Error> {
        let request =
            api::SetSequencerRequest { header: self.inner.header(), handle: self.id, sequencer: Some(sequencer.clone()) };
        self.inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.set_sequencer(request).await }
            })
            .await
            .map(|_| ())
    }

    /// This handle's events (and the session-wide ones: master failover,
    /// missed events), as they arrive. After a master failover the handle
    /// is re-validated with the new master: if its node is gone, a
    /// `HandleInvalid` follows the `MasterFailover`. The stream ends when the
    /// session expires.
    pub fn events(&self) -> ReceiverStream<Event> {
        let mut events = self.inner.events.subscribe();
        let mut state = self.inner.state.subscribe();
        let id = self.id;
        let this = self.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) if event.handle == id || event.handle == 0 => {
                            let failover = event.kind == EventKind::MasterFailover;
                            let number = event.number;
                            if tx.send(event).await.is_err() {
                                return;
                            }
                            if failover
                                && let Err(Error::FailedPrecondition { reason: api::ErrorReason::HandleInvalid, .. } | Error::NotFound(_)) = this.stat().await {
                                    let path = this.path.clone();
                                    let invalid = Event { number, handle: id, path, kind: EventKind::HandleInvalid };
                                    if tx.send(invalid).await.is_err() {
                                        return;
                                    }
                                }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(count)) => {
                            let missed = Event { number: 0, handle: id, path: String::new(), kind: EventKind::Missed { count } };
                            if tx.send(missed).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    changed = state.changed() => {
                        if changed.is_err() || *state.borrow() == SessionState::Expired {
                            return;
                        }
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// Closes the handle (releasing a lock it holds).
    pub async fn close(self) -> Result<(), Error> {
        let request = api::CloseRequest { header: self.inner.header(), handle: self.id };
        self.inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.close(request).await }
            })
            .await
            .map(|_| ())
    }
}

/// Where a held lock stands, as far as this client can tell. It only gets
/// worse, except from `AtRisk` back to `Held`: the same steps as Chubby's
/// jeopardy, safe and expired events, or Curator's connection states
/// SUSPENDED, RECONNECTED and LOST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockState {
    /// The session is safe and the lock is held: act on it.
    Held,
    /// The session is in jeopardy ([`SessionState::Jeopardy`]): no master
    /// has answered within the local lease. The lock is perhaps still held,
    /// and the cell cannot give it to anyone else before the master expires
    /// the session, but that may happen at any moment now. Also after a gap
    /// in the session's events (a deletion of the node may be among what it
    /// missed), until the cell confirms the lock is still held. Stop acting
    /// on the lock until it is `Held` again ([`Lock::recovered`]).
    AtRisk,
    /// The lock is gone for sure: the session expired or was closed, or the
    /// node was deleted. Another holder may have it.
    Lost,
}

impl LockState {
    /// The state of a lock in a session in `session`, its node deleted or
    /// not, and `unsure` while a re-check with the cell is outstanding.
    fn of(session: SessionState, deleted: bool, unsure: bool) -> LockState {
        match session {
            _ if deleted => LockState::Lost,
            SessionState::Expired => LockState::Lost,
            SessionState::Jeopardy => LockState::AtRisk,
            SessionState::Safe if unsure => LockState::AtRisk,
            SessionState::Safe => LockState::Held,
        }
    }
}

/// A held lock. It knows its sequencer (hand it to the services you call
/// so they can fence off stale holders) and tells its holder when to stop
/// acting on it.
///
/// A holder should stop at [`Lock::at_risk`] (jeopardy: the lock *may* be
/// lost), not only at [`Lock::lost`] (it *is* lost): the cell can give the
/// lock to someone else as soon as the master expires the session, while
/// this client learns of the expiry only when it reaches a master again, or
/// when its grace period (45 s by default) runs out. Jeopardy begins before
/// the master can expire the session (see [`crate::CLOCK_DRIFT_PPM`]).
///
/// ```no_run
/// # async fn example(lock: gaios_client::Lock) {
/// loop {
///     tokio::select! {
///         () = lock.at_risk() => {
///             // Pause the work that needs the lock...
///             if !lock.recovered().await {
///                 return; // ...for good: the lock is lost.
///             }
///             // ...and resume: the session is safe and the lock held.
///         }
///         () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
///             // Work under the lock, passing `lock.sequencer()` along.
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    handle: Handle,
    sequencer: api::Sequencer,
    /// Kept by [`follow_lock`]; the worst of it and the session's state is
    /// the lock's.
    state: watch::Receiver<LockState>,
}

impl Lock {
    /// The sequencer of this holding.
    pub fn sequencer(&self) -> &api::Sequencer {
        &self.sequencer
    }

    /// The handle it was taken through.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Where the lock stands now.
    pub fn state(&self) -> LockState {
        let session = LockState::of(*self.handle.inner.state.borrow(), false, false);
        session.max(*self.state.borrow())
    }

    /// The lock's state now and its changes, for a `select!` loop. (It
    /// reaches `Lost` also when the session expires, a moment after
    /// [`crate::Client::session_state`] says so.)
    pub fn states(&self) -> watch::Receiver<LockState> {
        self.state.clone()
    }

    /// Whether the lock is lost for sure (see [`LockState::Lost`]).
    pub fn is_lost(&self) -> bool {
        self.state() == LockState::Lost
    }

    /// Resolves when the lock is at risk or worse: the session entered
    /// jeopardy (or expired, or closed), or the node was deleted. At once if
    /// it is now. Stop acting on the lock: the cell may give it to someone
    /// else soon. [`Lock::recovered`] says whether the risk passed.
    pub async fn at_risk(&self) {
        let mut mine = self.state.clone();
        let mut session = self.handle.inner.state.subscribe();
        tokio::select! {
            _ = mine.wait_for(|state| *state != LockState::Held) => {}
            _ = session.wait_for(|state| *state != SessionState::Safe) => {}
        }
    }

    /// Resolves when the lock is lost for sure: the session expired or was
    /// closed, or the node was deleted. At once if it is now.
    pub async fn lost(&self) {
        let mut mine = self.state.clone();
        let mut session = self.handle.inner.state.subscribe();
        tokio::select! {
            _ = mine.wait_for(|state| *state == LockState::Lost) => {}
            _ = session.wait_for(|state| *state == SessionState::Expired) => {}
        }
    }

    /// Resolves once the risk has passed either way: `true` when the
    /// session is safe again with the lock still held (at once if it is not
    /// at risk now), `false` when the lock was lost instead. A deletion of
    /// the node that the cell reports in the same answer that makes the
    /// session safe again is seen first, and counts as lost.
    pub async fn recovered(&self) -> bool {
        let mut mine = self.state.clone();
        let mut session = self.handle.inner.state.subscribe();
        loop {
            // Held only when both say so: the session is safe, and the
            // events delivered before that (a deletion) have been seen.
            let session_now = LockState::of(*session.borrow_and_update(), false, false);
            match session_now.max(*mine.borrow_and_update()) {
                LockState::Held => return true,
                LockState::Lost => return false,
                LockState::AtRisk => {}
            }
            tokio::select! {
                // The follower ends only once the lock is lost.
                changed = mine.changed() => if changed.is_err() { return false },
                changed = session.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Gives the lock up.
    pub async fn release(self) -> Result<(), Error> {
        let request = api::ReleaseRequest { header: self.handle.inner.header(), handle: self.handle.id };
        self.handle
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.release(request).await }
            })
            .await
            .map(|_| ())
    }
}

/// How long a lock waits to ask the cell again when a re-check found no
/// master.
const RECHECK_RETRY: Duration = Duration::from_millis(200);

/// A re-check of a lock with the cell: whether its sequencer is current.
type Recheck = Pin<Box<dyn Future<Output = Result<bool, Error>> + Send>>;

/// Keeps a lock's state in `states`: from the session's state, and from the
/// session's events, which say when the lock's node was deleted. After a
/// gap in the events (missed, lagged) or a master failover it asks the cell
/// whether the sequencer is still current. Ends when the lock is lost or
/// when every copy of the [`Lock`] is dropped.
async fn follow_lock(states: watch::Sender<LockState>, handle: Handle, sequencer: api::Sequencer, mut events: broadcast::Receiver<Event>) {
    let inner = handle.inner.clone();
    let mut session = inner.state.subscribe();
    let mut deleted = false;
    let mut recheck: Option<Recheck> = None;
    // Whether a gap in the events may have hidden the node's deletion, until
    // the cell confirms the sequencer.
    let mut unsure = false;
    loop {
        let now = LockState::of(*session.borrow_and_update(), deleted, unsure);
        states.send_if_modified(|state| {
            let change = *state != now;
            *state = now;
            change
        });
        if now == LockState::Lost {
            return;
        }
        let check_again = || -> Recheck {
            let (inner, sequencer) = (inner.clone(), sequencer.clone());
            Box::pin(async move { inner.check_sequencer(&sequencer).await })
        };
        tokio::select! {
            // Events first: the client delivers those that came with a
            // KeepAlive answer before the session is safe again, so a
            // deletion is never taken for a lock kept.
            biased;
            event = events.recv() => match event {
                Ok(event) if event.handle == handle.id && event.kind == EventKind::HandleInvalid => deleted = true,
                // A failover loses no events (they are numbered in the
                // replicated state), so the lock stays held while the cell
                // confirms it; a gap may have hidden the node's deletion, so
                // the lock is at risk until the cell answers.
                Ok(event) if event.kind == EventKind::MasterFailover => recheck = Some(check_again()),
                Ok(event) if matches!(event.kind, EventKind::Missed { .. }) => {
                    unsure = true;
                    recheck = Some(check_again());
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    unsure = true;
                    recheck = Some(check_again());
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            current = async {
                match recheck.as_mut() {
                    Some(check) => check.await,
                    None => std::future::pending().await,
                }
            } => {
                recheck = match current {
                    Ok(current) => {
                        deleted |= !current;
                        unsure = false;
                        None
                    }
                    // No answer (no master now): ask again shortly (a lock
                    // unsure after a gap stays at risk meanwhile), until the
                    // cell answers or the session ends.
                    Err(_) => {
                        let again = check_again();
                        Some(Box::pin(async move {
                            tokio::time::sleep(RECHECK_RETRY).await;
                            again.await
                        }))
                    }
                };
            }
            changed = session.changed() => if changed.is_err() { return },
            () = states.closed() => return,
        }
    }
}
