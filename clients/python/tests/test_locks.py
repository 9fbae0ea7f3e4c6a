"""Locks, sessions and the election recipe through failures, against real
five-process cells with a 2 s session lease (as the Rust client's tests
in tests/tests/client.rs): contention with rising generations, a master
SIGKILL survived with the lock, jeopardy then safe, expiry after the grace
period, and the election hand-over."""

from __future__ import annotations

import signal
import threading
import time
from typing import List

import pytest

import gaios
from gaios import LockMode, LockState, SessionState, election

LEASE = ["--session-lease-ms", "2000"]


def pause_majority(processes, master: int) -> List[int]:
    """SIGSTOPs the master and two followers (no quorum is left, so no new
    master can be elected); returns their ids."""
    paused = [master] + [i for i in processes.ids if i != master][:2]
    for i in paused:
        processes.signal(i, signal.SIGSTOP)
    return paused


def resume(processes, paused: List[int]) -> None:
    for i in paused:
        processes.signal(i, signal.SIGCONT)


def record_states(cell: gaios.Cell) -> List[SessionState]:
    seen = [cell.state]
    cell.on_state_change(seen.append)
    return seen


def settled(seen: List, count: int, seconds: float = 5.0) -> List:
    """`seen` once it holds `count` entries (callbacks run on the library's
    callback thread, a moment after the change), or as it is after
    `seconds`."""
    until = time.monotonic() + seconds
    while len(seen) < count and time.monotonic() < until:
        time.sleep(0.01)
    return seen


def test_contended_locks_are_granted_in_turn_with_rising_generations(shared_cell, connect):
    alice, bob = connect(shared_cell), connect(shared_cell)
    first = alice.lock("/contended", wait=5)
    with pytest.raises(gaios.LockHeld) as held:
        bob.open("/contended").try_acquire()
    assert held.value.reason == "LOCK_HELD"

    got = []
    waiter = threading.Thread(target=lambda: got.append(bob.lock("/contended", wait=20)))
    waiter.start()
    time.sleep(0.5)
    assert not got, "bob waits while alice holds the lock"
    first.release()
    waiter.join(20)
    assert got, "bob got the lock once alice released it"
    second = got[0]
    assert second.sequencer.lock_generation > first.sequencer.lock_generation
    assert second.sequencer.path == "/contended" and second.sequencer.mode == LockMode.EXCLUSIVE.value
    assert not alice.check_sequencer(first.sequencer) and alice.check_sequencer(second.sequencer)

    fence = gaios.Fence()
    fence.check(second.sequencer)
    with pytest.raises(gaios.StaleSequencer):
        fence.check(first.sequencer)
    with pytest.raises(gaios.NotCurrent):
        gaios.Fence().check_with_cell(alice, first.sequencer)
    second.release()

    # Shared holders together, each with its own generation; an exclusive
    # request waits for them.
    readers = [alice.open("/contended").acquire(LockMode.SHARED, 5), bob.open("/contended").acquire(LockMode.SHARED, 5)]
    generations = [r.sequencer.lock_generation for r in readers]
    assert generations[0] < generations[1] and generations[0] > second.sequencer.lock_generation
    with pytest.raises(gaios.LockHeld):
        alice.open("/contended").try_acquire(LockMode.EXCLUSIVE)
    for reader in readers:
        reader.release()
    with alice.lock("/contended", wait=5) as last:
        assert last.state == LockState.HELD and last.sequencer.lock_generation > generations[1]
        last.ensure_held()
    assert not alice.check_sequencer(last.sequencer), "the with block released it"


def test_a_session_holding_a_lock_survives_a_master_sigkill(new_cell, connect):
    processes = new_cell(LEASE)
    master = processes.master()
    cell = connect(processes, grace_period=15)
    states = record_states(cell)
    lock = cell.lock("/survivor", wait=5)
    events = lock.handle.events()
    killed_at = time.monotonic()
    processes.kill(master)
    successor = processes.master(among=[i for i in processes.ids if i != master])
    # The session carries on with the new master: a write through it works.
    stat = cell.open("/after-failover", create=True).write(b"written after the failover")
    recovered_after = time.monotonic() - killed_at
    failover = None
    until = time.monotonic() + 10
    while failover is None and time.monotonic() < until:
        event = events.get(timeout=1)
        if event is not None and event.kind == gaios.EventKind.MASTER_FAILOVER:
            failover = event
    assert failover is not None, "the new master announced itself"
    assert lock.wait_recovered(10) is True, f"lock state {lock.state}"
    assert cell.check_sequencer(lock.sequencer), "the cell still has the lock held by this session"
    assert SessionState.EXPIRED not in states, states
    assert cell.state == SessionState.SAFE and stat.content_generation == 2
    print(f"\nmaster {master} SIGKILLed; new master {successor}; the session wrote again after "
          f"{recovered_after:.2f} s; states seen {[s.value for s in states]}; lock generation "
          f"{lock.sequencer.lock_generation} still current")
    lock.release()


def test_a_short_pause_brings_jeopardy_then_safe_and_the_lock_is_kept(new_cell, connect):
    processes = new_cell(LEASE)
    master = processes.master()
    cell = connect(processes, grace_period=15)
    states = record_states(cell)
    lock_states: List[LockState] = []
    lock = cell.lock("/kept", wait=5, on_change=lock_states.append)
    paused = pause_majority(processes, master)
    try:
        assert cell.wait_for_state(SessionState.JEOPARDY, 10), f"no jeopardy while no master could answer: {states}"
        assert lock.wait_at_risk(1) and lock.state == LockState.AT_RISK
        with pytest.raises(gaios.LockAtRisk):
            lock.ensure_held()
        time.sleep(2)  # well inside the 15 s grace period
    finally:
        resume(processes, paused)
    assert lock.wait_recovered(15) is True, f"the risk passed with the lock kept\n{processes.logs()}"
    assert cell.wait_for_state(SessionState.SAFE, 15)
    assert settled(states, 3) == [SessionState.SAFE, SessionState.JEOPARDY, SessionState.SAFE]
    assert settled(lock_states, 2)[:2] == [LockState.AT_RISK, LockState.HELD], lock_states
    lock.ensure_held()
    assert cell.check_sequencer(lock.sequencer), "the lock is still held"
    lock.release()


def test_a_pause_longer_than_the_grace_period_expires_the_session_and_loses_the_lock(new_cell, connect):
    processes = new_cell(LEASE)
    master = processes.master()
    cell = connect(processes, grace_period=2)
    states = record_states(cell)
    lock = cell.lock("/lost", wait=5)
    paused = pause_majority(processes, master)
    try:
        assert cell.wait_for_state(SessionState.EXPIRED, 15), f"the session did not expire: {states}"
        assert lock.wait_lost(1) and lock.lost
    finally:
        resume(processes, paused)
    assert settled(states, 3) == [SessionState.SAFE, SessionState.JEOPARDY, SessionState.EXPIRED]
    with pytest.raises(gaios.LockLost):
        lock.ensure_held()
    with pytest.raises(gaios.SessionExpired):
        lock.handle.stat()
    # A new session can take the lock once the old one's lock-delay is over.
    successor = connect(processes)
    with successor.lock("/lost", wait=30) as taken:
        assert taken.sequencer.lock_generation > lock.sequencer.lock_generation


def test_the_election_hands_leadership_on_with_a_higher_generation(shared_cell, connect):
    first, second, watcher = connect(shared_cell), connect(shared_cell), connect(shared_cell)
    leading = election.campaign(first, "/leader-election", b"10.0.0.1:80")
    assert election.leader(watcher, "/leader-election") == b"10.0.0.1:80"
    observed: List = []
    observing = election.observe(watcher, "/leader-election")
    observed.append(next(observing))
    taken = []
    campaign = threading.Thread(target=lambda: taken.append(election.campaign(second, "/leader-election", b"10.0.0.2:80")))
    campaign.start()
    time.sleep(0.5)
    assert not taken, "the second candidate waits while the first leads"
    leading.resign()
    campaign.join(20)
    assert taken, "the second candidate leads after the first resigned"
    successor = taken[0]
    assert successor.sequencer.lock_generation > leading.sequencer.lock_generation
    assert successor.state == LockState.HELD
    until = time.monotonic() + 10
    while observed[-1] != b"10.0.0.2:80" and time.monotonic() < until:
        observed.append(next(observing))
    observing.close()
    assert observed[0] == b"10.0.0.1:80" and observed[-1] == b"10.0.0.2:80", observed
    assert set(observed) <= {b"10.0.0.1:80", None, b"10.0.0.2:80"}
    assert election.leader(watcher, "/leader-election") == b"10.0.0.2:80"
    assert election.leader(watcher, "/nobody-leads") is None
    successor.resign()
    assert election.leader(watcher, "/leader-election") is None
