//! The master's reading of the **lock-delay clock**, which it stamps on
//! every command it proposes (`Command.lock_clock_ms`).
//!
//! Lock-delays must not end early because two masters' wall clocks
//! disagree: a new master whose wall clock runs an hour ahead would
//! otherwise end every running lock-delay with its first command. So the
//! state keeps a clock of its own (the highest stamp applied,
//! [`crate::machine::StateMachine::lock_clock_ms`]), and a master advances it
//! only by its own **monotonic** elapsed time:
//!
//! - when a master begins to serve (it holds the master lease and has
//!   applied everything chosen before its mastership, so its state holds
//!   the last stamp any earlier master got chosen), it **anchors**: it
//!   notes the state's value and its own monotonic instant;
//! - from then on it stamps `anchor value + monotonic time elapsed since`;
//! - before it anchors (just elected, or after its lease lapsed) it stamps
//!   0, which the state ignores (it keeps the highest value).
//!
//! A failover thus never jumps the clock forward. The time between the old
//! master's last stamp and the new master's anchor is not counted, so a
//! lock-delay running across a failover lasts longer by about that much
//! (at most an election and a lease), which is the safe side. The clock
//! runs at the rate of the master's monotonic clock, so the clock-drift bound
//! the master lease already assumes applies to lock-delays too. Node times
//! users see stay on the wall clock (`Command.now_ms`).

use std::time::Instant;

/// A master's anchor of the lock-delay clock; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockClock {
    anchor: Option<(u64, Instant)>,
}

impl LockClock {
    /// A clock with no reading: stamps are 0 until [`LockClock::anchor`].
    pub fn new() -> Self {
        LockClock::default()
    }

    /// Anchors at the state's lock-delay clock `state_ms`, at the monotonic
    /// instant `now`: the master can serve and its state is current.
    pub fn anchor(&mut self, state_ms: u64, now: Instant) {
        self.anchor = Some((state_ms, now));
    }

    /// Forgets the anchor (mastership lost, or no longer able to serve).
    pub fn forget(&mut self) {
        self.anchor = None;
    }

    /// Whether the clock has a reading.
    pub fn is_anchored(&self) -> bool {
        self.anchor.is_some()
    }

    /// The stamp for a command proposed at `now`: the anchor plus the
    /// monotonic time since, or 0 without an anchor.
    pub fn stamp_ms(&self, now: Instant) -> u64 {
        let Some((state_ms, at)) = self.anchor else { return 0 };
        let elapsed_ms = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
        state_ms.saturating_add(elapsed_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_master_counts_on_from_the_state_by_its_own_elapsed_time() {
        let start = Instant::now();
        let mut clock = LockClock::new();
        assert_eq!(clock.stamp_ms(start), 0, "no reading before the anchor: the state ignores 0");
        clock.anchor(5_000, start);
        assert_eq!(clock.stamp_ms(start), 5_000);
        assert_eq!(clock.stamp_ms(start + Duration::from_millis(1_250)), 6_250);
        // A monotonic instant before the anchor cannot move it back.
        assert_eq!(clock.stamp_ms(start.checked_sub(Duration::from_secs(1)).unwrap_or(start)), 5_000);
        clock.forget();
        assert_eq!(clock.stamp_ms(start + Duration::from_secs(9)), 0);
    }

    #[test]
    fn a_failover_does_not_jump_the_clock_whatever_the_wall_clocks_say() {
        // The old master stamped up to 7_000; the state holds that. The new
        // master anchors there, however far its wall clock is ahead, and
        // counts only its own elapsed time.
        let takeover = Instant::now();
        let mut new_master = LockClock::new();
        new_master.anchor(7_000, takeover);
        assert_eq!(new_master.stamp_ms(takeover + Duration::from_millis(10)), 7_010);
    }
}
