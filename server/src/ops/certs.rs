//! `gaios-server certs`: a cell's CA and the certificates of its replicas
//! and clients, for local cells, tests and small deployments (a real
//! deployment may use any CA; the README says what the certificates must
//! carry).
//!
//! In the folder it is given it keeps `ca.pem` and `ca.key` (made on the
//! first call, reused after, so that certificates made later, for a new
//! member or a rotation, are signed by the same CA) and writes
//! `replica-<id>.pem`/`.key` (DNS name `replica-<id>.<cell-id>` plus the
//! hosts given, for serving and for connecting) and `client-<name>.pem`/
//! `.key` (subject CN `<name>`, for connecting). Keys are ECDSA P-256,
//! written with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gaios_paxos::ReplicaId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::ops::tls::{cell_id_is_dns_label, replica_name};

/// The flags of `gaios-server certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// The folder for the CA and the certificates (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The cell's name, as given to its replicas.
    #[arg(long, default_value = "local")]
    pub cell_id: String,
    /// Make a certificate for this replica id; repeat for several.
    #[arg(long = "replica")]
    pub replicas: Vec<ReplicaId>,
    /// A host name or IP address the replicas are reached by, put in their
    /// certificates; repeat for several (all replicas get all of them).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Make a client certificate with this identity (the subject's CN);
    /// repeat for several.
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// How many days the certificates made are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// The CA's parameters: the same every time, so that an issuer rebuilt
/// from the saved key signs exactly as the first one did.
fn ca_params(cell_id: &str, days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("Gaios cell {cell_id} CA"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days.saturating_mul(10));
    Ok(params)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A day back, for clocks a little behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    // A leftover of a crashed run is replaced, never reused with its mode.
    let _ = std::fs::remove_file(&temporary);
    options.create_new(true);
    let mut file = options.open(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", temporary.display()))?;
    // Renamed into place, so that a replica reloading never reads half a file.
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn leaf(key: &KeyPair, params: CertificateParams, issuer: &Issuer<'_, KeyPair>, dir: &Path, stem: &str) -> anyhow::Result<()> {
    let certificate = params.signed_by(key, issuer)?;
    write_file(&dir.join(format!("{stem}.key")), &key.serialize_pem(), true)?;
    write_file(&dir.join(format!("{stem}.pem")), &certificate.pem(), false)?;
    Ok(())
}

/// Makes what `args` asks for; returns the files written.
pub fn make(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(cell_id_is_dns_label(&args.cell_id), "--cell-id {:?} must be a DNS label (letters, digits, hyphens) to be named in certificates", args.cell_id);
    anyhow::ensure!((1..=36_500).contains(&args.days), "--days must be 1 to 36500");
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut written = Vec::new();
    let (ca_cert, ca_key) = (args.dir.join(CA_CERT), args.dir.join(CA_KEY));
    let key = if ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key).with_context(|| format!("cannot read {}", ca_key.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("{} holds no usable key", ca_key.display()))?
    } else {
        let key = KeyPair::generate()?;
        let certificate = ca_params(&args.cell_id, args.days)?.self_signed(&key)?;
        write_file(&ca_key, &key.serialize_pem(), true)?;
        write_file(&ca_cert, &certificate.pem(), false)?;
        written.extend([ca_cert, ca_key]);
        key
    };
    let issuer = Issuer::new(ca_params(&args.cell_id, args.days)?, key);
    for &id in &args.replicas {
        let mut names = vec![replica_name(id, &args.cell_id)];
        names.extend(args.hosts.iter().cloned());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.distinguished_name.push(DnType::CommonName, replica_name(id, &args.cell_id));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, args.days);
        let stem = format!("replica-{id}");
        leaf(&KeyPair::generate()?, params, &issuer, &args.dir, &stem)?;
        written.extend([args.dir.join(format!("{stem}.pem")), args.dir.join(format!("{stem}.key"))]);
    }
    for name in &args.clients {
        anyhow::ensure!(
            !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)),
            "client name {name:?}: 1 to 128 letters, digits or -_.@"
        );
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name.clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, args.days);
        let stem = format!("client-{name}");
        leaf(&KeyPair::generate()?, params, &issuer, &args.dir, &stem)?;
        written.extend([args.dir.join(format!("{stem}.pem")), args.dir.join(format!("{stem}.key"))]);
    }
    Ok(written)
}
