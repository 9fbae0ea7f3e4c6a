"""Measures lock acquire + release on one handle, one at a time, against the
cell in GAIOS_CELL (with the TLS of GAIOS_CACERT, GAIOS_CERT, GAIOS_KEY if
set), and prints the median and the 99th percentile; the Rust library's
`cargo run --release -p gaios-client --example lock_latency` does the same.

    python clients/python/examples/lock_latency.py 2000
"""

import sys
import time

import gaios


def main() -> None:
    rounds = max(1, int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    with gaios.Cell.connect(gaios.cell_from_env(), tls=gaios.Tls.from_env()) as cell:
        handle = cell.open("/lock-latency-python", create=True, event_mask=0)
        for _ in range(min(rounds, 50)):  # warm up
            handle.acquire(wait=10).release()
        took = []
        for _ in range(rounds):
            started = time.perf_counter()
            handle.acquire(wait=10).release()
            took.append(time.perf_counter() - started)
        took.sort()
        at = lambda q: took[round((len(took) - 1) * q)] * 1000  # noqa: E731
        print(f"python lock acquire+release: {rounds} rounds, p50 {at(0.5):.3f} ms, p99 {at(0.99):.3f} ms")


if __name__ == "__main__":
    main()
