//! The chaos suite's checkers: each reads what the workloads recorded and
//! counts violations of one property.

use std::collections::{BTreeMap, BTreeSet};

use gaios_client::OpenOptions;

use super::{FaultRecord, Recorder, connect, lock, workers};
use crate::linearizability::{self, Verdict};
use crate::{Cell, REPLICAS};

/// Budget of the linearizability search per file.
const SEARCH_BUDGET: usize = 5_000_000;

pub(super) fn check_registers(recorder: &Recorder) -> u64 {
    let histories = lock(&recorder.registers).clone();
    let mut bad = 0;
    for (path, history) in histories {
        match linearizability::check((0, 1), &history, SEARCH_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation } => {
                eprintln!("chaos: {path} is not linearizable: {explanation}");
                bad += 1;
            }
            Verdict::Unknown { reason } => eprintln!("chaos: {path}: linearizability unknown ({reason}); not counted"),
        }
    }
    bad
}

/// What the lock holders' resource saw; see [`super::workers`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LockFindings {
    /// Two holders granted the lock in one generation (a violation).
    pub doubled: u64,
    /// Acts the fenced copy accepted from a holder already superseded (a
    /// violation).
    pub fenced_stale: u64,
    /// Holders whose accepted acts interleave on the fenced copy (a
    /// violation).
    pub fenced_overlaps: u64,
    /// The same on the unguarded control: expected after a holder was
    /// paused past its session lease, which proves that nemesis bites.
    pub control_overlaps: u64,
    /// Acts the control accepted from a superseded holder.
    pub control_stale: u64,
    /// Acts the fenced copy refused.
    pub fenced_refused: u64,
}

pub(super) fn check_locks(recorder: &Recorder, resource: &workers::Resource) -> LockFindings {
    let grants = lock(&recorder.locks).grants.clone();
    let mut holders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for &(generation, worker, _) in &grants {
        holders.entry(generation).or_default().insert(worker);
    }
    let log = lock(&resource.log);
    LockFindings {
        doubled: holders.values().filter(|workers| workers.len() > 1).count() as u64,
        fenced_stale: workers::stale(&log.fenced, &grants),
        fenced_overlaps: workers::overlaps(&log.fenced),
        control_overlaps: workers::overlaps(&log.unfenced),
        control_stale: workers::stale(&log.unfenced, &grants),
        fenced_refused: log.fenced.iter().filter(|act| !act.accepted).count() as u64,
    }
}

/// (bad successions, leaders that overlapped). A bad succession is two
/// leaders in one lock generation, or a leader that started before its
/// predecessor began to resign although the cell then acknowledged that
/// resignation (so the predecessor's session and lock lasted until then).
/// Overlapping leaders (a leader paused past its session lease, or whose
/// session the cell expired without it noticing, keeps believing it leads
/// while the next one leads) are what the election recipe cannot prevent
/// without fencing; they are reported, not counted as violations.
pub(super) fn check_elections(recorder: &Recorder) -> (u64, u64) {
    let mut leaders = lock(&recorder.leaders).clone();
    leaders.sort_by_key(|l| l.generation);
    let mut bad = 0;
    let mut per_generation: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for leader in &leaders {
        per_generation.entry(leader.generation).or_default().insert(leader.candidate);
    }
    bad += per_generation.values().filter(|c| c.len() > 1).count() as u64;
    let mut overlapping = 0;
    for pair in leaders.windows(2) {
        let (previous, next) = (&pair[0], &pair[1]);
        let ended = previous.resigned.or(previous.lost);
        if let Some(ended) = ended
            && next.started < ended
            && next.generation > previous.generation
        {
            if previous.resigned.is_some() && previous.resign_ok == Some(true) {
                eprintln!("chaos: leader of generation {} started before generation {} resigned", next.generation, previous.generation);
                bad += 1;
            } else {
                overlapping += 1;
            }
        }
    }
    (bad, overlapping)
}

/// The names in `directory` now (empty if it cannot be listed).
async fn list(addresses: &[String], directory: &str) -> BTreeSet<String> {
    let client = connect(addresses).await;
    let present = match client.open(directory, OpenOptions::new().event_mask(0)).await {
        Ok(handle) => handle.read_dir().await.unwrap_or_default().into_iter().collect(),
        Err(_) => BTreeSet::new(),
    };
    let _ = client.close().await;
    present
}

pub(super) async fn check_ephemerals(recorder: &Recorder, addresses: &[String]) -> (u64, u64) {
    let present = list(addresses, "/chaos/eph").await;
    let ephemerals = lock(&recorder.ephemerals);
    let mut early = 0;
    for (name, &(created, ended)) in &ephemerals.nodes {
        if ephemerals.expired_early.contains(name) {
            continue;
        }
        // Absent from a listing that was complete before the session ended.
        let deleted_early = ephemerals.observations.iter().any(|(invoked, completed, names)| {
            *invoked > created && ended.is_none_or(|end| *completed < end) && !names.contains(name)
        });
        if deleted_early {
            eprintln!("chaos: ephemeral {name} vanished before its session ended");
            early += 1;
        }
    }
    let lingering = present.iter().filter(|name| ephemerals.nodes.get(*name).is_some_and(|(_, ended)| ended.is_some())).count() as u64
        + present.iter().filter(|name| !ephemerals.nodes.contains_key(*name)).count() as u64;
    (early, lingering)
}

pub(super) async fn check_set(recorder: &Recorder, addresses: &[String]) -> u64 {
    let present = list(addresses, "/chaos/set").await;
    let acknowledged = lock(&recorder.set_acknowledged);
    let lost: Vec<&String> = acknowledged.iter().filter(|name| !present.contains(*name)).collect();
    if !lost.is_empty() {
        eprintln!("chaos: acknowledged but missing: {lost:?}");
    }
    lost.len() as u64
}

/// Kills three replicas (of those running) and tries to write: no write may
/// be acknowledged.
pub(super) async fn check_three_down(cell: &mut Cell, addresses: &[String], recorder: &Recorder) -> u64 {
    let client = connect(addresses).await;
    let handle = client.open("/chaos/quorum", OpenOptions::new().create().event_mask(0)).await.ok();
    let killed: Vec<usize> = (0..REPLICAS as usize).filter(|&index| cell.is_running(index)).take(3).collect();
    for &index in &killed {
        cell.kill(index);
    }
    let started = recorder.now();
    let mut acknowledged = 0;
    if let Some(handle) = &handle {
        for attempt in 0..2 {
            if handle.set_contents(format!("without quorum {attempt}"), None).await.is_ok() {
                acknowledged += 1;
            }
        }
    }
    let ids: Vec<u64> = killed.iter().map(|&index| cell.members[index].id).collect();
    lock(&recorder.faults).push(FaultRecord {
        name: "kill-three",
        master: None,
        detail: format!("SIGKILL {ids:?}; writes must be refused"),
        start: started,
        heal: recorder.now(),
    });
    for &index in &killed {
        cell.restart(index);
    }
    drop(client);
    acknowledged
}

pub(super) fn heal_to_write_ms(recorder: &Recorder) -> Vec<u64> {
    let heals = lock(&recorder.heals).clone();
    let mut writes = lock(&recorder.writes_ok).clone();
    writes.sort_by_key(|&(_, completed)| completed);
    let mut out = Vec::new();
    for heal in heals {
        if let Some(&(_, completed)) = writes.iter().find(|&&(invoked, _)| invoked >= heal) {
            out.push((completed - heal) / 1000);
        }
    }
    out.sort_unstable();
    out
}

/// The longest time between two acknowledged writes (of any workload),
/// in milliseconds: how long the cell was unavailable at worst.
pub(super) fn longest_write_gap_ms(recorder: &Recorder) -> u64 {
    let mut completed: Vec<u64> = lock(&recorder.writes_ok).iter().map(|&(_, completed)| completed).collect();
    completed.sort_unstable();
    completed.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or(0) / 1_000
}

pub(super) fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) * p).div_ceil(100);
    sorted.get(index).copied()
}

