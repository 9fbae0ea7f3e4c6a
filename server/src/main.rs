//! `gaios-server`: one replica of a Gaios cell.
//!
//! `gaios-server init ...` creates the data directory of a member of a new
//! cell (cell id, replica id, a random incarnation, the members, and the
//! acceptor's first hard state) and exits. `gaios-server [run] ...` opens a
//! directory `init` created (a missing, empty or uninitialised one is
//! refused: a plain start never creates anything), checks the flags against
//! what `init` recorded, rebuilds the Paxos core from it, serves the peer
//! protocol (`Replica`) and the client protocol (`Cell`, with gRPC health and
//! reflection) on their own addresses, Prometheus metrics on a third if
//! asked, and runs the driver loop until SIGTERM or ctrl-c.

use std::num::NonZeroU64;
use std::sync::Arc;

use anyhow::Context as _;
use gaios_server::service::CellService;
use gaios_server::ops::config::{Cli, Command, InitArgs, ReplicaConfig};
use gaios_server::replica::driver::{CLOSED_CONNECTIONS_MAX, Driver, DriverOptions};
use gaios_server::ops::metrics::{Metrics, serve_metrics};
use gaios_server::ops::health;
use gaios_server::ops::tls::{self, Tls};
use gaios_server::replica::storage::{Identity, InitRecord, Storage};
use gaios_server::replica::transport::{Envelope, Outbound, PeerDirectory, PeerEntry, PeerService, TransportStats};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

/// The driver's inbox: messages from peers waiting to be stepped. Beyond it
/// the transport drops messages (Paxos tolerates loss).
const INBOX_MAX: usize = 8192;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match cli.command {
        Command::Init(args) => return init(args),
        Command::Certs(args) => {
            for file in gaios_server::ops::certs::make(&args)? {
                println!("wrote {}", file.display());
            }
            return Ok(());
        }
        Command::Run(args) => *args,
    };
    let config = ReplicaConfig::from_args(args).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(config))
}

/// How many times `init` draws an incarnation before it gives up on a
/// random source that keeps returning 0.
const INCARNATION_DRAWS_MAX: usize = 4;

/// `gaios-server init`: creates the data directory and says what it wrote.
fn init(args: InitArgs) -> anyhow::Result<()> {
    let joining = args.join;
    let member = args.member.check().context("invalid configuration")?;
    if joining && member.members.len() < 2 {
        anyhow::bail!("--join needs at least one --peer besides this replica: a member of the running cell to reach");
    }
    let incarnation = (0..INCARNATION_DRAWS_MAX)
        .find_map(|_| getrandom::u64().map(NonZeroU64::new).transpose())
        .context("the operating system's random source returned only zeros")?
        .context("cannot draw a random incarnation from the operating system")?;
    let record = InitRecord {
        identity: Identity { cell_id: member.cell_id.clone(), replica_id: member.id },
        incarnation,
        members: member.members,
        joining,
    };
    Storage::init(&member.data_dir, &record)
        .with_context(|| format!("cannot initialise the data directory {}", member.data_dir.display()))?;
    let ids: Vec<String> = record.members.iter().map(|peer| peer.id.to_string()).collect();
    let what = if joining { "joining replica" } else { "replica" };
    let whom = if joining { "contacts" } else { "members" };
    println!(
        "initialised {} for {what} {} of cell {:?} (incarnation {:016x}, {whom} {})",
        member.data_dir.display(),
        member.id,
        member.cell_id,
        incarnation,
        ids.join(",")
    );
    Ok(())
}

async fn run(mut config: ReplicaConfig) -> anyhow::Result<()> {
    let identity = Identity { cell_id: config.cell_id.clone(), replica_id: config.id };
    let storage = Storage::open_member(&config.data_dir, &identity, &config.members)
        .with_context(|| format!("refusing to start replica {} on {}", config.id, config.data_dir.display()))?;
    let record = storage.init_record().context("cannot read the data directory's identity")?;
    let incarnation = record.incarnation;
    config.joining = record.joining;

    // Bind first, so that a taken port fails the start instead of a task.
    let peer_listener = TcpListener::bind(config.listen_peer)
        .await
        .with_context(|| format!("cannot listen for peers on {}", config.listen_peer))?;
    let client_listener = TcpListener::bind(config.listen_client)
        .await
        .with_context(|| format!("cannot listen for clients on {}", config.listen_client))?;
    let metrics_listener = match config.listen_metrics {
        Some(address) => {
            Some(TcpListener::bind(address).await.with_context(|| format!("cannot listen for metrics on {address}"))?)
        }
        None => None,
    };

    let tls = match &config.tls {
        Some(files) => Some(
            Tls::load(files.clone(), Some((config.id, config.cell_id.clone()))).context("cannot load the TLS certificates")?,
        ),
        None => {
            tracing::warn!("--insecure: serving plaintext on loopback, with no authentication of peers or clients");
            None
        }
    };
    let stats = Arc::new(TransportStats::default());
    // The driver counts into it; the metrics endpoint renders it.
    let metrics = Arc::new(Metrics::new(config.id, stats.clone()));
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_MAX);
    // The `--peer` flags until the driver knows the configuration.
    let peers = PeerDirectory::new(
        config
            .members
            .iter()
            .filter(|peer| peer.id != config.id)
            .map(|peer| (peer.id, PeerEntry { address: peer.peer_address.to_string(), incarnation: 0 }))
            .collect(),
    );
    let envelope = Envelope { cell_id: config.cell_id.clone(), incarnation };
    let outbound = Outbound::start(config.id, envelope, &peers, stats.clone(), config.snapshot_send_bytes_per_s, tls.clone());
    let paxos_config = config.paxos_config();
    let options = DriverOptions {
        snapshot_every_slots: config.snapshot_every_slots,
        session_lease: config.session_lease,
        metrics: metrics.clone(),
        peers: peers.clone(),
        flag_members: config.members.clone(),
    };
    let snapshot_store = storage.snapshot_store();
    let (closed_tx, closed_rx) = mpsc::channel(CLOSED_CONNECTIONS_MAX);
    let (driver, status, shared) = Driver::new(paxos_config, storage, inbox_rx, outbound, config.tick, options)
        .context("cannot start the replica")?;
    let driver = driver.with_closed_connections(closed_rx);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let peer_service = PeerService::new(config.id, &config.cell_id, peers, inbox_tx, stats.clone())
        .with_status(status.clone())
        .with_snapshot_store(snapshot_store)
        .with_peer_certificates_required(tls.is_some())
        .with_closed_connections(closed_tx);
    let cell_service =
        CellService::new(config.cell_id.clone(), incarnation, config.members.clone(), status, stats.clone(), shared)
            .with_client_identities(tls.is_some())
            .with_groups(config.groups.clone());

    let builder = || tonic::transport::Server::builder().tcp_nodelay(true);
    let with_stats = tls.as_ref().map(|tls| (tls.clone(), stats.clone()));
    let peer_server = serve(builder().add_service(peer_service.into_server()), peer_listener, with_stats.clone(), shutdown_rx.clone());
    let (client_router, health) =
        health::client_router(builder()).await.context("cannot build the health and reflection services")?;
    let client_server =
        serve(client_router.add_service(cell_service.into_server()), client_listener, with_stats, shutdown_rx.clone());
    if let Some(tls) = &tls {
        tokio::spawn(tls::watch_files(tls.clone(), shutdown_rx.clone()));
    }
    let metrics_server =
        metrics_listener.map(|listener| tokio::spawn(serve_metrics(listener, metrics.clone(), shutdown_rx.clone())));
    tracing::info!(
        id = config.id,
        cell = %config.cell_id,
        incarnation = %format_args!("{incarnation:016x}"),
        peer = %config.listen_peer,
        client = %config.listen_client,
        metrics = ?config.listen_metrics,
        data_dir = %config.data_dir.display(),
        tls = tls.is_some(),
        "replica started"
    );

    let mut driver_task = tokio::spawn(driver.run(shutdown_rx));
    health.serving().await;
    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            tracing::info!("shutting down");
            health.not_serving().await;
            let _ = shutdown_tx.send(true);
            (&mut driver_task).await
        }
        finished = &mut driver_task => {
            health.not_serving().await;
            let _ = shutdown_tx.send(true);
            finished
        }
    };
    let driver_result = outcome.context("the driver task panicked")?;
    // The servers stop accepting at once; give open streams a moment.
    let stop_servers = async {
        let _ = peer_server.await;
        let _ = client_server.await;
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(2), stop_servers).await.is_err() {
        tracing::warn!("servers did not stop within 2 s; exiting anyway");
    }
    driver_result.context("the driver stopped")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c (SIGINT).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot wait for ctrl-c")?,
    }
    Ok(())
}

/// Serves `router` on `listener` (over TLS if `tls` is given) until
/// `shutdown` turns true.
fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<(Arc<Tls>, Arc<TransportStats>)>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Some((tls, stats)) = tls {
        // The TLS acceptor sets TCP_NODELAY itself.
        return tokio::spawn(router.serve_with_incoming_shutdown(tls::incoming(listener, tls, stats), stop));
    }
    // With its own listener tonic cannot set socket options, so every
    // accepted connection gets TCP_NODELAY here: without it, Nagle's
    // algorithm and the peer's delayed ACK hold back the last frames of an
    // answer for up to 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
}
