"""Where the next attempt of a call goes after a replica could not answer
it: the master a redirect names, the same replica again (a master that
cannot serve yet, for a while), or the next address in turn. The same
rules as the Rust library's `client/src/routing.rs`."""

from __future__ import annotations

import enum
from typing import Optional, Tuple

from .errors import Redirect

#: How long a master answering `MASTER_NOT_READY` is retried before other
#: replicas are tried: one that stays unready this long may be cut off.
MASTER_NOT_READY_PATIENCE_S = 2.0


class Next(enum.Enum):
    """Where to send the next attempt (`To` carries the address apart)."""

    SAME = "same"
    TO = "to"
    ELSEWHERE = "elsewhere"


class Router:
    """Remembers since when a replica has answered `MASTER_NOT_READY`, so it
    is retried, but not for ever: the patience runs from the first such
    answer of an episode, which lasts while the replica keeps answering so
    until it serves a call or stays silent for the patience."""

    def __init__(self) -> None:
        # (address, since, latest) of the unready replica.
        self._not_ready: Optional[Tuple[str, float, float]] = None

    def next(self, address: str, redirect: Optional[Redirect], now: float) -> Tuple[Next, str]:
        """Where to go after `address` failed an attempt at `now` (seconds,
        monotonic), with the redirect its answer carried, if any."""
        if redirect is not None and redirect.master_address == address and redirect.reason == "MASTER_NOT_READY":
            since = now
            if self._not_ready is not None:
                unready, first, last = self._not_ready
                if unready == address and now - last < MASTER_NOT_READY_PATIENCE_S:
                    since = first
            self._not_ready = (address, since, now)
            if now - since < MASTER_NOT_READY_PATIENCE_S:
                return Next.SAME, address
            return Next.ELSEWHERE, ""
        if redirect is not None and redirect.master_address != address:
            return Next.TO, redirect.master_address
        return Next.ELSEWHERE, ""

    def served(self, address: str) -> None:
        """`address` answered a call: a later `MASTER_NOT_READY` from it
        starts a new episode."""
        if self._not_ready is not None and self._not_ready[0] == address:
            self._not_ready = None
