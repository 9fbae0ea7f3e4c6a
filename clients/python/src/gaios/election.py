"""The election recipe: candidates campaign for an exclusive lock on a file;
the one holding it leads and publishes a value (say, its address) in the
file with its sequencer, so anybody can tell the current leader from a
stale file. The file's format is the Rust library's (`gaios-leader/1`, the
lock generation, the node instance, then the value), so Rust and Python
candidates and observers mix in one election.

    leadership = election.campaign(cell, "/service/leader", b"10.0.0.7:80")
    serve(fence_token=leadership.sequencer)   # until leadership is at risk
    leadership.resign()
"""

from __future__ import annotations

import re
from typing import Iterator, Optional, Tuple

from . import errors
from ._pb import pb
from .client import Cell, EventKind
from .handle import LOCK_DELAY_DEFAULT_S, Handle, Lock, LockMode, LockState

#: How long one round of waiting for the lock lasts before the candidate
#: asks again (the wait itself survives failovers; this only bounds a call).
CAMPAIGN_WAIT_S = 30.0
#: How often `observe` re-reads the leader file besides reacting to events
#: (a leader's session can end without any event on the file).
OBSERVE_INTERVAL_S = 0.25
_HEADER = b"gaios-leader/1"
_DECIMAL = re.compile(rb"[0-9]{1,20}")


class Leadership:
    """This process leads: it holds the election lock. Stop acting as leader
    as soon as it is at risk (`lock.state`, `wait_at_risk`), not only when
    it is lost."""

    def __init__(self, lock: Lock, value: bytes) -> None:
        self.lock = lock
        self.value = value

    @property
    def sequencer(self) -> "pb.Sequencer":
        """The leader's sequencer: hand it to the services it talks to."""
        return self.lock.sequencer

    @property
    def state(self) -> LockState:
        """Where leadership stands (the election lock's state)."""
        return self.lock.state

    def wait_at_risk(self, timeout: Optional[float] = None) -> bool:
        """See `Lock.wait_at_risk`."""
        return self.lock.wait_at_risk(timeout)

    def wait_recovered(self, timeout: Optional[float] = None) -> Optional[bool]:
        """See `Lock.wait_recovered`."""
        return self.lock.wait_recovered(timeout)

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """See `Lock.wait_lost`."""
        return self.lock.wait_lost(timeout)

    def resign(self) -> None:
        """Steps down: clears the published value and releases the lock."""
        self.lock.handle.write(b"")
        self.lock.release()


def campaign(cell: Cell, path: str, value: bytes, lock_delay: float = LOCK_DELAY_DEFAULT_S) -> Leadership:
    """Campaigns for leadership of `path` (created if missing); returns once
    this process leads, after publishing `value`. A leader whose session
    expires keeps the others waiting for `lock_delay` seconds."""
    handle = cell.open(path, create=True, lock_delay=lock_delay)
    try:
        while True:
            try:
                lock = handle.acquire(LockMode.EXCLUSIVE, CAMPAIGN_WAIT_S)
                break
            except errors.Timeout:
                continue
        handle.write(_encode(lock.sequencer, bytes(value)))
    except BaseException:
        _close_quietly(handle)
        raise
    return Leadership(lock, bytes(value))


def _close_quietly(handle: Handle) -> None:
    try:
        handle.close()
    except errors.GaiosError:
        pass


def leader(cell: Cell, path: str) -> Optional[bytes]:
    """The current leader's value, or None if nobody leads `path` now."""
    try:
        handle = cell.open(path, event_mask=0)
    except errors.NotFound:
        return None
    try:
        return _current(cell, handle)
    finally:
        _close_quietly(handle)


def observe(cell: Cell, path: str) -> Iterator[Optional[bytes]]:
    """The leader's value now and after every change (None while nobody
    leads), until the session ends. A generator: close it (or leave the
    loop) to stop."""
    handle = cell.open(path, create=True)
    events = handle.events()
    last: Tuple[bool, Optional[bytes]] = (False, None)
    try:
        while cell.state.value != "expired":
            try:
                now = _current(cell, handle)
            except errors.SessionExpired:
                return
            if last != (True, now):
                last = (True, now)
                yield now
            events.get(OBSERVE_INTERVAL_S)
    finally:
        events.close()
        if cell.state.value != "expired":
            _close_quietly(handle)


def _current(cell: Cell, handle: Handle) -> Optional[bytes]:
    contents, _ = handle.read()
    decoded = _decode(handle.path, contents)
    if decoded is None:
        return None
    sequencer, value = decoded
    return value if cell.check_sequencer(sequencer) else None


def _encode(sequencer: "pb.Sequencer", value: bytes) -> bytes:
    return b"%s\n%d\n%d\n%s" % (_HEADER, sequencer.lock_generation, sequencer.instance, value)


def _decode(path: str, contents: bytes) -> Optional[Tuple["pb.Sequencer", bytes]]:
    lines = contents.split(b"\n", 3)
    if len(lines) < 3 or lines[0] != _HEADER:
        return None
    # Plain decimal digits only (as the Rust recipe parses them): no sign,
    # space or underscore, and within 64 bits.
    if not (_DECIMAL.fullmatch(lines[1]) and _DECIMAL.fullmatch(lines[2])):
        return None
    generation, instance = int(lines[1]), int(lines[2])
    if not (generation < 1 << 64 and instance < 1 << 64):
        return None
    value = lines[3] if len(lines) > 3 else b""
    return pb.Sequencer(path=path, mode=pb.LOCK_MODE_EXCLUSIVE, lock_generation=generation, instance=instance), value


__all__ = ["Leadership", "campaign", "leader", "observe", "EventKind"]
