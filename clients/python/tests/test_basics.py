"""Files, directories, listing in pages, compare-and-set, events, typed
errors, redirects and at-most-once retries, against a real five-process
cell (and some rules of the library without one)."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import gaios
from gaios import pb
from gaios._lease import local_lease_ns, state_at, SessionState
from gaios._routing import Next, Router
from gaios.errors import Redirect


def test_a_client_given_only_a_follower_follows_the_redirect_to_the_master(shared_cell, connect):
    master = shared_cell.master()
    follower = next(i for i in shared_cell.ids if i != master)
    cell = gaios.Cell.connect([shared_cell.client[follower]], learn_members=False, attempt_timeout=1.0, call_deadline=20.0)
    try:
        handle = cell.open("/redirected", create=True)
        handle.write(b"via the master")
        assert cell._master == shared_cell.client[master], "the calls went to the master the follower named"
        assert cell.addresses() == [shared_cell.client[follower]], "nothing learned with learn_members=False"
    finally:
        cell.close()
    learning = connect(shared_cell)
    assert sorted(learning.addresses()) == sorted(shared_cell.addresses), "the members were learned"


def test_files_are_read_written_compared_and_set_and_deleted(shared_cell, connect):
    cell = connect(shared_cell)
    config = cell.open("/config-basic", create=True, contents=b"v1")
    assert config.created
    contents, stat = config.read()
    assert contents == b"v1" and stat.content_generation == 1 and stat.kind == pb.NODE_KIND_FILE
    stat = config.write(b"v2", if_generation=1)
    assert stat.content_generation == 2 and stat.contents_bytes == 2
    with pytest.raises(gaios.GenerationMismatch) as mismatch:
        config.write(b"lost update", if_generation=1)
    assert mismatch.value.reason == "GENERATION_MISMATCH"
    assert isinstance(mismatch.value, gaios.FailedPrecondition)
    assert config.read()[0] == b"v2", "a failed compare-and-set wrote nothing"

    with pytest.raises(gaios.AlreadyExists):
        cell.open("/config-basic", exclusive=True)
    with pytest.raises(gaios.NotFound):
        cell.open("/no/such/node")
    with pytest.raises(gaios.InvalidArgument):
        cell.open("relative/path", create=True)

    directory = cell.open("/dir-basic", create=True, directory=True)
    child = cell.open("/dir-basic/child", create=True)
    with pytest.raises(gaios.NotEmpty):
        directory.delete()
    other = cell.open("/dir-basic/child")
    child.delete()
    with pytest.raises(gaios.HandleInvalid):
        other.read()
    directory.delete()
    assert cell.open("/", event_mask=0).list().count("dir-basic") == 0


def test_a_directory_is_listed_in_pages_of_the_size_asked_for(shared_cell, connect):
    cell = connect(shared_cell)
    cell.open("/pages", create=True, directory=True)
    names = [f"c{i:04}" for i in range(250)]
    errors: List[BaseException] = []

    def create(part: List[str]) -> None:
        try:
            for name in part:
                cell.open(f"/pages/{name}", create=True, event_mask=0).close()
        except BaseException as error:  # reported below
            errors.append(error)

    workers = [threading.Thread(target=create, args=(names[k::8],)) for k in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    directory = cell.open("/pages", event_mask=0)
    pages, token = [], ""
    while True:
        page, token = directory.list_page(100, token)
        pages.append(page)
        if not token:
            break
    assert [len(page) for page in pages] == [100, 100, 50]
    assert sum(pages, []) == names
    assert directory.list() == names
    assert directory.stat().children == 250
    with pytest.raises(gaios.InvalidArgument):
        directory.list_page(10_001)


def test_events_arrive_in_order_numbered_without_gaps(shared_cell, connect):
    watcher = connect(shared_cell)
    writer = connect(shared_cell)
    watched = watcher.open("/watched", create=True, event_mask=int(gaios.EventKind.CONTENTS_MODIFIED.value))
    events = watched.events()
    handle = writer.open("/watched")
    for i in range(20):
        handle.write(b"%d" % i)
    seen = []
    until = time.monotonic() + 15
    while len(seen) < 20 and time.monotonic() < until:
        event = events.get(timeout=1)
        if event is not None:
            seen.append(event)
    assert [e.kind for e in seen] == [gaios.EventKind.CONTENTS_MODIFIED] * 20, seen
    numbers = [e.number for e in seen]
    assert numbers == list(range(numbers[0], numbers[0] + 20)), f"numbers with a gap: {numbers}"
    assert all(e.handle == watched.id and e.path == "/watched" for e in seen)
    events.close()


def test_a_jump_in_the_event_numbers_is_reported_as_missed_events():
    cell = gaios.Cell(["127.0.0.1:1"], None, grace_period=1, attempt_timeout=1, call_deadline=1,
                      client_name="t", learn_members=False)
    stream = cell.events()
    for number in [1, 2, 2, 5, 6]:
        cell._deliver(pb.Event(number=number, kind=pb.EVENT_KIND_CHILD_ADDED, handle=3, path="/d/x"))
    got = [stream.get(timeout=0) for _ in range(5)]
    assert [(e.number, e.kind, e.count) for e in got] == [
        (1, gaios.EventKind.CHILD_ADDED, 0),
        (2, gaios.EventKind.CHILD_ADDED, 0),
        (5, gaios.EventKind.MISSED, 2),
        (5, gaios.EventKind.CHILD_ADDED, 0),
        (6, gaios.EventKind.CHILD_ADDED, 0),
    ], "a repeat is dropped, a gap of two is reported"
    # A subscriber that falls more than the buffer behind is told how much
    # it lost, where it lost it: the newest queued entry becomes the marker.
    for number in range(7, 7 + gaios.client.EVENTS_BUFFERED_MAX + 10):
        cell._deliver(pb.Event(number=number, kind=pb.EVENT_KIND_CHILD_ADDED, handle=3, path="/d/x"))
    kept = [stream.get(timeout=0) for _ in range(gaios.client.EVENTS_BUFFERED_MAX)]
    assert [e.number for e in kept[:-1]] == list(range(7, 7 + gaios.client.EVENTS_BUFFERED_MAX - 1))
    assert (kept[-1].kind, kept[-1].count) == (gaios.EventKind.MISSED, 11), "one queued and ten new ones dropped"
    cell._deliver(pb.Event(number=2000, kind=pb.EVENT_KIND_CHILD_ADDED, handle=3, path="/d/x"))
    after = [stream.get(timeout=0), stream.get(timeout=0)]
    assert [(e.kind, e.count) for e in after] == [(gaios.EventKind.MISSED, 2000 - 1040 - 1), (gaios.EventKind.CHILD_ADDED, 0)]
    assert stream.get(timeout=0) is None


class FakeRpcError(grpc.RpcError, grpc.Call):
    """A failed call as grpcio reports one, with the cell's ErrorInfo in
    the standard status details."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: Any = None, domain: str = "gaios"):
        self._code, self._message = code, message
        details = []
        if reason:
            info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})
            packed = any_pb2.Any()
            packed.Pack(info)
            details.append(packed)
        status = status_pb2.Status(code=code.value[0], message=message, details=details)
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),) if details else ()

    def code(self): return self._code
    def details(self): return self._message
    def trailing_metadata(self): return self._trailers
    def initial_metadata(self): return ()
    def is_active(self): return False
    def time_remaining(self): return None
    def cancel(self): return False
    def add_callback(self, callback): return False


@pytest.mark.parametrize("code,reason,expected", [
    (grpc.StatusCode.FAILED_PRECONDITION, "LOCK_HELD", gaios.LockHeld),
    (grpc.StatusCode.FAILED_PRECONDITION, "LOCK_DELAY", gaios.LockHeld),
    (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_ENDED", gaios.SessionExpired),
    (grpc.StatusCode.FAILED_PRECONDITION, "HANDLE_INVALID", gaios.HandleInvalid),
    (grpc.StatusCode.FAILED_PRECONDITION, "SEQUENCER_STALE", gaios.SequencerStale),
    (grpc.StatusCode.FAILED_PRECONDITION, "GENERATION_MISMATCH", gaios.GenerationMismatch),
    (grpc.StatusCode.FAILED_PRECONDITION, "ACL_GENERATION_MISMATCH", gaios.AclGenerationMismatch),
    (grpc.StatusCode.FAILED_PRECONDITION, "NOT_EMPTY", gaios.NotEmpty),
    (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NUMBER_TOO_OLD", gaios.RequestNumberTooOld),
    (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NUMBER_REUSED", gaios.RequestNumberReused),
    (grpc.StatusCode.FAILED_PRECONDITION, "CHANGE_IN_FLIGHT", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_DIRECTORY", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "IS_A_DIRECTORY", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "LOCK_NOT_HELD", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "LOCK_ALREADY_REQUESTED", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "WAIT_ENDED", gaios.FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "", gaios.FailedPrecondition),
    (grpc.StatusCode.PERMISSION_DENIED, "ACL_DENIED", gaios.AclDenied),
    (grpc.StatusCode.PERMISSION_DENIED, "SESSION_SECRET_MISMATCH", gaios.PermissionDenied),
    (grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_ADMIN", gaios.PermissionDenied),
    (grpc.StatusCode.NOT_FOUND, "", gaios.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, "", gaios.AlreadyExists),
    (grpc.StatusCode.INVALID_ARGUMENT, "ID_USED_BEFORE", gaios.InvalidArgument),
    (grpc.StatusCode.UNAUTHENTICATED, "", gaios.Unauthenticated),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "", gaios.ResourceExhausted),
    (grpc.StatusCode.OUT_OF_RANGE, "", gaios.ResourceExhausted),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "", gaios.Timeout),
    (grpc.StatusCode.INTERNAL, "", gaios.Unexpected),
])
def test_statuses_become_typed_exceptions_by_code_and_reason_never_by_message(code, reason, expected):
    error = gaios.errors.from_rpc_error(FakeRpcError(code, "/has ended is locked NOT_EMPTY", reason))
    assert type(error) is expected
    assert error.code == code and error.reason == reason


def test_a_reason_of_another_domain_is_no_reason():
    error = gaios.errors.from_rpc_error(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "x", "SESSION_ENDED", domain="example.com"))
    assert type(error) is gaios.FailedPrecondition


def test_a_redirect_is_read_from_the_error_info_and_checked():
    named = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "not master", "NOT_MASTER", {"master_id": "2", "master_address": "127.0.0.1:7202"})
    assert gaios.errors.redirect(named) == Redirect("NOT_MASTER", 2, "127.0.0.1:7202")
    assert gaios.errors.redirect(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no master is known")) is None
    garbage = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x", "NOT_MASTER", {"master_id": "two", "master_address": "a:1"})
    assert gaios.errors.redirect(garbage) is None
    for address in ["nowhere", "unix:/tmp/socket", "dns:///cell:7201", "host:0", "host:65536", "host:+80", "h st:80", ":80", "h\u00e9:80"]:
        bad = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x", "NOT_MASTER", {"master_id": "2", "master_address": address})
        assert gaios.errors.redirect(bad) is None, address
    for master_id in ["-1", "0", "\u00b2", "99999999999999999999999"]:
        bad = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x", "NOT_MASTER", {"master_id": master_id, "master_address": "a:1"})
        assert gaios.errors.redirect(bad) is None, master_id
    assert gaios.client.plausible_address("[::1]:7201") and gaios.client.plausible_address("replica-3.cell:7201")
    with pytest.raises(gaios.BadAddress):
        gaios.Cell.connect(["unix:/tmp/cell"])


def test_a_master_not_ready_is_retried_for_a_while_then_left():
    router = Router()
    not_ready = Redirect("MASTER_NOT_READY", 3, "m:1")
    assert router.next("m:1", not_ready, 0.0) == (Next.SAME, "m:1")
    assert router.next("m:1", not_ready, 1.5) == (Next.SAME, "m:1")
    assert router.next("m:1", not_ready, 2.0) == (Next.ELSEWHERE, "")
    assert router.next("f:2", Redirect("NOT_MASTER", 3, "m:1"), 2.1) == (Next.TO, "m:1")
    assert router.next("m:1", not_ready, 2.2) == (Next.ELSEWHERE, ""), "no fresh patience when sent back"
    router.served("m:1")
    assert router.next("m:1", not_ready, 3.0) == (Next.SAME, "m:1")


def test_a_replica_that_let_an_attempt_time_out_is_passed_over_for_a_while():
    router = Router()
    router.silent("m:1", 0.0)
    assert router.passed_over("m:1", 0.5)
    assert not router.passed_over("f:2", 0.5), "only the silent one"
    not_master = Redirect("NOT_MASTER", 3, "m:1")
    assert router.next("f:2", not_master, 0.6) == (Next.ELSEWHERE, ""), "a follower still names the hung master"
    assert not router.passed_over("m:1", 1.0)
    assert router.next("f:2", not_master, 1.0) == (Next.TO, "m:1"), "later it is followed again"
    router.silent("m:1", 1.5, 0.3)
    assert router.passed_over("m:1", 1.7) and not router.passed_over("m:1", 1.8), "a shorter period ends sooner"
    router.silent("m:1", 2.0)
    router.served("m:1")
    assert router.next("f:2", not_master, 2.1) == (Next.TO, "m:1"), "an answer from it ends the passing over"


def test_the_local_lease_ends_before_the_masters_at_the_drift_bound():
    # lease × 0.98 / 1.02, rounded down, as the Rust library counts it.
    assert local_lease_ns(12_000) == 11_529_411_764
    assert local_lease_ns(2_000) == 1_921_568_627
    assert local_lease_ns(2**64 - 1) == local_lease_ns(600_000), "a lease from the wire is cut"
    assert state_at(99, 100, 45) == SessionState.SAFE
    assert state_at(100, 100, 45) == SessionState.JEOPARDY
    assert state_at(145, 100, 45) == SessionState.EXPIRED


class FlakyStub:
    """A stub whose first attempts fail as a failover does; records every
    request it is given."""

    def __init__(self, failures: List[grpc.RpcError]):
        self.failures = failures
        self.requests: List[Any] = []

    def SetContents(self, request, timeout=None):
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return pb.SetContentsResponse(stat=pb.Stat(content_generation=7))


def test_a_retried_call_keeps_its_request_number():
    cell = gaios.Cell(["a:1", "b:2"], None, grace_period=1, attempt_timeout=1, call_deadline=10,
                      client_name="t", learn_members=False)
    stub = FlakyStub([
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset"),
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "not master", "NOT_MASTER", {"master_id": "3", "master_address": "c:3"}),
    ])
    addresses = []
    stub.SetContents = (lambda original: lambda request, timeout=None: (addresses.append(cell._master), original(request, timeout))[1])(stub.SetContents)
    cell._stub = lambda address: stub  # type: ignore[method-assign]
    cell.session_id, cell.session_secret = 9, b"secret"
    handle = gaios.Handle(cell, 4, "/f", False, pb.Stat())
    handle.write(b"x")
    handle.write(b"y")
    numbers = [r.header.request_number for r in stub.requests]
    assert numbers == [1, 1, 1, 2], "three attempts of the first write with one number, then a new one"
    assert addresses == ["a:1", "b:2", "c:3", "c:3"], "on to the next replica, then where the redirect said"


def test_a_retry_with_the_same_request_number_is_answered_without_applying_again(shared_cell, connect):
    cell = connect(shared_cell)
    handle = cell.open("/once", create=True)
    request = pb.SetContentsRequest(header=cell._header(), handle=handle.id, contents=b"once")
    first = cell._call("SetContents", request)
    again = cell._call("SetContents", request)
    assert first.stat.content_generation == again.stat.content_generation == 2
    assert handle.stat().content_generation == 2, "the retry was not applied again"
    reused = pb.SetContentsRequest(header=request.header, handle=handle.id, contents=b"another call")
    with pytest.raises(gaios.RequestNumberReused):
        cell._call("SetContents", reused)


def test_a_tls_cell_knows_the_client_by_its_certificate_and_enforces_acls(new_cell):
    processes = new_cell(tls=True)
    admin = gaios.Cell.connect(processes.addresses, tls=processes.client_tls("admin"), attempt_timeout=2, call_deadline=20)
    alice = gaios.Cell.connect(processes.addresses, tls=processes.client_tls("alice"), attempt_timeout=2, call_deadline=20)
    try:
        assert alice.who_am_i().identity == "alice"
        assert admin.who_am_i().groups == ["admin"]
        private = gaios.Acl(read=["admin"], write=["admin"], change_acl=["admin"])
        admin.open("/private", create=True, contents=b"secret", acl=private).close()
        with pytest.raises(gaios.AclDenied) as denied:
            alice.open("/private", event_mask=0)
        assert denied.value.reason == "ACL_DENIED"
        opened = admin.open("/private")
        acl, stat = opened.acl()
        assert list(acl.read) == ["admin"]
        opened.set_acl(gaios.Acl(read=["*"], write=["admin"], change_acl=["admin"]), if_acl_generation=stat.acl_generation)
        with pytest.raises(gaios.AclGenerationMismatch):
            opened.set_acl(private, if_acl_generation=stat.acl_generation)
        assert alice.open("/private", event_mask=0).read()[0] == b"secret"
    finally:
        alice.close()
        admin.close()


def _lock_without_a_cell(check_sequencer):
    """A granted Lock on a Cell that never connected, whose lease is safe
    for a minute and whose `check_sequencer` is `check_sequencer`."""
    cell = gaios.Cell(["a:1"], None, grace_period=45, attempt_timeout=1, call_deadline=1,
                      client_name="t", learn_members=False)
    cell._lease_end_ns = time.monotonic_ns() + 60 * 10**9
    cell.check_sequencer = check_sequencer  # type: ignore[method-assign]
    handle = gaios.Handle(cell, 4, "/f", False, pb.Stat())
    lock = gaios.Lock(handle, gaios.LockMode.EXCLUSIVE, None)
    lock._listen()
    return cell, lock


def _wait(predicate, seconds=5.0):
    until = time.monotonic() + seconds
    while not predicate() and time.monotonic() < until:
        time.sleep(0.01)
    return predicate()


def test_a_check_answer_older_than_a_newer_gap_does_not_clear_the_risk():
    answers: List[threading.Event] = []
    asked: List[int] = []

    def check(sequencer):
        gate = threading.Event()
        answers.append(gate)
        asked.append(len(answers))
        gate.wait(5)
        return True

    cell, lock = _lock_without_a_cell(check)
    lock._granted(pb.Sequencer(path="/f", mode=1, lock_generation=3, instance=1))
    missed = gaios.Event(9, 0, "", gaios.EventKind.MISSED, 2)
    cell._deliver(pb.Event(number=1, kind=pb.EVENT_KIND_CHILD_ADDED, handle=4, path="/x"))
    lock._on_event(missed)
    assert _wait(lambda: len(answers) == 1) and lock.state == gaios.LockState.AT_RISK
    lock._on_event(missed)  # a second gap while the first check is out
    answers[0].set()  # the first answer: current, but older than the gap
    assert _wait(lambda: len(answers) == 2), "a new check for the newer gap"
    assert lock.state == gaios.LockState.AT_RISK, "the older answer does not clear the newer gap"
    answers[1].set()
    assert _wait(lambda: lock.state == gaios.LockState.HELD)


def test_a_gap_during_the_acquire_is_checked_once_the_lock_is_granted():
    asked: List[int] = []
    cell, lock = _lock_without_a_cell(lambda sequencer: asked.append(1) or False)
    lock._on_event(gaios.Event(9, 0, "", gaios.EventKind.MISSED, 1))
    assert asked == [], "nothing to check before the grant"
    lock._granted(pb.Sequencer(path="/f", mode=1, lock_generation=3, instance=1))
    assert _wait(lambda: lock.state == gaios.LockState.LOST), lock.state
    assert asked == [1], "the check ran after the grant and found the lock gone"


def test_the_session_state_is_never_safer_than_the_lease_even_with_a_late_clock_thread():
    cell = gaios.Cell(["a:1"], None, grace_period=45, attempt_timeout=1, call_deadline=1,
                      client_name="t", learn_members=False)
    cell._lease_end_ns = time.monotonic_ns() - 1  # ended; no clock thread runs
    assert cell._state == SessionState.SAFE
    assert cell.state == SessionState.JEOPARDY
    cell._lease_end_ns = time.monotonic_ns() - 46 * 10**9
    assert cell.state == SessionState.EXPIRED
