//! The peer transport: protocol messages between the replicas of a cell over
//! the `Replica.Exchange` gRPC stream.
//!
//! Inbound, [`PeerService`] serves `Exchange`: it decodes every message of
//! every batch, drops (with a warning) what is malformed, misrouted or from a
//! non-member, and hands the rest to the driver's inbox with `try_send`.
//! Outbound, [`Outbound`] keeps one task per peer with a bounded queue; the
//! task connects when it has something to send and again after the stream
//! breaks (with backoff after a failed attempt), while the connection's own
//! body task takes the queue as batches (no hop through the peer's task per
//! message; one reader at a time, see `Queue::connection`).
//!
//! Who the peers are is the [`PeerDirectory`]: the `--peer` flags at start,
//! then every member of a configuration the core knows (the driver updates
//! it when the configuration changes), with their addresses and
//! incarnations. [`Outbound::update`] starts a sending task for a new member
//! and ends the task of one that left.
//!
//! Every message carries the sender's cell id and incarnation
//! ([`Envelope`]). A receiver drops and counts a message from another cell
//! (a `--peer` address that reaches another cell's replica), and one from
//! an incarnation other than the one the configuration records for the
//! sender (a member that joined through a configuration change has one). For
//! the founding members, whose incarnations no configuration records, it
//! remembers the first incarnation it hears from each: a message from any
//! other incarnation of that id (a second process started with the id, or
//! its data directory initialised again) is dropped, counted and logged as
//! an error naming the replica and both incarnations. That memory lasts only
//! as long as the receiving process: a tripwire for the founding members, a
//! guarantee for the members that joined later.
//!
//! Every queue here is bounded and every overflow drops a message and counts
//! it. That is safe because Paxos tolerates lost messages (the core resends
//! prepares, accepts and catch-up requests, and the master heartbeats), and
//! it keeps a slow or dead peer from growing this replica's memory.
//!
//! Messages are bounded by [`MESSAGE_BYTES_MAX`] (24 MiB) in both
//! directions; the Paxos core bounds its own by `message_bytes_max` (16 MiB
//! of entries, [`CORE_MESSAGE_BYTES_MAX`]). A batch of messages is cut at
//! [`BATCH_BYTES_MAX`]; a message larger than that goes alone.
//!
//! # Snapshots
//!
//! A snapshot (up to [`gaios_state::limits::SNAPSHOT_BYTES_MAX`], hundreds
//! of MiB) never travels on `Exchange`: one arriving there is dropped. The
//! core's `InstallSnapshot` for a peer goes to that peer's *snapshot task*
//! (the newest one replaces one not yet started, so at most one waits per
//! peer), which sends it on a connection of its own over the
//! `Replica.InstallSnapshot` stream: an offer naming it (slot, length,
//! CRC-32, configuration, and the sender as an envelope does), then chunks
//! of [`SNAPSHOT_CHUNK_BYTES`] from where the receiver says it stands, paced
//! to the configured rate so that a catch-up leaves the master's disk,
//! network and CPU to its writes. A transfer cut off (a dropped connection,
//! a restart of the sender's task) is resumed: the receiver keeps the bytes
//! of one partial snapshot and answers a new offer of the same snapshot
//! with how many it holds. The receiver checks the whole snapshot (length
//! and CRC-32) and restores it into a state on a blocking thread before
//! handing it, restored, to the driver, so nothing large runs on the
//! driver thread; a receiver that has learned past the snapshot's slot
//! answers `done` at once without taking it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gaios_paxos::types::Membership;
use gaios_paxos::{Message, ReplicaId, Slot, Snapshot};
use gaios_state::machine::StateMachine;
use gaios_proto::replica::v1 as peer;
use gaios_proto::replica::v1::replica_client::ReplicaClient;
use gaios_proto::replica::v1::replica_server::{Replica as ReplicaRpc, ReplicaServer};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::ops::tls::{self, Tls};
use crate::replica::codec;
use crate::replica::status::ReplicaStatus;
use crate::replica::storage::SnapshotStore;

/// The largest gRPC message either side sends or accepts on the peer
/// transport: a core message with room for its framing (snapshots travel in
/// chunks, see the module docs).
pub const MESSAGE_BYTES_MAX: usize = 24 << 20;

/// The most bytes of a snapshot's data in one chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + (64 << 10) <= MESSAGE_BYTES_MAX);
/// How long either side of a snapshot transfer waits for the other's next
/// message (an answer, a chunk) before giving up on the stream; the bytes
/// received so far stay for a resume.
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sender waits for the receiver's last answer once every chunk
/// went: the receiver checks and restores the whole state first (seconds at
/// the largest, more in debug builds).
pub const SNAPSHOT_FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a sender tries one snapshot before waiting for the core
/// to ask again.
pub const SNAPSHOT_ATTEMPTS_MAX: u32 = 20;
/// How long a partly received snapshot is kept without progress (for a
/// resume) before its memory is given back; it goes at once when the
/// replica learns past its slot another way.
pub const SNAPSHOT_PARTIAL_IDLE_MAX: Duration = Duration::from_secs(60);
/// The most bytes of an offer's configuration (`MEMBERS_MAX` members with
/// their addresses fit with room to spare).
const SNAPSHOT_OFFER_BYTES_MAX: usize = 256 << 10;

/// The most bytes of entries the Paxos core puts in one message (its
/// `message_bytes_max`); with framing such a message stays far below
/// [`MESSAGE_BYTES_MAX`] (see the test `core_messages_fit_the_transport`).
pub const CORE_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// The most messages queued for one peer; beyond it new messages are dropped.
pub const PEER_QUEUE_MAX: usize = 4096;
/// The most messages coalesced into one outbound batch.
pub const BATCH_MESSAGES_MAX: usize = 256;
/// The most encoded bytes coalesced into one outbound batch (a single larger
/// message still goes alone, up to [`MESSAGE_BYTES_MAX`]; a message that would
/// take a batch past this bound waits for the next batch).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The first and the longest wait between connection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// See [`BACKOFF_MIN`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an open connection is pinged (HTTP/2 PING) to notice a peer
/// that disappeared without closing it.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped and
/// re-made.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One decoded message for the driver.
#[derive(Debug)]
pub struct Inbound {
    /// The member that sent it.
    pub from: ReplicaId,
    /// The message.
    pub message: Message,
    /// For an `InstallSnapshot`: its data checked (length, CRC-32) and
    /// restored into a state, off the driver thread. The driver drops a
    /// snapshot without one.
    pub checked: Option<Box<StateMachine>>,
}

/// What every message this replica sends carries besides its addresses: the
/// cell and this replica's incarnation (drawn when `init` created its data
/// directory). Receivers drop messages from another cell, and messages from
/// another incarnation of a replica id than the first one they heard from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The cell this replica belongs to.
    pub cell_id: String,
    /// This replica's incarnation.
    pub incarnation: NonZeroU64,
}

impl Envelope {
    /// `message` with this envelope's cell id and incarnation.
    pub fn stamp(&self, message: peer::PaxosMessage) -> peer::PaxosMessage {
        peer::PaxosMessage { cell_id: self.cell_id.clone(), incarnation: self.incarnation.get(), ..message }
    }
}

/// Counters of what the transport dropped, shared with the status service so
/// that losses are visible instead of silent.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Inbound messages dropped because the driver's inbox was full.
    pub inbox_dropped: AtomicU64,
    /// Inbound messages dropped as malformed, misrouted, from a non-member,
    /// from another cell or from another incarnation of a member (the last
    /// two are also counted on their own below).
    pub rejected: AtomicU64,
    /// Inbound messages dropped because they named another cell.
    pub wrong_cell_dropped: AtomicU64,
    /// Inbound messages dropped because they came from another incarnation
    /// of a member than the first one this process heard from.
    pub wrong_incarnation_dropped: AtomicU64,
    /// Outbound messages dropped because a peer's queue was full or the peer
    /// was unreachable.
    pub outbound_dropped: AtomicU64,
    /// Snapshots received whole and handed to the driver.
    pub snapshots_received: AtomicU64,
    /// Snapshots (or offers of one) refused: a bad offer, a wrong length or
    /// checksum, data that does not restore into a state.
    pub snapshots_refused: AtomicU64,
    /// Bytes of snapshot data sent to peers.
    pub snapshot_bytes_sent: AtomicU64,
    /// Inbound messages, and whole streams, dropped because the TLS
    /// certificate of the connection names no member of this cell, or
    /// another member than the message's sender.
    pub identity_dropped: AtomicU64,
    /// TLS handshakes that failed or timed out on either port.
    pub tls_handshakes_failed: AtomicU64,
}

/// The replicas this one exchanges messages with, shared by the driver
/// (which updates it when the configuration changes) and the transport.
/// Bounded: one entry per member of a known configuration
/// (`gaios_paxos::types::MEMBERS_MAX` each).
#[derive(Debug, Clone, Default)]
pub struct PeerDirectory(Arc<std::sync::RwLock<BTreeMap<ReplicaId, PeerEntry>>>);

/// What the directory knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Where it listens for peers (`host:port`).
    pub address: String,
    /// Its incarnation as a configuration records it; 0 when none does
    /// (the founding members).
    pub incarnation: u64,
}

impl PeerDirectory {
    /// A directory holding `peers`.
    pub fn new(peers: BTreeMap<ReplicaId, PeerEntry>) -> Self {
        PeerDirectory(Arc::new(std::sync::RwLock::new(peers)))
    }

    /// Replaces what the directory holds.
    pub fn set(&self, peers: BTreeMap<ReplicaId, PeerEntry>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = peers;
    }

    /// The entry of `id`, if it is a peer.
    pub fn get(&self, id: ReplicaId) -> Option<PeerEntry> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Every peer.
    pub fn all(&self) -> BTreeMap<ReplicaId, PeerEntry> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The `Replica` gRPC service: receives peers' batches and feeds the driver.
#[derive(Debug, Clone)]
pub struct PeerService {
    id: ReplicaId,
    cell_id: Arc<str>,
    members: PeerDirectory,
    inbox: mpsc::Sender<Inbound>,
    stats: Arc<TransportStats>,
    /// The first incarnation heard from each member since this process
    /// started, and how many messages of other incarnations were dropped;
    /// at most one entry per member.
    incarnations: Arc<Mutex<BTreeMap<ReplicaId, PeerIncarnation>>>,
    /// The one snapshot being received (or cut off and kept for a resume).
    partial: Arc<Mutex<Option<Partial>>>,
    /// Numbers the `InstallSnapshot` streams, so that only the newest one
    /// of a snapshot appends to it.
    streams: Arc<AtomicU64>,
    /// The replica's status, to tell a snapshot it no longer needs.
    status: Option<watch::Receiver<ReplicaStatus>>,
    /// One snapshot restored at a time (each can take a GiB for a moment).
    restoring: Arc<tokio::sync::Semaphore>,
    /// Where a received snapshot's data is written before the driver gets
    /// it, so that the driver's write records it without writing it.
    store: Option<SnapshotStore>,
    /// Whether every stream must come over TLS with a certificate naming
    /// the member that sends on it (see `ops::tls`).
    certificates_required: bool,
    /// Where to tell the driver that a member's `Exchange` stream ended.
    closed: Option<mpsc::Sender<ReplicaId>>,
}

/// Which snapshot an offer names: a new offer of the same one resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OfferKey {
    from: ReplicaId,
    incarnation: u64,
    slot: Slot,
    data_bytes: usize,
    data_crc32: u32,
}

/// A snapshot being received.
#[derive(Debug)]
struct Partial {
    key: OfferKey,
    membership: Membership,
    data: Vec<u8>,
    crc: crc32fast::Hasher,
    /// The stream that may append to it (the newest offer's).
    stream: u64,
    /// When it last received a chunk (or was offered).
    progressed: std::time::Instant,
}

/// What the receiver remembers of one member's incarnations.
#[derive(Debug, Clone, Copy)]
struct PeerIncarnation {
    /// The incarnation of the member's first message since this process
    /// started; the only one accepted from then on.
    first: u64,
    /// Messages from other incarnations dropped.
    refused: u64,
}

impl PeerService {
    /// A service for replica `id` of the cell `cell_id` hearing from the
    /// peers in `members`, delivering into the driver's bounded `inbox`.
    pub fn new(
        id: ReplicaId,
        cell_id: &str,
        members: PeerDirectory,
        inbox: mpsc::Sender<Inbound>,
        stats: Arc<TransportStats>,
    ) -> Self {
        PeerService {
            id,
            cell_id: cell_id.into(),
            members,
            inbox,
            stats,
            incarnations: Arc::default(),
            partial: Arc::default(),
            streams: Arc::default(),
            status: None,
            restoring: Arc::new(tokio::sync::Semaphore::new(1)),
            store: None,
            certificates_required: false,
            closed: None,
        }
    }

    /// Tells the driver, through `closed` (never waiting; dropped when
    /// full), the member whose `Exchange` stream ended: the connection of a
    /// process that died closes at once, long before its silence would
    /// time out.
    #[must_use]
    pub fn with_closed_connections(mut self, closed: mpsc::Sender<ReplicaId>) -> Self {
        self.closed = Some(closed);
        self
    }

    /// Makes every stream need a TLS certificate that names the member
    /// sending on it (`replica-<id>.<cell-id>`); messages claiming another
    /// sender are dropped and counted.
    #[must_use]
    pub fn with_peer_certificates_required(mut self, required: bool) -> Self {
        self.certificates_required = required;
        self
    }

    /// The member the stream's TLS certificate names; `None` when
    /// certificates are not required. A stream whose certificate names no
    /// member of this cell is refused (and counted).
    fn certified_sender<T>(&self, request: &Request<T>) -> Result<Option<ReplicaId>, Status> {
        if !self.certificates_required {
            return Ok(None);
        }
        let named = request.peer_certs().and_then(|certificates| tls::replica_of(&certificates, &self.cell_id));
        match named {
            Some(id) if id != self.id && self.members.get(id).is_some() => Ok(Some(id)),
            _ => {
                let dropped = self.stats.identity_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(remote = ?request.remote_addr(), ?named, dropped,
                        "refusing a peer stream: its certificate names no other member of this cell");
                }
                Err(Status::permission_denied(format!(
                    "peer streams need a certificate naming a member as replica-<id>.{}",
                    self.cell_id
                )))
            }
        }
    }

    /// Whether a message from `from` may come on a stream whose certificate
    /// names `certified` (any sender when certificates are not required).
    fn sender_certified(&self, remote: Option<SocketAddr>, certified: Option<ReplicaId>, from: ReplicaId) -> bool {
        match certified {
            Some(id) if id != from => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let dropped = self.stats.identity_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(?remote, certified = id, from, dropped,
                        "dropping a peer message whose sender is not the member its certificate names");
                }
                false
            }
            _ => true,
        }
    }

    /// Lets the service write a received snapshot's data (checked) to the
    /// replica's data directory before handing it to the driver, off the
    /// driver thread.
    #[must_use]
    pub fn with_snapshot_store(mut self, store: SnapshotStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Lets the service read the replica's status, so that it answers an
    /// offer of a snapshot the replica has learned past without taking it.
    #[must_use]
    pub fn with_status(mut self, status: watch::Receiver<ReplicaStatus>) -> Self {
        self.status = Some(status);
        self
    }

    /// Wraps the service for tonic with explicit message-size bounds.
    pub fn into_server(self) -> ReplicaServer<PeerService> {
        ReplicaServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Checks and decodes one message and offers it to the inbox; never
    /// blocks and never panics on bad input. Returns the sender when it is
    /// a member admitted in its incarnation.
    fn deliver(&self, remote: Option<SocketAddr>, certified: Option<ReplicaId>, message: peer::PaxosMessage) -> Option<ReplicaId> {
        if !self.same_cell(remote, &message.cell_id, message.from) {
            return None;
        }
        let incarnation = message.incarnation;
        let decoded = match codec::decode_message(message) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?remote, %error, "dropping malformed peer message");
                return None;
            }
        };
        if !self.sender_certified(remote, certified, decoded.from)
            || !self.admit_sender(remote, decoded.from, decoded.to, incarnation)
        {
            return None;
        }
        if matches!(decoded.message, Message::Heartbeat { .. }) {
            self.drop_stale_partial();
        }
        if matches!(decoded.message, Message::InstallSnapshot { .. }) {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?remote, from = decoded.from, "dropping a snapshot sent on Exchange; snapshots travel on InstallSnapshot");
            // Dropped, but from an admitted member.
            return Some(decoded.from);
        }
        let from = decoded.from;
        self.offer_to_driver(Inbound { from, message: decoded.message, checked: None });
        Some(from)
    }

    /// Whether a message naming `cell_id` comes from this cell; one from
    /// another is counted (and logged now and then).
    fn same_cell(&self, remote: Option<SocketAddr>, cell_id: &str, from: ReplicaId) -> bool {
        if *cell_id == *self.cell_id {
            return true;
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let dropped = self.stats.wrong_cell_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(?remote, from, cell = %cell_id, ours = %self.cell_id, dropped,
                "dropping peer messages from another cell; check the --peer addresses");
        }
        false
    }

    /// Whether something `from` sent `to` this replica in `incarnation` may
    /// reach the driver: `from` is another member, and the incarnation is
    /// the one it is known by (see [`Self::admit_incarnation`]).
    fn admit_sender(&self, remote: Option<SocketAddr>, from: ReplicaId, to: ReplicaId, incarnation: u64) -> bool {
        let sender = self.members.get(from);
        let Some(sender) = sender.filter(|_| to == self.id && from != self.id) else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?remote, from, to, "dropping misrouted peer message");
            return false;
        };
        self.admit_incarnation(from, sender.incarnation, incarnation)
    }

    /// Offers `inbound` to the driver's inbox without waiting; drops and
    /// counts it when the inbox is full. Returns whether it was taken.
    fn offer_to_driver(&self, inbound: Inbound) -> bool {
        match self.inbox.try_send(inbound) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.stats.inbox_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "driver inbox full; dropping peer messages");
                }
                false
            }
            // The driver has stopped; the process is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl PeerService {
    /// Whether a message of member `from`'s `incarnation` may reach the
    /// driver: the one the configuration records (`recorded`, when not 0),
    /// or else the first incarnation heard from `from` since this process
    /// started. Another one means a second process runs as `from`, or
    /// `from`'s data directory was initialised again; its messages are
    /// dropped, counted and reported loudly.
    fn admit_incarnation(&self, from: ReplicaId, recorded: u64, incarnation: u64) -> bool {
        if incarnation == 0 {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from, "dropping a peer message without an incarnation (a peer of an older Gaios?)");
            return false;
        }
        if recorded != 0 {
            if recorded == incarnation {
                return true;
            }
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let dropped = self.stats.wrong_incarnation_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(
                    replica = from,
                    recorded = %format_args!("{recorded:016x}"),
                    other_incarnation = %format_args!("{incarnation:016x}"),
                    "messages from an incarnation of replica {from} that its configuration does not record; dropping them"
                );
            }
            return false;
        }
        let mut known = self.incarnations.lock().unwrap_or_else(PoisonError::into_inner);
        let peer = known.entry(from).or_insert_with(|| {
            tracing::info!(from, incarnation = %format_args!("{incarnation:016x}"), "first message from peer");
            PeerIncarnation { first: incarnation, refused: 0 }
        });
        if peer.first == incarnation {
            return true;
        }
        peer.refused = peer.refused.saturating_add(1);
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.stats.wrong_incarnation_dropped.fetch_add(1, Ordering::Relaxed);
        if peer.refused.is_power_of_two() {
            tracing::error!(
                replica = from,
                first_incarnation = %format_args!("{:016x}", peer.first),
                other_incarnation = %format_args!("{incarnation:016x}"),
                dropped = peer.refused,
                "messages from a second incarnation of replica {from}: two processes run as replica {from}, \
                 or its data directory was initialised again; dropping them (never run two processes with one id, \
                 never re-initialise or copy a member's data directory)"
            );
        }
        false
    }
}

/// Why a received snapshot could not be kept.
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error(transparent)]
    Restore(#[from] gaios_state::machine::SnapshotError),
    #[error(transparent)]
    Storage(crate::replica::storage::StorageError),
}

/// What the receiving side of an `InstallSnapshot` stream answers.
type ProgressSender = mpsc::Sender<Result<peer::SnapshotProgress, Status>>;

fn progress(received_bytes: usize, done: bool) -> peer::SnapshotProgress {
    peer::SnapshotProgress { received_bytes: received_bytes as u64, done }
}

impl PeerService {
    /// Checks an offer: from a member of this cell in the incarnation it
    /// is known by, for this replica, of a snapshot within the bounds.
    fn check_offer(&self, remote: Option<SocketAddr>, offer: peer::SnapshotOffer) -> Result<(OfferKey, Membership), Status> {
        if !self.same_cell(remote, &offer.cell_id, offer.from) {
            return Err(Status::permission_denied("the offer names another cell"));
        }
        if !self.admit_sender(remote, offer.from, offer.to, offer.incarnation) {
            return Err(Status::permission_denied("the offer's sender is not a member, or not in the incarnation it is known by, or the offer is not for this replica"));
        }
        let refuse = |why: String| {
            self.stats.snapshots_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?remote, from = offer.from, "refusing a snapshot offer: {why}");
            Status::invalid_argument(why)
        };
        let data_bytes = usize::try_from(offer.data_bytes)
            .ok()
            .filter(|&bytes| bytes > 0 && bytes <= gaios_state::limits::SNAPSHOT_BYTES_MAX)
            .ok_or_else(|| refuse(format!("a snapshot of {} bytes, over the bound of {}", offer.data_bytes, gaios_state::limits::SNAPSHOT_BYTES_MAX)))?;
        if offer.slot == 0 || offer.slot > gaios_paxos::types::SLOT_MAX {
            return Err(refuse(format!("slot {} out of range", offer.slot)));
        }
        let membership = offer
            .membership
            .ok_or_else(|| refuse("no configuration".into()))
            .and_then(|m| codec::decode_membership(m).map_err(|e| refuse(e.to_string())))?;
        membership.validate().map_err(|e| refuse(e.to_string()))?;
        let key = OfferKey { from: offer.from, incarnation: offer.incarnation, slot: offer.slot, data_bytes, data_crc32: offer.data_crc32 };
        Ok((key, membership))
    }

    /// Whether the replica has learned through `slot`, so that a snapshot
    /// at it would be ignored.
    fn needs_no_snapshot_at(&self, slot: Slot) -> bool {
        self.status.as_ref().is_some_and(|status| status.borrow().chosen_through >= slot)
    }

    /// Gives back the memory of a partly received snapshot that is no
    /// longer needed (the replica learned past it) or was abandoned (no
    /// progress for [`SNAPSHOT_PARTIAL_IDLE_MAX`]). Called on heartbeats;
    /// never waits for the lock.
    fn drop_stale_partial(&self) {
        let Ok(mut partial) = self.partial.try_lock() else { return };
        if partial.as_ref().is_some_and(|held| {
            self.needs_no_snapshot_at(held.key.slot) || held.progressed.elapsed() >= SNAPSHOT_PARTIAL_IDLE_MAX
        }) {
            *partial = None;
        }
    }

    /// Starts (or resumes) receiving the snapshot `key` for stream
    /// `stream`; returns how many of its bytes are held. Another snapshot
    /// being received (it progressed within [`SNAPSHOT_STALL_TIMEOUT`]) is
    /// displaced only by a newer one: two senders of the same follower
    /// must not wipe out each other's progress.
    fn begin_partial(&self, key: OfferKey, membership: Membership, stream: u64) -> Result<usize, Status> {
        let mut partial = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        match partial.as_mut() {
            Some(held) if held.key == key => {
                held.stream = stream;
                held.progressed = std::time::Instant::now();
                Ok(held.data.len())
            }
            Some(held) if held.key.slot >= key.slot && held.progressed.elapsed() < SNAPSHOT_STALL_TIMEOUT => {
                Err(Status::unavailable(format!(
                    "receiving the snapshot at slot {} from replica {}; offer again later",
                    held.key.slot, held.key.from
                )))
            }
            _ => {
                *partial = Some(Partial {
                    key,
                    membership,
                    data: Vec::new(),
                    crc: crc32fast::Hasher::new(),
                    stream,
                    progressed: std::time::Instant::now(),
                });
                Ok(0)
            }
        }
    }

    /// Appends a chunk of stream `stream`; the whole snapshot once it is
    /// complete (taken out, so a new offer starts afresh).
    fn append_chunk(&self, stream: u64, chunk: &[u8]) -> Result<Option<Partial>, Status> {
        let mut held = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(partial) = held.as_mut().filter(|p| p.stream == stream) else {
            return Err(Status::aborted("a newer offer took over this snapshot"));
        };
        let room = partial.key.data_bytes - partial.data.len();
        if chunk.len() > room || chunk.len() > SNAPSHOT_CHUNK_BYTES {
            self.stats.snapshots_refused.fetch_add(1, Ordering::Relaxed);
            *held = None;
            return Err(Status::invalid_argument("a chunk runs past the offered length or the chunk bound"));
        }
        if partial.data.capacity() == 0 {
            // Exactly once: the length is bounded and the sender a member.
            partial.data.reserve_exact(partial.key.data_bytes);
        }
        partial.data.extend_from_slice(chunk);
        partial.crc.update(chunk);
        partial.progressed = std::time::Instant::now();
        if partial.data.len() < partial.key.data_bytes {
            return Ok(None);
        }
        Ok(held.take())
    }

    /// Checks a complete snapshot (CRC-32, then restoring it into a state
    /// on a blocking thread) and hands it, restored, to the driver.
    async fn finish_snapshot(&self, remote: Option<SocketAddr>, partial: Partial) -> Result<(), Status> {
        let Partial { key, membership, data, crc, .. } = partial;
        let found = crc.finalize();
        if found != key.data_crc32 {
            self.stats.snapshots_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?remote, from = key.from, slot = key.slot, expected = key.data_crc32, found, "a snapshot's CRC-32 does not match; dropping it");
            return Err(Status::data_loss(format!(
                "the snapshot's CRC-32 is {found:08x}, the offer said {:08x}",
                key.data_crc32
            )));
        }
        let data = Bytes::from(data);
        let restoring = data.clone();
        let permit = self.restoring.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        let store = self.store.clone();
        let slot = key.slot;
        let restored = tokio::task::spawn_blocking(move || {
            let state = StateMachine::restore(&restoring)?;
            if let Some(store) = store {
                store.stage(slot, &restoring).map_err(StageError::Storage)?;
            }
            Ok::<_, StageError>(state)
        })
        .await
        .map_err(|_| Status::internal("restoring the snapshot panicked"))?;
        drop(permit);
        let state = match restored {
            Ok(state) => state,
            Err(StageError::Storage(error)) => {
                tracing::error!(from = key.from, slot = key.slot, %error, "cannot write a received snapshot");
                return Err(Status::unavailable(format!("cannot write the snapshot: {error}")));
            }
            Err(StageError::Restore(error)) => {
                self.stats.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?remote, from = key.from, slot = key.slot, %error, "dropping a snapshot that does not restore");
                return Err(Status::invalid_argument(format!("the snapshot does not restore: {error}")));
            }
        };
        let snapshot = Snapshot { slot: key.slot, data, membership };
        let inbound = Inbound { from: key.from, message: Message::InstallSnapshot { snapshot }, checked: Some(Box::new(state)) };
        // Worth a wait, unlike a small message: a full inbox would cost
        // sending it all again.
        match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, self.inbox.send(inbound)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("the replica is stopping")),
            Err(_) => {
                self.stats.inbox_dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Status::unavailable("the replica's inbox stayed full; offer the snapshot again"));
            }
        }
        self.stats.snapshots_received.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?remote, from = key.from, slot = key.slot, bytes = key.data_bytes, "received a snapshot");
        Ok(())
    }

    /// Receives the chunks of stream `stream` until the snapshot is
    /// complete, the stream ends or stalls, or a newer offer takes over.
    async fn receive_chunks(&self, remote: Option<SocketAddr>, stream: u64, mut chunks: Streaming<peer::SnapshotChunk>, answers: &ProgressSender) -> Result<(), Status> {
        loop {
            let chunk = match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, chunks.message()).await {
                Err(_) => return Err(Status::deadline_exceeded("no chunk for too long; the bytes so far are kept for a resume")),
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => return Err(Status::cancelled("the sender ended the stream before the snapshot was complete")),
                Ok(Ok(Some(chunk))) => chunk,
            };
            let Some(peer::snapshot_chunk::Body::Data(bytes)) = chunk.body else {
                return Err(Status::invalid_argument("only data chunks may follow the offer"));
            };
            if let Some(complete) = self.append_chunk(stream, &bytes)? {
                let bytes = complete.key.data_bytes;
                self.finish_snapshot(remote, complete).await?;
                let _ = answers.send(Ok(progress(bytes, true))).await;
                return Ok(());
            }
        }
    }
}

#[tonic::async_trait]
impl ReplicaRpc for PeerService {
    type ExchangeStream = ReceiverStream<Result<peer::PaxosBatch, Status>>;
    type InstallSnapshotStream = ReceiverStream<Result<peer::SnapshotProgress, Status>>;

    /// Receives one snapshot: the offer first, then chunks from where this
    /// replica said it stands (see the module docs).
    async fn install_snapshot(
        &self,
        request: Request<Streaming<peer::SnapshotChunk>>,
    ) -> Result<Response<Self::InstallSnapshotStream>, Status> {
        let remote = request.remote_addr();
        let certified = self.certified_sender(&request)?;
        let mut chunks = request.into_inner();
        let first = tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, chunks.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no offer"))??;
        let Some(peer::SnapshotChunk { body: Some(peer::snapshot_chunk::Body::Offer(offer)) }) = first else {
            return Err(Status::invalid_argument("an InstallSnapshot stream starts with an offer"));
        };
        if offer.encoded_len() > SNAPSHOT_OFFER_BYTES_MAX {
            return Err(Status::invalid_argument("the offer is too large"));
        }
        if !self.sender_certified(remote, certified, offer.from) {
            return Err(Status::permission_denied("the offer's sender is not the member the certificate names"));
        }
        let (key, membership) = self.check_offer(remote, offer)?;
        let (answers, response) = mpsc::channel(2);
        if self.needs_no_snapshot_at(key.slot) {
            let _ = answers.send(Ok(progress(key.data_bytes, true))).await;
            return Ok(Response::new(ReceiverStream::new(response)));
        }
        let stream = self.streams.fetch_add(1, Ordering::Relaxed);
        let held = self.begin_partial(key, membership, stream)?;
        let _ = answers.send(Ok(progress(held, false))).await;
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(status) = service.receive_chunks(remote, stream, chunks, &answers).await {
                tracing::debug!(?remote, %status, "snapshot stream ended before the snapshot was installed");
                let _ = answers.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(response)))
    }

    /// Reads the peer's batches until the stream ends. Nothing is sent back on
    /// this stream (replies go over this replica's own connection to the
    /// peer); the response stays open for as long as the request does.
    async fn exchange(
        &self,
        request: Request<Streaming<peer::PaxosBatch>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let remote = request.remote_addr();
        let certified = self.certified_sender(&request)?;
        let mut stream = request.into_inner();
        let (keep_open, response) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            // The member whose messages this stream brought: the first one
            // admitted (a member's stream carries its own; without TLS,
            // nothing but the envelope says who sends).
            let mut sender = None;
            loop {
                match stream.message().await {
                    Ok(Some(batch)) => {
                        for message in batch.messages {
                            let delivered = service.deliver(remote, certified, message);
                            sender = sender.or(delivered);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(?remote, %status, "peer stream ended");
                        break;
                    }
                }
            }
            if let (Some(from), Some(closed)) = (sender, &service.closed) {
                let _ = closed.try_send(from);
            }
            drop(keep_open);
        });
        Ok(Response::new(ReceiverStream::new(response)))
    }
}

/// The sending side: per peer, one bounded queue and one task for messages,
/// and one task for snapshots.
#[derive(Debug)]
pub struct Outbound {
    id: ReplicaId,
    envelope: Arc<Envelope>,
    /// Per peer: its address, its message task's queue and its snapshot
    /// task's next snapshot.
    peers: BTreeMap<ReplicaId, PeerTasks>,
    stats: Arc<TransportStats>,
    /// The pace of a snapshot transfer, in bytes per second.
    snapshot_bytes_per_s: u64,
    /// How connections to peers are made.
    dialer: Dialer,
}

/// Makes the endpoint of a peer: plaintext, or TLS with this replica's
/// certificate (read anew for every connection, so that rotated
/// certificates are used from the next one on), expecting the peer's
/// certificate to name it as `replica-<id>.<cell-id>`.
#[derive(Debug, Clone)]
struct Dialer {
    tls: Option<Arc<Tls>>,
    cell_id: Arc<str>,
}

impl Dialer {
    /// The endpoint of `peer` at `address`, or `None` (logged) if the
    /// address is not one.
    fn endpoint(&self, peer: ReplicaId, address: &str) -> Option<Endpoint> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = match Endpoint::from_shared(format!("{scheme}://{address}")) {
            Ok(endpoint) => endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                // A peer whose machine vanished sends no reset; pings find out.
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
            Err(error) => {
                tracing::error!(peer, %address, %error, "cannot build an endpoint for peer; not sending to it");
                return None;
            }
        };
        let Some(tls) = &self.tls else { return Some(endpoint) };
        match endpoint.tls_config(tls.client_config(Some(&tls::replica_name(peer, &self.cell_id)))) {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                tracing::error!(peer, %address, %error, "cannot use the TLS certificates for peer; not sending to it");
                None
            }
        }
    }
}

/// The sending tasks of one peer (they end when this is dropped).
#[derive(Debug)]
struct PeerTasks {
    address: String,
    messages: mpsc::Sender<peer::PaxosMessage>,
    snapshots: watch::Sender<Option<Snapshot>>,
    /// The slot of the snapshot the snapshot task is sending; 0 when idle.
    sending: Arc<AtomicU64>,
    /// Dropped with the peer: its message task ends at once, connected or
    /// not (its queue closing ends it only once the queue is drained).
    _stop: oneshot::Sender<()>,
}

impl Outbound {
    /// Starts the sending tasks of every peer of `peers` but `id`; every
    /// message goes out stamped with `envelope`, snapshots at
    /// `snapshot_bytes_per_s` (at least 1 MiB/s). Must be called inside a
    /// tokio runtime; the tasks end when their peer leaves
    /// ([`Outbound::update`]) or the `Outbound` is dropped.
    pub fn start(
        id: ReplicaId,
        envelope: Envelope,
        peers: &PeerDirectory,
        stats: Arc<TransportStats>,
        snapshot_bytes_per_s: u64,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        let dialer = Dialer { tls, cell_id: envelope.cell_id.as_str().into() };
        let mut outbound = Outbound {
            id,
            envelope: Arc::new(envelope),
            peers: BTreeMap::new(),
            stats,
            snapshot_bytes_per_s: snapshot_bytes_per_s.max(1 << 20),
            dialer,
        };
        outbound.update(peers);
        outbound
    }

    /// Follows the directory: starts a task for each new peer (or one whose
    /// address changed) and ends the tasks of peers no longer in it.
    pub fn update(&mut self, peers: &PeerDirectory) {
        let wanted = peers.all();
        self.peers.retain(|id, tasks| wanted.get(id).is_some_and(|entry| entry.address == tasks.address));
        for (peer, entry) in wanted {
            if peer == self.id || self.peers.contains_key(&peer) {
                continue;
            }
            let (messages, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(peer_task(self.id, peer, entry.address.clone(), rx, stopped, self.stats.clone(), self.dialer.clone()));
            let (snapshots, offers) = watch::channel(None);
            let sending = Arc::new(AtomicU64::new(0));
            let sender = SnapshotSender {
                sending: sending.clone(),
                to: peer,
                address: entry.address.clone(),
                envelope: self.envelope.clone(),
                from: self.id,
                stats: self.stats.clone(),
                bytes_per_s: self.snapshot_bytes_per_s,
                dialer: self.dialer.clone(),
            };
            tokio::spawn(sender.run(offers));
            self.peers.insert(peer, PeerTasks { address: entry.address, messages, snapshots, sending, _stop: stop });
        }
    }

    /// Queues `message` for `to` without waiting; drops it (and counts the
    /// drop) when the peer's queue is full or `to` is not a peer.
    pub fn send(&self, to: ReplicaId, message: &Message) {
        let Some(tasks) = self.peers.get(&to) else {
            tracing::warn!(to, "dropping message for a replica that is not a peer");
            self.stats.outbound_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Message::InstallSnapshot { snapshot } = message {
            // The snapshot task takes the newest, unless it is sending this
            // one already (the core offers it again on every catch-up
            // request of a lagging peer).
            if tasks.sending.load(Ordering::Relaxed) != snapshot.slot {
                tasks.snapshots.send_replace(Some(snapshot.clone()));
            }
            return;
        }
        if tasks.messages.try_send(self.envelope.stamp(codec::encode_message(self.id, to, message))).is_err() {
            let dropped = self.stats.outbound_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(to, dropped, "peer queue full; dropping messages");
            }
        }
    }
}

/// A peer's queue of messages, shared by its sending task (which waits on it
/// for something to send while no connection is open) and the request
/// stream of the open connection (which takes batches from it when the
/// connection's body task asks for more; see [`Batches`]).
type PeerQueue = Arc<Mutex<Queue>>;

#[derive(Debug)]
struct Queue {
    messages: mpsc::Receiver<peer::PaxosMessage>,
    /// The one connection whose request stream may take from `messages`;
    /// the sending task moves it on before it waits itself, so that a
    /// stream of an earlier connection (its body task may still poll it for
    /// a while) ends at its next poll without touching the receiver, which
    /// keeps a single waker: two readers could lose each other's wake-up.
    connection: u64,
}

fn lock(queue: &PeerQueue) -> std::sync::MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends everything queued for `peer`, connecting when there is something to
/// send, reconnecting after the connection breaks (with backoff after a
/// failed attempt); ends when the peer leaves (`stop` fires or the queue
/// closes).
async fn peer_task(
    id: ReplicaId,
    peer: ReplicaId,
    address: String,
    messages: mpsc::Receiver<peer::PaxosMessage>,
    mut stop: oneshot::Receiver<()>,
    stats: Arc<TransportStats>,
    dialer: Dialer,
) {
    let queue: PeerQueue = Arc::new(Mutex::new(Queue { messages, connection: 0 }));
    let mut backoff = BACKOFF_MIN;
    loop {
        // From here on no connection takes from the queue.
        let connection = {
            let mut queue = lock(&queue);
            queue.connection += 1;
            queue.connection
        };
        // Wait for something to send before connecting (lazy connection).
        let Some(first) = next_queued(&queue).await else { break };
        // An endpoint that cannot be built now (unusable certificates
        // after a reload, say) may be buildable later.
        let connected = match dialer.endpoint(peer, &address) {
            Some(endpoint) => connect(&endpoint, Batches { queue: queue.clone(), connection, next: Some(first) }).await,
            None => Err(ConnectError::NoEndpoint),
        };
        match connected {
            Ok((_client, mut responses)) => {
                tracing::info!(id, peer, %address, "connected to peer");
                backoff = BACKOFF_MIN;
                // The connection's body task streams the queue; the peer
                // never sends on this stream, so anything but a pending read
                // means the connection is gone.
                tokio::select! {
                    _ = responses.message() => {}
                    _ = &mut stop => break,
                }
                tracing::info!(id, peer, %address, "connection to peer lost; reconnecting");
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "cannot reach peer");
                // What queued for an unreachable peer is stale by the time it
                // could go; the core resends what still matters.
                let mut dropped = 1;
                {
                    let mut queue = lock(&queue);
                    queue.connection += 1;
                    while queue.messages.try_recv().is_ok() {
                        dropped += 1;
                    }
                }
                stats.outbound_dropped.fetch_add(dropped, Ordering::Relaxed);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // The last connection's stream ends at its next poll.
    lock(&queue).connection += 1;
}

/// The next message of a peer's queue; `None` once the queue closed (the
/// peer left).
async fn next_queued(queue: &PeerQueue) -> Option<peer::PaxosMessage> {
    std::future::poll_fn(|cx| lock(queue).messages.poll_recv(cx)).await
}

/// The request stream of one `Exchange` connection: batches cut from the
/// peer's queue when the connection's body task polls for the next one, so
/// a message the driver queues reaches the connection with one wake-up (of
/// that task), not two (of a sending task, then of it). A batch never
/// passes [`BATCH_BYTES_MAX`] unless one message alone does (a core message
/// of up to [`CORE_MESSAGE_BYTES_MAX`]), which then goes alone: a batch is
/// never a large message plus others, so it stays under
/// [`MESSAGE_BYTES_MAX`]. Ends when the queue closes or the sending task
/// has moved on from this connection.
struct Batches {
    queue: PeerQueue,
    /// Which connection this stream belongs to (see [`Queue::connection`]).
    connection: u64,
    /// A message taken from the queue that did not fit the last batch (or
    /// the one that made the sending task connect): it leads the next.
    next: Option<peer::PaxosMessage>,
}

impl tokio_stream::Stream for Batches {
    type Item = peer::PaxosBatch;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<peer::PaxosBatch>> {
        use std::task::Poll;
        let this = &mut *self;
        let mut queue = lock(&this.queue);
        if queue.connection != this.connection {
            return Poll::Ready(None);
        }
        let first = match this.next.take() {
            Some(message) => message,
            None => match queue.messages.poll_recv(cx) {
                Poll::Ready(Some(message)) => message,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut bytes = first.encoded_len();
        let mut batch = peer::PaxosBatch { messages: vec![first] };
        while batch.messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            let Ok(message) = queue.messages.try_recv() else { break };
            let size = message.encoded_len();
            if bytes.saturating_add(size) > BATCH_BYTES_MAX {
                this.next = Some(message);
                break;
            }
            bytes += size;
            batch.messages.push(message);
        }
        Poll::Ready(Some(batch))
    }
}

/// Sends one peer the snapshots the core hands it (see the module docs).
#[derive(Debug)]
struct SnapshotSender {
    /// The slot being sent, 0 when idle (shared with [`Outbound::send`]).
    sending: Arc<AtomicU64>,
    from: ReplicaId,
    to: ReplicaId,
    address: String,
    envelope: Arc<Envelope>,
    stats: Arc<TransportStats>,
    bytes_per_s: u64,
    dialer: Dialer,
}

/// Why one attempt at sending a snapshot failed.
#[derive(Debug, thiserror::Error)]
enum SendSnapshotError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the receiver answered: {0}")]
    Refused(#[from] Status),
    #[error("the receiver did not answer in time")]
    Stalled,
    #[error("the stream closed early")]
    Closed,
    #[error("the receiver claims {0} bytes, more than the snapshot has")]
    BadProgress(u64),
}

impl SnapshotSender {
    /// Sends each snapshot `offers` holds until it is delivered, superseded
    /// by a newer one, or tried [`SNAPSHOT_ATTEMPTS_MAX`] times; ends when
    /// the `Outbound` drops the peer.
    async fn run(self, mut offers: watch::Receiver<Option<Snapshot>>) {
        let mut client = None;
        while offers.changed().await.is_ok() {
            let Some(snapshot) = offers.borrow_and_update().clone() else { continue };
            self.sending.store(snapshot.slot, Ordering::Relaxed);
            // Once per snapshot, off the runtime's threads.
            let data = snapshot.data.clone();
            let Ok(crc) = tokio::task::spawn_blocking(move || crc32fast::hash(&data)).await else { return };
            let mut backoff = BACKOFF_MIN;
            for attempt in 1..=SNAPSHOT_ATTEMPTS_MAX {
                let Some(endpoint) = self.dialer.endpoint(self.to, &self.address) else {
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                };
                match self.send(&endpoint, &mut client, &snapshot, crc).await {
                    Ok(()) => break,
                    Err(error) => {
                        client = None;
                        tracing::info!(to = self.to, slot = snapshot.slot, attempt, %error, "snapshot transfer cut off; resuming");
                    }
                }
                if offers.has_changed().is_err() {
                    // The peer left the configuration.
                    return;
                }
                let newer = offers.borrow().as_ref().is_some_and(|next| next.slot > snapshot.slot);
                if newer || attempt == SNAPSHOT_ATTEMPTS_MAX {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            // Offers that came meanwhile were of this snapshot or newer;
            // a newer one is still marked unseen.
            if offers.borrow().as_ref().is_some_and(|next| next.slot == snapshot.slot) {
                offers.borrow_and_update();
            }
            self.sending.store(0, Ordering::Relaxed);
        }
    }

    /// One attempt: offer, then the chunks from where the receiver stands,
    /// paced, then the receiver's last answer.
    async fn send(
        &self,
        endpoint: &Endpoint,
        client: &mut Option<ReplicaClient<Channel>>,
        snapshot: &Snapshot,
        data_crc32: u32,
    ) -> Result<(), SendSnapshotError> {
        let client = match client {
            Some(client) => client,
            None => client.insert(
                ReplicaClient::new(
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connect()).await.map_err(|_| SendSnapshotError::Stalled)??,
                )
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
            ),
        };
        let offer = peer::SnapshotOffer {
            cell_id: self.envelope.cell_id.clone(),
            from: self.from,
            incarnation: self.envelope.incarnation.get(),
            to: self.to,
            slot: snapshot.slot,
            membership: Some(codec::encode_membership(&snapshot.membership)),
            data_bytes: snapshot.data.len() as u64,
            data_crc32,
        };
        let (chunks, rx) = mpsc::channel(2);
        let offer = peer::SnapshotChunk { body: Some(peer::snapshot_chunk::Body::Offer(offer)) };
        chunks.send(offer).await.map_err(|_| SendSnapshotError::Closed)?;
        let mut answers = client.install_snapshot(ReceiverStream::new(rx)).await?.into_inner();
        let answer = next_answer(&mut answers, SNAPSHOT_STALL_TIMEOUT).await?;
        if answer.done {
            return Ok(());
        }
        let length = snapshot.data.len();
        let mut offset = usize::try_from(answer.received_bytes)
            .ok()
            .filter(|&held| held <= length)
            .ok_or(SendSnapshotError::BadProgress(answer.received_bytes))?;
        tracing::info!(to = self.to, slot = snapshot.slot, bytes = length, from_byte = offset, "sending a snapshot");
        let started = tokio::time::Instant::now();
        let mut sent: u64 = 0;
        while offset < length {
            let end = offset.saturating_add(SNAPSHOT_CHUNK_BYTES).min(length);
            let chunk = peer::SnapshotChunk { body: Some(peer::snapshot_chunk::Body::Data(snapshot.data.slice(offset..end))) };
            tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, chunks.send(chunk))
                .await
                .map_err(|_| SendSnapshotError::Stalled)?
                .map_err(|_| SendSnapshotError::Closed)?;
            sent = sent.saturating_add((end - offset) as u64);
            self.stats.snapshot_bytes_sent.fetch_add((end - offset) as u64, Ordering::Relaxed);
            offset = end;
            // Paced: never ahead of `bytes_per_s` since the first chunk.
            let due = started + Duration::from_secs_f64(sent as f64 / self.bytes_per_s as f64);
            tokio::time::sleep_until(due).await;
        }
        let answer = next_answer(&mut answers, SNAPSHOT_FINISH_TIMEOUT).await?;
        if answer.done { Ok(()) } else { Err(SendSnapshotError::Closed) }
    }
}

/// The receiver's next answer on a snapshot stream, within `timeout`.
async fn next_answer(answers: &mut Streaming<peer::SnapshotProgress>, timeout: Duration) -> Result<peer::SnapshotProgress, SendSnapshotError> {
    tokio::time::timeout(timeout, answers.message())
        .await
        .map_err(|_| SendSnapshotError::Stalled)??
        .ok_or(SendSnapshotError::Closed)
}

/// Why a connection to a peer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP or HTTP/2 connection failed.
    #[error("connecting: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The peer refused the `Exchange` call.
    #[error("opening the exchange stream: {0}")]
    Rpc(#[from] Status),
    /// The connection (TCP, then the TLS handshake) took longer than
    /// [`HANDSHAKE_TIMEOUT`] (a peer that is stopped still completes TCP).
    #[error("connecting took longer than {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
    /// No endpoint could be built (logged): a bad address, or TLS
    /// material tonic refused.
    #[error("no endpoint can be built for the peer")]
    NoEndpoint,
}

/// The longest a connection to a peer may take, TLS handshake included
/// (`connect_timeout` bounds only the TCP connect).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type Connection = (ReplicaClient<Channel>, Streaming<peer::PaxosBatch>);

/// Opens a connection and its `Exchange` stream, which sends `batches`.
async fn connect(endpoint: &Endpoint, batches: Batches) -> Result<Connection, ConnectError> {
    let channel = tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connect()).await.map_err(|_| ConnectError::TimedOut)??;
    let mut client = ReplicaClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let responses = client.exchange(batches).await?.into_inner();
    Ok((client, responses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaios_paxos::Ballot;

    const CELL: &str = "test-cell";

    fn service(capacity: usize) -> (PeerService, mpsc::Receiver<Inbound>, Arc<TransportStats>) {
        let stats = Arc::new(TransportStats::default());
        let (tx, rx) = mpsc::channel(capacity);
        let peers = [2, 3].map(|id| (id, PeerEntry { address: format!("127.0.0.1:{}", 7100 + id), incarnation: 0 }));
        (PeerService::new(1, CELL, PeerDirectory::new(peers.into_iter().collect()), tx, stats.clone()), rx, stats)
    }

    /// A connection's request stream cuts batches of at most
    /// `BATCH_MESSAGES_MAX` from the queue, the message that made the task
    /// connect first; once the sending task has moved on from the
    /// connection, its stream ends without taking anything.
    #[tokio::test]
    async fn a_connections_stream_cuts_batches_and_ends_once_retired() {
        use tokio_stream::StreamExt as _;
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        let message = |n| codec::encode_message(1, 2, &Message::Heartbeat { ballot: Ballot::new(1, 1), chosen_through: n, sent_tick: n });
        for n in 0..300 {
            tx.try_send(message(n)).expect("room");
        }
        let queue: PeerQueue = Arc::new(Mutex::new(Queue { messages: rx, connection: 1 }));
        let mut stream = Batches { queue: queue.clone(), connection: 1, next: Some(message(1000)) };
        let first = stream.next().await.expect("a batch");
        assert_eq!(first.messages.len(), BATCH_MESSAGES_MAX);
        assert_eq!(first.messages[0], message(1000), "the message that made the task connect goes first");
        assert_eq!(first.messages[1], message(0));
        let second = stream.next().await.expect("a batch");
        assert_eq!(second.messages.len(), 300 + 1 - BATCH_MESSAGES_MAX);
        tx.try_send(message(2000)).expect("room");
        lock(&queue).connection += 1;
        assert!(stream.next().await.is_none(), "a retired connection's stream goes on");
        assert_eq!(next_queued(&queue).await, Some(message(2000)), "a retired connection's stream took a message");
        drop(tx);
        assert_eq!(next_queued(&queue).await, None, "a closed queue ends the task");
    }

    /// A member that joined through a configuration change has its
    /// incarnation recorded: only that one gets through, whoever speaks
    /// first; and once it leaves the directory (removed), nothing from it
    /// does.
    #[test]
    fn a_joined_member_is_heard_only_in_its_recorded_incarnation() {
        let (service, mut inbox, stats) = service(8);
        let mut peers = service.members.all();
        peers.insert(6, PeerEntry { address: "127.0.0.1:7106".into(), incarnation: incarnation(6).get() });
        service.members.set(peers.clone());
        let impostor = NonZeroU64::new(0xbad).expect("not zero");
        service.deliver(None, None, heartbeat_from(CELL, impostor, 6, 1));
        assert!(inbox.try_recv().is_err(), "an incarnation the configuration does not record got through");
        assert_eq!(stats.wrong_incarnation_dropped.load(Ordering::Relaxed), 1);
        service.deliver(None, None, heartbeat(6, 1));
        assert_eq!(inbox.try_recv().expect("delivered").from, 6);
        peers.remove(&6);
        service.members.set(peers);
        service.deliver(None, None, heartbeat(6, 1));
        assert!(inbox.try_recv().is_err(), "a removed member got through");
    }

    /// The incarnation the tests give replica `id` unless they say otherwise.
    fn incarnation(id: ReplicaId) -> NonZeroU64 {
        NonZeroU64::new(0xabcd_0000 + id).expect("not zero")
    }

    /// A heartbeat from `from`'s usual incarnation in the test cell.
    fn heartbeat(from: ReplicaId, to: ReplicaId) -> peer::PaxosMessage {
        heartbeat_from(CELL, incarnation(from), from, to)
    }

    fn heartbeat_from(cell_id: &str, incarnation: NonZeroU64, from: ReplicaId, to: ReplicaId) -> peer::PaxosMessage {
        let message = Message::Heartbeat { ballot: Ballot::new(1, from), chosen_through: 0, sent_tick: 7 };
        Envelope { cell_id: cell_id.to_owned(), incarnation }.stamp(codec::encode_message(from, to, &message))
    }

    /// A stamped message carries the sender's cell and incarnation and is
    /// otherwise the encoded message.
    #[test]
    fn the_envelope_stamps_cell_and_incarnation() {
        let stamped = heartbeat(2, 1);
        assert_eq!((stamped.cell_id.as_str(), stamped.incarnation), (CELL, incarnation(2).get()));
        assert_eq!((stamped.from, stamped.to), (2, 1));
        assert!(stamped.body.is_some());
    }

    /// A message that names another cell (a wrong --peer address pointing
    /// at another cell's replica) is dropped and counted.
    #[test]
    fn a_message_from_another_cell_is_dropped_and_counted() {
        let (service, mut inbox, stats) = service(4);
        service.deliver(None, None, heartbeat_from("other-cell", incarnation(2), 2, 1));
        service.deliver(None, None, heartbeat_from("", incarnation(2), 2, 1));
        assert!(inbox.try_recv().is_err(), "a message from another cell reached the driver");
        assert_eq!(stats.wrong_cell_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 2);
        // The same member from this cell still gets through.
        service.deliver(None, None, heartbeat(2, 1));
        assert_eq!(inbox.try_recv().expect("delivered").from, 2);
    }

    /// The first incarnation heard from a member is the only one accepted
    /// from it for as long as the process runs: another incarnation of the
    /// same id (a second process with that id, or its directory initialised
    /// again) is dropped and counted, before and after the first one speaks
    /// again, and other members are not affected. A message without an
    /// incarnation is dropped too.
    #[test]
    fn a_second_incarnation_of_a_member_is_dropped_and_counted() {
        let (service, mut inbox, stats) = service(16);
        let impostor = NonZeroU64::new(0x0bad_0002).expect("not zero");
        service.deliver(None, None, heartbeat(2, 1));
        assert_eq!(inbox.try_recv().expect("first incarnation delivered").from, 2);
        service.deliver(None, None, heartbeat_from(CELL, impostor, 2, 1));
        service.deliver(None, None, heartbeat_from(CELL, impostor, 2, 1));
        assert!(inbox.try_recv().is_err(), "a second incarnation of replica 2 reached the driver");
        service.deliver(None, None, heartbeat(2, 1));
        assert_eq!(inbox.try_recv().expect("the first incarnation still delivered").from, 2);
        // Replica 3's first incarnation is its own, whatever 2 did.
        service.deliver(None, None, heartbeat_from(CELL, impostor, 3, 1));
        assert_eq!(inbox.try_recv().expect("replica 3 delivered").from, 3);
        service.deliver(None, None, heartbeat(3, 1));
        assert!(inbox.try_recv().is_err(), "replica 3's second incarnation reached the driver");
        assert_eq!(stats.wrong_incarnation_dropped.load(Ordering::Relaxed), 3);

        let mut unstamped = codec::encode_message(2, 1, &Message::CatchUpRequest { from_slot: 1 });
        unstamped.cell_id = CELL.to_owned();
        service.deliver(None, None, unstamped);
        assert!(inbox.try_recv().is_err(), "a message without an incarnation reached the driver");
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
    }

    /// A message that is dropped for another reason (not for this replica,
    /// from a non-member) teaches the receiver no incarnation.
    #[test]
    fn a_dropped_message_does_not_set_the_incarnation() {
        let (service, mut inbox, _stats) = service(4);
        let early = NonZeroU64::new(0x0bad_0003).expect("not zero");
        service.deliver(None, None, heartbeat_from(CELL, early, 3, 2)); // not for us
        service.deliver(None, None, heartbeat(3, 1));
        assert_eq!(inbox.try_recv().expect("replica 3's real incarnation delivered").from, 3);
    }

    #[test]
    fn a_member_message_reaches_the_inbox() {
        let (service, mut inbox, stats) = service(4);
        service.deliver(None, None, heartbeat(2, 1));
        let inbound = inbox.try_recv().expect("delivered");
        assert_eq!(inbound.from, 2);
        assert!(matches!(inbound.message, Message::Heartbeat { sent_tick: 7, .. }));
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn malformed_misrouted_and_foreign_messages_are_dropped() {
        let (service, mut inbox, stats) = service(4);
        service.deliver(None, None, peer::PaxosMessage { from: 2, to: 1, body: None, ..heartbeat(2, 1) });
        service.deliver(None, None, heartbeat(2, 3)); // not for us
        service.deliver(None, None, heartbeat(9, 1)); // not a member
        service.deliver(None, None, heartbeat(1, 1)); // claims to be us
        assert!(inbox.try_recv().is_err());
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
    }

    /// A state whose snapshot is a few MiB: sessions with long names.
    fn big_state() -> StateMachine {
        use gaios_proto::state::v1 as wire;
        let mut state = StateMachine::new();
        state.set_check_after_apply(false);
        for i in 0..12_000u64 {
            let kind = wire::command::Kind::CreateSession(wire::CreateSession {
                client_name: format!("{i:0>250}"),
                session_secret: Bytes::from(i.to_le_bytes().repeat(2)),
                ..Default::default()
            });
            let command = wire::Command { proposer_incarnation: 1, proposal_number: i, now_ms: 1, lock_clock_ms: 0, kind: Some(kind) };
            state.apply(&command);
        }
        state
    }

    fn snapshot_of(state: &StateMachine, slot: Slot) -> Snapshot {
        let members = [1, 2, 3].map(|id| gaios_paxos::types::Member {
            id,
            voter: true,
            incarnation: 0,
            peer_address: format!("127.0.0.1:{}", 7100 + id),
            client_address: String::new(),
        });
        Snapshot { slot, data: state.snapshot(), membership: Membership { members: members.to_vec(), highest_id: 3 } }
    }

    /// Serves `service` on a free loopback port.
    async fn serve(service: PeerService) -> Result<SocketAddr, Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service.into_server()).serve_with_incoming(incoming));
        Ok(address)
    }

    fn sender_to(address: SocketAddr, stats: Arc<TransportStats>) -> SnapshotSender {
        SnapshotSender {
            sending: Arc::default(),
            from: 2,
            to: 1,
            address: address.to_string(),
            envelope: Arc::new(Envelope { cell_id: CELL.into(), incarnation: incarnation(2) }),
            stats,
            bytes_per_s: 1 << 30,
            dialer: Dialer { tls: None, cell_id: CELL.into() },
        }
    }

    /// Opens an `InstallSnapshot` stream to `address` with `offer`; returns
    /// the chunk sender, the answers and the first answer.
    async fn open_transfer(
        address: SocketAddr,
        offer: peer::SnapshotOffer,
    ) -> Result<(mpsc::Sender<peer::SnapshotChunk>, Streaming<peer::SnapshotProgress>), Status> {
        let mut client = ReplicaClient::connect(format!("http://{address}")).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let (chunks, rx) = mpsc::channel(4);
        chunks.send(peer::SnapshotChunk { body: Some(peer::snapshot_chunk::Body::Offer(offer)) }).await.map_err(|_| Status::internal("closed"))?;
        let answers = client.install_snapshot(ReceiverStream::new(rx)).await?.into_inner();
        Ok((chunks, answers))
    }

    fn offer_of(snapshot: &Snapshot) -> peer::SnapshotOffer {
        peer::SnapshotOffer {
            cell_id: CELL.into(),
            from: 2,
            incarnation: incarnation(2).get(),
            to: 1,
            slot: snapshot.slot,
            membership: Some(codec::encode_membership(&snapshot.membership)),
            data_bytes: snapshot.data.len() as u64,
            data_crc32: crc32fast::hash(&snapshot.data),
        }
    }

    fn data_chunk(data: Bytes) -> peer::SnapshotChunk {
        peer::SnapshotChunk { body: Some(peer::snapshot_chunk::Body::Data(data)) }
    }

    /// A snapshot of several MiB goes in chunks of at most 1 MiB and
    /// reaches the driver checked and restored, equal to what was sent; an
    /// offer of it once the replica learned past its slot is answered done
    /// without taking a byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_streams_in_chunks_and_arrives_restored() -> Result<(), Box<dyn std::error::Error>> {
        let (service, mut inbox, stats) = service(4);
        // With a data directory, the received data is written there first.
        let dir = tempfile::tempdir()?;
        let identity = crate::replica::storage::Identity { cell_id: CELL.into(), replica_id: 1 };
        let record = crate::replica::storage::InitRecord {
            identity: identity.clone(),
            incarnation: incarnation(1),
            members: vec![],
            joining: false,
        };
        crate::replica::storage::Storage::init(dir.path(), &record)?;
        let storage = crate::replica::storage::Storage::open(dir.path(), &identity)?;
        let service = service.with_snapshot_store(storage.snapshot_store());
        let state = big_state();
        let snapshot = snapshot_of(&state, 500);
        assert!(snapshot.data.len() > 3 * SNAPSHOT_CHUNK_BYTES, "the snapshot is {} bytes", snapshot.data.len());
        let address = serve(service).await?;
        let sender = sender_to(address, stats.clone());
        let mut client = None;
        let endpoint = Dialer { tls: None, cell_id: CELL.into() }.endpoint(1, &address.to_string()).ok_or("endpoint")?;
        sender.send(&endpoint, &mut client, &snapshot, crc32fast::hash(&snapshot.data)).await?;
        let inbound = inbox.try_recv()?;
        assert_eq!(inbound.from, 2);
        let Message::InstallSnapshot { snapshot: received } = inbound.message else { panic!("not a snapshot") };
        assert!(received == snapshot, "the snapshot received differs from the one sent");
        let restored = inbound.checked.ok_or("the snapshot came unchecked")?;
        assert!(restored.snapshot() == state.snapshot(), "the restored state differs from the one sent");
        assert_eq!(stats.snapshots_received.load(Ordering::Relaxed), 1);
        assert_eq!(stats.snapshot_bytes_sent.load(Ordering::Relaxed), snapshot.data.len() as u64);
        let written = std::fs::read(dir.path().join("snapshots").join(format!("{:020}.snap", snapshot.slot)))?;
        assert!(written == snapshot.data, "the data written is not the snapshot's");
        Ok(())
    }

    /// A transfer cut off half way is resumed by the next offer of the
    /// same snapshot: the receiver says how many bytes it holds and only
    /// the rest is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_off_transfer_resumes_where_it_stopped() -> Result<(), Box<dyn std::error::Error>> {
        let (service, mut inbox, stats) = service(4);
        let snapshot = snapshot_of(&big_state(), 700);
        let address = serve(service).await?;
        let (chunks, mut answers) = open_transfer(address, offer_of(&snapshot)).await?;
        assert_eq!(answers.message().await?.map(|a| (a.received_bytes, a.done)), Some((0, false)));
        let half = 2 * SNAPSHOT_CHUNK_BYTES;
        for start in (0..half).step_by(SNAPSHOT_CHUNK_BYTES) {
            chunks.send(data_chunk(snapshot.data.slice(start..start + SNAPSHOT_CHUNK_BYTES))).await?;
        }
        // The connection drops (the whole client goes).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop((chunks, answers));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(inbox.try_recv().is_err(), "half a snapshot reached the driver");

        let (_chunks, mut answers) = open_transfer(address, offer_of(&snapshot)).await?;
        let answer = answers.message().await?.ok_or("no answer")?;
        assert_eq!((answer.received_bytes, answer.done), (half as u64, false), "the receiver did not keep what it had");
        drop(_chunks);

        let sender = sender_to(address, stats.clone());
        let endpoint = Dialer { tls: None, cell_id: CELL.into() }.endpoint(1, &address.to_string()).ok_or("endpoint")?;
        sender.send(&endpoint, &mut None, &snapshot, crc32fast::hash(&snapshot.data)).await?;
        assert_eq!(stats.snapshot_bytes_sent.load(Ordering::Relaxed), (snapshot.data.len() - half) as u64, "the resume sent more than the rest");
        let Message::InstallSnapshot { snapshot: received } = inbox.try_recv()?.message else { panic!("not a snapshot") };
        assert!(received == snapshot, "the snapshot received differs from the one sent");
        Ok(())
    }

    /// Data that does not match the offered CRC-32 is refused whole and
    /// never reaches the driver; so is data that does not restore into a
    /// state, even with a matching checksum.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupted_snapshot_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (service, mut inbox, stats) = service(4);
        let snapshot = snapshot_of(&big_state(), 900);
        let address = serve(service).await?;
        let mut corrupted = snapshot.data.to_vec();
        corrupted[SNAPSHOT_CHUNK_BYTES + 7] ^= 0x40;
        let corrupted = Bytes::from(corrupted);
        let (chunks, mut answers) = open_transfer(address, offer_of(&snapshot)).await?;
        assert_eq!(answers.message().await?.map(|a| a.received_bytes), Some(0));
        for start in (0..corrupted.len()).step_by(SNAPSHOT_CHUNK_BYTES) {
            chunks.send(data_chunk(corrupted.slice(start..(start + SNAPSHOT_CHUNK_BYTES).min(corrupted.len())))).await?;
        }
        let refusal = answers.message().await.expect_err("a corrupted snapshot was accepted");
        assert_eq!(refusal.code(), tonic::Code::DataLoss, "{refusal:?}");

        // Garbage with its own (correct) checksum: restoring finds it out.
        let garbage = Snapshot { data: Bytes::from(vec![0xff; 4096]), ..snapshot.clone() };
        let (chunks, mut answers) = open_transfer(address, offer_of(&garbage)).await?;
        assert_eq!(answers.message().await?.map(|a| a.received_bytes), Some(0));
        chunks.send(data_chunk(garbage.data.clone())).await?;
        let refusal = answers.message().await.expect_err("garbage was accepted");
        assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
        assert!(inbox.try_recv().is_err(), "a bad snapshot reached the driver");
        assert_eq!(stats.snapshots_refused.load(Ordering::Relaxed), 2);
        Ok(())
    }

    /// Offers from another cell, from a non-member, in an incarnation the
    /// member is not known by, for another replica, or of a snapshot over
    /// the bound are refused before any byte is taken; a snapshot sent on
    /// `Exchange` is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_offers_are_refused_and_exchange_carries_no_snapshot() -> Result<(), Box<dyn std::error::Error>> {
        let (service, mut inbox, stats) = service(4);
        let snapshot = snapshot_of(&StateMachine::new(), 9);
        // Teach the receiver member 2's incarnation first.
        service.deliver(None, None, heartbeat(2, 1));
        assert!(inbox.try_recv().is_ok());
        service.deliver(None, None, Envelope { cell_id: CELL.into(), incarnation: incarnation(2) }
            .stamp(codec::encode_message(2, 1, &Message::InstallSnapshot { snapshot: snapshot.clone() })));
        assert!(inbox.try_recv().is_err(), "a snapshot on Exchange reached the driver");
        let address = serve(service).await?;
        let good = offer_of(&snapshot);
        let cases = [
            ("another cell", peer::SnapshotOffer { cell_id: "other".into(), ..good.clone() }, tonic::Code::PermissionDenied),
            ("a non-member", peer::SnapshotOffer { from: 9, ..good.clone() }, tonic::Code::PermissionDenied),
            ("another incarnation", peer::SnapshotOffer { incarnation: 0xbad, ..good.clone() }, tonic::Code::PermissionDenied),
            ("another replica", peer::SnapshotOffer { to: 3, ..good.clone() }, tonic::Code::PermissionDenied),
            ("too large", peer::SnapshotOffer { data_bytes: gaios_state::limits::SNAPSHOT_BYTES_MAX as u64 + 1, ..good.clone() }, tonic::Code::InvalidArgument),
            ("empty", peer::SnapshotOffer { data_bytes: 0, ..good.clone() }, tonic::Code::InvalidArgument),
            ("no configuration", peer::SnapshotOffer { membership: None, ..good.clone() }, tonic::Code::InvalidArgument),
        ];
        for (what, offer, code) in cases {
            let refusal = open_transfer(address, offer).await.map(|_| ()).expect_err(what);
            assert_eq!(refusal.code(), code, "{what}: {refusal:?}");
        }
        assert!(inbox.try_recv().is_err());
        assert_eq!(stats.snapshots_refused.load(Ordering::Relaxed), 3);
        Ok(())
    }

    fn status_with_chosen_through(chosen_through: Slot) -> ReplicaStatus {
        ReplicaStatus {
            id: 1,
            role: crate::replica::status::Role::Follower,
            promised: gaios_paxos::Ballot::default(),
            own_ballot: None,
            master: None,
            chosen_through,
            applied: chosen_through,
            log_start: 0,
            installed_snapshot: None,
            lease_valid_until: None,
            read_barrier: None,
            snapshot_slot: 0,
            members: Arc::default(),
            membership_slot: 0,
            highest_member_id: 3,
        }
    }

    /// A second sender's offer of an older or equal snapshot does not wipe
    /// out a transfer in progress (it is told to come back), a newer one
    /// displaces it; a chunk past the offered length, or data before any
    /// offer, is refused; an offer of a snapshot at or below what the
    /// replica learned is answered done at once, without a byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn competing_offers_bad_chunks_and_needless_snapshots() -> Result<(), Box<dyn std::error::Error>> {
        let (service, mut inbox, _stats) = service(4);
        let (status_tx, status_rx) = watch::channel(status_with_chosen_through(100));
        let service = service.with_status(status_rx);
        let snapshot = snapshot_of(&big_state(), 700);
        let address = serve(service).await?;

        // Member 2 is half way through slot 700.
        let (chunks, mut answers) = open_transfer(address, offer_of(&snapshot)).await?;
        assert_eq!(answers.message().await?.map(|a| a.received_bytes), Some(0));
        chunks.send(data_chunk(snapshot.data.slice(0..SNAPSHOT_CHUNK_BYTES))).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Member 3 offers an older one: refused, 2's progress intact.
        let older = Snapshot { slot: 650, ..snapshot.clone() };
        let from_three = peer::SnapshotOffer { from: 3, incarnation: incarnation(3).get(), ..offer_of(&older) };
        let refusal = open_transfer(address, from_three).await.map(|_| ()).expect_err("an older offer displaced a transfer");
        assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
        let (_again, mut resumed) = open_transfer(address, offer_of(&snapshot)).await?;
        assert_eq!(resumed.message().await?.map(|a| a.received_bytes), Some(SNAPSHOT_CHUNK_BYTES as u64));
        drop((chunks, answers, _again, resumed));

        // A newer one from member 3 displaces it; then a chunk too many.
        let tiny = snapshot_of(&StateMachine::new(), 800);
        let from_three = peer::SnapshotOffer { from: 3, incarnation: incarnation(3).get(), ..offer_of(&tiny) };
        let (chunks, mut answers) = open_transfer(address, from_three).await?;
        assert_eq!(answers.message().await?.map(|a| a.received_bytes), Some(0));
        let mut too_long = tiny.data.to_vec();
        too_long.push(0);
        chunks.send(data_chunk(Bytes::from(too_long))).await?;
        let refusal = answers.message().await.expect_err("a chunk past the offered length was taken");
        assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");

        // Data before any offer.
        let mut client = ReplicaClient::connect(format!("http://{address}")).await?;
        let refusal = client
            .install_snapshot(tokio_stream::iter(vec![data_chunk(tiny.data.clone())]))
            .await
            .map(|_| ())
            .expect_err("data without an offer was taken");
        assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");

        // The replica learned through slot 900: a snapshot at 800 is done.
        status_tx.send_replace(status_with_chosen_through(900));
        let (_chunks, mut answers) = open_transfer(address, offer_of(&tiny)).await?;
        let answer = answers.message().await?.ok_or("no answer")?;
        assert!(answer.done, "a snapshot the replica learned past was asked for: {answer:?}");
        assert!(inbox.try_recv().is_err(), "something reached the driver");
        Ok(())
    }

    #[test]
    fn a_full_inbox_drops_and_counts() {
        let (service, mut inbox, stats) = service(1);
        service.deliver(None, None, heartbeat(2, 1));
        service.deliver(None, None, heartbeat(3, 1));
        assert_eq!(inbox.try_recv().expect("first kept").from, 2);
        assert!(inbox.try_recv().is_err());
        assert_eq!(stats.inbox_dropped.load(Ordering::Relaxed), 1);
    }
}
