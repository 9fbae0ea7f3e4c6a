//! TLS against five real processes (issue 14): who may talk to a cell.
//!
//! - A client without a certificate, or with one from another CA, cannot
//!   start a session (the handshake fails, and is counted); one with a
//!   certificate from the cell's CA can.
//! - A process with a valid client certificate cannot deliver Paxos
//!   messages to a peer port: its streams are refused and counted. A
//!   member's certificate carries only that member's messages: messages it
//!   sends in another member's name are dropped and counted. The cell keeps
//!   serving writes throughout.
//! - Another identity cannot use, keep alive or close a session, nor
//!   release its lock; only an administrator changes the members.
//! - Each of a node's ACL names (read, write, change-ACL) allows and denies
//!   as stated, for identities, groups (`--group`) and the cell-admin
//!   group, with inheritance at create and a conditional `SetAcl`; the
//!   `gaios acl` and `gaios whoami` commands show and change the same.
//! - Certificates rotate under a write load without a failed write.

use std::time::Duration;

use gaios_client::{Client, OpenOptions, Options, Tls};
use gaios_proto::replica::v1 as peer;
use gaios_proto::replica::v1::replica_client::ReplicaClient;
use gaios_tests::*;

fn options(tls: Option<Tls>) -> Options {
    Options { call_deadline: Duration::from_secs(20), client_name: "security test".into(), tls, ..Options::default() }
}

fn addresses(cell: &Cell) -> Vec<String> {
    cell.members.iter().map(|m| m.client.to_string()).collect()
}

/// Starts a TLS cell (bob in group `ops`) and waits for its master;
/// returns the cell, a runtime and the master's id.
fn tls_cell() -> (Cell, tokio::runtime::Runtime, u64) {
    let cell = Cell::start_tls(&["--group", "ops=bob"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let (master, _) = runtime.block_on(wait_for_master(&cell, &all, Duration::from_secs(20))).unwrap_or_else(|| panic!("no master over TLS\n{}", cell.logs()));
    (cell, runtime, master)
}

/// An endpoint at `address` over TLS with the certificate `stem`
/// (`client-alice`, `replica-3`) of the cell's TLS folder, expecting the
/// server's certificate to name `server_name` (the address if `None`).
fn tls_endpoint(cell: &Cell, address: std::net::SocketAddr, stem: &str, server_name: Option<String>) -> tonic::transport::Endpoint {
    let dir = cell.tls_dir();
    let read = |name: String| std::fs::read(dir.join(name)).expect("a TLS file");
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem".into())))
        .identity(tonic::transport::Identity::from_pem(read(format!("{stem}.pem")), read(format!("{stem}.key"))));
    if let Some(name) = server_name {
        config = config.domain_name(name);
    }
    tonic::transport::Endpoint::from_shared(format!("https://{address}")).expect("endpoint").tls_config(config).expect("TLS config")
}

/// Opens an `Exchange` stream to the replica at `index`'s peer port with
/// the certificate `stem` (`client-alice`, `replica-3`) of the cell's TLS
/// folder (expecting the replica's certificate to name it), sends one
/// heartbeat claiming to come from `from`, and returns how the stream was
/// answered.
async fn exchange_as(cell: &Cell, index: usize, stem: &str, from: u64, incarnation: u64) -> Result<(), tonic::Status> {
    let to = cell.members[index].id;
    let endpoint = tls_endpoint(cell, cell.members[index].peer, stem, Some(format!("replica-{to}.{CELL_ID}")));
    let channel = endpoint.connect().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut client = ReplicaClient::new(channel);
    let heartbeat = peer::PaxosMessage {
        from,
        to,
        cell_id: CELL_ID.into(),
        incarnation,
        body: Some(peer::paxos_message::Body::Heartbeat(peer::Heartbeat {
            ballot: Some(peer::Ballot { round: u64::MAX / 2, replica: from }),
            ..Default::default()
        })),
    };
    let stream = tokio_stream::iter(vec![peer::PaxosBatch { messages: vec![heartbeat] }]);
    let outcome = tokio::time::timeout(Duration::from_secs(3), client.exchange(stream)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    match outcome {
        Ok(Ok(_)) | Err(_) => Ok(()),
        Ok(Err(status)) => Err(status),
    }
}

#[test]
fn only_the_cells_certificates_get_in_and_peers_speak_only_for_themselves() {
    let (cell, runtime, master) = tls_cell();
    let all: Vec<usize> = (0..REPLICAS as usize).collect();

    // The cell's own client certificate works.
    let admin = runtime.block_on(Client::connect(&addresses(&cell), options(cell.client_tls("admin")))).expect("a session over TLS");
    runtime.block_on(async {
        let handle = admin.open("/secure", OpenOptions::new().create()).await.expect("open");
        handle.set_contents(b"v1".to_vec(), None).await.expect("write");
    });

    // No certificate, plaintext, or a certificate from another CA: refused.
    let plaintext = Options { call_deadline: Duration::from_secs(3), ..options(None) };
    assert!(runtime.block_on(Client::connect(&addresses(&cell), plaintext)).is_err(), "a plaintext client got a session");
    let other = tempfile::tempdir().expect("dir");
    let output = std::process::Command::new(binary("gaios-server"))
        .args(["certs", "--cell-id", CELL_ID, "--client", "mallory", "--dir"])
        .arg(other.path())
        .output()
        .expect("gaios-server certs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Mallory trusts the cell's CA but presents a certificate of her own CA.
    let mallory = Tls::from_files(&cell.tls_dir().join("ca.pem"), &other.path().join("client-mallory.pem"), &other.path().join("client-mallory.key"))
        .expect("mallory's files");
    let foreign = Options { call_deadline: Duration::from_secs(3), ..options(Some(mallory)) };
    assert!(runtime.block_on(Client::connect(&addresses(&cell), foreign)).is_err(), "a certificate from another CA got a session");
    let failed: u64 = runtime.block_on(statuses(&cell, &all)).iter().map(|s| s.tls_handshakes_failed).sum();
    assert!(failed >= 2, "the refused handshakes were not counted ({failed})");

    // A valid client certificate on a peer port: its stream is refused.
    let target = (0..REPLICAS as usize).find(|&i| cell.members[i].id != master).expect("a follower");
    let master_status = runtime.block_on(statuses(&cell, &[cell.index_of(master)]));
    let master_incarnation = master_status.first().map(|s| s.incarnation).expect("the master's status");
    let refused = runtime.block_on(exchange_as(&cell, target, "client-alice", master, master_incarnation));
    let refused = refused.expect_err("a client certificate opened a peer stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A member's certificate speaking for another member: dropped.
    let impostor_index = (0..REPLICAS as usize).find(|&i| i != target && cell.members[i].id != master).expect("a third replica");
    let impostor = cell.members[impostor_index].id;
    let dropped_before = runtime.block_on(statuses(&cell, &[target])).first().map(|s| s.peer_identity_dropped).expect("status");
    runtime
        .block_on(exchange_as(&cell, target, &format!("replica-{impostor}"), master, master_incarnation))
        .expect("a member's certificate opens a peer stream");
    let after = runtime.block_on(statuses(&cell, &[target]));
    let after = after.first().expect("the target's status");
    assert!(after.peer_identity_dropped > dropped_before, "a message in another member's name was not dropped: {after:?}");
    assert_eq!(after.master_id, master, "the forged heartbeat moved the target to another master");

    // The cell is unharmed.
    runtime.block_on(async {
        let handle = admin.open("/secure", OpenOptions::new()).await.expect("open");
        handle.set_contents(b"v2".to_vec(), None).await.expect("write after the attacks");
        assert_eq!(handle.contents().await.expect("read").0.as_ref(), b"v2");
    });
    runtime.block_on(admin.close()).expect("close");
}

/// A raw client of the replica at `address` with the certificate `stem`.
async fn raw_client(cell: &Cell, address: std::net::SocketAddr, stem: &str) -> gaios_proto::cell::v1::cell_client::CellClient<tonic::transport::Channel> {
    let channel = tls_endpoint(cell, address, stem, None).connect().await.expect("connect over TLS");
    gaios_proto::cell::v1::cell_client::CellClient::new(channel)
}

/// The `ErrorInfo` reason of a refusal.
fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

#[test]
fn another_identity_cannot_use_keep_alive_or_close_a_session_nor_release_its_lock() {
    use gaios_proto::cell::v1 as api;
    let (cell, runtime, master) = tls_cell();
    let master_address = cell.members[cell.index_of(master)].client;

    let alice = runtime.block_on(Client::connect(&addresses(&cell), options(cell.client_tls("alice")))).expect("alice's session");
    let (handle, lock) = runtime.block_on(async {
        let handle = alice.open("/jobs", OpenOptions::new().create()).await.expect("open");
        handle.set_contents(b"alice's".to_vec(), None).await.expect("write");
        let lock = handle.try_acquire(gaios_client::LockMode::Exclusive).await.expect("alice locks");
        (handle, lock)
    });
    let session_id = alice.session_id();
    let secret = bytes::Bytes::copy_from_slice(alice.session_secret());
    let header = |number: u64| Some(api::RequestHeader { session_id, request_number: 1_000 + number, session_secret: secret.clone() });
    let handle_ref = Some(api::HandleRef { session_id, handle: handle.id(), session_secret: secret.clone() });

    // Bob holds alice's session id and secret (leaked, say), and a valid
    // certificate of his own: every use of the session is refused.
    runtime.block_on(async {
        let mut bob = raw_client(&cell, master_address, "client-bob").await;
        let refusals = [
            ("Release", bob.release(api::ReleaseRequest { header: header(1), handle: handle.id() }).await.map(|_| ())),
            ("GetContentsAndStat", bob.get_contents_and_stat(api::GetContentsAndStatRequest { handle: handle_ref.clone() }).await.map(|_| ())),
            (
                "SetContents",
                bob.set_contents(api::SetContentsRequest { header: header(2), handle: handle.id(), contents: b"bob's".to_vec().into(), ..Default::default() })
                    .await
                    .map(|_| ()),
            ),
            ("CloseSession", bob.close_session(api::CloseSessionRequest { session_id, session_secret: secret.clone() }).await.map(|_| ())),
        ];
        for (call, outcome) in refusals {
            let refused = outcome.expect_err(&format!("bob's {call} on alice's session was served"));
            assert_eq!((refused.code(), reason_of(&refused).as_str()), (tonic::Code::PermissionDenied, "SESSION_OWNER_MISMATCH"), "{call}: {refused:?}");
        }
        let keep_alive = tokio_stream::iter(vec![api::KeepAliveRequest { session_id, acknowledged_event: 0, session_secret: secret.clone() }]);
        let answer = match bob.keep_alive(keep_alive).await {
            Ok(response) => response.into_inner().message().await.map(|_| ()),
            Err(status) => Err(status),
        };
        let refused = answer.expect_err("bob kept alice's session alive");
        assert_eq!((refused.code(), reason_of(&refused).as_str()), (tonic::Code::PermissionDenied, "SESSION_OWNER_MISMATCH"), "KeepAlive: {refused:?}");
    });

    // Only an administrator (`--admin admin`) may change the members.
    runtime.block_on(async {
        use api::change_membership_request::Change;
        let ask = || api::ChangeMembershipRequest { change: Some(Change::Promote(master)), force: false };
        let mut bob = raw_client(&cell, master_address, "client-bob").await;
        let refused = bob.change_membership(ask()).await.expect_err("bob changed the members");
        assert_eq!((refused.code(), reason_of(&refused).as_str()), (tonic::Code::PermissionDenied, "NOT_AN_ADMIN"), "{refused:?}");
        let mut admin = raw_client(&cell, master_address, "client-admin").await;
        // Past the gate, to the configuration's own check.
        let judged = admin.change_membership(ask()).await.expect_err("promoting a voter");
        assert_eq!(reason_of(&judged), "ALREADY_A_MEMBER", "{judged:?}");
    });

    // Alice's session, lock and file are as she left them.
    runtime.block_on(async {
        assert!(!lock.is_lost(), "alice lost her lock");
        assert_eq!(handle.contents().await.expect("read").0.as_ref(), b"alice's");
        lock.release().await.expect("alice releases her own lock");
    });
    runtime.block_on(alice.close()).expect("alice closes her own session");
}

/// The leaf certificate (DER) the TLS server at `address` presents now, to
/// a client with the `admin` certificate of the cell's CA.
async fn served_certificate(cell: &Cell, address: std::net::SocketAddr) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = cell.tls_dir();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).ok()? {
        roots.add(ca.ok()?).ok()?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("client-admin.pem")).ok()?.collect::<Result<_, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("client-admin.key")).ok()?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
    let name = ServerName::IpAddress(address.ip().into());
    let stream = tokio::time::timeout(Duration::from_secs(3), connector.connect(name, tcp)).await.ok()?.ok()?;
    stream.get_ref().1.peer_certificates()?.first().map(|der| der.as_ref().to_vec())
}

/// The certificate of `stem` in the cell's TLS folder, DER.
fn certificate_file(cell: &Cell, stem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let path = cell.tls_dir().join(format!("{stem}.pem"));
    CertificateDer::from_pem_file(&path).expect("a certificate").as_ref().to_vec()
}

#[test]
fn certificates_rotate_under_a_write_load_without_a_failed_write() {
    let (mut cell, runtime, master) = tls_cell();
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let old: Vec<Vec<u8>> = cell.members.iter().map(|m| certificate_file(&cell, &format!("replica-{}", m.id))).collect();
    for (index, member) in cell.members.iter().enumerate() {
        for address in [member.client, member.peer] {
            assert_eq!(runtime.block_on(served_certificate(&cell, address)).as_ref(), Some(&old[index]), "replica {} serves another certificate", member.id);
        }
    }

    // A steady write load, bounded in time, while every replica's
    // certificate and key are replaced (new keys, same CA).
    let client = std::sync::Arc::new(
        runtime.block_on(Client::connect(&addresses(&cell), options(cell.client_tls("admin")))).expect("a session over TLS"),
    );
    let load = {
        let client = client.clone();
        runtime.spawn(async move {
            let handle = client.open("/rotation", OpenOptions::new().create()).await.expect("open");
            let (mut acknowledged, mut failed) = (0u64, Vec::new());
            let until = std::time::Instant::now() + Duration::from_secs(12);
            let mut n = 0u64;
            while std::time::Instant::now() < until {
                n += 1;
                match handle.set_contents(format!("v{n}").into_bytes(), None).await {
                    Ok(_) => acknowledged += 1,
                    Err(error) => failed.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acknowledged, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut args = vec!["--cell-id".to_string(), CELL_ID.into(), "--host".into(), "127.0.0.1".into()];
    for member in &cell.members {
        args.extend(["--replica".to_string(), member.id.to_string()]);
    }
    cell.make_certificates(&args);
    // Two replicas are told at once; the others notice the files changed.
    cell.signal(0, libc::SIGHUP);
    cell.signal(1, libc::SIGHUP);
    let new: Vec<Vec<u8>> = cell.members.iter().map(|m| certificate_file(&cell, &format!("replica-{}", m.id))).collect();
    assert!(new.iter().zip(&old).all(|(new, old)| new != old), "gaios-server certs did not make new certificates");
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let serving: Vec<bool> = runtime.block_on(async {
            let mut serving = Vec::new();
            for (index, member) in cell.members.iter().enumerate() {
                for address in [member.client, member.peer] {
                    serving.push(served_certificate(&cell, address).await.as_ref() == Some(&new[index]));
                }
            }
            serving
        });
        if serving.iter().all(|&s| s) {
            break;
        }
        assert!(std::time::Instant::now() < until, "not every port serves its new certificate: {serving:?}\n{}", cell.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (acknowledged, failed) = runtime.block_on(load).expect("the load task");
    assert!(failed.is_empty(), "writes failed during the rotation: {failed:?}");
    assert!(acknowledged > 50, "only {acknowledged} writes were acknowledged");

    // Connections made after the rotation use the new certificates both
    // ways: a follower restarted now catches up over new peer links.
    let follower = (0..REPLICAS as usize).find(|&i| cell.members[i].id != master).expect("a follower");
    cell.kill(follower);
    runtime.block_on(async {
        let handle = client.open("/rotation", OpenOptions::new()).await.expect("open");
        handle.set_contents(b"after the rotation".to_vec(), None).await.expect("a write after the rotation");
    });
    cell.restart(follower);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = runtime.block_on(statuses(&cell, &all));
        let master_applied = now.iter().find(|s| s.role() == gaios_proto::cell::v1::Role::Master).map(|s| s.applied);
        let follower_applied = now.iter().find(|s| s.id == cell.members[follower].id).map(|s| s.applied);
        if let (Some(m), Some(f)) = (master_applied, follower_applied)
            && f >= m
        {
            break;
        }
        assert!(std::time::Instant::now() < until, "the restarted follower did not catch up over TLS: {now:?}\n{}", cell.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = cell.logs();
    assert!(log.contains("reloaded the TLS certificates"), "no replica logged a reload");
}

fn acl(read: &[&str], write: &[&str], change_acl: &[&str]) -> gaios_client::Acl {
    let list = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect();
    gaios_client::Acl { read: list(read), write: list(write), change_acl: list(change_acl) }
}

fn acl_denied<T: std::fmt::Debug>(result: Result<T, gaios_client::Error>, what: &str) {
    match result {
        Err(gaios_client::Error::AclDenied(_)) => {}
        other => panic!("{what}: not denied by the ACL: {other:?}"),
    }
}

/// Runs the `gaios` CLI against the cell with the certificate of `client`;
/// returns its exit code and stdout.
fn gaios_as(cell: &Cell, client: &str, args: &[&str]) -> (i32, String) {
    let dir = cell.tls_dir();
    let file = |name: String| dir.join(name).display().to_string();
    let output = std::process::Command::new(binary("gaios"))
        .args(["--cell", &addresses(cell).join(","), "--deadline-ms", "20000", "--json"])
        .args(["--cacert", &file("ca.pem".into()), "--cert", &file(format!("client-{client}.pem")), "--key", &file(format!("client-{client}.key"))])
        .args(args)
        .env_remove("GAIOS_CELL")
        .output()
        .expect("gaios runs");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn node_acls_allow_and_deny_by_identity_group_and_admin_with_inheritance_and_generations() {
    let (cell, runtime, _master) = tls_cell();
    let connect = |name: &str| runtime.block_on(Client::connect(&addresses(&cell), options(cell.client_tls(name)))).expect("a session");
    let (admin, alice, bob) = (connect("admin"), connect("alice"), connect("bob"));
    let quiet = || OpenOptions::new().event_mask(0);
    runtime.block_on(async {
        // The admin narrows the root: anyone reads, alice and group ops
        // write, nobody but administrators changes the ACL.
        let root = admin.open("/", quiet()).await.expect("the root");
        let (open_acl, stat) = root.acl().await.expect("the root's ACL");
        assert_eq!(open_acl, acl(&["*"], &["*"], &["*"]), "a new cell's root is open to anyone");
        root.set_acl(acl(&["*"], &["alice", "group:ops"], &[]), Some(stat.acl_generation)).await.expect("the admin narrows the root");

        // Inheritance at create: alice's directory takes the root's ACL;
        // her file takes the ACL she gives it.
        let team = alice.open("/team", OpenOptions::new().create().directory().event_mask(0)).await.expect("alice creates /team");
        let (inherited, stat) = team.acl().await.expect("read /team's ACL");
        assert_eq!((inherited, stat.acl_generation), (acl(&["*"], &["alice", "group:ops"], &[]), 1), "a new node takes its parent's ACL");
        let secret_acl = acl(&["alice"], &["alice"], &["alice"]);
        let secret = alice.open("/team/secret", OpenOptions::new().create().acl(secret_acl.clone()).contents(b"s1".to_vec())).await.expect("alice creates /team/secret");
        assert_eq!(secret.acl().await.expect("ACL").0, secret_acl);

        // Without any permission bob cannot even open it; with write on
        // /team (group ops) he creates and deletes his own file there.
        acl_denied(bob.open("/team/secret", quiet()).await.map(|_| ()), "bob opens /team/secret");
        let mine = bob.open("/team/bob", OpenOptions::new().create().event_mask(0)).await.expect("bob creates in /team through group ops");
        mine.delete().await.expect("bob deletes in /team through group ops");

        // Read for group ops, conditional on the ACL generation: a stale
        // generation is refused and changes nothing.
        let (_, stat) = secret.acl().await.expect("ACL");
        let read_for_ops = acl(&["alice", "group:ops"], &["alice"], &["alice"]);
        let moved = secret.set_acl(read_for_ops.clone(), Some(stat.acl_generation)).await.expect("alice lets ops read");
        assert_eq!(moved.acl_generation, stat.acl_generation + 1, "the ACL generation moves on by one");
        match secret.set_acl(secret_acl.clone(), Some(stat.acl_generation)).await {
            Err(gaios_client::Error::FailedPrecondition { reason: gaios_client::ErrorReason::AclGenerationMismatch, .. }) => {}
            other => panic!("a SetAcl with a stale ACL generation: {other:?}"),
        }
        assert_eq!(secret.acl().await.expect("ACL").0, read_for_ops, "the stale SetAcl changed the ACL");

        // Read allows reads; write and change-ACL stay alice's; the lock
        // needs write.
        let bobs = bob.open("/team/secret", OpenOptions::new()).await.expect("bob opens with events: he may read");
        assert_eq!(bobs.contents().await.expect("bob reads").0.as_ref(), b"s1");
        bobs.stat().await.expect("bob stats");
        acl_denied(bobs.set_contents(b"bob".to_vec(), None).await, "bob writes /team/secret");
        acl_denied(bobs.try_acquire(gaios_client::LockMode::Exclusive).await.map(|_| ()), "bob locks /team/secret");
        acl_denied(bobs.set_acl(acl(&["*"], &["*"], &["*"]), None).await, "bob changes /team/secret's ACL");
        let lock = secret.try_acquire(gaios_client::LockMode::Exclusive).await.expect("alice, with write, locks");
        lock.release().await.expect("release");

        // ReadDir and GetStat need read.
        let bobs_team = bob.open("/team", quiet()).await.expect("bob opens /team");
        assert_eq!(bobs_team.read_dir().await.expect("anyone lists /team"), vec!["secret".to_string()]);
        // /team inherited an empty change-ACL list: alice cannot change it,
        // an administrator can.
        acl_denied(team.set_acl(acl(&["alice"], &["alice"], &["alice"]), None).await, "alice changes /team's inherited ACL");
        let admins_team = admin.open("/team", quiet()).await.expect("the admin opens /team");
        let (_, stat) = admins_team.acl().await.expect("ACL");
        admins_team.set_acl(acl(&["alice"], &["alice", "group:ops"], &["alice"]), Some(stat.acl_generation)).await.expect("the admin narrows reading /team");
        acl_denied(bobs_team.read_dir().await, "bob lists /team");
        acl_denied(bobs_team.stat().await, "bob stats /team");

        // The cell-admin group passes every ACL.
        let admins = admin.open("/team/secret", OpenOptions::new()).await.expect("the admin opens anything");
        admins.contents().await.expect("the admin reads");
        admins.set_contents(b"admin".to_vec(), None).await.expect("the admin writes");
        admins.set_acl(secret_acl.clone(), None).await.expect("the admin changes any ACL");
        acl_denied(bobs.contents().await, "bob reads after the admin took his read away");
    });

    // The CLI: who am I, and the same ACLs through `gaios acl`.
    let (code, out) = gaios_as(&cell, "bob", &["whoami"]);
    assert_eq!(code, 0, "{out}");
    let who: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!((who["identity"].as_str(), who["groups"].clone()), (Some("bob"), serde_json::json!(["ops"])), "{out}");
    let (code, out) = gaios_as(&cell, "admin", &["whoami"]);
    assert_eq!((code, serde_json::from_str::<serde_json::Value>(&out).expect("JSON")["groups"].clone()), (0, serde_json::json!(["admin"])));
    let (code, out) = gaios_as(&cell, "alice", &["acl", "get", "/team/secret"]);
    assert_eq!(code, 0, "{out}");
    let got: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(got["read"], serde_json::json!(["alice"]), "{out}");
    let (code, out) = gaios_as(&cell, "bob", &["acl", "set", "/team/secret", "--read", "bob"]);
    assert_eq!(code, 10, "bob's `acl set` exits with permission denied: {out}");
    let (code, out) = gaios_as(&cell, "alice", &["acl", "set", "/team/secret", "--read", "alice,group:ops"]);
    assert_eq!(code, 0, "{out}");
    let set: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!((set["read"].clone(), set["write"].clone()), (serde_json::json!(["alice", "group:ops"]), serde_json::json!(["alice"])), "lists not given stay: {out}");
    let (code, out) = gaios_as(&cell, "alice", &["acl", "set", "/team/secret", "--write", "", "--if-generation", "1"]);
    assert_eq!(code, 4, "a stale --if-generation exits 4: {out}");
    for client in [admin, alice, bob] {
        runtime.block_on(client.close()).expect("close");
    }
}
