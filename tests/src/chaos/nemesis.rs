//! The nemesis: injects one [`Fault`] at a time into the cell, the network
//! or the client processes, and records what it did.
//!
//! At most two replicas are down or cut off at once, counting one that is
//! down for good (its data directory was wiped, or it could not rejoin), so
//! a majority is always there once each fault heals.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gaios_client::OpenOptions;
use serde_json::json;

use super::elections::{self, Ballot};
use super::workers::{self, Workers};
use super::{Fault, FaultRecord, Recorder, SESSION_LEASE_MS, connect, lock};
use crate::proxy::{LinkMode, Network};
use crate::rng::Rng;
use crate::{Cell, REPLICAS};

/// At least the master lease (the server's default is 250 ms); pauses of
/// the master last longer than this.
const MASTER_LEASE: Duration = Duration::from_millis(1_000);
/// How long a client process stays paused at least: well past its session
/// lease, so the cell expires its session and gives its lock to another
/// holder before it resumes.
pub(super) const CLIENT_PAUSE: Duration = Duration::from_millis(2 * SESSION_LEASE_MS + 2_000);
/// How long a client process stays paused at most, waiting for its
/// successor to act.
pub(super) const CLIENT_PAUSE_MAX: Duration = Duration::from_secs(20);
/// How long the nemesis waits for a lock holder in the middle of its work
/// (or for a leader) to pause.
const HOLDER_WAIT: Duration = Duration::from_secs(10);
/// How long the nemesis waits for a master before it picks its targets.
const MASTER_WAIT: Duration = Duration::from_secs(10);
/// How long a follower stays down before it is restarted (item 9 of the
/// issue: three seconds, with nothing else happening).
const RESTART_AFTER: Duration = Duration::from_secs(3);
/// How many large writes a rejoining follower misses (the issue saw five
/// ballot changes after a burst of 320).
const LARGE_WRITES: usize = 320;
/// The size of each write while a follower is down: the largest contents.
const LARGE_WRITE_BYTES: usize = 256 << 10;
/// Files the large writes rotate over (their total stays far below the
/// state machine's limit).
const LARGE_WRITE_FILES: usize = 4;
/// Concurrent writers of the large writes: two, so a slot holds one or
/// two of them. (Four at once, with a follower down, already cost today's
/// cell its master during the burst, before the return this checks.)
const LARGE_WRITERS: usize = 2;
/// How long the large writes may take in all.
const LARGE_WRITES_DEADLINE: Duration = Duration::from_secs(45);
/// How long a restarted follower may take to catch up (80 MiB of writes
/// over loopback take a few seconds).
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(20);
/// How long the cell is watched after a follower caught up, for elections
/// its return causes late.
const QUIET_AFTER_REJOIN: Duration = Duration::from_secs(3);
/// How long a replica started on a wiped data directory has to exit
/// (refusing to start) before its start counts as a violation.
const WIPE_REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// What a restarted or rejoining follower did to the cell.
#[derive(Debug, Clone)]
pub(super) struct Rejoin {
    /// `restart-follower` or `rejoin-after-writes`.
    pub kind: &'static str,
    /// The follower.
    pub replica: u64,
    /// Large writes acknowledged while it was down.
    pub writes: u64,
    /// How long after its restart it had applied everything chosen before
    /// it; `None` if it did not within [`CATCH_UP_DEADLINE`].
    pub caught_up_ms: Option<u64>,
    /// Whether the others agreed on a master just before its restart (after
    /// the large writes): if not, its return cannot be judged, and the cell
    /// lost its master while it was down.
    pub settled_before_restart: bool,
    /// Master ballots first seen while it was down (from the kill to the
    /// restart): with large writes, what the burst cost.
    pub elections_while_down: u64,
    /// Rises of the highest promised ballot while it was down.
    pub ballot_rises_while_down: u64,
    /// Master ballots first seen from its restart to the end of the watch:
    /// what its return cost.
    pub elections: u64,
    /// Rises of the highest promised ballot in that window.
    pub ballot_rises: u64,
    /// The master's ballot just before the restart.
    pub master_before: Option<Ballot>,
    /// The master's ballot at the end of the watch.
    pub master_after: Option<Ballot>,
    /// The highest promised ballot just before the restart.
    pub promised_before: Ballot,
    /// The highest promised ballot at the end of the watch.
    pub promised_after: Ballot,
}

impl Rejoin {
    /// Whether the follower's return cost the cell an election: any phase 1
    /// at all after its restart, or a master other than the one before.
    pub fn caused_election(&self) -> bool {
        self.settled_before_restart
            && (self.elections > 0
                || self.ballot_rises > 0
                || self.promised_after != self.promised_before
                || self.master_after != self.master_before)
    }

    pub fn json(&self) -> serde_json::Value {
        let show = |b: Option<Ballot>| b.map(|(round, id)| format!("{round}.{id}"));
        json!({
            "kind": self.kind,
            "replica": self.replica,
            "large_writes_while_down": self.writes,
            "caught_up_ms": self.caught_up_ms,
            "settled_before_restart": self.settled_before_restart,
            "elections_while_down": self.elections_while_down,
            "ballot_rises_while_down": self.ballot_rises_while_down,
            "elections": self.elections,
            "ballot_rises": self.ballot_rises,
            "master_before": show(self.master_before),
            "master_after": show(self.master_after),
            "promised_before": show(Some(self.promised_before)),
            "promised_after": show(Some(self.promised_after)),
            "caused_election": self.caused_election(),
        })
    }
}

/// What became of a replica started on a wiped data directory.
#[derive(Debug, Clone)]
pub(super) struct Wipe {
    /// The replica.
    pub replica: u64,
    /// Whether it refused to start (exited non-zero by itself).
    pub refused: bool,
    /// How it ended, and the last line of its log.
    pub detail: String,
}

/// One client process paused.
#[derive(Debug, Clone)]
pub(super) struct ClientPause {
    /// The lock holder paused (worker index), if one held the lock.
    pub lock_holder: Option<usize>,
    /// The leader paused (candidate index), if one led.
    pub leader: Option<usize>,
}

/// The nemesis and what it remembers across faults.
pub(super) struct Nemesis<'a> {
    pub cell: &'a mut Cell,
    pub network: &'a Network,
    pub recorder: &'a Arc<Recorder>,
    /// The client processes (none in the scenarios after they stopped).
    pub workers: Option<&'a Workers>,
    pub addresses: &'a [String],
    pub rng: Rng,
    /// A replica down for the rest of the run: its data directory was
    /// wiped, or it could not catch up after a restart (and was killed so
    /// the run could go on).
    pub down_for_good: Option<usize>,
    pub rejoins: Vec<Rejoin>,
    pub wipe: Option<Wipe>,
    pub client_pauses: Vec<ClientPause>,
}

impl Nemesis<'_> {
    fn ids(&self) -> Vec<u64> {
        self.cell.members.iter().map(|m| m.id).collect()
    }

    /// Replicas that run and are not down for good.
    fn live(&self) -> Vec<usize> {
        (0..REPLICAS as usize).filter(|&i| self.cell.is_running(i) && Some(i) != self.down_for_good).collect()
    }

    /// The master's index per the replicas' statuses (one that says master
    /// and holds a lease), waiting up to [`MASTER_WAIT`] for one.
    async fn master_index(&self) -> Option<usize> {
        let until = Instant::now() + MASTER_WAIT;
        while Instant::now() < until {
            for index in self.live() {
                if let Some(status) = crate::status(self.cell.members[index].client).await
                    && status.role() == gaios_proto::cell::v1::Role::Master
                    && status.lease_remaining_ms > 0
                {
                    return Some(index);
                }
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        None
    }

    /// Injects `fault`, heals it, and records it.
    pub(super) async fn inject(&mut self, fault: Fault) {
        let master = self.master_index().await;
        let ids = self.ids();
        let master_id = master.map(|i| ids[i]);
        let live = self.live();
        let others: Vec<usize> = live.iter().copied().filter(|&i| Some(i) != master).collect();
        let hold = self.rng.between(Duration::from_millis(1_500), Duration::from_millis(4_000));
        let started = self.recorder.now();
        let mut detail = String::new();
        let mut killed = Vec::new();
        let mut paused = None;
        let rng = &mut self.rng;
        let network = self.network;
        match (fault, master) {
            (Fault::KillMaster, Some(m)) => killed.push(m),
            (Fault::KillFollower, _) | (Fault::KillMaster, None) => killed.extend(rng.pick(&others).copied()),
            (Fault::KillTwo, _) => {
                let first = master.or_else(|| rng.pick(&others).copied());
                killed.extend(first);
                // With a replica down for good, one more is the most.
                if self.down_for_good.is_none() {
                    let rest: Vec<usize> = others.iter().copied().filter(|&i| Some(i) != first).collect();
                    killed.extend(rng.pick(&rest).copied());
                }
            }
            (Fault::PauseMaster, Some(m)) => paused = Some(m),
            (Fault::PauseMaster, None) => paused = rng.pick(&others).copied(),
            (Fault::IsolateMaster, _) => {
                if let Some(target) = master_id.or_else(|| rng.pick(&others).copied().map(|i| ids[i])) {
                    network.isolate(target);
                    detail = format!("isolated replica {target}");
                }
            }
            (Fault::SplitMinority, _) => {
                let target = master_id.unwrap_or(ids[others.first().copied().unwrap_or(0)]);
                // The replica down for good, if any, is the minority's
                // second member.
                let partner = self.down_for_good.map(|i| ids[i]).or_else(|| rng.pick(&others).copied().map(|i| ids[i])).unwrap_or(target);
                let minority = [target, partner];
                let majority: Vec<u64> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
                network.partition(&[&minority, &majority]);
                detail = format!("{minority:?} | {majority:?}");
            }
            (Fault::Bridge, _) => {
                let bridge = master_id.unwrap_or(ids[others.first().copied().unwrap_or(0)]);
                let rest: Vec<u64> = ids.iter().copied().filter(|&id| id != bridge).collect();
                network.bridge(&rest[..2], bridge, &rest[2..]);
                detail = format!("{:?} <- {bridge} -> {:?}", &rest[..2], &rest[2..]);
            }
            (Fault::OneWayFromMaster, _) => {
                let from = master_id.unwrap_or(ids[0]);
                for &to in &ids {
                    if to != from {
                        network.one_way(from, to);
                    }
                }
                detail = format!("messages from {from} lost");
            }
            (Fault::Delay, _) => {
                let delay = rng.between(Duration::from_millis(30), Duration::from_millis(80));
                network.delay_all(delay);
                detail = format!("every link delayed {delay:?}");
            }
            (Fault::SlowLink, _) => {
                if let Some(from) = rng.pick(&live).copied() {
                    let rest: Vec<usize> = live.iter().copied().filter(|&i| i != from).collect();
                    if let Some(to) = rng.pick(&rest).copied() {
                        let delay = rng.between(Duration::from_secs(1), Duration::from_secs(3));
                        network.set(ids[from], ids[to], LinkMode::Delay(delay));
                        detail = format!("link {}->{} delayed {delay:?}", ids[from], ids[to]);
                    }
                }
            }
            (Fault::HoldLink, _) => {
                let held = self.hold_one_link().await;
                detail = held.map_or_else(|| "no link to hold".into(), |(from, to, for_)| format!("link {from}->{to} held {for_:?}"));
                self.network.heal();
                return self.record(fault, master_id, detail, started);
            }
            (Fault::HoldLinkDeposeMaster, _) => {
                detail = self.hold_and_depose(master).await;
                return self.record(fault, master_id, detail, started);
            }
            (Fault::PauseClient, _) => {
                detail = self.pause_client().await;
                return self.record(fault, master_id, detail, started);
            }
            (Fault::RestartFollower, _) => {
                detail = self.rejoin("restart-follower", 0).await;
                return self.record(fault, master_id, detail, started);
            }
            (Fault::RejoinAfterWrites, _) => {
                detail = self.rejoin("rejoin-after-writes", LARGE_WRITES).await;
                return self.record(fault, master_id, detail, started);
            }
            (Fault::WipeReplica, _) => {
                detail = self.wipe_replica(&others).await;
                return self.record(fault, master_id, detail, started);
            }
        }
        for &index in &killed {
            self.cell.kill(index);
        }
        if let Some(index) = paused {
            self.cell.signal(index, libc::SIGSTOP);
        }
        if !killed.is_empty() {
            detail = format!("SIGKILL {:?}", killed.iter().map(|&i| ids[i]).collect::<Vec<_>>());
        }
        let hold = if let Some(index) = paused {
            let hold = hold.max(MASTER_LEASE * 2);
            detail = format!("SIGSTOP {} for {hold:?}", ids[index]);
            hold
        } else {
            hold
        };
        tokio::time::sleep(hold).await;
        if let Some(index) = paused {
            self.cell.signal(index, libc::SIGCONT);
        }
        for &index in &killed {
            self.cell.restart(index);
        }
        self.network.heal();
        self.record(fault, master_id, detail, started);
    }

    fn record(&mut self, fault: Fault, master: Option<u64>, detail: String, start: u64) {
        let heal = self.recorder.now();
        lock(&self.recorder.heals).push(heal);
        lock(&self.recorder.faults).push(FaultRecord { name: fault.name(), master, detail, start, heal });
    }

    /// Holds one directed link between two live replicas for 1-5 s, then
    /// lets it deliver what it held; returns (from, to, for how long).
    async fn hold_one_link(&mut self) -> Option<(u64, u64, Duration)> {
        let live = self.live();
        let from = self.rng.pick(&live).copied()?;
        let rest: Vec<usize> = live.iter().copied().filter(|&i| i != from).collect();
        let to = self.rng.pick(&rest).copied()?;
        let (from, to) = (self.cell.members[from].id, self.cell.members[to].id);
        let for_ = self.rng.between(Duration::from_secs(1), Duration::from_secs(5));
        self.network.hold(from, to);
        tokio::time::sleep(for_).await;
        self.network.set(from, to, LinkMode::Pass);
        Some((from, to, for_))
    }

    /// Holds one follower's link to another replica for 1-5 s while the
    /// master is isolated or paused for 1.5-3 s somewhere inside that time:
    /// messages on the held link (catch-up requests, promises, accepts) are
    /// delivered only after ballots changed elsewhere, as finding 1 of the
    /// issue needs.
    async fn hold_and_depose(&mut self, master: Option<usize>) -> String {
        let Some(m) = master else {
            let held = self.hold_one_link().await;
            return held.map_or_else(|| "no master and no link to hold".into(), |(f, t, d)| format!("no master; link {f}->{t} held {d:?}"));
        };
        let ids = self.ids();
        let isolate = self.rng.chance(0.5);
        let followers: Vec<usize> = self.live().into_iter().filter(|&i| i != m).collect();
        let Some(from) = self.rng.pick(&followers).copied() else { return "no follower".into() };
        // An isolated master's links are all cut, so the held link avoids it.
        let targets: Vec<usize> = self.live().into_iter().filter(|&i| i != from && (!isolate || i != m)).collect();
        let Some(to) = self.rng.pick(&targets).copied() else { return "no link to hold".into() };
        let total = self.rng.between(Duration::from_secs(1), Duration::from_secs(5));
        let offset = self.rng.between(Duration::ZERO, total / 2);
        let depose = self.rng.between(Duration::from_millis(1_500), Duration::from_secs(3));
        let started = Instant::now();
        self.network.hold(ids[from], ids[to]);
        tokio::time::sleep(offset).await;
        if isolate {
            self.network.isolate(ids[m]);
        } else {
            self.cell.signal(m, libc::SIGSTOP);
        }
        tokio::time::sleep(depose).await;
        if isolate {
            self.network.reconnect(ids[m]);
        } else {
            self.cell.signal(m, libc::SIGCONT);
        }
        tokio::time::sleep_until((started + total).into()).await;
        self.network.heal();
        let how = if isolate { "isolated" } else { "paused" };
        format!(
            "link {}->{} held {:?}; master {} {how} {:?} after {:?}",
            ids[from],
            ids[to],
            started.elapsed(),
            ids[m],
            depose,
            offset
        )
    }

    /// Pauses the lock holder in the middle of its work, then the leader of
    /// the election; resumes each once it was paused for [`CLIENT_PAUSE`]
    /// and its successor acted (a new holder on the resource, a new
    /// leader), or after [`CLIENT_PAUSE_MAX`]. (An election meanwhile gives
    /// every session a fresh lease, so a fixed pause may end before the
    /// cell expired the paused session.)
    async fn pause_client(&mut self) -> String {
        let Some(workers) = self.workers else { return "no client processes; skipped".into() };
        let recorder = self.recorder;
        let holder = wait_for(|| workers.acting_lock_holder()).await;
        let holder_paused = Instant::now();
        if let Some((_, pid, _)) = holder {
            workers::signal(pid, libc::SIGSTOP);
        }
        let leader = wait_for(|| workers.leader()).await;
        let leader_paused = Instant::now();
        if let Some((_, pid, _)) = leader {
            workers::signal(pid, libc::SIGSTOP);
        }
        let mut holder_for = None;
        let mut leader_for = None;
        while holder_for.is_none() || leader_for.is_none() {
            if holder_for.is_none() {
                let superseded = holder.is_none_or(|(index, _, generation)| workers.superseded_holder(index, generation));
                holder_for = resume_when(holder.map(|(_, pid, _)| pid), holder_paused, superseded);
            }
            if leader_for.is_none() {
                let superseded = leader.is_none_or(|(index, _, generation)| {
                    lock(&recorder.leaders).iter().any(|l| l.candidate != index && l.generation > generation)
                });
                leader_for = resume_when(leader.map(|(_, pid, _)| pid), leader_paused, superseded);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.client_pauses.push(ClientPause { lock_holder: holder.map(|(i, _, _)| i), leader: leader.map(|(i, _, _)| i) });
        let show = |who: Option<(usize, u32, u64)>, paused: Option<Duration>| {
            who.map_or("none".into(), |(i, pid, generation)| {
                format!("{i} (pid {pid}, generation {generation}) for {:?}", paused.unwrap_or_default())
            })
        };
        format!("SIGSTOP lock holder {} and leader {}", show(holder, holder_for), show(leader, leader_for))
    }

    /// Waits until the live replicas agree on a master; their statuses.
    async fn settle(&self) -> Option<Vec<gaios_proto::cell::v1::StatusResponse>> {
        crate::wait_for_master(&*self.cell, &self.live(), crate::FIRST_MASTER_DEADLINE).await.map(|(_, statuses)| statuses)
    }

    /// SIGKILLs a follower of a settled cell, keeps it down for
    /// [`RESTART_AFTER`] (and, if `writes > 0`, while that many large
    /// writes are acknowledged), lets the others settle, restarts it, waits
    /// until it caught up and a little more, and records the elections
    /// while it was down and those after its restart (its return).
    async fn rejoin(&mut self, kind: &'static str, writes: usize) -> String {
        let Some(before) = self.settle().await else { return "no settled master; skipped".into() };
        let master = elections::master_ballot(&before).map(|(_, id)| id);
        let followers: Vec<usize> = self.live().into_iter().filter(|&i| Some(self.cell.members[i].id) != master).collect();
        let Some(follower) = self.rng.pick(&followers).copied() else { return "no follower; skipped".into() };
        let killed_at = self.recorder.now();
        self.cell.kill(follower);
        let down_since = Instant::now();
        let written = if writes > 0 { self.write_large(writes).await } else { 0 };
        tokio::time::sleep_until((down_since + RESTART_AFTER).into()).await;
        // What the cell looks like just before the return: the baseline.
        let settled = self.settle().await;
        let settled_before_restart = settled.is_some();
        let before = match settled {
            Some(statuses) => statuses,
            None => crate::statuses(&*self.cell, &self.live()).await,
        };
        let master_before = elections::master_ballot(&before);
        let promised_before = elections::highest_promised(&before);
        let target = before.iter().map(|s| s.chosen_through).max().unwrap_or(0);
        let restarted_at = self.recorder.now();
        let while_down = lock(&self.recorder.ballots).in_window(killed_at, restarted_at);
        self.cell.restart(follower);
        let restarted = Instant::now();
        let mut caught_up_ms = None;
        while restarted.elapsed() < CATCH_UP_DEADLINE {
            if crate::status(self.cell.members[follower].client).await.is_some_and(|s| s.applied >= target) {
                caught_up_ms = Some(u64::try_from(restarted.elapsed().as_millis()).unwrap_or(u64::MAX));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut left_down = String::new();
        if caught_up_ms.is_none() && self.down_for_good.is_some() {
            // A replica is down for good already: taking out a second would
            // leave the cell without a spare, and a third its quorum. It
            // stays up (the failure is a violation either way).
            left_down = "; left running (another replica is down for good already)".into();
        } else if caught_up_ms.is_none() {
            // It could not catch up (and may keep the cell from electing a
            // master): take it out for the rest of the run so the run goes on.
            self.cell.kill(follower);
            self.down_for_good = Some(follower);
            let recovered = crate::wait_for_master(&*self.cell, &self.live(), crate::FIRST_MASTER_DEADLINE).await.is_some();
            left_down = format!(
                "; killed and left down for the rest of the run (the others {} a master after it)",
                if recovered { "agreed on" } else { "did NOT agree on" }
            );
        }
        tokio::time::sleep(QUIET_AFTER_REJOIN).await;
        // One reading can miss the master (a status answered late, a lease
        // renewed a moment later): the master after is the one seen within
        // MASTER_WAIT, and a different one (or none) is what counts.
        let until = Instant::now() + MASTER_WAIT;
        let after = loop {
            let after = crate::statuses(&*self.cell, &self.live()).await;
            if elections::master_ballot(&after).is_some() || Instant::now() >= until {
                break after;
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        };
        let (elections, ballot_rises) = lock(&self.recorder.ballots).in_window(restarted_at, self.recorder.now());
        let rejoin = Rejoin {
            kind,
            replica: self.cell.members[follower].id,
            writes: written,
            caught_up_ms,
            settled_before_restart,
            elections_while_down: while_down.0,
            ballot_rises_while_down: while_down.1,
            elections,
            ballot_rises,
            master_before,
            master_after: elections::master_ballot(&after),
            promised_before,
            promised_after: elections::highest_promised(&after).max(promised_before),
        };
        let detail = format!(
            "SIGKILL follower {}, {written} large writes acknowledged, {} elections while it was down{}; restart after {:?}; caught up {}; ballot {} -> {}{left_down}",
            rejoin.replica,
            while_down.0,
            if settled_before_restart { "" } else { ", NO MASTER before its restart" },
            restarted - down_since,
            caught_up_ms.map_or_else(|| format!("not within {CATCH_UP_DEADLINE:?}"), |ms| format!("in {ms} ms")),
            show(rejoin.promised_before),
            show(rejoin.promised_after),
        );
        self.rejoins.push(rejoin);
        detail
    }

    /// Writes `count` contents of [`LARGE_WRITE_BYTES`] with a few writers at
    /// once (each with its own session, opened again if the cell expires
    /// it), within [`LARGE_WRITES_DEADLINE`]; returns how many were
    /// acknowledged.
    async fn write_large(&self, count: usize) -> u64 {
        let until = tokio::time::Instant::now() + LARGE_WRITES_DEADLINE;
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(count));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..LARGE_WRITERS {
            let addresses = self.addresses.to_vec();
            let remaining = Arc::clone(&remaining);
            writers.spawn(async move {
                let path = format!("/chaos/large-{}", writer % LARGE_WRITE_FILES);
                let mut acknowledged = 0u64;
                'session: while tokio::time::Instant::now() < until {
                    let client = connect(&addresses).await;
                    let Ok(handle) = client.open(&path, OpenOptions::new().create().event_mask(0)).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    while tokio::time::Instant::now() < until {
                        let taken = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1));
                        if taken.is_err() {
                            break 'session;
                        }
                        let contents = Bytes::from(vec![b'a' + (acknowledged % 26) as u8; LARGE_WRITE_BYTES]);
                        match handle.set_contents(contents, None).await {
                            Ok(_) => acknowledged += 1,
                            Err(error) => {
                                remaining.fetch_add(1, Ordering::Relaxed);
                                if error == gaios_client::Error::SessionExpired {
                                    continue 'session;
                                }
                            }
                        }
                    }
                }
                acknowledged
            });
        }
        let mut acknowledged = 0;
        while let Some(done) = writers.join_next().await {
            acknowledged += done.unwrap_or(0);
        }
        acknowledged
    }

    /// Kills a follower (the replica already down for good, if any),
    /// deletes its data directory and starts it again the way an operator
    /// would (a plain start): it must refuse to start. It stays down for the
    /// rest of the run either way.
    async fn wipe_replica(&mut self, followers: &[usize]) -> String {
        if self.wipe.is_some() {
            return "a replica was wiped already; skipped".into();
        }
        // A replica already down for good is the one wiped, so that no
        // more than one stays down.
        let Some(victim) = self.down_for_good.or_else(|| self.rng.pick(followers).copied()) else {
            return "no follower; skipped".into();
        };
        let id = self.cell.members[victim].id;
        self.cell.kill(victim);
        let directory = self.cell.data_dir(id);
        if let Err(error) = std::fs::remove_dir_all(&directory) {
            return format!("could not wipe {}: {error}", directory.display());
        }
        self.cell.restart_without_init(victim);
        let until = Instant::now() + WIPE_REFUSAL_DEADLINE;
        let status = loop {
            if let Some(status) = self.cell.exited(victim) {
                break Some(status);
            }
            if Instant::now() >= until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let last_line = std::fs::read_to_string(self.cell.log_path(id))
            .ok()
            .and_then(|log| log.lines().rev().find(|line| !line.trim().is_empty()).map(str::to_string))
            .unwrap_or_default();
        let (refused, how) = match status {
            Some(status) if !status.success() => (true, format!("refused to start ({status})")),
            Some(status) => (false, format!("exited with {status} instead of refusing")),
            None => {
                self.cell.kill(victim);
                (false, format!("STARTED on an empty data directory and ran for {WIPE_REFUSAL_DEADLINE:?} (killed)"))
            }
        };
        self.down_for_good = Some(victim);
        let detail = format!("replica {id}: data directory wiped; {how}; last log line: {last_line}");
        self.wipe = Some(Wipe { replica: id, refused, detail: detail.clone() });
        detail
    }
}

/// Resumes the paused process `pid` if it was paused for [`CLIENT_PAUSE`]
/// and `superseded`, or for [`CLIENT_PAUSE_MAX`]; returns how long it was
/// paused once it is resumed (at once if there is no process).
fn resume_when(pid: Option<u32>, paused: Instant, superseded: bool) -> Option<Duration> {
    let Some(pid) = pid else { return Some(Duration::ZERO) };
    let elapsed = paused.elapsed();
    if (elapsed >= CLIENT_PAUSE && superseded) || elapsed >= CLIENT_PAUSE_MAX {
        workers::signal(pid, libc::SIGCONT);
        return Some(elapsed);
    }
    None
}

/// Polls `find` every 2 ms for up to [`HOLDER_WAIT`].
async fn wait_for<T>(find: impl Fn() -> Option<T>) -> Option<T> {
    let until = Instant::now() + HOLDER_WAIT;
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn show((round, id): Ballot) -> String {
    format!("{round}.{id}")
}
