//! The chaos suite's checkers: each reads what the workloads recorded and
//! counts violations of one property.
//!
//! Each checker is a pure function over a history (and, for the ephemerals
//! and the unique set, the directory listing the cell gave at the end), so
//! its unit tests below feed it known-bad and known-good histories; the
//! `check_*` wrappers take the history from the [`Recorder`] (and list the
//! directory from the live cell) and call it.

use std::collections::{BTreeMap, BTreeSet};

use gaios_client::OpenOptions;

use super::{Ephemerals, FaultRecord, Leadership, Recorder, connect, lock, workers};
use crate::linearizability::{self, Op, Verdict};
use crate::{Cell, REPLICAS};

/// Budget of the linearizability search per file.
const SEARCH_BUDGET: usize = 5_000_000;

pub(super) fn check_registers(recorder: &Recorder) -> u64 {
    let histories = lock(&recorder.registers).clone();
    non_linearizable(&histories).len() as u64
}

/// The register files (each starting empty: value 0, generation 1) whose
/// history is not linearizable. A file whose search ran out of budget is
/// reported on stderr and not counted.
pub(super) fn non_linearizable(histories: &BTreeMap<String, Vec<Op>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, history) in histories {
        match linearizability::check((0, 1), history, SEARCH_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation } => {
                eprintln!("chaos: {path} is not linearizable: {explanation}");
                bad.push(path.clone());
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
    lock_findings(&grants, &lock(&resource.log))
}

/// What the lock grants (generation, worker, granted at) as the holders
/// reported them, and the acts on both copies of the resource, show.
pub(super) fn lock_findings(grants: &[(u64, usize, u64)], log: &workers::ResourceLog) -> LockFindings {
    let mut holders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for &(generation, worker, _) in grants {
        holders.entry(generation).or_default().insert(worker);
    }
    LockFindings {
        doubled: holders.values().filter(|workers| workers.len() > 1).count() as u64,
        fenced_stale: workers::stale(&log.fenced, grants),
        fenced_overlaps: workers::overlaps(&log.fenced),
        control_overlaps: workers::overlaps(&log.unfenced),
        control_stale: workers::stale(&log.unfenced, grants),
        fenced_refused: log.fenced.iter().filter(|act| !act.accepted).count() as u64,
    }
}

/// What the election checker found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ElectionFindings {
    /// Bad successions (violations): two leaders in one lock generation,
    /// or a leader that started before its predecessor began to resign
    /// although the cell then acknowledged that resignation (so the
    /// predecessor's session and lock lasted until then).
    pub bad_successions: u64,
    /// Leaders that overlapped: a leader paused past its session lease, or
    /// whose session the cell expired without it noticing, keeps believing
    /// it leads while the next one leads. The election recipe cannot
    /// prevent that without fencing; reported, not counted as violations.
    pub overlapping: u64,
}

pub(super) fn check_elections(recorder: &Recorder) -> ElectionFindings {
    election_findings(&lock(&recorder.leaders))
}

/// Judges the leaderships the candidates reported; see [`ElectionFindings`].
pub(super) fn election_findings(leaders: &[Leadership]) -> ElectionFindings {
    let mut leaders = leaders.to_vec();
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
    ElectionFindings { bad_successions: bad, overlapping }
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

/// What the ephemerals checker found, by node name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct EphemeralFindings {
    /// Nodes absent from a listing that was complete while their session
    /// was still open (and the cell had not expired it).
    pub deleted_early: Vec<String>,
    /// Nodes still present at the end although their session ended, and
    /// nodes present that no workload created.
    pub lingering: Vec<String>,
}

pub(super) async fn check_ephemerals(recorder: &Recorder, addresses: &[String]) -> EphemeralFindings {
    let present = list(addresses, "/chaos/eph").await;
    ephemeral_findings(&lock(&recorder.ephemerals), &present)
}

/// Judges the ephemerals' history against `present`, the directory's
/// listing once every session had time to end.
pub(super) fn ephemeral_findings(ephemerals: &Ephemerals, present: &BTreeSet<String>) -> EphemeralFindings {
    let mut early = Vec::new();
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
            early.push(name.clone());
        }
    }
    let ended = |name: &String| ephemerals.nodes.get(name).is_some_and(|(_, ended)| ended.is_some());
    let unknown = |name: &String| !ephemerals.nodes.contains_key(name);
    let lingering: Vec<String> = present.iter().filter(|name| ended(name) || unknown(name)).cloned().collect();
    if !lingering.is_empty() {
        eprintln!("chaos: ephemerals present after their session ended (or never created): {lingering:?}");
    }
    EphemeralFindings { deleted_early: early, lingering }
}

pub(super) async fn check_set(recorder: &Recorder, addresses: &[String]) -> u64 {
    let present = list(addresses, "/chaos/set").await;
    lost_from_set(&lock(&recorder.set_acknowledged), &present).len() as u64
}

/// The acknowledged members of the unique-value set missing from
/// `present`, its listing at the end.
pub(super) fn lost_from_set(acknowledged: &BTreeSet<String>, present: &BTreeSet<String>) -> Vec<String> {
    let lost: Vec<String> = acknowledged.iter().filter(|name| !present.contains(*name)).cloned().collect();
    if !lost.is_empty() {
        eprintln!("chaos: acknowledged but missing: {lost:?}");
    }
    lost
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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::workers::{Act, ResourceLog};
    use crate::linearizability::{OpKind, OpResult};

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn op(client: usize, invoke: u64, complete: u64, kind: OpKind, result: OpResult) -> Op {
        Op { client, invoke, complete: Some(complete), kind, result }
    }

    #[test]
    fn a_read_of_the_overwritten_value_makes_its_file_non_linearizable() {
        let write = op(0, 0, 10, OpKind::Write(5), OpResult::Written { generation: Some(2) });
        let fresh = op(1, 20, 30, OpKind::Read, OpResult::Read { value: 5, generation: 2 });
        let stale = op(1, 20, 30, OpKind::Read, OpResult::Read { value: 0, generation: 1 });
        let mut histories = BTreeMap::new();
        histories.insert("/chaos/r0-0".to_string(), vec![write, fresh]);
        assert!(non_linearizable(&histories).is_empty(), "a read after the write saw it");
        histories.insert("/chaos/r1-0".to_string(), vec![write, stale]);
        assert_eq!(non_linearizable(&histories), ["/chaos/r1-0"]);
    }

    fn act(worker: usize, generation: u64, at: u64, accepted: bool) -> Act {
        Act { worker, generation, invoked: at, completed: at + 1, accepted }
    }

    #[test]
    fn two_holders_of_one_generation_and_a_stale_holder_accepted_by_the_fenced_copy_are_violations() {
        // Worker 0 holds generation 5, is paused; workers 1 and 2 both say
        // they were granted generation 6; worker 0 resumes and acts again.
        let grants = [(5, 0, 5), (6, 1, 15), (6, 2, 16)];
        let acts = vec![act(0, 5, 10, true), act(1, 6, 20, true), act(1, 6, 30, true), act(0, 5, 40, true)];
        let log = ResourceLog { unfenced: acts.clone(), fenced: acts };
        let found = lock_findings(&grants, &log);
        assert_eq!(found.doubled, 1, "{found:?}");
        assert_eq!(found.fenced_stale, 1, "{found:?}");
        assert_eq!(found.fenced_overlaps, 1, "{found:?}");
        assert_eq!((found.control_overlaps, found.control_stale, found.fenced_refused), (1, 1, 0), "{found:?}");
    }

    #[test]
    fn a_fenced_copy_that_refused_the_stale_holder_is_clean_while_the_control_shows_the_overlap() {
        let grants = [(5, 0, 5), (6, 1, 15)];
        let unfenced = vec![act(0, 5, 10, true), act(1, 6, 20, true), act(1, 6, 30, true), act(0, 5, 40, true)];
        let fenced = vec![act(0, 5, 10, true), act(1, 6, 20, true), act(1, 6, 30, true), act(0, 5, 40, false)];
        let found = lock_findings(&grants, &ResourceLog { unfenced, fenced });
        assert_eq!((found.doubled, found.fenced_stale, found.fenced_overlaps), (0, 0, 0), "{found:?}");
        assert_eq!((found.control_overlaps, found.control_stale, found.fenced_refused), (1, 1, 1), "{found:?}");
    }

    fn leader(generation: u64, candidate: usize, started: u64, resigned: Option<u64>, resign_ok: Option<bool>, lost: Option<u64>) -> Leadership {
        Leadership { generation, candidate, started, resigned, resign_ok, lost }
    }

    #[test]
    fn two_leaders_in_one_generation_are_a_bad_succession() {
        let leaders = [leader(3, 0, 10, Some(20), Some(true), None), leader(3, 1, 30, Some(40), Some(true), None)];
        assert_eq!(election_findings(&leaders), ElectionFindings { bad_successions: 1, overlapping: 0 });
    }

    #[test]
    fn a_leader_before_its_predecessor_began_an_acknowledged_resignation_is_a_bad_succession() {
        let leaders = [leader(3, 0, 10, Some(30), Some(true), None), leader(4, 1, 20, Some(40), Some(true), None)];
        assert_eq!(election_findings(&leaders), ElectionFindings { bad_successions: 1, overlapping: 0 });
    }

    #[test]
    fn successive_leaders_are_accepted_and_a_paused_leader_is_an_overlap_not_a_violation() {
        // Each leader starts after the previous began to resign.
        let orderly = [
            leader(3, 0, 10, Some(20), Some(true), None),
            leader(4, 1, 25, Some(30), Some(true), None),
            leader(5, 0, 35, None, None, None),
        ];
        assert_eq!(election_findings(&orderly), ElectionFindings::default());
        // Generation 3 was paused past its lease: it learnt at 30 that it
        // had lost, or resigned at 30 and the cell refused (its session had
        // ended), while generation 4 led from 20.
        let lost = [leader(3, 0, 10, None, None, Some(30)), leader(4, 1, 20, None, None, None)];
        assert_eq!(election_findings(&lost), ElectionFindings { bad_successions: 0, overlapping: 1 });
        let refused = [leader(3, 0, 10, Some(30), Some(false), None), leader(4, 1, 20, None, None, None)];
        assert_eq!(election_findings(&refused), ElectionFindings { bad_successions: 0, overlapping: 1 });
    }

    fn ephemerals(nodes: &[(&str, u64, Option<u64>)], observations: &[(u64, u64, &[&str])]) -> Ephemerals {
        Ephemerals {
            nodes: nodes.iter().map(|&(name, created, ended)| (name.to_string(), (created, ended))).collect(),
            expired_early: BTreeSet::new(),
            observations: observations.iter().map(|&(invoked, completed, present)| (invoked, completed, names(present))).collect(),
        }
    }

    #[test]
    fn an_ephemeral_missing_while_its_session_was_open_is_deleted_early() {
        let history = ephemerals(&[("w0-1", 10, Some(100)), ("w0-2", 10, Some(100))], &[(20, 30, &["w0-2"])]);
        let found = ephemeral_findings(&history, &BTreeSet::new());
        assert_eq!(found.deleted_early, ["w0-1"]);
        assert!(found.lingering.is_empty());
        // The same absence is legitimate when the cell had expired the
        // session first (the client saw it).
        let mut expired = history;
        expired.expired_early.insert("w0-1".into());
        assert_eq!(ephemeral_findings(&expired, &BTreeSet::new()), EphemeralFindings::default());
    }

    #[test]
    fn ephemerals_present_after_their_session_ended_or_never_created_linger() {
        let history = ephemerals(&[("w0-1", 10, Some(100)), ("w0-2", 10, None)], &[]);
        let found = ephemeral_findings(&history, &names(&["w0-1", "w0-2", "w9-9"]));
        assert_eq!(found.lingering, ["w0-1", "w9-9"]);
        assert!(found.deleted_early.is_empty());
    }

    #[test]
    fn ephemerals_seen_while_open_and_gone_after_are_accepted() {
        // A listing that began before the node was created, or that ended
        // after its session ended, may miss it.
        let history = ephemerals(&[("w0-1", 10, Some(100))], &[(5, 15, &[]), (20, 30, &["w0-1"]), (90, 110, &[]), (120, 130, &[])]);
        assert_eq!(ephemeral_findings(&history, &BTreeSet::new()), EphemeralFindings::default());
    }

    #[test]
    fn an_acknowledged_member_missing_from_the_set_is_lost() {
        let acknowledged = names(&["v0-1", "v0-2", "v1-1"]);
        assert_eq!(lost_from_set(&acknowledged, &names(&["v0-1", "v1-1", "v1-2"])), ["v0-2"]);
        // Unacknowledged creates that took effect are no loss.
        assert!(lost_from_set(&acknowledged, &names(&["v0-1", "v0-2", "v1-1", "v1-2"])).is_empty());
    }
}
