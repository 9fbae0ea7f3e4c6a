//! Prometheus metrics of one replica, and the HTTP endpoint that exposes
//! them.
//!
//! [`Metrics`] is shared as an `Arc` between the driver (which counts), the
//! transport (whose [`TransportStats`] it reads) and the metrics endpoint
//! (which renders). The metrics are the Prometheus project's
//! `prometheus-client` types: counters and gauges are plain atomics, and a
//! histogram observation takes the histogram's own short lock (a scrape
//! holds it only to copy the buckets), so counting on the Paxos hot path
//! never waits for the text to be written. The same crate writes the text
//! exposition format (version 0.0.4).
//!
//! [`serve_metrics`] answers `GET /metrics` over HTTP/1.1 with hyper (the
//! HTTP stack tonic already brings) and closes the connection after each
//! answer. It is bounded like everything else: a request's head is at most
//! [`REQUEST_BYTES_MAX`] and must arrive within [`REQUEST_TIMEOUT`], a
//! connection lasts at most [`CONNECTION_TIMEOUT`], and at most
//! [`CONNECTIONS_MAX`] connections are served at once.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use gaios_paxos::ReplicaId;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::replica::transport::TransportStats;

/// The `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// The most bytes of a request's head (request line and headers) the
/// endpoint buffers (hyper's smallest allowed buffer); a longer head is
/// refused.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client has to send its request's head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, answer included, so a client that
/// reads slowly cannot hold a slot for ever.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// The most connections served at once; more are closed unanswered.
pub const CONNECTIONS_MAX: usize = 64;

/// Bucket bounds of [`Metrics::fsync_seconds`], in seconds: 50 µs to 1 s.
const FSYNC_BOUNDS_SECONDS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Bucket bounds of [`Metrics::batch_commands`], in commands.
const BATCH_BOUNDS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A monotonically increasing count (a `prometheus-client` counter with the
/// `add` the driver uses).
#[derive(Debug, Default, Clone)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// Every metric of one replica. Share it as `Arc<Metrics>`; updates are
/// relaxed atomic operations (a histogram's under its own short lock).
#[derive(Debug)]
pub struct Metrics {
    /// Every metric below, the transport's counters, and the `replica`
    /// label they all carry.
    registry: Registry,
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

/// The transport's drop counters, read at each scrape (the transport owns
/// them as plain atomics, so it needs no metrics type of its own).
#[derive(Debug)]
struct TransportCollector(Arc<TransportStats>);

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let counters = [
            (
                "gaios_peer_inbox_dropped",
                "Peer messages dropped because the driver's inbox was full.",
                stats.inbox_dropped.load(Ordering::Relaxed),
            ),
            (
                "gaios_peer_rejected",
                "Peer messages dropped as malformed, misrouted or from a non-member.",
                stats.rejected.load(Ordering::Relaxed),
            ),
            (
                "gaios_peer_outbound_dropped",
                "Messages to peers dropped because a queue was full or the peer unreachable.",
                stats.outbound_dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Zeroed metrics for replica `replica`, also reporting the transport's
    /// `stats`.
    pub fn new(replica: ReplicaId, transport: Arc<TransportStats>) -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            proposals_total: Counter::default(),
            chosen_slots_total: Counter::default(),
            applied_commands_total: Counter::default(),
            fsync_seconds: Histogram::new(FSYNC_BOUNDS_SECONDS),
            batch_commands: Histogram::new(BATCH_BOUNDS),
            sessions: Gauge::default(),
            locks_held: Gauge::default(),
            elections_total: Counter::default(),
            lost_mastership_total: Counter::default(),
            snapshots_total: Counter::default(),
            peer_messages_rejected_total: Counter::default(),
            snapshots_rejected_total: Counter::default(),
        };
        let label = (Cow::Borrowed("replica"), Cow::Owned(replica.to_string()));
        let mut registry = Registry::with_labels(std::iter::once(label));
        // Names without `_total` and help without its final period: the
        // encoder adds both. The registry holds clones sharing each atomic.
        let counters = [
            ("gaios_proposals", "Values this replica proposed as master", &metrics.proposals_total),
            ("gaios_chosen_slots", "Log slots this replica learned as chosen", &metrics.chosen_slots_total),
            ("gaios_applied_commands", "Commands applied to the state machine", &metrics.applied_commands_total),
            ("gaios_elections", "Times this replica became master", &metrics.elections_total),
            ("gaios_lost_mastership", "Times this replica stopped being master", &metrics.lost_mastership_total),
            ("gaios_snapshots", "Snapshots of the state machine taken or installed", &metrics.snapshots_total),
            (
                "gaios_peer_messages_invalid",
                "Peer messages the Paxos core dropped for a number out of range or a broken bound",
                &metrics.peer_messages_rejected_total,
            ),
            (
                "gaios_snapshots_rejected",
                "Snapshots from peers dropped because they did not restore",
                &metrics.snapshots_rejected_total,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.0.clone());
        }
        registry.register("gaios_sessions", "Open client sessions", metrics.sessions.clone());
        registry.register("gaios_locks_held", "Locks held, shared or exclusive", metrics.locks_held.clone());
        registry.register("gaios_fsync_seconds", "Duration of synced storage writes", metrics.fsync_seconds.clone());
        registry.register("gaios_batch_commands", "Commands per chosen slot", metrics.batch_commands.clone());
        registry.register_collector(Box::new(TransportCollector(transport)));
        Metrics { registry, ..metrics }
    }

    /// Records one synced storage write that took `elapsed`.
    pub fn observe_fsync(&self, elapsed: Duration) {
        self.fsync_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one chosen slot that carried `commands` commands.
    pub fn observe_batch(&self, commands: usize) {
        // Exact below 2^53 commands, far beyond any batch.
        self.batch_commands.observe(commands as f64);
    }

    /// Every metric in the Prometheus text exposition format (0.0.4), each
    /// with its `HELP` and `TYPE` lines and the `replica` label.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
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
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(REQUEST_BYTES_MAX)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%remote, %error, "metrics connection failed"),
                Err(_) => tracing::debug!(%remote, "metrics connection took too long; closed"),
            }
            drop(permit);
        });
    }
}

/// The answer to one request: the metrics for `GET /metrics`, else 404 or
/// 405.
fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.render()),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", String::from("only GET\n")),
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", String::from("not found; try /metrics\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    fn metrics() -> Metrics {
        Metrics::new(3, Arc::new(TransportStats::default()))
    }

    /// Metrics of replica 3 and the transport counters they report.
    fn metrics_with_transport() -> (Metrics, Arc<TransportStats>) {
        let stats = Arc::new(TransportStats::default());
        (Metrics::new(3, stats.clone()), stats)
    }

    /// The exposition text read back: sample values by `name{labels}` (the
    /// `le` bound as a number, however the encoder spells it), and the
    /// declared type of each family.
    struct Parsed {
        samples: BTreeMap<String, f64>,
        types: BTreeMap<String, String>,
    }

    impl Parsed {
        /// The value of the series `series`, which must exist.
        fn at(&self, series: &str) -> f64 {
            *self.samples.get(series).unwrap_or_else(|| panic!("no series {series} in {:?}", self.samples.keys()))
        }

        /// The value of `name`'s bucket with upper bound `bound`.
        fn bucket(&self, name: &str, bound: f64) -> f64 {
            self.at(&format!("{name}_bucket{{replica=\"3\",le=\"{bound}\"}}"))
        }
    }

    /// Parses the exposition text as a Prometheus 0.0.4 reader would: HELP
    /// before TYPE before samples, every sample labelled `replica="3"`.
    /// Panics on a line that is none of those.
    fn parse(text: &str) -> Parsed {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(!help.is_empty() && !help.ends_with(".."), "{line}");
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
                let series = match series.split_once(",le=\"") {
                    Some((head, bound)) => {
                        let bound = bound.trim_end_matches("\"}");
                        let bound: f64 = if bound == "+Inf" { f64::INFINITY } else { bound.parse().expect("a bound") };
                        format!("{head},le=\"{bound}\"}}")
                    }
                    None => series.to_owned(),
                };
                let value: f64 = value.parse().expect("numeric value");
                assert!(samples.insert(series.clone(), value).is_none(), "duplicate {series}");
            }
        }
        Parsed { samples, types }
    }

    #[test]
    fn render_parses_back() {
        let (metrics, transport) = metrics_with_transport();
        metrics.proposals_total.add(5);
        metrics.chosen_slots_total.inc();
        metrics.sessions.set(7);
        metrics.locks_held.inc();
        metrics.locks_held.inc();
        metrics.locks_held.dec();
        transport.inbox_dropped.fetch_add(2, Ordering::Relaxed);
        metrics.observe_fsync(Duration::from_micros(300));
        metrics.observe_batch(3);
        let text = metrics.render();
        assert!(text.ends_with('\n'));
        let parsed = parse(&text);
        assert_eq!(parsed.at("gaios_proposals_total{replica=\"3\"}"), 5.0);
        assert_eq!(parsed.at("gaios_chosen_slots_total{replica=\"3\"}"), 1.0);
        assert_eq!(parsed.at("gaios_applied_commands_total{replica=\"3\"}"), 0.0);
        assert_eq!(parsed.at("gaios_sessions{replica=\"3\"}"), 7.0);
        assert_eq!(parsed.at("gaios_locks_held{replica=\"3\"}"), 1.0);
        assert_eq!(parsed.at("gaios_peer_inbox_dropped_total{replica=\"3\"}"), 2.0);
        assert_eq!(parsed.bucket("gaios_fsync_seconds", 0.00025), 0.0);
        assert_eq!(parsed.bucket("gaios_fsync_seconds", 0.0005), 1.0);
        assert_eq!(parsed.bucket("gaios_fsync_seconds", 1.0), 1.0);
        assert_eq!(parsed.at("gaios_fsync_seconds_count{replica=\"3\"}"), 1.0);
        assert!((parsed.at("gaios_fsync_seconds_sum{replica=\"3\"}") - 0.0003).abs() < 1e-12);
        assert_eq!(parsed.bucket("gaios_batch_commands", 4.0), 1.0);
        assert_eq!(parsed.bucket("gaios_batch_commands", 2.0), 0.0);
        let expected = [
            ("gaios_proposals_total", "counter"),
            ("gaios_chosen_slots_total", "counter"),
            ("gaios_applied_commands_total", "counter"),
            ("gaios_fsync_seconds", "histogram"),
            ("gaios_batch_commands", "histogram"),
            ("gaios_sessions", "gauge"),
            ("gaios_locks_held", "gauge"),
            ("gaios_elections_total", "counter"),
            ("gaios_lost_mastership_total", "counter"),
            ("gaios_snapshots_total", "counter"),
            ("gaios_peer_messages_invalid_total", "counter"),
            ("gaios_snapshots_rejected_total", "counter"),
            ("gaios_peer_inbox_dropped_total", "counter"),
            ("gaios_peer_rejected_total", "counter"),
            ("gaios_peer_outbound_dropped_total", "counter"),
        ];
        let types: Vec<(&str, &str)> = parsed.types.iter().map(|(name, kind)| (name.as_str(), kind.as_str())).collect();
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(types, expected, "every metric with its type, and no other");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = metrics();
        // On a bound, just above it, beyond the last bound, and zero.
        for micros in [50, 51, 1_000, 2_000_000, 0] {
            metrics.observe_fsync(Duration::from_micros(micros));
        }
        let parsed = parse(&metrics.render());
        let bucket = |bound| parsed.bucket("gaios_fsync_seconds", bound);
        assert_eq!(bucket(0.00005), 2.0, "0 and 50 µs (le is inclusive)");
        assert_eq!(bucket(0.0001), 3.0);
        assert_eq!(bucket(0.001), 4.0);
        assert_eq!(bucket(1.0), 4.0, "2 s only in +Inf");
        let mut previous = 0.0;
        for bound in FSYNC_BOUNDS_SECONDS {
            assert!(bucket(bound) >= previous);
            previous = bucket(bound);
        }
        assert_eq!(bucket(f64::INFINITY), 5.0);
        assert_eq!(parsed.at("gaios_fsync_seconds_count{replica=\"3\"}"), 5.0);
        assert!((parsed.at("gaios_fsync_seconds_sum{replica=\"3\"}") - 2.001101).abs() < 1e-9);
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
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8(answer).expect("utf-8 answer")
    }

    #[tokio::test]
    async fn http_serves_metrics_and_survives_garbage() {
        let (address, metrics, stop, server) = start().await;
        metrics.elections_total.inc();

        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(body.contains("gaios_elections_total{replica=\"3\"} 1\n"), "{body}");
        let parsed = parse(body);
        assert_eq!(parsed.types["gaios_elections_total"], "counter");
        assert_eq!(parsed.types["gaios_sessions"], "gauge");
        assert_eq!(parsed.types["gaios_fsync_seconds"], "histogram");

        let answer = exchange(address, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        let answer = exchange(address, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        let answer = exchange(address, b"\x00\xff garbage\r\n\r\n").await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let answer = exchange(address, &vec![b'A'; 64 * 1024]).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431 ") || answer.starts_with("HTTP/1.1 400 "), "{answer}");
        // A client that connects and goes away without a word.
        drop(TcpStream::connect(address).await.expect("connect"));

        // Still serving after all that.
        let answer = exchange(address, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n") || answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

        stop.send(true).expect("server listening for shutdown");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
    }
}
