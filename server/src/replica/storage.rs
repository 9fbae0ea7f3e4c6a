//! The replica's durable state: one RocksDB in its data directory.
//!
//! # Layout
//!
//! | column family | key | value |
//! |---|---|---|
//! | `paxos` | `h` | the acceptor's [`HardState`] (`gaios.replica.v1.HardState`) |
//! | `paxos` | `l` + slot (8 bytes, big-endian) | one accepted [`Entry`](gaios_paxos::types::Entry) (`gaios.replica.v1.Entry`); big-endian so keys sort by slot |
//! | `state` | (none yet) | reserved; the applied state is kept as the snapshot below |
//! | `meta` | `identity` | the format version, the cell and replica that own the directory, its incarnation and the members `init` was given (`gaios.replica.v1.DataDirIdentity`) |
//! | `meta` | `snapshot` | the latest snapshot's slot, length, CRC-32 and configuration (`gaios.replica.v1.SnapshotMeta`) |
//! | (a file) | `snapshots/<slot, 20 digits>.snap` | the snapshot's data, raw: the applied state (`gaios.state.v1.StateSnapshot`) at its slot; written (and synced) before the record above |
//! | `meta` | `snapshot_data` | the data, in directories written before snapshots were taken off the driver thread (read, never written) |
//! | `meta` | `applied` | an applied slot above the snapshot's, if a state machine records one (Gaios's does not: its state is rebuilt from the snapshot and the log after it) |
//!
//! # Write order
//!
//! Everything one [`Ready`] asks to make durable goes into **one** RocksDB
//! `WriteBatch` written with `sync = true`: hard state, entries (put by slot),
//! snapshot, then the deletion of the log at or below the compaction point.
//!
//! The one exception is a snapshot's data: it can be hundreds of MiB, so it
//! is a file of its own beside the database, written to a temporary name,
//! synced and renamed (and the directory synced) before the batch that
//! records it. Writing it through RocksDB would hold every other write (the
//! driver's included) behind it. The thread that encodes a snapshot the
//! replica takes itself writes the file ([`SnapshotStore::stage`]), and so
//! does the transport for a snapshot received from another replica, so the
//! driver's batch carries only the record (`persist` writes a file no one
//! staged before its batch). Until a record names it a file is
//! an orphan that nothing reads; once the record is written the files of
//! older snapshots are deleted.
//! RocksDB applies a batch atomically, also across column families, so after a
//! crash either all of a `Ready` is on disk or none of it is. The driver sends
//! the `Ready`'s persisted messages only after [`Storage::persist`] returns.
//!
//! # Creating and refusing a directory
//!
//! Only [`Storage::init`] creates a data directory, and only a missing or
//! empty one: `gaios-server init`, for a member of a new cell. It writes the
//! identity (cell, replica, a random incarnation, the members) and the first
//! hard state in one synced batch, between creating and removing the marker
//! file [`INIT_MARKER`], so an interrupted `init` is told apart from data.
//!
//! [`Storage::open`] never creates, initialises, deletes or rewrites
//! anything: an acceptor started on a fresh directory would have forgotten
//! its promises. A directory that is missing, empty or never initialised, an
//! interrupted `init`, one written by a Gaios from before `init`, one that
//! belongs to another cell or replica, that holds files that are not a Gaios
//! database, or whose records do not decode (a missing hard state included)
//! is refused with a [`StorageError`] that says which and what to do.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use gaios_paxos::ready::Ready;
use gaios_paxos::types::{Durable, HardState, ReplicaId, Slot, Snapshot};
use gaios_proto::replica::v1 as peer;
use prost::Message as _;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ErrorKind, IteratorMode, Options,
    WriteBatch, WriteOptions,
};

use crate::replica::codec::{self, CodecError};
use crate::ops::config::PeerSpec;

/// The version of the on-disk format this build reads and writes. A
/// directory written in another version is refused rather than misread.
///
/// Version 2 is the first written by `gaios-server init` (with an
/// incarnation and the initial members); version 1 directories were
/// initialised silently by any start and are refused as
/// [`StorageError::PredatesInit`].
pub const FORMAT_VERSION: u32 = 2;
/// The format version of Gaios builds from before `gaios-server init`.
const FORMAT_VERSION_BEFORE_INIT: u32 = 1;

/// The file `init` creates first and removes last: a directory that holds it
/// is an initialisation that did not finish, on which no replica ever ran
/// (a start refuses it), so it never held a vote.
pub const INIT_MARKER: &str = "GAIOS-INIT-INCOMPLETE";

/// The column family of the acceptor's hard state and log.
const CF_PAXOS: &str = "paxos";
/// The column family of the applied namespace state.
const CF_STATE: &str = "state";
/// The column family of the directory's identity, the snapshot and the
/// applied slot.
const CF_META: &str = "meta";
/// The column families a Gaios data directory holds; RocksDB adds `default`.
const COLUMN_FAMILIES: [&str; 3] = [CF_PAXOS, CF_STATE, CF_META];

const HARD_STATE_KEY: &[u8] = b"h";
const LOG_PREFIX: u8 = b'l';
const LOG_KEY_LEN: usize = 9;
const IDENTITY_KEY: &[u8] = b"identity";
const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Where directories written before snapshot data went to files keep it.
const SNAPSHOT_DATA_LEGACY_KEY: &[u8] = b"snapshot_data";
/// The folder of the data directory that holds snapshots' data.
const SNAPSHOTS_DIR: &str = "snapshots";
/// A snapshot file is synced after every this many bytes written.
const SNAPSHOT_FILE_SYNC_BYTES: usize = 4 << 20;
const APPLIED_KEY: &[u8] = b"applied";
/// Written once the replica applied a configuration without itself: the
/// slot of that change. A removed replica never starts again.
const REMOVED_KEY: &[u8] = b"removed";

type Db = rocksdb::DBWithThreadMode<rocksdb::SingleThreaded>;

/// The file of the data of the snapshot at `slot` in data directory `dir`.
fn snapshot_file(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(SNAPSHOTS_DIR).join(format!("{slot:020}.snap"))
}

/// Writes `data` as the snapshot file of `slot` (to a temporary name,
/// synced, renamed, the folder synced); returns its CRC-32.
fn write_snapshot_file(dir: &Path, slot: Slot, data: &[u8]) -> Result<u32, StorageError> {
    let folder = dir.join(SNAPSHOTS_DIR);
    let io_error = |source| StorageError::Io { dir: dir.to_path_buf(), source };
    {
        // Created (and its name synced) by one writer at a time, so that
        // no writer relies on a folder whose entry is not durable yet.
        static CREATING: Mutex<()> = Mutex::new(());
        let _one = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        if !folder.exists() {
            std::fs::create_dir_all(&folder).map_err(io_error)?;
            sync_directory(dir)?;
        }
    }
    let path = snapshot_file(dir, slot);
    // A name of its own per write: two threads may write one slot's file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("snap.tmp{write}"));
    let mut file = std::fs::File::create(&temporary).map_err(io_error)?;
    // Synced piece by piece: hundreds of MiB of dirty pages would make the
    // next fsync of the write-ahead log (on ext4, which commits a file's
    // data with the journal) wait for all of them.
    for piece in data.chunks(SNAPSHOT_FILE_SYNC_BYTES) {
        file.write_all(piece).and_then(|()| file.sync_data()).map_err(io_error)?;
    }
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&temporary, &path).map_err(io_error)?;
    sync_directory(&folder)?;
    Ok(crc32fast::hash(data))
}

/// Reads the snapshot file of `slot`, `None` if there is none.
fn read_snapshot_file(dir: &Path, slot: Slot) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(snapshot_file(dir, slot)) {
        Ok(data) => Ok(Some(data)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StorageError::Io { dir: dir.to_path_buf(), source }),
    }
}

/// Deletes the snapshot files of slots below `slot` (or, with
/// `temporary`, the temporary files of writes a crash cut short: only when
/// no write can be under way, at open); a file that cannot be deleted is
/// only logged (it wastes space, nothing reads it).
fn remove_snapshot_files_below(dir: &Path, slot: Slot, temporary: bool) {
    let Ok(entries) = std::fs::read_dir(dir.join(SNAPSHOTS_DIR)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((digits, extension)) = name.split_once('.') else { continue };
        let ours = if temporary { extension.starts_with("snap.tmp") } else { extension == "snap" };
        if ours && digits.parse::<Slot>().is_ok_and(|found| found < slot)
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(file = %entry.path().display(), %error, "cannot delete an old snapshot file");
        }
    }
}

/// What [`SnapshotStore::stage`] wrote for a slot.
#[derive(Debug, Clone, Copy)]
struct Staged {
    crc32: u32,
    bytes: u64,
}

/// Writes the data of a snapshot the replica took, from the thread that
/// encoded it, so that the driver's write of the `Ready` recording the
/// snapshot carries only its metadata (see the module docs).
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    staged: Arc<Mutex<BTreeMap<Slot, Staged>>>,
    dir: PathBuf,
}

impl SnapshotStore {
    /// Writes `data` as the data of the snapshot at `slot`, synced. The
    /// next [`Storage::persist`] of a snapshot at `slot` records it without
    /// writing the data again.
    pub fn stage(&self, slot: Slot, data: &[u8]) -> Result<(), StorageError> {
        let crc32 = write_snapshot_file(&self.dir, slot, data)?;
        self.staged.lock().unwrap_or_else(PoisonError::into_inner).insert(slot, Staged { crc32, bytes: data.len() as u64 });
        Ok(())
    }
}

/// Who owns a data directory: written when the directory is initialised and
/// checked on every open, so that a replica never runs on another replica's
/// (or another cell's) promises and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cell the replica belongs to.
    pub cell_id: String,
    /// The replica's id within the cell.
    pub replica_id: ReplicaId,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cell {:?} replica {}", self.cell_id, self.replica_id)
    }
}

/// What `gaios-server init` records in a new data directory, in one synced
/// write together with the acceptor's first hard state (promised nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitRecord {
    /// The cell and the replica that own the directory.
    pub identity: Identity,
    /// Drawn at random when the directory was initialised: it tells this
    /// directory's life as an acceptor apart from any other directory ever
    /// initialised for the same replica id, so that peers can refuse a
    /// second process or a re-initialised directory that claims the id.
    pub incarnation: NonZeroU64,
    /// The cell's members as `init` was given them, in id order.
    pub members: Vec<PeerSpec>,
    /// True for a replica that joins a running cell (`init --join`): it
    /// starts as a learner, and `members` are the replicas it may first
    /// hear from, not the cell's founding ones.
    pub joining: bool,
}

/// What an uninitialised data directory looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Uninitialised {
    /// The directory does not exist.
    Missing,
    /// The directory exists and holds nothing (a fresh disk, or a mount that
    /// failed and left the bare mount point).
    Empty,
    /// The directory holds a RocksDB database with Gaios's column families
    /// but no record at all: an older build's initialisation, interrupted.
    EmptyDatabase,
}

impl fmt::Display for Uninitialised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Uninitialised::Missing => "does not exist",
            Uninitialised::Empty => "is empty",
            Uninitialised::EmptyDatabase => "holds an empty database with no identity record",
        })
    }
}

/// What an operator must do about a data directory that was never
/// initialised; part of [`StorageError::NotInitialised`]'s message.
pub const NOT_INITIALISED_HELP: &str = "If this replica is a member of a NEW cell, run `gaios-server init` with the same --id, --data-dir, --cell-id and --peer flags first. \
If this replica's disk was lost or replaced (or --data-dir names a mount that failed), do NOT run `gaios-server init` for it as a member of the running cell: \
an acceptor that forgot its promises and votes can make the cell lose acknowledged writes. \
Bringing a replica back after losing its disk needs membership change, which Gaios does not have yet; until then the cell runs without this replica.";

/// Why storage could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The directory belongs to another cell or replica. Running on it would
    /// let this replica vote with promises it never made, so it is refused;
    /// point the replica at its own directory.
    #[error(
        "data directory {dir} belongs to {found}, not to {expected}; refusing to use another replica's data (check --data-dir and the replica id)"
    )]
    ForeignDataDir {
        /// The directory refused.
        dir: PathBuf,
        /// The identity the replica was started with.
        expected: Identity,
        /// The identity recorded in the directory.
        found: Identity,
    },
    /// The replica was removed from its cell (a configuration without it
    /// was chosen at `slot`). It must not take part again: its id is
    /// retired, and a replacement joins under a new id.
    #[error(
        "the replica owning {dir} was removed from its cell by the configuration change at slot {slot}; it will not start again. To bring this machine back, wipe the directory and join it under a new id (`gaios-server init --join`, then `gaios member add`)"
    )]
    Removed {
        /// The directory refused.
        dir: PathBuf,
        /// The slot of the change that removed it.
        slot: Slot,
    },
    /// The directory is not a Gaios data directory this build can read, or
    /// a record in it does not decode. Nothing was changed; an operator must
    /// look at it.
    #[error("data directory {dir} is corrupt or not a Gaios data directory: {corruption}")]
    Corrupt {
        /// The directory refused.
        dir: PathBuf,
        /// What is wrong with it.
        #[source]
        corruption: Corruption,
    },
    /// The directory was never initialised (it is missing, empty, or an
    /// empty database). A plain start creates nothing: only
    /// `gaios-server init` does, for a member of a new cell.
    #[error("data directory {dir} {found}: it was never initialised by `gaios-server init`. {NOT_INITIALISED_HELP}")]
    NotInitialised {
        /// The directory refused.
        dir: PathBuf,
        /// What was found instead of an initialised directory.
        found: Uninitialised,
    },
    /// `gaios-server init` began on the directory and did not finish (its
    /// marker file [`INIT_MARKER`] is still there). No replica ever ran on
    /// it, so it never held a vote.
    #[error(
        "data directory {dir} holds an initialisation that did not finish (the file {INIT_MARKER} is still there); no replica ever ran on it, so it never held a vote: delete the directory and run `gaios-server init` again"
    )]
    InitInterrupted {
        /// The directory refused.
        dir: PathBuf,
    },
    /// `init` was asked to initialise a directory that already holds
    /// something. Initialising a member's directory again would make it an
    /// acceptor that forgot its promises, so `init` only ever writes into a
    /// missing or empty directory.
    #[error(
        "refusing to initialise {dir}: it is not empty. If it is this replica's data directory, it is initialised already: start the replica on it. Never initialise the directory of a member of a running cell again, and never copy one to another host"
    )]
    NotEmpty {
        /// The directory refused.
        dir: PathBuf,
    },
    /// The directory was written by a Gaios from before `gaios-server init`
    /// (format version 1: initialised silently, no incarnation).
    #[error(
        "data directory {dir} was written by an older Gaios (format version {found}) from before `gaios-server init`, which initialised directories silently and recorded no incarnation; this build refuses it. The cell must be re-created: stop every replica, delete every member's data directory and run `gaios-server init` for each (their data is lost). Never re-create only some members of a cell that holds data"
    )]
    PredatesInit {
        /// The directory refused.
        dir: PathBuf,
        /// The format version recorded in it.
        found: u32,
    },
    /// The members given on the command line are not the members `init`
    /// recorded. Membership is fixed until Gaios has membership change, so
    /// the flags must name the same ids and addresses.
    #[error("data directory {dir} was initialised with other members than the --peer flags name: {difference}")]
    MembersDiffer {
        /// The directory refused.
        dir: PathBuf,
        /// The first difference found.
        difference: MemberDifference,
    },
    /// The directory could not be inspected or created.
    #[error("cannot use data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB failed for a reason other than corruption (full disk, I/O
    /// error, the directory locked by another process).
    #[error("RocksDB failed on {dir}: {source}")]
    Rocks {
        /// The directory.
        dir: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
}

/// How the members on the command line differ from those `init` recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemberDifference {
    /// A recorded member is not among the `--peer` flags.
    #[error("member {0} is recorded in the data directory but not given by --peer")]
    NotGiven(ReplicaId),
    /// A `--peer` flag names a member that was not recorded.
    #[error("member {0} is given by --peer but was not recorded by init")]
    NotRecorded(ReplicaId),
    /// A member's peer address differs.
    #[error("member {id}'s peer address is {recorded} in the data directory but {given} on the command line")]
    PeerAddress {
        /// The member.
        id: ReplicaId,
        /// The address `init` recorded.
        recorded: SocketAddr,
        /// The address given now.
        given: SocketAddr,
    },
    /// A member's client address differs.
    #[error("member {id}'s client address is {recorded} in the data directory but {given} on the command line")]
    ClientAddress {
        /// The member.
        id: ReplicaId,
        /// The address `init` recorded.
        recorded: SocketAddr,
        /// The address given now.
        given: SocketAddr,
    },
}

/// What is wrong with a directory refused as [`StorageError::Corrupt`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The directory holds files but no RocksDB database.
    #[error("it holds files but no RocksDB database (no CURRENT file)")]
    NotRocksDb,
    /// RocksDB found its own files damaged.
    #[error("RocksDB cannot read it: {0}")]
    Unreadable(#[source] rocksdb::Error),
    /// The RocksDB database lacks a column family that Gaios creates.
    #[error("it is a RocksDB database without the column family {0:?}")]
    MissingColumnFamily(&'static str),
    /// The RocksDB database has a column family that Gaios never creates.
    #[error("it is a RocksDB database with an unknown column family {0:?}")]
    UnknownColumnFamily(String),
    /// The database holds data but no identity record.
    #[error("it holds data but no identity record")]
    MissingIdentity,
    /// The directory was written in a format this build does not know.
    #[error("format version {found} is not the supported version {FORMAT_VERSION}")]
    UnknownFormatVersion {
        /// The version recorded in the directory.
        found: u32,
    },
    /// A record does not decode.
    #[error("record {key} does not decode: {source}")]
    Record {
        /// The record's column family and key, for the operator.
        key: String,
        /// What is wrong with it.
        #[source]
        source: CodecError,
    },
    /// A key in the `paxos` column family is neither the hard state nor a
    /// log key.
    #[error("unexpected key {key:?} in column family {CF_PAXOS:?}")]
    UnexpectedKey {
        /// The key found.
        key: Vec<u8>,
    },
    /// A log record holds an entry for another slot than its key names.
    #[error("log key for slot {key_slot} holds an entry for slot {entry_slot}")]
    SlotMismatch {
        /// The slot named by the key.
        key_slot: Slot,
        /// The slot named by the entry.
        entry_slot: Slot,
    },
    /// The log holds an entry that the snapshot covers; the write that
    /// stored the snapshot should have deleted it.
    #[error("log holds slot {slot} at or below the snapshot's slot {snapshot_slot}")]
    EntryBelowSnapshot {
        /// The entry's slot.
        slot: Slot,
        /// The snapshot's slot.
        snapshot_slot: Slot,
    },
    /// The snapshot's data is missing or has another length than its
    /// metadata records.
    #[error("snapshot data is {found:?} bytes, metadata says {expected}")]
    SnapshotData {
        /// The length the metadata records.
        expected: u64,
        /// The length found, or `None` if the data is missing.
        found: Option<u64>,
    },
    /// The snapshot's data does not have the CRC-32 its metadata records.
    #[error("snapshot data has CRC-32 {found:08x}, metadata says {expected:08x}")]
    SnapshotChecksum {
        /// The checksum the metadata records.
        expected: u32,
        /// The checksum of the data found.
        found: u32,
    },
    /// The directory is initialised but holds no hard state. `init` writes
    /// one with the identity, and no write deletes it; reading its absence
    /// as "promised nothing" could break a promise the acceptor made.
    #[error("it is initialised but holds no hard-state record (the acceptor's promise)")]
    MissingHardState,
    /// The identity record names a member with an address that does not
    /// parse.
    #[error("the identity record gives member {id} the address {address:?}, which is not a socket address")]
    BadMemberAddress {
        /// The member.
        id: ReplicaId,
        /// The address recorded.
        address: String,
    },
    /// The applied slot is not 8 bytes.
    #[error("applied slot record is {len} bytes, not 8")]
    AppliedSlot {
        /// The record's length.
        len: usize,
    },
}

/// A replica's durable state in one RocksDB database.
///
/// One `Storage` per process and directory: RocksDB locks the directory, so
/// a second open (in this or another process) fails instead of corrupting it.
pub struct Storage {
    db: Arc<Db>,
    /// The slots whose snapshot data [`SnapshotStore::stage`] wrote and no
    /// record names yet, with the data's CRC-32 and length.
    staged: Arc<Mutex<BTreeMap<Slot, Staged>>>,
    /// The options the database was opened with; they own its statistics.
    #[cfg_attr(not(test), allow(dead_code))]
    options: Options,
    dir: PathBuf,
    /// The thread deleting older snapshot files, if one was started.
    remover: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("dir", &self.dir).finish()
    }
}

impl Storage {
    fn with_db(db: Db, options: Options, dir: &Path) -> Storage {
        Storage { db: Arc::new(db), staged: Arc::default(), options, dir: dir.to_path_buf(), remover: Arc::default() }
    }

    /// A handle another thread writes snapshot data with (see
    /// [`SnapshotStore`]).
    pub fn snapshot_store(&self) -> SnapshotStore {
        SnapshotStore { staged: self.staged.clone(), dir: self.dir.clone() }
    }

    /// Creates the data directory of a member of a new cell: `dir` must be
    /// missing or empty. Writes `record` and the acceptor's first hard state
    /// (promised nothing) in one synced RocksDB write batch.
    ///
    /// The marker file [`INIT_MARKER`] is created (and synced) before the
    /// database and removed (and the removal synced) after the batch, so an
    /// initialisation killed at any point leaves a directory that both
    /// `init` and [`Storage::open`] refuse as
    /// [`StorageError::InitInterrupted`], or an empty one.
    pub fn init(dir: &Path, record: &InitRecord) -> Result<(), StorageError> {
        let io_error = |source| StorageError::Io { dir: dir.to_path_buf(), source };
        match inspect(dir)? {
            DirState::Missing => {
                std::fs::create_dir_all(dir).map_err(io_error)?;
                // The new directory's name must survive a power loss too.
                let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty());
                sync_directory(parent.unwrap_or(Path::new(".")))?;
            }
            DirState::Empty => {}
            DirState::NotEmpty if dir.join(INIT_MARKER).exists() => {
                return Err(StorageError::InitInterrupted { dir: dir.to_path_buf() });
            }
            DirState::NotEmpty => return Err(StorageError::NotEmpty { dir: dir.to_path_buf() }),
        }
        let marker = dir.join(INIT_MARKER);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).map_err(io_error)?;
        file.write_all(b"gaios-server init did not finish here; no replica ever ran on this directory, so it may be deleted and initialised again\n")
            .and_then(|()| file.sync_all())
            .map_err(io_error)?;
        sync_directory(dir)?;

        let (db, options) = open_db(dir, OpenMode::Create)?;
        let storage = Storage::with_db(db, options, dir);
        let mut batch = WriteBatch::default();
        batch.put_cf(storage.cf(CF_META)?, IDENTITY_KEY, encode_init_record(record).encode_to_vec());
        batch.put_cf(
            storage.cf(CF_PAXOS)?,
            HARD_STATE_KEY,
            codec::encode_hard_state(&HardState::default()).encode_to_vec(),
        );
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        storage.db.write_opt(batch, &write_options).map_err(|e| rocks_error(dir, e))?;
        drop(storage);

        std::fs::remove_file(&marker).map_err(io_error)?;
        sync_directory(dir)?;
        tracing::info!(dir = %dir.display(), identity = %record.identity,
            incarnation = %format_args!("{:016x}", record.incarnation), "initialised data directory");
        Ok(())
    }

    /// Opens the data directory of the replica `identity`, which
    /// [`Storage::init`] created. Never creates, initialises or repairs
    /// anything.
    ///
    /// A missing or empty directory, or a database without records, is
    /// refused as [`StorageError::NotInitialised`]; an initialisation that
    /// did not finish as [`StorageError::InitInterrupted`]; a directory of
    /// an older format, of another cell or replica, or one that does not
    /// decode, with the error that says which. Checks run on a read-only
    /// open first, so a refused directory is left exactly as it was.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Storage, StorageError> {
        Storage::open_checked(dir, identity, None)
    }

    /// [`Storage::open`] for a replica started with `members` (in id
    /// order): the directory is also refused, unchanged, if `init` recorded
    /// other members or addresses ([`StorageError::MembersDiffer`] names the
    /// first difference).
    pub fn open_member(dir: &Path, identity: &Identity, members: &[PeerSpec]) -> Result<Storage, StorageError> {
        Storage::open_checked(dir, identity, Some(members))
    }

    fn open_checked(dir: &Path, identity: &Identity, members: Option<&[PeerSpec]>) -> Result<Storage, StorageError> {
        let not_initialised = |found| StorageError::NotInitialised { dir: dir.to_path_buf(), found };
        let corrupt = |corruption| StorageError::Corrupt { dir: dir.to_path_buf(), corruption };
        match inspect(dir)? {
            DirState::Missing => return Err(not_initialised(Uninitialised::Missing)),
            DirState::Empty => return Err(not_initialised(Uninitialised::Empty)),
            DirState::NotEmpty => {}
        }
        if dir.join(INIT_MARKER).exists() {
            return Err(StorageError::InitInterrupted { dir: dir.to_path_buf() });
        }
        // Only a directory RocksDB itself set up gets past here, so that
        // opening can never make RocksDB create a database among foreign
        // files.
        if !dir.join("CURRENT").is_file() {
            return Err(corrupt(Corruption::NotRocksDb));
        }
        let families = Db::list_cf(&Options::default(), dir).map_err(|e| rocks_error(dir, e))?;
        for name in &families {
            if name != "default" && !COLUMN_FAMILIES.contains(&name.as_str()) {
                return Err(corrupt(Corruption::UnknownColumnFamily(name.clone())));
            }
        }
        if let Some(missing) = COLUMN_FAMILIES.into_iter().find(|name| !families.iter().any(|f| f == name)) {
            // An older build's initialisation killed while RocksDB created
            // the column families one by one leaves some missing and the
            // others empty; anything else is not a Gaios directory.
            if present_families_empty(dir, &families)? {
                return Err(not_initialised(Uninitialised::EmptyDatabase));
            }
            return Err(corrupt(Corruption::MissingColumnFamily(missing)));
        }
        {
            let (db, options) = open_db(dir, OpenMode::ReadOnly)?;
            let probe = Storage::with_db(db, options, dir);
            let record = probe.init_record()?;
            if record.identity != *identity {
                return Err(StorageError::ForeignDataDir {
                    dir: dir.to_path_buf(),
                    expected: identity.clone(),
                    found: record.identity,
                });
            }
            if let Some(difference) = members.and_then(|given| member_difference(&record.members, given)) {
                return Err(StorageError::MembersDiffer { dir: dir.to_path_buf(), difference });
            }
            if let Some(slot) = probe.removed()? {
                return Err(StorageError::Removed { dir: dir.to_path_buf(), slot });
            }
        }
        let (db, options) = open_db(dir, OpenMode::Existing)?;
        // Temporary snapshot files a crash left behind (the directory
        // passed every check; no write is under way before it is open).
        remove_snapshot_files_below(dir, Slot::MAX, true);
        Ok(Storage::with_db(db, options, dir))
    }

    /// What `init` recorded in the directory (identity, incarnation,
    /// members), checked to be of this build's format.
    pub fn init_record(&self) -> Result<InitRecord, StorageError> {
        let Some(bytes) = self.get(CF_META, IDENTITY_KEY)? else {
            if self.all_column_families_empty()? {
                return Err(StorageError::NotInitialised {
                    dir: self.dir.clone(),
                    found: Uninitialised::EmptyDatabase,
                });
            }
            return Err(self.corrupt(Corruption::MissingIdentity));
        };
        let record: peer::DataDirIdentity = decode_record(&self.dir, CF_META, IDENTITY_KEY, &bytes)?;
        if record.format_version == FORMAT_VERSION_BEFORE_INIT {
            return Err(StorageError::PredatesInit { dir: self.dir.clone(), found: record.format_version });
        }
        if record.format_version != FORMAT_VERSION {
            return Err(self.corrupt(Corruption::UnknownFormatVersion { found: record.format_version }));
        }
        let identity = Identity { cell_id: record.cell_id, replica_id: record.replica_id };
        let incarnation = NonZeroU64::new(record.incarnation)
            .ok_or_else(|| self.record_error(CF_META, IDENTITY_KEY, CodecError::Missing("DataDirIdentity.incarnation")))?;
        let members = record
            .members
            .into_iter()
            .map(|member| {
                let address = |text: String| {
                    text.parse::<SocketAddr>()
                        .map_err(|_| self.corrupt(Corruption::BadMemberAddress { id: member.id, address: text }))
                };
                Ok(PeerSpec {
                    id: member.id,
                    peer_address: address(member.peer_address)?,
                    client_address: address(member.client_address)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(InitRecord { identity, incarnation, members, joining: record.joining })
    }

    /// The slot of the change that removed this replica from its cell, if
    /// one did ([`Storage::mark_removed`]).
    pub fn removed(&self) -> Result<Option<Slot>, StorageError> {
        let Some(bytes) = self.get(CF_META, REMOVED_KEY)? else { return Ok(None) };
        let bytes: [u8; 8] =
            bytes.as_slice().try_into().map_err(|_| self.corrupt(Corruption::AppliedSlot { len: bytes.len() }))?;
        Ok(Some(Slot::from_be_bytes(bytes)))
    }

    /// Records, synced, that a configuration without this replica was
    /// chosen at `slot`: from then on the directory refuses to start
    /// ([`StorageError::Removed`]).
    pub fn mark_removed(&self, slot: Slot) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_META)?, REMOVED_KEY, slot.to_be_bytes(), &options)
            .map_err(|e| rocks_error(&self.dir, e))
    }

    /// The data directory, for logs and error messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads back everything the core needs to restart: the hard state, the
    /// log (in slot order), the snapshot and the applied slot.
    ///
    /// The applied slot is the `applied` record that the state machine
    /// writes with its effects if there is one, else the snapshot's slot,
    /// else 0. Any record that does not decode is an error, never a default.
    pub fn load(&self) -> Result<Durable, StorageError> {
        let hard_state = match self.get(CF_PAXOS, HARD_STATE_KEY)? {
            None => return Err(self.corrupt(Corruption::MissingHardState)),
            Some(bytes) => {
                let record = decode_record(&self.dir, CF_PAXOS, HARD_STATE_KEY, &bytes)?;
                codec::decode_hard_state(record)
                    .map_err(|e| self.record_error(CF_PAXOS, HARD_STATE_KEY, e))?
            }
        };

        let snapshot = match self.get(CF_META, SNAPSHOT_KEY)? {
            None => None,
            Some(bytes) => {
                let meta: peer::SnapshotMeta =
                    decode_record(&self.dir, CF_META, SNAPSHOT_KEY, &bytes)?;
                let data = if meta.data_in_file {
                    read_snapshot_file(&self.dir, meta.slot)?
                } else {
                    self.get(CF_META, SNAPSHOT_DATA_LEGACY_KEY)?
                };
                let found = data.as_ref().map(|d| d.len() as u64);
                let Some(data) = data.filter(|_| found == Some(meta.data_bytes)) else {
                    return Err(self.corrupt(Corruption::SnapshotData {
                        expected: meta.data_bytes,
                        found,
                    }));
                };
                if let Some(expected) = meta.data_crc32 {
                    let found = crc32fast::hash(&data);
                    if found != expected {
                        return Err(self.corrupt(Corruption::SnapshotChecksum { expected, found }));
                    }
                }
                // A data directory written before configurations changed
                // holds none: the founding configuration is in force
                // (the core reads an empty one so).
                let membership = match meta.membership {
                    Some(membership) => codec::decode_membership(membership)
                        .map_err(|e| self.record_error(CF_META, SNAPSHOT_KEY, e))?,
                    None => gaios_paxos::Membership::default(),
                };
                Some(Snapshot {
                    slot: meta.slot,
                    data: data.into(),
                    membership,
                })
            }
        };

        let mut entries = Vec::new();
        let paxos = self.cf(CF_PAXOS)?;
        for item in self.db.iterator_cf(paxos, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| rocks_error(&self.dir, e))?;
            if *key == *HARD_STATE_KEY {
                continue;
            }
            let Some(key_slot) = slot_of_log_key(&key) else {
                return Err(self.corrupt(Corruption::UnexpectedKey { key: key.to_vec() }));
            };
            let record = decode_record(&self.dir, CF_PAXOS, &key, &value)?;
            let entry =
                codec::decode_entry(record).map_err(|e| self.record_error(CF_PAXOS, &key, e))?;
            if entry.slot != key_slot {
                return Err(self.corrupt(Corruption::SlotMismatch {
                    key_slot,
                    entry_slot: entry.slot,
                }));
            }
            if let Some(snapshot) = &snapshot
                && entry.slot <= snapshot.slot
            {
                return Err(self.corrupt(Corruption::EntryBelowSnapshot {
                    slot: entry.slot,
                    snapshot_slot: snapshot.slot,
                }));
            }
            entries.push(entry);
        }

        let applied = match self.get(CF_META, APPLIED_KEY)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| self.corrupt(Corruption::AppliedSlot { len: bytes.len() }))?;
                Slot::from_be_bytes(bytes)
            }
            None => snapshot.as_ref().map_or(0, |s| s.slot),
        };

        Ok(Durable {
            hard_state,
            entries,
            snapshot,
            applied,
        })
    }

    /// Makes durable what `ready` asks for, in one synced write (group
    /// commit): the hard state, the entries, the snapshot, and the deletion
    /// of the log at or below `compact_through` and the snapshot's slot.
    ///
    /// A `Ready` with nothing to persist writes nothing. When this returns
    /// `Ok`, the write survives a crash of the process or the machine, and
    /// the driver may send the `Ready`'s persisted messages.
    pub fn persist(&self, ready: &Ready) -> Result<(), StorageError> {
        self.persist_with(ready, true)
    }

    /// [`Storage::persist`], syncing the write-ahead log only if `sync`.
    /// Unsynced is for a `Ready` whose only change is the chosen prefix
    /// (see the driver): a later synced write makes it durable with
    /// everything before it, and losing it loses only knowledge that the
    /// replica learns again.
    pub fn persist_with(&self, ready: &Ready, sync: bool) -> Result<(), StorageError> {
        if ready.nothing_to_persist() {
            return Ok(());
        }
        let paxos = self.cf(CF_PAXOS)?;
        let meta = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        if let Some(hard_state) = &ready.hard_state {
            batch.put_cf(
                paxos,
                HARD_STATE_KEY,
                codec::encode_hard_state(hard_state).encode_to_vec(),
            );
        }
        for entry in &ready.entries {
            batch.put_cf(
                paxos,
                log_key(entry.slot),
                codec::encode_entry(entry).encode_to_vec(),
            );
        }
        if let Some(snapshot) = &ready.snapshot {
            let staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner).remove(&snapshot.slot);
            // Staged data is not written (nor read for its checksum) again.
            // (A state encodes to the same bytes wherever it is encoded, so
            // two stagings of one slot wrote the same file; a length that
            // differs all the same is written again.)
            let crc = match staged {
                Some(staged) if staged.bytes == snapshot.data.len() as u64 => staged.crc32,
                _ => write_snapshot_file(&self.dir, snapshot.slot, &snapshot.data)?,
            };
            let record = peer::SnapshotMeta {
                slot: snapshot.slot,
                data_bytes: snapshot.data.len() as u64,
                membership: Some(codec::encode_membership(&snapshot.membership)),
                data_in_file: true,
                data_crc32: Some(crc),
            };
            batch.put_cf(meta, SNAPSHOT_KEY, record.encode_to_vec());
            batch.delete_cf(meta, SNAPSHOT_DATA_LEGACY_KEY);
        }
        // Deleted last, so that the batch leaves nothing at or below the
        // compaction point even if it also carried entries there.
        let compact_through = ready
            .compact_through
            .into_iter()
            .chain(ready.snapshot.as_ref().map(|s| s.slot))
            .max();
        if let Some(through) = compact_through.filter(|&slot| slot > 0) {
            let end = match through.checked_add(1) {
                Some(next) => log_key(next).to_vec(),
                None => vec![LOG_PREFIX + 1],
            };
            batch.delete_range_cf(paxos, [LOG_PREFIX].as_slice(), end.as_slice());
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| rocks_error(&self.dir, e))?;
        if let Some(snapshot) = &ready.snapshot {
            // No record will ever name a slot at or below this one again.
            self.staged.lock().unwrap_or_else(PoisonError::into_inner).retain(|&slot, _| slot > snapshot.slot);
            self.remove_snapshot_files_below(snapshot.slot);
        }
        Ok(())
    }

    /// Deletes the snapshot files below `slot` on a thread of their own:
    /// unlinking a file of hundreds of MiB costs the kernel tens of
    /// milliseconds of CPU and more of waiting, which on the driver's
    /// thread delayed heartbeats by 150–270 ms after each snapshot of a
    /// 256 MiB state. Temporary files stay (a snapshot being written right
    /// now, by the snapshot thread or for a peer's, owns one). While a
    /// deletion runs another is not started; the next snapshot's deletes
    /// what it left.
    fn remove_snapshot_files_below(&self, slot: Slot) {
        let mut remover = self.remover.lock().unwrap_or_else(PoisonError::into_inner);
        if remover.as_ref().is_some_and(|running| !running.is_finished()) {
            return;
        }
        let dir = self.dir.clone();
        let started = std::thread::Builder::new()
            .name("snapshot-remover".into())
            .spawn(move || remove_snapshot_files_below(&dir, slot, false));
        match started {
            Ok(handle) => *remover = Some(handle),
            Err(error) => {
                tracing::warn!(%error, "cannot start a thread to delete old snapshot files; deleting them here");
                remove_snapshot_files_below(&self.dir, slot, false);
            }
        }
    }

    /// Waits for the deletion of old snapshot files under way, if any.
    #[cfg(test)]
    fn removals_done(&self) {
        let running = self.remover.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(running) = running {
            running.join().expect("the snapshot remover does not panic");
        }
    }

    fn all_column_families_empty(&self) -> Result<bool, StorageError> {
        for name in COLUMN_FAMILIES {
            if let Some(item) = self
                .db
                .iterator_cf(self.cf(name)?, IteratorMode::Start)
                .next()
            {
                item.map_err(|e| rocks_error(&self.dir, e))?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.corrupt(Corruption::MissingColumnFamily(name)))
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(cf)?, key)
            .map_err(|e| rocks_error(&self.dir, e))
    }

    fn corrupt(&self, corruption: Corruption) -> StorageError {
        StorageError::Corrupt {
            dir: self.dir.clone(),
            corruption,
        }
    }

    fn record_error(&self, cf: &str, key: &[u8], source: CodecError) -> StorageError {
        self.corrupt(Corruption::Record {
            key: describe_key(cf, key),
            source,
        })
    }
}

/// What a data directory holds, as far as deciding whether it may be
/// initialised goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirState {
    /// It does not exist.
    Missing,
    /// It exists and holds no entries at all (not even hidden files).
    Empty,
    /// It holds something.
    NotEmpty,
}

fn inspect(dir: &Path) -> Result<DirState, StorageError> {
    let io_error = |source| StorageError::Io { dir: dir.to_path_buf(), source };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(DirState::Empty),
            Some(Ok(_)) => Ok(DirState::NotEmpty),
            Some(Err(source)) => Err(io_error(source)),
        },
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(DirState::Missing),
        Err(source) => Err(io_error(source)),
    }
}

/// The first difference between the members `init` recorded and those
/// `given` now (both in id order), if any.
fn member_difference(recorded: &[PeerSpec], given: &[PeerSpec]) -> Option<MemberDifference> {
    for member in recorded {
        let Some(now) = given.iter().find(|peer| peer.id == member.id) else {
            return Some(MemberDifference::NotGiven(member.id));
        };
        if now.peer_address != member.peer_address {
            return Some(MemberDifference::PeerAddress {
                id: member.id,
                recorded: member.peer_address,
                given: now.peer_address,
            });
        }
        if now.client_address != member.client_address {
            return Some(MemberDifference::ClientAddress {
                id: member.id,
                recorded: member.client_address,
                given: now.client_address,
            });
        }
    }
    given
        .iter()
        .find(|peer| !recorded.iter().any(|member| member.id == peer.id))
        .map(|peer| MemberDifference::NotRecorded(peer.id))
}

/// Makes the creation and removal of files in `dir` durable.
fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| StorageError::Io { dir: dir.to_path_buf(), source })
}

fn encode_init_record(record: &InitRecord) -> peer::DataDirIdentity {
    peer::DataDirIdentity {
        format_version: FORMAT_VERSION,
        cell_id: record.identity.cell_id.clone(),
        replica_id: record.identity.replica_id,
        incarnation: record.incarnation.get(),
        members: record
            .members
            .iter()
            .map(|member| peer::CellMember {
                id: member.id,
                peer_address: member.peer_address.to_string(),
                client_address: member.client_address.to_string(),
            })
            .collect(),
        joining: record.joining,
    }
}

/// How [`open_db`] opens the database.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// Initialising an empty directory: create the database and its column
    /// families.
    Create,
    /// Opening an existing database for reading and writing.
    Existing,
    /// Inspecting an existing database without changing any file.
    ReadOnly,
}

/// Whether every column family in `families` of the database in `dir` is
/// empty (read-only: no file changes).
fn present_families_empty(dir: &Path, families: &[String]) -> Result<bool, StorageError> {
    let db = Db::open_cf_for_read_only(&Options::default(), dir, families, false).map_err(|e| rocks_error(dir, e))?;
    for name in families {
        let Some(cf) = db.cf_handle(name) else { continue };
        if let Some(item) = db.iterator_cf(cf, IteratorMode::Start).next() {
            item.map_err(|e| rocks_error(dir, e))?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Opens the database with Gaios's column families.
fn open_db(dir: &Path, mode: OpenMode) -> Result<(Db, Options), StorageError> {
    let mut options = Options::default();
    // Tests count WAL syncs; production does without the overhead.
    #[cfg(test)]
    options.enable_statistics();
    options.create_if_missing(mode == OpenMode::Create);
    options.create_missing_column_families(mode == OpenMode::Create);
    // The build carries no compression libraries, and the records are small.
    options.set_compression_type(DBCompressionType::None);
    options.set_keep_log_file_num(4);
    let families = COLUMN_FAMILIES.map(|name| {
        let mut cf_options = Options::default();
        cf_options.set_compression_type(DBCompressionType::None);
        ColumnFamilyDescriptor::new(name, cf_options)
    });
    let db = match mode {
        OpenMode::ReadOnly => Db::open_cf_descriptors_read_only(&options, dir, families, false),
        OpenMode::Create | OpenMode::Existing => Db::open_cf_descriptors(&options, dir, families),
    }
    .map_err(|e| rocks_error(dir, e))?;
    Ok((db, options))
}

/// Classifies a RocksDB error: damage to its files makes the directory
/// corrupt; anything else (I/O, a lock held) is an operational failure.
fn rocks_error(dir: &Path, source: rocksdb::Error) -> StorageError {
    match source.kind() {
        ErrorKind::Corruption => StorageError::Corrupt {
            dir: dir.to_path_buf(),
            corruption: Corruption::Unreadable(source),
        },
        _ => StorageError::Rocks {
            dir: dir.to_path_buf(),
            source,
        },
    }
}

fn decode_record<T: prost::Message + Default>(
    dir: &Path,
    cf: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StorageError> {
    codec::decode_bytes(bytes, std::any::type_name::<T>()).map_err(|source| StorageError::Corrupt {
        dir: dir.to_path_buf(),
        corruption: Corruption::Record {
            key: describe_key(cf, key),
            source,
        },
    })
}

fn describe_key(cf: &str, key: &[u8]) -> String {
    match slot_of_log_key(key) {
        Some(slot) if cf == CF_PAXOS => format!("{cf}/log/{slot}"),
        _ => format!("{cf}/{}", key.escape_ascii()),
    }
}

fn log_key(slot: Slot) -> [u8; LOG_KEY_LEN] {
    let mut key = [0; LOG_KEY_LEN];
    key[0] = LOG_PREFIX;
    key[1..].copy_from_slice(&slot.to_be_bytes());
    key
}

fn slot_of_log_key(key: &[u8]) -> Option<Slot> {
    match key {
        [LOG_PREFIX, rest @ ..] => Some(Slot::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use gaios_paxos::types::{Ballot, Entry, Value};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn identity() -> Identity {
        Identity {
            cell_id: "test-cell".to_owned(),
            replica_id: 3,
        }
    }

    fn members() -> Vec<PeerSpec> {
        (1..=5)
            .map(|id| PeerSpec {
                id,
                peer_address: SocketAddr::from(([127, 0, 0, 1], 7100 + id as u16)),
                client_address: SocketAddr::from(([127, 0, 0, 1], 7200 + id as u16)),
            })
            .collect()
    }

    fn record() -> InitRecord {
        InitRecord {
            identity: identity(),
            incarnation: NonZeroU64::new(0x5eed_0000_0000_0003).expect("not zero"),
            members: members(),
            joining: false,
        }
    }

    /// A replica removed from its cell never opens its directory again; the
    /// record survives a reopen.
    #[test]
    fn a_removed_replica_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        assert_eq!(storage.removed()?, None);
        storage.mark_removed(42)?;
        drop(storage);
        match Storage::open_member(dir.path(), &identity(), &members()) {
            Err(StorageError::Removed { slot: 42, .. }) => {}
            other => panic!("a removed replica must be refused, got {other:?}"),
        }
        Ok(())
    }

    /// Initialises `dir` as `init` does and opens it.
    fn open_new(dir: &Path) -> Result<Storage, StorageError> {
        Storage::init(dir, &record())?;
        Storage::open(dir, &identity())
    }

    fn entry(slot: Slot, round: u64) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(round, 1),
            value: Value::Batch(vec![Bytes::from(format!("command {slot}@{round}"))]),
        }
    }

    fn ready_with(
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
        compact_through: Option<Slot>,
    ) -> Ready {
        let mut ready = Ready::default();
        ready.hard_state = hard_state;
        ready.entries = entries;
        ready.snapshot = snapshot;
        ready.compact_through = compact_through;
        ready
    }

    fn slots(durable: &Durable) -> Vec<(Slot, u64)> {
        durable
            .entries
            .iter()
            .map(|e| (e.slot, e.ballot.round))
            .collect()
    }

    /// The names, sizes and modification times of a directory's files.
    fn listing(
        dir: &Path,
    ) -> std::io::Result<Vec<(std::ffi::OsString, u64, std::time::SystemTime)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            files.push((entry.file_name(), metadata.len(), metadata.modified()?));
        }
        files.sort();
        Ok(files)
    }

    /// What one `persist` writes, `load` reads back, also after reopening.
    #[test]
    fn persist_then_load_round_trips() -> TestResult {
        let dir = tempfile::tempdir()?;
        let hard_state = HardState {
            promised: Ballot::new(4, 2),
            chosen_through: 2,
        };
        let entries = vec![
            entry(1, 4),
            Entry {
                slot: 2,
                ballot: Ballot::new(4, 2),
                value: Value::Noop,
            },
            entry(3, 4),
        ];
        {
            let storage = open_new(dir.path())?;
            let empty = storage.load()?;
            assert_eq!(empty.hard_state, HardState::default());
            assert!(empty.entries.is_empty() && empty.snapshot.is_none());
            assert_eq!(empty.applied, 0);
            storage.persist(&ready_with(Some(hard_state), entries.clone(), None, None))?;
            assert_eq!(storage.load()?.entries, entries);
        }
        let storage = Storage::open(dir.path(), &identity())?;
        let durable = storage.load()?;
        assert_eq!(durable.hard_state, hard_state);
        assert_eq!(durable.entries, entries);
        assert_eq!(durable.snapshot, None);
        Ok(())
    }

    /// A `Ready` without a hard state keeps the stored one, and a later entry
    /// for a slot replaces the earlier one.
    #[test]
    fn later_writes_overwrite_by_slot_and_keep_the_rest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let hard_state = HardState {
            promised: Ballot::new(1, 1),
            chosen_through: 0,
        };
        storage.persist(&ready_with(
            Some(hard_state),
            vec![entry(1, 1), entry(2, 1)],
            None,
            None,
        ))?;
        storage.persist(&ready_with(None, vec![entry(2, 5)], None, None))?;
        let durable = storage.load()?;
        assert_eq!(durable.hard_state, hard_state);
        assert_eq!(slots(&durable), [(1, 1), (2, 5)]);
        assert_eq!(durable.entries[1], entry(2, 5));
        Ok(())
    }

    /// A `Ready` with nothing to persist leaves the database untouched.
    #[test]
    fn empty_ready_writes_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let before = storage.db.latest_sequence_number();
        storage.persist(&Ready::default())?;
        assert_eq!(storage.db.latest_sequence_number(), before);
        Ok(())
    }

    /// Every `persist` syncs the write-ahead log before it returns: the
    /// SIGKILL test cannot see a missing sync (the kernel keeps the write),
    /// so this one counts them.
    #[test]
    fn persist_syncs_the_log_once_per_ready() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let synced = || {
            storage
                .options
                .get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
        };
        let before = synced();
        for slot in 1..=3 {
            storage.persist(&ready_with(None, vec![entry(slot, 1)], None, None))?;
        }
        assert_eq!(synced() - before, 3);
        // A chosen prefix alone, unsynced: written, not synced.
        let marker = HardState { promised: Ballot::new(1, 1), chosen_through: 3 };
        storage.persist_with(&ready_with(Some(marker), vec![], None, None), false)?;
        assert_eq!(synced() - before, 3);
        assert_eq!(storage.load()?.hard_state, marker);
        Ok(())
    }

    /// `compact_through` drops the log at or below it and nothing above.
    #[test]
    fn compaction_drops_entries_at_or_below() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let entries = (1..=6).map(|slot| entry(slot, 1)).collect();
        storage.persist(&ready_with(None, entries, None, None))?;
        storage.persist(&ready_with(None, vec![], None, Some(3)))?;
        assert_eq!(slots(&storage.load()?), [(4, 1), (5, 1), (6, 1)]);
        // Entries and a compaction point in one batch: the deletion wins.
        storage.persist(&ready_with(
            None,
            vec![entry(4, 2), entry(7, 2)],
            None,
            Some(4),
        ))?;
        assert_eq!(slots(&storage.load()?), [(5, 1), (6, 1), (7, 2)]);
        storage.persist(&ready_with(None, vec![], None, Some(Slot::MAX)))?;
        assert!(storage.load()?.entries.is_empty());
        Ok(())
    }

    /// A snapshot is stored, drops the log it covers, and gives the applied
    /// slot until the state machine records its own.
    #[test]
    fn snapshot_is_stored_and_covers_the_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let entries = (1..=5).map(|slot| entry(slot, 1)).collect();
        storage.persist(&ready_with(None, entries, None, None))?;
        let snapshot = Snapshot {
            slot: 3,
            data: Bytes::from_static(b"namespace at slot 3"),
            membership: gaios_paxos::Membership::genesis(&[1, 2, 3]),
        };
        storage.persist(&ready_with(None, vec![], Some(snapshot.clone()), None))?;
        let durable = storage.load()?;
        assert_eq!(durable.snapshot, Some(snapshot));
        assert_eq!(slots(&durable), [(4, 1), (5, 1)]);
        assert_eq!(durable.applied, 3);

        storage
            .db
            .put_cf(storage.cf(CF_META)?, APPLIED_KEY, 5u64.to_be_bytes())?;
        assert_eq!(storage.load()?.applied, 5);
        Ok(())
    }

    /// A snapshot whose data was staged (by the snapshot thread) is recorded
    /// without writing the data again and reads back whole, also after the
    /// database is reopened; each new snapshot deletes the older ones'
    /// files, staged or not (an orphan above stays until passed); a
    /// directory from before data files (data under `snapshot_data`, no
    /// checksum) still loads; a file that does not match its recorded
    /// CRC-32, or is missing, is corruption.
    #[test]
    fn staged_snapshot_data_is_recorded_and_checked() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        let membership = gaios_paxos::Membership::genesis(&[1, 2, 3]);
        let snapshot = |slot, data: &'static [u8]| Snapshot { slot, data: Bytes::from_static(data), membership: membership.clone() };
        let files = |dir: &Path| -> Result<Vec<String>, Box<dyn std::error::Error>> {
            let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOTS_DIR))?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            Ok(names)
        };

        // Staged, then recorded: the batch writes no data of its own.
        let store = storage.snapshot_store();
        store.stage(3, b"state at slot 3")?;
        store.stage(9, b"an orphan a crash left")?;
        let mut ready = ready_with(None, vec![], Some(snapshot(3, b"state at slot 3")), None);
        if let Some(snapshot) = ready.snapshot.as_mut() {
            // Were the data written again, this would land on disk.
            snapshot.data = Bytes::from_static(b"WRONG DATA 3333");
        }
        storage.persist(&ready)?;
        drop(storage);
        let storage = Storage::open(dir.path(), &identity())?;
        assert_eq!(storage.load()?.snapshot, Some(snapshot(3, b"state at slot 3")), "the staged data was not what got recorded");

        // Not staged (a peer's snapshot): written by `persist`; the older
        // snapshot's file goes, the orphan above stays until passed.
        storage.persist(&ready_with(None, vec![], Some(snapshot(5, b"state at slot 5")), None))?;
        assert_eq!(storage.load()?.snapshot, Some(snapshot(5, b"state at slot 5")));
        storage.removals_done();
        assert_eq!(files(dir.path())?, ["00000000000000000005.snap", "00000000000000000009.snap"]);
        // A write under way (its temporary file) is not disturbed.
        std::fs::write(dir.path().join(SNAPSHOTS_DIR).join("00000000000000000001.snap.tmp7"), b"being written")?;
        storage.persist(&ready_with(None, vec![], Some(snapshot(12, b"state at slot 12")), None))?;
        storage.removals_done();
        assert_eq!(files(dir.path())?, ["00000000000000000001.snap.tmp7", "00000000000000000012.snap"]);
        // At open none can be: a crash's leftovers go.
        drop(storage);
        let storage = Storage::open(dir.path(), &identity())?;
        assert_eq!(files(dir.path())?, ["00000000000000000012.snap"]);

        // A directory from before data files.
        let meta = storage.cf(CF_META)?;
        let legacy = peer::SnapshotMeta { slot: 12, data_bytes: 6, membership: None, data_in_file: false, data_crc32: None };
        storage.db.put_cf(meta, SNAPSHOT_KEY, legacy.encode_to_vec())?;
        storage.db.put_cf(meta, SNAPSHOT_DATA_LEGACY_KEY, b"legacy")?;
        assert_eq!(storage.load()?.snapshot.map(|s| s.data), Some(Bytes::from_static(b"legacy")));

        // Flipped bits with the length intact; then no file at all.
        storage.persist(&ready_with(None, vec![], Some(snapshot(20, b"state at slot 20")), None))?;
        std::fs::write(snapshot_file(dir.path(), 20), b"state at slot 21")?;
        let error = storage.load().expect_err("corrupted snapshot data loaded");
        assert!(matches!(error, StorageError::Corrupt { corruption: Corruption::SnapshotChecksum { .. }, .. }), "{error}");
        std::fs::remove_file(snapshot_file(dir.path(), 20))?;
        let error = storage.load().expect_err("a missing snapshot file loaded");
        assert!(matches!(error, StorageError::Corrupt { corruption: Corruption::SnapshotData { found: None, .. }, .. }), "{error}");
        Ok(())
    }

    /// A directory of another replica or another cell is refused, and is
    /// still intact afterwards.
    #[test]
    fn foreign_identity_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        open_new(dir.path())?.persist(&ready_with(
            None,
            vec![entry(1, 1)],
            None,
            None,
        ))?;
        let other_replica = Identity {
            replica_id: 4,
            ..identity()
        };
        let other_cell = Identity {
            cell_id: "other".to_owned(),
            ..identity()
        };
        let before = listing(dir.path())?;
        for other in [other_replica, other_cell] {
            let error = Storage::open(dir.path(), &other).map(|_| ());
            let Err(StorageError::ForeignDataDir {
                expected, found, ..
            }) = &error
            else {
                panic!("expected ForeignDataDir, got {error:?}");
            };
            assert_eq!((expected, found), (&other, &identity()));
            let message = error.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("replica 3"), "{message}");
        }
        assert_eq!(
            listing(dir.path())?,
            before,
            "a refused directory is left as it was"
        );
        assert_eq!(
            slots(&Storage::open(dir.path(), &identity())?.load()?),
            [(1, 1)]
        );
        Ok(())
    }

    /// A directory with files that are not a RocksDB database, or a RocksDB
    /// database that Gaios did not create, is refused and left as it was.
    #[test]
    fn foreign_directories_are_refused_untouched() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("notes.txt"), b"precious")?;
        let error = Storage::open(dir.path(), &identity());
        assert!(
            matches!(
                error,
                Err(StorageError::Corrupt {
                    corruption: Corruption::NotRocksDb,
                    ..
                })
            ),
            "{error:?}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, ["notes.txt"]);

        let plain = tempfile::tempdir()?;
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            let db = Db::open(&options, plain.path())?;
            db.put(b"k", b"v")?;
        }
        let error = Storage::open(plain.path(), &identity());
        assert!(
            matches!(
                error,
                Err(StorageError::Corrupt {
                    corruption: Corruption::MissingColumnFamily(_),
                    ..
                })
            ),
            "{error:?}"
        );
        Ok(())
    }

    /// A plain open never creates or initialises anything: a missing
    /// directory, an empty one, and a database with Gaios's column families
    /// but no records (some or all of them created) are refused as not
    /// initialised, with what to do, and left exactly as they were.
    #[test]
    fn open_refuses_uninitialised_directories_and_creates_nothing() -> TestResult {
        let parent = tempfile::tempdir()?;
        let missing = parent.path().join("data-3");
        let empty = tempfile::tempdir()?;
        let some_families = tempfile::tempdir()?;
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let _db = Db::open_cf(&options, some_families.path(), [COLUMN_FAMILIES[0]])?;
        }
        let all_families = tempfile::tempdir()?;
        drop(open_db(all_families.path(), OpenMode::Create)?);
        let cases = [
            (missing.as_path(), Uninitialised::Missing),
            (empty.path(), Uninitialised::Empty),
            (some_families.path(), Uninitialised::EmptyDatabase),
            (all_families.path(), Uninitialised::EmptyDatabase),
        ];
        for (dir, expected) in cases {
            let before = listing(dir).ok();
            let error = Storage::open(dir, &identity()).map(|_| ());
            match &error {
                Err(StorageError::NotInitialised { found, .. }) => assert_eq!(*found, expected, "{}", dir.display()),
                other => panic!("{}: expected NotInitialised, got {other:?}", dir.display()),
            }
            let message = error.err().map(|e| e.to_string()).unwrap_or_default();
            for needle in ["gaios-server init", "NEW cell", "do NOT", "membership change"] {
                assert!(message.contains(needle), "{needle:?} not in: {message}");
            }
            assert_eq!(listing(dir).ok(), before, "{} was changed", dir.display());
        }
        assert!(!missing.exists(), "a plain open created the missing directory");
        Ok(())
    }

    /// `init` creates the directory (also a missing one), and a plain open
    /// then finds the acceptor's first hard state: promised nothing, no log.
    #[test]
    fn init_then_open_works() -> TestResult {
        let parent = tempfile::tempdir()?;
        let dir = parent.path().join("new").join("data-3");
        Storage::init(&dir, &record())?;
        assert!(!dir.join(INIT_MARKER).exists(), "init removes its marker when it finishes");
        let storage = Storage::open(&dir, &identity())?;
        assert_eq!(storage.init_record()?, record());
        let durable = storage.load()?;
        assert_eq!(durable.hard_state, HardState::default());
        assert!(durable.entries.is_empty() && durable.snapshot.is_none());
        Ok(())
    }

    /// A start must name the members `init` recorded; the first difference
    /// is named in the refusal, and the directory is left as it was.
    #[test]
    fn the_members_given_must_be_the_members_recorded() -> TestResult {
        let dir = tempfile::tempdir()?;
        drop(open_new(dir.path())?);
        drop(Storage::open_member(dir.path(), &identity(), &members())?);
        let before = listing(dir.path())?;
        let moved: SocketAddr = "127.0.0.1:9".parse()?;
        let mut peer_moved = members();
        peer_moved[1].peer_address = moved;
        let mut client_moved = members();
        client_moved[4].client_address = moved;
        let mut extra = members();
        extra.push(PeerSpec { id: 6, peer_address: moved, client_address: "127.0.0.1:10".parse()? });
        let cases = [
            (peer_moved, MemberDifference::PeerAddress { id: 2, recorded: members()[1].peer_address, given: moved }),
            (client_moved, MemberDifference::ClientAddress { id: 5, recorded: members()[4].client_address, given: moved }),
            (members()[..4].to_vec(), MemberDifference::NotGiven(5)),
            (extra, MemberDifference::NotRecorded(6)),
        ];
        for (given, expected) in cases {
            match Storage::open_member(dir.path(), &identity(), &given) {
                Err(StorageError::MembersDiffer { difference, .. }) => assert_eq!(difference, expected),
                other => panic!("expected {expected:?}, got {other:?}"),
            }
        }
        assert_eq!(listing(dir.path())?, before, "a refused open changed the directory");
        Ok(())
    }

    /// An identity record without an incarnation, or with a member address
    /// that does not parse, refuses the directory.
    #[test]
    fn bad_init_records_are_refused() -> TestResult {
        let mut no_incarnation = encode_init_record(&record());
        no_incarnation.incarnation = 0;
        let mut bad_address = encode_init_record(&record());
        bad_address.members[2].client_address = "nowhere".to_owned();
        for (bytes, what) in [(no_incarnation.encode_to_vec(), "incarnation"), (bad_address.encode_to_vec(), "address")] {
            let dir = tempfile::tempdir()?;
            let storage = open_new(dir.path())?;
            storage.db.put_cf(storage.cf(CF_META)?, IDENTITY_KEY, bytes)?;
            drop(storage);
            let error = Storage::open(dir.path(), &identity()).map(|_| ());
            assert!(matches!(error, Err(StorageError::Corrupt { .. })), "{what}: {error:?}");
        }
        Ok(())
    }

    /// `init` writes only into a missing or empty directory: it refuses one
    /// that holds any file, and an initialised one, and changes neither.
    #[test]
    fn init_refuses_a_directory_that_holds_anything() -> TestResult {
        let foreign = tempfile::tempdir()?;
        std::fs::write(foreign.path().join("notes.txt"), b"precious")?;
        let initialised = tempfile::tempdir()?;
        open_new(initialised.path())?.persist(&ready_with(
            Some(HardState { promised: Ballot::new(7, 2), chosen_through: 0 }),
            vec![entry(1, 7)],
            None,
            None,
        ))?;
        for dir in [foreign.path(), initialised.path()] {
            let before = listing(dir)?;
            let error = Storage::init(dir, &record());
            assert!(matches!(error, Err(StorageError::NotEmpty { .. })), "{error:?}");
            assert_eq!(listing(dir)?, before, "{} was changed", dir.display());
        }
        let durable = Storage::open(initialised.path(), &identity())?.load()?;
        assert_eq!(durable.hard_state.promised, Ballot::new(7, 2), "the promise survives a refused init");
        Ok(())
    }

    /// An `init` killed before it finished leaves its marker: both a plain
    /// open and `init` refuse the directory as an interrupted
    /// initialisation (which may be deleted), never as data to run on.
    #[test]
    fn an_interrupted_init_is_refused_by_open_and_by_init() -> TestResult {
        // Killed after the marker, before RocksDB wrote anything.
        let before_database = tempfile::tempdir()?;
        std::fs::write(before_database.path().join(INIT_MARKER), b"")?;
        // Killed after RocksDB created the database, before the batch.
        let before_batch = tempfile::tempdir()?;
        std::fs::write(before_batch.path().join(INIT_MARKER), b"")?;
        drop(open_db(before_batch.path(), OpenMode::Create)?);
        // Killed after the batch, before the marker's removal.
        let before_removal = tempfile::tempdir()?;
        Storage::init(before_removal.path(), &record())?;
        std::fs::write(before_removal.path().join(INIT_MARKER), b"")?;
        for dir in [before_database.path(), before_batch.path(), before_removal.path()] {
            let opened = Storage::open(dir, &identity()).map(|_| ());
            assert!(matches!(opened, Err(StorageError::InitInterrupted { .. })), "open: {opened:?}");
            let message = opened.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("delete the directory"), "{message}");
            let again = Storage::init(dir, &record());
            assert!(matches!(again, Err(StorageError::InitInterrupted { .. })), "init: {again:?}");
        }
        Ok(())
    }

    /// An initialised directory whose hard-state record is gone is corrupt:
    /// loading it as "promised nothing" could break a promise.
    #[test]
    fn missing_hard_state_is_corruption() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        storage.persist(&ready_with(
            Some(HardState { promised: Ballot::new(9, 4), chosen_through: 1 }),
            vec![entry(1, 9)],
            None,
            None,
        ))?;
        storage.db.delete_cf(storage.cf(CF_PAXOS)?, HARD_STATE_KEY)?;
        drop(storage);
        let error = Storage::open(dir.path(), &identity())?.load();
        assert!(
            matches!(error, Err(StorageError::Corrupt { corruption: Corruption::MissingHardState, .. })),
            "{error:?}"
        );
        Ok(())
    }

    /// A directory written by a Gaios from before `init` (format version 1,
    /// no incarnation) is refused with what to do, and left as it was.
    #[test]
    fn directories_from_before_init_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (db, _options) = open_db(dir.path(), OpenMode::Create)?;
            let old = peer::DataDirIdentity {
                format_version: FORMAT_VERSION_BEFORE_INIT,
                cell_id: identity().cell_id,
                replica_id: identity().replica_id,
                ..Default::default()
            };
            let meta = db.cf_handle(CF_META).ok_or("no meta column family")?;
            db.put_cf(meta, IDENTITY_KEY, old.encode_to_vec())?;
            let paxos = db.cf_handle(CF_PAXOS).ok_or("no paxos column family")?;
            db.put_cf(paxos, log_key(1), codec::encode_entry(&entry(1, 1)).encode_to_vec())?;
        }
        let before = listing(dir.path())?;
        let error = Storage::open(dir.path(), &identity()).map(|_| ());
        assert!(matches!(error, Err(StorageError::PredatesInit { found: 1, .. })), "{error:?}");
        let message = error.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("predates") || message.contains("from before `gaios-server init`"), "{message}");
        assert!(message.contains("re-created"), "{message}");
        assert_eq!(listing(dir.path())?, before);
        Ok(())
    }

    /// A directory whose RocksDB files are garbage is refused.
    #[test]
    fn garbage_rocksdb_files_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("CURRENT"), b"MANIFEST-000042\n")?;
        std::fs::write(dir.path().join("MANIFEST-000042"), [0xa5; 200])?;
        let error = Storage::open(dir.path(), &identity());
        assert!(
            matches!(error, Err(StorageError::Corrupt { .. })),
            "{error:?}"
        );
        Ok(())
    }

    /// Each corrupt record makes `load` (or `open`, for the identity) fail
    /// with the record named, instead of panicking or defaulting.
    #[test]
    fn corrupted_records_are_refused() -> TestResult {
        let cases: [(&str, &[u8], &[u8]); 6] = [
            (CF_PAXOS, HARD_STATE_KEY, &[0xff, 0xff, 0xff]),
            // A valid encoding of an empty HardState: its ballot is missing.
            (CF_PAXOS, HARD_STATE_KEY, &[]),
            (CF_PAXOS, &log_key(2), b"\x08"),
            (CF_PAXOS, b"lshort", b""),
            (CF_META, SNAPSHOT_KEY, &[0x08, 0x01, 0x10, 0x05]),
            (CF_META, APPLIED_KEY, b"\x01\x02"),
        ];
        for (cf, key, garbage) in cases {
            let dir = tempfile::tempdir()?;
            let storage = open_new(dir.path())?;
            storage.persist(&ready_with(
                Some(HardState::default()),
                vec![entry(2, 1)],
                None,
                None,
            ))?;
            storage.db.put_cf(storage.cf(cf)?, key, garbage)?;
            drop(storage);
            let storage = Storage::open(dir.path(), &identity())?;
            let error = storage.load();
            assert!(
                matches!(error, Err(StorageError::Corrupt { .. })),
                "{cf}/{}: {error:?}",
                key.escape_ascii()
            );
        }

        // An entry stored under another slot's key.
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        storage.db.put_cf(
            storage.cf(CF_PAXOS)?,
            log_key(9),
            codec::encode_entry(&entry(8, 1)).encode_to_vec(),
        )?;
        assert!(matches!(
            storage.load(),
            Err(StorageError::Corrupt {
                corruption: Corruption::SlotMismatch {
                    key_slot: 9,
                    entry_slot: 8
                },
                ..
            })
        ));
        Ok(())
    }

    /// A damaged identity record or an unknown format version refuses the
    /// directory at open.
    #[test]
    fn bad_identity_records_are_refused() -> TestResult {
        let unknown_version = peer::DataDirIdentity {
            format_version: FORMAT_VERSION + 1,
            ..encode_init_record(&record())
        }
        .encode_to_vec();
        for (record, expect_version) in [(vec![0xff, 0x00], false), (unknown_version, true)] {
            let dir = tempfile::tempdir()?;
            let storage = open_new(dir.path())?;
            storage
                .db
                .put_cf(storage.cf(CF_META)?, IDENTITY_KEY, record)?;
            drop(storage);
            match Storage::open(dir.path(), &identity()) {
                Err(StorageError::Corrupt {
                    corruption: Corruption::UnknownFormatVersion { found },
                    ..
                }) if expect_version => assert_eq!(found, FORMAT_VERSION + 1),
                Err(StorageError::Corrupt {
                    corruption: Corruption::Record { .. },
                    ..
                }) if !expect_version => {}
                other => panic!("unexpected result {other:?}"),
            }
        }
        Ok(())
    }

    /// A database that lost its identity record but holds data is refused
    /// as corrupt, not as uninitialised.
    #[test]
    fn missing_identity() -> TestResult {
        let dir = tempfile::tempdir()?;
        let storage = open_new(dir.path())?;
        storage.persist(&ready_with(None, vec![entry(1, 1)], None, None))?;
        storage.db.delete_cf(storage.cf(CF_META)?, IDENTITY_KEY)?;
        drop(storage);
        assert!(matches!(
            Storage::open(dir.path(), &identity()),
            Err(StorageError::Corrupt {
                corruption: Corruption::MissingIdentity,
                ..
            })
        ));
        Ok(())
    }
}
