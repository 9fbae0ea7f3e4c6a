//! Prometheus metrics of one replica, and the tiny HTTP server that exposes
//! them.
//!
//! [`Metrics`] is shared as an `Arc` between the driver (which counts), the
//! transport (whose [`TransportStats`] it reads) and the metrics endpoint
//! (which renders). Every metric is a plain atomic, so counting on the Paxos
//! hot path takes no lock and never waits for a scrape.
//!
//! [`serve_metrics`] answers `GET /metrics` over HTTP/1.1 with the text
//! exposition format (version 0.0.4) and closes the connection after each
//! answer. It is bounded like everything else: a request's head is at most
//! [`REQUEST_BYTES_MAX`] and must arrive within [`REQUEST_TIMEOUT`], and at
//! most [`CONNECTIONS_MAX`] connections are served at once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use gaios_paxos::ReplicaId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::transport::TransportStats;

/// The `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The most bytes of a request's head (request line and headers) the
/// endpoint reads; a longer request is answered 431 and closed.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client has to send its request's head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections served at once; more are closed unanswered.
pub const CONNECTIONS_MAX: usize = 64;

/// Bucket bounds of [`Metrics::fsync_seconds`], in nanoseconds: 50 µs to 1 s.
const FSYNC_BOUNDS_NANOS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];
/// Bucket bounds of [`Metrics::batch_commands`], in commands.
const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Replaces the value; the usual way to report a size the caller knows.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds over integer observations (such as
/// nanoseconds), rendered in a unit `scale` times larger (such as seconds).
///
/// Each bucket counts only its own observations; [`Histogram::snapshot`]
/// makes them cumulative, as Prometheus wants, and derives the total count
/// from them so that `+Inf` and `_count` always agree.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), strictly increasing, in observation units.
    bounds: &'static [u64],
    /// One count per bound, then one for `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// The sum of all observations, in observation units.
    sum: AtomicU64,
    /// Observation units per rendered unit (1e9 for nanoseconds → seconds).
    scale: f64,
}

/// A consistent-enough copy of a [`Histogram`] for rendering and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in rendered units, cumulative count)` per finite bucket.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// The sum of all observations, in rendered units.
    pub sum: f64,
}

impl Histogram {
    /// A histogram with the given strictly increasing `bounds`.
    fn new(bounds: &'static [u64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "bounds must increase");
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { bounds, buckets, sum: AtomicU64::new(0), scale }
    }

    /// Counts `value` (in observation units) in the first bucket whose bound
    /// is at least `value`.
    pub fn observe(&self, value: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        // `partition_point` is at most `bounds.len()`, the `+Inf` bucket.
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The cumulative buckets, count and sum as of now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / self.scale, cumulative));
        }
        let overflow = self.buckets.last().map_or(0, |bucket| bucket.load(Ordering::Relaxed));
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        HistogramSnapshot { buckets, count: cumulative + overflow, sum }
    }
}

/// Every metric of one replica. Share it as `Arc<Metrics>`; all updates are
/// relaxed atomic operations.
#[derive(Debug)]
pub struct Metrics {
    /// The replica these metrics describe (the `replica` label).
    replica: ReplicaId,
    /// The transport's drop counters, read at render time.
    transport: Arc<TransportStats>,
    /// `gaios_proposals_total`: values this replica proposed as master (one
    /// per Accept round it started), so a rising rate with flat
    /// `chosen_slots_total` shows proposals that do not get chosen.
    pub proposals_total: Counter,
    /// `gaios_chosen_slots_total`: log slots this replica learned as chosen.
    pub chosen_slots_total: Counter,
    /// `gaios_applied_commands_total`: commands applied to the state machine,
    /// counting every command of a batched slot.
    pub applied_commands_total: Counter,
    /// `gaios_fsync_seconds`: how long each synced storage write took, the
    /// floor under every commit's latency. Use [`Metrics::observe_fsync`].
    pub fsync_seconds: Histogram,
    /// `gaios_batch_commands`: commands per chosen slot, which shows whether
    /// batching works under load. Use [`Metrics::observe_batch`].
    pub batch_commands: Histogram,
    /// `gaios_sessions`: open client sessions in the applied state.
    pub sessions: Gauge,
    /// `gaios_locks_held`: locks held (shared or exclusive) in the applied
    /// state.
    pub locks_held: Gauge,
    /// `gaios_elections_total`: times this replica became master.
    pub elections_total: Counter,
    /// `gaios_lost_mastership_total`: times this replica stopped being
    /// master (lease expired, higher ballot seen, or step-down).
    pub lost_mastership_total: Counter,
    /// `gaios_snapshots_total`: snapshots of the state machine this replica
    /// took or installed.
    pub snapshots_total: Counter,
    /// `gaios_peer_messages_invalid_total`: peer messages the Paxos core
    /// dropped because a number in them was out of range or a bound was
    /// broken (a forged or corrupted message, or a peer with a bug).
    pub peer_messages_rejected_total: Counter,
    /// `gaios_snapshots_rejected_total`: snapshots from peers dropped because
    /// they did not restore into a state (the replica kept serving).
    pub snapshots_rejected_total: Counter,
}

impl Metrics {
    /// Zeroed metrics for replica `replica`, also reporting the transport's
    /// `stats`.
    pub fn new(replica: ReplicaId, transport: Arc<TransportStats>) -> Self {
        Metrics {
            replica,
            transport,
            proposals_total: Counter::default(),
            chosen_slots_total: Counter::default(),
            applied_commands_total: Counter::default(),
            fsync_seconds: Histogram::new(&FSYNC_BOUNDS_NANOS, 1e9),
            batch_commands: Histogram::new(&BATCH_BOUNDS, 1.0),
            sessions: Gauge::default(),
            locks_held: Gauge::default(),
            elections_total: Counter::default(),
            lost_mastership_total: Counter::default(),
            snapshots_total: Counter::default(),
            peer_messages_rejected_total: Counter::default(),
            snapshots_rejected_total: Counter::default(),
        }
    }

    /// Records one synced storage write that took `elapsed`.
    pub fn observe_fsync(&self, elapsed: Duration) {
        self.fsync_seconds.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one chosen slot that carried `commands` commands.
    pub fn observe_batch(&self, commands: usize) {
        self.batch_commands.observe(u64::try_from(commands).unwrap_or(u64::MAX));
    }

    /// Every metric in the Prometheus text exposition format (0.0.4), each
    /// with its `HELP` and `TYPE` lines and the `replica` label.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let label = format!("replica=\"{}\"", self.replica);
        let counters: [(&str, &str, u64); 11] = [
            ("gaios_proposals_total", "Values this replica proposed as master.", self.proposals_total.get()),
            ("gaios_chosen_slots_total", "Log slots this replica learned as chosen.", self.chosen_slots_total.get()),
            (
                "gaios_applied_commands_total",
                "Commands applied to the state machine.",
                self.applied_commands_total.get(),
            ),
            ("gaios_elections_total", "Times this replica became master.", self.elections_total.get()),
            (
                "gaios_lost_mastership_total",
                "Times this replica stopped being master.",
                self.lost_mastership_total.get(),
            ),
            ("gaios_snapshots_total", "Snapshots of the state machine taken or installed.", self.snapshots_total.get()),
            (
                "gaios_peer_messages_invalid_total",
                "Peer messages the Paxos core dropped for a number out of range or a broken bound.",
                self.peer_messages_rejected_total.get(),
            ),
            (
                "gaios_snapshots_rejected_total",
                "Snapshots from peers dropped because they did not restore.",
                self.snapshots_rejected_total.get(),
            ),
            (
                "gaios_peer_inbox_dropped_total",
                "Peer messages dropped because the driver's inbox was full.",
                self.transport.inbox_dropped.load(Ordering::Relaxed),
            ),
            (
                "gaios_peer_rejected_total",
                "Peer messages dropped as malformed, misrouted or from a non-member.",
                self.transport.rejected.load(Ordering::Relaxed),
            ),
            (
                "gaios_peer_outbound_dropped_total",
                "Messages to peers dropped because a queue was full or the peer unreachable.",
                self.transport.outbound_dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name}{{{label}}} {value}");
        }
        let gauges = [
            ("gaios_sessions", "Open client sessions.", self.sessions.get()),
            ("gaios_locks_held", "Locks held, shared or exclusive.", self.locks_held.get()),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name}{{{label}}} {value}");
        }
        let histograms = [
            ("gaios_fsync_seconds", "Duration of synced storage writes.", &self.fsync_seconds),
            ("gaios_batch_commands", "Commands per chosen slot.", &self.batch_commands),
        ];
        for (name, help, histogram) in histograms {
            header(&mut out, name, help, "histogram");
            let snapshot = histogram.snapshot();
            for (bound, count) in &snapshot.buckets {
                let _ = writeln!(out, "{name}_bucket{{{label},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", snapshot.count);
            let _ = writeln!(out, "{name}_sum{{{label}}} {}", snapshot.sum);
            let _ = writeln!(out, "{name}_count{{{label}}} {}", snapshot.count);
        }
        out
    }
}

/// Writes the `HELP` and `TYPE` lines of one metric family.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true: one task
/// per connection, at most [`CONNECTIONS_MAX`] at once, each closed after
/// its answer. Bad requests are answered (400, 404, 405, 431) or dropped,
/// never allowed to stop the server.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically out of file descriptors; back off instead of spinning.
                tracing::warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "metrics endpoint busy; closing connection");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &metrics).await {
                tracing::debug!(%remote, %error, "metrics connection failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request's head and writes one answer.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        // Too slow: close without an answer.
        Err(_) => return Ok(()),
    };
    let (status, body) = match head {
        Head::Complete(head) => route(&head, metrics),
        Head::TooLarge => ("431 Request Header Fields Too Large", String::from("request too large\n")),
        Head::Closed => return Ok(()),
    };
    let content_type = if status.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What came in on a connection.
enum Head {
    /// The request line and headers, up to the blank line.
    Complete(Vec<u8>),
    /// [`REQUEST_BYTES_MAX`] bytes without a blank line.
    TooLarge,
    /// The client closed before finishing its request.
    Closed,
}

/// Reads until the blank line that ends a request's head, or the limit.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buffer = vec![0; REQUEST_BYTES_MAX];
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            return Ok(Head::TooLarge);
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            return Ok(Head::Closed);
        }
        // Search from a little before the new bytes, in case the terminator
        // straddles two reads.
        let start = filled.saturating_sub(3);
        filled += read;
        if let Some(end) = buffer[start..filled].windows(4).position(|window| window == b"\r\n\r\n") {
            buffer.truncate(start + end);
            return Ok(Head::Complete(buffer));
        }
    }
}

/// The status line and body for a request's head.
fn route(head: &[u8], metrics: &Metrics) -> (&'static str, String) {
    let request_line = head.split(|&byte| byte == b'\r' || byte == b'\n').next().unwrap_or_default();
    let Ok(request_line) = std::str::from_utf8(request_line) else {
        return ("400 Bad Request", String::from("bad request\n"));
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", String::from("bad request\n"));
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", String::from("bad request\n"));
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        (_, "/metrics") => ("405 Method Not Allowed", String::from("only GET\n")),
        _ => ("404 Not Found", String::from("not found; try /metrics\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn metrics() -> Metrics {
        Metrics::new(3, Arc::new(TransportStats::default()))
    }

    /// Parses the exposition text back: sample lines by `name{labels}`, and
    /// the declared type of each family. Panics on a line that is neither.
    fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(!help.is_empty());
                assert!(helped.insert(name.to_owned()), "HELP for {name} twice");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{kind}");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
            } else {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let name = series.split('{').next().expect("name");
                assert!(name.starts_with("gaios_"), "{line}");
                assert!(series.contains("{replica=\"3\""), "{line}");
                assert!(series.ends_with('}'), "{line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|base| types.contains_key(*base)))
                    .unwrap_or(name);
                assert!(types.contains_key(family), "sample before TYPE: {line}");
                let value: f64 = value.parse().expect("numeric value");
                assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate {series}");
            }
        }
        (samples, types)
    }

    #[test]
    fn render_parses_back() {
        let metrics = metrics();
        metrics.proposals_total.add(5);
        metrics.chosen_slots_total.inc();
        metrics.sessions.set(7);
        metrics.locks_held.inc();
        metrics.locks_held.inc();
        metrics.locks_held.dec();
        metrics.transport.inbox_dropped.fetch_add(2, Ordering::Relaxed);
        metrics.observe_fsync(Duration::from_micros(300));
        metrics.observe_batch(3);
        let text = metrics.render();
        assert!(text.ends_with('\n'));
        let (samples, types) = parse(&text);
        assert_eq!(samples["gaios_proposals_total{replica=\"3\"}"], 5.0);
        assert_eq!(samples["gaios_chosen_slots_total{replica=\"3\"}"], 1.0);
        assert_eq!(samples["gaios_applied_commands_total{replica=\"3\"}"], 0.0);
        assert_eq!(samples["gaios_sessions{replica=\"3\"}"], 7.0);
        assert_eq!(samples["gaios_locks_held{replica=\"3\"}"], 1.0);
        assert_eq!(samples["gaios_peer_inbox_dropped_total{replica=\"3\"}"], 2.0);
        assert_eq!(samples["gaios_fsync_seconds_bucket{replica=\"3\",le=\"0.00025\"}"], 0.0);
        assert_eq!(samples["gaios_fsync_seconds_bucket{replica=\"3\",le=\"0.0005\"}"], 1.0);
        assert_eq!(samples["gaios_fsync_seconds_bucket{replica=\"3\",le=\"1\"}"], 1.0);
        assert_eq!(samples["gaios_fsync_seconds_count{replica=\"3\"}"], 1.0);
        assert!((samples["gaios_fsync_seconds_sum{replica=\"3\"}"] - 0.0003).abs() < 1e-12);
        assert_eq!(samples["gaios_batch_commands_bucket{replica=\"3\",le=\"4\"}"], 1.0);
        assert_eq!(types["gaios_fsync_seconds"], "histogram");
        assert_eq!(types["gaios_sessions"], "gauge");
        assert_eq!(types["gaios_elections_total"], "counter");
        for name in [
            "gaios_proposals_total",
            "gaios_chosen_slots_total",
            "gaios_applied_commands_total",
            "gaios_fsync_seconds",
            "gaios_batch_commands",
            "gaios_sessions",
            "gaios_locks_held",
            "gaios_elections_total",
            "gaios_lost_mastership_total",
            "gaios_snapshots_total",
            "gaios_peer_inbox_dropped_total",
            "gaios_peer_rejected_total",
            "gaios_peer_outbound_dropped_total",
        ] {
            assert!(types.contains_key(name), "{name} missing");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = metrics();
        // On a bound, just above it, beyond the last bound, and zero.
        for micros in [50, 51, 1_000, 2_000_000, 0] {
            metrics.observe_fsync(Duration::from_micros(micros));
        }
        let snapshot = metrics.fsync_seconds.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!(snapshot.buckets.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1));
        let at = |bound: f64| snapshot.buckets.iter().find(|(b, _)| *b == bound).expect("bucket").1;
        assert_eq!(at(0.00005), 2, "0 and 50 µs (le is inclusive)");
        assert_eq!(at(0.0001), 3);
        assert_eq!(at(0.001), 4);
        assert_eq!(at(1.0), 4, "2 s only in +Inf");
        assert!((snapshot.sum - 2.001101).abs() < 1e-9);

        let (samples, _) = parse(&metrics.render());
        let mut previous = 0.0;
        for (bound, _) in &snapshot.buckets {
            let value = samples[&format!("gaios_fsync_seconds_bucket{{replica=\"3\",le=\"{bound}\"}}")];
            assert!(value >= previous);
            previous = value;
        }
        assert_eq!(samples["gaios_fsync_seconds_bucket{replica=\"3\",le=\"+Inf\"}"], 5.0);
        assert_eq!(samples["gaios_fsync_seconds_count{replica=\"3\"}"], 5.0);
    }

    async fn start() -> (std::net::SocketAddr, Arc<Metrics>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let metrics = Arc::new(metrics());
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve_metrics(listener, metrics.clone(), stopped));
        (address, metrics, stop, server)
    }

    /// Sends `request` raw and returns the whole answer.
    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        // The server may answer and close before taking all of an
        // oversized request; a reset while writing is then fine.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8(answer).expect("utf-8 answer")
    }

    #[tokio::test]
    async fn http_serves_metrics_and_survives_garbage() {
        let (address, metrics, stop, server) = start().await;
        metrics.elections_total.inc();

        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.contains("gaios_elections_total{replica=\"3\"} 1\n"), "{body}");
        parse(body);

        let answer = exchange(address, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        let answer = exchange(address, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        let answer = exchange(address, b"\x00\xff garbage\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let answer = exchange(address, &vec![b'A'; 64 * 1024]).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // A client that connects and goes away without a word.
        drop(TcpStream::connect(address).await.expect("connect"));

        // Still serving after all that.
        let answer = exchange(address, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

        stop.send(true).expect("server listening for shutdown");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
    }
}
