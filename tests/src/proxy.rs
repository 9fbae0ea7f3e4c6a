//! A controllable TCP fault proxy for the chaos suite.
//!
//! A [`Link`] is one *directed* link between two replicas: replica `i` is
//! told that replica `j`'s peer address is the link's [`Link::address`], and
//! the link forwards every connection it accepts to `j`'s real peer listener.
//! Replica `i`'s outbound gRPC stream carries only `i -> j` messages, so
//! cutting the link `i -> j` leaves `j -> i` (a different connection, through
//! a different link) untouched.
//!
//! Each link runs one listener task on `127.0.0.1:0` and one task per
//! accepted connection, which copies bytes both ways: forward (to the target)
//! and back (to the connecting replica; HTTP/2 needs its SETTINGS,
//! WINDOW_UPDATE and PING frames). A [`LinkMode`] set with [`Link::set`]
//! takes effect at once on the connections already open, not only on new
//! ones:
//!
//! - [`LinkMode::Pass`] forwards everything.
//! - [`LinkMode::Cut`] resets every open connection and resets each new one
//!   as soon as it is accepted; no byte is forwarded once the cut is seen.
//! - [`LinkMode::Delay`] holds each chunk read in the forward direction for
//!   the delay before writing it, keeping the order. The back direction (the
//!   receiver's flow-control frames) is not delayed, so a message takes the
//!   delay once per link it crosses, like one-way network latency.
//! - [`LinkMode::Hold`] buffers everything read in the forward direction and
//!   forwards none of it until the link leaves the mode; then it is
//!   delivered in order, as after a stalled TCP stream or a receiver's long
//!   GC pause. New connections are accepted and held the same way.
//! - [`LinkMode::Flaky`] resets open connections at random at a given rate.
//!
//! Bytes the proxy has read have left the sender: they are in the network.
//! If the sender then resets or closes its connection, what was read still
//! arrives (after its delay or hold), followed by the end of the stream, as
//! on a real link; only [`LinkMode::Cut`] throws bytes away.
//!
//! Everything is bounded: [`CONNECTIONS_MAX`] connections per link (more are
//! refused), [`QUEUE_CHUNKS_MAX`] chunks of at most [`CHUNK_BYTES_MAX`] bytes
//! queued per direction of a connection (beyond that the proxy stops reading,
//! which pushes back on the sender through TCP), and [`DELAY_MAX`].
//!
//! [`Network`] holds the `n * (n - 1)` links of a cell and sets them in the
//! shapes the chaos suite needs: [`Network::isolate`], [`Network::partition`],
//! [`Network::bridge`], [`Network::one_way`], [`Network::heal`].
//!
//! Randomness (which connection a flaky link resets, and when) comes from
//! the crate's [`Rng`], forked per link and per connection from the seed
//! given to [`Link::start_with_seed`] or [`Network::start_with_seed`] (the
//! chaos suite passes a fork of its run's seed); the timing of real sockets
//! is not deterministic, but the random choices are.
//!
//! Dropping a `Link` (or the `Network`) stops its listener and closes every
//! connection it forwards. IO errors never panic: they end the one
//! connection they happen on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::rng::Rng;

/// The most connections one link forwards at once; more are accepted and
/// closed at once, so a reconnecting replica cannot exhaust the proxy.
pub const CONNECTIONS_MAX: usize = 64;
/// The most bytes read from a socket in one go; a chunk is the unit the
/// delay queue holds.
pub const CHUNK_BYTES_MAX: usize = 16 << 10;
/// The most chunks queued in one direction of one connection, so at most
/// `QUEUE_CHUNKS_MAX * CHUNK_BYTES_MAX` (4 MiB) is held; beyond it the proxy
/// stops reading until the queue drains.
pub const QUEUE_CHUNKS_MAX: usize = 256;
/// The longest delay applied; a longer [`LinkMode::Delay`] is clamped to it.
/// (A [`LinkMode::Hold`] lasts until the caller changes the mode.)
pub const DELAY_MAX: Duration = Duration::from_secs(3600);
/// How long the proxy waits to connect to the target before it gives up on
/// (and resets) the accepted connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a flaky link rolls the dice for each open connection.
pub const FLAKY_TICK: Duration = Duration::from_millis(50);
/// The seed [`Link::start`] and [`Network::start`] use.
pub const DEFAULT_SEED: u64 = 0x6761_696f_735f_7072; // "gaios_pr"
/// How long the listener waits after a failed `accept` (e.g. out of file
/// descriptors) before it tries again, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What a link does to the traffic that crosses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkMode {
    /// Forward everything as it comes.
    Pass,
    /// Reset every open connection and every new one: nothing crosses.
    Cut,
    /// Forward each chunk (in the forward direction) this long after it was
    /// read, in order. Applies to data read after the mode is set.
    Delay(Duration),
    /// Forward nothing in the forward direction, but keep every chunk read
    /// (up to the queue bound, beyond which the sender is pushed back on);
    /// when the mode changes to anything but [`LinkMode::Cut`], deliver
    /// them in order. The back direction (flow control) passes.
    Hold,
    /// Forward everything, but reset each open connection at random, with
    /// this probability per second (clamped to `0.0..=1.0`; `1.0` resets
    /// every connection within one [`FLAKY_TICK`]).
    Flaky {
        /// The chance that a given connection is reset within one second.
        reset_probability_per_second: f64,
    },
}

impl LinkMode {
    /// Whether the link lets nothing through.
    pub fn is_cut(&self) -> bool {
        matches!(self, LinkMode::Cut)
    }

    /// Whether the link keeps what it reads in the forward direction.
    pub fn is_held(&self) -> bool {
        matches!(self, LinkMode::Hold)
    }

    /// The delay applied to a chunk read now in the forward direction.
    fn forward_delay(&self) -> Duration {
        match self {
            LinkMode::Delay(delay) => (*delay).min(DELAY_MAX),
            LinkMode::Pass | LinkMode::Cut | LinkMode::Hold | LinkMode::Flaky { .. } => Duration::ZERO,
        }
    }

    /// The chance that a connection is reset within one [`FLAKY_TICK`], if
    /// the link is flaky at all.
    fn reset_chance_per_tick(&self) -> Option<f64> {
        let LinkMode::Flaky { reset_probability_per_second: p } = *self else { return None };
        if p.is_nan() || p <= 0.0 {
            return None;
        }
        let p = p.min(1.0);
        Some(1.0 - (1.0 - p).powf(FLAKY_TICK.as_secs_f64()))
    }
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkMode::Pass => write!(f, "pass"),
            LinkMode::Cut => write!(f, "cut"),
            LinkMode::Delay(delay) => write!(f, "delay {delay:?}"),
            LinkMode::Hold => write!(f, "hold"),
            LinkMode::Flaky { reset_probability_per_second } => {
                write!(f, "flaky {reset_probability_per_second}/s")
            }
        }
    }
}

/// What a link has done since it started, for assertions and the fault log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes written to the target (the forward direction).
    pub bytes_forwarded: u64,
    /// Bytes written back to the connecting replica.
    pub bytes_returned: u64,
    /// Connections accepted and forwarded.
    pub connections_accepted: u64,
    /// Connections closed at once because the link was cut.
    pub connections_refused: u64,
    /// Connections closed at once because [`CONNECTIONS_MAX`] were open.
    pub connections_over_limit: u64,
    /// Open connections closed because the link was cut.
    pub connections_cut: u64,
    /// Open connections reset at random by a flaky link.
    pub connections_reset: u64,
    /// Accepted connections dropped because the target did not accept
    /// within [`CONNECT_TIMEOUT`].
    pub connect_failures: u64,
    /// Connections open now.
    pub connections_open: u64,
}

/// The shared counters behind [`LinkStats`].
#[derive(Debug, Default)]
struct Counters {
    bytes_forwarded: AtomicU64,
    bytes_returned: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_over_limit: AtomicU64,
    connections_cut: AtomicU64,
    connections_reset: AtomicU64,
    connect_failures: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// One directed link: a listener on loopback that forwards to one target
/// under a [`LinkMode`]; see the module docs.
#[derive(Debug)]
pub struct Link {
    address: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    counters: Arc<Counters>,
    permits: Arc<Semaphore>,
    listener: JoinHandle<()>,
}

impl Link {
    /// Starts a link to `target` in [`LinkMode::Pass`] with
    /// [`DEFAULT_SEED`]. Must be called inside a tokio runtime.
    pub async fn start(target: SocketAddr) -> io::Result<Link> {
        Link::start_with_seed(target, DEFAULT_SEED).await
    }

    /// Starts a link to `target` in [`LinkMode::Pass`]; `seed` drives the
    /// random resets of [`LinkMode::Flaky`]. Must be called inside a tokio
    /// runtime.
    pub async fn start_with_seed(target: SocketAddr, seed: u64) -> io::Result<Link> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (mode, mode_receiver) = watch::channel(LinkMode::Pass);
        let counters = Arc::new(Counters::default());
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let listener = tokio::spawn(accept_loop(
            listener,
            target,
            mode_receiver,
            Arc::clone(&counters),
            Arc::clone(&permits),
            seed,
        ));
        Ok(Link { address, target, mode, counters, permits, listener })
    }

    /// Where to connect to cross the link: the address to give the sending
    /// replica in place of the target's.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where the link forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Changes the mode; open connections see it at once (see
    /// [`LinkMode`] for what each mode does to them).
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.mode().is_cut()
    }

    /// What the link has done so far.
    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            bytes_forwarded: load(&c.bytes_forwarded),
            bytes_returned: load(&c.bytes_returned),
            connections_accepted: load(&c.connections_accepted),
            connections_refused: load(&c.connections_refused),
            connections_over_limit: load(&c.connections_over_limit),
            connections_cut: load(&c.connections_cut),
            connections_reset: load(&c.connections_reset),
            connect_failures: load(&c.connect_failures),
            connections_open: CONNECTIONS_MAX.saturating_sub(self.permits.available_permits()) as u64,
        }
    }
}

impl Drop for Link {
    /// Stops the listener; dropping its task drops the set of connection
    /// tasks, which aborts them and closes their sockets.
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Accepts connections until the link is dropped (which aborts this task and
/// with it every connection task in `connections`).
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<LinkMode>,
    counters: Arc<Counters>,
    permits: Arc<Semaphore>,
    seed: u64,
) {
    let mut connections = JoinSet::new();
    let mut accepted_total: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let client = match accepted {
                    Ok((client, _)) => client,
                    Err(_) => {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if mode.borrow().is_cut() {
                    Counters::add(&counters.connections_refused, 1);
                    reset(&client);
                    continue;
                }
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    Counters::add(&counters.connections_over_limit, 1);
                    reset(&client);
                    continue;
                };
                Counters::add(&counters.connections_accepted, 1);
                accepted_total += 1;
                let rng = Rng::new(seed).fork(&format!("connection/{accepted_total}"));
                connections.spawn(serve(client, target, mode.clone(), Arc::clone(&counters), rng, permit));
            }
            // Reap finished connection tasks so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both sides closed their sending halves.
    Closed,
    /// A socket failed (e.g. one side reset it).
    Failed,
    /// The link was cut.
    Cut,
    /// A flaky link reset it.
    Reset,
    /// The link was dropped.
    Shutdown,
}

/// Forwards one accepted connection until it ends; holds `_permit` so the
/// link counts it among its open connections.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
    counters: Arc<Counters>,
    mut rng: Rng,
    _permit: OwnedSemaphorePermit,
) {
    let server = tokio::select! {
        connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)) => match connected {
            Ok(Ok(server)) => server,
            Ok(Err(_)) | Err(_) => {
                Counters::add(&counters.connect_failures, 1);
                reset(&client);
                return;
            }
        },
        end = wait_for_cut(&mut mode) => {
            if end == End::Cut {
                Counters::add(&counters.connections_cut, 1);
            }
            reset(&client);
            return;
        }
    };
    // Small frames (heartbeats, pings) should not wait for Nagle. Failing to
    // set it only costs latency.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut client_write = Some(client_write);
    let mut server_write = Some(server_write);
    let end = {
        let forward = pump(&client_read, &mut server_write, Direction::Forward, mode.clone(), &counters.bytes_forwarded);
        let back = pump(&server_read, &mut client_write, Direction::Back, mode.clone(), &counters.bytes_returned);
        // Each direction runs to its own end: one side failing does not
        // throw away what the other has already read (see the module docs).
        tokio::select! {
            (forward, back) = async { tokio::join!(forward, back) } => match forward.and(back) {
                Ok(()) => End::Closed,
                Err(_) => End::Failed,
            },
            end = supervise(&mut mode, &mut rng) => end,
        }
    };
    match end {
        End::Closed | End::Shutdown => {}
        End::Failed | End::Cut | End::Reset => {
            if end == End::Cut {
                Counters::add(&counters.connections_cut, 1);
            } else if end == End::Reset {
                Counters::add(&counters.connections_reset, 1);
            }
            // An abortive close on both sides, so each replica sees the
            // connection break rather than end cleanly.
            reset(client_read.as_ref());
            reset(server_read.as_ref());
        }
    }
}

/// Makes the socket send a RST instead of a FIN when it is closed.
fn reset(stream: &TcpStream) {
    // Failing only makes the close a clean one.
    let _ = stream.set_zero_linger();
}

/// Returns when the link is cut (or dropped).
async fn wait_for_cut(mode: &mut watch::Receiver<LinkMode>) -> End {
    loop {
        if mode.borrow_and_update().is_cut() {
            return End::Cut;
        }
        if mode.changed().await.is_err() {
            return End::Shutdown;
        }
    }
}

/// Watches the mode for an open connection: returns when the link is cut or
/// dropped, or when a flaky link decides to reset the connection.
async fn supervise(mode: &mut watch::Receiver<LinkMode>, rng: &mut Rng) -> End {
    let mut ticker = tokio::time::interval_at(Instant::now() + FLAKY_TICK, FLAKY_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let current = *mode.borrow_and_update();
        if current.is_cut() {
            return End::Cut;
        }
        let chance = current.reset_chance_per_tick();
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
            }
            _ = ticker.tick(), if chance.is_some() => {
                if rng.chance(chance.unwrap_or(0.0)) {
                    return End::Reset;
                }
            }
        }
    }
}

/// Which way a [`pump`] copies: the forward direction (to the target) is
/// the one a link delays and holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// From the connecting replica to the target.
    Forward,
    /// From the target back to the connecting replica.
    Back,
}

/// Copies one direction of a connection through a bounded queue of
/// `(release time, chunk)`: the reader stamps each chunk (with the link's
/// delay in the forward direction), the writer waits for the stamp (and,
/// forward, for a hold to end) and writes. When the reader sees end of
/// stream, or its socket fails, the writer drains the queue and then closes
/// its sending half (`write` is taken and dropped), passing the end on: what
/// was read is in flight and still arrives. A failed write ends the pump
/// with an error at once.
async fn pump(
    read: &OwnedReadHalf,
    write: &mut Option<OwnedWriteHalf>,
    direction: Direction,
    mode: watch::Receiver<LinkMode>,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS_MAX);
    let mut writer_mode = mode.clone();
    let mode = &mode;
    let forward = direction == Direction::Forward;
    let reader = async move {
        let mut buffer = vec![0_u8; CHUNK_BYTES_MAX];
        loop {
            // A failed read (the sender reset) ends the stream like a FIN.
            if read.readable().await.is_err() {
                return Ok::<(), io::Error>(());
            }
            let read_bytes = match read.try_read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read_bytes) => read_bytes,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Ok(()),
            };
            let delay = if forward { mode.borrow().forward_delay() } else { Duration::ZERO };
            let release = Instant::now() + delay;
            // A full queue blocks here: that is the backpressure.
            if queue.send((release, buffer[..read_bytes].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some((release, chunk)) = queued.recv().await {
            tokio::time::sleep_until(release).await;
            if forward {
                while_held(&mut writer_mode).await?;
            }
            // Forward nothing once the link is cut, even before the
            // supervisor closes the connection.
            if writer_mode.borrow().is_cut() {
                return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
            }
            let Some(stream) = write.as_ref() else { break };
            write_all(stream, &chunk).await?;
            Counters::add(bytes, chunk.len() as u64);
        }
        drop(write.take());
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Returns once the link does not hold; an error if it is cut or dropped
/// meanwhile (what it held is then thrown away).
async fn while_held(mode: &mut watch::Receiver<LinkMode>) -> io::Result<()> {
    loop {
        let current = *mode.borrow_and_update();
        if current.is_cut() {
            return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
        }
        if !current.is_held() {
            return Ok(());
        }
        if mode.changed().await.is_err() {
            return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
        }
    }
}

/// Writes all of `bytes` (tokio's `io-util` is not a dependency here).
async fn write_all(stream: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Every directed link of a cell, indexed `(from, to)` by replica id: give
/// replica `from` the address [`Network::address`]`(from, to)` as replica
/// `to`'s peer address.
#[derive(Debug)]
pub struct Network {
    ids: Vec<u64>,
    links: BTreeMap<(u64, u64), Link>,
}

impl Network {
    /// Starts one link per ordered pair of distinct ids in `targets` (each
    /// an id and that replica's real peer listener), all passing, with
    /// [`DEFAULT_SEED`]. Must be called inside a tokio runtime.
    pub async fn start(targets: &[(u64, SocketAddr)]) -> io::Result<Network> {
        Network::start_with_seed(targets, DEFAULT_SEED).await
    }

    /// Like [`Network::start`], with `seed` for the flaky links (each link
    /// gets its own seed derived from it and its ids). Fails on a repeated
    /// id.
    pub async fn start_with_seed(targets: &[(u64, SocketAddr)], seed: u64) -> io::Result<Network> {
        let mut ids: Vec<u64> = targets.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a replica id appears twice in the targets"));
        }
        let mut links = BTreeMap::new();
        for &(from, _) in targets {
            for &(to, target) in targets.iter().filter(|(to, _)| *to != from) {
                let link_seed = Rng::new(seed).fork(&format!("link/{from}->{to}")).next_u64();
                links.insert((from, to), Link::start_with_seed(target, link_seed).await?);
            }
        }
        Ok(Network { ids, links })
    }

    /// The replica ids, in increasing order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The link `from -> to`. Panics if either id is not in the network (a
    /// mistake in the test).
    pub fn link(&self, from: u64, to: u64) -> &Link {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("the network has no link {from}->{to} (ids {:?})", self.ids))
    }

    /// What replica `from` should use as replica `to`'s peer address.
    pub fn address(&self, from: u64, to: u64) -> SocketAddr {
        self.link(from, to).address()
    }

    /// The map the harness needs: `(from, to)` to the address `from` uses
    /// for `to`.
    pub fn routes(&self) -> BTreeMap<(u64, u64), SocketAddr> {
        self.links.iter().map(|(&pair, link)| (pair, link.address())).collect()
    }

    /// Sets the link `from -> to`.
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        self.link(from, to).set(mode);
    }

    /// Sets every link.
    pub fn set_all(&self, mode: LinkMode) {
        for link in self.links.values() {
            link.set(mode);
        }
    }

    /// The mode of the link `from -> to`.
    pub fn mode(&self, from: u64, to: u64) -> LinkMode {
        self.link(from, to).mode()
    }

    /// Whether the link `from -> to` is cut.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.link(from, to).is_cut()
    }

    /// Every cut link, in `(from, to)` order.
    pub fn cut_links(&self) -> Vec<(u64, u64)> {
        self.links.iter().filter(|(_, link)| link.is_cut()).map(|(&pair, _)| pair).collect()
    }

    /// What the link `from -> to` has done so far.
    pub fn stats(&self, from: u64, to: u64) -> LinkStats {
        self.link(from, to).stats()
    }

    /// Cuts `from -> to`; leaves every other link (`to -> from` included)
    /// as it is.
    pub fn cut(&self, from: u64, to: u64) {
        self.set(from, to, LinkMode::Cut);
    }

    /// Cuts both `a -> b` and `b -> a`.
    pub fn cut_both(&self, a: u64, b: u64) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cuts every link to and from `id`; leaves the others as they are.
    pub fn isolate(&self, id: u64) {
        self.check_ids(&[id]);
        for (&(from, to), link) in &self.links {
            if from == id || to == id {
                link.set(LinkMode::Cut);
            }
        }
    }

    /// Sets every link: inside a group it passes, across groups it is cut.
    /// An id in no group is a group of its own (cut from everyone). Panics
    /// on an unknown id or an id in two groups.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut group_of = BTreeMap::new();
        for (index, group) in groups.iter().enumerate() {
            self.check_ids(group);
            for &id in *group {
                let previous = group_of.insert(id, index);
                assert!(previous.is_none() || previous == Some(index), "replica {id} is in two groups");
            }
        }
        for (&(from, to), link) in &self.links {
            let same = matches!((group_of.get(&from), group_of.get(&to)), (Some(a), Some(b)) if a == b);
            link.set(if same { LinkMode::Pass } else { LinkMode::Cut });
        }
    }

    /// Sets every link so that `left` and `right` cannot reach each other
    /// (both directions cut) while `bridge` and every id in neither side talk
    /// to everyone. Panics on an unknown id or one on two sides.
    pub fn bridge(&self, left: &[u64], bridge: u64, right: &[u64]) {
        self.check_ids(left);
        self.check_ids(right);
        self.check_ids(&[bridge]);
        let left: BTreeSet<u64> = left.iter().copied().collect();
        let right: BTreeSet<u64> = right.iter().copied().collect();
        assert!(left.is_disjoint(&right), "an id is on both sides of the bridge");
        assert!(!left.contains(&bridge) && !right.contains(&bridge), "the bridge {bridge} is on one side");
        for (&(from, to), link) in &self.links {
            let across = (left.contains(&from) && right.contains(&to)) || (right.contains(&from) && left.contains(&to));
            link.set(if across { LinkMode::Cut } else { LinkMode::Pass });
        }
    }

    /// Cuts `from -> to` and lets `to -> from` pass: `to` hears nothing from
    /// `from`, `from` still hears `to`. Other links are left as they are.
    pub fn one_way(&self, from: u64, to: u64) {
        self.set(from, to, LinkMode::Cut);
        self.set(to, from, LinkMode::Pass);
    }

    /// Lets every link to and from `id` pass again; leaves the others as
    /// they are (e.g. a link held elsewhere stays held).
    pub fn reconnect(&self, id: u64) {
        self.check_ids(&[id]);
        for (&(from, to), link) in &self.links {
            if from == id || to == id {
                link.set(LinkMode::Pass);
            }
        }
    }

    /// Holds `from -> to` (see [`LinkMode::Hold`]): `to` gets nothing from
    /// `from` until the link is set to pass again (or healed), and then
    /// everything in order. Other links are left as they are.
    pub fn hold(&self, from: u64, to: u64) {
        self.set(from, to, LinkMode::Hold);
    }

    /// Cuts every link between two replicas other than `center`, both ways,
    /// and lets every link to and from `center` pass: only `center` can
    /// gather a majority (it is the only one that reaches everyone).
    pub fn star(&self, center: u64) {
        self.check_ids(&[center]);
        for (&(from, to), link) in &self.links {
            link.set(if from == center || to == center { LinkMode::Pass } else { LinkMode::Cut });
        }
    }

    /// Delays every link (see [`LinkMode::Delay`]).
    pub fn delay_all(&self, delay: Duration) {
        self.set_all(LinkMode::Delay(delay));
    }

    /// Makes every link flaky (see [`LinkMode::Flaky`]).
    pub fn flaky_all(&self, reset_probability_per_second: f64) {
        self.set_all(LinkMode::Flaky { reset_probability_per_second });
    }

    /// Every link back to [`LinkMode::Pass`].
    pub fn heal(&self) {
        self.set_all(LinkMode::Pass);
    }

    /// The links that do not pass, grouped by mode, for the fault log: e.g.
    /// `cut: 1->2 2->1; delay 200ms: 1->3; 17 other links pass`.
    pub fn describe(&self) -> String {
        let mut by_mode: Vec<(LinkMode, Vec<String>)> = Vec::new();
        let mut passing = 0;
        for (&(from, to), link) in &self.links {
            let mode = link.mode();
            if mode == LinkMode::Pass {
                passing += 1;
                continue;
            }
            let name = format!("{from}->{to}");
            match by_mode.iter_mut().find(|(seen, _)| *seen == mode) {
                Some((_, names)) => names.push(name),
                None => by_mode.push((mode, vec![name])),
            }
        }
        if by_mode.is_empty() {
            return format!("all {passing} links pass");
        }
        let mut parts: Vec<String> =
            by_mode.iter().map(|(mode, names)| format!("{mode}: {}", names.join(" "))).collect();
        if passing > 0 {
            parts.push(format!("{passing} other links pass"));
        }
        parts.join("; ")
    }

    /// Panics unless every id is in the network.
    fn check_ids(&self, ids: &[u64]) {
        for id in ids {
            assert!(self.ids.contains(id), "replica {id} is not in the network (ids {:?})", self.ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use gaios_proto::replica::v1 as peer;
    use gaios_proto::replica::v1::replica_client::ReplicaClient;
    use gaios_proto::replica::v1::replica_server::{Replica, ReplicaServer};
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    /// How long a test waits for something that should happen.
    const PATIENCE: Duration = Duration::from_secs(3);
    /// How long a test waits for an echo that should not come.
    const SILENCE: Duration = Duration::from_millis(500);

    /// An echo server on loopback; stops when the handle is aborted.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind the echo server");
        let address = listener.local_addr().expect("the echo server's address");
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let mut buffer = vec![0_u8; 4096];
                    while let Ok(Some(read)) = read_some(&stream, &mut buffer).await {
                        if send(&stream, &buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (address, task)
    }

    /// Reads what is there: `None` at end of stream.
    async fn read_some(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            stream.readable().await?;
            match stream.try_read(buffer) {
                Ok(0) => return Ok(None),
                Ok(read) => return Ok(Some(read)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }

    async fn send(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Sends `message` and waits up to `within` for all of it to come back;
    /// `None` if it does not (closed, reset or silent).
    async fn round_trip(stream: &TcpStream, message: &[u8], within: Duration) -> Option<Vec<u8>> {
        let exchange = async {
            send(stream, message).await.ok()?;
            let mut received = Vec::new();
            let mut buffer = vec![0_u8; 4096];
            while received.len() < message.len() {
                let read = read_some(stream, &mut buffer).await.ok()??;
                received.extend_from_slice(&buffer[..read]);
            }
            Some(received)
        };
        tokio::time::timeout(within, exchange).await.ok().flatten()
    }

    /// Whether the connection is closed or reset within `within` (any data
    /// still arriving is skipped).
    async fn closes_within(stream: &TcpStream, within: Duration) -> bool {
        let wait = async {
            let mut buffer = vec![0_u8; 4096];
            loop {
                match read_some(stream, &mut buffer).await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    async fn connect(address: SocketAddr) -> io::Result<TcpStream> {
        tokio::time::timeout(PATIENCE, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// Whether a fresh connection through `address` echoes.
    async fn echoes(address: SocketAddr, within: Duration) -> bool {
        match connect(address).await {
            Ok(stream) => round_trip(&stream, b"ping", within).await.as_deref() == Some(&b"ping"[..]),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        for message in [&b"hello"[..], b"world", &[7_u8; 100_000]] {
            let back = round_trip(&stream, message, PATIENCE).await;
            assert_eq!(back.as_deref(), Some(message));
        }
        let stats = link.stats();
        assert_eq!(stats.connections_accepted, 1);
        assert_eq!(stats.bytes_forwarded, 100_010);
        assert_eq!(stats.bytes_returned, 100_010);
        assert_eq!(stats.connections_open, 1);
    }

    #[tokio::test]
    async fn end_of_stream_is_passed_on_and_the_connection_closes() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        assert!(round_trip(&stream, b"bye", PATIENCE).await.is_some());
        let (read_half, write_half) = stream.into_split();
        drop(write_half); // FIN to the proxy, which passes it to the echo server
        assert!(closes_within(read_half.as_ref(), PATIENCE).await, "the echo server's FIN came back");
        let until = Instant::now() + PATIENCE;
        while link.stats().connections_open > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(link.stats().connections_open, 0);
        assert_eq!(link.stats().connections_reset, 0);
    }

    #[tokio::test]
    async fn cut_closes_existing_connections_and_refuses_new_ones() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        assert!(round_trip(&stream, b"before", PATIENCE).await.is_some());

        link.set(LinkMode::Cut);
        assert!(link.is_cut());
        assert!(closes_within(&stream, PATIENCE).await, "the open connection was closed");
        assert_eq!(round_trip(&stream, b"after", SILENCE).await, None);
        assert!(!echoes(link.address(), SILENCE).await, "a new connection was refused");

        let stats = link.stats();
        assert_eq!(stats.connections_cut, 1);
        assert!(stats.connections_refused >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn heal_restores_new_connections() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        link.set(LinkMode::Cut);
        assert!(!echoes(link.address(), SILENCE).await);
        link.set(LinkMode::Pass);
        assert!(echoes(link.address(), PATIENCE).await);
    }

    #[tokio::test]
    async fn delay_holds_each_chunk_and_keeps_the_order() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        assert!(round_trip(&stream, b"warm", PATIENCE).await.is_some());

        // The mode applies to a connection opened before it was set.
        let delay = Duration::from_millis(200);
        link.set(LinkMode::Delay(delay));
        let started = Instant::now();
        assert_eq!(round_trip(&stream, b"slow", PATIENCE).await.as_deref(), Some(&b"slow"[..]));
        assert!(started.elapsed() >= delay, "the round trip took {:?}", started.elapsed());

        // Many small writes come back whole and in order.
        let sent = send_numbered_chunks(&stream).await;
        assert_eq!(receive(&stream, sent.len()).await, sent);
    }

    /// Sends fifty small numbered chunks a little apart; returns what was
    /// sent.
    async fn send_numbered_chunks(stream: &TcpStream) -> Vec<u8> {
        let mut sent = Vec::new();
        for index in 0..50_u32 {
            let chunk = format!("[{index}]");
            send(stream, chunk.as_bytes()).await.expect("send a chunk");
            sent.extend_from_slice(chunk.as_bytes());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    }

    /// Reads until `length` bytes came back, each read within [`PATIENCE`].
    async fn receive(stream: &TcpStream, length: usize) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buffer = vec![0_u8; 4096];
        while received.len() < length {
            let read = tokio::time::timeout(PATIENCE, read_some(stream, &mut buffer))
                .await
                .expect("the bytes arrive in time")
                .expect("read")
                .expect("not closed");
            received.extend_from_slice(&buffer[..read]);
        }
        received
    }

    /// A server that keeps every byte it receives on any connection.
    async fn sink_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind the sink");
        let address = listener.local_addr().expect("the sink's address");
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                connections.spawn(async move {
                    let mut buffer = vec![0_u8; 4096];
                    while let Ok(Some(read)) = read_some(&stream, &mut buffer).await {
                        kept.lock().expect("the sink's buffer").extend_from_slice(&buffer[..read]);
                    }
                });
            }
        });
        (address, received, task)
    }

    /// Waits up to [`PATIENCE`] for the sink to hold exactly `expected`.
    async fn sink_receives(received: &std::sync::Mutex<Vec<u8>>, expected: &[u8]) -> Vec<u8> {
        let until = Instant::now() + PATIENCE;
        loop {
            let now = received.lock().expect("the sink's buffer").clone();
            if now == expected || Instant::now() >= until {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn bytes_in_flight_arrive_after_the_sender_resets() {
        // What the proxy has read left the sender: it is in the network and
        // still arrives, as on a real link, even if the sender then resets.
        let (sink, received, _server) = sink_server().await;
        let link = Link::start(sink).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        link.set(LinkMode::Delay(Duration::from_millis(300)));
        send(&stream, b"sent before the reset").await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        reset(&stream);
        drop(stream);
        assert_eq!(sink_receives(&received, b"sent before the reset").await, b"sent before the reset");
    }

    #[tokio::test]
    async fn hold_keeps_everything_then_delivers_it_in_order() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        assert!(round_trip(&stream, b"warm", PATIENCE).await.is_some());

        link.set(LinkMode::Hold);
        assert!(link.mode().is_held());
        let sent = send_numbered_chunks(&stream).await;
        // Longer than any delay a passing link adds: nothing crosses.
        let mut buffer = vec![0_u8; 4096];
        assert!(
            tokio::time::timeout(SILENCE, read_some(&stream, &mut buffer)).await.is_err(),
            "nothing crosses a held link"
        );
        assert_eq!(link.stats().bytes_forwarded, 4, "only the warm-up crossed");

        link.set(LinkMode::Pass);
        assert_eq!(receive(&stream, sent.len()).await, sent);
    }

    #[tokio::test]
    async fn a_held_link_delivers_what_a_closed_connection_sent() {
        let (sink, received, _server) = sink_server().await;
        let link = Link::start(sink).await.expect("start the link");
        link.set(LinkMode::Hold);
        // Sent on a connection the sender resets, then on a new one, both
        // during the hold: everything arrives after it (each connection in
        // order; the two connections in either order).
        let first = connect(link.address()).await.expect("connect through the link");
        send(&first, b"first connection; ").await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        reset(&first);
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = connect(link.address()).await.expect("a new connection during the hold");
        send(&second, b"second").await.expect("send");
        tokio::time::sleep(SILENCE).await;
        assert!(received.lock().expect("the sink's buffer").is_empty(), "nothing arrives during the hold");

        link.set(LinkMode::Pass);
        let until = Instant::now() + PATIENCE;
        let expected = b"first connection; second".len();
        while received.lock().expect("the sink's buffer").len() < expected && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let both = String::from_utf8_lossy(&received.lock().expect("the sink's buffer")).into_owned();
        assert_eq!(both.len(), expected, "{both:?}");
        assert!(both.contains("first connection; ") && both.contains("second"), "{both:?}");
    }

    #[tokio::test]
    async fn cutting_a_held_link_throws_its_bytes_away() {
        let (sink, received, _server) = sink_server().await;
        let link = Link::start(sink).await.expect("start the link");
        let stream = connect(link.address()).await.expect("connect through the link");
        link.set(LinkMode::Hold);
        send(&stream, b"never delivered").await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        link.set(LinkMode::Cut);
        assert!(closes_within(&stream, PATIENCE).await, "the connection was closed");
        link.set(LinkMode::Pass);
        tokio::time::sleep(SILENCE).await;
        assert!(received.lock().expect("the sink's buffer").is_empty());
    }

    #[tokio::test]
    async fn flaky_link_resets_connections() {
        let (echo, _server) = echo_server().await;
        let link = Link::start_with_seed(echo, 7).await.expect("start the link");
        link.set(LinkMode::Flaky { reset_probability_per_second: 0.0 });
        let stream = connect(link.address()).await.expect("connect through the link");
        tokio::time::sleep(4 * FLAKY_TICK).await;
        assert!(round_trip(&stream, b"still here", PATIENCE).await.is_some(), "probability 0 never resets");

        link.set(LinkMode::Flaky { reset_probability_per_second: 1.0 });
        assert!(closes_within(&stream, PATIENCE).await, "probability 1 resets within a tick");
        assert_eq!(link.stats().connections_reset, 1);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let mut open = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            let stream = connect(link.address()).await.expect("connect through the link");
            assert!(round_trip(&stream, b"x", PATIENCE).await.is_some());
            open.push(stream);
        }
        assert!(!echoes(link.address(), SILENCE).await, "one more is refused");
        assert_eq!(link.stats().connections_over_limit, 1);

        drop(open.pop());
        let until = Instant::now() + PATIENCE;
        while link.stats().connections_open >= CONNECTIONS_MAX as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(echoes(link.address(), PATIENCE).await, "a freed slot is used again");
    }

    #[tokio::test]
    async fn dropping_the_link_closes_everything() {
        let (echo, _server) = echo_server().await;
        let link = Link::start(echo).await.expect("start the link");
        let address = link.address();
        let stream = connect(address).await.expect("connect through the link");
        assert!(round_trip(&stream, b"x", PATIENCE).await.is_some());
        drop(link);
        assert!(closes_within(&stream, PATIENCE).await, "the open connection was closed");
        let until = Instant::now() + PATIENCE;
        while echoes(address, SILENCE).await && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!echoes(address, SILENCE).await, "the listener is gone");
    }

    #[tokio::test]
    async fn unreachable_target_resets_the_client() {
        // A port that was free a moment ago: nothing listens there.
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let target = free.local_addr().expect("address");
        drop(free);
        let link = Link::start(target).await.expect("start the link");
        let stream = connect(link.address()).await.expect("the proxy accepts");
        assert!(closes_within(&stream, PATIENCE).await);
        assert_eq!(link.stats().connect_failures, 1);
    }

    /// Three echo servers and the network between ids 1, 2, 3.
    async fn three_echoes() -> (Network, Vec<JoinHandle<()>>) {
        let mut targets = Vec::new();
        let mut servers = Vec::new();
        for id in 1..=3 {
            let (address, server) = echo_server().await;
            targets.push((id, address));
            servers.push(server);
        }
        (Network::start(&targets).await.expect("start the network"), servers)
    }

    #[tokio::test]
    async fn one_way_cuts_only_one_direction() {
        let (network, _servers) = three_echoes().await;
        assert_eq!(network.ids(), &[1, 2, 3]);
        network.one_way(1, 2);
        assert!(network.is_cut(1, 2));
        assert!(!network.is_cut(2, 1));
        assert_eq!(network.cut_links(), vec![(1, 2)]);
        assert!(!echoes(network.address(1, 2), SILENCE).await, "1->2 is cut");
        assert!(echoes(network.address(2, 1), PATIENCE).await, "2->1 passes");
        assert!(echoes(network.address(1, 3), PATIENCE).await, "1->3 passes");
        assert!(echoes(network.address(3, 2), PATIENCE).await, "3->2 passes");
        network.heal();
        assert!(echoes(network.address(1, 2), PATIENCE).await, "healed");
    }

    /// A network of ids 1..=5 whose targets never get a connection.
    async fn five_links() -> Network {
        let nowhere: SocketAddr = (Ipv4Addr::LOCALHOST, 9).into();
        let targets: Vec<(u64, SocketAddr)> = (1..=5).map(|id| (id, nowhere)).collect();
        Network::start(&targets).await.expect("start the network")
    }

    fn both_ways(pairs: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    #[tokio::test]
    async fn shapes_cut_the_expected_links() {
        let network = five_links().await;
        assert_eq!(network.routes().len(), 20);
        assert_eq!(network.describe(), "all 20 links pass");

        network.isolate(3);
        assert_eq!(network.cut_links(), both_ways(&[(3, 1), (3, 2), (3, 4), (3, 5)]));

        network.partition(&[&[1, 2], &[3, 4, 5]]);
        assert_eq!(network.cut_links(), both_ways(&[(1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)]));

        // 5 is in no group: it is alone.
        network.partition(&[&[1, 2], &[3, 4]]);
        assert_eq!(network.cut_links(), both_ways(&[(1, 3), (1, 4), (2, 3), (2, 4), (5, 1), (5, 2), (5, 3), (5, 4)]));

        network.bridge(&[1, 2], 3, &[4, 5]);
        assert_eq!(network.cut_links(), both_ways(&[(1, 4), (1, 5), (2, 4), (2, 5)]));
        assert!(!network.is_cut(3, 1) && !network.is_cut(1, 3) && !network.is_cut(3, 5) && !network.is_cut(5, 3));

        network.heal();
        network.cut_both(1, 2);
        network.cut(4, 5);
        assert_eq!(network.cut_links(), vec![(1, 2), (2, 1), (4, 5)]);
        network.set(1, 3, LinkMode::Delay(Duration::from_millis(200)));
        assert_eq!(network.describe(), "cut: 1->2 2->1 4->5; delay 200ms: 1->3; 16 other links pass");

        network.heal();
        network.hold(2, 5);
        assert_eq!(network.mode(2, 5), LinkMode::Hold);
        assert_eq!(network.describe(), "hold: 2->5; 19 other links pass");
        network.isolate(3);
        network.reconnect(3);
        assert_eq!(network.describe(), "hold: 2->5; 19 other links pass", "reconnect leaves the held link alone");
        network.star(4);
        assert_eq!(
            network.cut_links(),
            both_ways(&[(1, 2), (1, 3), (1, 5), (2, 3), (2, 5), (3, 5)]),
            "only links through 4 pass"
        );

        network.delay_all(Duration::from_millis(5));
        assert!(network.cut_links().is_empty());
        assert_eq!(network.mode(2, 4), LinkMode::Delay(Duration::from_millis(5)));
        network.heal();
        assert_eq!(network.describe(), "all 20 links pass");
    }

    #[tokio::test]
    async fn repeated_ids_are_refused() {
        let nowhere: SocketAddr = (Ipv4Addr::LOCALHOST, 9).into();
        assert!(Network::start(&[(1, nowhere), (1, nowhere)]).await.is_err());
    }

    #[test]
    fn reset_chance_follows_the_rate() {
        let flaky = |p| LinkMode::Flaky { reset_probability_per_second: p };
        assert_eq!(flaky(0.0).reset_chance_per_tick(), None);
        assert_eq!(flaky(f64::NAN).reset_chance_per_tick(), None);
        assert_eq!(flaky(1.0).reset_chance_per_tick(), Some(1.0));
        assert_eq!(flaky(5.0).reset_chance_per_tick(), Some(1.0));
        let half = flaky(0.5).reset_chance_per_tick().expect("a chance");
        // Twenty ticks of 50 ms make a second: 1 - (1 - q)^20 = 0.5.
        assert!((1.0 - (1.0 - half).powi(20) - 0.5).abs() < 1e-9);
    }

    /// Echoes every batch of a `Replica.Exchange` stream.
    struct EchoReplica;

    #[tonic::async_trait]
    impl Replica for EchoReplica {
        type ExchangeStream = ReceiverStream<Result<peer::PaxosBatch, Status>>;

        async fn exchange(
            &self,
            request: Request<Streaming<peer::PaxosBatch>>,
        ) -> Result<Response<Self::ExchangeStream>, Status> {
            let mut incoming = request.into_inner();
            let (sender, receiver) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(batch)) = incoming.message().await {
                    if sender.send(Ok(batch)).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(receiver)))
        }

        type InstallSnapshotStream = ReceiverStream<Result<peer::SnapshotProgress, Status>>;

        async fn install_snapshot(
            &self,
            _request: Request<Streaming<peer::SnapshotChunk>>,
        ) -> Result<Response<Self::InstallSnapshotStream>, Status> {
            Err(Status::unimplemented("the echo replica takes no snapshots"))
        }
    }

    /// Opens an `Exchange` stream through `address`, sends a batch of
    /// `messages` empty messages, and returns the sender, the response
    /// stream and the echoed batch's size (`None` if nothing came back).
    async fn grpc_exchange(
        address: SocketAddr,
        messages: usize,
    ) -> Option<(mpsc::Sender<peer::PaxosBatch>, Streaming<peer::PaxosBatch>, usize)> {
        let call = async {
            let mut client = ReplicaClient::connect(format!("http://{address}")).await.ok()?;
            let (sender, receiver) = mpsc::channel(4);
            sender.send(peer::PaxosBatch { messages: vec![peer::PaxosMessage::default(); messages] }).await.ok()?;
            let mut responses = client.exchange(ReceiverStream::new(receiver)).await.ok()?.into_inner();
            let echoed = responses.message().await.ok()??;
            Some((sender, responses, echoed.messages.len()))
        };
        tokio::time::timeout(PATIENCE, call).await.ok().flatten()
    }

    #[tokio::test]
    async fn grpc_stream_crosses_a_link_and_breaks_when_cut() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind the gRPC server");
        let target = listener.local_addr().expect("the gRPC server's address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ReplicaServer::new(EchoReplica))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let link = Link::start(target).await.expect("start the link");

        let (sender, mut responses, echoed) = grpc_exchange(link.address(), 3).await.expect("an echo through the link");
        assert_eq!(echoed, 3);
        // The same stream keeps working, with a delay.
        link.set(LinkMode::Delay(Duration::from_millis(200)));
        let started = Instant::now();
        sender.send(peer::PaxosBatch { messages: vec![peer::PaxosMessage::default(); 5] }).await.expect("send");
        let echoed = tokio::time::timeout(PATIENCE, responses.message()).await.expect("in time").expect("ok");
        assert_eq!(echoed.map(|batch| batch.messages.len()), Some(5));
        assert!(started.elapsed() >= Duration::from_millis(200), "took {:?}", started.elapsed());

        link.set(LinkMode::Cut);
        let after_cut = tokio::time::timeout(PATIENCE, responses.message()).await.expect("the stream ends in time");
        assert!(!matches!(after_cut, Ok(Some(_))), "no echo after the cut: {after_cut:?}");
        assert!(grpc_exchange(link.address(), 1).await.is_none(), "no new stream while cut");

        link.set(LinkMode::Pass);
        let (_sender, _responses, echoed) = grpc_exchange(link.address(), 2).await.expect("an echo after healing");
        assert_eq!(echoed, 2);
        server.abort();
    }
}
