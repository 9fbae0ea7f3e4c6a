//! Running CMD for `lock` and `elect`: its environment, passing signals on,
//! stopping it when the lock or leadership is at risk or lost, and the exit
//! code that reports how it ended.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use gaios_client::LockState;
use gaios_proto::cell::v1 as api;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::exit::{Exit, failure};

/// How long CMD may take to exit after SIGTERM before it gets SIGKILL.
/// Below the default lock-delay (15 s), so a CMD stopped at jeopardy is gone
/// before the cell can let another holder in.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// How `lock` and `elect` hold their lock while CMD runs.
#[derive(Debug, clap::Args)]
pub struct Holding {
    /// Keep CMD running while the session is in jeopardy and stop it only
    /// when the lock or leadership is lost for sure (the behaviour before
    /// jeopardy stopped CMD).
    #[arg(long)]
    pub keep_through_jeopardy: bool,
    /// If this session ends without releasing the lock (gaios or its host
    /// died, hung or was cut off), nobody gets the lock for this long, in
    /// milliseconds (at most 60000): time for requests CMD already sent to
    /// arrive before the next holder starts. Keep it above the 10 s a
    /// stopped CMD gets between SIGTERM and SIGKILL, unless CMD's services
    /// check its sequencer.
    #[arg(long, default_value_t = lock_delay_ms_default())]
    pub lock_delay_ms: u64,
}

impl Holding {
    /// The lock-delay to ask for.
    pub fn lock_delay(&self) -> Duration {
        Duration::from_millis(self.lock_delay_ms)
    }
}

fn lock_delay_ms_default() -> u64 {
    u64::try_from(gaios_client::LOCK_DELAY_DEFAULT.as_millis()).unwrap_or(u64::MAX)
}

/// The environment CMD gets: the sequencer (`path:mode:generation:instance`)
/// and the lock generation.
pub fn sequencer_env(sequencer: &api::Sequencer) -> Vec<(&'static str, String)> {
    let mode = match sequencer.mode() {
        api::LockMode::Shared => "shared",
        _ => "exclusive",
    };
    vec![
        ("GAIOS_SEQUENCER", format!("{}:{mode}:{}:{}", sequencer.path, sequencer.lock_generation, sequencer.instance)),
        ("GAIOS_LOCK_GENERATION", sequencer.lock_generation.to_string()),
    ]
}

/// Waits for `wait` unless ctrl-c comes first (then `None`).
pub async fn unless_interrupted<T>(wait: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        value = wait => Some(value),
        _ = tokio::signal::ctrl_c() => None,
    }
}

/// The error after CMD was stopped because the lock or leadership was at
/// risk or lost; `state` is where it stands now that CMD has ended.
pub fn stopped(state: LockState, what: &str) -> anyhow::Error {
    match state {
        LockState::Lost => failure(Exit::Lost, format!("lost {what} (the session expired or the node was deleted); CMD was sent SIGTERM")),
        LockState::AtRisk | LockState::Held => failure(
            Exit::AtRisk,
            format!("{what} may be lost (the session entered jeopardy: no master answered within its lease); CMD was sent SIGTERM"),
        ),
    }
}

/// A shell-like exit code for a child's status.
pub fn exit_status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(Exit::Other.code()),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(Exit::Other.code()),
        (None, None) => Exit::Other.code(),
    }
}

/// How a supervised CMD ended.
pub enum Supervised {
    /// It exited by itself (or after a signal passed on to it).
    Exited(ExitStatus),
    /// The lock or leadership was at risk or lost; CMD was terminated.
    Stopped,
}

/// CMD running as a child, waited for by a thread.
pub struct Running {
    pid: u32,
    exited: oneshot::Receiver<std::io::Result<ExitStatus>>,
}

impl Running {
    /// Starts `command` with `env` added to its environment.
    pub fn spawn(command: &[String], env: &[(&'static str, String)]) -> anyhow::Result<Running> {
        let (program, arguments) = command.split_first().ok_or_else(|| failure(Exit::Usage, "no CMD given after `--`"))?;
        let mut child = std::process::Command::new(program);
        child.args(arguments).envs(env.iter().map(|(key, value)| (*key, value))).stdin(Stdio::inherit());
        let mut child = child.spawn().map_err(|error| {
            let exit = if error.kind() == std::io::ErrorKind::NotFound { Exit::CommandNotFound } else { Exit::CannotRun };
            failure(exit, format!("cannot start {program}: {error}"))
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
    pub async fn supervise(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<Supervised> {
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
