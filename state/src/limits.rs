//! Every limit of the replicated state, in one place. Each is checked by
//! the validators ([`crate::validate`]) before a command is proposed, and
//! again by `apply` (the log is input it must not trust); a refusal is a
//! failure with its status code, never a panic.

// Paths and nodes.
/// The most bytes a path may have.
pub const PATH_BYTES_MAX: usize = 1024;
/// The most bytes one path component may have.
pub const COMPONENT_BYTES_MAX: usize = 255;
/// The most components a path may have (its depth).
pub const PATH_DEPTH_MAX: usize = 32;
/// The most bytes a file's contents may have.
pub const CONTENTS_BYTES_MAX: usize = 256 << 10;
/// The most nodes the namespace holds, the root included: about a million,
/// so a directory of 100,000 children is an ordinary thing to hold.
pub const NODES_MAX: usize = 1 << 20;
/// The highest value a snapshot may give any counter (instances,
/// generations, session and handle ids, event numbers): far beyond what a
/// cell reaches (2^62 increments), and low enough that the next increment
/// can never overflow, whatever a snapshot said.
pub const COUNTER_MAX: u64 = 1 << 62;

// Sessions, handles and the at-most-once window.
/// The most sessions a cell holds at once.
pub const SESSIONS_MAX: usize = 50_000;
/// The most open handles per session.
pub const HANDLES_PER_SESSION_MAX: usize = 4096;
/// The most open handles in the cell.
pub const HANDLES_MAX: usize = 200_000;
/// How many answers each session keeps for retries (the at-most-once
/// window): the answers of its newest request numbers.
pub const ANSWERS_PER_SESSION_MAX: usize = 64;
/// Events kept per session until acknowledged; beyond it the oldest go (the
/// client sees the gap in the numbers).
pub const EVENTS_QUEUED_PER_SESSION_MAX: usize = 1024;
/// The most bytes of unacknowledged events a replica keeps per session
/// (see `outbox::event_bytes`).
pub const EVENTS_QUEUED_BYTES_PER_SESSION_MAX: usize = 256 << 10;
/// The most bytes of unacknowledged events a replica keeps in all.
pub const EVENTS_QUEUED_BYTES_MAX: usize = 64 << 20;
/// The longest client name kept with a session.
pub const CLIENT_NAME_BYTES_MAX: usize = 256;
/// The longest client identity (a TLS certificate's CN) a session records.
pub const IDENTITY_BYTES_MAX: usize = 256;
/// The most groups a session is created with (each a name of at most
/// [`IDENTITY_BYTES_MAX`] bytes).
pub const GROUPS_PER_SESSION_MAX: usize = 32;
/// The most entries in one of a node's three ACL lists.
pub const ACL_ENTRIES_MAX: usize = 32;
/// The most bytes of entries in a node's ACL, all three lists together:
/// with a path and a file's contents, a created node still fits in one
/// command's growth ([`COMMAND_GROWTH_BYTES_MAX`]).
pub const ACL_BYTES_MAX: usize = 4096;
/// The length of a session's secret: 128 random bits.
pub const SESSION_SECRET_BYTES: usize = 16;
/// The most names one `ReadDir` page holds (and the page size when none is
/// asked for): 10000 names of at most 255 bytes stay under 4 MiB, the answer
/// limit of a default gRPC client.
pub const READ_DIR_PAGE_MAX: usize = 10_000;
/// The event bits a handle may ask for.
pub const EVENT_MASK_ALL: u32 = 0xff;

// Locks.
/// The longest a waiting `Acquire` may ask to wait, in milliseconds.
pub const ACQUIRE_WAIT_MS_MAX: u64 = 600_000;
/// The longest lock-delay a holder may choose, in milliseconds.
pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
/// The most waiters one lock queues; past it `acquire` is refused.
pub const WAITERS_PER_LOCK_MAX: usize = 1024;

// The state's size and what a snapshot may be.
/// The state's footprint above which nothing that grows it is accepted.
///
/// Chosen by memory, now that snapshots stream in chunks (there is no
/// message limit to fit): at this bound a replica holds the state twice (the
/// live one and the copy snapshots are taken from, off the driver thread),
/// the newest snapshot's encoding, and while it takes or receives a snapshot
/// one more encoding plus a restored state; with allocator overhead that is
/// about 4 GiB at the bound. 512 MiB keeps a replica within about 4 GiB of
/// memory, and a local five-replica cell on one 24 GiB machine.
pub const STATE_BYTES_MAX: usize = 512 << 20;
/// The most one command can grow the footprint beyond the bound it was
/// checked against: a file's contents plus a few paths and records.
pub const COMMAND_GROWTH_BYTES_MAX: usize = CONTENTS_BYTES_MAX + (16 << 10);
/// The largest snapshot the state can encode: the footprint never exceeds
/// [`STATE_BYTES_MAX`] plus one command's growth, and the footprint counts
/// at least every byte a snapshot carries. A receiver refuses an offered
/// snapshot larger than this before taking any of it.
pub const SNAPSHOT_BYTES_MAX: usize = STATE_BYTES_MAX + COMMAND_GROWTH_BYTES_MAX;

// Failures.
/// The longest message a failure carries (longer ones, which echo a long
/// path, are cut), so that failures remembered for retries stay small and
/// clients' trailers short.
pub const FAILURE_MESSAGE_BYTES_MAX: usize = 256;
