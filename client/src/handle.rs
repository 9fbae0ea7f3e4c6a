//! Handles on nodes, and the locks taken through them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gaios_proto::cell::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Event, EventKind, Inner, SessionState};
use crate::error::Error;

/// How to open a node. The default opens an existing node and asks for
/// every event.
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
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { create: None, event_mask: 0xff, lock_delay: Duration::ZERO }
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
    /// for this long (at most 60 s).
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
            LockMode::Exclusive => pb::LockMode::Exclusive as i32,
            LockMode::Shared => pb::LockMode::Shared as i32,
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
        let request = pb::OpenRequest {
            header: inner.header(),
            path: path.to_string(),
            create: options.create.is_some(),
            exclusive_create: create.exclusive,
            kind: if create.directory { pb::NodeKind::Directory } else { pb::NodeKind::File } as i32,
            ephemeral: create.ephemeral,
            initial_contents: create.contents,
            event_mask: options.event_mask,
            lock_delay_ms: u64::try_from(options.lock_delay.as_millis()).unwrap_or(u64::MAX),
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

    fn reference(&self) -> Option<pb::HandleRef> {
        self.inner.handle_ref(self.id)
    }

    /// A file's contents and stat.
    pub async fn contents(&self) -> Result<(Bytes, pb::Stat), Error> {
        let request = pb::GetContentsAndStatRequest { handle: self.reference() };
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
    pub async fn stat(&self) -> Result<pb::Stat, Error> {
        let request = pb::GetStatRequest { handle: self.reference() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.get_stat(request).await }
            })
            .await?;
        Ok(answer.stat.unwrap_or_default())
    }

    /// A directory's children's names.
    pub async fn read_dir(&self) -> Result<Vec<String>, Error> {
        let request = pb::ReadDirRequest { handle: self.reference() };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.read_dir(request).await }
            })
            .await?;
        Ok(answer.names)
    }

    /// Writes the file whole; with `if_generation`, only if its content
    /// generation is that one (else [`Error::FailedPrecondition`]).
    pub async fn set_contents(&self, contents: impl Into<Bytes>, if_generation: Option<u64>) -> Result<pb::Stat, Error> {
        let request = pb::SetContentsRequest {
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

    /// Deletes the node (a directory only when empty).
    pub async fn delete(&self) -> Result<(), Error> {
        let request = pb::DeleteRequest { header: self.inner.header(), handle: self.id };
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
        let request = pb::AcquireRequest { header: self.inner.header(), handle: self.id, mode: mode.to_proto(), wait_ms };
        // The call itself waits, so its attempts may last as long.
        let attempt = wait + self.inner.options.attempt_timeout;
        let answer = self
            .inner
            .call_with(attempt, move |mut cell| {
                let request = request.clone();
                async move { cell.acquire(request).await }
            })
            .await?;
        self.lock_from(answer.sequencer)
    }

    /// Takes the node's lock if it is free now ([`Error::LockHeld`] if not).
    pub async fn try_acquire(&self, mode: LockMode) -> Result<Lock, Error> {
        let request = pb::AcquireRequest { header: self.inner.header(), handle: self.id, mode: mode.to_proto(), wait_ms: 0 };
        let answer = self
            .inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.try_acquire(request).await }
            })
            .await?;
        self.lock_from(answer.sequencer)
    }

    fn lock_from(&self, sequencer: Option<pb::Sequencer>) -> Result<Lock, Error> {
        let sequencer = sequencer.ok_or_else(|| Error::Unexpected("a lock without a sequencer".into()))?;
        Ok(Lock { handle: self.clone(), sequencer })
    }

    /// Makes this handle's later calls fail once `sequencer` is stale.
    pub async fn set_sequencer(&self, sequencer: &pb::Sequencer) -> Result<(), Error> {
        let request =
            pb::SetSequencerRequest { header: self.inner.header(), handle: self.id, sequencer: Some(sequencer.clone()) };
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
                                && let Err(Error::FailedPrecondition(_) | Error::NotFound(_)) = this.stat().await {
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
        let request = pb::CloseRequest { header: self.inner.header(), handle: self.id };
        self.inner
            .call(move |mut cell| {
                let request = request.clone();
                async move { cell.close(request).await }
            })
            .await
            .map(|_| ())
    }
}

/// A held lock. It knows its sequencer (hand it to the services you call
/// so they can fence off stale holders) and tells when it may be lost.
#[derive(Debug, Clone)]
pub struct Lock {
    handle: Handle,
    sequencer: pb::Sequencer,
}

impl Lock {
    /// The sequencer of this holding.
    pub fn sequencer(&self) -> &pb::Sequencer {
        &self.sequencer
    }

    /// The handle it was taken through.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether the session expired (the lock is gone for sure).
    pub fn is_lost(&self) -> bool {
        *self.handle.inner.state.borrow() == SessionState::Expired
    }

    /// Resolves when the lock is lost: the session expired, or the node
    /// was deleted. (In jeopardy the lock may still be held; watch
    /// [`crate::Client::session_state`] to stop acting on it meanwhile.)
    pub async fn lost(&self) {
        let mut state = self.handle.inner.state.subscribe();
        let mut events = self.handle.inner.events.subscribe();
        let id = self.handle.id;
        loop {
            if *state.borrow() == SessionState::Expired {
                return;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                event = events.recv() => match event {
                    Ok(event) if event.handle == id && event.kind == EventKind::HandleInvalid => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                    _ => {}
                },
            }
        }
    }

    /// Gives the lock up.
    pub async fn release(self) -> Result<(), Error> {
        let request = pb::ReleaseRequest { header: self.handle.inner.header(), handle: self.handle.id };
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
