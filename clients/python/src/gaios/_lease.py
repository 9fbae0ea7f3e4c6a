"""The session's local lease, as the Rust library counts it
(`client/src/lease.rs`): how much of a lease the master granted the client
may count on its own clock, and the session's state at a moment.

The master extends a session's lease when a KeepAlive reaches it, by the
lease as its clock measures it, and expires the session when that runs
out. The client counts from when it *sent* the KeepAlive, on its own
clock, and ends its local lease early by a margin that covers clocks
running at different rates within `CLOCK_DRIFT_PPM`: jeopardy then always
begins before the master can expire the session and give its locks to
someone else.
"""

from __future__ import annotations

import enum
from typing import Optional

#: The clock-rate error assumed, in parts per million: the client's clock
#: and every replica's run within 2% of real time (the cell's own bound).
CLOCK_DRIFT_PPM = 20_000
_PPM = 1_000_000
#: The longest lease believed (the cell's maximum `--session-lease-ms`); a
#: longer one from the wire is cut to this, which is only safer.
SESSION_LEASE_MAX_NS = 600 * 1_000_000_000


class SessionState(enum.Enum):
    """The health of the session, as the application sees it."""

    #: The lease is current: locks and cached data can be trusted.
    SAFE = "safe"
    #: The local lease ran out without an answer from a master; calls wait
    #: for the grace period. Locks may be lost: stop acting on them.
    JEOPARDY = "jeopardy"
    #: The session ended; its locks and ephemeral nodes are gone.
    EXPIRED = "expired"


def local_lease_ns(lease_ms: int) -> int:
    """The part of a lease of `lease_ms` the client counts on its own clock
    from when it sent the KeepAlive: lease × (1 − ρ) / (1 + ρ), rounded
    down (ρ = CLOCK_DRIFT_PPM); about 96.1% of the lease."""
    lease_ns = min(max(lease_ms, 0) * 1_000_000, SESSION_LEASE_MAX_NS)
    return lease_ns * (_PPM - CLOCK_DRIFT_PPM) // (_PPM + CLOCK_DRIFT_PPM)


def state_at(now_ns: int, lease_end_ns: int, grace_ns: Optional[int]) -> SessionState:
    """The session's state at `now_ns` with the local lease ending at
    `lease_end_ns` and the grace period `grace_ns` after it (None: never
    ends)."""
    if now_ns < lease_end_ns:
        return SessionState.SAFE
    if grace_ns is None or now_ns < lease_end_ns + grace_ns:
        return SessionState.JEOPARDY
    return SessionState.EXPIRED
