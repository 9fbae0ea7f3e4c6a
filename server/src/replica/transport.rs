//! The peer transport: protocol messages between the replicas of a cell over
//! the `Replica.Exchange` gRPC stream.
//!
//! Inbound, [`PeerService`] serves `Exchange`: it decodes every message of
//! every batch, drops (with a warning) what is malformed, misrouted or from a
//! non-member, and hands the rest to the driver's inbox with `try_send`.
//! Outbound, [`Outbound`] keeps one task per peer with a bounded queue; the
//! task connects when it has something to send, streams the queue as
//! batches, and reconnects with backoff when the stream breaks.
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
//! Messages are bounded by [`MESSAGE_BYTES_MAX`] (64 MiB) in both directions:
//! enough for a snapshot of the largest state the state machine accepts
//! ([`gaios_state::limits::STATE_BYTES_MAX`], 48 MiB), which travels in one message.
//! Every other message is bounded by the Paxos core's `message_bytes_max`
//! (16 MiB of entries, [`CORE_MESSAGE_BYTES_MAX`]). A batch of messages is cut
//! at [`BATCH_BYTES_MAX`]; a message larger than that goes alone. Snapshots
//! larger than the bound cannot be sent until they are split into chunks
//! (the membership issue streams them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gaios_paxos::{Message, ReplicaId};
use gaios_proto::replica::v1 as peer;
use gaios_proto::replica::v1::replica_client::ReplicaClient;
use gaios_proto::replica::v1::replica_server::{Replica as ReplicaRpc, ReplicaServer};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::replica::codec;

/// The largest gRPC message either side sends or accepts on the peer
/// transport; see the module docs for what it means for snapshots.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

// The largest snapshot travels in one message, with room for the message
// around it.
const _: () = assert!(gaios_state::limits::SNAPSHOT_BYTES_MAX + (1 << 20) <= MESSAGE_BYTES_MAX);
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
/// Batches waiting in a connection's request stream; the rest wait in the
/// peer's queue.
const STREAM_BATCHES_MAX: usize = 16;

/// One decoded message for the driver.
#[derive(Debug)]
pub struct Inbound {
    /// The member that sent it.
    pub from: ReplicaId,
    /// The message.
    pub message: Message,
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
        }
    }

    /// Wraps the service for tonic with explicit message-size bounds.
    pub fn into_server(self) -> ReplicaServer<PeerService> {
        ReplicaServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Checks and decodes one message and offers it to the inbox; never
    /// blocks and never panics on bad input.
    fn deliver(&self, remote: Option<SocketAddr>, message: peer::PaxosMessage) {
        if *message.cell_id != *self.cell_id {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let dropped = self.stats.wrong_cell_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(?remote, from = message.from, cell = %message.cell_id, ours = %self.cell_id, dropped,
                    "dropping peer messages from another cell; check the --peer addresses");
            }
            return;
        }
        let incarnation = message.incarnation;
        let decoded = match codec::decode_message(message) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?remote, %error, "dropping malformed peer message");
                return;
            }
        };
        let sender = self.members.get(decoded.from);
        let Some(sender) = sender.filter(|_| decoded.to == self.id && decoded.from != self.id) else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?remote, from = decoded.from, to = decoded.to, "dropping misrouted peer message");
            return;
        };
        if !self.admit_incarnation(decoded.from, sender.incarnation, incarnation) {
            return;
        }
        let inbound = Inbound { from: decoded.from, message: decoded.message };
        match self.inbox.try_send(inbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.stats.inbox_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "driver inbox full; dropping peer messages");
                }
            }
            // The driver has stopped; the process is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
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

#[tonic::async_trait]
impl ReplicaRpc for PeerService {
    type ExchangeStream = ReceiverStream<Result<peer::PaxosBatch, Status>>;

    /// Reads the peer's batches until the stream ends. Nothing is sent back on
    /// this stream (replies go over this replica's own connection to the
    /// peer); the response stays open for as long as the request does.
    async fn exchange(
        &self,
        request: Request<Streaming<peer::PaxosBatch>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let remote = request.remote_addr();
        let mut stream = request.into_inner();
        let (keep_open, response) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(batch)) => {
                        for message in batch.messages {
                            service.deliver(remote, message);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(?remote, %status, "peer stream ended");
                        break;
                    }
                }
            }
            drop(keep_open);
        });
        Ok(Response::new(ReceiverStream::new(response)))
    }
}

/// The sending side: one bounded queue and one task per peer.
#[derive(Debug)]
pub struct Outbound {
    id: ReplicaId,
    envelope: Arc<Envelope>,
    /// Per peer: the address its task sends to, and the task's queue.
    peers: BTreeMap<ReplicaId, (String, mpsc::Sender<peer::PaxosMessage>)>,
    stats: Arc<TransportStats>,
}

impl Outbound {
    /// Starts one sending task per peer of `peers` but `id`; every message
    /// goes out stamped with `envelope`. Must be called inside a tokio
    /// runtime; a task ends when its peer leaves ([`Outbound::update`]) or
    /// the `Outbound` is dropped.
    pub fn start(id: ReplicaId, envelope: Envelope, peers: &PeerDirectory, stats: Arc<TransportStats>) -> Self {
        let mut outbound = Outbound { id, envelope: Arc::new(envelope), peers: BTreeMap::new(), stats };
        outbound.update(peers);
        outbound
    }

    /// Follows the directory: starts a task for each new peer (or one whose
    /// address changed) and ends the tasks of peers no longer in it.
    pub fn update(&mut self, peers: &PeerDirectory) {
        let wanted = peers.all();
        self.peers.retain(|id, (address, _)| wanted.get(id).is_some_and(|entry| entry.address == *address));
        for (peer, entry) in wanted {
            if peer == self.id || self.peers.contains_key(&peer) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            tokio::spawn(peer_task(self.id, peer, entry.address.clone(), rx, self.stats.clone()));
            self.peers.insert(peer, (entry.address, tx));
        }
    }

    /// Queues `message` for `to` without waiting; drops it (and counts the
    /// drop) when the peer's queue is full or `to` is not a peer.
    pub fn send(&self, to: ReplicaId, message: &Message) {
        let Some((_, queue)) = self.peers.get(&to) else {
            tracing::warn!(to, "dropping message for a replica that is not a peer");
            self.stats.outbound_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if queue.try_send(self.envelope.stamp(codec::encode_message(self.id, to, message))).is_err() {
            let dropped = self.stats.outbound_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(to, dropped, "peer queue full; dropping messages");
            }
        }
    }
}

/// Sends everything queued for `peer`, connecting when there is something to
/// send and reconnecting with backoff after a failure.
async fn peer_task(
    id: ReplicaId,
    peer: ReplicaId,
    address: String,
    mut queue: mpsc::Receiver<peer::PaxosMessage>,
    stats: Arc<TransportStats>,
) {
    let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A peer whose machine vanished sends no reset; pings find out.
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
        Err(error) => {
            tracing::error!(peer, %address, %error, "cannot build an endpoint for peer; not sending to it");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    // Wait for something to send before connecting (lazy connection).
    while let Some(first) = queue.recv().await {
        match connect(&endpoint).await {
            Ok((client, batches, responses)) => {
                tracing::info!(id, peer, %address, "connected to peer");
                backoff = BACKOFF_MIN;
                stream_to_peer(first, &mut queue, client, batches, responses).await;
                tracing::info!(id, peer, %address, "connection to peer lost; reconnecting");
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "cannot reach peer");
                // What queued for an unreachable peer is stale by the time it
                // could go; the core resends what still matters.
                let mut dropped = 1;
                while queue.try_recv().is_ok() {
                    dropped += 1;
                }
                stats.outbound_dropped.fetch_add(dropped, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
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
}

type Connection = (ReplicaClient<Channel>, mpsc::Sender<peer::PaxosBatch>, Streaming<peer::PaxosBatch>);

async fn connect(endpoint: &Endpoint) -> Result<Connection, ConnectError> {
    let channel = endpoint.connect().await?;
    let mut client = ReplicaClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let (batches, rx) = mpsc::channel(STREAM_BATCHES_MAX);
    let responses = client.exchange(ReceiverStream::new(rx)).await?.into_inner();
    Ok((client, batches, responses))
}

/// Streams batches on one connection until it fails or the queue closes.
async fn stream_to_peer(
    first: peer::PaxosMessage,
    queue: &mut mpsc::Receiver<peer::PaxosMessage>,
    _client: ReplicaClient<Channel>,
    batches: mpsc::Sender<peer::PaxosBatch>,
    mut responses: Streaming<peer::PaxosBatch>,
) {
    let mut next = Some(first);
    loop {
        let first = match next.take() {
            Some(message) => message,
            None => tokio::select! {
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
                // The peer never sends on this stream; anything but a pending
                // read means the connection is gone.
                _ = responses.message() => return,
            },
        };
        // A batch never passes BATCH_BYTES_MAX unless one message alone
        // does (a snapshot), which then goes alone: a batch is never a large
        // message plus others, so it stays under MESSAGE_BYTES_MAX.
        let mut bytes = first.encoded_len();
        let mut batch = peer::PaxosBatch { messages: vec![first] };
        while batch.messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            let Ok(message) = queue.try_recv() else { break };
            let size = message.encoded_len();
            if bytes.saturating_add(size) > BATCH_BYTES_MAX {
                next = Some(message);
                break;
            }
            bytes += size;
            batch.messages.push(message);
        }
        if batches.send(batch).await.is_err() {
            return;
        }
    }
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
        service.deliver(None, heartbeat_from(CELL, impostor, 6, 1));
        assert!(inbox.try_recv().is_err(), "an incarnation the configuration does not record got through");
        assert_eq!(stats.wrong_incarnation_dropped.load(Ordering::Relaxed), 1);
        service.deliver(None, heartbeat(6, 1));
        assert_eq!(inbox.try_recv().expect("delivered").from, 6);
        peers.remove(&6);
        service.members.set(peers);
        service.deliver(None, heartbeat(6, 1));
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
        service.deliver(None, heartbeat_from("other-cell", incarnation(2), 2, 1));
        service.deliver(None, heartbeat_from("", incarnation(2), 2, 1));
        assert!(inbox.try_recv().is_err(), "a message from another cell reached the driver");
        assert_eq!(stats.wrong_cell_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 2);
        // The same member from this cell still gets through.
        service.deliver(None, heartbeat(2, 1));
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
        service.deliver(None, heartbeat(2, 1));
        assert_eq!(inbox.try_recv().expect("first incarnation delivered").from, 2);
        service.deliver(None, heartbeat_from(CELL, impostor, 2, 1));
        service.deliver(None, heartbeat_from(CELL, impostor, 2, 1));
        assert!(inbox.try_recv().is_err(), "a second incarnation of replica 2 reached the driver");
        service.deliver(None, heartbeat(2, 1));
        assert_eq!(inbox.try_recv().expect("the first incarnation still delivered").from, 2);
        // Replica 3's first incarnation is its own, whatever 2 did.
        service.deliver(None, heartbeat_from(CELL, impostor, 3, 1));
        assert_eq!(inbox.try_recv().expect("replica 3 delivered").from, 3);
        service.deliver(None, heartbeat(3, 1));
        assert!(inbox.try_recv().is_err(), "replica 3's second incarnation reached the driver");
        assert_eq!(stats.wrong_incarnation_dropped.load(Ordering::Relaxed), 3);

        let mut unstamped = codec::encode_message(2, 1, &Message::CatchUpRequest { from_slot: 1 });
        unstamped.cell_id = CELL.to_owned();
        service.deliver(None, unstamped);
        assert!(inbox.try_recv().is_err(), "a message without an incarnation reached the driver");
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
    }

    /// A message that is dropped for another reason (not for this replica,
    /// from a non-member) teaches the receiver no incarnation.
    #[test]
    fn a_dropped_message_does_not_set_the_incarnation() {
        let (service, mut inbox, _stats) = service(4);
        let early = NonZeroU64::new(0x0bad_0003).expect("not zero");
        service.deliver(None, heartbeat_from(CELL, early, 3, 2)); // not for us
        service.deliver(None, heartbeat(3, 1));
        assert_eq!(inbox.try_recv().expect("replica 3's real incarnation delivered").from, 3);
    }

    #[test]
    fn a_member_message_reaches_the_inbox() {
        let (service, mut inbox, stats) = service(4);
        service.deliver(None, heartbeat(2, 1));
        let inbound = inbox.try_recv().expect("delivered");
        assert_eq!(inbound.from, 2);
        assert!(matches!(inbound.message, Message::Heartbeat { sent_tick: 7, .. }));
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn malformed_misrouted_and_foreign_messages_are_dropped() {
        let (service, mut inbox, stats) = service(4);
        service.deliver(None, peer::PaxosMessage { from: 2, to: 1, body: None, ..heartbeat(2, 1) });
        service.deliver(None, heartbeat(2, 3)); // not for us
        service.deliver(None, heartbeat(9, 1)); // not a member
        service.deliver(None, heartbeat(1, 1)); // claims to be us
        assert!(inbox.try_recv().is_err());
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_full_inbox_drops_and_counts() {
        let (service, mut inbox, stats) = service(1);
        service.deliver(None, heartbeat(2, 1));
        service.deliver(None, heartbeat(3, 1));
        assert_eq!(inbox.try_recv().expect("first kept").from, 2);
        assert!(inbox.try_recv().is_err());
        assert_eq!(stats.inbox_dropped.load(Ordering::Relaxed), 1);
    }
}
