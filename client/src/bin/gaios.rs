//! `gaios`: the command-line tool of a Gaios cell. It reads and writes
//! nodes, runs a command under a lock or while elected leader, watches a
//! node's events and shows every replica's status.
//!
//! Each invocation (except `status`) opens one session, does its work and
//! closes the session. Errors go to stderr with an exit code that says what
//! kind of failure it was (see [`EXIT_CODES`]), so scripts can branch on it.

use std::io::{Read as _, Write as _};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gaios_client::election;
use gaios_client::{Client, Error, EventKind, LockMode, LockState, OpenOptions, Options, Stat, StatusResponse};
use gaios_proto::cell::v1 as pb;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// The exit codes, as `--help` prints them.
const EXIT_CODES: &str = "\
Exit codes:
  0    ok
  1    other error
  2    usage error (bad flags or arguments)
  3    not found (no such node; `leader`: nobody leads)
  4    lock held or precondition failed (compare-and-set mismatch, lock not
       granted within --timeout, directory not empty, not a file/directory)
  5    no master or no quorum (no replica answered in time)
  6    invalid argument or bad path
  7    already exists
  8    session expired (`lock`/`elect`: the lock or leadership was lost
       while CMD ran; CMD was sent SIGTERM)
  9    `lock`/`elect`: the session entered jeopardy while CMD ran (the lock
       or leadership may be lost); CMD was sent SIGTERM (8 instead if it was
       lost for sure by the time CMD ended)
  126  `lock`/`elect`: CMD could not be started; 127: CMD not found
  130  interrupted (ctrl-c) before CMD started
  `lock`/`elect` otherwise exit with CMD's own status (128+N if a signal N
  ended it).

Environment:
  GAIOS_CELL   the cell's client addresses (like --cell)";

/// How long CMD may take to exit after SIGTERM before it gets SIGKILL.
/// Below the default lock-delay (15 s), so a CMD stopped at jeopardy is gone
/// before the cell can let another holder in.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// How long closing the session at the end may take; a session not closed
/// by then ends by itself when its lease expires (its locks then wait out
/// their lock-delay).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// One round of waiting for a lock when no `--timeout` is given (the wait
/// is repeated until granted).
const LOCK_WAIT_ROUND: Duration = Duration::from_secs(30);

/// The command-line flags of `gaios`.
#[derive(Debug, Parser)]
#[command(
    name = "gaios",
    version,
    about = "Read and write a Gaios cell's nodes, run commands under its locks and elections, watch events.",
    after_help = EXIT_CODES
)]
struct Args {
    /// The cell's client addresses (`host:port`, comma-separated; any
    /// replicas, the master is found).
    #[arg(long, env = "GAIOS_CELL", default_value = gaios_client::LOCAL_CELL, global = true)]
    cell: String,
    /// Print one JSON value (one per line for `watch`) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How long the session survives without a master once its lease ran
    /// out, in milliseconds (after that it is expired).
    #[arg(long, default_value_t = 45_000, global = true)]
    grace_ms: u64,
    /// How long a call keeps retrying through elections before giving up
    /// with exit code 5, in milliseconds.
    #[arg(long, default_value_t = 45_000, global = true)]
    deadline_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List a directory's children, one name per line.
    #[command(after_help = EXIT_CODES)]
    Ls {
        /// The directory (absolute, e.g. `/` or `/config`).
        path: String,
    },
    /// Show a node's metadata (generations, times, size).
    #[command(after_help = EXIT_CODES)]
    Stat {
        /// The node.
        path: String,
    },
    /// Write a file's contents to stdout as raw bytes (with --json: an
    /// object with the contents as UTF-8, lossily, and the stat).
    #[command(after_help = EXIT_CODES)]
    Cat {
        /// The file.
        path: String,
    },
    /// Write a file whole, creating it if missing.
    #[command(after_help = EXIT_CODES)]
    Put {
        /// The file.
        path: String,
        /// The new contents; read from stdin when absent.
        value: Option<String>,
        /// Write only if the file exists at this content generation (exit
        /// 4 if not, 3 if the file is missing).
        #[arg(long)]
        if_generation: Option<u64>,
    },
    /// Delete a node (a directory only when empty).
    #[command(after_help = EXIT_CODES)]
    Rm {
        /// The node.
        path: String,
    },
    /// Create a directory (exit 7 if the node exists).
    #[command(after_help = EXIT_CODES)]
    Mkdir {
        /// The directory.
        path: String,
        /// Create missing parents too, and succeed if the directory exists.
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Run CMD while holding PATH's lock (the file is created if missing).
    ///
    /// CMD gets GAIOS_SEQUENCER (`path:mode:generation:instance`) and
    /// GAIOS_LOCK_GENERATION in its environment; hand the sequencer to
    /// services that can reject stale holders. The lock is released when
    /// CMD exits and gaios exits with CMD's status. When the session enters
    /// jeopardy (no master answered within the lease: the lock may be lost,
    /// and the cell may soon give it to another holder) CMD gets SIGTERM
    /// (SIGKILL 10 s later) and gaios exits 9; if the lock is lost for sure
    /// (the session expired or the file was deleted) it exits 8. With
    /// --keep-through-jeopardy CMD keeps running through jeopardy and is
    /// stopped only when the lock is lost (up to --grace-ms later; another
    /// holder may get the lock meanwhile, which is what the sequencer is
    /// for). Ctrl-c and SIGTERM are passed on to CMD.
    #[command(after_help = EXIT_CODES)]
    Lock {
        /// The lock file.
        path: String,
        /// Take the lock shared (many holders, no exclusive one).
        #[arg(long)]
        shared: bool,
        /// Give up (exit 4) if the lock is not granted within this many
        /// seconds; 0 tries once. Without it, wait as long as it takes.
        #[arg(long)]
        timeout: Option<f64>,
        #[command(flatten)]
        holding: Holding,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Campaign for leadership of PATH and run CMD while leader.
    ///
    /// Waits until elected, publishes VALUE (read it with `gaios leader`),
    /// runs CMD with GAIOS_SEQUENCER and GAIOS_LOCK_GENERATION set, resigns
    /// when CMD exits and exits with CMD's status. When the session enters
    /// jeopardy (leadership may be lost; another candidate may lead soon)
    /// CMD gets SIGTERM and gaios exits 9, or 8 if leadership is lost for
    /// sure (the session expired or the file was deleted).
    /// --keep-through-jeopardy keeps CMD running until leadership is lost.
    #[command(after_help = EXIT_CODES)]
    Elect {
        /// The election file (created if missing).
        path: String,
        /// What to publish while leader (an address, a name).
        value: String,
        #[command(flatten)]
        holding: Holding,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print the current leader's value of an election (exit 3 if nobody
    /// leads).
    #[command(after_help = EXIT_CODES)]
    Leader {
        /// The election file.
        path: String,
    },
    /// Print a node's events as they happen, one line each
    /// (`<number> <kind> <path>`), until ctrl-c or --count events. Stops
    /// after `handle_invalid` (the node was deleted).
    #[command(after_help = EXIT_CODES)]
    Watch {
        /// The node.
        path: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Show every replica's status: role, master, ballot, slots, master
    /// lease, sessions, nodes and locks. Needs no session; exits 5 when no
    /// replica answers or none is master.
    #[command(after_help = EXIT_CODES)]
    Status,
}

/// How `lock` and `elect` hold their lock while CMD runs.
#[derive(Debug, clap::Args)]
struct Holding {
    /// Keep CMD running while the session is in jeopardy and stop it only
    /// when the lock or leadership is lost for sure (the behaviour before
    /// jeopardy stopped CMD).
    #[arg(long)]
    keep_through_jeopardy: bool,
    /// If this session ends without releasing the lock (gaios or its host
    /// died, hung or was cut off), nobody gets the lock for this long, in
    /// milliseconds (at most 60000): time for requests CMD already sent to
    /// arrive before the next holder starts. Keep it above the 10 s a
    /// stopped CMD gets between SIGTERM and SIGKILL, unless CMD's services
    /// check its sequencer.
    #[arg(long, default_value_t = lock_delay_ms_default())]
    lock_delay_ms: u64,
}

impl Holding {
    fn lock_delay(&self) -> Duration {
        Duration::from_millis(self.lock_delay_ms)
    }
}

fn lock_delay_ms_default() -> u64 {
    u64::try_from(gaios_client::LOCK_DELAY_DEFAULT.as_millis()).unwrap_or(u64::MAX)
}

/// A failure with its own exit code (not an error of the library).
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn failure(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure { code, message: message.into() })
}

/// The exit code of a library error.
fn code_of(error: &Error) -> u8 {
    match error {
        Error::NotFound(_) => 3,
        Error::LockHeld(_) | Error::FailedPrecondition(_) | Error::Timeout(_) => 4,
        Error::NoMaster(_) => 5,
        Error::InvalidArgument(_) | Error::BadAddress(_) => 6,
        Error::AlreadyExists(_) => 7,
        Error::SessionExpired => 8,
        _ => 1,
    }
}

/// The exit code of an error: the first cause that names one, else 1.
fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return failure.code;
        }
        if let Some(error) = cause.downcast_ref::<Error>() {
            return code_of(error);
        }
    }
    1
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("gaios: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Runs the command; returns the exit code on success (not always 0:
/// `lock` and `elect` return CMD's status).
async fn run(args: Args) -> anyhow::Result<u8> {
    let cell: Vec<String> =
        args.cell.split(',').map(str::trim).filter(|address| !address.is_empty()).map(String::from).collect();
    if cell.is_empty() {
        return Err(failure(6, "--cell names no address"));
    }
    if let Command::Status = args.command {
        return status(&cell, args.json).await;
    }
    // Read stdin before connecting, so a slow writer does not hold a session.
    let stdin_value = match &args.command {
        Command::Put { value: None, .. } => {
            let mut buffer = Vec::new();
            std::io::stdin().read_to_end(&mut buffer).context("cannot read the value from stdin")?;
            Some(buffer)
        }
        _ => None,
    };
    let options = Options {
        grace_period: Duration::from_millis(args.grace_ms),
        call_deadline: Duration::from_millis(args.deadline_ms),
        client_name: format!("gaios {}", command_name(&args.command)),
        ..Options::default()
    };
    let client = Client::connect(&cell, options).await.with_context(|| format!("cannot start a session with the cell at {}", cell.join(",")))?;
    let output = Output { json: args.json };
    let result = match args.command {
        Command::Ls { path } => ls(&client, &path, output).await,
        Command::Stat { path } => stat(&client, &path, output).await,
        Command::Cat { path } => cat(&client, &path, output).await,
        Command::Put { path, value, if_generation } => {
            let value = value.map(String::into_bytes).or(stdin_value).unwrap_or_default();
            put(&client, &path, value, if_generation, output).await
        }
        Command::Rm { path } => rm(&client, &path, output).await,
        Command::Mkdir { path, parents } => mkdir(&client, &path, parents, output).await,
        Command::Lock { path, shared, timeout, holding, command } => lock(&client, &path, shared, timeout, &holding, &command).await,
        Command::Elect { path, value, holding, command } => elect(&client, &path, value, &holding, &command).await,
        Command::Leader { path } => leader(&client, &path, output).await,
        Command::Watch { path, count } => watch(&client, &path, count, output).await,
        Command::Status => unreachable!("answered without a session"),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, client.close()).await;
    result
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Ls { .. } => "ls",
        Command::Stat { .. } => "stat",
        Command::Cat { .. } => "cat",
        Command::Put { .. } => "put",
        Command::Rm { .. } => "rm",
        Command::Mkdir { .. } => "mkdir",
        Command::Lock { .. } => "lock",
        Command::Elect { .. } => "elect",
        Command::Leader { .. } => "leader",
        Command::Watch { .. } => "watch",
        Command::Status => "status",
    }
}

/// Where results go: text or JSON on stdout.
#[derive(Debug, Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn value(self, value: &Value) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, value).context("cannot write to stdout")?;
        writeln!(stdout).context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")
    }

    fn line(self, line: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")
    }
}

fn kind_name(stat: &Stat) -> &'static str {
    match stat.kind() {
        pb::NodeKind::File => "file",
        pb::NodeKind::Directory => "directory",
        pb::NodeKind::Unspecified => "unknown",
    }
}

fn stat_json(stat: &Stat) -> Value {
    json!({
        "instance": stat.instance,
        "kind": kind_name(stat),
        "ephemeral_owner": stat.ephemeral_owner,
        "content_generation": stat.content_generation,
        "lock_generation": stat.lock_generation,
        "acl_generation": stat.acl_generation,
        "checksum": stat.checksum,
        "created_ms": stat.created_ms,
        "modified_ms": stat.modified_ms,
        "contents_bytes": stat.contents_bytes,
        "children": stat.children,
    })
}

/// Opens `path` without creating it and without events.
async fn open_existing(client: &Client, path: &str) -> anyhow::Result<gaios_client::Handle> {
    client.open(path, OpenOptions::new().event_mask(0)).await.with_context(|| format!("cannot open {path}"))
}

async fn ls(client: &Client, path: &str, output: Output) -> anyhow::Result<u8> {
    let handle = open_existing(client, path).await?;
    let mut names = handle.read_dir().await.with_context(|| format!("cannot list {path}"))?;
    names.sort();
    if output.json {
        output.value(&json!({ "path": path, "children": names }))?;
    } else {
        for name in &names {
            output.line(name)?;
        }
    }
    Ok(0)
}

async fn stat(client: &Client, path: &str, output: Output) -> anyhow::Result<u8> {
    let handle = open_existing(client, path).await?;
    let stat = handle.stat().await.with_context(|| format!("cannot stat {path}"))?;
    if output.json {
        output.value(&json!({ "path": path, "stat": stat_json(&stat) }))?;
    } else {
        let owner = if stat.ephemeral_owner == 0 { "none (permanent)".to_string() } else { format!("session {}", stat.ephemeral_owner) };
        let lines = [
            format!("path:               {path}"),
            format!("kind:               {}", kind_name(&stat)),
            format!("instance:           {}", stat.instance),
            format!("content generation: {}", stat.content_generation),
            format!("lock generation:    {}", stat.lock_generation),
            format!("acl generation:     {}", stat.acl_generation),
            format!("contents bytes:     {}", stat.contents_bytes),
            format!("children:           {}", stat.children),
            format!("checksum:           {:016x}", stat.checksum),
            format!("created ms:         {}", stat.created_ms),
            format!("modified ms:        {}", stat.modified_ms),
            format!("ephemeral owner:    {owner}"),
        ];
        output.line(&lines.join("\n"))?;
    }
    Ok(0)
}

async fn cat(client: &Client, path: &str, output: Output) -> anyhow::Result<u8> {
    let handle = open_existing(client, path).await?;
    let (contents, stat) = handle.contents().await.with_context(|| format!("cannot read {path}"))?;
    if output.json {
        let text = String::from_utf8_lossy(&contents);
        output.value(&json!({ "path": path, "contents": text, "stat": stat_json(&stat) }))?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&contents).and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    }
    Ok(0)
}

async fn put(client: &Client, path: &str, value: Vec<u8>, if_generation: Option<u64>, output: Output) -> anyhow::Result<u8> {
    let stat = match if_generation {
        Some(generation) => {
            let handle = open_existing(client, path).await?;
            handle.set_contents(value, Some(generation)).await.with_context(|| format!("cannot write {path}"))?
        }
        None => {
            // A new file gets the value at creation: one write, generation 1.
            let options = OpenOptions::new().create().contents(value.clone()).event_mask(0);
            let handle = client.open(path, options).await.with_context(|| format!("cannot open {path}"))?;
            if handle.created() {
                handle.stat().await.with_context(|| format!("cannot stat {path}"))?
            } else {
                handle.set_contents(value, None).await.with_context(|| format!("cannot write {path}"))?
            }
        }
    };
    if output.json {
        output.value(&json!({ "path": path, "stat": stat_json(&stat) }))?;
    }
    Ok(0)
}

async fn rm(client: &Client, path: &str, output: Output) -> anyhow::Result<u8> {
    let handle = open_existing(client, path).await?;
    handle.delete().await.with_context(|| format!("cannot delete {path}"))?;
    if output.json {
        output.value(&json!({ "path": path, "deleted": true }))?;
    }
    Ok(0)
}

async fn mkdir(client: &Client, path: &str, parents: bool, output: Output) -> anyhow::Result<u8> {
    let created = if parents && path.starts_with('/') {
        // Every prefix, each created if missing; the last must end up a
        // directory.
        let mut prefix = String::new();
        let mut created = false;
        let mut last = None;
        // Empty components are kept so that the cell refuses `//` as usual.
        for part in path.split('/').skip(1) {
            prefix.push('/');
            prefix.push_str(part);
            let options = OpenOptions::new().create().directory().event_mask(0);
            let handle = client.open(&prefix, options).await.with_context(|| format!("cannot create {prefix}"))?;
            created = handle.created();
            last = Some(handle.clone());
            let _ = handle.close().await;
        }
        if let Some(handle) = last.filter(|handle| !handle.created()) {
            let stat = open_existing(client, handle.path()).await?.stat().await.with_context(|| format!("cannot stat {path}"))?;
            if stat.kind() != pb::NodeKind::Directory {
                return Err(failure(7, format!("{path} exists and is not a directory")));
            }
        }
        created
    } else {
        let options = OpenOptions::new().create_new().directory().event_mask(0);
        client.open(path, options).await.with_context(|| format!("cannot create {path}"))?;
        true
    };
    if output.json {
        output.value(&json!({ "path": path, "created": created }))?;
    }
    Ok(0)
}

async fn leader(client: &Client, path: &str, output: Output) -> anyhow::Result<u8> {
    let value = election::leader(client, path).await.with_context(|| format!("cannot read the leader of {path}"))?;
    if output.json {
        let leader = value.as_ref().map(|value| String::from_utf8_lossy(value).into_owned());
        output.value(&json!({ "path": path, "leader": leader }))?;
    }
    let Some(value) = value else {
        return Err(failure(3, format!("no leader of {path}")));
    };
    if !output.json {
        output.line(&String::from_utf8_lossy(&value))?;
    }
    Ok(0)
}

fn event_kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ContentsModified => "contents_modified",
        EventKind::ChildAdded => "child_added",
        EventKind::ChildRemoved => "child_removed",
        EventKind::ChildModified => "child_modified",
        EventKind::LockAcquired => "lock_acquired",
        EventKind::ConflictingLockRequest => "conflicting_lock_request",
        EventKind::HandleInvalid => "handle_invalid",
        EventKind::MasterFailover => "master_failover",
        EventKind::Missed { .. } => "missed",
    }
}

async fn watch(client: &Client, path: &str, count: Option<u64>, output: Output) -> anyhow::Result<u8> {
    use tokio_stream::StreamExt as _;
    let handle = client.open(path, OpenOptions::new()).await.with_context(|| format!("cannot open {path}"))?;
    // The library's stream re-validates the handle after a master failover.
    let mut events = handle.events();
    eprintln!("gaios: watching {path}; ctrl-c stops");
    let mut seen = 0u64;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    while count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            _ = &mut interrupt => return Ok(0),
            event = events.next() => match event {
                Some(event) => event,
                // The stream ends when the session expires.
                None => return Err(anyhow::Error::new(Error::SessionExpired).context(format!("stopped watching {path}"))),
            },
        };
        seen += 1;
        let kind = event_kind_name(&event.kind);
        if output.json {
            let mut value = json!({ "number": event.number, "kind": kind, "path": event.path });
            if let EventKind::Missed { count } = event.kind {
                value["count"] = json!(count);
            }
            output.value(&value)?;
        } else {
            let shown = if event.path.is_empty() { "-" } else { &event.path };
            match event.kind {
                EventKind::Missed { count } => output.line(&format!("{} {kind} {shown} count={count}", event.number))?,
                _ => output.line(&format!("{} {kind} {shown}", event.number))?,
            }
        }
        if event.kind == EventKind::HandleInvalid && event.handle == handle.id() {
            break;
        }
    }
    Ok(0)
}

fn sequencer_env(sequencer: &pb::Sequencer) -> Vec<(&'static str, String)> {
    let mode = match sequencer.mode() {
        pb::LockMode::Shared => "shared",
        _ => "exclusive",
    };
    vec![
        ("GAIOS_SEQUENCER", format!("{}:{mode}:{}:{}", sequencer.path, sequencer.lock_generation, sequencer.instance)),
        ("GAIOS_LOCK_GENERATION", sequencer.lock_generation.to_string()),
    ]
}

/// Waits for `wait` unless ctrl-c comes first (then `None`).
async fn unless_interrupted<T>(wait: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        value = wait => Some(value),
        _ = tokio::signal::ctrl_c() => None,
    }
}

async fn lock(client: &Client, path: &str, shared: bool, timeout: Option<f64>, holding: &Holding, command: &[String]) -> anyhow::Result<u8> {
    let mode = if shared { LockMode::Shared } else { LockMode::Exclusive };
    let timeout = match timeout {
        Some(seconds) if !seconds.is_finite() || seconds < 0.0 => {
            return Err(failure(6, format!("--timeout {seconds} is not a number of seconds")));
        }
        Some(seconds) => Some(Duration::from_secs_f64(seconds)),
        None => None,
    };
    let acquired = unless_interrupted(async {
        let options = OpenOptions::new().create().event_mask(0).lock_delay(holding.lock_delay());
        let handle = client.open(path, options).await.with_context(|| format!("cannot open {path}"))?;
        let lock = match timeout {
            Some(wait) if wait.is_zero() => handle.try_acquire(mode).await,
            Some(wait) => handle.acquire(mode, wait).await,
            None => loop {
                match handle.acquire(mode, LOCK_WAIT_ROUND).await {
                    Err(Error::Timeout(_)) => continue,
                    other => break other,
                }
            },
        };
        lock.with_context(|| format!("cannot lock {path}"))
    })
    .await;
    let Some(lock) = acquired else {
        eprintln!("gaios: interrupted while waiting for the lock on {path}");
        return Ok(130);
    };
    let lock = lock?;
    let running = Running::spawn(command, &sequencer_env(lock.sequencer()))?;
    let stop = async {
        if holding.keep_through_jeopardy { lock.lost().await } else { lock.at_risk().await }
    };
    match running.supervise(stop).await? {
        Supervised::Exited(status) => {
            let _ = lock.release().await;
            Ok(exit_status_code(status))
        }
        Supervised::Stopped => Err(stopped(lock.state(), &format!("the lock on {path}"))),
    }
}

async fn elect(client: &Client, path: &str, value: String, holding: &Holding, command: &[String]) -> anyhow::Result<u8> {
    let campaign = election::campaign_with_lock_delay(client, path, value, holding.lock_delay());
    let Some(leadership) = unless_interrupted(campaign).await else {
        eprintln!("gaios: interrupted while campaigning for {path}");
        return Ok(130);
    };
    let leadership = leadership.with_context(|| format!("cannot campaign for {path}"))?;
    let running = Running::spawn(command, &sequencer_env(leadership.sequencer()))?;
    let stop = async {
        if holding.keep_through_jeopardy { leadership.lost().await } else { leadership.at_risk().await }
    };
    match running.supervise(stop).await? {
        Supervised::Exited(status) => {
            if let Err(error) = leadership.resign().await {
                eprintln!("gaios: cannot resign leadership of {path} (the session's end releases it): {error}");
            }
            Ok(exit_status_code(status))
        }
        Supervised::Stopped => Err(stopped(leadership.state(), &format!("leadership of {path}"))),
    }
}

/// The error after CMD was stopped because the lock or leadership was at
/// risk or lost; `state` is where it stands now that CMD has ended.
fn stopped(state: LockState, what: &str) -> anyhow::Error {
    match state {
        LockState::Lost => failure(8, format!("lost {what} (the session expired or the node was deleted); CMD was sent SIGTERM")),
        LockState::AtRisk | LockState::Held => failure(
            9,
            format!("{what} may be lost (the session entered jeopardy: no master answered within its lease); CMD was sent SIGTERM"),
        ),
    }
}

/// A shell-like exit code for a child's status.
fn exit_status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// How a supervised CMD ended.
enum Supervised {
    /// It exited by itself (or after a signal passed on to it).
    Exited(ExitStatus),
    /// The lock or leadership was at risk or lost; CMD was terminated.
    Stopped,
}

/// CMD running as a child, waited for by a thread.
struct Running {
    pid: u32,
    exited: oneshot::Receiver<std::io::Result<ExitStatus>>,
}

impl Running {
    fn spawn(command: &[String], env: &[(&'static str, String)]) -> anyhow::Result<Running> {
        let (program, arguments) = command.split_first().ok_or_else(|| failure(2, "no CMD given after `--`"))?;
        let mut child = std::process::Command::new(program);
        child.args(arguments).envs(env.iter().map(|(key, value)| (*key, value))).stdin(Stdio::inherit());
        let mut child = child.spawn().map_err(|error| {
            let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            failure(code, format!("cannot start {program}: {error}"))
        })?;
        let pid = child.id();
        let (tx, exited) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Ok(Running { pid, exited })
    }

    /// Sends `signal` (a name `kill -s` knows) to the child. The `kill`
    /// tool, because this crate has no libc binding.
    fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for the child to exit, passing on ctrl-c and SIGTERM; if
    /// `stop` resolves first, terminates the child (SIGTERM, then SIGKILL
    /// after [`TERMINATE_GRACE`]).
    async fn supervise(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<Supervised> {
        let mut interrupts = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminations = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                status = &mut self.exited => {
                    let status = status.context("lost track of CMD")?.context("cannot wait for CMD")?;
                    return Ok(Supervised::Exited(status));
                }
                _ = interrupts.recv() => self.signal("INT"),
                _ = terminations.recv() => self.signal("TERM"),
                () = &mut stop => break,
            }
        }
        self.signal("TERM");
        if tokio::time::timeout(TERMINATE_GRACE, &mut self.exited).await.is_err() {
            self.signal("KILL");
            let _ = (&mut self.exited).await;
        }
        Ok(Supervised::Stopped)
    }
}

fn role_name(status: &StatusResponse) -> &'static str {
    match status.role() {
        pb::Role::Master => "master",
        pb::Role::Candidate => "candidate",
        pb::Role::Follower => "follower",
        pb::Role::Unspecified => "unknown",
    }
}

fn ballot_text(ballot: Option<&pb::Ballot>) -> String {
    ballot.map_or_else(|| "-".to_string(), |b| format!("{}.{}", b.round, b.replica))
}

fn ballot_json(ballot: Option<&pb::Ballot>) -> Value {
    ballot.map_or(Value::Null, |b| json!({ "round": b.round, "replica": b.replica }))
}

async fn status(cell: &[String], json_output: bool) -> anyhow::Result<u8> {
    // Ask every replica at once (each may take a second not to answer).
    let mut asks = tokio::task::JoinSet::new();
    for (index, address) in cell.iter().enumerate() {
        let address = address.clone();
        asks.spawn(async move { (index, gaios_client::cell_status(std::slice::from_ref(&address)).await.pop()) });
    }
    let mut answers: Vec<Option<StatusResponse>> = vec![None; cell.len()];
    while let Some(answer) = asks.join_next().await {
        let (index, status) = answer.context("a status request failed")?;
        answers[index] = status;
    }
    let output = Output { json: json_output };
    if json_output {
        let rows: Vec<Value> = cell
            .iter()
            .zip(&answers)
            .map(|(address, status)| match status {
                None => json!({ "address": address, "answered": false }),
                Some(s) => json!({
                    "address": address,
                    "answered": true,
                    "id": s.id,
                    "role": role_name(s),
                    "master_id": s.master_id,
                    "master_address": s.master_client_address,
                    "promised": ballot_json(s.promised.as_ref()),
                    "own_ballot": ballot_json(s.own_ballot.as_ref()),
                    "chosen_through": s.chosen_through,
                    "applied": s.applied,
                    "log_start": s.log_start,
                    "snapshot_slot": s.snapshot_slot,
                    "lease_remaining_ms": s.lease_remaining_ms,
                    "sessions": s.sessions,
                    "nodes": s.nodes,
                    "locks_held": s.locks_held,
                    "inbox_dropped": s.inbox_dropped,
                    "cell_id": s.cell_id,
                }),
            })
            .collect();
        output.value(&Value::Array(rows))?;
    } else {
        let header = ["ID", "ADDRESS", "ROLE", "MASTER", "BALLOT", "CHOSEN", "APPLIED", "LEASE_MS", "SESSIONS", "NODES", "LOCKS"];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
        for (address, status) in cell.iter().zip(&answers) {
            rows.push(match status {
                None => vec!["?".into(), address.clone(), "no answer".into()],
                Some(s) => vec![
                    s.id.to_string(),
                    address.clone(),
                    role_name(s).into(),
                    if s.master_id == 0 { "-".into() } else { s.master_id.to_string() },
                    ballot_text(s.promised.as_ref()),
                    s.chosen_through.to_string(),
                    s.applied.to_string(),
                    s.lease_remaining_ms.to_string(),
                    s.sessions.to_string(),
                    s.nodes.to_string(),
                    s.locks_held.to_string(),
                ],
            });
        }
        let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().filter_map(|row| row.get(i)).map(String::len).max().unwrap_or(0)).collect();
        for row in &rows {
            let cells: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<width$}", width = widths[i])).collect();
            output.line(cells.join("  ").trim_end())?;
        }
    }
    let answered: Vec<&StatusResponse> = answers.iter().flatten().collect();
    if answered.is_empty() {
        return Err(failure(5, format!("no replica answered at {}", cell.join(","))));
    }
    if !answered.iter().any(|s| s.role() == pb::Role::Master) {
        return Err(failure(5, "no replica says it is master"));
    }
    Ok(0)
}
