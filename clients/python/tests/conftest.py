"""Five real `gaios-server` processes on loopback ports for the Python
client's tests, started from the built binaries as the Rust end-to-end
tests start them (`tests/src/lib.rs`): `gaios-server certs` for a TLS
cell, `gaios-server init` for each replica, then `gaios-server run`.

The binaries are taken from `$GAIOS_BIN_DIR`, else
`$CARGO_TARGET_DIR/debug`, else the repository's `target/debug`
(`cargo build --workspace --bins` makes them; `scripts/test` does).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import grpc
import pytest

from gaios import Cell, Tls, pb, pb as _pb
from gaios._pb import pb_grpc

REPO = pathlib.Path(__file__).resolve().parents[3]
REPLICAS = 5
CELL_ID = "pytest"
#: The clients whose certificates a TLS cell gets.
TLS_CLIENTS = ["alice", "admin"]
#: How long a new cell may take to elect its first master.
FIRST_MASTER_DEADLINE_S = 30.0


def bin_dir() -> pathlib.Path:
    if os.environ.get("GAIOS_BIN_DIR"):
        return pathlib.Path(os.environ["GAIOS_BIN_DIR"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "debug"
    return REPO / "target" / "debug"


def binary(name: str) -> str:
    path = bin_dir() / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` (or set GAIOS_BIN_DIR)")
    return str(path)


def free_ports(count: int) -> List[int]:
    """Free loopback ports (bound together, then released)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class CellProcesses:
    """A five-replica cell of real processes; `stop()` kills them all."""

    def __init__(self, extra_args: Optional[List[str]] = None, tls: bool = False) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="gaios-pytest-"))
        self.extra_args = list(extra_args or [])
        self.tls = tls
        ports = free_ports(2 * REPLICAS)
        self.ids = list(range(1, REPLICAS + 1))
        self.peer = {i: f"127.0.0.1:{ports[2 * (i - 1)]}" for i in self.ids}
        self.client = {i: f"127.0.0.1:{ports[2 * (i - 1) + 1]}" for i in self.ids}
        self.processes: Dict[int, Optional[subprocess.Popen]] = {}
        if tls:
            args = [binary("gaios-server"), "certs", "--dir", str(self.dir / "tls"), "--cell-id", CELL_ID, "--host", "127.0.0.1"]
            for i in self.ids:
                args += ["--replica", str(i)]
            for name in TLS_CLIENTS:
                args += ["--client", name]
            subprocess.run(args, check=True, capture_output=True)
        for i in self.ids:
            subprocess.run([binary("gaios-server"), "init", *self.member_args(i)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
        for i in self.ids:
            self.start(i)

    @property
    def addresses(self) -> List[str]:
        return [self.client[i] for i in self.ids]

    def member_args(self, i: int) -> List[str]:
        args = ["--id", str(i), "--data-dir", str(self.dir / f"data-{i}"), "--cell-id", CELL_ID]
        for j in self.ids:
            args += ["--peer", f"{j}={self.peer[j]}={self.client[j]}"]
        return args

    def client_tls(self, name: str) -> Tls:
        tls = self.dir / "tls"
        return Tls.from_files(tls / "ca.pem", tls / f"client-{name}.pem", tls / f"client-{name}.key")

    def start(self, i: int) -> None:
        args = [binary("gaios-server"), "run", *self.member_args(i), "--listen-peer", self.peer[i]]
        if self.tls:
            tls = self.dir / "tls"
            args += ["--admin", "admin", "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / f"replica-{i}.pem"),
                     "--tls-key", str(tls / f"replica-{i}.key")]
        else:
            args.append("--insecure")
        args += self.extra_args
        log = open(self.dir / f"replica-{i}.log", "ab")
        self.processes[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                             env={**os.environ, "RUST_LOG": "info"})
        log.close()

    def kill(self, i: int) -> None:
        """SIGKILL, as a power cut or an OOM kill would."""
        process = self.processes.get(i)
        if process is not None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
            self.processes[i] = None

    def signal(self, i: int, sig: int) -> None:
        process = self.processes.get(i)
        if process is not None:
            process.send_signal(sig)

    def stop(self) -> None:
        for i in self.ids:
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for i in self.ids:
            path = self.dir / f"replica-{i}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-15:]
                out.append(f"--- replica {i} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def _stub(self, i: int):
        if self.tls:
            tls = self.client_tls("admin")
            credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
            channel = grpc.secure_channel(self.client[i], credentials)
        else:
            channel = grpc.insecure_channel(self.client[i])
        return channel, pb_grpc.CellStub(channel)

    def master(self, deadline_s: float = FIRST_MASTER_DEADLINE_S, among: Optional[List[int]] = None) -> int:
        """The id of a master that serves (answers `Status` as master with
        a ready state), among `among` (default all running replicas),
        waiting up to `deadline_s`."""
        until = time.monotonic() + deadline_s
        while time.monotonic() < until:
            for i in among or self.ids:
                if self.processes.get(i) is None:
                    continue
                channel, stub = self._stub(i)
                try:
                    status = stub.Status(_pb.StatusRequest(), timeout=1)
                    if status.role == _pb.ROLE_MASTER and status.lease_remaining_ms > 0:
                        return i
                except grpc.RpcError:
                    pass
                finally:
                    channel.close()
            time.sleep(0.1)
        raise AssertionError(f"no master within {deadline_s} s\n{self.logs()}")


@pytest.fixture
def new_cell() -> Iterator:
    """Starts cells for one test (`new_cell(extra_args, tls=...)`) and stops
    them after it."""
    started: List[CellProcesses] = []

    def start(extra_args: Optional[List[str]] = None, tls: bool = False) -> CellProcesses:
        cell = CellProcesses(extra_args, tls)
        started.append(cell)
        cell.master()
        return cell

    yield start
    for cell in started:
        cell.stop()


@pytest.fixture(scope="module")
def shared_cell() -> Iterator[CellProcesses]:
    """One cell for the tests of a module that neither kill nor pause."""
    cell = CellProcesses(["--session-lease-ms", "2000"])
    try:
        cell.master()
        yield cell
    finally:
        cell.stop()


@pytest.fixture
def connect():
    """Connects clients for one test (`connect(cell, **options)`) and closes
    those still open after it."""
    made: List[Cell] = []

    def make(cell: CellProcesses, **options) -> Cell:
        options.setdefault("attempt_timeout", 1.0)
        options.setdefault("call_deadline", 20.0)
        client = Cell.connect(cell.addresses, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:
            pass
