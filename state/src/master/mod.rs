//! What only the master keeps, in memory and not replicated, but as pure as
//! the state machine: every operation takes the time `now`, so the server's
//! driver and the whole-cell simulator run the same code.
//!
//! - [`session_leases`]: when each session's lease runs out unless a
//!   KeepAlive extends it, and which sessions the master must expire;
//! - [`lock_clock`]: the master's reading of the lock-delay clock it stamps
//!   on every command;
//! - [`duties`]: the decisions a master takes each time it runs its duties
//!   (promote leases when it can serve, expire sessions, end lock-delays).

pub mod duties;
pub mod lock_clock;
pub mod session_leases;

pub use duties::MasterDuties;
pub use lock_clock::LockClock;
pub use session_leases::{LeaseEnded, SessionLeases};
