//! Lock holders and election candidates as separate OS processes
//! (`gaios-chaos-worker`), so that the nemesis can pause one of them with
//! SIGSTOP for longer than its session lease, as a long GC pause or a
//! stopped VM would, and resume it with SIGCONT. A paused process cannot
//! react to anything; when it resumes it carries on where it stopped.
//!
//! A worker talks to the suite over its standard streams, one JSON object
//! per line on stdout ([`Event`]), and reads the answers to its acts, one
//! line each, on stdin; end of stdin tells it to stop. Workers time their
//! events on `CLOCK_MONOTONIC` relative to the run's start
//! ([`crate::monotonic_us`]), the clock the suite records everything on.
//!
//! The lock holders' work goes to a [`Resource`] that the suite itself
//! plays, the way a downstream service would: every act is applied to an
//! unguarded copy (the control, which accepts everything) and to a fenced
//! copy that checks the holder's sequencer with a [`Fence`] and the cell
//! (`CheckSequencer`) before accepting, one act at a time. A holder paused
//! past its session lease resumes and acts again: the control shows two
//! holders acting at once, the fenced copy refuses the stale holder.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gaios_client::{Client, Error, Fence, FenceError};
use gaios_proto::cell::v1 as api;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Leadership, Outcome, Recorder, lock};

/// The file whose exclusive lock the lock holders take.
pub const LOCK_PATH: &str = "/chaos/lock";
/// The file the candidates campaign on.
pub const ELECTION_PATH: &str = "/chaos/election";
/// Acts a holder performs on the resource per acquisition.
pub const ACTS_PER_HOLD: u32 = 4;
/// The pause between two acts of one holder.
pub const ACT_INTERVAL: Duration = Duration::from_millis(30);
/// How long a holder waits for the lock in one call.
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(3);
/// The lock-delay the lock holders ask for, explicitly, whatever the
/// library's default: zero, so that a paused holder's lock passes on as
/// soon as the cell expires its session, which is what lets the unguarded
/// control show two holders at once. (The fenced copy needs no lock-delay.)
pub const LOCK_DELAY: Duration = Duration::ZERO;
/// How long the fenced copy waits for the cell's answer to one
/// `CheckSequencer` before it refuses the act.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping waits for a worker to close its session and exit
/// before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The answer a worker reads for an act the fenced copy accepted.
const ACCEPTED: &str = "accepted";
/// The answer for an act the fenced copy refused.
const REFUSED: &str = "refused";

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Takes the exclusive lock on [`LOCK_PATH`] and acts on the resource.
    Lock,
    /// Campaigns on [`ELECTION_PATH`], leads for a while, resigns.
    Elect,
    /// Prints `CLOCK_MONOTONIC` for each line it reads (checks libfaketime).
    Clock,
}

impl Role {
    /// The role's name on the worker's command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Lock => "lock",
            Role::Elect => "elect",
            Role::Clock => "clock",
        }
    }

    /// The workload its operations are counted under.
    fn workload(self) -> &'static str {
        match self {
            Role::Lock => "fenced-locks",
            Role::Elect => "election",
            Role::Clock => "clock",
        }
    }
}

/// One line of a worker's stdout. Times are microseconds since the run's
/// start on `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An operation ended so (for the workload's counts).
    Count(Outcome),
    /// The worker holds the lock.
    Granted {
        /// Its sequencer.
        sequencer: api::Sequencer,
        /// When the grant came back.
        at_us: u64,
    },
    /// The worker acts on the resource as this holder and waits for the
    /// answer on stdin.
    Act {
        /// The sequencer it presents.
        sequencer: api::Sequencer,
    },
    /// The worker is about to release the lock.
    Released {
        /// The lock generation it held.
        generation: u64,
        /// When it began to release.
        at_us: u64,
    },
    /// The worker leads.
    Leader {
        /// The lock generation of its leadership.
        generation: u64,
        /// When its campaign returned.
        at_us: u64,
    },
    /// The worker begins to resign.
    Resigning {
        /// The lock generation of its leadership.
        generation: u64,
        /// When it began.
        at_us: u64,
    },
    /// The worker's resignation ended.
    Resigned {
        /// The lock generation of its leadership.
        generation: u64,
        /// Whether the cell acknowledged it (so the worker's session, and
        /// its lock, lasted until then).
        ok: bool,
    },
    /// The worker learnt it lost the leadership.
    Lost {
        /// The lock generation of its leadership.
        generation: u64,
        /// When it learnt it.
        at_us: u64,
    },
    /// The worker's clock.
    Clock {
        /// `CLOCK_MONOTONIC` in microseconds, as the worker sees it.
        monotonic_us: u64,
    },
}

impl Event {
    /// The event as one line of JSON (without the newline).
    pub fn to_line(&self) -> String {
        let sequencer = |s: &api::Sequencer| {
            json!({"path": s.path, "mode": s.mode, "generation": s.lock_generation, "instance": s.instance})
        };
        let value = match self {
            Event::Count(outcome) => json!({"event": "count", "outcome": outcome_name(*outcome)}),
            Event::Granted { sequencer: s, at_us } => json!({"event": "granted", "sequencer": sequencer(s), "at_us": at_us}),
            Event::Act { sequencer: s } => json!({"event": "act", "sequencer": sequencer(s)}),
            Event::Released { generation, at_us } => json!({"event": "released", "generation": generation, "at_us": at_us}),
            Event::Leader { generation, at_us } => json!({"event": "leader", "generation": generation, "at_us": at_us}),
            Event::Resigning { generation, at_us } => json!({"event": "resigning", "generation": generation, "at_us": at_us}),
            Event::Resigned { generation, ok } => json!({"event": "resigned", "generation": generation, "ok": ok}),
            Event::Lost { generation, at_us } => json!({"event": "lost", "generation": generation, "at_us": at_us}),
            Event::Clock { monotonic_us } => json!({"event": "clock", "monotonic_us": monotonic_us}),
        };
        value.to_string()
    }

    /// Parses a line written by [`Event::to_line`]; `None` for anything else
    /// (a worker's stray output is ignored, never trusted).
    pub fn parse(line: &str) -> Option<Event> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let number = |key: &str| value.get(key)?.as_u64();
        let sequencer = || {
            let s = value.get("sequencer")?;
            Some(api::Sequencer {
                path: s.get("path")?.as_str()?.to_string(),
                mode: i32::try_from(s.get("mode")?.as_i64()?).ok()?,
                lock_generation: s.get("generation")?.as_u64()?,
                instance: s.get("instance")?.as_u64()?,
            })
        };
        Some(match value.get("event")?.as_str()? {
            "count" => Event::Count(parse_outcome(value.get("outcome")?.as_str()?)?),
            "granted" => Event::Granted { sequencer: sequencer()?, at_us: number("at_us")? },
            "act" => Event::Act { sequencer: sequencer()? },
            "released" => Event::Released { generation: number("generation")?, at_us: number("at_us")? },
            "leader" => Event::Leader { generation: number("generation")?, at_us: number("at_us")? },
            "resigning" => Event::Resigning { generation: number("generation")?, at_us: number("at_us")? },
            "resigned" => Event::Resigned { generation: number("generation")?, ok: value.get("ok")?.as_bool()? },
            "lost" => Event::Lost { generation: number("generation")?, at_us: number("at_us")? },
            "clock" => Event::Clock { monotonic_us: number("monotonic_us")? },
            _ => return None,
        })
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Indeterminate => "indeterminate",
    }
}

fn parse_outcome(name: &str) -> Option<Outcome> {
    match name {
        "ok" => Some(Outcome::Ok),
        "fail" => Some(Outcome::Fail),
        "indeterminate" => Some(Outcome::Indeterminate),
        _ => None,
    }
}

/// The answer line for an act.
pub fn answer_line(accepted: bool) -> &'static str {
    if accepted { ACCEPTED } else { REFUSED }
}

/// Whether an answer line says the act was accepted.
pub fn is_accepted(line: &str) -> bool {
    line.trim() == ACCEPTED
}

// ---------------------------------------------------------------------------
// The resource.
// ---------------------------------------------------------------------------

/// One act as the resource saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Act {
    /// The lock holder (worker index).
    pub worker: usize,
    /// The lock generation of the sequencer it presented.
    pub generation: u64,
    /// When the resource began to handle it.
    pub invoked: u64,
    /// When the resource decided.
    pub completed: u64,
    /// Whether the resource accepted it.
    pub accepted: bool,
}

/// Every act, as the unguarded control and the fenced copy saw them.
#[derive(Debug, Default)]
pub(super) struct ResourceLog {
    /// The control: accepts every act.
    pub unfenced: Vec<Act>,
    /// The fenced copy: accepts an act only if the [`Fence`] and the cell
    /// say its sequencer is current.
    pub fenced: Vec<Act>,
}

/// The resource the lock holders act on; see the module docs.
pub(super) struct Resource {
    fence: Fence,
    /// The fenced copy's session with the cell; its lock also makes the
    /// fenced copy handle one act at a time, check and apply together.
    cell: tokio::sync::Mutex<Option<Client>>,
    addresses: Vec<String>,
    /// What both copies saw.
    pub log: Mutex<ResourceLog>,
}

impl Resource {
    pub(super) fn new(addresses: Vec<String>) -> Resource {
        Resource { fence: Fence::new(), cell: tokio::sync::Mutex::new(None), addresses, log: Mutex::new(ResourceLog::default()) }
    }

    /// Applies one act of `worker` presenting `sequencer` to both copies;
    /// returns whether the fenced copy accepted it.
    async fn act(&self, recorder: &Recorder, worker: usize, sequencer: &api::Sequencer) -> bool {
        let generation = sequencer.lock_generation;
        let now = recorder.now();
        lock(&self.log).unfenced.push(Act { worker, generation, invoked: now, completed: now, accepted: true });

        let mut cell = self.cell.lock().await;
        let invoked = recorder.now();
        if cell.is_none() {
            *cell = tokio::time::timeout(CHECK_TIMEOUT, Client::connect(&self.addresses, super::client_options("chaos-resource")))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let accepted = match cell.as_ref() {
            Some(client) => match tokio::time::timeout(CHECK_TIMEOUT, self.fence.check_with_cell(client, sequencer)).await {
                Ok(Ok(())) => true,
                Ok(Err(FenceError::Cell(Error::SessionExpired))) => {
                    *cell = None;
                    false
                }
                Ok(Err(_)) | Err(_) => false,
            },
            None => false,
        };
        let completed = recorder.now();
        lock(&self.log).fenced.push(Act { worker, generation, invoked, completed, accepted });
        accepted
    }

    pub(super) async fn close(&self) {
        if let Some(client) = self.cell.lock().await.take() {
            let _ = client.close().await;
        }
    }
}

/// Pairs of different holders whose accepted acts interleave: for each
/// holder (worker, generation), the span from its first accepted act to its
/// last; two spans that intersect are two holders acting at once.
pub(super) fn overlaps(acts: &[Act]) -> u64 {
    let mut spans: BTreeMap<(usize, u64), (u64, u64)> = BTreeMap::new();
    for act in acts.iter().filter(|act| act.accepted) {
        let span = spans.entry((act.worker, act.generation)).or_insert((act.invoked, act.completed));
        span.0 = span.0.min(act.invoked);
        span.1 = span.1.max(act.completed);
    }
    let mut sorted: Vec<((usize, u64), (u64, u64))> = spans.into_iter().collect();
    sorted.sort_by_key(|&(_, (start, _))| start);
    let mut active: Vec<((usize, u64), u64)> = Vec::new();
    let mut count = 0;
    for (holder, (start, end)) in sorted {
        active.retain(|&(_, active_end)| active_end > start);
        count += active.iter().filter(|(other, _)| *other != holder).count() as u64;
        active.push((holder, end));
    }
    count
}

/// Accepted acts whose holder had been superseded before the act began: a
/// newer generation was granted (as its holder reported) before `invoked`.
pub(super) fn stale(acts: &[Act], grants: &[(u64, usize, u64)]) -> u64 {
    // (granted at, highest generation granted by then)
    let mut by_time: Vec<(u64, u64)> = grants.iter().map(|&(generation, _, at)| (at, generation)).collect();
    by_time.sort_unstable();
    let mut highest = 0;
    for entry in &mut by_time {
        highest = highest.max(entry.1);
        entry.1 = highest;
    }
    acts.iter()
        .filter(|act| act.accepted)
        .filter(|act| {
            let before = by_time.partition_point(|&(at, _)| at < act.invoked);
            before > 0 && by_time[before - 1].1 > act.generation
        })
        .count() as u64
}

// ---------------------------------------------------------------------------
// The processes.
// ---------------------------------------------------------------------------

/// What the suite knows about who holds what right now, for the nemesis.
#[derive(Debug, Default)]
struct Holdings {
    /// Lock worker -> (lock generation, acts since its grant), present
    /// while it holds.
    locks: BTreeMap<usize, (u64, u32)>,
    /// Candidate -> generation (present while it leads).
    leaders: BTreeMap<usize, u64>,
}

struct Process {
    role: Role,
    index: usize,
    child: Child,
}

/// The running worker processes and the tasks that serve their streams.
pub(super) struct Workers {
    processes: Vec<Process>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    holdings: Arc<Mutex<Holdings>>,
    /// The resource the lock holders act on.
    pub resource: Arc<Resource>,
}

/// Everything a worker needs to be started.
pub(super) struct Spawn<'a> {
    pub addresses: &'a [String],
    pub epoch_us: u64,
    pub seed: u64,
    pub log_dir: &'a Path,
}

fn command(role: Role, index: usize, spawn: &Spawn<'_>) -> std::io::Result<Command> {
    let log = std::fs::File::create(spawn.log_dir.join(format!("worker-{}-{index}.log", role.name())))?;
    let mut command = Command::new(crate::binary("gaios-chaos-worker"));
    command
        .arg(role.name())
        .arg("--cell")
        .arg(spawn.addresses.join(","))
        .arg("--index")
        .arg(index.to_string())
        .arg("--epoch-us")
        .arg(spawn.epoch_us.to_string())
        .arg("--seed")
        .arg(spawn.seed.to_string())
        .env("RUST_LOG", "warn")
        .envs(super::tls_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    Ok(command)
}

impl Workers {
    /// Starts `locks` lock holders and `candidates` election candidates.
    pub(super) fn start(
        locks: usize,
        candidates: usize,
        spawn: &Spawn<'_>,
        recorder: &Arc<Recorder>,
    ) -> anyhow::Result<Workers> {
        let (stop, stop_rx) = watch::channel(false);
        let holdings = Arc::new(Mutex::new(Holdings::default()));
        let resource = Arc::new(Resource::new(spawn.addresses.to_vec()));
        let mut workers = Workers { processes: Vec::new(), tasks: Vec::new(), stop, holdings, resource };
        let roles = (0..locks).map(|i| (Role::Lock, i)).chain((0..candidates).map(|i| (Role::Elect, i)));
        for (role, index) in roles {
            // Each worker process draws from its own fork of the run's seed.
            let seed = crate::rng::Rng::new(spawn.seed).fork(&format!("{}/{index}", role.name())).next_u64();
            let mut child = command(role, index, &Spawn { seed, ..*spawn })?.spawn()?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("a worker started without its pipes");
            };
            let serve = Serve {
                role,
                index,
                recorder: Arc::clone(recorder),
                resource: Arc::clone(&workers.resource),
                holdings: Arc::clone(&workers.holdings),
            };
            workers.tasks.push(tokio::spawn(serve.run(stdout, stdin, stop_rx.clone())));
            workers.processes.push(Process { role, index, child });
        }
        Ok(workers)
    }

    /// The lock holder that holds the lock now, has acted at least once
    /// since its grant and has acts left to do, if any: (its index, its
    /// process id, its lock generation). "Left" counts one act more than
    /// the suite has seen, since one may be on its way: paused now, the
    /// holder acts again when it resumes.
    pub(super) fn acting_lock_holder(&self) -> Option<(usize, u32, u64)> {
        let holdings = lock(&self.holdings);
        let (&index, &(generation, _)) =
            holdings.locks.iter().find(|&(_, &(_, acts))| acts > 0 && acts + 1 < ACTS_PER_HOLD)?;
        Some((index, self.pid(Role::Lock, index)?, generation))
    }

    /// The candidate that leads now, if any: (its index, its process id,
    /// its lock generation).
    pub(super) fn leader(&self) -> Option<(usize, u32, u64)> {
        let holdings = lock(&self.holdings);
        let (&index, &generation) = holdings.leaders.iter().next()?;
        Some((index, self.pid(Role::Elect, index)?, generation))
    }

    /// Whether a lock holder other than `worker` acted on the resource with
    /// a generation above `generation`.
    pub(super) fn superseded_holder(&self, worker: usize, generation: u64) -> bool {
        lock(&self.resource.log).unfenced.iter().any(|act| act.worker != worker && act.generation > generation)
    }

    fn pid(&self, role: Role, index: usize) -> Option<u32> {
        self.processes.iter().find(|p| p.role == role && p.index == index)?.child.id()
    }

    /// Workers that exited before they were told to stop.
    pub(super) fn exited_early(&mut self) -> Vec<String> {
        self.processes
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{}-{} {status}", p.role.name(), p.index)),
                _ => None,
            })
            .collect()
    }

    /// Tells every worker to stop (end of stdin), waits for them to close
    /// their sessions and exit, and kills those that do not.
    pub(super) async fn stop(mut self) {
        let _ = self.stop.send(true);
        for process in &mut self.processes {
            // A worker left paused by a failed run would never exit.
            if let Some(pid) = process.child.id() {
                signal(pid, libc::SIGCONT);
            }
            if tokio::time::timeout(STOP_TIMEOUT, process.child.wait()).await.is_err() {
                let _ = process.child.kill().await;
            }
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
        self.resource.close().await;
    }
}

/// Sends `signal` to process `pid` (a worker the suite started).
pub(super) fn signal(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: `kill(2)` takes no pointers; the pid is our own child's.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Serves one worker's streams: records its events, answers its acts.
struct Serve {
    role: Role,
    index: usize,
    recorder: Arc<Recorder>,
    resource: Arc<Resource>,
    holdings: Arc<Mutex<Holdings>>,
}

impl Serve {
    async fn run(self, stdout: tokio::process::ChildStdout, stdin: ChildStdin, mut stop: watch::Receiver<bool>) {
        let mut lines = BufReader::new(stdout).lines();
        let mut stdin = Some(stdin);
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => self.handle(&line, &mut stdin).await,
                    Ok(None) | Err(_) => break,
                },
                changed = stop.changed(), if stdin.is_some() => {
                    if changed.is_err() || *stop.borrow() {
                        stdin = None; // end of stdin: the worker stops
                    }
                }
            }
        }
        // A worker that exited holds nothing the nemesis could pause.
        let mut holdings = lock(&self.holdings);
        holdings.locks.remove(&self.index);
        holdings.leaders.remove(&self.index);
    }

    /// Records how this candidate's leadership of `generation` ended.
    fn end_leadership(&self, generation: u64, end: impl FnOnce(&mut Leadership)) {
        let worker = self.index;
        if let Some(leader) = lock(&self.recorder.leaders).iter_mut().rev().find(|l| l.candidate == worker && l.generation == generation) {
            end(leader);
        }
        lock(&self.holdings).leaders.remove(&worker);
    }

    async fn handle(&self, line: &str, stdin: &mut Option<ChildStdin>) {
        let Some(event) = Event::parse(line) else { return };
        let worker = self.index;
        match event {
            Event::Count(outcome) => self.recorder.count(self.role.workload(), outcome),
            Event::Granted { sequencer, at_us } => {
                lock(&self.recorder.locks).grants.push((sequencer.lock_generation, worker, at_us));
                lock(&self.holdings).locks.insert(worker, (sequencer.lock_generation, 0));
            }
            Event::Act { sequencer } => {
                let accepted = self.resource.act(&self.recorder, worker, &sequencer).await;
                if let Some((_, acts)) = lock(&self.holdings).locks.get_mut(&worker) {
                    *acts += 1;
                }
                if let Some(pipe) = stdin.as_mut() {
                    let answer = format!("{}\n", answer_line(accepted));
                    if pipe.write_all(answer.as_bytes()).await.is_err() || pipe.flush().await.is_err() {
                        *stdin = None;
                    }
                }
            }
            Event::Released { .. } => {
                lock(&self.holdings).locks.remove(&worker);
            }
            Event::Leader { generation, at_us } => {
                lock(&self.recorder.leaders).push(Leadership {
                    generation,
                    candidate: worker,
                    started: at_us,
                    resigned: None,
                    resign_ok: None,
                    lost: None,
                });
                lock(&self.holdings).leaders.insert(worker, generation);
            }
            Event::Resigning { generation, at_us } => self.end_leadership(generation, |leader| leader.resigned = Some(at_us)),
            Event::Resigned { generation, ok } => self.end_leadership(generation, |leader| leader.resign_ok = Some(ok)),
            Event::Lost { generation, at_us } => self.end_leadership(generation, |leader| leader.lost = Some(at_us)),
            Event::Clock { .. } => {}
        }
    }
}

/// Checks that libfaketime fakes `CLOCK_MONOTONIC` for a Rust process:
/// starts a clock worker under libfaketime at `rate`, reads its clock twice
/// `span` apart in real time, and returns the rate it measured.
pub(super) async fn measure_clock_rate(rate: f64, span: Duration, log_dir: &Path) -> anyhow::Result<f64> {
    let library = crate::faketime_library()
        .ok_or_else(|| anyhow::anyhow!("libfaketime is not installed; run scripts/install-build-deps (Debian package faketime)"))?;
    let spawn = Spawn { addresses: &[], epoch_us: 0, seed: 0, log_dir };
    let mut command = command(Role::Clock, 0, &spawn)?;
    command.env("LD_PRELOAD", library).env("FAKETIME", crate::faketime_rate(rate)).env_remove("FAKETIME_DONT_FAKE_MONOTONIC");
    let mut child = command.spawn()?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("the clock worker started without its pipes");
    };
    let mut lines = BufReader::new(stdout).lines();
    let (real_first, fake_first) = read_clock(&mut stdin, &mut lines).await?;
    tokio::time::sleep(span).await;
    let (real_second, fake_second) = read_clock(&mut stdin, &mut lines).await?;
    let _ = child.kill().await;
    let real = real_second.saturating_sub(real_first) as f64;
    let fake = fake_second.saturating_sub(fake_first) as f64;
    anyhow::ensure!(real > 0.0, "no real time passed between two clock readings");
    Ok(fake / real)
}

/// Asks a clock worker for its clock: (the real time of the question, in
/// the middle of the round trip; the worker's answer).
async fn read_clock(
    stdin: &mut ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<(u64, u64)> {
    let asked = crate::monotonic_us();
    stdin.write_all(b"now\n").await?;
    stdin.flush().await?;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??;
    let answered = crate::monotonic_us();
    match line.as_deref().and_then(Event::parse) {
        Some(Event::Clock { monotonic_us }) => Ok((asked / 2 + answered / 2, monotonic_us)),
        _ => anyhow::bail!("the clock worker answered {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(worker: usize, generation: u64, at: u64, accepted: bool) -> Act {
        Act { worker, generation, invoked: at, completed: at + 1, accepted }
    }

    #[test]
    fn events_round_trip_and_garbage_is_ignored() {
        let sequencer = api::Sequencer { path: LOCK_PATH.into(), mode: 1, lock_generation: 7, instance: 3 };
        let events = [
            Event::Count(Outcome::Indeterminate),
            Event::Granted { sequencer: sequencer.clone(), at_us: 12 },
            Event::Act { sequencer },
            Event::Released { generation: 7, at_us: 13 },
            Event::Leader { generation: 9, at_us: 14 },
            Event::Resigning { generation: 9, at_us: 15 },
            Event::Resigned { generation: 9, ok: false },
            Event::Lost { generation: 9, at_us: 16 },
            Event::Clock { monotonic_us: 17 },
        ];
        for event in events {
            assert_eq!(Event::parse(&event.to_line()), Some(event));
        }
        assert_eq!(Event::parse("thread 'main' panicked"), None);
        assert_eq!(Event::parse(r#"{"event":"granted"}"#), None);
        assert!(is_accepted(answer_line(true)) && !is_accepted(answer_line(false)));
    }

    #[test]
    fn a_resumed_holder_acting_inside_the_next_holders_span_is_an_overlap() {
        // Worker 0 (generation 5) acts, is paused; worker 1 (generation 6)
        // acts twice; worker 0 resumes and acts again.
        let acts = [act(0, 5, 10, true), act(1, 6, 20, true), act(1, 6, 30, true), act(0, 5, 40, true)];
        assert_eq!(overlaps(&acts), 1);
        // The fenced copy refused the resumed act: no overlap.
        let fenced = [act(0, 5, 10, true), act(1, 6, 20, true), act(1, 6, 30, true), act(0, 5, 40, false)];
        assert_eq!(overlaps(&fenced), 0);
        // Holders one after the other never overlap.
        let sequential = [act(0, 5, 10, true), act(0, 5, 12, true), act(1, 6, 20, true), act(0, 7, 30, true)];
        assert_eq!(overlaps(&sequential), 0);
    }

    #[test]
    fn an_act_after_a_newer_grant_is_stale() {
        let grants = [(5, 0, 5), (6, 1, 15)];
        let acts = [act(0, 5, 10, true), act(1, 6, 20, true), act(0, 5, 40, true), act(0, 5, 50, false)];
        assert_eq!(stale(&acts, &grants), 1, "only the accepted act of generation 5 after 6 was granted");
        assert_eq!(stale(&acts[..2], &grants), 0);
    }
}
