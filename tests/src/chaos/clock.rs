//! Clocks that run at different rates, with libfaketime (Debian's
//! `faketime`): a replica started under it sees its wall clock and its
//! monotonic clock (the one its ticks, timers and leases use) advance
//! `rate` seconds per real second.
//!
//! - **Inside the bound.** The main run starts some replicas at rates that
//!   differ by at most [`CLOCK_DRIFT_BOUND`] from each other (the bound the
//!   project states) and runs the normal schedule: no checker may find
//!   anything.
//! - **Outside the bound** ([`out_of_bound`]): one replica's clock runs at
//!   [`OUT_OF_BOUND_RATE`] of real time, so, once master, it counts its
//!   master lease several times too long. It is made master, then isolated
//!   while a new master takes writes and readers read straight from it: the
//!   linearizability checker must report the stale reads. This scenario
//!   proves the checker bites; finding nothing is the failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;
use serde_json::json;

use super::{Recorder, lock};
use crate::rng::Rng;
use crate::linearizability::{self, Op, OpKind, OpResult, Verdict};
use crate::proxy::Network;
use crate::{Cell, REPLICAS};

/// The clock-rate drift between any two replicas that the project states
/// as its bound (2 %); the main run keeps every pair of replicas within it.
pub const CLOCK_DRIFT_BOUND: f64 = 0.02;
/// How many replicas of the main run run under libfaketime.
pub const SKEWED_REPLICAS: usize = 3;
/// The out-of-bound master's clock rate: a quarter of real time. Its
/// heartbeats (every 50 ms of its time) then come every 200 ms, still
/// within the followers' 300 ms election timeout, while it counts its
/// 200 ms of master lease for 800 ms, well past the 250 ms its acceptors
/// grant plus an election.
pub const OUT_OF_BOUND_RATE: f64 = 0.25;
/// How long the out-of-bound master stays isolated while the others elect
/// a new master and write.
const ISOLATION: Duration = Duration::from_secs(3);
/// How long one read or write of the scenario may take.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Rates for [`SKEWED_REPLICAS`] of the replicas, chosen with `rng`: one at
/// each end of a band [`CLOCK_DRIFT_BOUND`] wide around real time, the
/// others inside it, so every pair (real-time replicas included) differs
/// by at most the bound.
pub(super) fn in_bound_rates(rng: &mut Rng) -> BTreeMap<usize, f64> {
    let mut indexes: Vec<usize> = (0..REPLICAS as usize).collect();
    let mut rates = BTreeMap::new();
    let half = CLOCK_DRIFT_BOUND / 2.0;
    for n in 0..SKEWED_REPLICAS.min(indexes.len()) {
        let index = indexes.remove(rng.index(indexes.len()));
        let rate = match n {
            0 => 1.0 + half,
            1 => 1.0 - half,
            _ => 1.0 - half + CLOCK_DRIFT_BOUND * (rng.below(1_001) as f64 / 1_000.0),
        };
        rates.insert(index, rate);
    }
    rates
}

/// What the out-of-bound scenario found.
#[derive(Debug, Default)]
pub(super) struct SkewOutcome {
    /// The replica whose clock ran slow.
    pub replica: u64,
    /// Its clock rate.
    pub rate: f64,
    /// Attempts made (each: make it master, isolate it, check).
    pub attempts: u32,
    /// Attempts in which it became master.
    pub mastered: u32,
    /// Reads it answered while isolated, in the last attempt.
    pub isolated_reads: u64,
    /// Writes the new master acknowledged, in the last attempt.
    pub writes_acknowledged: u64,
    /// Reads that returned a generation older than one already
    /// acknowledged when the read began (the lease checker).
    pub stale_reads: u64,
    /// The longest such staleness: from the acknowledgement of the newer
    /// write to the start of the stale read, in milliseconds.
    pub stale_for_ms_max: u64,
    /// The linearizability checker's verdict on the last attempt.
    pub verdict: String,
    /// Whether the checker reported the violation (the expected outcome).
    pub found: bool,
    /// What went wrong in setting the scenario up, if anything.
    pub problems: Vec<String>,
}

impl SkewOutcome {
    pub(super) fn json(&self) -> serde_json::Value {
        json!({
            "replica": self.replica,
            "rate": self.rate,
            "attempts": self.attempts,
            "became_master": self.mastered,
            "isolated_master_reads": self.isolated_reads,
            "writes_acknowledged_by_new_master": self.writes_acknowledged,
            "stale_reads": self.stale_reads,
            "stale_for_ms_max": self.stale_for_ms_max,
            "linearizability": self.verdict,
            "violation_found": self.found,
            "problems": self.problems,
        })
    }
}

/// Polls the replica at `index` until `done` holds for its Status or
/// `deadline` passes.
async fn wait_status(cell: &Cell, index: usize, deadline: Duration, done: impl Fn(&api::StatusResponse) -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if crate::status(cell.members[index].client).await.is_some_and(|s| done(&s)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn running(cell: &Cell) -> Vec<usize> {
    (0..REPLICAS as usize).filter(|&index| cell.is_running(index)).collect()
}

/// Makes the replica at `slow` master. Replicas ask for pre-votes before
/// they campaign and refuse them while they hear a master, so cutting the
/// slow replica from the master no longer makes it campaign, and a slow
/// clock makes its election timeout the longest; so the network is shaped
/// into a star around it: the master isolated, the other replicas cut from
/// each other and able to reach only the slow one. None of them can gather
/// a majority of pre-votes but the slow one, which wins once its timeout
/// runs. True once every running replica follows it.
async fn make_master(cell: &Cell, network: &Network, slow: usize) -> Result<(), String> {
    let Some((master_id, _)) = crate::wait_for_master(cell, &running(cell), Duration::from_secs(15)).await else {
        return Err("no master before the attempt".into());
    };
    let slow_id = cell.members[slow].id;
    if master_id != slow_id {
        network.isolate(master_id);
        let others: Vec<u64> =
            cell.members.iter().map(|m| m.id).filter(|&id| id != master_id && id != slow_id).collect();
        for (i, &a) in others.iter().enumerate() {
            for &b in &others[i + 1..] {
                network.cut_both(a, b);
            }
        }
        let mastered =
            wait_status(cell, slow, Duration::from_secs(15), |s| s.role() == api::Role::Master && s.lease_remaining_ms > 0).await;
        network.heal();
        if !mastered {
            return Err(format!("replica {slow_id} did not win its campaign (star around it, master {master_id} isolated)"));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    match crate::wait_for_master(cell, &running(cell), Duration::from_secs(5)).await {
        Some((id, _)) if id == slow_id => Ok(()),
        other => Err(format!("replica {slow_id} did not stay master (the cell agrees on {:?})", other.map(|(id, _)| id))),
    }
}

/// Runs the out-of-bound scenario up to `attempts` times, until the
/// checker reports a violation; leaves the cell healed with every replica
/// (but `down`) running at its former rate.
pub(super) async fn out_of_bound(
    cell: &mut Cell,
    network: &Network,
    recorder: &Recorder,
    down: Option<usize>,
    attempts: u32,
    rng: &mut Rng,
) -> SkewOutcome {
    let mut outcome = SkewOutcome { rate: OUT_OF_BOUND_RATE, ..SkewOutcome::default() };
    let master = crate::wait_for_master(cell, &running(cell), Duration::from_secs(20)).await.map(|(id, _)| id);
    let candidates: Vec<usize> =
        running(cell).into_iter().filter(|&index| Some(index) != down && Some(cell.members[index].id) != master).collect();
    let Some(&slow) = rng.pick(&candidates) else {
        outcome.problems.push("no follower to slow down".into());
        return outcome;
    };
    outcome.replica = cell.members[slow].id;
    let former_rate = (cell.clock_rate(slow) != 1.0).then(|| cell.clock_rate(slow));
    cell.kill(slow);
    cell.set_clock_rate(slow, Some(OUT_OF_BOUND_RATE));
    cell.restart(slow);
    if !wait_status(cell, slow, Duration::from_secs(20), |s| s.master_id != 0 && s.applied > 0).await {
        outcome.problems.push(format!("replica {} did not rejoin at rate {OUT_OF_BOUND_RATE}", outcome.replica));
    }

    for attempt in 0..attempts {
        outcome.attempts += 1;
        if let Err(problem) = make_master(cell, network, slow).await {
            outcome.problems.push(format!("attempt {attempt}: {problem}"));
            continue;
        }
        outcome.mastered += 1;
        match isolate_and_read(cell, network, recorder, slow, attempt).await {
            Ok(found) => {
                outcome.isolated_reads = found.isolated_reads;
                outcome.writes_acknowledged = found.writes_acknowledged;
                outcome.stale_reads = found.stale_reads;
                outcome.stale_for_ms_max = found.stale_for_ms_max;
                outcome.found = matches!(found.verdict, Verdict::NotLinearizable { .. });
                outcome.verdict = match found.verdict {
                    Verdict::Linearizable => "linearizable".into(),
                    Verdict::NotLinearizable { explanation } => format!("not linearizable: {explanation}"),
                    Verdict::Unknown { reason } => format!("unknown: {reason}"),
                };
            }
            Err(problem) => outcome.problems.push(format!("attempt {attempt}: {problem}")),
        }
        network.heal();
        if outcome.found {
            break;
        }
    }

    network.heal();
    cell.kill(slow);
    cell.set_clock_rate(slow, former_rate);
    cell.restart(slow);
    outcome
}

/// What one isolation of the slow master showed.
struct Isolation {
    verdict: Verdict,
    isolated_reads: u64,
    writes_acknowledged: u64,
    stale_reads: u64,
    stale_for_ms_max: u64,
}

/// With the slow replica master: opens a fresh file, starts readers pinned
/// to it and a writer that tries only the other replicas, isolates it for
/// [`ISOLATION`], and checks the file's history.
async fn isolate_and_read(cell: &Cell, network: &Network, recorder: &Recorder, slow: usize, attempt: u32) -> Result<Isolation, String> {
    let mut raw = cell.client();
    let session = raw.create_session().await;
    let keep_alive = crate::KeepAlive::start(cell, &session);
    let path = format!("/chaos/clock-skew-{attempt}");
    let handle = raw.open_file(&session, 1, &path).await;
    let history = Arc::new(std::sync::Mutex::new(Vec::<Op>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let slow_address = cell.members[slow].client;
    let others: Vec<std::net::SocketAddr> =
        running(cell).into_iter().filter(|&index| index != slow).map(|index| cell.members[index].client).collect();

    let mut tasks = Vec::new();
    for reader in 0..2 {
        let (history, stop, session) = (Arc::clone(&history), Arc::clone(&stop), session.clone());
        let start = recorder.start_us;
        tasks.push(tokio::spawn(async move {
            let Some(channel) = super::endpoint(&slow_address.to_string()) else { return };
            let mut client = api::cell_client::CellClient::new(channel.connect_lazy());
            while !stop.load(Ordering::Relaxed) {
                let request = api::GetContentsAndStatRequest { handle: Some(session.handle(handle)) };
                let invoke = crate::monotonic_us() - start;
                if let Ok(Ok(answer)) = tokio::time::timeout(CALL_TIMEOUT, client.get_contents_and_stat(request)).await {
                    let complete = crate::monotonic_us() - start;
                    let answer = answer.into_inner();
                    let value = std::str::from_utf8(&answer.contents).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                    let generation = answer.stat.map_or(0, |s| s.content_generation);
                    let result = OpResult::Read { value, generation };
                    lock(&history).push(Op { client: reader, invoke, complete: Some(complete), kind: OpKind::Read, result });
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    {
        let (history, stop, session) = (Arc::clone(&history), Arc::clone(&stop), session.clone());
        let start = recorder.start_us;
        tasks.push(tokio::spawn(async move {
            let clients: Vec<_> = others
                .iter()
                .filter_map(|address| super::endpoint(&address.to_string()))
                .map(|channel| api::cell_client::CellClient::new(channel.connect_lazy()))
                .collect();
            let mut request_number = 10u64;
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) && !clients.is_empty() {
                request_number += 1;
                let value = 1_000 + request_number;
                let mut client = clients[next % clients.len()].clone();
                next += 1;
                let request = api::SetContentsRequest {
                    header: Some(session.header(request_number)),
                    handle,
                    contents: value.to_string().into_bytes().into(),
                    if_content_generation: None,
                };
                let invoke = crate::monotonic_us() - start;
                let (result, complete) = match tokio::time::timeout(CALL_TIMEOUT, client.set_contents(request)).await {
                    Ok(Ok(answer)) => {
                        let generation = answer.into_inner().stat.map(|s| s.content_generation);
                        (OpResult::Written { generation }, Some(crate::monotonic_us() - start))
                    }
                    // A replica that is not the master proposed nothing.
                    Ok(Err(status)) if gaios_client::redirect(&status).is_some() => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    Ok(Err(_)) | Err(_) => (OpResult::Unknown, None),
                };
                lock(&history).push(Op { client: 10, invoke, complete, kind: OpKind::Write(value), result });
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let isolated_at = recorder.now();
    network.isolate(cell.members[slow].id);
    tokio::time::sleep(ISOLATION).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    network.heal();
    drop(keep_alive);

    let history = lock(&history).clone();
    let reads_after = |op: &&Op| matches!(op.kind, OpKind::Read) && op.invoke >= isolated_at;
    let isolated_reads = history.iter().filter(reads_after).count() as u64;
    let acknowledged: Vec<(u64, u64)> = history
        .iter()
        .filter_map(|op| match (op.kind, op.result, op.complete) {
            (OpKind::Write(_), OpResult::Written { generation: Some(generation) }, Some(complete)) => Some((complete, generation)),
            _ => None,
        })
        .collect();
    let mut stale_reads = 0;
    let mut stale_for_ms_max = 0;
    for op in &history {
        let OpResult::Read { generation, .. } = op.result else { continue };
        let newer = acknowledged.iter().filter(|&&(complete, written)| complete < op.invoke && written > generation);
        if let Some(&(complete, _)) = newer.min_by_key(|&&(complete, _)| complete) {
            stale_reads += 1;
            stale_for_ms_max = stale_for_ms_max.max((op.invoke - complete) / 1_000);
        }
    }
    if acknowledged.is_empty() {
        return Err("the new master acknowledged no write while the slow master was isolated".into());
    }
    let verdict = linearizability::check((0, 1), &history, linearizability::MAX_CONFIGURATIONS_DEFAULT);
    Ok(Isolation {
        verdict,
        isolated_reads,
        writes_acknowledged: acknowledged.len() as u64,
        stale_reads,
        stale_for_ms_max,
    })
}
