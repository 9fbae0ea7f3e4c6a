//! The driver loop: the one task that owns a replica's Paxos core and its
//! storage and does the IO the core asks for, in the order of the driver
//! contract (see `gaios_paxos`'s crate docs).
//!
//! Each turn of the loop:
//!
//! 1. delivers every tick that is due, counted from elapsed monotonic time
//!    (not from how often the timer fired), so that after the process was
//!    paused (SIGSTOP, a long GC-like stall) all missed ticks reach the core
//!    **before** any message that arrived meanwhile. The master lease depends
//!    on it: an acceptor that slept must first see its lease grants expire in
//!    its own time, never act on stale time;
//! 2. steps a bounded number of messages from the inbox;
//! 3. while the core has a `Ready`: sends its `messages`, makes it durable
//!    with one synced write, sends its `persisted_messages`, records the
//!    committed slots, and advances the core;
//! 4. publishes a [`ReplicaStatus`] for the cell service.
//!
//! There is no namespace state machine yet: committed entries only move the
//! applied slot kept here, and an installed snapshot is only noted.

use std::time::{Duration, Instant};

use gaios_paxos::{Ballot, Ready, Replica, ReplicaId, RoleChange, Slot, StartError};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::storage::{Storage, StorageError};
use crate::transport::{Inbound, Outbound};

/// The most inbox messages stepped in one turn of the loop, so that ticks
/// and `Ready`s are not starved by a flood of messages.
pub const MESSAGES_PER_TURN_MAX: usize = 1024;

/// The role of a replica as the status service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a master or waits for one.
    Follower,
    /// Runs phase 1.
    Candidate,
    /// Completed phase 1 for its ballot.
    Master,
}

/// What the driver tells the rest of the server about its replica after each
/// turn; the cell service answers from the latest one without touching the
/// core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This replica's id.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The highest ballot it promised.
    pub promised: Ballot,
    /// The ballot it leads with while candidate or master.
    pub own_ballot: Option<Ballot>,
    /// The replica it believes is master (itself included).
    pub master: Option<ReplicaId>,
    /// Its chosen prefix.
    pub chosen_through: Slot,
    /// The last slot it applied.
    pub applied: Slot,
    /// The slot at and below which its log is compacted.
    pub log_start: Slot,
    /// The last slot of the last snapshot installed from another replica.
    pub installed_snapshot: Option<Slot>,
    /// When its master lease runs out (monotonic), if it holds one.
    pub lease_valid_until: Option<Instant>,
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The Paxos core refused the durable state or the configuration.
    #[error("cannot start the Paxos core: {0}")]
    Start(#[from] StartError),
    /// A write or read failed. The driver stops rather than going on: after a
    /// failed fsync nothing says what is on disk, and a replica must never
    /// vote on state it may not have kept.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
}

/// Owns the core and the storage of one replica; see the module docs.
#[derive(Debug)]
pub struct Driver {
    replica: Replica,
    storage: Storage,
    inbox: mpsc::Receiver<Inbound>,
    outbound: Outbound,
    tick: Duration,
    status: watch::Sender<ReplicaStatus>,
    /// The last slot "applied" (there is no state machine yet).
    applied: Slot,
    installed_snapshot: Option<Slot>,
}

impl Driver {
    /// Rebuilds the core from `storage` with `config` and returns the driver
    /// and a receiver of its status snapshots.
    pub fn new(
        config: gaios_paxos::Config,
        storage: Storage,
        inbox: mpsc::Receiver<Inbound>,
        outbound: Outbound,
        tick: Duration,
    ) -> Result<(Driver, watch::Receiver<ReplicaStatus>), DriverError> {
        let durable = storage.load()?;
        let applied = durable.applied;
        let replica = Replica::new(config, durable)?;
        let (status, status_rx) = watch::channel(status_of(&replica, None, Instant::now(), tick));
        let driver = Driver {
            replica,
            storage,
            inbox,
            outbound,
            tick,
            status,
            applied,
            installed_snapshot: None,
        };
        Ok((driver, status_rx))
    }

    /// Runs the loop until `shutdown` turns true (or its sender is dropped),
    /// or until storage fails. Needs a multi-threaded runtime: the synced
    /// writes block the thread (`block_in_place`).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), DriverError> {
        let span = tracing::info_span!("replica", id = self.replica.id());
        async move {
            let start = Instant::now();
            let mut ticks_delivered: u64 = 0;
            let mut timer = tokio::time::interval(self.tick);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Events of a turn sit in a span naming the ballot promised when
            // the turn began; it is rebuilt when that ballot changes (a
            // span's fields can be added to but not replaced).
            let mut promised = self.replica.hard_state().promised;
            let mut ballot_span = tracing::info_span!("paxos", ballot = %promised);
            tracing::info!(applied = self.applied, "driver started");
            loop {
                let mut first = None;
                tokio::select! {
                    biased;
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                    }
                    _ = timer.tick() => {}
                    message = self.inbox.recv() => match message {
                        Some(message) => first = Some(message),
                        None => break,
                    },
                }

                let now_promised = self.replica.hard_state().promised;
                if now_promised != promised {
                    promised = now_promised;
                    ballot_span = tracing::info_span!("paxos", ballot = %promised);
                }
                let _entered = ballot_span.enter();

                // 1. Ticks first, from elapsed time, before any message.
                // Even a pause of hours is a few hundred thousand cheap ticks.
                let due = ticks_due(start.elapsed(), self.tick);
                while ticks_delivered < due {
                    self.replica.tick();
                    ticks_delivered += 1;
                }

                // 2. A bounded batch of messages.
                let mut stepped = 0;
                if let Some(message) = first {
                    self.replica.step(message.from, message.message);
                    stepped += 1;
                }
                while stepped < MESSAGES_PER_TURN_MAX {
                    let Ok(message) = self.inbox.try_recv() else { break };
                    self.replica.step(message.from, message.message);
                    stepped += 1;
                }

                // 3. The core's work.
                self.process_ready()?;

                // 4. Status.
                let last_tick_at = start + self.tick.saturating_mul(u32::try_from(ticks_delivered).unwrap_or(u32::MAX));
                self.publish(last_tick_at);
            }
            tracing::info!("driver stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Carries out every `Ready` the core has, in the contract's order.
    fn process_ready(&mut self) -> Result<(), DriverError> {
        while self.replica.has_ready() {
            let ready: Ready = self.replica.ready();
            for envelope in &ready.messages {
                self.outbound.send(envelope.to, &envelope.message);
            }
            if !ready.nothing_to_persist() {
                let storage = &self.storage;
                tokio::task::block_in_place(|| storage.persist(&ready))?;
            }
            for envelope in &ready.persisted_messages {
                self.outbound.send(envelope.to, &envelope.message);
            }
            for change in &ready.role_changes {
                match change {
                    RoleChange::BecameMaster { ballot, recovered_through } => {
                        tracing::info!(%ballot, recovered_through, "became master");
                    }
                    RoleChange::LostMastership { ballot } => {
                        tracing::info!(%ballot, "lost mastership");
                    }
                }
            }
            if ready.install_snapshot {
                if let Some(snapshot) = &ready.snapshot {
                    tracing::info!(slot = snapshot.slot, "installed a snapshot from another replica");
                    self.installed_snapshot = Some(snapshot.slot);
                    self.applied = self.applied.max(snapshot.slot);
                }
            }
            if let Some(last) = ready.committed.last() {
                self.applied = last.slot;
            }
            self.replica.advance(ready);
        }
        Ok(())
    }

    /// Publishes the status if it changed; `last_tick_at` is when the core's
    /// current tick began, from which the lease's end is placed in time.
    fn publish(&self, last_tick_at: Instant) {
        let mut status = status_of(&self.replica, self.installed_snapshot, last_tick_at, self.tick);
        status.applied = self.applied;
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

/// How many ticks are due after `elapsed` time at one tick per `tick`.
fn ticks_due(elapsed: Duration, tick: Duration) -> u64 {
    let tick_nanos = tick.as_nanos().max(1);
    u64::try_from(elapsed.as_nanos() / tick_nanos).unwrap_or(u64::MAX)
}

fn status_of(replica: &Replica, installed_snapshot: Option<Slot>, last_tick_at: Instant, tick: Duration) -> ReplicaStatus {
    let status = replica.status();
    let role = match status.role {
        "master" => Role::Master,
        "candidate" => Role::Candidate,
        _ => Role::Follower,
    };
    let lease_valid_until = status.lease_until_tick.map(|until| {
        let ticks_left = until.saturating_sub(status.now_tick);
        last_tick_at + tick.saturating_mul(u32::try_from(ticks_left).unwrap_or(u32::MAX))
    });
    ReplicaStatus {
        id: status.id,
        role,
        promised: status.promised,
        own_ballot: status.own_ballot,
        master: status.master_hint,
        chosen_through: status.chosen_through,
        applied: status.applied,
        log_start: status.log_start,
        installed_snapshot,
        lease_valid_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_due_counts_whole_ticks_of_elapsed_time() {
        let tick = Duration::from_millis(50);
        assert_eq!(ticks_due(Duration::ZERO, tick), 0);
        assert_eq!(ticks_due(Duration::from_millis(49), tick), 0);
        assert_eq!(ticks_due(Duration::from_millis(50), tick), 1);
        // A 10 s pause makes 200 ticks due at once.
        assert_eq!(ticks_due(Duration::from_secs(10), tick), 200);
    }
}
