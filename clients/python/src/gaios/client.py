"""Connecting, the session and its KeepAlives, events, and calls that
survive a master failover: the Python counterpart of the Rust library's
`client/src/client.rs`, with the same rules.

Threads: each `Cell` runs two daemon threads besides the caller's. The
KeepAlive thread keeps a `KeepAlive` stream open to the master (a request
every quarter of the lease, at most every 3 s), moves the local lease's end
with each answer and delivers the session's events. The lease clock thread
alone turns the lease into the session's state (safe, jeopardy, expired),
so a connection attempt that hangs never delays jeopardy. Callbacks given
to `on_state_change` and `Lock.on_change` run on one of these threads:
keep them short and never call the cell from them.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import os
import random
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from . import errors
from ._lease import SessionState, local_lease_ns, state_at
from ._routing import SILENT_PASSED_OVER_S, Next, Router
from .errors import GaiosError, NoMaster, SessionExpired
from ._pb import pb, pb_grpc

#: Session events kept per subscriber; beyond this the subscriber is told
#: with a `MISSED` event how many it lost.
EVENTS_BUFFERED_MAX = 1024
#: The most replica addresses a client keeps (given and learned).
ADDRESSES_MAX = 64
#: The longest address learned from the cell.
ADDRESS_BYTES_MAX = 256
#: The longest pause between two attempts of a call (as the Rust library:
#: a dead master's successor is reached within 50 ms of its election); each
#: pause is shortened by up to half at random, so clients do not retry in step.
BACKOFF_MAX_S = 0.05
#: The largest answer the client accepts (the cell's answers stay under
#: 16 MiB: `ReadDir` pages).
RESPONSE_BYTES_MAX = 32 << 20
#: How long one `Status` or `WhoAmI` question to a replica may take.
QUESTION_TIMEOUT_S = 1.0
#: State-change callbacks waiting for the dispatcher thread; past this the
#: oldest are dropped (a callback that blocks for ever only loses its own
#: reports).
CALLBACKS_QUEUED_MAX = 4096
#: The local development cell of `scripts/cell`.
LOCAL_CELL = "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203,127.0.0.1:7204,127.0.0.1:7205"


@dataclasses.dataclass(frozen=True)
class Tls:
    """TLS to the cell: the cell's CA to trust and this client's certificate
    and key, all PEM (etcdctl's `--cacert`, `--cert`, `--key`). A cell
    started with TLS refuses clients without a certificate its CA signed;
    the certificate's subject CN is the client's identity."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = dataclasses.field(repr=False)

    @classmethod
    def from_files(cls, ca: Union[str, os.PathLike], cert: Union[str, os.PathLike], key: Union[str, os.PathLike]) -> "Tls":
        """Reads the three PEM files."""
        import pathlib

        return cls(*(pathlib.Path(path).read_bytes() for path in (ca, cert, key)))

    @classmethod
    def from_env(cls) -> Optional["Tls"]:
        """The files named by `GAIOS_CACERT`, `GAIOS_CERT` and `GAIOS_KEY`
        (what `scripts/cell` prints and the `gaios` tool reads); None if
        none is set. Raises ValueError if only some are."""
        names = ("GAIOS_CACERT", "GAIOS_CERT", "GAIOS_KEY")
        values = [os.environ.get(name) for name in names]
        if not any(values):
            return None
        if not all(values):
            raise ValueError("set all of GAIOS_CACERT, GAIOS_CERT and GAIOS_KEY, or none")
        return cls.from_files(*values)  # type: ignore[arg-type]


def plausible_address(address: str) -> bool:
    """Whether `address` looks like `host:port` (a name or an IPv4 address,
    or `[IPv6]`, and a port 1-65535): what the client dials, and all it
    accepts from the wire as a member's or a master's address (never a gRPC
    target of another scheme, such as `unix:` or `dns:`)."""
    if not 0 < len(address) <= ADDRESS_BYTES_MAX:
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
        return False
    if host.startswith("["):
        return host.endswith("]") and all(c in "0123456789abcdefABCDEF:." for c in host[1:-1])
    return host.isascii() and all(c.isalnum() or c in "-." for c in host)


def cell_from_env() -> List[str]:
    """The cell's client addresses from `GAIOS_CELL` (comma-separated), or
    the local development cell's."""
    return [a.strip() for a in os.environ.get("GAIOS_CELL", LOCAL_CELL).split(",") if a.strip()]


class EventKind(enum.IntEnum):
    """What happened, as delivered to event subscribers. The values are the
    bits of `Cell.open(event_mask=...)`: `EventKind.CHILD_ADDED |
    EventKind.CHILD_REMOVED` asks for both."""

    CONTENTS_MODIFIED = 1
    CHILD_ADDED = 2
    CHILD_REMOVED = 4
    CHILD_MODIFIED = 8
    LOCK_ACQUIRED = 16
    CONFLICTING_LOCK_REQUEST = 32
    HANDLE_INVALID = 64
    MASTER_FAILOVER = 128
    #: Events were lost (the numbers jumped, or a subscriber fell more than
    #: `EVENTS_BUFFERED_MAX` behind); re-read what you cache. `count` says
    #: how many.
    MISSED = 0


#: Every event kind a handle can ask for (`Cell.open(event_mask=...)`).
EVENTS_ALL = 0xFF


@dataclasses.dataclass(frozen=True)
class Event:
    """One event of the session. `number` is its number in the session
    (for `MISSED`, the first after the gap, or 0 when a slow subscriber
    dropped events); `handle` is 0 for session-wide events; `count` is how
    many were missed (`MISSED` only)."""

    number: int
    handle: int
    path: str
    kind: EventKind
    count: int = 0


class EventStream:
    """A subscriber's events, oldest first, as an iterator: `next()` blocks
    until an event comes and stops when the session is over or the stream
    is closed; `get(timeout)` waits at most `timeout` seconds. At most
    `EVENTS_BUFFERED_MAX` wait: events that come while the subscriber is
    that far behind are dropped, and one `MISSED` event (number 0) with
    their count takes their place in the order."""

    def __init__(self, cell: "Cell", handle: Optional[int]) -> None:
        self._cell = cell
        self._handle = handle
        self._queue: Deque[Event] = collections.deque()
        self._closed = False

    def _offer(self, event: Event) -> None:
        """Called by the delivering thread with the cell's lock held."""
        if self._handle is not None and event.handle not in (self._handle, 0):
            return
        if len(self._queue) < EVENTS_BUFFERED_MAX:
            self._queue.append(event)
            return
        # Full: the newest queued entry becomes (or already is) the marker
        # of the dropped events, so the order stays true.
        last = self._queue.pop()
        if last.kind == EventKind.MISSED and last.number == 0:
            self._queue.append(dataclasses.replace(last, count=last.count + 1))
        else:
            self._queue.append(Event(0, self._handle or 0, "", EventKind.MISSED, 2))

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to `timeout` seconds (None: until one
        comes); None if none came, the session is over or the stream is
        closed."""
        with self._cell._changed:
            ready = lambda: self._queue or self._closed or self._cell._state == SessionState.EXPIRED  # noqa: E731
            self._cell._changed.wait_for(ready, timeout)
            if self._queue:
                return self._queue.popleft()
            return None

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        """Stops the stream: no more events are kept for it."""
        with self._cell._changed:
            self._closed = True
            self._cell._streams.discard(self)
            self._cell._changed.notify_all()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Cell:
    """A connection to a cell with one session, kept alive in the background
    until `close()` (or the end of a `with` block).

    Calls go to the master; the library finds it from any replica, follows
    `NOT_MASTER` redirects, retries a master that is not ready yet, and
    moves on after a failover. Every attempt has a timeout, so a hung
    master is noticed; a call keeps retrying until `call_deadline`.
    Mutating calls carry a request number that every retry keeps, so the
    cell applies each at most once.
    """

    def __init__(self, addresses: Sequence[str], tls: Optional[Tls], *, grace_period: float, attempt_timeout: float,
                 call_deadline: float, client_name: str, learn_members: bool) -> None:
        self._addresses: List[str] = list(addresses)[:ADDRESSES_MAX]
        self._tls = tls
        self.grace_period = grace_period
        self.attempt_timeout = attempt_timeout
        self.call_deadline = call_deadline
        self.client_name = client_name
        self.learn_members = learn_members
        self._lock = threading.Lock()  # guards the routing fields below
        self._channels: Dict[str, Tuple[grpc.Channel, Any]] = {}
        self._master: Optional[str] = None
        self._next_address = 0
        self._router = Router()
        self._requests = itertools.count(1)
        self.session_id = 0
        self.session_secret = b""
        # The session's state, its lease, subscribers: under `_changed`.
        self._changed = threading.Condition()
        self._state = SessionState.SAFE
        self._lease_end_ns = 0
        self._grace_ns: Optional[int] = None if grace_period is None else int(grace_period * 1e9)
        # Callbacks to run, in the order of the changes they report, on the
        # dispatcher thread (never on the threads that keep the session).
        self._callbacks_due: Deque[Tuple[Callable[[Any], None], Any]] = collections.deque(maxlen=CALLBACKS_QUEUED_MAX)
        self._state_callbacks: List[Callable[[SessionState], None]] = []
        self._event_listeners: List[Callable[[Event], None]] = []
        self._streams: "set[EventStream]" = set()
        self._last_event = 0
        self._closing = False
        self._keepalive_call: Optional[Any] = None
        self._threads: List[threading.Thread] = []

    # ----------------------------------------------------------------- setup

    @classmethod
    def connect(cls, addresses: Union[str, Sequence[str], None] = None, tls: Optional[Tls] = None, *,
                grace_period: float = 45.0, attempt_timeout: float = 5.0, call_deadline: float = 45.0,
                client_name: str = "gaios-python", learn_members: bool = True) -> "Cell":
        """Connects to the cell at `addresses` (`host:port` of any replicas,
        a list or a comma-separated string; default `GAIOS_CELL` or the
        local cell), finds the master and starts a session.

        `grace_period`: after the local lease runs out unanswered, how long
        the session is in jeopardy before the library declares it expired
        (Chubby's 45 s). `attempt_timeout`: how long one attempt of a call
        may take before the replica is taken as hung. `call_deadline`: how
        long a call keeps retrying through elections and failovers.
        `learn_members`: learn the other replicas' addresses from the cell
        (turn off behind a proxy or NAT). All times in seconds.
        """
        if addresses is None:
            addresses = cell_from_env()
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise errors.BadAddress("no cell address given")
        for address in addresses:
            if not plausible_address(address):
                raise errors.BadAddress(f"bad cell address {address!r}: want host:port")
        cell = cls(addresses, tls, grace_period=grace_period, attempt_timeout=attempt_timeout,
                   call_deadline=call_deadline, client_name=client_name, learn_members=learn_members)
        sent = time.monotonic_ns()
        created = cell._call("CreateSession", pb.CreateSessionRequest(client_name=client_name))
        cell.session_id = created.session_id
        cell.session_secret = created.session_secret
        cell._lease_end_ns = sent + local_lease_ns(created.lease_ms)
        cell._learn_members()
        lease_s = min(max(created.lease_ms, 1), 600_000) / 1000.0
        threads = ((cell._clock_loop, "gaios-lease-clock"), (lambda: cell._keepalive_loop(lease_s), "gaios-keepalive"),
                   (cell._dispatch_loop, "gaios-callbacks"))
        for target, name in threads:
            thread = threading.Thread(target=target, name=f"{name}-{cell.session_id}", daemon=True)
            thread.start()
            cell._threads.append(thread)
        return cell

    def __enter__(self) -> "Cell":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except GaiosError:
            # The session ends by itself within a lease; an exception of the
            # `with` body is not replaced by this one.
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        return f"Cell(session_id={self.session_id}, state={self._state.value})"

    # --------------------------------------------------------------- session

    @property
    def state(self) -> SessionState:
        """The session's state now: the worse of what the lease clock thread
        last decided and what the local lease says at this instant, so a
        late clock thread (a slow machine, a GC pause) never makes a lease
        that has ended look safe."""
        decided = self._state
        if decided == SessionState.EXPIRED or self._lease_end_ns == 0:
            return decided
        now = state_at(time.monotonic_ns(), self._lease_end_ns, self._grace_ns)
        order = (SessionState.SAFE, SessionState.JEOPARDY, SessionState.EXPIRED)
        return max(decided, now, key=order.index)

    def on_state_change(self, callback: Callable[[SessionState], None]) -> Callable[[], None]:
        """Calls `callback(new_state)` on every change of the session's
        state, in order, on the library's callback thread (never on the
        threads that keep the session alive, so a slow callback delays only
        other callbacks). Returns a function that removes the callback."""
        with self._changed:
            self._state_callbacks.append(callback)

        def remove() -> None:
            with self._changed:
                if callback in self._state_callbacks:
                    self._state_callbacks.remove(callback)
        return remove

    def wait_for_state(self, wanted: SessionState, timeout: Optional[float] = None) -> bool:
        """Waits up to `timeout` seconds for the session to be in `wanted`;
        whether it is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state == wanted, timeout)

    def events(self) -> EventStream:
        """Every event of the session (all handles), from now on."""
        return self._subscribe(None)

    def close(self) -> None:
        """Ends the session: its locks are released (without lock-delay),
        its handles closed and its ephemeral nodes deleted. A session that
        has already expired is only forgotten."""
        with self._changed:
            if self._closing:
                return
            self._closing = True
            call = self._keepalive_call
        if call is not None:
            call.cancel()
        try:
            if self.session_id and self._state != SessionState.EXPIRED:
                self._call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id, session_secret=self.session_secret))
        except SessionExpired:
            pass
        finally:
            self._set_state(SessionState.EXPIRED)
            with self._lock:
                channels = list(self._channels.values())
                self._channels.clear()
                self._master = None
            for channel, _ in channels:
                channel.close()

    # ----------------------------------------------------------------- nodes

    def open(self, path: str, *, create: bool = False, exclusive: bool = False, directory: bool = False,
             ephemeral: bool = False, contents: bytes = b"", acl: Optional["pb.Acl"] = None,
             event_mask: int = EVENTS_ALL, lock_delay: float = 15.0) -> "Handle":
        """Opens the node at `path` and returns a handle bound to its current
        instance. `create` makes it if missing (a file, or a directory with
        `directory`; `ephemeral` deletes it when the session ends;
        `contents` and `acl` for a new node); `exclusive` fails with
        `AlreadyExists` if it exists. `event_mask` chooses the events the
        handle gets (`EventKind` bits; all by default); `lock_delay` (at
        most 60 s) keeps others from its lock that long after this session
        expires holding it."""
        from .handle import Handle

        return Handle._open(self, path, create=create or exclusive, exclusive=exclusive, directory=directory,
                            ephemeral=ephemeral, contents=contents, acl=acl, event_mask=event_mask,
                            lock_delay=lock_delay)

    def lock(self, path: str, mode: "Optional[LockMode]" = None, wait: float = 60.0, *, create: bool = True,
             lock_delay: float = 15.0, on_change: Optional[Callable[["LockState"], None]] = None) -> "Lock":
        """Opens `path` (created if missing, with `create`) and takes its lock
        (exclusive by default), waiting up to `wait` seconds (`Timeout`
        after that). Returns the `Lock`, a context manager that releases the
        lock and closes the handle on exit:

            with cell.lock("/jobs/nightly") as lock:
                run(lock.sequencer)
        """
        from .handle import LockMode

        handle = self.open(path, create=create, lock_delay=lock_delay, event_mask=int(EventKind.HANDLE_INVALID.value))
        try:
            lock = handle.acquire(mode or LockMode.EXCLUSIVE, wait, on_change=on_change)
        except BaseException:
            try:
                handle.close()
            except GaiosError:
                pass
            raise
        lock._owns_handle = True
        return lock

    def check_sequencer(self, sequencer: "pb.Sequencer") -> bool:
        """Whether `sequencer` is current in the cell: the node is the same
        instance and the holding it names still holds the lock."""
        return self._call("CheckSequencer", pb.CheckSequencerRequest(sequencer=sequencer)).valid

    def status(self) -> "List[pb.StatusResponse]":
        """Every replica's view of the cell (those that answer within a
        second), in the order of the addresses."""
        out = []
        for address in self.addresses():
            try:
                out.append(self._stub(address).Status(pb.StatusRequest(), timeout=QUESTION_TIMEOUT_S))
            except grpc.RpcError:
                pass
        return out

    def who_am_i(self) -> "pb.WhoAmIResponse":
        """Who the cell takes this client for: its certificate's identity
        and the groups the answering replica puts it in."""
        last: GaiosError = NoMaster("no replica answered")
        for address in self.addresses():
            try:
                return self._stub(address).WhoAmI(pb.WhoAmIRequest(), timeout=QUESTION_TIMEOUT_S)
            except grpc.RpcError as error:
                if error.code() not in errors.RETRYABLE and error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    last = errors.from_rpc_error(error)
        raise last

    def addresses(self) -> List[str]:
        """The replicas' client addresses known now (given and learned)."""
        with self._lock:
            return list(self._addresses)

    # ------------------------------------------------------------ the calls

    def _header(self) -> "pb.RequestHeader":
        """The request header of a new mutating call; every retry of that
        call reuses it, so the cell applies it at most once."""
        return pb.RequestHeader(session_id=self.session_id, request_number=next(self._requests),
                                session_secret=self.session_secret)

    def _handle_ref(self, handle: int) -> "pb.HandleRef":
        return pb.HandleRef(session_id=self.session_id, handle=handle, session_secret=self.session_secret)

    def _channel_options(self) -> List[Tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", RESPONSE_BYTES_MAX),
            # A replica that comes back is tried again soon (gRPC's default
            # waits a second or more after a failed connection).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # The library retries itself, with the same request number.
            ("grpc.enable_retries", 0),
        ]

    def _stub(self, address: str) -> Any:
        """The stub of `address`, on a channel kept per address."""
        with self._lock:
            known = self._channels.get(address)
            if known is not None:
                return known[1]
            if len(self._channels) >= 2 * ADDRESSES_MAX:
                for _, (old, _) in list(self._channels.items()):
                    old.close()
                self._channels.clear()
            if self._tls is not None:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._tls.ca_pem,
                                                           private_key=self._tls.key_pem,
                                                           certificate_chain=self._tls.cert_pem)
                channel = grpc.secure_channel(address, credentials, options=self._channel_options())
            else:
                channel = grpc.insecure_channel(address, options=self._channel_options())
            stub = pb_grpc.CellStub(channel)
            self._channels[address] = (channel, stub)
            return stub

    def _current(self) -> Optional[Tuple[str, Any]]:
        """The replica believed to be master, or the next address to try."""
        with self._lock:
            if self._closing and self._state == SessionState.EXPIRED:
                return None
            address = self._master
            if address is None:
                if not self._addresses:
                    return None
                # The next address in turn, passing over one that just let
                # an attempt time out (unless it is the only one).
                now = time.monotonic()
                for _ in range(len(self._addresses)):
                    address = self._addresses[self._next_address % len(self._addresses)]
                    self._next_address += 1
                    if not self._router.passed_over(address, now):
                        break
                self._master = address
        return address, self._stub(address)

    def _forget(self, address: str, redirect: Optional[errors.Redirect]) -> Next:
        """`address` failed an attempt; the next goes to the master a
        redirect names, to the same replica if it is a master that cannot
        serve yet (for a while), or to the next address in turn."""
        with self._lock:
            where, to = self._router.next(address, redirect, time.monotonic())
            if where != Next.SAME and self._master == address:
                self._master = None
            if where == Next.TO:
                self._master = to
            return where

    def _silent(self, address: str, period: float = SILENT_PASSED_OVER_S) -> None:
        with self._lock:
            self._router.silent(address, time.monotonic(), period)

    def _served(self, address: str) -> None:
        with self._lock:
            self._router.served(address)

    def _call(self, method: str, request: Any, attempt_timeout: Optional[float] = None) -> Any:
        """Runs `method` with `request` against the master until it answers,
        following redirects and retrying through failovers with the same
        request (and so the same request number), each attempt bounded by
        `attempt_timeout` (default the cell's), until `call_deadline`."""
        attempt_timeout = attempt_timeout or self.attempt_timeout
        deadline = time.monotonic() + self.call_deadline
        backoff = 0.02
        last = "no replica answered"
        while True:
            if self.session_id and self._state == SessionState.EXPIRED:
                raise SessionExpired("the session has expired")
            current = self._current()
            if current is not None:
                address, stub = current
                started = time.monotonic()
                try:
                    answer = getattr(stub, method)(request, timeout=attempt_timeout)
                    self._served(address)
                    return answer
                except grpc.RpcError as error:
                    code = error.code()
                    if code in errors.RETRYABLE:
                        last = f"{address}: {error.details()}"
                        self._forget(address, errors.redirect(error))
                    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started >= attempt_timeout * 0.99:
                        # Our own attempt timeout, not the cell's answer.
                        last = f"{address} did not answer within {attempt_timeout} s"
                        self._silent(address)
                        self._forget(address, None)
                    else:
                        failure = errors.from_rpc_error(error)
                        if isinstance(failure, SessionExpired):
                            self._set_state(SessionState.EXPIRED)
                        raise failure from None
            if time.monotonic() >= deadline:
                raise NoMaster(last)
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _learn_members(self) -> None:
        """Learns the members' client addresses from the master's `Status`,
        so a client given one address still finds a new master when that
        replica is gone. At most `ADDRESSES_MAX` are kept; an address that
        does not look like `host:port` is ignored."""
        if not self.learn_members:
            return
        current = self._current()
        if current is None:
            return
        try:
            status = current[1].Status(pb.StatusRequest(), timeout=QUESTION_TIMEOUT_S)
        except grpc.RpcError:
            return
        with self._lock:
            for member in status.members:
                address = member.client_address
                if plausible_address(address) and len(self._addresses) < ADDRESSES_MAX and address not in self._addresses:
                    self._addresses.append(address)

    # ------------------------------------------------- state and the lease

    def _set_state(self, wanted: SessionState) -> None:
        """Moves the session to `wanted` (nothing leaves EXPIRED) and runs
        the callbacks outside the lock."""
        with self._changed:
            if self._state == SessionState.EXPIRED or self._state == wanted:
                return
            self._state = wanted
            for callback in self._state_callbacks:
                self._callbacks_due.append((callback, wanted))
            self._changed.notify_all()

    def _queue_callbacks(self, callbacks: List[Callable[[Any], None]], value: Any) -> None:
        """Queues `callback(value)` for each, in order (caller holds
        `_changed`)."""
        for callback in callbacks:
            self._callbacks_due.append((callback, value))
        self._changed.notify_all()

    def _dispatch_loop(self) -> None:
        """Runs the queued callbacks one at a time, in the order of the
        changes, until the session is over and nothing is left."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._callbacks_due or self._state == SessionState.EXPIRED)
                if not self._callbacks_due:
                    return
                callback, value = self._callbacks_due.popleft()
            try:
                callback(value)
            except Exception:  # a callback's failure is its own
                pass

    def _clock_loop(self) -> None:
        """The lease clock: wakes when the local lease ends (jeopardy), when
        the grace period ends (expired), and when an answer moves the
        lease's end (safe again). A process paused through both deadlines
        goes straight to the later state."""
        grace_ns = self._grace_ns
        while True:
            with self._changed:
                if self._state == SessionState.EXPIRED:
                    return
                now = time.monotonic_ns()
                wanted = state_at(now, self._lease_end_ns, grace_ns)
                if wanted == self._state:
                    if wanted == SessionState.SAFE:
                        wake = self._lease_end_ns
                    else:
                        wake = None if grace_ns is None else self._lease_end_ns + grace_ns
                    timeout = None if wake is None else max(0.0, (wake - now) / 1e9)
                    self._changed.wait(timeout)
                    continue
            self._set_state(wanted)

    def _extend_lease(self, end_ns: int) -> None:
        with self._changed:
            if end_ns > self._lease_end_ns:
                self._lease_end_ns = end_ns
                self._changed.notify_all()

    # ------------------------------------------------------------ KeepAlive

    def _keepalive_loop(self, lease_s: float) -> None:
        """Keeps a KeepAlive stream open to the master until the session is
        over; each answer moves the local lease's end, counted from when
        its request was sent."""
        interval = min(max(lease_s / 4, 0.1), 3.0)
        # An answer later than this means the replica hung.
        answer_within = max(lease_s / 2, 0.5)
        backoff = 0.02
        while not self._closing and self._state != SessionState.EXPIRED:
            current = self._current()
            if current is None:
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            address, stub = current
            outcome = self._one_stream(address, stub, interval, answer_within, lease_s / 4)
            if outcome == "ended":
                return
            if outcome == "answered":
                backoff = 0.02
            if outcome != "redirected":
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _one_stream(self, address: str, stub: Any, interval: float, answer_within: float, pass_over: float) -> str:
        """One KeepAlive stream to `address`, until it fails or hangs.
        Returns "ended" (the session is over), "redirected" (go at once to
        the master named), "answered" (it served for a while) or "failed"."""
        outgoing: Deque[Optional[Any]] = collections.deque()
        sent: Deque[int] = collections.deque()  # send times of unanswered requests
        wake = threading.Condition()
        done = threading.Event()

        def request() -> Any:
            return pb.KeepAliveRequest(session_id=self.session_id, acknowledged_event=self._last_event,
                                       session_secret=self.session_secret)

        def send() -> None:
            # The send time is read before the request can leave: the local
            # lease counts from a moment no later than the master's receipt.
            with wake:
                if len(outgoing) < 4:
                    sent.append(time.monotonic_ns())
                    outgoing.append(request())
                    wake.notify_all()

        def requests() -> Iterator[Any]:
            while True:
                with wake:
                    wake.wait_for(lambda: outgoing or done.is_set())
                    if done.is_set():
                        return
                    item = outgoing.popleft()
                yield item

        send()
        call = stub.KeepAlive(requests())
        with self._changed:
            self._keepalive_call = call
            if self._closing:
                call.cancel()
        hung = threading.Event()

        def ticker() -> None:
            while not done.wait(interval):
                with wake:
                    oldest = sent[0] if sent else None
                if oldest is not None and time.monotonic_ns() - oldest > answer_within * 1e9:
                    hung.set()
                    call.cancel()  # the master hung; find another
                    return
                send()

        ticking = threading.Thread(target=ticker, name=f"gaios-keepalive-ticker-{self.session_id}", daemon=True)
        ticking.start()
        answered = False
        try:
            for answer in call:
                if not answered:
                    answered = True
                    # A new stream, perhaps on a new master: the members may
                    # have changed since the client last asked.
                    threading.Thread(target=self._learn_members, daemon=True).start()
                self._served(address)
                # Events first: a lock whose node this answer says was
                # deleted must be lost before the lease makes it safe again.
                for event in answer.events:
                    self._deliver(event)
                if answer.lease_ms > 0:
                    with wake:
                        at = sent.popleft() if sent else None
                    if at is not None:
                        self._extend_lease(at + local_lease_ns(answer.lease_ms))
            self._forget(address, None)
            return "answered" if answered else "failed"
        except grpc.RpcError as error:
            if ends_session(error):
                self._set_state(SessionState.EXPIRED)
                return "ended"
            if self._closing:
                return "ended"
            if hung.is_set():
                # Passed over for a quarter of the lease at most, so that a
                # master that was only slow is back before the lease runs out.
                self._silent(address, pass_over)
                self._forget(address, None)
                return "failed"
            where = self._forget(address, errors.redirect(error))
            if where == Next.TO:
                return "redirected"
            return "answered" if answered else "failed"
        finally:
            done.set()
            with wake:
                wake.notify_all()
            with self._changed:
                if self._keepalive_call is call:
                    self._keepalive_call = None

    # --------------------------------------------------------------- events

    def _subscribe(self, handle: Optional[int]) -> EventStream:
        stream = EventStream(self, handle)
        with self._changed:
            self._streams.add(stream)
        return stream

    def _add_listener(self, listener: Callable[[Event], None]) -> None:
        with self._changed:
            self._event_listeners.append(listener)

    def _remove_listener(self, listener: Callable[[Event], None]) -> None:
        with self._changed:
            if listener in self._event_listeners:
                self._event_listeners.remove(listener)

    def _deliver(self, event: Any) -> None:
        """Hands one event to the subscribers, once, noting gaps."""
        number = event.number
        if number <= self._last_event:
            return  # a repeat after a reconnect
        out: List[Event] = []
        if self._last_event != 0 and number > self._last_event + 1:
            out.append(Event(number, 0, "", EventKind.MISSED, number - self._last_event - 1))
        self._last_event = number
        try:
            kind = EventKind(event.kind)
        except ValueError:
            kind = None
        if kind is not None and kind != EventKind.MISSED:
            out.append(Event(number, event.handle, event.path, kind))
        if not out:
            return
        with self._changed:
            for item in out:
                for stream in self._streams:
                    stream._offer(item)
            listeners = list(self._event_listeners)
            self._changed.notify_all()
        for item in out:
            for listener in listeners:
                try:
                    listener(item)
                except Exception:
                    pass


def ends_session(error: grpc.RpcError) -> bool:
    """Whether a status says the session is over."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    info = errors.error_info(error)
    return info is not None and info.reason == "SESSION_ENDED"


from .handle import Handle, Lock, LockMode, LockState  # noqa: E402  (the handle module needs Cell's names)
