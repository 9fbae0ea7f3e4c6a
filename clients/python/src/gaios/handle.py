"""Handles on nodes, and locks with their sequencers: the Python counterpart
of the Rust library's `client/src/handle.rs`."""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

from . import errors
from ._lease import SessionState
from ._pb import pb
from .errors import GaiosError

if TYPE_CHECKING:
    from .client import Cell, EventStream

#: How long a holder whose session expires keeps others from its lock, by
#: default (`Cell.open(lock_delay=...)`), as in the Rust library.
LOCK_DELAY_DEFAULT_S = 15.0
#: The pause between two attempts to re-check a lock with the cell after a
#: failover or lost events.
RECHECK_RETRY_S = 0.2


class LockMode(enum.Enum):
    """How a lock is held."""

    #: One holder (a writer).
    EXCLUSIVE = 1
    #: Any number of holders (readers), no exclusive one.
    SHARED = 2


class LockState(enum.IntEnum):
    """Where a held lock stands, worst last."""

    #: The session is safe and nothing says the lock is gone.
    HELD = 0
    #: The session is in jeopardy, or events were lost and the lock is
    #: being checked with the cell: stop acting on the lock until it is
    #: held again.
    AT_RISK = 1
    #: Gone for sure: the session expired, the node was deleted, or the
    #: cell says the sequencer is no longer current.
    LOST = 2


def _of_session(state: SessionState) -> LockState:
    return {SessionState.SAFE: LockState.HELD, SessionState.JEOPARDY: LockState.AT_RISK,
            SessionState.EXPIRED: LockState.LOST}[state]


def _seconds_to_ms(seconds: float, what: str) -> int:
    if not (seconds >= 0) or seconds == float("inf"):
        raise errors.InvalidArgument(f"{what} must be a finite number of seconds, not {seconds!r}")
    return int(round(seconds * 1000))


class Handle:
    """An open handle on a node, bound to the node's instance when opened
    (a node created again at the path is another instance: the handle gets
    `HandleInvalid`)."""

    def __init__(self, cell: "Cell", handle_id: int, path: str, created: bool, stat: "pb.Stat") -> None:
        self._cell = cell
        #: The handle's id, unique within the session.
        self.id = handle_id
        #: The path it was opened with.
        self.path = path
        #: Whether opening created the node.
        self.created = created
        #: The node's stat when opened.
        self.stat_at_open = stat

    def __repr__(self) -> str:
        return f"Handle(id={self.id}, path={self.path!r})"

    @classmethod
    def _open(cls, cell: "Cell", path: str, *, create: bool, exclusive: bool, directory: bool, ephemeral: bool,
              contents: bytes, acl: Optional["pb.Acl"], event_mask: int, lock_delay: float) -> "Handle":
        request = pb.OpenRequest(
            header=cell._header(), path=path, create=create, exclusive_create=exclusive,
            kind=pb.NODE_KIND_DIRECTORY if directory else pb.NODE_KIND_FILE, ephemeral=ephemeral,
            initial_contents=bytes(contents), event_mask=event_mask,
            lock_delay_ms=_seconds_to_ms(lock_delay, "lock_delay"),
        )
        if acl is not None:
            request.acl.CopyFrom(acl)
        opened = cell._call("Open", request)
        return cls(cell, opened.handle, path, opened.created, opened.stat)

    # ---------------------------------------------------------------- reads

    def read(self) -> Tuple[bytes, "pb.Stat"]:
        """The file's contents and stat."""
        answer = self._cell._call("GetContentsAndStat", pb.GetContentsAndStatRequest(handle=self._cell._handle_ref(self.id)))
        return answer.contents, answer.stat

    def stat(self) -> "pb.Stat":
        """The node's stat."""
        return self._cell._call("GetStat", pb.GetStatRequest(handle=self._cell._handle_ref(self.id))).stat

    def list_page(self, page_size: int = 0, page_token: str = "") -> Tuple[List[str], str]:
        """One page of the directory's children's names, in byte order:
        at most `page_size` (1 to 10,000; 0 means 10,000), starting after
        `page_token` ("" for the first page). Returns the names and the
        token of the next page ("" after the last)."""
        request = pb.ReadDirRequest(handle=self._cell._handle_ref(self.id), page_size=page_size, page_token=page_token)
        answer = self._cell._call("ReadDir", request)
        return list(answer.names), answer.next_page_token

    def iter_children(self, page_size: int = 0) -> Iterator[str]:
        """The directory's children's names, fetched a page at a time. A
        child present throughout is listed exactly once, in byte order; one
        added or removed meanwhile may or may not be."""
        token = ""
        while True:
            names, token = self.list_page(page_size, token)
            yield from names
            if not token:
                return

    def list(self, page_size: int = 0) -> List[str]:
        """Every child's name (see `iter_children`)."""
        return list(self.iter_children(page_size))

    def acl(self) -> Tuple["pb.Acl", "pb.Stat"]:
        """The node's ACL and stat (whose `acl_generation` names this ACL for
        a conditional `set_acl`)."""
        answer = self._cell._call("GetAcl", pb.GetAclRequest(handle=self._cell._handle_ref(self.id)))
        return answer.acl, answer.stat

    # --------------------------------------------------------------- writes

    def write(self, contents: bytes, if_generation: Optional[int] = None) -> "pb.Stat":
        """Writes the file's contents whole (at most 256 KiB); with
        `if_generation`, only if the content generation is still that one
        (compare-and-set; `GenerationMismatch` otherwise). The new stat."""
        request = pb.SetContentsRequest(header=self._cell._header(), handle=self.id, contents=bytes(contents))
        if if_generation is not None:
            request.if_content_generation = if_generation
        return self._cell._call("SetContents", request).stat

    def set_acl(self, acl: "pb.Acl", if_acl_generation: Optional[int] = None) -> "pb.Stat":
        """Replaces the node's ACL; with `if_acl_generation`, only if the ACL
        generation is still that one (`AclGenerationMismatch` otherwise)."""
        request = pb.SetAclRequest(header=self._cell._header(), handle=self.id, acl=acl)
        if if_acl_generation is not None:
            request.if_acl_generation = if_acl_generation
        return self._cell._call("SetAcl", request).stat

    def delete(self) -> None:
        """Deletes the node (a directory only when empty: `NotEmpty`); the
        handle becomes invalid."""
        self._cell._call("Delete", pb.DeleteRequest(header=self._cell._header(), handle=self.id))

    def set_sequencer(self, sequencer: "pb.Sequencer") -> None:
        """Makes the handle's later calls fail (`SequencerStale`) once
        `sequencer` is no longer current."""
        self._cell._call("SetSequencer", pb.SetSequencerRequest(header=self._cell._header(), handle=self.id, sequencer=sequencer))

    def close(self) -> None:
        """Closes the handle; a lock it holds is released and a wait ended."""
        self._cell._call("Close", pb.CloseRequest(header=self._cell._header(), handle=self.id))

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._cell.state == SessionState.EXPIRED:
            return
        try:
            self.close()
        except GaiosError:
            if exc_type is None:
                raise

    # ---------------------------------------------------------------- locks

    def acquire(self, mode: LockMode = LockMode.EXCLUSIVE, wait: float = 60.0, *,
                on_change: Optional[Callable[[LockState], None]] = None) -> "Lock":
        """Takes the node's lock, waiting up to `wait` seconds (at most 600)
        in arrival order; `Timeout` after that (the handle no longer
        waits). The wait survives failovers: a retry keeps its place."""
        wait_ms = max(1, _seconds_to_ms(wait, "wait"))
        request = pb.AcquireRequest(header=self._cell._header(), handle=self.id, mode=mode.value, wait_ms=wait_ms)
        lock = Lock(self, mode, on_change)
        lock._listen()
        try:
            answer = self._cell._call("Acquire", request, attempt_timeout=wait + self._cell.attempt_timeout)
        except BaseException:
            lock._stop()
            raise
        lock._granted(answer.sequencer)
        return lock

    def try_acquire(self, mode: LockMode = LockMode.EXCLUSIVE, *,
                    on_change: Optional[Callable[[LockState], None]] = None) -> "Lock":
        """Takes the node's lock if it is free now; `LockHeld` otherwise (its
        `reason` says `LOCK_HELD` or `LOCK_DELAY`)."""
        request = pb.AcquireRequest(header=self._cell._header(), handle=self.id, mode=mode.value)
        lock = Lock(self, mode, on_change)
        lock._listen()
        try:
            answer = self._cell._call("TryAcquire", request)
        except BaseException:
            lock._stop()
            raise
        lock._granted(answer.sequencer)
        return lock

    # --------------------------------------------------------------- events

    def events(self) -> "HandleEvents":
        """The events of this handle (and the session-wide ones), from now
        on, as an iterator. After a `MASTER_FAILOVER` the next read checks
        the handle (a call to the cell, which may take as long as any call)
        and yields `HANDLE_INVALID` if its node is gone (an event lost in
        the failover)."""
        return HandleEvents(self, self._cell._subscribe(self.id))


class HandleEvents:
    """A handle's events (see `Handle.events`); `get(timeout)` waits at most
    `timeout` seconds, iteration stops when the session is over."""

    def __init__(self, handle: Handle, stream: "EventStream") -> None:
        self._handle = handle
        self._stream = stream
        self._check_after_failover: Optional[int] = None

    def get(self, timeout: Optional[float] = None) -> Optional["Event"]:
        from .client import Event, EventKind

        if self._check_after_failover is not None:
            number, self._check_after_failover = self._check_after_failover, None
            try:
                self._handle.stat()
            except (errors.FailedPrecondition, errors.NotFound) as error:
                if not isinstance(error, errors.SessionExpired):
                    return Event(number, self._handle.id, self._handle.path, EventKind.HANDLE_INVALID)
            except GaiosError:
                pass
        event = self._stream.get(timeout)
        if event is not None and event.kind == EventKind.MASTER_FAILOVER:
            self._check_after_failover = event.number
        return event

    def __iter__(self) -> Iterator["Event"]:
        return self

    def __next__(self) -> "Event":
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "HandleEvents":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Lock:
    """A held lock: its sequencer, and where it stands (`state`).

    Chubby's rule: act on a lock only while `state` is `HELD`. It becomes
    `AT_RISK` as soon as the session is in jeopardy (the local lease ended
    a clock-drift margin before the master's, so this comes before the cell
    can give the lock to anyone else) or while the lock is being checked
    after lost events; `HELD` again when that passes; `LOST` when the
    session expired, the node was deleted or the cell says the sequencer is
    no longer current. `on_change` callbacks, `wait_at_risk`,
    `wait_recovered`, `wait_lost` and `ensure_held` report these.

    A context manager: the `with` block's end releases the lock (and closes
    the handle when `Cell.lock` opened it); a lock already lost is only
    forgotten.
    """

    def __init__(self, handle: Handle, mode: LockMode, on_change: Optional[Callable[[LockState], None]]) -> None:
        self.handle = handle
        self.mode = mode
        self.sequencer: "pb.Sequencer" = pb.Sequencer()
        self._cell = handle._cell
        self._callbacks: List[Callable[[LockState], None]] = [on_change] if on_change else []
        self._deleted = False
        self._unsure = False
        self._released = False
        self._held = False
        self._reported = LockState.HELD
        self._checking = False
        # Bumped by every failover or gap; a check answers only for the
        # epoch it began in.
        self._epoch = 0
        self._check_pending = False
        self._remove_state_callback: Optional[Callable[[], None]] = None
        self._owns_handle = False

    def __repr__(self) -> str:
        return f"Lock(path={self.handle.path!r}, mode={self.mode.name}, generation={self.sequencer.lock_generation}, state={self.state.name})"

    # ------------------------------------------------------------- state

    def _own(self) -> LockState:
        if self._deleted:
            return LockState.LOST
        return LockState.AT_RISK if self._unsure else LockState.HELD

    @property
    def state(self) -> LockState:
        """Where the lock stands now."""
        if self._released:
            return LockState.LOST
        return max(_of_session(self._cell.state), self._own())

    @property
    def lost(self) -> bool:
        """Whether the lock is gone for sure."""
        return self.state == LockState.LOST

    def on_change(self, callback: Callable[[LockState], None]) -> None:
        """Calls `callback(new_state)` on every change of `state`, in order,
        on the library's callback thread."""
        with self._cell._changed:
            self._callbacks.append(callback)

    def ensure_held(self) -> None:
        """Raises `LockAtRisk` or `LockLost` unless the lock is `HELD`: call
        it before each action the lock guards."""
        state = self.state
        if state == LockState.LOST:
            raise errors.LockLost(f"the lock of {self.handle.path} is lost")
        if state == LockState.AT_RISK:
            raise errors.LockAtRisk(f"the lock of {self.handle.path} is at risk (the session is in jeopardy)")

    def wait_at_risk(self, timeout: Optional[float] = None) -> bool:
        """Waits up to `timeout` seconds for the lock to be at risk or worse;
        whether it is."""
        with self._cell._changed:
            return self._cell._changed.wait_for(lambda: self.state != LockState.HELD, timeout)

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Waits up to `timeout` seconds for the lock to be lost; whether it
        is."""
        with self._cell._changed:
            return self._cell._changed.wait_for(lambda: self.state == LockState.LOST, timeout)

    def wait_recovered(self, timeout: Optional[float] = None) -> Optional[bool]:
        """Waits up to `timeout` seconds for a risk to pass either way: True
        when the lock is held again, False when it was lost, None if
        neither happened in time."""
        with self._cell._changed:
            settled = self._cell._changed.wait_for(lambda: self.state != LockState.AT_RISK, timeout)
            if not settled:
                return None
            return self.state == LockState.HELD

    def _refresh(self) -> None:
        """Reports a change of `state` to the callbacks and waiters."""
        with self._cell._changed:
            now = self.state
            if now == self._reported:
                return
            self._reported = now
            self._cell._queue_callbacks(self._callbacks, now)
        if now == LockState.LOST:
            self._stop()

    # ----------------------------------------------------- following it

    def _listen(self) -> None:
        """Starts watching events before the acquire is sent, so none about
        this lock is missed."""
        self._cell._add_listener(self._on_event)
        self._remove_state_callback = self._cell.on_state_change(lambda _: self._refresh())

    def _granted(self, sequencer: "pb.Sequencer") -> None:
        self.sequencer = sequencer
        with self._cell._changed:
            self._held = True
            pending, self._check_pending = self._check_pending, False
        self._refresh()
        if pending:
            # A failover or a gap came while the acquire was in flight.
            self._recheck()

    def _stop(self) -> None:
        self._cell._remove_listener(self._on_event)
        if self._remove_state_callback is not None:
            self._remove_state_callback()
            self._remove_state_callback = None

    def _on_event(self, event: "Event") -> None:
        from .client import EventKind

        if event.handle == self.handle.id and event.kind == EventKind.HANDLE_INVALID:
            self._deleted = True
            self._refresh()
        elif event.kind == EventKind.MISSED:
            with self._cell._changed:
                self._unsure = True
                self._epoch += 1
            self._refresh()
            self._recheck()
        elif event.kind == EventKind.MASTER_FAILOVER:
            with self._cell._changed:
                self._epoch += 1
            self._recheck()

    def _recheck(self) -> None:
        """Asks the cell, on a thread of its own, whether the sequencer is
        still current (after a failover or lost events), retrying until it
        answers or the lock is lost or released."""
        with self._cell._changed:
            if not self._held:
                self._check_pending = True
                return
            if self._checking:
                return  # the running check sees the new epoch and asks again
            self._checking = True

        def check() -> None:
            while self.state != LockState.LOST:
                with self._cell._changed:
                    epoch = self._epoch
                try:
                    current = self._cell.check_sequencer(self.sequencer)
                except GaiosError:
                    if self._cell.state == SessionState.EXPIRED:
                        break
                    threading.Event().wait(RECHECK_RETRY_S)
                    continue
                with self._cell._changed:
                    self._deleted |= not current
                    if self._epoch == epoch:
                        # Nothing new since the question: the answer stands.
                        self._unsure = False
                        self._checking = False
                        done = True
                    else:
                        done = False
                self._refresh()
                if done:
                    return
            with self._cell._changed:
                self._checking = False

        threading.Thread(target=check, name=f"gaios-lock-check-{self.handle.id}", daemon=True).start()

    # ---------------------------------------------------------- release

    def release(self) -> None:
        """Gives the lock up; the next waiters get it at once (no
        lock-delay)."""
        if self._released:
            return
        self._cell._call("Release", pb.ReleaseRequest(header=self._cell._header(), handle=self.handle.id))
        self._released = True
        self._stop()

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop()
        try:
            if self._cell.state == SessionState.EXPIRED:
                pass  # the cell released everything with the session
            elif self._owns_handle:
                # Closing the handle releases its lock in the same call (and
                # frees the handle even when the lock is already lost).
                self.handle.close()
            elif not self.lost:
                self.release()
        except GaiosError:
            # An exception of the `with` body is not replaced by this one.
            if exc_type is None:
                raise
        finally:
            self._released = True


if TYPE_CHECKING:
    from .client import Event
