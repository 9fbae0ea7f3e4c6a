//! TLS for clients: the cell's CA to trust and this client's certificate
//! and key, all PEM (etcdctl's `--cacert`, `--cert`, `--key`). A cell
//! started with TLS refuses connections without a client certificate its
//! CA signed; the certificate's subject CN is the client's identity.

use std::path::Path;
use std::sync::Arc;

/// A client's TLS material, cheap to clone.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Arc<[u8]>,
    cert_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// From PEM contents.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Self {
        Tls { ca_pem: ca.into(), cert_pem: cert.into(), key_pem: key.into() }
    }

    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> std::io::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))
        };
        Ok(Tls::from_pem(&read(ca)?, &read(cert)?, &read(key)?))
    }

    /// The tonic configuration: trust the CA, present the certificate (for
    /// programs that make their own channels to the cell).
    pub fn config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&*self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&*self.cert_pem, &*self.key_pem))
    }
}
