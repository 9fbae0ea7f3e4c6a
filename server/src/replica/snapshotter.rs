//! Takes snapshots off the driver thread.
//!
//! Encoding the state and writing it down costs time in proportion to the
//! state's size: about a second for a few hundred MiB. Done on the driver
//! thread under the state lock, as it once was, that stalls every write and
//! every heartbeat for as long, which can cost the master its lease. So a
//! thread of its own keeps a second copy of the state machine (the
//! *shadow*), fed the same chosen commands in the same order as the driver
//! applies them; applying is deterministic, so the shadow at slot `s` is the
//! driver's state at `s`. Asked for a snapshot at the slot the driver has
//! applied, it encodes the shadow, writes the data to RocksDB
//! ([`SnapshotStore::stage`]) and hands it back; the driver then only tells
//! the core (which compacts its log) and persists the snapshot's record.
//! Neither the driver thread nor the state lock waits for the encoding.
//!
//! The price is memory and CPU: the state is held twice and every command
//! is applied twice (the shadow's copy skips the debug-build invariant
//! checks). Encoding and writing run on a thread at the lowest CPU
//! priority (nice 19), so that on a machine with few cores their seconds of
//! work never delay a heartbeat. The feed is bounded ([`FEED_MAX`] messages); when the shadow
//! falls that far behind (it is encoding a very large state under a heavy
//! write load), the driver waits for room rather than dropping a command,
//! which would make the shadow wrong. Its entries are the core's own
//! (reference-counted), which the core keeps until a snapshot covers them,
//! so the feed holds no memory of its own beyond the queue and the fewer
//! than [`FEED_BATCH`] entries the driver holds.
//!
//! The driver hands entries over [`FEED_BATCH`] at a time, and all it holds
//! before a reset or a request for a snapshot: waking the thread for every
//! `Ready` cost each replica a context switch per write when writes come
//! one at a time (five per write over the cell).

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gaios_paxos::{Entry, Slot, Value};
use gaios_proto::state::v1 as wire;
use gaios_state::machine::StateMachine;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::replica::storage::{SnapshotStore, StorageError};

/// The most feed messages (each at least [`FEED_BATCH`] entries, or what
/// the driver held before a reset or a snapshot) queued for the shadow:
/// generous, since they hold only references to entries the core keeps
/// anyway.
pub const FEED_MAX: usize = 65_536;
/// The entries the driver holds before it hands them to the shadow (see the
/// module docs).
pub const FEED_BATCH: usize = 256;

/// What the driver tells the shadow, in the order it applies.
#[derive(Debug)]
enum Feed {
    /// Chosen entries, in slot order, as the driver applied them.
    Apply(Vec<Entry>),
    /// The driver installed a snapshot from another replica: the shadow
    /// restores the same data.
    Reset { slot: Slot, data: Bytes },
    /// Take a snapshot: the driver applied through `slot`, and so has the
    /// shadow once it reads this.
    Take { slot: Slot },
}

/// A snapshot the shadow took: its data is durable (staged) in RocksDB.
#[derive(Debug)]
pub struct Taken {
    /// The slot the snapshot covers.
    pub slot: Slot,
    /// The encoded state.
    pub data: Bytes,
    /// How long encoding took.
    pub encoding: Duration,
    /// How long writing the data (synced) took.
    pub writing: Duration,
}

/// Why the shadow could not take a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotterError {
    /// The data could not be written; the driver stops, as for any failed
    /// write.
    #[error("writing the snapshot's data: {0}")]
    Storage(#[from] StorageError),
    /// The shadow is not at the slot asked for, or a snapshot it was reset
    /// to did not restore: a bug. The driver starts the thread again from
    /// a copy of its state.
    #[error("the snapshot thread's state is at slot {at}, not at slot {wanted}")]
    Diverged {
        /// The slot asked for.
        wanted: Slot,
        /// The slot the shadow is at.
        at: Slot,
    },
    /// The snapshot thread stopped.
    #[error("the snapshot thread stopped")]
    Stopped,
    /// The snapshot thread could not be started.
    #[error("cannot start the snapshot thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// The driver's side: feeds the shadow and receives its snapshots.
#[derive(Debug)]
pub struct Snapshotter {
    feed: SyncSender<Feed>,
    taken: mpsc::Receiver<Result<Taken, SnapshotterError>>,
    /// The slot of the snapshot asked for and not yet handed back.
    in_flight: Option<Slot>,
    /// Entries applied by the driver and not yet handed to the shadow (at
    /// most [`FEED_BATCH`] once [`Snapshotter::applied`] returns).
    held: Vec<Entry>,
}

impl Snapshotter {
    /// Starts the snapshot thread with `state`, a copy of the driver's
    /// state at `slot`, writing data through `store`.
    pub fn start(state: StateMachine, slot: Slot, store: SnapshotStore) -> Result<Snapshotter, SnapshotterError> {
        let (feed, feed_rx) = std::sync::mpsc::sync_channel(FEED_MAX);
        let (taken_tx, taken) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("gaios-snapshot".into())
            .spawn(move || run(state, slot, &feed_rx, &taken_tx, &store))?;
        Ok(Snapshotter { feed, taken, in_flight: None, held: Vec::new() })
    }

    /// Feeds the entries the driver applied (those past the shadow's slot
    /// are applied, the rest skipped), once [`FEED_BATCH`] of them are held.
    /// Waits for room when the feed is full.
    pub fn applied(&mut self, entries: &[Entry]) -> Result<(), SnapshotterError> {
        self.held.extend_from_slice(entries);
        if self.held.len() >= FEED_BATCH {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Hands the held entries to the shadow.
    fn hand_over(&mut self) -> Result<(), SnapshotterError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.held);
        self.send(Feed::Apply(entries))
    }

    /// The driver installed another replica's snapshot at `slot`.
    pub fn installed(&mut self, slot: Slot, data: Bytes) -> Result<(), SnapshotterError> {
        self.hand_over()?;
        self.send(Feed::Reset { slot, data })
    }

    /// Asks for a snapshot at `slot`, the slot the driver has applied,
    /// unless one is being taken.
    pub fn take(&mut self, slot: Slot) -> Result<(), SnapshotterError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        self.hand_over()?;
        self.send(Feed::Take { slot })?;
        self.in_flight = Some(slot);
        Ok(())
    }

    /// Whether a snapshot was asked for and not handed back yet.
    pub fn taking(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next snapshot taken (or why not); for the driver's `select!`.
    pub async fn next_taken(&mut self) -> Result<Taken, SnapshotterError> {
        let taken = self.taken.recv().await.unwrap_or(Err(SnapshotterError::Stopped));
        self.in_flight = None;
        taken
    }

    fn send(&self, item: Feed) -> Result<(), SnapshotterError> {
        match self.feed.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(item)) => {
                tracing::debug!("snapshot thread behind; the driver waits for room in its feed");
                tokio::task::block_in_place(|| self.feed.send(item)).map_err(|_| SnapshotterError::Stopped)
            }
            Err(TrySendError::Disconnected(_)) => Err(SnapshotterError::Stopped),
        }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19): encoding a
/// large state takes seconds of CPU, which on a machine with few cores must
/// never come before the driver's heartbeats and writes. Linux only (a
/// thread's nice value is its own there); elsewhere a no-op.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions; `setpriority` on the
        // calling thread's own id changes only that thread's nice value and
        // reports failure through its return value.
        #[allow(unsafe_code)]
        let result = unsafe {
            let thread = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, u32::try_from(thread).unwrap_or(0), 19)
        };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the snapshot encoder's priority");
        }
    }
}

/// The snapshot thread: applies the feed to the shadow and takes the
/// snapshots asked for, until the driver drops its side.
fn run(
    mut state: StateMachine,
    mut slot: Slot,
    feed: &Receiver<Feed>,
    taken: &mpsc::Sender<Result<Taken, SnapshotterError>>,
    store: &SnapshotStore,
) {
    state.set_check_after_apply(false);
    // Set when a reset's data did not restore: nothing the shadow holds can
    // be trusted until the next reset.
    let mut broken = false;
    while let Ok(item) = feed.recv() {
        match item {
            Feed::Apply(entries) => {
                for entry in entries {
                    if entry.slot <= slot {
                        continue;
                    }
                    if let Value::Batch(commands) = &entry.value {
                        for bytes in commands {
                            // The driver skips (and logs) what does not
                            // decode; so does the shadow.
                            if let Ok(command) = wire::Command::decode(bytes.as_ref()) {
                                state.apply(&command);
                            }
                        }
                    }
                    slot = entry.slot;
                }
            }
            Feed::Reset { slot: at, data } => match StateMachine::restore(&data) {
                Ok(restored) => {
                    state = restored;
                    state.set_check_after_apply(false);
                    slot = at;
                    broken = false;
                }
                Err(error) => {
                    tracing::error!(slot = at, %error, "the snapshot thread cannot restore a snapshot the driver installed");
                    broken = true;
                }
            },
            Feed::Take { slot: wanted } => {
                let answer = if broken || wanted != slot {
                    Err(SnapshotterError::Diverged { wanted, at: slot })
                } else {
                    take(&state, slot, store)
                };
                if taken.blocking_send(answer).is_err() {
                    return;
                }
            }
        }
    }
}

/// Encodes the shadow at `slot` and writes the data down, on a thread of
/// its own at the lowest priority (the shadow waits for it; applying the
/// feed keeps the normal priority, so the driver never waits for room in
/// the feed behind a starved thread for long).
fn take(state: &StateMachine, slot: Slot, store: &SnapshotStore) -> Result<Taken, SnapshotterError> {
    std::thread::scope(|scope| {
        let encoder = std::thread::Builder::new().name("gaios-snapshot-encode".into()).spawn_scoped(scope, || {
            lower_priority();
            let started = Instant::now();
            let data = state.snapshot();
            let encoding = started.elapsed();
            let started = Instant::now();
            store.stage(slot, &data)?;
            Ok(Taken { slot, data, encoding, writing: started.elapsed() })
        })?;
        encoder.join().unwrap_or(Err(SnapshotterError::Stopped))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::storage::{Identity, InitRecord, Storage};
    use std::num::NonZeroU64;

    fn command(number: u64, kind: wire::command::Kind) -> Bytes {
        Bytes::from(
            wire::Command { proposer_incarnation: 1, proposal_number: number, now_ms: 1_000, lock_clock_ms: 0, kind: Some(kind) }
                .encode_to_vec(),
        )
    }

    /// The shadow fed the driver's entries snapshots exactly the state the
    /// driver reached (the same bytes), and the data it staged is what the
    /// storage then records for that slot; a snapshot asked at a slot the
    /// shadow has not reached is refused, not taken from the wrong state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shadow_snapshots_the_state_the_driver_applied() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let identity = Identity { cell_id: "c".into(), replica_id: 1 };
        let record = InitRecord {
            identity: identity.clone(),
            incarnation: NonZeroU64::new(7).ok_or("zero")?,
            members: vec![],
            joining: false,
        };
        Storage::init(dir.path(), &record)?;
        let storage = Storage::open(dir.path(), &identity)?;

        let mut driver_state = StateMachine::new();
        let mut snapshotter = Snapshotter::start(driver_state.clone(), 0, storage.snapshot_store())?;
        let mut entries = Vec::new();
        for slot in 1..=20u64 {
            let kind = wire::command::Kind::CreateSession(wire::CreateSession {
                client_name: format!("client-{slot}"),
                session_secret: Bytes::from(vec![u8::try_from(slot)?; 16]),
                ..Default::default()
            });
            let bytes = command(slot, kind);
            driver_state.apply(&wire::Command::decode(bytes.as_ref())?);
            entries.push(Entry { slot, ballot: gaios_paxos::Ballot::new(1, 1), value: Value::Batch(vec![bytes]) });
        }
        snapshotter.applied(&entries[..10])?;
        snapshotter.applied(&entries[5..])?;
        snapshotter.take(20)?;
        let taken = snapshotter.next_taken().await?;
        assert_eq!(taken.slot, 20);
        assert_eq!(taken.data, driver_state.snapshot(), "the shadow's snapshot differs from the driver's state");

        snapshotter.take(25)?;
        assert!(matches!(snapshotter.next_taken().await, Err(SnapshotterError::Diverged { wanted: 25, at: 20 })));
        Ok(())
    }

    /// Entries fed one `Ready` at a time reach the shadow in batches (the
    /// driver holds fewer than `FEED_BATCH`), all that are held before a
    /// request for a snapshot, and a reset past held entries supersedes
    /// them: the snapshots are the driver's state at each step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_entries_reach_the_shadow_before_a_snapshot_and_a_reset_supersedes_them() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let identity = Identity { cell_id: "c".into(), replica_id: 1 };
        let record = InitRecord { identity: identity.clone(), incarnation: NonZeroU64::new(7).ok_or("zero")?, members: vec![], joining: false };
        Storage::init(dir.path(), &record)?;
        let storage = Storage::open(dir.path(), &identity)?;
        let mut driver_state = StateMachine::new();
        let mut snapshotter = Snapshotter::start(driver_state.clone(), 0, storage.snapshot_store())?;
        let mut slot = 0u64;
        let feed = |slot: &mut u64, driver_state: &mut StateMachine, snapshotter: &mut Snapshotter, count: u64| -> Result<(), Box<dyn std::error::Error>> {
            for _ in 0..count {
                *slot += 1;
                let slot = *slot;
                let kind = wire::command::Kind::CreateSession(wire::CreateSession {
                    client_name: format!("client-{slot}"),
                    session_secret: Bytes::from(slot.to_le_bytes().repeat(2)),
                    ..Default::default()
                });
                let bytes = command(slot, kind);
                driver_state.apply(&wire::Command::decode(bytes.as_ref())?);
                snapshotter.applied(&[Entry { slot, ballot: gaios_paxos::Ballot::new(1, 1), value: Value::Batch(vec![bytes]) }])?;
            }
            Ok(())
        };
        // More than one batch, and some held.
        let first = u64::try_from(FEED_BATCH)? + 44;
        feed(&mut slot, &mut driver_state, &mut snapshotter, first)?;
        snapshotter.take(first)?;
        assert_eq!(snapshotter.next_taken().await?.data, driver_state.snapshot(), "held entries were not handed over before the snapshot");
        // Some held, then another replica's snapshot further on is installed:
        // the shadow restores it after the held ones, then follows on.
        feed(&mut slot, &mut driver_state, &mut snapshotter, 10)?;
        let mut ahead = driver_state.clone();
        let installed_at = first + 20;
        for extra in 11..=20u64 {
            let kind = wire::command::Kind::CreateSession(wire::CreateSession { client_name: format!("elsewhere-{extra}"), session_secret: Bytes::from(vec![9; 16]), ..Default::default() });
            ahead.apply(&wire::Command::decode(command(first + extra, kind).as_ref())?);
        }
        snapshotter.installed(installed_at, ahead.snapshot())?;
        driver_state = ahead;
        slot = installed_at;
        feed(&mut slot, &mut driver_state, &mut snapshotter, 3)?;
        snapshotter.take(installed_at + 3)?;
        assert_eq!(snapshotter.next_taken().await?.data, driver_state.snapshot(), "the shadow is not the driver's state after a reset");
        Ok(())
    }
}
