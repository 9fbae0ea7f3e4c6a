//! TLS on both listeners and on the peer links, mutual everywhere.
//!
//! A replica started with `--tls-ca`, `--tls-cert` and `--tls-key` serves
//! its client and peer ports over TLS and accepts only connections that
//! present a certificate signed by the cell's CA (the file `--tls-ca`
//! names). On the peer port that is not enough: a peer's certificate must
//! name a member, as the DNS name `replica-<id>.<cell-id>` among its
//! subject alternative names, and every message on the connection must come
//! from that member (see `transport.rs`; anything else is dropped and
//! counted). A replica connecting to a peer checks the peer's certificate
//! for the same name, whatever address it dialled.
//!
//! A client's identity is the common name (CN) of its certificate's
//! subject, as for etcd's client certificates.
//!
//! The files are read again when any of them changes (checked every
//! [`RELOAD_CHECK_INTERVAL`]) or on SIGHUP. A reload that fails (a file
//! half written, a key that does not match) keeps the certificates in use
//! and is logged; connections made afterwards use the new certificates,
//! connections already open keep theirs.
//!
//! Handshakes run on tasks of their own, at most [`HANDSHAKES_MAX`] at a
//! time and each for at most [`HANDSHAKE_TIMEOUT`], so that a client that
//! connects and sends nothing holds up no one. A port keeps at most
//! [`CONNECTIONS_MAX`] connections (handshakes included) open at once: a
//! connection beyond them is closed at once and counted as a failed
//! handshake, so a client with a valid certificate that opens connection
//! after connection cannot exhaust the replica's memory or descriptors.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use gaios_paxos::ReplicaId;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::replica::transport::TransportStats;

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The most connections a port keeps open at once, handshakes included:
/// enough for thousands of clients (each `gaios` client holds one to the
/// master; the benchmark's 1000 writers and 20,000 sessions in 200
/// connections fit), few enough that their buffers stay within a few
/// hundred MiB.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most handshakes under way at once on one listener; a connection
/// beyond it is closed at once.
pub const HANDSHAKES_MAX: usize = 256;
/// The most handshakes under way at once from one IP address, so that one
/// host opening connections and sending nothing cannot take every slot of
/// [`HANDSHAKES_MAX`] from the others (peers reconnecting, clients).
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;
/// The handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// The largest certificate or key file read (a chain of a few certificates
/// is a few KiB).
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Where a replica's (or a client's) TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cell's CA certificate(s), PEM: what peers and clients must be
    /// signed by.
    pub ca: PathBuf,
    /// This process's certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    fn paths(&self) -> [&Path; 3] {
        [&self.ca, &self.cert, &self.key]
    }
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{path} holds no {what} in PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, a CA certificate it cannot parse).
    #[error("the TLS material is unusable: {0}")]
    Rustls(String),
}

/// The material read at one moment.
struct Loaded {
    server: Arc<rustls::ServerConfig>,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The files' modification times when read.
    stamps: Vec<Option<SystemTime>>,
}

/// A replica's TLS material, reloadable (see the module docs).
pub struct Tls {
    files: TlsFiles,
    /// The replica (id and cell) the certificate must name, for a
    /// replica's own material: a reload of another member's certificate
    /// would cut this one off from its peers.
    expected: Option<(ReplicaId, String)>,
    loaded: RwLock<Arc<Loaded>>,
    /// Reloads that took effect.
    pub reloads: AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let error = |source| TlsError::Read { path: path.to_path_buf(), source };
    let length = std::fs::metadata(path).map_err(error)?.len();
    if length > PEM_FILE_BYTES_MAX {
        return Err(error(io::Error::new(io::ErrorKind::InvalidData, format!("{length} bytes; at most {PEM_FILE_BYTES_MAX}"))));
    }
    std::fs::read(path).map_err(error)
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files.paths().iter().map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok()).collect()
}

/// The certificates in `pem`, at least one.
pub fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { path: path.to_path_buf(), what: "certificate" })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certificates)
}

fn load(files: &TlsFiles, expected: Option<&(ReplicaId, String)>) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let ca_pem = read_pem(&files.ca)?;
    let cert_pem = read_pem(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&ca_pem, &files.ca)? {
        roots.add(ca).map_err(|error| TlsError::Rustls(format!("{}: {error}", files.ca.display())))?;
    }
    let chain = certificates(&cert_pem, &files.cert)?;
    if let Some((id, cell_id)) = expected {
        let named = replica_of(&chain, cell_id);
        if named != Some(*id) {
            return Err(TlsError::Rustls(format!(
                "{} must name this replica as {} among its DNS names; it names {}",
                files.cert.display(),
                replica_name(*id, cell_id),
                named.map_or_else(|| "no member".to_string(), |other| format!("replica {other}")),
            )));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::Pem { path: files.key.clone(), what: "private key" })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    // gRPC is HTTP/2 only.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { server: Arc::new(server), ca_pem, cert_pem, key_pem, stamps })
}

impl Tls {
    /// Reads the files; fails if any is missing or unusable, or (with
    /// `expected`) if the certificate does not name that replica.
    pub fn load(files: TlsFiles, expected: Option<(ReplicaId, String)>) -> Result<Arc<Tls>, TlsError> {
        let loaded = load(&files, expected.as_ref())?;
        Ok(Arc::new(Tls {
            files,
            expected,
            loaded: RwLock::new(Arc::new(loaded)),
            reloads: AtomicU64::new(0),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the files again; on failure the material in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.files, self.expected.as_ref())?;
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads if a file changed since the last read; says whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if stamps(&self.files) == self.current().stamps {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// What accepts connections now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().server.clone())
    }

    /// A client configuration with this process's certificate that trusts
    /// the cell's CA and expects the server to be named `server_name` (the
    /// dialled host if `None`).
    pub fn client_config(&self, server_name: Option<&str>) -> tonic::transport::ClientTlsConfig {
        let loaded = self.current();
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&loaded.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&loaded.cert_pem, &loaded.key_pem));
        match server_name {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }
}

/// The DNS name a member's certificate carries: `replica-<id>.<cell-id>`.
pub fn replica_name(id: ReplicaId, cell_id: &str) -> String {
    format!("replica-{id}.{cell_id}")
}

/// Whether `cell_id` can be part of a DNS name (TLS needs it to be): one
/// label of letters, digits and hyphens, at most 63, not starting or ending
/// with a hyphen.
pub fn cell_id_is_dns_label(cell_id: &str) -> bool {
    !cell_id.is_empty()
        && cell_id.len() <= 63
        && cell_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !cell_id.starts_with('-')
        && !cell_id.ends_with('-')
        // rustls refuses a name whose last label is all digits (`2024`)
        // or looks like hex (`0xbeef`), as an IP address in disguise.
        && matches!(
            rustls::pki_types::ServerName::try_from(replica_name(1, cell_id).as_str()),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        )
}

/// The member a peer's certificate names (`replica-<id>.<cell_id>` among
/// its DNS names), if it names exactly one.
pub fn replica_of(certificates: &[CertificateDer<'_>], cell_id: &str) -> Option<ReplicaId> {
    let leaf = certificates.first()?;
    let certificate = webpki::EndEntityCert::try_from(leaf).ok()?;
    // DNS names compare without regard to case.
    let suffix = format!(".{}", cell_id.to_ascii_lowercase());
    let mut ids = certificate.valid_dns_names().filter_map(|name| {
        let name = name.to_ascii_lowercase();
        let id = name.strip_prefix("replica-")?.strip_suffix(suffix.as_str())?;
        // The canonical decimal only (no sign, spaces or leading zeros), as
        // a peer dialling the member spells it.
        id.parse::<ReplicaId>().ok().filter(|parsed| parsed.to_string() == id)
    });
    let first = ids.next()?;
    ids.all(|other| other == first).then_some(first)
}

/// The identity of a client: the common name of its certificate's subject.
pub fn client_identity(certificates: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certificates.first()?;
    let certificate = webpki::EndEntityCert::try_from(leaf).ok()?;
    common_name(certificate.subject())
}

/// One DER element of `input`: its tag, its contents and what follows.
/// Lengths are checked against the input; `None` on anything malformed.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().try_fold(0usize, |acc, &b| acc.checked_mul(256)?.checked_add(usize::from(b)))?;
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    Some((tag, contents, after))
}

/// The first common name (OID 2.5.4.3) in the contents of an X.509 `Name`.
fn common_name(mut name: &[u8]) -> Option<String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    // UTF8String, PrintableString, IA5String.
    const STRINGS: &[u8] = &[0x0c, 0x13, 0x16];
    while !name.is_empty() {
        let (tag, mut set, rest) = der_element(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = der_element(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_element(attribute)?;
            if tag != OID || oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = der_element(value)?;
            if !STRINGS.contains(&tag) {
                return None;
            }
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// Accepts TCP connections on `listener` and hands on those whose TLS
/// handshake succeeds (see the module docs), until the receiving side is
/// dropped; counts the handshakes that fail (no certificate, one from
/// another CA, not TLS at all, too slow) in `failed`.
pub fn incoming(listener: TcpListener, tls: Arc<Tls>, failed: Arc<TransportStats>) -> ReceiverStream<Result<Connection, io::Error>> {
    incoming_at_most(listener, tls, failed, CONNECTIONS_MAX)
}

/// [`incoming`] with at most `connections_max` connections open at once.
fn incoming_at_most(
    listener: TcpListener,
    tls: Arc<Tls>,
    failed: Arc<TransportStats>,
    connections_max: usize,
) -> ReceiverStream<Result<Connection, io::Error>> {
    let (accepted, stream) = mpsc::channel(ACCEPTED_QUEUE);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let connections = Arc::new(Semaphore::new(connections_max));
    // Handshakes under way per address (entries go when they reach 0).
    let per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let connection = tokio::select! {
                () = accepted.closed() => break,
                connection = listener.accept() => connection,
            };
            let (tcp, remote) = match connection {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of descriptors, say: try again shortly.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let from_address = {
                let mut counts = per_address.lock().unwrap_or_else(PoisonError::into_inner);
                let count = counts.entry(remote.ip()).or_insert(0);
                if *count >= HANDSHAKES_PER_ADDRESS_MAX {
                    None
                } else {
                    *count += 1;
                    Some(AddressSlot { counts: per_address.clone(), address: remote.ip() })
                }
            };
            let (Some(slot), Ok(permit), Ok(open)) =
                (from_address, handshakes.clone().try_acquire_owned(), connections.clone().try_acquire_owned())
            else {
                let refused = failed.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%remote, refused, "closing a connection: too many TLS handshakes under way (from this address, or in all), or too many connections open");
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let accepted = accepted.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                drop(slot);
                match outcome {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(Connection { stream, _open: open })).await;
                    }
                    Ok(Err(error)) => {
                        let failed = failed.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed) + 1;
                        if failed.is_power_of_two() {
                            tracing::warn!(%remote, %error, failed, "TLS handshake failed");
                        }
                    }
                    Err(_) => {
                        failed.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

/// A connection whose handshake succeeded; it holds its place among the
/// port's [`CONNECTIONS_MAX`] until it is closed (dropped).
pub struct Connection {
    stream: TlsStream<TcpStream>,
    _open: OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    /// The TLS stream's: the peer's address and certificates, which the
    /// services read to know who calls.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A handshake's place in its address's count; freed when dropped.
struct AddressSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    address: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Reloads the material when its files change or on SIGHUP, until
/// `shutdown` turns true.
pub async fn watch_files(tls: Arc<Tls>, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot install the SIGHUP handler; certificates reload only when their files change");
            None
        }
    };
    let mut check = tokio::time::interval(RELOAD_CHECK_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = check.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(signal) => signal.recv().await, None => None } } => true,
        };
        let outcome = if forced { tls.reload().map(|()| true) } else { tls.reload_if_changed() };
        match outcome {
            Ok(true) => tracing::info!(reloads = tls.reloads.load(Ordering::Relaxed), "reloaded the TLS certificates"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot reload the TLS certificates; keeping those in use"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_are_checked() {
        assert_eq!(der_element(&[0x30, 0x02, 1, 2, 9]), Some((0x30, &[1u8, 2][..], &[9u8][..])));
        assert_eq!(der_element(&[0x30, 0x03, 1, 2]), None, "contents shorter than the length");
        assert_eq!(der_element(&[0x30, 0x81]), None, "a long length without its byte");
        assert_eq!(der_element(&[0x30, 0x85, 1, 1, 1, 1, 1]), None, "a length of five bytes");
        assert_eq!(der_element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None, "4 GiB of contents that are not there");
        assert_eq!(der_element(&[]), None);
        assert_eq!(common_name(&[0x31, 0x05, 0x30, 0x7f]), None, "garbage inside a name");
    }

    #[test]
    fn a_replica_refuses_a_certificate_that_names_another_member() {
        let dir = tempfile::tempdir().expect("dir");
        let args = crate::ops::certs::CertsArgs {
            dir: dir.path().to_path_buf(),
            cell_id: "c".into(),
            replicas: vec![1, 2],
            hosts: vec!["127.0.0.1".into()],
            clients: vec!["alice".into()],
            days: 1,
        };
        crate::ops::certs::make(&args).expect("certificates");
        let files = |stem: &str| TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join(format!("{stem}.pem")),
            key: dir.path().join(format!("{stem}.key")),
        };
        assert!(Tls::load(files("replica-2"), Some((2, "c".into()))).is_ok());
        for (stem, id) in [("replica-2", 1), ("client-alice", 1), ("replica-1", 1)] {
            let outcome = Tls::load(files(stem), Some((id, "other".into())));
            assert!(outcome.is_err(), "{stem} was taken as replica {id} of cell other");
        }
        let wrong = Tls::load(files("replica-2"), Some((1, "c".into()))).expect_err("replica 2's certificate taken by replica 1");
        assert!(wrong.to_string().contains("names replica 2"), "{wrong}");
        // A key that is not the certificate's.
        let mismatched = TlsFiles { key: dir.path().join("replica-1.key"), ..files("replica-2") };
        assert!(Tls::load(mismatched, None).is_err(), "a key of another certificate was taken");
        // Names compare canonically.
        let chain = certificates(&std::fs::read(dir.path().join("replica-2.pem")).expect("pem"), dir.path()).expect("chain");
        assert_eq!(replica_of(&chain, "c"), Some(2));
        assert_eq!(replica_of(&chain, "C"), Some(2), "DNS names ignore case");
    }

    /// A client TLS connection to `address` with `stem`'s certificate of
    /// `dir`, handshake done.
    async fn connect(dir: &Path, stem: &str, address: std::net::SocketAddr) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let read = |name: String| std::fs::read(dir.join(name)).expect("a TLS file");
        let mut roots = RootCertStore::empty();
        for certificate in certificates(&read("ca.pem".into()), dir).expect("the CA") {
            roots.add(certificate).expect("a root");
        }
        let chain = certificates(&read(format!("{stem}.pem")), dir).expect("a chain");
        let key = PrivateKeyDer::from_pem_slice(&read(format!("{stem}.key"))).expect("a key");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        let tcp = TcpStream::connect(address).await?;
        let name = rustls::pki_types::ServerName::try_from("replica-1.c").expect("a name").to_owned();
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        // The server may refuse after the client's side of the handshake:
        // a round trip tells (it closes a connection it does not keep).
        use tokio::io::AsyncWriteExt as _;
        stream.write_all(b"x").await?;
        stream.flush().await?;
        Ok(stream)
    }

    /// A port keeps at most its limit of connections open; one beyond it
    /// is closed and counted, and a closed one frees its place.
    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_a_closed_one_frees_its_place() {
        use tokio_stream::StreamExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let args = crate::ops::certs::CertsArgs {
            dir: dir.path().to_path_buf(),
            cell_id: "c".into(),
            replicas: vec![1],
            hosts: vec!["127.0.0.1".into()],
            clients: vec!["alice".into()],
            days: 1,
        };
        crate::ops::certs::make(&args).expect("certificates");
        let files = TlsFiles { ca: dir.path().join("ca.pem"), cert: dir.path().join("replica-1.pem"), key: dir.path().join("replica-1.key") };
        let tls = Tls::load(files, Some((1, "c".into()))).expect("TLS material");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let address = listener.local_addr().expect("address");
        let stats = Arc::new(TransportStats::default());
        let mut accepted = incoming_at_most(listener, tls, stats.clone(), 2);
        let first = connect(dir.path(), "client-alice", address).await.expect("first connection");
        let served_first = accepted.next().await.expect("accepted").expect("a connection");
        let _second = connect(dir.path(), "client-alice", address).await.expect("second connection");
        let _served_second = accepted.next().await.expect("accepted").expect("a connection");
        // The third is closed at once: its handshake or first write fails.
        let mut third = connect(dir.path(), "client-alice", address).await;
        if let Ok(stream) = &mut third {
            use tokio::io::AsyncReadExt as _;
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.expect("an answer");
            assert!(matches!(read, Ok(0) | Err(_)), "a connection beyond the limit was kept: {read:?}");
        }
        assert_eq!(stats.tls_handshakes_failed.load(Ordering::Relaxed), 1, "the refused connection is counted");
        drop(served_first);
        drop(first);
        let _fourth = connect(dir.path(), "client-alice", address).await.expect("a place freed by a closed connection");
        accepted.next().await.expect("accepted").expect("the fourth connection");
    }

    #[test]
    fn cell_ids_must_be_dns_labels() {
        assert!(cell_id_is_dns_label("local"));
        assert!(cell_id_is_dns_label("prod-eu-1"));
        for bad in ["", "-a", "a-", "a.b", "a b", "ä", &"x".repeat(64), "2024", "0xbeef"] {
            assert!(!cell_id_is_dns_label(bad), "{bad:?}");
        }
    }
}
