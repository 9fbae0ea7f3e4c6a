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

#: The longest a replica that let an attempt time out is passed over: neither
#: picked in turn nor followed when a redirect names it (followers that have
#: not yet seen a hung master's successor still name it); sooner after a
#: KeepAlive that hung, and at once when it answers.
SILENT_PASSED_OVER_S = 1.0


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
        # (address, until) of the replica that last let an attempt time out.
        self._silent: Optional[Tuple[str, float]] = None

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
        if redirect is not None and redirect.master_address != address and not self.passed_over(redirect.master_address, now):
            return Next.TO, redirect.master_address
        return Next.ELSEWHERE, ""

    def silent(self, address: str, now: float, period: float = SILENT_PASSED_OVER_S) -> None:
        """`address` let an attempt time out at `now`: it is passed over for
        `period` seconds, at most `SILENT_PASSED_OVER_S`."""
        self._silent = (address, now + min(period, SILENT_PASSED_OVER_S))

    def passed_over(self, address: str, now: float) -> bool:
        """Whether `address` is passed over at `now`."""
        return self._silent is not None and self._silent[0] == address and now < self._silent[1]

    def served(self, address: str) -> None:
        """`address` answered a call: a later `MASTER_NOT_READY` from it
        starts a new episode."""
        if self._not_ready is not None and self._not_ready[0] == address:
            self._not_ready = None
        if self._silent is not None and self._silent[0] == address:
            self._silent = None
