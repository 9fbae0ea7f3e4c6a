"""Talks to a running Gaios cell as a Python client with the standard gRPC
packages would, and checks the error contract of `gaios.cell.v1`:

- a follower's redirect is UNAVAILABLE, and `grpc_status.rpc_status.from_call`
  (the standard decoder) finds a `google.rpc.ErrorInfo` with reason
  NOT_MASTER, domain "gaios" and the master's id and address in metadata,
  which this script then follows;
- a 10,000-character bad path comes back as INVALID_ARGUMENT with a short
  message (not the "Stream removed" a trailer over 8 KiB causes);
- a request over the message limit is RESOURCE_EXHAUSTED;
- a request number reused for a different call is FAILED_PRECONDITION with
  reason REQUEST_NUMBER_REUSED;
- an oversized message on the KeepAlive stream ends it with
  RESOURCE_EXHAUSTED, and one that does not decode with INTERNAL (not a
  silent end).

Usage: python wire_contract.py PROTO_DIR FOLLOWER_ADDRESS MASTER_ID MASTER_ADDRESS
Stubs are generated from PROTO_DIR into a temporary directory (grpcio-tools).
Prints one line per check; exits non-zero on the first failure.
"""

import importlib
import subprocess
import sys
import tempfile

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def generate_stubs(proto_dir: str, out_dir: str) -> None:
    """Compiles cell.proto with grpcio-tools' protoc into out_dir."""
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            "gaios/cell/v1/cell.proto",
        ],
        check=True,
    )
    sys.path.insert(0, out_dir)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo in the status details, decoded the standard way."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def refused(call, request) -> grpc.RpcError:
    """Makes a call that must fail and returns its error."""
    try:
        call(request, timeout=10)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{call} succeeded but should have been refused")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def main() -> None:
    proto_dir, follower, master_id, master_address = sys.argv[1:5]
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(proto_dir, out_dir)
        pb = importlib.import_module("gaios.cell.v1.cell_pb2")
        rpc = importlib.import_module("gaios.cell.v1.cell_pb2_grpc")

        # 1. The redirect, decoded with the standard decoder, and followed.
        follower_stub = rpc.CellStub(grpc.insecure_channel(follower))
        error = refused(follower_stub.CreateSession, pb.CreateSessionRequest(client_name="python"))
        check(error.code() == grpc.StatusCode.UNAVAILABLE, f"a follower answers UNAVAILABLE (got {error.code()})")
        info = error_info(error)
        check(info is not None, "rpc_status.from_call decodes the details and finds an ErrorInfo")
        check((info.reason, info.domain) == ("NOT_MASTER", "gaios"), f"reason NOT_MASTER in domain gaios (got {info.reason}, {info.domain})")
        check(info.metadata["master_id"] == master_id, f"metadata names master {master_id} (got {info.metadata['master_id']})")
        check(info.metadata["master_address"] == master_address, f"metadata gives its address {master_address}")
        master = rpc.CellStub(grpc.insecure_channel(info.metadata["master_address"]))
        session = master.CreateSession(pb.CreateSessionRequest(client_name="python"), timeout=10)
        check(session.session_id > 0, f"the redirect leads to the master, which opens session {session.session_id}")

        def header(number: int):
            return pb.RequestHeader(session_id=session.session_id, request_number=number, session_secret=session.session_secret)

        # 2. A long bad path: INVALID_ARGUMENT with a short message.
        error = refused(master.Open, pb.OpenRequest(header=header(1), path="x" * 10_000, create=True))
        check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"a 10,000-character bad path is INVALID_ARGUMENT (got {error.code()})")
        check(len(error.details().encode()) <= 1024, f"its message fits in 1 KiB ({len(error.details().encode())} bytes)")

        # 3. A request over the message limit: RESOURCE_EXHAUSTED.
        opened = master.Open(pb.OpenRequest(header=header(2), path="/python-file", create=True), timeout=10)
        error = refused(master.SetContents, pb.SetContentsRequest(header=header(3), handle=opened.handle, contents=b"x" * (1 << 20)))
        check(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"a 1 MiB request is RESOURCE_EXHAUSTED (got {error.code()})")

        # 4. A request number reused for another call.
        master.SetContents(pb.SetContentsRequest(header=header(4), handle=opened.handle, contents=b"one"), timeout=10)
        again = master.SetContents(pb.SetContentsRequest(header=header(4), handle=opened.handle, contents=b"one"), timeout=10)
        check(again.stat.content_generation == 2, "a retry with the same number and call gets the first answer")
        error = refused(master.SetContents, pb.SetContentsRequest(header=header(4), handle=opened.handle, contents=b"two"))
        info = error_info(error)
        check(
            error.code() == grpc.StatusCode.FAILED_PRECONDITION and info is not None and info.reason == "REQUEST_NUMBER_REUSED",
            f"the same number for another call is FAILED_PRECONDITION, REQUEST_NUMBER_REUSED (got {error.code()}, {info and info.reason})",
        )

        # 5. An oversized message on the KeepAlive stream ends the stream with
        # RESOURCE_EXHAUSTED, as a unary request over the limit is refused.
        oversized = pb.KeepAliveRequest(session_id=session.session_id, session_secret=b"x" * (1 << 20))
        stream = master.KeepAlive(iter([oversized]), timeout=10)
        try:
            answers = list(stream)
            raise AssertionError(f"the oversized KeepAlive was answered: {answers}")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED,
                  f"an oversized KeepAlive message ends the stream with RESOURCE_EXHAUSTED (got {error.code()}: {error.details()})")

        # 6. Bytes that do not decode as a KeepAliveRequest end the stream
        # with INTERNAL, as gRPC answers an undecodable unary request.
        channel = grpc.insecure_channel(master_address)
        raw = channel.stream_stream("/gaios.cell.v1.Cell/KeepAlive", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        try:
            answers = list(raw(iter([b"\xff\xff\xff"]), timeout=10))
            raise AssertionError(f"an undecodable KeepAlive was answered: {answers}")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.INTERNAL,
                  f"an undecodable KeepAlive message ends the stream with INTERNAL (got {error.code()}: {error.details()})")
        channel.close()
        master.CloseSession(pb.CloseSessionRequest(session_id=session.session_id, session_secret=session.session_secret), timeout=10)


if __name__ == "__main__":
    main()
