"""Takes the lock of /examples-lock in the local cell (or GAIOS_CELL), holds
it for a few seconds while the session is safe, and releases it; run it in
two terminals to see the second wait for the first.

    python clients/python/examples/lock.py
"""

import time

import gaios


def main() -> None:
    with gaios.Cell.connect(gaios.cell_from_env(), tls=gaios.Tls.from_env()) as cell:
        cell.on_state_change(lambda state: print("session:", state.value))
        with cell.lock("/examples-lock", wait=60) as lock:
            print("holding /examples-lock, generation", lock.sequencer.lock_generation)
            for _ in range(5):
                lock.ensure_held()  # raises LockAtRisk / LockLost: stop working then
                time.sleep(1)
        print("released")


if __name__ == "__main__":
    main()
