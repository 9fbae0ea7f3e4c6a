//! The session's local lease: how much of a lease the master granted the
//! client may count on its own clock, and the clock that moves the session
//! from safe to jeopardy to expired.
//!
//! The master extends a session's lease when a KeepAlive reaches it, by the
//! session lease as *its* clock measures it, and expires the session when
//! that runs out. The client counts from when it *sent* the KeepAlive (no
//! later than the master received it), on *its* clock. Two clocks that run at
//! different rates disagree on how long a lease lasts, so the client ends its
//! local lease early by a margin that covers the worst disagreement
//! [`CLOCK_DRIFT_PPM`] allows. Then jeopardy always begins before the master
//! can expire the session and hand its locks to someone else, and the
//! holder is told to stop in time.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::{Inner, SessionState};

/// The clock-rate error the client assumes, in parts per million: its own
/// clock and every replica's run within 2% of real time (20,000 ppm), the
/// same bound the cell states for its replicas (and its simulator draws
/// clock rates from). Outside it, a session may expire at the master while
/// the client still believes its lease.
pub const CLOCK_DRIFT_PPM: u64 = 20_000;

const PPM: u64 = 1_000_000;

/// The longest lease the client believes: the cell's own maximum
/// `--session-lease-ms` (600,000). A longer one from the wire is cut to
/// this, which only makes the local lease shorter, never unsafe.
pub(crate) const SESSION_LEASE_MAX: Duration = Duration::from_secs(600);

/// The part of a `lease` granted by the master that the client counts on
/// its own clock from when it sent the KeepAlive: `lease × (1 − ρ) / (1 + ρ)`
/// with ρ = [`CLOCK_DRIFT_PPM`], rounded down (about 96.1% of the lease,
/// 11.53 s of the default 12 s).
///
/// Why that factor: the master's clock may run fast by ρ, so its lease of
/// `lease` on its clock may last only `lease / (1 + ρ)` of real time; the
/// client's clock may run slow by ρ, so a local lease of `l` on its clock may
/// last `l / (1 − ρ)` of real time. The local lease must not outlast the
/// master's: `l / (1 − ρ) ≤ lease / (1 + ρ)`. Counting from the send, which
/// comes before the master's receipt, only adds to the margin.
pub(crate) fn local_lease(lease: Duration) -> Duration {
    let lease_ns = lease.min(SESSION_LEASE_MAX).as_nanos();
    // At most 6e11 ns * 1e6: far inside u128.
    let local_ns = lease_ns * u128::from(PPM - CLOCK_DRIFT_PPM) / u128::from(PPM + CLOCK_DRIFT_PPM);
    Duration::from_nanos(u64::try_from(local_ns).unwrap_or(u64::MAX))
}

/// When the local lease granted by an answer to a KeepAlive sent at `sent`
/// ends (see [`local_lease`]).
pub(crate) fn local_end(sent: Instant, lease: Duration) -> Instant {
    // Cannot overflow with a lease of at most ten minutes; if it did, the
    // lease would be taken as already over, which is safe.
    sent.checked_add(local_lease(lease)).unwrap_or(sent)
}

/// The session's state at `now` with the local lease ending at `lease_end`
/// and `grace` after it: safe before the end, in jeopardy during the grace
/// period, expired after it.
pub(crate) fn state_at(now: Instant, lease_end: Instant, grace: Duration) -> SessionState {
    if now < lease_end {
        SessionState::Safe
    } else if lease_end.checked_add(grace).is_none_or(|expiry| now < expiry) {
        SessionState::Jeopardy
    } else {
        SessionState::Expired
    }
}

/// The lease clock, the one owner of the lease's effect on the session's
/// state: wakes exactly when the local lease ends (jeopardy) and when the
/// grace period ends (expired), and when an answered KeepAlive moves the
/// lease's end (safe again). It runs beside the KeepAlive streams, so a
/// connection attempt that hangs never delays jeopardy. A state that jumps
/// past a step (the process was paused through both deadlines) goes straight
/// to the later one. Returns once the session is expired, by its own
/// decision or anybody's (the cell said so, the client closed it).
pub(crate) async fn clock(inner: &Inner, mut lease_end: watch::Receiver<Instant>) {
    let mut session = inner.state.subscribe();
    let grace = inner.options.grace_period;
    loop {
        let end = *lease_end.borrow_and_update();
        let wanted = state_at(Instant::now(), end, grace);
        inner.state.send_if_modified(|state| {
            let change = *state != SessionState::Expired && *state != wanted;
            if change {
                *state = wanted;
            }
            change
        });
        // The next instant the state changes by itself, if any.
        let next = match *session.borrow_and_update() {
            SessionState::Expired => return,
            SessionState::Safe => Some(end),
            SessionState::Jeopardy => end.checked_add(grace),
        };
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wake => {}
            changed = lease_end.changed() => if changed.is_err() { return },
            changed = session.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real time for a clock running at `rate_ppm` (parts per million of
    /// real time) to measure `measured`, as an exact fraction of
    /// nanoseconds (numerator, denominator).
    fn real_time(measured: Duration, rate_ppm: u64) -> (u128, u128) {
        (measured.as_nanos() * u128::from(PPM), u128::from(rate_ppm))
    }

    /// Whether the client's local lease ends no later in real time than the
    /// master's lease, with the client's clock running slow and the
    /// master's fast, both at the bound, and the KeepAlive reaching the
    /// master the instant it was sent (the worst case).
    fn ends_first(local: Duration, lease: Duration) -> bool {
        let (client_ns, client_per) = real_time(local, PPM - CLOCK_DRIFT_PPM);
        let (master_ns, master_per) = real_time(lease, PPM + CLOCK_DRIFT_PPM);
        client_ns * master_per <= master_ns * client_per
    }

    #[test]
    fn the_local_lease_ends_before_the_master_can_expire_the_session_at_the_drift_bound() {
        for lease_ms in [1_000, 2_000, 2_001, 12_000, 45_000, 600_000] {
            let lease = Duration::from_millis(lease_ms);
            let local = local_lease(lease);
            assert!(ends_first(local, lease), "{lease_ms} ms: the local lease of {local:?} outlasts the master's");
        }
    }

    #[test]
    fn the_margin_is_no_larger_than_the_drift_bound_needs() {
        // lease × 0.98 / 1.02, to the nanosecond (rounded down).
        assert_eq!(local_lease(Duration::from_secs(12)), Duration::from_nanos(11_529_411_764));
        assert_eq!(local_lease(Duration::from_millis(2_000)), Duration::from_nanos(1_921_568_627));
        assert_eq!(local_lease(Duration::ZERO), Duration::ZERO);
        // One nanosecond more would outlast the master's lease.
        for lease in [Duration::from_secs(12), Duration::from_millis(2_000)] {
            assert!(!ends_first(local_lease(lease) + Duration::from_nanos(1), lease), "{lease:?}");
        }
    }

    #[test]
    fn a_lease_from_the_wire_beyond_the_cells_maximum_is_cut() {
        assert_eq!(local_lease(Duration::from_millis(u64::MAX)), local_lease(SESSION_LEASE_MAX));
        let sent = Instant::now();
        assert_eq!(local_end(sent, Duration::from_millis(u64::MAX)), sent + local_lease(SESSION_LEASE_MAX));
    }

    #[test]
    fn the_state_is_safe_then_jeopardy_then_expired() {
        let end = Instant::now() + Duration::from_secs(100);
        let grace = Duration::from_secs(45);
        assert_eq!(state_at(end - Duration::from_nanos(1), end, grace), SessionState::Safe);
        assert_eq!(state_at(end, end, grace), SessionState::Jeopardy);
        assert_eq!(state_at(end + grace - Duration::from_nanos(1), end, grace), SessionState::Jeopardy);
        assert_eq!(state_at(end + grace, end, grace), SessionState::Expired);
        // A grace period that cannot be added to an instant never ends.
        assert_eq!(state_at(end + grace, end, Duration::MAX), SessionState::Jeopardy);
    }
}
