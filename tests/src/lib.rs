//! End-to-end test support: a five-process cell and a small raw client,
//! used by the cross-process tests of `gaios-server`, `gaios-client` and
//! the chaos suite.
//!
//! [`Cell`] starts five real `gaios-server` processes on loopback ports,
//! each with its own data directory in a temporary directory (created by
//! `gaios-server init` first, as an operator would) and its log in
//! `replica-<id>.log` there; it can SIGKILL, SIGSTOP, SIGCONT and restart
//! them, and run some under libfaketime with their clocks at another rate
//! ([`Cell::set_clock_rate`]). Dropping it kills and reaps every child still
//! running.
//!
//! [`Client`] calls the `Cell` service on whichever replica is master: it
//! follows `UNAVAILABLE` answers (their `NOT_MASTER` redirects) and retries
//! until a deadline, the way a client library would.
pub mod proxy;

pub mod linearizability;

pub mod progress;

pub mod rng;

pub mod chaos;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use gaios_proto::cell::v1::cell_client::CellClient;
use gaios_proto::cell::v1::{Role, StatusRequest, StatusResponse};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The workspace's binaries are built next to the test executables
/// (`target/<profile>/`); the workspace test command (`scripts/test`) builds
/// them all first, with `cargo build --workspace --bins`. When a test crate
/// runs alone and one is missing, the same build runs here, with the same
/// feature set, so RocksDB is never compiled a second time for it. (A binary
/// that exists is used as it is: after changing the code, run the build
/// first, or `scripts/test`.)
pub fn binary(name: &str) -> PathBuf {
    // `GAIOS_BIN_DIR` pins the binaries (a long chaos run uses copies, so
    // rebuilding the workspace meanwhile does not change what it restarts).
    let dir = match std::env::var_os("GAIOS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let here = exe.parent().expect("the executable's directory").to_path_buf();
            // target/<profile>/deps/<test> -> target/<profile>; a binary such
            // as gaios-chaos sits in target/<profile> itself.
            if here.file_name().is_some_and(|name| name == "deps") { here.parent().map_or(here.clone(), Path::to_path_buf) } else { here }
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        static BUILD: std::sync::Once = std::sync::Once::new();
        BUILD.call_once(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
            let status = Command::new(cargo)
                .current_dir(workspace)
                .args(["build", "--workspace", "--bins", "--locked"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build of the binaries failed");
        });
    }
    assert!(path.exists(), "{} is missing; run the workspace's tests (scripts/test)", path.display());
    path
}

/// The replicas of a test cell.
pub const REPLICAS: u64 = 5;
/// The cell id of a test cell.
pub const CELL_ID: &str = "test-cell";
/// How long the cell may take to elect its first master.
pub const FIRST_MASTER_DEADLINE: Duration = Duration::from_secs(20);
/// How long the cell may take to elect a new master after a SIGKILL.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a restarted replica may take to rejoin and catch up.
pub const REJOIN_DEADLINE: Duration = Duration::from_secs(20);
/// How often the tests poll the replicas.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one status call may take.
pub const RPC_TIMEOUT: Duration = Duration::from_millis(500);

/// One replica's id and addresses.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Where the other replicas reach it.
    pub peer: SocketAddr,
    /// Where clients reach it.
    pub client: SocketAddr,
}

/// The five processes; see the module docs.
pub struct Cell {
    /// Data directories and logs.
    pub dir: tempfile::TempDir,
    /// The replicas.
    pub members: Vec<Member>,
    children: Vec<Option<Child>>,
    extra_args: Vec<String>,
    /// The address replica `from` uses for replica `to`, when peer traffic
    /// goes through a fault proxy.
    peer_routes: std::collections::BTreeMap<(u64, u64), SocketAddr>,
    /// Replicas (by index) whose clocks run at another rate under
    /// libfaketime, and that rate (1.0 is real time).
    clock_rates: std::collections::BTreeMap<usize, f64>,
    /// For replicas that joined the running cell (by index): the members
    /// their `init --join` was given, which every start must repeat.
    joined_with: std::collections::BTreeMap<usize, Vec<Member>>,
    /// The founding members, as `init` was given them: what every founding
    /// replica's start repeats, whatever joined or left since.
    founders: Vec<Member>,
    /// Whether the replicas serve TLS (certificates under `tls/`, made by
    /// `gaios-server certs`) rather than `--insecure` plaintext.
    tls: bool,
}

/// The client identities the TLS cell's certificates are made for.
pub const TLS_CLIENTS: [&str; 3] = ["admin", "alice", "bob"];

impl Cell {
    /// Starts five replicas with default flags.
    pub fn start() -> Cell {
        Cell::start_with(&[])
    }

    /// Starts the cell with `extra_args` given to every replica.
    pub fn start_with(extra_args: &[&str]) -> Cell {
        Cell::start_on(extra_args, Cell::free_members(), std::collections::BTreeMap::new())
    }

    /// Picks free loopback ports for five replicas (bound and released).
    pub fn free_members() -> Vec<Member> {
        Cell::reserve_members().0
    }

    /// Picks free loopback ports for five replicas and keeps them bound
    /// until the returned listeners are dropped, so that something else set
    /// up meanwhile (a fault proxy's links) cannot take them.
    pub fn reserve_members() -> (Vec<Member>, Vec<TcpListener>) {
        let listeners: Vec<TcpListener> =
            (0..REPLICAS * 2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
        let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("local address")).collect();
        let members = (0..REPLICAS as usize)
            .map(|i| Member { id: i as u64 + 1, peer: addresses[2 * i], client: addresses[2 * i + 1] })
            .collect();
        (members, listeners)
    }

    /// Starts the cell on `members` with peer traffic routed as `routes`
    /// says: the address replica `from` uses for replica `to` (e.g. a fault
    /// proxy's link); pairs not in `routes` connect directly.
    pub fn start_on(
        extra_args: &[&str],
        members: Vec<Member>,
        routes: std::collections::BTreeMap<(u64, u64), SocketAddr>,
    ) -> Cell {
        Cell::start_with_clocks(extra_args, members, routes, std::collections::BTreeMap::new())
    }

    /// Like [`Cell::start_on`], with the replicas at the indexes in
    /// `clock_rates` started under libfaketime at those clock rates (see
    /// [`Cell::set_clock_rate`]).
    pub fn start_with_clocks(
        extra_args: &[&str],
        members: Vec<Member>,
        routes: std::collections::BTreeMap<(u64, u64), SocketAddr>,
        clock_rates: std::collections::BTreeMap<usize, f64>,
    ) -> Cell {
        Cell::start_full(extra_args, members, routes, clock_rates, false)
    }

    /// Starts five replicas with TLS on both ports: a CA, a certificate per
    /// replica and client certificates for [`TLS_CLIENTS`], all made by
    /// `gaios-server certs` under the cell's directory.
    pub fn start_tls(extra_args: &[&str]) -> Cell {
        Cell::start_full(extra_args, Cell::free_members(), std::collections::BTreeMap::new(), std::collections::BTreeMap::new(), true)
    }

    /// Starts the cell as [`Cell::start_with_clocks`] does, with TLS (as
    /// [`Cell::start_tls`]) if `tls`.
    pub fn start_full(
        extra_args: &[&str],
        members: Vec<Member>,
        routes: std::collections::BTreeMap<(u64, u64), SocketAddr>,
        clock_rates: std::collections::BTreeMap<usize, f64>,
        tls: bool,
    ) -> Cell {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let extra_args = extra_args.iter().map(|arg| (*arg).to_string()).collect();
        let founders = members.clone();
        let mut cell = Cell {
            dir,
            founders,
            members,
            children: Vec::new(),
            extra_args,
            peer_routes: routes,
            clock_rates,
            joined_with: std::collections::BTreeMap::new(),
            tls,
        };
        if tls {
            let mut args = vec!["--cell-id".to_string(), CELL_ID.into(), "--host".into(), "127.0.0.1".into()];
            for member in &cell.members {
                args.extend(["--replica".to_string(), member.id.to_string()]);
            }
            for client in TLS_CLIENTS {
                args.extend(["--client".to_string(), client.into()]);
            }
            cell.make_certificates(&args);
        }
        for index in 0..REPLICAS as usize {
            cell.init(index);
        }
        for index in 0..REPLICAS as usize {
            let child = cell.spawn(index);
            cell.children.push(Some(child));
        }
        cell
    }

    /// Runs `gaios-server init` for the replica at `index`, as an operator
    /// does once for each member of a new cell; panics if it fails.
    pub fn init(&self, index: usize) {
        let output = Command::new(binary("gaios-server"))
            .arg("init")
            .args(self.member_args(index))
            .stdin(Stdio::null())
            .output()
            .expect("run gaios-server init");
        assert!(
            output.status.success(),
            "gaios-server init for replica {} failed: {}",
            self.members[index].id,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Adds replica `me` to the running cell's processes as an operator
    /// would: `gaios-server init --join` with the members it may reach
    /// (`contacts`, it is added to them), then starts it. It is a learner
    /// that takes no part until `gaios member add` (or `replace`) adds it.
    /// Returns its index.
    pub fn join(&mut self, me: Member, contacts: &[Member]) -> usize {
        let index = self.members.len();
        self.members.push(me);
        self.children.push(None);
        self.init_joining(index, contacts);
        index
    }

    /// `init --join` for the replica at `index` with `contacts` (and
    /// itself), then a start.
    fn init_joining(&mut self, index: usize, contacts: &[Member]) {
        let me = self.members[index];
        let mut with: Vec<Member> = contacts.to_vec();
        with.push(me);
        self.joined_with.insert(index, with);
        let output = Command::new(binary("gaios-server"))
            .arg("init")
            .arg("--join")
            .args(self.member_args(index))
            .stdin(Stdio::null())
            .output()
            .expect("run gaios-server init --join");
        assert!(
            output.status.success(),
            "gaios-server init --join for replica {} failed: {}",
            me.id,
            String::from_utf8_lossy(&output.stderr)
        );
        self.children[index] = Some(self.spawn(index));
    }

    /// Puts replica `me` on the machine at `index` (whose process must be
    /// down, its data gone): `init --join` with `contacts`, then a start,
    /// as [`Cell::join`] does. The index keeps naming that machine.
    pub fn replace_at(&mut self, index: usize, me: Member, contacts: &[Member]) {
        assert!(self.children[index].is_none(), "replica {index} still runs");
        self.members[index] = me;
        self.init_joining(index, contacts);
    }

    /// Where replica `id` logs.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}.log"))
    }

    /// The index of replica `id` in `members`.
    pub fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.id == id).expect("a member")
    }

    /// The data directory of replica `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    /// The flags that name the replica at `index`, its directory and its
    /// cell's members: what `gaios-server init` records and what a start
    /// must repeat.
    pub fn member_args(&self, index: usize) -> Vec<String> {
        let me = self.members[index];
        let mut args: Vec<String> = vec![
            "--id".into(),
            me.id.to_string(),
            "--data-dir".into(),
            self.data_dir(me.id).display().to_string(),
            "--cell-id".into(),
            CELL_ID.into(),
        ];
        let members = self.joined_with.get(&index).map_or(self.founders.as_slice(), Vec::as_slice);
        for member in members {
            // Through the fault proxy's link me -> member when there is one.
            let peer = self.peer_routes.get(&(me.id, member.id)).copied().unwrap_or(member.peer);
            args.push("--peer".into());
            args.push(format!("{}={}={}", member.id, peer, member.client));
        }
        args
    }

    /// Every flag the replica at `index` is started with.
    pub fn replica_args(&self, index: usize) -> Vec<String> {
        let mut args = self.member_args(index);
        args.push("--listen-peer".into());
        args.push(self.members[index].peer.to_string());
        if self.tls {
            let id = self.members[index].id;
            let tls = self.tls_dir();
            if !tls.join(format!("replica-{id}.pem")).exists() {
                // A replica that joined later.
                self.make_certificates(&["--cell-id".into(), CELL_ID.into(), "--host".into(), "127.0.0.1".into(), "--replica".into(), id.to_string()]);
            }
            args.extend(["--admin".to_string(), "admin".into()]);
            for (flag, file) in [("--tls-ca", "ca.pem".to_string()), ("--tls-cert", format!("replica-{id}.pem")), ("--tls-key", format!("replica-{id}.key"))] {
                args.push(flag.into());
                args.push(tls.join(file).display().to_string());
            }
        } else {
            args.push("--insecure".into());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Where a TLS cell's CA, replica and client certificates are.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Runs `gaios-server certs --dir <tls_dir> ARGS`; panics if it fails.
    pub fn make_certificates(&self, args: &[String]) {
        let output = Command::new(binary("gaios-server"))
            .arg("certs")
            .arg("--dir")
            .arg(self.tls_dir())
            .args(args)
            .output()
            .expect("run gaios-server certs");
        assert!(output.status.success(), "gaios-server certs failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The TLS material of client `name` (one of [`TLS_CLIENTS`]) for a
    /// TLS cell; `None` for a plaintext one.
    pub fn client_tls(&self, name: &str) -> Option<gaios_client::Tls> {
        if !self.tls {
            return None;
        }
        let dir = self.tls_dir();
        Some(
            gaios_client::Tls::from_files(&dir.join("ca.pem"), &dir.join(format!("client-{name}.pem")), &dir.join(format!("client-{name}.key")))
                .expect("the client's TLS files"),
        )
    }

    /// Runs the replica at `index` under libfaketime at `rate` (its wall
    /// and monotonic clocks, and so its timers, advance `rate` seconds per
    /// real second) from its next start on; `None` for real time. Panics if
    /// libfaketime is not installed (see [`faketime_library`]).
    pub fn set_clock_rate(&mut self, index: usize, rate: Option<f64>) {
        match rate {
            Some(rate) => self.clock_rates.insert(index, rate),
            None => self.clock_rates.remove(&index),
        };
    }

    /// The clock rate the replica at `index` runs at (1.0 unless set).
    pub fn clock_rate(&self, index: usize) -> f64 {
        self.clock_rates.get(&index).copied().unwrap_or(1.0)
    }

    fn spawn(&self, index: usize) -> Child {
        let me = self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(me.id))
            .expect("open the replica's log file");
        let mut command = Command::new(binary("gaios-server"));
        command.args(self.replica_args(index));
        if let Some(&rate) = self.clock_rates.get(&index) {
            // What the `faketime` wrapper does, without its extra process
            // in between (so signals reach the replica itself). The
            // monotonic clock is faked too: it is the one leases use.
            let library = faketime_library().expect("libfaketime is installed (scripts/install-build-deps)");
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME", faketime_rate(rate))
                .env_remove("FAKETIME_DONT_FAKE_MONOTONIC");
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("clone the log file handle"));
        command.spawn().expect("start gaios-server")
    }

    /// Waits up to `deadline` for the replica at `index` to exit by itself;
    /// returns its exit status (and forgets the process), or `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, index: usize, deadline: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            let child = self.children[index].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children[index] = None;
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the replica at `index` and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Starts the replica at `index` again on its data directory.
    pub fn restart(&mut self, index: usize) {
        assert!(self.children[index].is_none(), "replica {index} is still running");
        let child = self.spawn(index);
        self.children[index] = Some(child);
    }

    /// Starts the replica at `index` again with a plain start, the way an
    /// operator restarts a replica on whatever its data directory holds: it
    /// never initialises a data directory, so a replica whose directory was
    /// wiped must refuse to start here.
    pub fn restart_without_init(&mut self, index: usize) {
        self.restart(index);
    }

    /// The exit status of the replica at `index` if it has exited by itself
    /// (the process is then forgotten, as if killed); `None` while it runs
    /// (or if it was not started).
    pub fn exited(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        let status = self.children[index].as_mut()?.try_wait().ok()??;
        self.children[index] = None;
        Some(status)
    }

    /// The process id of the replica at `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.children[index].as_ref().map(Child::id)
    }

    /// Whether the replica at `index` runs (was not killed).
    pub fn is_running(&self, index: usize) -> bool {
        self.children[index].is_some()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to a running replica.
    pub fn signal(&self, index: usize, signal: i32) {
        if let Some(child) = &self.children[index] {
            let pid = i32::try_from(child.id()).expect("a pid");
            // SAFETY-free: `kill(2)` through libc, on our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// The tails of every replica's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for member in &self.members {
            let text = std::fs::read_to_string(self.log_path(member.id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- replica {} ---\n{}\n", member.id, tail.join("\n")));
        }
        out
    }

    /// A client of this cell.
    pub fn client(&self) -> Client {
        Client { addresses: self.members.iter().map(|m| m.client).collect(), master: None }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.signal(index, libc::SIGCONT);
        }
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
        }
        // Reap, but never hang the test on a child that will not die.
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.iter_mut().flatten() {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// libfaketime's multi-threaded library (Debian's `libfaketime` package), if
/// it is installed.
pub fn faketime_library() -> Option<PathBuf> {
    let candidates = std::fs::read_dir("/usr/lib").ok()?.flatten().map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"));
    std::iter::once(PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")).chain(candidates).find(|path| path.exists())
}

/// libfaketime's `FAKETIME` for a clock that starts at the real time and
/// advances `rate` seconds per real second (`+0 x1.01`).
pub fn faketime_rate(rate: f64) -> String {
    format!("+0 x{rate:.6}")
}

/// Microseconds of `CLOCK_MONOTONIC`: one clock for every process on the
/// machine (unlike [`Instant`], whose values cannot leave the process), so
/// the chaos suite's worker processes time their events on the run's clock.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` writes one timespec through a valid pointer.
    #[allow(unsafe_code)]
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    assert_eq!(result, 0, "CLOCK_MONOTONIC is always available on Linux");
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

/// One replica's Status, or `None` if it does not answer in time.
pub async fn status(address: SocketAddr) -> Option<StatusResponse> {
    if let Some(tls) = chaos::client_tls() {
        return gaios_client::cell_status(&[address.to_string()], Some(&tls)).await.pop();
    }
    let call = async {
        let mut client = CellClient::connect(format!("http://{address}")).await.ok()?;
        client.status(StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(RPC_TIMEOUT, call).await.ok().flatten()
}

/// The statuses of the replicas at `indexes` that answered.
pub async fn statuses(cell: &Cell, indexes: &[usize]) -> Vec<StatusResponse> {
    let mut out = Vec::new();
    let tls = cell.client_tls("admin");
    for &index in indexes {
        let address = cell.members[index].client;
        let answer = match &tls {
            Some(tls) => gaios_client::cell_status(&[address.to_string()], Some(tls)).await.pop(),
            None => status(address).await,
        };
        if let Some(status) = answer {
            out.push(status);
        }
    }
    out
}

/// The master's id if every replica at `indexes` answered, exactly one says
/// it is master, and all the others name it.
pub fn agreed_master(statuses: &[StatusResponse], expected: usize) -> Option<u64> {
    if statuses.len() != expected {
        return None;
    }
    let masters: Vec<&StatusResponse> = statuses.iter().filter(|s| s.role() == Role::Master).collect();
    let [master] = masters.as_slice() else { return None };
    statuses.iter().all(|s| s.master_id == master.id).then_some(master.id)
}

/// Waits until the replicas at `indexes` agree on a master.
pub async fn wait_for_master(cell: &Cell, indexes: &[usize], deadline: Duration) -> Option<(u64, Vec<StatusResponse>)> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let now = statuses(cell, indexes).await;
        if let Some(master) = agreed_master(&now, indexes.len()) {
            return Some((master, now));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

/// Whether a data directory holds anything.
pub fn data_dir_exists(path: &Path) -> bool {
    path.read_dir().map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// Calls the master, following redirects, until an answer that is not
/// `UNAVAILABLE` (or a transport error) or until the deadline.
pub struct Client {
    addresses: Vec<SocketAddr>,
    master: Option<SocketAddr>,
}

/// How long [`Client::call`] keeps retrying through elections.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

impl Client {
    async fn connect(address: SocketAddr) -> Option<CellClient<Channel>> {
        // Over TLS in a chaos run that uses it.
        let channel = tokio::time::timeout(RPC_TIMEOUT, chaos::endpoint(&address.to_string())?.connect())
            .await
            .ok()?
            .ok()?;
        Some(CellClient::new(channel))
    }

    /// Runs `call` against the master until it answers something other than
    /// `UNAVAILABLE` or a transport failure; returns that answer.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(CellClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let until = Instant::now() + CALL_DEADLINE;
        let mut next = 0;
        let mut last = Status::unavailable("no replica answered");
        while Instant::now() < until {
            let address = self.master.take().unwrap_or_else(|| {
                next = (next + 1) % self.addresses.len();
                self.addresses[next]
            });
            let Some(client) = Client::connect(address).await else { continue };
            match tokio::time::timeout(Duration::from_secs(12), call(client)).await {
                Ok(Ok(response)) => {
                    self.master = Some(address);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if status.code() == Code::Unavailable || status.code() == Code::Unknown => {
                    if let Some(redirect) = gaios_client::redirect(&status) {
                        self.master = redirect.master_address.parse().ok().filter(|a| *a != address);
                    }
                    last = status;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(status)) => {
                    self.master = Some(address);
                    return Err(status);
                }
                Err(_) => last = Status::deadline_exceeded("the call did not answer in 12 s"),
            }
        }
        Err(last)
    }

    /// The address the client last reached the master at.
    pub fn master(&self) -> Option<SocketAddr> {
        self.master
    }

    /// Starts a session.
    pub async fn create_session(&mut self) -> Session {
        let created = self
            .call(|mut c| async move { c.create_session(api::CreateSessionRequest { client_name: "test".into() }).await })
            .await
            .expect("create a session");
        Session { id: created.session_id, secret: created.session_secret }
    }

    /// Opens a node.
    pub async fn open(&mut self, session: &Session, request_number: u64, request: api::OpenRequest) -> Result<api::OpenResponse, Status> {
        let request = api::OpenRequest { header: Some(session.header(request_number)), ..request };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.open(request).await }
        })
        .await
    }

    /// Opens a file, creating it if missing; returns the handle.
    pub async fn open_file(&mut self, session: &Session, request_number: u64, path: &str) -> u64 {
        let request = api::OpenRequest { path: path.into(), create: true, ..Default::default() };
        self.open(session, request_number, request).await.expect("open a file").handle
    }

    /// Writes a file.
    pub async fn set_contents(
        &mut self,
        session: &Session,
        request_number: u64,
        handle: u64,
        contents: &[u8],
    ) -> Result<api::SetContentsResponse, Status> {
        let request = api::SetContentsRequest {
            header: Some(session.header(request_number)),
            handle,
            contents: contents.to_vec().into(),
            if_content_generation: None,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.set_contents(request).await }
        })
        .await
    }

    /// Reads a file.
    pub async fn contents(&mut self, session: &Session, handle: u64) -> Result<api::GetContentsAndStatResponse, Status> {
        let request = api::GetContentsAndStatRequest { handle: Some(session.handle(handle)) };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_contents_and_stat(request).await }
        })
        .await
    }

    /// Reads a stat.
    pub async fn stat(&mut self, session: &Session, handle: u64) -> Result<api::Stat, Status> {
        let request = api::GetStatRequest { handle: Some(session.handle(handle)) };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_stat(request).await }
        })
        .await
        .map(|r| r.stat.unwrap_or_default())
    }

    /// Takes an exclusive lock (waits up to `wait_ms` if given, else tries).
    pub async fn acquire(
        &mut self,
        session: &Session,
        request_number: u64,
        handle: u64,
        wait_ms: Option<u64>,
    ) -> Result<api::Sequencer, Status> {
        let request = api::AcquireRequest {
            header: Some(session.header(request_number)),
            handle,
            mode: api::LockMode::Exclusive as i32,
            wait_ms: wait_ms.unwrap_or(0),
        };
        let waits = wait_ms.is_some();
        self.call(|mut c| {
            let request = request.clone();
            async move { if waits { c.acquire(request).await } else { c.try_acquire(request).await } }
        })
        .await
        .map(|r| r.sequencer.unwrap_or_default())
    }

    /// Releases a lock.
    pub async fn release(&mut self, session: &Session, request_number: u64, handle: u64) -> Result<(), Status> {
        let request = api::ReleaseRequest { header: Some(session.header(request_number)), handle };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.release(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Whether a sequencer is current.
    pub async fn check_sequencer(&mut self, sequencer: &api::Sequencer) -> Result<bool, Status> {
        let request = api::CheckSequencerRequest { sequencer: Some(sequencer.clone()) };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.check_sequencer(request).await }
        })
        .await
        .map(|r| r.valid)
    }
}

/// A session as `CreateSession` returned it: its id and the secret every
/// call on it must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: u64,
    /// Its secret.
    pub secret: bytes::Bytes,
}

impl Session {
    /// The header of the session's mutating call numbered `request_number`.
    pub fn header(&self, request_number: u64) -> api::RequestHeader {
        api::RequestHeader { session_id: self.id, request_number, session_secret: self.secret.clone() }
    }

    /// Names one of the session's handles, for reads.
    pub fn handle(&self, handle: u64) -> api::HandleRef {
        api::HandleRef { session_id: self.id, handle, session_secret: self.secret.clone() }
    }

    /// A KeepAlive of the session.
    pub fn keep_alive(&self, acknowledged_event: u64) -> api::KeepAliveRequest {
        api::KeepAliveRequest { session_id: self.id, acknowledged_event, session_secret: self.secret.clone() }
    }
}

/// Keeps `session` alive from a background task until dropped: a KeepAlive
/// stream to the master, re-opened on the next master after a failover.
/// Counts the events it receives.
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
    /// Set when the cell said the session ended.
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KeepAlive {
    /// Starts keeping `session` alive.
    pub fn start(cell: &Cell, session: &Session) -> KeepAlive {
        let session = session.clone();
        let addresses: Vec<SocketAddr> = cell.members.iter().map(|m| m.client).collect();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let task = tokio::spawn(async move {
            let mut next = 0;
            let mut acknowledged = 0;
            loop {
                next = (next + 1) % addresses.len();
                let Some(mut client) = Client::connect(addresses[next]).await else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                };
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                let _ = tx.try_send(session.keep_alive(acknowledged));
                let Ok(response) = client.keep_alive(requests).await else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                };
                let mut responses = response.into_inner();
                let mut ticker = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            if tx.send(session.keep_alive(acknowledged)).await.is_err() {
                                break;
                            }
                        }
                        message = responses.message() => match message {
                            Ok(Some(answer)) => {
                                if let Some(last) = answer.events.last() {
                                    acknowledged = acknowledged.max(last.number);
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                if status.code() == Code::FailedPrecondition {
                                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                                    return;
                                }
                                break;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        KeepAlive { task, ended }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static ONE_CELL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the tests of one test binary one at a time (each starts its own
/// five-process cell): hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CELL_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The id of the master every replica of `cell` agrees on; panics with the
/// logs if there is none within [`FIRST_MASTER_DEADLINE`].
pub async fn master_of(cell: &Cell) -> u64 {
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    match wait_for_master(cell, &all, FIRST_MASTER_DEADLINE).await {
        Some((master, _)) => master,
        None => panic!("no agreed master within {FIRST_MASTER_DEADLINE:?}\n{}", cell.logs()),
    }
}
