//! Fencing: how a downstream service rejects requests from a lock holder
//! that has been superseded.
//!
//! A lock holder sends its [`Sequencer`](pb::Sequencer) with each request;
//! the protected service keeps a [`Fence`] and checks every sequencer
//! before acting. A sequencer with a lower lock generation than one the
//! fence has seen for the same lock is stale: its holder lost the lock
//! (perhaps without knowing, while paused) and someone else took it since.
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

use gaios_proto::cell::v1 as pb;

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

/// Remembers the highest lock generation seen per lock; see the module docs.
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<BTreeMap<String, (u64, u64)>>, // path -> (generation, order seen)
    order: std::sync::atomic::AtomicU64,
}

impl Fence {
    /// A fence that has seen nothing.
    pub fn new() -> Self {
        Fence::default()
    }

    /// Accepts `sequencer` unless a higher generation of its lock was seen;
    /// remembers its generation.
    pub fn check(&self, sequencer: &pb::Sequencer) -> Result<(), FenceError> {
        let mut highest = self.highest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let order = self.order.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(&(seen, _)) = highest.get(&sequencer.path)
            && sequencer.lock_generation < seen {
                return Err(FenceError::Stale {
                    path: sequencer.path.clone(),
                    presented: sequencer.lock_generation,
                    seen,
                });
            }
        highest.insert(sequencer.path.clone(), (sequencer.lock_generation, order));
        if highest.len() > FENCE_LOCKS_MAX {
            let oldest = highest.iter().min_by_key(|(_, (_, seen_at))| *seen_at).map(|(path, _)| path.clone());
            if let Some(oldest) = oldest {
                highest.remove(&oldest);
            }
        }
        Ok(())
    }

    /// [`Fence::check`], then asks the cell whether the sequencer is still
    /// current (`CheckSequencer`), for a service that must not act even on
    /// the newest holder it has seen once that holder lost the lock.
    pub async fn check_with_cell(&self, client: &Client, sequencer: &pb::Sequencer) -> Result<(), FenceError> {
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

    fn sequencer(path: &str, generation: u64) -> pb::Sequencer {
        pb::Sequencer { path: path.into(), mode: 1, lock_generation: generation, instance: 1 }
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
    fn the_fence_is_bounded() {
        let fence = Fence::new();
        for i in 0..FENCE_LOCKS_MAX + 10 {
            fence.check(&sequencer(&format!("/l{i}"), 1)).expect("new lock");
        }
        assert_eq!(fence.highest.lock().expect("lock").len(), FENCE_LOCKS_MAX);
    }
}
