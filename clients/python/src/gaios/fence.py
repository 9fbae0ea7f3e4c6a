"""Fencing: a service that takes orders from lock holders remembers the
highest lock generation it has seen per lock and refuses older ones, so a
holder that lost its lock without knowing it (a long pause) cannot act
after its successor did. The same rules as the Rust library's `Fence`: an
exclusive holding conflicts with every other, shared ones only with
exclusive ones."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from typing import TYPE_CHECKING, Dict

from . import errors
from ._pb import pb

if TYPE_CHECKING:
    from .client import Cell

#: The most locks one fence remembers; past it, the one seen longest ago
#: is forgotten (a fence guards a few locks, not thousands).
FENCE_LOCKS_MAX = 4096


class FenceError(errors.GaiosError):
    """A fence refused a sequencer."""


class StaleSequencer(FenceError):
    """A newer conflicting holder of the same lock was seen."""

    def __init__(self, path: str, presented: int, seen: int) -> None:
        super().__init__(f"stale sequencer for {path}: generation {presented}, but {seen} was seen")
        self.path, self.presented, self.seen = path, presented, seen


class NotCurrent(FenceError):
    """The cell says the sequencer is no longer current."""


@dataclasses.dataclass
class _Seen:
    exclusive: int = 0
    shared: int = 0


class Fence:
    """Remembers the highest lock generations seen per lock (exclusive and
    shared apart). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._highest: "collections.OrderedDict[str, _Seen]" = collections.OrderedDict()

    def check(self, sequencer: "pb.Sequencer") -> None:
        """Accepts `sequencer` unless a higher generation of its lock whose
        holding conflicts with it was seen (`StaleSequencer`); remembers its
        generation. A sequencer of an unknown mode counts as exclusive."""
        shared = sequencer.mode == pb.LOCK_MODE_SHARED
        with self._lock:
            seen = self._highest.get(sequencer.path) or _Seen()
            conflicting = seen.exclusive if shared else max(seen.exclusive, seen.shared)
            if sequencer.lock_generation < conflicting:
                raise StaleSequencer(sequencer.path, sequencer.lock_generation, conflicting)
            if shared:
                seen.shared = max(seen.shared, sequencer.lock_generation)
            else:
                seen.exclusive = max(seen.exclusive, sequencer.lock_generation)
            self._highest[sequencer.path] = seen
            self._highest.move_to_end(sequencer.path)
            while len(self._highest) > FENCE_LOCKS_MAX:
                self._highest.popitem(last=False)

    def check_with_cell(self, cell: "Cell", sequencer: "pb.Sequencer") -> None:
        """`check`, then asks the cell whether the sequencer is still current
        (`NotCurrent` if not), for a service that must not act even on the
        newest holder it has seen once that holder lost the lock."""
        self.check(sequencer)
        if not cell.check_sequencer(sequencer):
            raise NotCurrent(f"the cell says the sequencer for {sequencer.path} is no longer current")
