//! The failover workload: SIGKILL (or SIGSTOP) the master/leader and time
//! how long a client that was writing before the fault takes to get its
//! first write acknowledged after it.
//!
//! Every system's client gives up a request after [`ATTEMPT_TIMEOUT`] and
//! retries (Gaios: its library's `attempt_timeout`, with the library's own
//! redirects and backoff; etcd: the client's request timeout; ZooKeeper: a
//! timeout around each request), so a paused leader costs each system the
//! same client-side wait. The clock starts when the signal was delivered
//! (the `kill` returned) and stops when the first write issued after it is
//! acknowledged. Between runs the member is restarted (or continued) and the
//! cluster must be whole and have a leader again before the next run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gaios_tests::Cell;

use crate::systems::{Conn, PeerCluster, System, VALUE_BYTES, signal};

/// How long one write attempt may take before the client retries.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between a failed attempt and the next (etcd, ZooKeeper; Gaios's
/// library backs off by itself).
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Give up on one run after this long.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the cluster has to become whole and lead again between runs.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Quiet time after the cluster is whole again, so the restarted member
/// has caught up before the next fault.
const SETTLE_QUIET: Duration = Duration::from_secs(2);

/// The fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then restart the member.
    Kill,
    /// SIGSTOP, then SIGCONT it.
    Stop,
}

impl Fault {
    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP",
        }
    }
}

/// A cluster the workload can fault.
pub enum Target<'a> {
    /// Gaios's five processes.
    Gaios(&'a mut Cell),
    /// etcd (3.4 or 3.5) or ZooKeeper.
    Peer(&'a PeerCluster),
}

impl Target<'_> {
    /// The name in tables and messages.
    fn name(&self) -> &'static str {
        match self {
            Target::Gaios(_) => "Gaios",
            Target::Peer(peer) => peer.kind.name(),
        }
    }

    fn system(&self) -> System {
        match self {
            Target::Gaios(cell) => System::gaios(cell),
            Target::Peer(peer) => peer.system(),
        }
    }

    async fn leader(&self) -> Option<usize> {
        match self {
            Target::Gaios(cell) => {
                let all: Vec<usize> = (0..cell.members.len()).collect();
                let (master, _) = gaios_tests::wait_for_master(cell, &all, Duration::from_millis(1)).await?;
                Some(cell.index_of(master))
            }
            Target::Peer(peer) => peer.leader().await,
        }
    }

    fn inject(&mut self, index: usize, fault: Fault) -> anyhow::Result<()> {
        match (self, fault) {
            (Target::Gaios(cell), Fault::Kill) => cell.kill(index),
            (Target::Gaios(cell), Fault::Stop) => cell.signal(index, libc::SIGSTOP),
            (Target::Peer(peer), fault) => {
                let pid = peer.pid(index).context("no pid for the leader")?;
                signal(pid, if fault == Fault::Kill { "KILL" } else { "STOP" })?;
            }
        }
        Ok(())
    }

    fn recover(&mut self, index: usize, fault: Fault) -> anyhow::Result<()> {
        match (self, fault) {
            (Target::Gaios(cell), Fault::Kill) => cell.restart(index),
            (Target::Gaios(cell), Fault::Stop) => cell.signal(index, libc::SIGCONT),
            (Target::Peer(peer), Fault::Kill) => peer.restart(index)?,
            (Target::Peer(peer), Fault::Stop) => signal(peer.pid(index).context("no pid")?, "CONT")?,
        }
        Ok(())
    }

    /// Waits until every member answers and agrees on one leader, twice,
    /// [`SETTLE_QUIET`] apart.
    async fn settle(&self) -> anyhow::Result<usize> {
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            if let Some(leader) = self.leader().await {
                tokio::time::sleep(SETTLE_QUIET).await;
                if self.leader().await == Some(leader) {
                    return Ok(leader);
                }
            }
            anyhow::ensure!(Instant::now() < until, "{} did not settle with a leader within {SETTLE_DEADLINE:?}", self.name());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs `runs` faults of one kind against `target` and returns the time from
/// each fault to the first acknowledged write after it.
pub async fn run(target: &mut Target<'_>, fault: Fault, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let system = target.system();
    let value = vec![b'f'; VALUE_BYTES];
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let leader = target.settle().await?;
        // A client connected, with a write done, before the fault.
        let mut conn = system
            .connect_with(1_000_000 + run, Some(ATTEMPT_TIMEOUT))
            .await
            .with_context(|| format!("connect to {}", target.name()))?;
        conn.write(&value).await.context("write before the fault")?;
        target.inject(leader, fault)?;
        let faulted = Instant::now();
        let outcome = first_write(&system, 1_000_000 + run, &mut conn, &value, faulted).await;
        target.recover(leader, fault)?;
        conn.close().await;
        let took = outcome.with_context(|| format!("{} {} run {run}", target.name(), fault.name()))?;
        eprintln!("failover: {} {} run {run}: leader {} → first write after {:.0} ms", target.name(), fault.name(), leader + 1, took.as_secs_f64() * 1e3);
        times.push(took);
    }
    Ok(times)
}

/// Writes until a write is acknowledged. A ZooKeeper session that expired
/// meanwhile (its leader was gone longer than the session timeout) is
/// replaced by a new one, as an application would.
async fn first_write(system: &System, id: usize, conn: &mut Conn, value: &[u8], faulted: Instant) -> anyhow::Result<Duration> {
    loop {
        match tokio::time::timeout(RUN_DEADLINE, conn.write(value)).await {
            Ok(Ok(())) => return Ok(faulted.elapsed()),
            Ok(Err(_)) => {
                if let Conn::ZooKeeper { client, .. } = conn
                    && client.state().is_terminated()
                    && let Ok(Ok(fresh)) = tokio::time::timeout(ATTEMPT_TIMEOUT, system.connect_with(id, Some(ATTEMPT_TIMEOUT))).await
                {
                    *conn = fresh;
                }
                if !matches!(conn, Conn::Gaios { .. }) {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            Err(_) => {}
        }
        anyhow::ensure!(faulted.elapsed() < RUN_DEADLINE, "no write acknowledged within {RUN_DEADLINE:?} of the fault");
    }
}
