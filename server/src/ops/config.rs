//! A replica's configuration, from command-line flags.
//!
//! A cell is five replicas that each know all five: every replica is started
//! with the same `--peer ID=PEER_ADDR=CLIENT_ADDR` list (itself included) and
//! its own `--id`. Addresses are socket addresses (`127.0.0.1:7101`), so a
//! replica binds exactly what it is given and nothing else.
//!
//! [`Args`] is what clap parses; [`ReplicaConfig::from_args`] checks it and
//! fills in the defaults, so that a mistake (a replica not among the members,
//! two members with one id) stops the replica before it opens its data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use gaios_paxos::ReplicaId;
use gaios_state::limits::GROUPS_PER_SESSION_MAX;

/// The command line of `gaios-server`: `init` creates the data directory of
/// a member of a new cell; `run` runs the replica on a directory `init`
/// created. [`Cli::parse_args`] also takes `run`'s flags without the word
/// `run`, the form scripts used before `init` existed.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gaios-server",
    about = "One replica of a Gaios cell.",
    long_about = "One replica of a Gaios cell. `gaios-server init ...` creates the data directory of a member of a NEW cell; \
`gaios-server [run] ...` runs the replica on it with the same --id, --data-dir, --cell-id and --peer flags. \
Never run init again for a member of a running cell (after a lost disk, say): an acceptor that forgot its promises breaks Paxos.",
    version
)]
pub struct Cli {
    /// `init` or `run`.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `argv` (the program name first); flags without a subcommand
    /// are `run`'s.
    pub fn parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        use clap::Parser as _;
        let mut argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let bare_flags = argv
            .get(1)
            .and_then(|first| first.to_str())
            .is_some_and(|first| first.starts_with("--") && first != "--help" && first != "--version");
        if bare_flags {
            argv.insert(1, "run".into());
        }
        Cli::try_parse_from(argv)
    }
}

/// The subcommands of `gaios-server`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Creates the data directory of a member of a NEW cell, recording the
    /// cell id, the replica id, a fresh random incarnation and the members;
    /// refuses a directory that holds anything. Never use it to bring back a
    /// member of a running cell whose disk was lost: it would vote as an
    /// acceptor that forgot its promises. With `--join`, creates the
    /// directory of a replica that joins a running cell under a new id.
    Init(InitArgs),
    /// Runs the replica on the data directory `init` created (the word
    /// `run` may be left out).
    Run(Box<Args>),
    /// Makes a cell's CA (once) and certificates for its replicas and
    /// clients.
    Certs(crate::ops::certs::CertsArgs),
}

/// The flags that name a replica, its data directory and its cell's members:
/// `init` records them, and a start must give the same ones.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// This replica's id; must be one of the `--peer` ids.
    #[arg(long)]
    pub id: ReplicaId,
    /// The directory holding this replica's RocksDB. `init` creates it (it
    /// must be missing or empty); a start requires one `init` created.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cell's name; recorded in the data directory, which refuses to be
    /// used by another cell, and carried by every message to the peers.
    #[arg(long, default_value = "local")]
    pub cell_id: String,
    /// A member of the cell as `ID=PEER_ADDR=CLIENT_ADDR`; repeat for every
    /// member, this replica included.
    #[arg(long = "peer", required = true)]
    pub peers: Vec<PeerSpec>,
}

/// The flags of `gaios-server init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Who the replica is and who its peers are.
    #[command(flatten)]
    pub member: MemberArgs,
    /// The replica joins a RUNNING cell: `--id` must be a new id (higher
    /// than any the cell ever used, see `gaios member list`), and the
    /// `--peer` flags name the members it may first reach, itself included.
    /// It starts as a learner, catches up, and takes part once an operator
    /// adds it (`gaios member add`, or `gaios member replace`).
    #[arg(long)]
    pub join: bool,
}

/// The flags of `gaios-server run`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gaios-server", about = "One replica of a Gaios cell.", version)]
pub struct Args {
    /// Who the replica is and who its peers are.
    #[command(flatten)]
    pub member: MemberArgs,
    /// Where to listen for other replicas; defaults to this replica's
    /// `PEER_ADDR`.
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// Where to listen for clients; defaults to this replica's `CLIENT_ADDR`.
    #[arg(long)]
    pub listen_client: Option<SocketAddr>,
    /// The Paxos core's tick, in milliseconds: the granularity of the
    /// timeouts below, which the core counts in ticks.
    #[arg(long, default_value_t = TICK_MS_DEFAULT)]
    pub tick_ms: u64,
    /// How often the master sends heartbeats (which also renew its lease).
    #[arg(long, default_value_t = HEARTBEAT_MS_DEFAULT)]
    pub heartbeat_ms: u64,
    /// The master lease: how long an acceptor that acknowledged a heartbeat
    /// promises no other ballot. A dead master's successor waits this out.
    /// At least two heartbeats. Every replica of a cell must be given the
    /// same timeouts: a master counting a longer lease than its acceptors
    /// grant could serve reads after its successor was elected.
    #[arg(long, default_value_t = MASTER_LEASE_MS_DEFAULT)]
    pub master_lease_ms: u64,
    /// A follower that hears no master for a random time between this and
    /// 1.5 times this runs an election. At least the master lease.
    #[arg(long, default_value_t = ELECTION_TIMEOUT_MS_DEFAULT)]
    pub election_timeout_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics` over plain HTTP);
    /// no metrics endpoint when absent.
    #[arg(long)]
    pub listen_metrics: Option<SocketAddr>,
    /// Take a snapshot of the state machine every this many applied slots,
    /// so that the log can be truncated behind it.
    #[arg(long, default_value_t = SNAPSHOT_EVERY_SLOTS_DEFAULT)]
    pub snapshot_every_slots: u64,
    /// The pace of a snapshot sent to a lagging or new replica, in MiB per
    /// second per receiver (1 to 4096), so that a catch-up leaves the
    /// master's disk, network and CPU to its writes.
    #[arg(long, default_value_t = SNAPSHOT_SEND_MIB_PER_S_DEFAULT)]
    pub snapshot_send_mib_per_s: u64,
    /// How long a client session lives without a keep-alive, in
    /// milliseconds.
    #[arg(long, default_value_t = SESSION_LEASE_MS_DEFAULT)]
    pub session_lease_ms: u64,
    /// The cell's CA certificate (PEM): peers and clients must present a
    /// certificate it signed.
    #[arg(long, env = "GAIOS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This replica's certificate (PEM), naming `replica-<id>.<cell-id>`.
    #[arg(long, env = "GAIOS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This replica's private key (PEM).
    #[arg(long, env = "GAIOS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext, with no authentication at all: for local
    /// development only, and refused unless both listeners are on loopback
    /// addresses.
    #[arg(long)]
    pub insecure: bool,
    /// An identity (client certificate CN) that administers the cell: a
    /// member of the cell-admin group `admin`, which alone may change the
    /// members and passes every node's ACL. Repeat for several; give every
    /// replica the same list. Without TLS everyone may change the members.
    #[arg(long = "admin")]
    pub admins: Vec<String>,
    /// A group for ACLs, `NAME=IDENTITY[,IDENTITY...]`: ACL entries
    /// `group:NAME` name these identities (client certificate CNs).
    /// Repeat for more groups, or for more members of one. A session is
    /// judged with the groups its identity had at the master that created
    /// it; give every replica the same groups. `--group admin=...` adds
    /// cell administrators, as `--admin` does.
    #[arg(long = "group", value_name = "NAME=IDENTITY,...")]
    pub groups: Vec<String>,
}

/// The groups of the `--group` and `--admin` flags: which identities each
/// names. The cell-admin group is [`gaios_state::acl::ADMIN_GROUP`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(BTreeMap<String, BTreeSet<String>>);

impl Groups {
    /// The groups from `--group NAME=ID,...` flags and `--admin` identities,
    /// each name checked as `apply` checks a session's groups.
    pub fn from_flags(groups: &[String], admins: &[String]) -> Result<Groups, ConfigError> {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let admin_members = admins.iter().map(|admin| (gaios_state::acl::ADMIN_GROUP, admin.as_str()));
        let mut named = Vec::new();
        for flag in groups {
            let (name, members) = flag.split_once('=').ok_or_else(|| ConfigError::BadGroup(flag.clone()))?;
            for member in members.split(',') {
                named.push((name, member));
            }
        }
        for (name, member) in admin_members.chain(named) {
            let identity_ok = !member.is_empty() && member.len() <= gaios_state::limits::IDENTITY_BYTES_MAX && !member.chars().any(char::is_control);
            if gaios_state::acl::groups(&[name.to_string()]).is_err() || !identity_ok || name.starts_with(gaios_state::acl::GROUP_PREFIX) {
                return Err(ConfigError::BadGroup(format!("{name}={member}")));
            }
            map.entry(name.to_string()).or_default().insert(member.to_string());
        }
        let groups = Groups(map);
        if let Some(identity) = groups.0.values().flatten().find(|identity| groups.of(identity).len() > GROUPS_PER_SESSION_MAX) {
            return Err(ConfigError::BadGroup(format!("{identity} is in more than {GROUPS_PER_SESSION_MAX} groups")));
        }
        Ok(groups)
    }

    /// The groups `identity` is in, sorted (a session created for it
    /// records them).
    pub fn of(&self, identity: &str) -> Vec<String> {
        self.0.iter().filter(|(_, members)| members.contains(identity)).map(|(name, _)| name.clone()).collect()
    }

    /// Whether `recorded` (a session's groups) are the groups `identity`
    /// is in now, without allocating (calls check it on every request).
    pub fn are_those_of(&self, identity: &str, recorded: &[String]) -> bool {
        self.0.iter().filter(|(_, members)| members.contains(identity)).map(|(name, _)| name.as_str()).eq(recorded.iter().map(String::as_str))
    }

    /// Whether `identity` is a cell administrator.
    pub fn is_admin(&self, identity: &str) -> bool {
        self.0.get(gaios_state::acl::ADMIN_GROUP).is_some_and(|admins| admins.contains(identity))
    }
}

/// The default of `--tick-ms`.
pub const TICK_MS_DEFAULT: u64 = 10;
/// The default of `--heartbeat-ms`.
pub const HEARTBEAT_MS_DEFAULT: u64 = 50;
/// The default of `--master-lease-ms`: five heartbeats, so a few lost or
/// late ones do not cost the master its lease.
pub const MASTER_LEASE_MS_DEFAULT: u64 = 250;
/// The default of `--election-timeout-ms`. A SIGKILLed master is replaced
/// about this long (plus jitter, plus one round trip and one fsync) after
/// its last heartbeat.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 300;

/// The default of `--snapshot-every-slots`.
pub const SNAPSHOT_EVERY_SLOTS_DEFAULT: u64 = 10_000;
/// The default of `--snapshot-send-mib-per-s`: a 256 MiB state goes in
/// 4 s, a small part of a disk's or a 10 Gbit/s link's bandwidth.
pub const SNAPSHOT_SEND_MIB_PER_S_DEFAULT: u64 = 64;
/// The default of `--session-lease-ms`: Chubby's 12 s.
pub const SESSION_LEASE_MS_DEFAULT: u64 = 12_000;
/// The shortest session lease: below a second, a client's keep-alives
/// would race its own lease across one master failover.
pub const SESSION_LEASE_MS_MIN: u64 = 1_000;
/// The longest session lease: ten minutes, beyond which a dead client
/// holds its locks for too long.
pub const SESSION_LEASE_MS_MAX: u64 = 600_000;

/// One member of the cell as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSpec {
    /// The member's replica id.
    pub id: ReplicaId,
    /// Where other replicas reach it.
    pub peer_address: SocketAddr,
    /// Where clients reach it.
    pub client_address: SocketAddr,
}

impl FromStr for PeerSpec {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadPeer(text.to_owned());
        let mut parts = text.splitn(3, '=');
        let (Some(id), Some(peer), Some(client)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        Ok(PeerSpec {
            id: id.trim().parse().map_err(|_| bad())?,
            peer_address: peer.trim().parse().map_err(|_| bad())?,
            client_address: client.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// Why the flags do not describe a working replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A `--peer` value is not `ID=PEER_ADDR=CLIENT_ADDR` with a numeric id
    /// and two socket addresses.
    #[error("bad --peer {0:?}: expected ID=PEER_ADDR=CLIENT_ADDR, e.g. 1=127.0.0.1:7101=127.0.0.1:7201")]
    BadPeer(String),
    /// The replica's own id is not among the `--peer` ids.
    #[error("--id {0} is not among the --peer ids; list every member, this replica included")]
    NotAMember(ReplicaId),
    /// Two `--peer` entries share an id.
    #[error("replica id {0} is given by more than one --peer")]
    DuplicateId(ReplicaId),
    /// Id 0 stands for "no replica" in the protocol.
    #[error("replica id 0 is reserved; ids start at 1")]
    ZeroId,
    /// Two members share an address, which would route one's messages to the
    /// other.
    #[error("address {0} is given to more than one member")]
    DuplicateAddress(SocketAddr),
    /// A tick of 0 ms would spin; one over 10 s makes every timeout useless.
    #[error("--tick-ms {0} is outside 1..=10000")]
    BadTick(u64),
    /// The Paxos timeouts must nest: tick <= heartbeat, two heartbeats <=
    /// master lease <= election timeout <= 60 s; and the master lease, in
    /// ticks, must leave room for a margin that covers tick granularity and
    /// the clock drift the lease tolerates.
    #[error("timeouts must satisfy tick ({tick} ms) <= heartbeat ({heartbeat} ms), 2 x heartbeat <= master lease ({lease} ms) <= election timeout ({election} ms) <= 60000 ms")]
    BadTimeouts {
        /// `--tick-ms`.
        tick: u64,
        /// `--heartbeat-ms`.
        heartbeat: u64,
        /// `--master-lease-ms`.
        lease: u64,
        /// `--election-timeout-ms`.
        election: u64,
    },
    /// The master lease is too few ticks long for a safe margin: the master
    /// must count its lease shorter than acceptors grant it by at least one
    /// tick of granularity plus the clock drift the lease tolerates
    /// (`gaios_paxos::config::CLOCK_DRIFT_PPM_MAX`), and still outlast a
    /// heartbeat interval.
    #[error(
        "--master-lease-ms {lease} is {lease_ticks} ticks of --tick-ms {tick}: too short for a safe margin (one tick of granularity plus 2% clock drift) that still outlasts a heartbeat; use a longer lease or a finer tick"
    )]
    LeaseTooShort {
        /// `--master-lease-ms`.
        lease: u64,
        /// `--tick-ms`.
        tick: u64,
        /// The lease in ticks.
        lease_ticks: u64,
    },
    /// The cell name is empty.
    #[error("--cell-id must not be empty")]
    EmptyCellId,
    /// A snapshot every 0 slots means no interval at all.
    #[error("--snapshot-every-slots must be at least 1")]
    BadSnapshotInterval,
    /// The snapshot pace is outside 1..=4096 MiB/s.
    #[error("--snapshot-send-mib-per-s {0} is outside 1..=4096")]
    BadSnapshotPace(u64),
    /// The session lease is outside the range a client can keep alive and
    /// a dead client's locks can wait out.
    #[error("--session-lease-ms {0} is outside {SESSION_LEASE_MS_MIN}..={SESSION_LEASE_MS_MAX}")]
    BadSessionLease(u64),
    /// Neither TLS nor `--insecure`, or some TLS files but not all.
    #[error("give --tls-ca, --tls-cert and --tls-key (see `gaios-server certs`), or, for local development on loopback addresses only, --insecure")]
    NoTls,
    /// TLS files and `--insecure` together.
    #[error("--insecure and --tls-* contradict each other")]
    InsecureWithTls,
    /// `--insecure` on an address other hosts can reach.
    #[error("--insecure serves plaintext with no authentication; it listens only on loopback addresses, not {0}")]
    InsecureNotLoopback(SocketAddr),
    /// A `--group` flag that is not `NAME=IDENTITY,...` with names of 1 to
    /// 256 bytes and no control characters (or puts an identity in too
    /// many groups).
    #[error("--group {0:?}: give NAME=IDENTITY[,IDENTITY...]: NAME of 1 to 250 bytes, not starting with group:, identities of 1 to 256 bytes, no control characters, each identity in at most 32 groups")]
    BadGroup(String),
    /// A cell id that cannot be part of the DNS name in certificates.
    #[error("with TLS, --cell-id {0:?} must be a DNS label (letters, digits, hyphens; at most 63)")]
    CellIdNotDnsLabel(String),
}

/// The checked identity of a replica and its cell's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// This replica's id.
    pub id: ReplicaId,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The cell's name.
    pub cell_id: String,
    /// Every member, this replica included, in id order.
    pub members: Vec<PeerSpec>,
}

impl MemberArgs {
    /// Checks the flags: a non-empty cell id, distinct non-zero ids and
    /// distinct addresses, and this replica among the members.
    pub fn check(self) -> Result<MemberConfig, ConfigError> {
        if self.cell_id.is_empty() {
            return Err(ConfigError::EmptyCellId);
        }
        let mut members = self.peers;
        members.sort_by_key(|peer| peer.id);
        for pair in members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(ConfigError::DuplicateId(pair[0].id));
            }
        }
        if members.iter().any(|peer| peer.id == 0) {
            return Err(ConfigError::ZeroId);
        }
        let mut addresses: Vec<SocketAddr> =
            members.iter().flat_map(|peer| [peer.peer_address, peer.client_address]).collect();
        addresses.sort_unstable();
        for pair in addresses.windows(2) {
            if pair[0] == pair[1] {
                return Err(ConfigError::DuplicateAddress(pair[0]));
            }
        }
        if !members.iter().any(|peer| peer.id == self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        Ok(MemberConfig { id: self.id, data_dir: self.data_dir, cell_id: self.cell_id, members })
    }
}

/// A checked replica configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This replica's id.
    pub id: ReplicaId,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The cell's name.
    pub cell_id: String,
    /// Every member, this replica included, in id order.
    pub members: Vec<PeerSpec>,
    /// The address the peer (`Replica`) service binds.
    pub listen_peer: SocketAddr,
    /// The address the client (`Cell`) service binds.
    pub listen_client: SocketAddr,
    /// How often the Paxos core ticks.
    pub tick: Duration,
    /// How often the master sends heartbeats.
    pub heartbeat: Duration,
    /// The master lease, as acceptors count it.
    pub master_lease: Duration,
    /// The shortest election timeout (the longest is 1.5 times it).
    pub election_timeout: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub listen_metrics: Option<SocketAddr>,
    /// How many applied slots between two snapshots; at least 1.
    pub snapshot_every_slots: u64,
    /// The pace of a snapshot sent to a peer, in bytes per second.
    pub snapshot_send_bytes_per_s: u64,
    /// How long a client session lives without a keep-alive.
    pub session_lease: Duration,
    /// True for a replica that joined a running cell (`init --join`
    /// recorded it): its `members` are contacts, not the founding voters.
    pub joining: bool,
    /// The TLS material; `None` only with `--insecure`.
    pub tls: Option<crate::ops::tls::TlsFiles>,
    /// The groups for ACLs, the cell-admin group included.
    pub groups: Groups,
}

impl ReplicaConfig {
    /// Checks the flags: the replica is a member, ids and addresses are
    /// distinct, the tick, snapshot interval and session lease are sane. Listen addresses default to this
    /// replica's own `--peer` entry.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let member = args.member.check()?;
        if args.tick_ms == 0 || args.tick_ms > 10_000 {
            return Err(ConfigError::BadTick(args.tick_ms));
        }
        if !(args.tick_ms <= args.heartbeat_ms
            && args.heartbeat_ms.saturating_mul(2) <= args.master_lease_ms
            && args.master_lease_ms <= args.election_timeout_ms
            && args.election_timeout_ms <= 60_000)
        {
            return Err(ConfigError::BadTimeouts {
                tick: args.tick_ms,
                heartbeat: args.heartbeat_ms,
                lease: args.master_lease_ms,
                election: args.election_timeout_ms,
            });
        }
        if args.snapshot_every_slots == 0 {
            return Err(ConfigError::BadSnapshotInterval);
        }
        if !(1..=4096).contains(&args.snapshot_send_mib_per_s) {
            return Err(ConfigError::BadSnapshotPace(args.snapshot_send_mib_per_s));
        }
        let lease_ticks = args.master_lease_ms.div_ceil(args.tick_ms);
        let heartbeat_ticks = args.heartbeat_ms.div_ceil(args.tick_ms);
        let margin_fits = gaios_paxos::config::lease_drift_ticks_for(lease_ticks)
            .is_some_and(|drift| lease_ticks - drift > heartbeat_ticks);
        if !margin_fits {
            return Err(ConfigError::LeaseTooShort { lease: args.master_lease_ms, tick: args.tick_ms, lease_ticks });
        }
        if !(SESSION_LEASE_MS_MIN..=SESSION_LEASE_MS_MAX).contains(&args.session_lease_ms) {
            return Err(ConfigError::BadSessionLease(args.session_lease_ms));
        }
        let me = *member.members.iter().find(|peer| peer.id == member.id).ok_or(ConfigError::NotAMember(member.id))?;
        let listen_peer = args.listen_peer.unwrap_or(me.peer_address);
        let listen_client = args.listen_client.unwrap_or(me.client_address);
        let tls = match (args.tls_ca, args.tls_cert, args.tls_key, args.insecure) {
            (None, None, None, true) => {
                if let Some(open) = [listen_peer, listen_client].into_iter().find(|address| !address.ip().is_loopback()) {
                    return Err(ConfigError::InsecureNotLoopback(open));
                }
                None
            }
            (Some(ca), Some(cert), Some(key), false) => {
                if !crate::ops::tls::cell_id_is_dns_label(&member.cell_id) {
                    return Err(ConfigError::CellIdNotDnsLabel(member.cell_id));
                }
                Some(crate::ops::tls::TlsFiles { ca, cert, key })
            }
            (_, _, _, true) => return Err(ConfigError::InsecureWithTls),
            _ => return Err(ConfigError::NoTls),
        };
        Ok(ReplicaConfig {
            id: member.id,
            data_dir: member.data_dir,
            cell_id: member.cell_id,
            members: member.members,
            listen_peer,
            listen_client,
            tick: Duration::from_millis(args.tick_ms),
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            master_lease: Duration::from_millis(args.master_lease_ms),
            election_timeout: Duration::from_millis(args.election_timeout_ms),
            listen_metrics: args.listen_metrics,
            snapshot_every_slots: args.snapshot_every_slots,
            snapshot_send_bytes_per_s: args.snapshot_send_mib_per_s << 20,
            session_lease: Duration::from_millis(args.session_lease_ms),
            joining: false,
            tls,
            groups: Groups::from_flags(&args.groups, &args.admins)?,
        })
    }

    /// The Paxos core's configuration: the timeouts above in ticks (rounded
    /// up, at least one), the master counting its lease a fifth shorter than
    /// the acceptors do, or more if tick granularity and the clock drift the
    /// lease tolerates need more (`from_args` checked that a margin fits).
    pub fn paxos_config(&self) -> gaios_paxos::Config {
        let ticks = |d: Duration| (d.as_millis() as u64).div_ceil(self.tick.as_millis().max(1) as u64).max(1);
        // A founding member starts from the cell's first configuration. A
        // joining one starts from the voters it was told of, and hears only
        // from them until it learns the cell's configuration from the log
        // or a snapshot (each change carries a whole configuration, so that
        // start is replaced before it could matter; docs/MEMBERSHIP.md).
        let others: Vec<ReplicaId> = self.member_ids().into_iter().filter(|&id| id != self.id).collect();
        let first: Vec<&PeerSpec> = self.members.iter().filter(|peer| !self.joining || peer.id != self.id).collect();
        let mut config = if self.joining {
            let mut config = gaios_paxos::Config::new(self.id, others.clone());
            config.contacts = others;
            config
        } else {
            gaios_paxos::Config::new(self.id, self.member_ids())
        };
        // The first configuration carries the flags' addresses, so every
        // change records them and a replica that joins later learns them.
        config.genesis = Some(gaios_paxos::Membership {
            highest_id: first.iter().map(|peer| peer.id).max().unwrap_or(0),
            members: first
                .iter()
                .map(|peer| gaios_paxos::Member {
                    id: peer.id,
                    voter: true,
                    incarnation: 0,
                    peer_address: peer.peer_address.to_string(),
                    client_address: peer.client_address.to_string(),
                })
                .collect(),
        });
        config.heartbeat_ticks = ticks(self.heartbeat);
        config.lease_ticks = ticks(self.master_lease).max(config.heartbeat_ticks + 1);
        let needed = gaios_paxos::config::lease_drift_ticks_for(config.lease_ticks).unwrap_or(config.lease_ticks - 1);
        config.lease_drift_ticks = (config.lease_ticks / 5).max(needed).min(config.lease_ticks - 1);
        config.election_ticks_min = ticks(self.election_timeout);
        config.election_ticks_max = ticks(self.election_timeout * 3 / 2);
        // An unanswered accept or catch-up request is repeated after about
        // four heartbeats.
        config.message_bytes_max = crate::replica::transport::CORE_MESSAGE_BYTES_MAX;
        config.accept_retry_ticks = config.heartbeat_ticks * 4;
        config.catch_up_retry_ticks = config.heartbeat_ticks * 4;
        config
    }

    /// The member ids, in id order, as the Paxos core wants them.
    pub fn member_ids(&self) -> Vec<ReplicaId> {
        self.members.iter().map(|peer| peer.id).collect()
    }

    /// The configured entry of member `id`, if it is one.
    pub fn member(&self, id: ReplicaId) -> Option<&PeerSpec> {
        self.members.iter().find(|peer| peer.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags with `--insecure` unless they speak of TLS.
    fn parse(extra: &[&str]) -> Result<ReplicaConfig, ConfigError> {
        let tls = extra.iter().any(|flag| flag.starts_with("--tls") || *flag == "--insecure");
        let mut argv = if tls { vec![] } else { vec!["--insecure"] };
        argv.extend_from_slice(extra);
        parse_exactly(&argv)
    }

    fn parse_exactly(extra: &[&str]) -> Result<ReplicaConfig, ConfigError> {
        let mut argv = vec!["gaios-server", "--data-dir", "/tmp/x"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| ConfigError::BadPeer(e.to_string()))?;
        ReplicaConfig::from_args(args)
    }

    #[test]
    fn plaintext_needs_insecure_and_loopback_and_tls_needs_all_three_files() {
        let mut argv = vec!["--id", "1"];
        argv.extend_from_slice(&THREE);
        let with = |extra: &[&'static str]| {
            let mut flags = argv.clone();
            flags.extend_from_slice(extra);
            parse_exactly(&flags)
        };
        assert_eq!(with(&[]), Err(ConfigError::NoTls));
        assert_eq!(with(&["--tls-ca", "ca.pem", "--tls-cert", "r.pem"]), Err(ConfigError::NoTls));
        assert_eq!(with(&["--insecure", "--tls-ca", "ca.pem"]), Err(ConfigError::InsecureWithTls));
        assert_eq!(with(&["--insecure"]).map(|c| c.tls), Ok(None));
        assert_eq!(
            with(&["--insecure", "--listen-client", "0.0.0.0:7201"]),
            Err(ConfigError::InsecureNotLoopback("0.0.0.0:7201".parse().expect("address")))
        );
        let files = with(&["--tls-ca", "ca.pem", "--tls-cert", "r.pem", "--tls-key", "r.key", "--listen-peer", "0.0.0.0:7101"])
            .expect("TLS on any address")
            .tls;
        assert_eq!(files.map(|f| f.key), Some(PathBuf::from("r.key")));
        let mut flags = vec!["--id", "1", "--cell-id", "a.b", "--tls-ca", "c", "--tls-cert", "c", "--tls-key", "k"];
        flags.extend_from_slice(&THREE);
        assert_eq!(parse_exactly(&flags), Err(ConfigError::CellIdNotDnsLabel("a.b".into())));
    }

    #[test]
    fn groups_come_from_group_and_admin_flags_and_are_checked() {
        let flags = [String::from("ops=alice,bob"), String::from("ops=carol"), String::from("admin=dave")];
        let groups = Groups::from_flags(&flags, &[String::from("erin")]).expect("valid groups");
        assert_eq!(groups.of("bob"), vec!["ops".to_string()]);
        assert_eq!(groups.of("carol"), vec!["ops".to_string()]);
        assert!(groups.is_admin("dave") && groups.is_admin("erin") && !groups.is_admin("alice"));
        assert_eq!(groups.of("erin"), vec![gaios_state::acl::ADMIN_GROUP.to_string()]);
        assert!(groups.of("nobody").is_empty());
        assert!(groups.are_those_of("bob", &["ops".to_string()]) && groups.are_those_of("nobody", &[]));
        assert!(!groups.are_those_of("bob", &[]) && !groups.are_those_of("erin", &["ops".to_string()]));
        for bad in ["ops", "=alice", "ops=", "ops=a,,b", "group:x=alice"] {
            assert!(matches!(Groups::from_flags(&[bad.to_string()], &[]), Err(ConfigError::BadGroup(_))), "{bad}");
        }
        let many: Vec<String> = (0..=GROUPS_PER_SESSION_MAX).map(|i| format!("g{i}=alice")).collect();
        assert!(Groups::from_flags(&many, &[]).is_err(), "alice in too many groups");
    }

    const THREE: [&str; 6] = [
        "--peer",
        "1=127.0.0.1:7101=127.0.0.1:7201",
        "--peer",
        "2=127.0.0.1:7102=127.0.0.1:7202",
        "--peer",
        "3=127.0.0.1:7103=127.0.0.1:7203",
    ];

    #[test]
    fn listen_addresses_default_to_own_peer_entry() {
        let mut argv = vec!["--id", "2"];
        argv.extend_from_slice(&THREE);
        let config = parse(&argv).expect("valid flags");
        assert_eq!(config.listen_peer, "127.0.0.1:7102".parse().expect("address"));
        assert_eq!(config.listen_client, "127.0.0.1:7202".parse().expect("address"));
        assert_eq!(config.member_ids(), vec![1, 2, 3]);
        assert_eq!(config.tick, Duration::from_millis(TICK_MS_DEFAULT));
        let paxos = config.paxos_config();
        assert_eq!(paxos.validate(), Ok(()));
        // 10 ms ticks: heartbeat 5, lease 25 (the master counts 20), elections after 30..45.
        assert_eq!((paxos.heartbeat_ticks, paxos.lease_ticks, paxos.lease_drift_ticks), (5, 25, 5));
        assert_eq!((paxos.election_ticks_min, paxos.election_ticks_max), (30, 45));
        assert_eq!(config.listen_metrics, None);
        assert_eq!(config.snapshot_every_slots, SNAPSHOT_EVERY_SLOTS_DEFAULT);
        assert_eq!(config.session_lease, Duration::from_millis(SESSION_LEASE_MS_DEFAULT));
    }

    #[test]
    fn operations_flags_are_taken() {
        let mut argv = vec![
            "--id",
            "1",
            "--listen-metrics",
            "127.0.0.1:7301",
            "--snapshot-every-slots",
            "1",
            "--session-lease-ms",
            "600000",
        ];
        argv.extend_from_slice(&THREE);
        let config = parse(&argv).expect("valid flags");
        assert_eq!(config.listen_metrics, Some("127.0.0.1:7301".parse().expect("address")));
        assert_eq!(config.snapshot_every_slots, 1);
        assert_eq!(config.session_lease, Duration::from_secs(600));
    }

    #[test]
    fn snapshot_interval_must_be_positive() {
        let mut argv = vec!["--id", "1", "--snapshot-every-slots", "0"];
        argv.extend_from_slice(&THREE);
        assert_eq!(parse(&argv), Err(ConfigError::BadSnapshotInterval));
    }

    #[test]
    fn paxos_timeouts_must_nest() {
        let cases: [(&[&str], bool); 10] = [
            (&[], true),
            (&["--tick-ms", "50", "--heartbeat-ms", "50", "--master-lease-ms", "1000", "--election-timeout-ms", "1000"], true),
            // Five ticks of 50 ms: the margin is two ticks, not one.
            (&["--tick-ms", "50"], true),
            // Two ticks of 100 ms: no margin leaves the lease outlasting a heartbeat.
            (&["--tick-ms", "100", "--heartbeat-ms", "100", "--master-lease-ms", "200"], false),
            (&["--tick-ms", "60"], false),
            (&["--tick-ms", "60", "--heartbeat-ms", "60", "--election-timeout-ms", "600", "--master-lease-ms", "600"], true),
            (&["--master-lease-ms", "50"], false),
            (&["--heartbeat-ms", "200", "--master-lease-ms", "240"], false),
            (&["--election-timeout-ms", "200"], false),
            (&["--election-timeout-ms", "60001"], false),
        ];
        for (flags, ok) in cases {
            let mut argv = vec!["--id", "1"];
            argv.extend_from_slice(&THREE);
            argv.extend_from_slice(flags);
            match parse(&argv) {
                Ok(config) => {
                    assert!(ok, "{flags:?} was taken");
                    assert_eq!(config.paxos_config().validate(), Ok(()), "{flags:?}");
                }
                Err(error) => {
                    assert!(!ok, "{flags:?}: {error}");
                    assert!(
                        matches!(error, ConfigError::BadTimeouts { .. } | ConfigError::BadTick(_) | ConfigError::LeaseTooShort { .. }),
                        "{flags:?}: {error}"
                    );
                }
            }
        }
    }

    #[test]
    fn session_lease_must_be_in_range() {
        for (lease_ms, ok) in [("999", false), ("1000", true), ("600000", true), ("600001", false), ("0", false)] {
            let mut argv = vec!["--id", "1", "--session-lease-ms", lease_ms];
            argv.extend_from_slice(&THREE);
            let outcome = parse(&argv);
            if ok {
                assert!(outcome.is_ok(), "{lease_ms}: {outcome:?}");
            } else {
                let expected = lease_ms.parse().expect("number");
                assert_eq!(outcome, Err(ConfigError::BadSessionLease(expected)), "{lease_ms}");
            }
        }
    }

    #[test]
    fn self_must_be_a_member() {
        let mut argv = vec!["--id", "4"];
        argv.extend_from_slice(&THREE);
        assert_eq!(parse(&argv), Err(ConfigError::NotAMember(4)));
    }

    #[test]
    fn ids_and_addresses_must_be_distinct() {
        let argv = ["--id", "1", "--peer", "1=127.0.0.1:1=127.0.0.1:2", "--peer", "1=127.0.0.1:3=127.0.0.1:4"];
        assert_eq!(parse(&argv), Err(ConfigError::DuplicateId(1)));
        let argv = ["--id", "1", "--peer", "1=127.0.0.1:1=127.0.0.1:2", "--peer", "2=127.0.0.1:2=127.0.0.1:4"];
        assert_eq!(parse(&argv), Err(ConfigError::DuplicateAddress("127.0.0.1:2".parse().expect("address"))));
    }

    /// `init FLAGS`, `run FLAGS` and the bare `FLAGS` (a run) all parse;
    /// `init` takes only the flags it records.
    #[test]
    fn the_command_line_has_init_run_and_the_bare_run_form() {
        let mut flags = vec!["--id", "2", "--data-dir", "/tmp/x", "--cell-id", "c"];
        flags.extend_from_slice(&THREE);
        let with = |prefix: &[&'static str], extra: &[&'static str]| {
            let mut argv = vec!["gaios-server"];
            argv.extend_from_slice(prefix);
            argv.extend_from_slice(&flags);
            argv.extend_from_slice(extra);
            Cli::parse_args(argv)
        };
        let Ok(Cli { command: Command::Run(bare) }) = with(&[], &["--tick-ms", "5"]) else {
            panic!("the bare form does not parse as run");
        };
        assert_eq!((bare.member.id, bare.tick_ms), (2, 5));
        let Ok(Cli { command: Command::Run(run) }) = with(&["run"], &[]) else {
            panic!("`run` does not parse");
        };
        assert_eq!(run.member.cell_id, "c");
        let Ok(Cli { command: Command::Init(init) }) = with(&["init"], &[]) else {
            panic!("`init` does not parse");
        };
        assert!(!init.join);
        let init = init.member.check().expect("valid member flags");
        assert_eq!((init.id, init.cell_id.as_str(), init.members.len()), (2, "c", 3));
        let Ok(Cli { command: Command::Init(join) }) = with(&["init", "--join"], &[]) else {
            panic!("`init --join` does not parse");
        };
        assert!(join.join);
        assert!(with(&["run", "--join"], &[]).is_err(), "--join is init's alone");
        assert!(with(&["init"], &["--tick-ms", "5"]).is_err(), "init takes no run flags");
        assert!(Cli::parse_args(["gaios-server", "init", "--id", "1", "--data-dir", "/tmp/x"]).is_err(), "init needs --peer");
        assert!(Cli::parse_args(["gaios-server"]).is_err(), "nothing to do");
        let lonely = MemberArgs { id: 4, data_dir: "/tmp/x".into(), cell_id: "c".into(), peers: vec![] };
        assert_eq!(lonely.check(), Err(ConfigError::NotAMember(4)));
    }

    #[test]
    fn malformed_peer_is_refused() {
        assert!("1=127.0.0.1:7101".parse::<PeerSpec>().is_err());
        assert!("x=127.0.0.1:7101=127.0.0.1:7201".parse::<PeerSpec>().is_err());
        assert!("1=localhost=127.0.0.1:7201".parse::<PeerSpec>().is_err());
    }
}
