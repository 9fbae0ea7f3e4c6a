//! Where the next attempt of a call goes after a replica could not answer
//! it: the master a redirect names, the same replica again, or the next
//! address in turn.

use std::time::{Duration, Instant};

use gaios_proto::cell::v1 as api;

use crate::error::Redirect;

/// How long the library keeps retrying a master that answers
/// `MASTER_NOT_READY` before it tries other replicas. A new master is
/// usually ready within a few ticks (it applies what was chosen before its
/// reign); one that stays unready this long may have lost its lease and be
/// cut off from the cell.
pub(crate) const MASTER_NOT_READY_PATIENCE: Duration = Duration::from_secs(2);

/// Where to send the next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The same replica, after the backoff: it is the master but cannot
    /// serve yet.
    Same,
    /// The master a redirect names.
    To(String),
    /// The next address in turn (no master known, or the replica failed).
    Elsewhere,
}

/// Remembers since when a replica has answered `MASTER_NOT_READY`, so the
/// library retries it, but not for ever.
#[derive(Debug, Default)]
pub(crate) struct Router {
    not_ready: Option<(String, Instant)>,
}

impl Router {
    /// Where to go after `address` failed an attempt at `now`, with the
    /// redirect its answer carried, if any.
    pub(crate) fn next(&mut self, address: &str, redirect: Option<&Redirect>, now: Instant) -> Next {
        match redirect {
            Some(redirect) if redirect.master_address == address => {
                // A master that cannot serve yet names itself (a replica
                // never redirects to itself otherwise).
                let since = match &self.not_ready {
                    Some((unready, since)) if unready == address => *since,
                    _ => {
                        self.not_ready = Some((address.to_string(), now));
                        now
                    }
                };
                if redirect.reason == api::ErrorReason::MasterNotReady && now.saturating_duration_since(since) < MASTER_NOT_READY_PATIENCE {
                    Next::Same
                } else {
                    self.not_ready = None;
                    Next::Elsewhere
                }
            }
            Some(redirect) => {
                self.not_ready = None;
                Next::To(redirect.master_address.clone())
            }
            None => {
                self.not_ready = None;
                Next::Elsewhere
            }
        }
    }

    /// `address` answered: a later `MASTER_NOT_READY` from it starts a new
    /// period of patience.
    pub(crate) fn served(&mut self) {
        self.not_ready = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(reason: api::ErrorReason, address: &str) -> Redirect {
        Redirect { reason, master_id: 3, master_address: address.to_string() }
    }

    #[test]
    fn a_master_not_ready_is_retried_for_a_while_then_left() {
        let mut router = Router::default();
        let start = Instant::now();
        let not_ready = redirect(api::ErrorReason::MasterNotReady, "m:1");
        assert_eq!(router.next("m:1", Some(&not_ready), start), Next::Same);
        assert_eq!(router.next("m:1", Some(&not_ready), start + Duration::from_millis(1_500)), Next::Same);
        assert_eq!(router.next("m:1", Some(&not_ready), start + MASTER_NOT_READY_PATIENCE), Next::Elsewhere, "it may be cut off");
        // Once it served, patience starts again.
        assert_eq!(router.next("m:1", Some(&not_ready), start + Duration::from_secs(3)), Next::Same);
        router.served();
        assert_eq!(router.next("m:1", Some(&not_ready), start + Duration::from_secs(10)), Next::Same);
    }

    #[test]
    fn a_redirect_names_the_master_to_try_and_a_failure_moves_on() {
        let mut router = Router::default();
        let now = Instant::now();
        let not_master = redirect(api::ErrorReason::NotMaster, "m:1");
        assert_eq!(router.next("f:2", Some(&not_master), now), Next::To("m:1".into()));
        assert_eq!(router.next("f:2", None, now), Next::Elsewhere);
        // NOT_MASTER naming the replica itself is no reason to stay.
        assert_eq!(router.next("m:1", Some(&not_master), now), Next::Elsewhere);
        // Another replica's unreadiness does not extend this one's patience.
        let start = now;
        let not_ready = |address: &str| redirect(api::ErrorReason::MasterNotReady, address);
        assert_eq!(router.next("a:1", Some(&not_ready("a:1")), start), Next::Same);
        assert_eq!(router.next("b:1", Some(&not_ready("b:1")), start + Duration::from_secs(5)), Next::Same);
        assert_eq!(router.next("b:1", Some(&not_ready("b:1")), start + Duration::from_secs(8)), Next::Elsewhere);
    }
}
