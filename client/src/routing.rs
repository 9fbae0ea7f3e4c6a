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

/// The longest a replica that let an attempt time out (or could not be
/// connected to) is passed over: neither picked in turn nor followed when a
/// redirect names it. A master that stops answering (SIGSTOP, a hung
/// machine) is still named by followers that have not yet seen its
/// successor, elected within about half a second of its silence; without
/// this the library waited out a second timeout on it. A master that was
/// only slow is tried again after this (sooner after a KeepAlive that hung,
/// see `keep_alive_streams`), or at once when it answers.
pub(crate) const SILENT_PASSED_OVER: Duration = Duration::from_secs(1);

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
/// library retries it, but not for ever: the patience runs from the first
/// such answer of an episode, and the episode lasts while the replica keeps
/// answering so (even if the client went elsewhere and was sent back) until
/// it serves a call or stays silent for the patience.
#[derive(Debug, Default)]
pub(crate) struct Router {
    /// The unready replica, since when, and its latest such answer.
    not_ready: Option<(String, Instant, Instant)>,
    /// The replica that last let an attempt time out, and until when it
    /// is passed over.
    silent: Option<(String, Instant)>,
}

impl Router {
    /// Where to go after `address` failed an attempt at `now`, with the
    /// redirect its answer carried, if any.
    pub(crate) fn next(&mut self, address: &str, redirect: Option<&Redirect>, now: Instant) -> Next {
        match redirect {
            // A master that cannot serve yet names itself (a replica never
            // redirects to itself otherwise).
            Some(redirect) if redirect.master_address == address && redirect.reason == api::ErrorReason::MasterNotReady => {
                let since = match &self.not_ready {
                    Some((unready, since, last)) if unready == address && now.saturating_duration_since(*last) < MASTER_NOT_READY_PATIENCE => *since,
                    _ => now,
                };
                self.not_ready = Some((address.to_string(), since, now));
                if now.saturating_duration_since(since) < MASTER_NOT_READY_PATIENCE { Next::Same } else { Next::Elsewhere }
            }
            Some(redirect) if redirect.master_address != address && !self.passed_over(&redirect.master_address, now) => {
                Next::To(redirect.master_address.clone())
            }
            _ => Next::Elsewhere,
        }
    }

    /// `address` let an attempt time out (or could not be connected to) at
    /// `now`: it is passed over for `period`, at most [`SILENT_PASSED_OVER`].
    pub(crate) fn silent(&mut self, address: &str, now: Instant, period: Duration) {
        self.silent = Some((address.to_string(), now + period.min(SILENT_PASSED_OVER)));
    }

    /// Whether `address` is passed over at `now`.
    pub(crate) fn passed_over(&self, address: &str, now: Instant) -> bool {
        self.silent.as_ref().is_some_and(|(silent, until)| silent == address && now < *until)
    }

    /// `address` answered a call: a later `MASTER_NOT_READY` from it starts
    /// a new episode.
    pub(crate) fn served(&mut self, address: &str) {
        if self.not_ready.as_ref().is_some_and(|(unready, _, _)| unready == address) {
            self.not_ready = None;
        }
        if self.silent.as_ref().is_some_and(|(silent, _)| silent == address) {
            self.silent = None;
        }
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
        let at = |ms: u64| start + Duration::from_millis(ms);
        let not_ready = redirect(api::ErrorReason::MasterNotReady, "m:1");
        assert_eq!(router.next("m:1", Some(&not_ready), at(0)), Next::Same);
        assert_eq!(router.next("m:1", Some(&not_ready), at(1_500)), Next::Same);
        assert_eq!(router.next("m:1", Some(&not_ready), at(2_000)), Next::Elsewhere, "it may be cut off");
        // Sent back by a follower that still names it: no fresh patience.
        let not_master = redirect(api::ErrorReason::NotMaster, "m:1");
        assert_eq!(router.next("f:2", Some(&not_master), at(2_100)), Next::To("m:1".into()));
        assert_eq!(router.next("m:1", Some(&not_ready), at(2_200)), Next::Elsewhere);
        // Once it served, a new episode starts with its own patience.
        router.served("m:1");
        assert_eq!(router.next("m:1", Some(&not_ready), at(3_000)), Next::Same);
        // Another replica serving does not end this episode.
        router.served("f:2");
        assert_eq!(router.next("m:1", Some(&not_ready), at(4_500)), Next::Same);
        assert_eq!(router.next("m:1", Some(&not_ready), at(5_100)), Next::Elsewhere);
        // Silence for the patience ends it too.
        assert_eq!(router.next("m:1", Some(&not_ready), at(9_000)), Next::Same);
    }

    #[test]
    fn a_replica_that_let_an_attempt_time_out_is_passed_over_for_a_while() {
        let mut router = Router::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        router.silent("m:1", at(0), Duration::from_secs(60));
        assert!(router.passed_over("m:1", at(500)));
        assert!(!router.passed_over("f:2", at(500)), "only the silent one");
        // A follower that has not seen the successor yet still names it.
        let not_master = redirect(api::ErrorReason::NotMaster, "m:1");
        assert_eq!(router.next("f:2", Some(&not_master), at(600)), Next::Elsewhere);
        // Later it is followed again (it may only have been slow).
        assert!(!router.passed_over("m:1", at(1_000)));
        assert_eq!(router.next("f:2", Some(&not_master), at(1_000)), Next::To("m:1".into()));
        // A shorter period (after a KeepAlive that hung) ends sooner.
        router.silent("m:1", at(1_500), Duration::from_millis(300));
        assert!(router.passed_over("m:1", at(1_700)));
        assert!(!router.passed_over("m:1", at(1_800)));
        // An answer from it ends the passing over at once.
        router.silent("m:1", at(2_000), SILENT_PASSED_OVER);
        router.served("m:1");
        assert_eq!(router.next("f:2", Some(&not_master), at(2_100)), Next::To("m:1".into()));
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
        // Another replica's unreadiness has its own patience.
        let not_ready = |address: &str| redirect(api::ErrorReason::MasterNotReady, address);
        assert_eq!(router.next("a:1", Some(&not_ready("a:1")), now), Next::Same);
        assert_eq!(router.next("b:1", Some(&not_ready("b:1")), now + Duration::from_secs(5)), Next::Same);
        assert_eq!(router.next("b:1", Some(&not_ready("b:1")), now + Duration::from_secs(6)), Next::Same);
        assert_eq!(router.next("b:1", Some(&not_ready("b:1")), now + Duration::from_secs(7)), Next::Elsewhere);
    }
}
