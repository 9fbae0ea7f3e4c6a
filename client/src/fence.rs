//! Fencing: how a downstream service rejects requests from a lock holder
//! that has been superseded.
//!
//! A lock holder sends its [`Sequencer`](api::Sequencer) with each request;
//! the protected service keeps a [`Fence`] and checks every sequencer
//! before acting. Every grant of a lock, exclusive or shared, takes a new,
//! higher lock generation. A sequencer is stale when the fence has seen a
//! newer one of the same lock whose holding conflicts with it: its holder
//! lost the lock (perhaps without knowing, while paused) before the newer
//! holder got it. Exclusive conflicts with everything, so after a newer
//! exclusive sequencer every older one is stale, and after a newer shared
//! one every older exclusive one is; two shared holdings may coexist, so an
//! older shared sequencer is still accepted after a newer shared one (ask
//! the cell, [`Fence::check_with_cell`], to know whether it still holds).
//!
//! ```
//! use gaios_client::Fence;
//! use gaios_proto::cell::v1::Sequencer;
//!
//! /// A resource only the current lock holder may change.
//! struct Register { fence: Fence, value: u64 }
//!
//! impl Register {
//!     fn write(&mut self, sequencer: &Sequencer, value: u64) -> Result<(), gaios_client::FenceError> {
//!         self.fence.check(sequencer)?;
//!         self.value = value;
//!         Ok(())
//!     }
//! }
//!
//! let sequencer = |generation| Sequencer { path: "/lock".into(), mode: 1, lock_generation: generation, instance: 2 };
//! let mut register = Register { fence: Fence::new(), value: 0 };
//! register.write(&sequencer(7), 1).unwrap();
//! // The new holder (generation 8) writes; the old one, resumed, is refused.
//! register.write(&sequencer(8), 2).unwrap();
//! assert!(register.write(&sequencer(7), 3).is_err());
//! assert_eq!(register.value, 2);
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use gaios_proto::cell::v1 as api;

use crate::client::Client;
use crate::error::Error;

/// The most locks one fence remembers; past it, the lock seen longest ago
/// is forgotten (a fence guards a few locks, not thousands).
pub const FENCE_LOCKS_MAX: usize = 4096;

/// Why a fence refused a sequencer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// A newer holder of the same lock was seen.
    #[error("stale sequencer for {path}: generation {presented}, but {seen} was seen")]
    Stale {
        /// The lock.
        path: String,
        /// The generation presented.
        presented: u64,
        /// The highest generation seen.
        seen: u64,
    },
    /// The cell says the sequencer is no longer current.
    #[error("the cell says the sequencer for {0} is no longer current")]
    NotCurrent(String),
    /// The cell could not be asked.
    #[error("cannot check with the cell: {0}")]
    Cell(#[from] Error),
}

/// The newest generations a fence has seen for one lock.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    exclusive: u64,
    shared: u64,
    /// When the lock was last checked (for forgetting the oldest).
    order: u64,
}

/// Remembers the highest lock generations seen per lock (exclusive and
/// shared apart); see the module docs.
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<BTreeMap<String, Seen>>,
    order: std::sync::atomic::AtomicU64,
}

impl Fence {
    /// A fence that has seen nothing.
    pub fn new() -> Self {
        Fence::default()
    }

    /// Accepts `sequencer` unless a higher generation of its lock whose
    /// holding conflicts with it was seen (see the module docs); remembers
    /// its generation. A sequencer of an unknown mode is taken as
    /// exclusive, the strictest.
    pub fn check(&self, sequencer: &api::Sequencer) -> Result<(), FenceError> {
        let mut highest = self.highest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let order = self.order.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = sequencer.mode == api::LockMode::Shared as i32;
        let mut seen = highest.get(&sequencer.path).copied().unwrap_or_default();
        let conflicting = if shared { seen.exclusive } else { seen.exclusive.max(seen.shared) };
        if sequencer.lock_generation < conflicting {
            return Err(FenceError::Stale { path: sequencer.path.clone(), presented: sequencer.lock_generation, seen: conflicting });
        }
        if shared {
            seen.shared = seen.shared.max(sequencer.lock_generation);
        } else {
            seen.exclusive = seen.exclusive.max(sequencer.lock_generation);
        }
        seen.order = order;
        highest.insert(sequencer.path.clone(), seen);
        if highest.len() > FENCE_LOCKS_MAX {
            let oldest = highest.iter().min_by_key(|(_, seen)| seen.order).map(|(path, _)| path.clone());
            if let Some(oldest) = oldest {
                highest.remove(&oldest);
            }
        }
        Ok(())
    }

    /// [`Fence::check`], then asks the cell whether the sequencer is still
    /// current (`CheckSequencer`), for a service that must not act even on
    /// the newest holder it has seen once that holder lost the lock.
    pub async fn check_with_cell(&self, client: &Client, sequencer: &api::Sequencer) -> Result<(), FenceError> {
        self.check(sequencer)?;
        if client.check_sequencer(sequencer).await? {
            Ok(())
        } else {
            Err(FenceError::NotCurrent(sequencer.path.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequencer(path: &str, generation: u64) -> api::Sequencer {
        api::Sequencer { path: path.into(), mode: 1, lock_generation: generation, instance: 1 }
    }

    #[test]
    fn an_older_generation_is_refused_per_lock() {
        let fence = Fence::new();
        fence.check(&sequencer("/a", 5)).expect("first");
        fence.check(&sequencer("/a", 5)).expect("same holder again");
        fence.check(&sequencer("/b", 1)).expect("another lock");
        fence.check(&sequencer("/a", 9)).expect("newer");
        assert_eq!(
            fence.check(&sequencer("/a", 5)),
            Err(FenceError::Stale { path: "/a".into(), presented: 5, seen: 9 })
        );
    }

    #[test]
    fn shared_holdings_may_coexist_but_not_with_a_newer_exclusive_one() {
        let shared = |generation| api::Sequencer { mode: api::LockMode::Shared as i32, ..sequencer("/s", generation) };
        let fence = Fence::new();
        fence.check(&shared(3)).expect("a reader");
        fence.check(&shared(4)).expect("another reader, granted later");
        fence.check(&shared(3)).expect("the first reader may still hold the lock beside the second");
        assert!(fence.check(&sequencer("/s", 2)).is_err(), "an exclusive holding older than a shared one has ended");
        fence.check(&sequencer("/s", 5)).expect("a writer after the readers");
        assert_eq!(fence.check(&shared(4)), Err(FenceError::Stale { path: "/s".into(), presented: 4, seen: 5 }));
    }

    #[test]
    fn the_fence_is_bounded() {
        let fence = Fence::new();
        for i in 0..FENCE_LOCKS_MAX + 10 {
            fence.check(&sequencer(&format!("/l{i}"), 1)).expect("new lock");
        }
        assert_eq!(fence.highest.lock().expect("lock").len(), FENCE_LOCKS_MAX);
    }
}
