//! The replica's durable state: one RocksDB in its data directory.
//!
//! # Layout
//!
//! | column family | key | value |
//! |---|---|---|
//! | `paxos` | `h` | the acceptor's [`HardState`] (`gaios.v1.HardState`) |
//! | `paxos` | `l` + slot (8 bytes, big-endian) | one accepted [`Entry`](gaios_paxos::types::Entry) (`gaios.v1.Entry`); big-endian so keys sort by slot |
//! | `state` | (none yet) | reserved; the applied state is kept as the snapshot below |
//! | `meta` | `identity` | the cell and replica that own the directory and the format version (`gaios.v1.DataDirIdentity`) |
//! | `meta` | `snapshot` | the latest snapshot's slot and length (`gaios.v1.SnapshotMeta`) |
//! | `meta` | `snapshot_data` | the latest snapshot's data, raw: the applied state (`gaios.v1.StateSnapshot`) at its slot |
//! | `meta` | `applied` | an applied slot above the snapshot's, if a state machine records one (Gaios's does not: its state is rebuilt from the snapshot and the log after it) |
//!
//! # Write order
//!
//! Everything one [`Ready`] asks to make durable goes into **one** RocksDB
//! `WriteBatch` written with `sync = true`: hard state, entries (put by slot),
//! snapshot, then the deletion of the log at or below the compaction point.
//! RocksDB applies a batch atomically, also across column families, so after a
//! crash either all of a `Ready` is on disk or none of it is. The driver sends
//! the `Ready`'s persisted messages only after [`Storage::persist`] returns.
//!
//! # Refusing a directory
//!
//! [`Storage::open`] never deletes or rewrites anything it did not create. A
//! directory that belongs to another cell or replica, that holds files that
//! are not a Gaios database, or whose records do not decode is refused with a
//! [`StorageError`] that says which.

use std::fmt;
use std::path::{Path, PathBuf};

use gaios_paxos::ready::Ready;
use gaios_paxos::types::{Durable, HardState, ReplicaId, Slot, Snapshot};
use gaios_proto::v1 as pb;
use prost::Message as _;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ErrorKind, IteratorMode, Options,
    WriteBatch, WriteOptions,
};

use crate::codec::{self, CodecError};

/// The version of the on-disk format this build reads and writes. A
/// directory written in another version is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

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
const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";
const APPLIED_KEY: &[u8] = b"applied";

type Db = rocksdb::DBWithThreadMode<rocksdb::SingleThreaded>;

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
    db: Db,
    /// The options the database was opened with; they own its statistics.
    #[cfg_attr(not(test), allow(dead_code))]
    options: Options,
    dir: PathBuf,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("dir", &self.dir).finish()
    }
}

impl Storage {
    /// Opens the data directory of the replica `identity`, initialising it if
    /// it is missing or empty.
    ///
    /// A directory that exists and holds anything is only ever opened, never
    /// initialised over: it must be a Gaios database of this format version
    /// whose identity is `identity`, or it is refused.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Storage, StorageError> {
        if is_missing_or_empty(dir)? {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
                dir: dir.to_path_buf(),
                source,
            })?;
            let (db, options) = open_db(dir, OpenMode::Create)?;
            let storage = Storage {
                db,
                options,
                dir: dir.to_path_buf(),
            };
            storage.write_identity(identity)?;
            tracing::info!(dir = %dir.display(), %identity, "initialised data directory");
            return Ok(storage);
        }

        let corrupt = |corruption| StorageError::Corrupt {
            dir: dir.to_path_buf(),
            corruption,
        };
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
            // RocksDB creates the database and then its column families one
            // by one; a process killed in between leaves some missing. With
            // nothing in the ones present, finishing the initialisation
            // loses nothing; with anything, the directory is not ours.
            if !present_families_empty(dir, &families)? {
                return Err(corrupt(Corruption::MissingColumnFamily(missing)));
            }
            tracing::warn!(dir = %dir.display(), %identity, missing,
                "finishing an interrupted initialisation of the data directory (column families missing)");
            let (db, options) = open_db(dir, OpenMode::Create)?;
            let storage = Storage { db, options, dir: dir.to_path_buf() };
            storage.write_identity(identity)?;
            return Ok(storage);
        }
        // Check the identity on a read-only open first, so that a refused
        // directory is left exactly as it was (a read-write open would
        // replay its log and write new files).
        let identity_present = {
            let (db, options) = open_db(dir, OpenMode::ReadOnly)?;
            let probe = Storage {
                db,
                options,
                dir: dir.to_path_buf(),
            };
            probe.check_identity(identity)?
        };
        let (db, options) = open_db(dir, OpenMode::Existing)?;
        let storage = Storage {
            db,
            options,
            dir: dir.to_path_buf(),
        };
        if !identity_present {
            tracing::warn!(dir = %dir.display(), %identity,
                "finishing an interrupted initialisation of the data directory");
            storage.write_identity(identity)?;
        }
        Ok(storage)
    }

    /// Checks that the directory belongs to `identity` and is in this
    /// build's format. Returns false if it holds no identity and no data at
    /// all: RocksDB created the column families and the process died before
    /// the identity was written, so finishing the initialisation loses
    /// nothing.
    fn check_identity(&self, identity: &Identity) -> Result<bool, StorageError> {
        let Some(bytes) = self.get(CF_META, IDENTITY_KEY)? else {
            if self.all_column_families_empty()? {
                return Ok(false);
            }
            return Err(self.corrupt(Corruption::MissingIdentity));
        };
        let record: pb::DataDirIdentity = decode_record(&self.dir, CF_META, IDENTITY_KEY, &bytes)?;
        if record.format_version != FORMAT_VERSION {
            return Err(self.corrupt(Corruption::UnknownFormatVersion {
                found: record.format_version,
            }));
        }
        let found = Identity {
            cell_id: record.cell_id,
            replica_id: record.replica_id,
        };
        if found != *identity {
            return Err(StorageError::ForeignDataDir {
                dir: self.dir.clone(),
                expected: identity.clone(),
                found,
            });
        }
        Ok(true)
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
            None => HardState::default(),
            Some(bytes) => {
                let record = decode_record(&self.dir, CF_PAXOS, HARD_STATE_KEY, &bytes)?;
                codec::decode_hard_state(record)
                    .map_err(|e| self.record_error(CF_PAXOS, HARD_STATE_KEY, e))?
            }
        };

        let snapshot = match self.get(CF_META, SNAPSHOT_KEY)? {
            None => None,
            Some(bytes) => {
                let meta: pb::SnapshotMeta =
                    decode_record(&self.dir, CF_META, SNAPSHOT_KEY, &bytes)?;
                let data = self.get(CF_META, SNAPSHOT_DATA_KEY)?;
                let found = data.as_ref().map(|d| d.len() as u64);
                let Some(data) = data.filter(|_| found == Some(meta.data_bytes)) else {
                    return Err(self.corrupt(Corruption::SnapshotData {
                        expected: meta.data_bytes,
                        found,
                    }));
                };
                Some(Snapshot {
                    slot: meta.slot,
                    data: data.into(),
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
            let record = pb::SnapshotMeta {
                slot: snapshot.slot,
                data_bytes: snapshot.data.len() as u64,
            };
            batch.put_cf(meta, SNAPSHOT_KEY, record.encode_to_vec());
            batch.put_cf(meta, SNAPSHOT_DATA_KEY, &snapshot.data);
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
            .map_err(|e| rocks_error(&self.dir, e))
    }

    fn write_identity(&self, identity: &Identity) -> Result<(), StorageError> {
        let record = pb::DataDirIdentity {
            format_version: FORMAT_VERSION,
            cell_id: identity.cell_id.clone(),
            replica_id: identity.replica_id,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, IDENTITY_KEY, record.encode_to_vec());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| rocks_error(&self.dir, e))
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

/// True if `dir` does not exist or holds no entries at all (not even hidden
/// files): only such a directory may be initialised.
fn is_missing_or_empty(dir: &Path) -> Result<bool, StorageError> {
    let io_error = |source| StorageError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(source)) => Err(io_error(source)),
        },
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(io_error(source)),
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
            let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
        let entries = (1..=5).map(|slot| entry(slot, 1)).collect();
        storage.persist(&ready_with(None, entries, None, None))?;
        let snapshot = Snapshot {
            slot: 3,
            data: Bytes::from_static(b"namespace at slot 3"),
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

    /// A directory of another replica or another cell is refused, and is
    /// still intact afterwards.
    #[test]
    fn foreign_identity_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        Storage::open(dir.path(), &identity())?.persist(&ready_with(
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

    /// A database killed while RocksDB created its column families (some
    /// missing, all present ones empty) is initialised, not refused.
    #[test]
    fn an_initialisation_killed_between_column_families_is_finished() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let _db = Db::open_cf(&options, dir.path(), [COLUMN_FAMILIES[0]])?;
        }
        let storage = Storage::open(dir.path(), &identity())?;
        drop(storage);
        // Opened again as an ordinary data directory of this identity.
        Storage::open(dir.path(), &identity())?;
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
            let storage = Storage::open(dir.path(), &identity())?;
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
        let storage = Storage::open(dir.path(), &identity())?;
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
        let unknown_version = pb::DataDirIdentity {
            format_version: FORMAT_VERSION + 1,
            cell_id: identity().cell_id,
            replica_id: identity().replica_id,
        }
        .encode_to_vec();
        for (record, expect_version) in [(vec![0xff, 0x00], false), (unknown_version, true)] {
            let dir = tempfile::tempdir()?;
            let storage = Storage::open(dir.path(), &identity())?;
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

    /// A database that lost its identity but holds data is refused; one that
    /// holds nothing at all (initialisation interrupted before the identity
    /// was written) is initialised.
    #[test]
    fn missing_identity() -> TestResult {
        let dir = tempfile::tempdir()?;
        // Initialisation interrupted after RocksDB created the database.
        drop(open_db(dir.path(), OpenMode::Create)?);
        let storage = Storage::open(dir.path(), &identity())?;
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
