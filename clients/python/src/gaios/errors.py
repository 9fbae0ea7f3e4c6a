"""The client's exceptions, rebuilt from the cell's status codes and error
reasons.

Every refusal from the cell is a gRPC status whose details hold a
`google.rpc.ErrorInfo` (domain "gaios") naming an `ErrorReason` of
`gaios.cell.v1`. The library classifies by the code and the reason, never
by the message (which is for people and may echo a path). The direct
subclasses of `GaiosError` are the Rust library's `gaios_client::Error`
variants one for one (`NotFound`, `AlreadyExists`, `LockHeld`,
`FailedPrecondition`, `SessionExpired`, `AclDenied`, ...), so `except X`
catches exactly what the Rust library's `Error::X` holds; where a reason
says more, a subclass of `FailedPrecondition` names it
(`GenerationMismatch`, `HandleInvalid`, ...). The table in the package's
README lists every code and reason with both libraries' behaviour.

Transient failures (no master, a failover, a replica that hung) are
retried inside the library until the call's deadline, keeping the call's
request number, and surface as `NoMaster` only then.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import grpc

#: The `ErrorInfo` domain of the cell's reasons.
ERROR_DOMAIN = "gaios"


class GaiosError(Exception):
    """Any failure of a call to the cell.

    `code` is the gRPC status code (None for failures made by the library),
    `reason` the cell's `ErrorReason` name ("" when the status carries
    none), and `message` the cell's text, for people only.
    """

    def __init__(self, message: str = "", code: Optional[grpc.StatusCode] = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, reason={self.reason!r})"


class NotFound(GaiosError):
    """No node at the path, or no such handle (`NOT_FOUND`)."""


class AlreadyExists(GaiosError):
    """A node already exists at the path (`ALREADY_EXISTS`): an exclusive
    create found one, or an ACL was given for a node that exists with
    another."""


class FailedPrecondition(GaiosError):
    """The call's precondition failed (`FAILED_PRECONDITION`); the
    subclasses name the reason when the cell gave one."""


class LockHeld(GaiosError):
    """`TryAcquire`: the lock is held in a conflicting mode (`LOCK_HELD`) or
    in its lock-delay (`LOCK_DELAY`, see `reason`)."""


class SessionExpired(GaiosError):
    """The session ended (`SESSION_ENDED`: expired or closed); nothing more
    can be done with it or its handles and locks. Connect again for a new
    session. The library also raises it, without a code, once it has
    declared the session expired itself (the grace period ran out)."""


class HandleInvalid(FailedPrecondition):
    """The handle's node was deleted (`HANDLE_INVALID`): reopen the path."""


class SequencerStale(FailedPrecondition):
    """A sequencer (given, or set on the handle) is no longer current
    (`SEQUENCER_STALE`): the lock moved on."""


class GenerationMismatch(FailedPrecondition):
    """A compare-and-set found another content generation
    (`GENERATION_MISMATCH`): read again and retry."""


class AclGenerationMismatch(FailedPrecondition):
    """A conditional `set_acl` found another ACL generation
    (`ACL_GENERATION_MISMATCH`): read the ACL again and retry."""


class NotEmpty(FailedPrecondition):
    """A directory with children cannot be deleted (`NOT_EMPTY`)."""


class RequestNumberTooOld(FailedPrecondition):
    """A retry came after the session's at-most-once window of 64 requests
    had moved past it (`REQUEST_NUMBER_TOO_OLD`): its answer is gone."""


class RequestNumberReused(FailedPrecondition):
    """A request number was used for a different call
    (`REQUEST_NUMBER_REUSED`); the library never does this."""


class InvalidArgument(GaiosError):
    """A bad path or argument (`INVALID_ARGUMENT`): fix the request."""


class PermissionDenied(GaiosError):
    """The cell refused to act for the session (`PERMISSION_DENIED`): the
    session's secret was missing (`SESSION_SECRET_MISMATCH`), the session
    belongs to another identity (`SESSION_OWNER_MISMATCH`), or the call
    needs a cell administrator (`NOT_AN_ADMIN`)."""


class AclDenied(GaiosError):
    """The node's ACL does not give this session's identity (or its groups)
    the permission the call needs (`ACL_DENIED`)."""


class Unauthenticated(GaiosError):
    """On a TLS cell, the client's certificate names no identity
    (`UNAUTHENTICATED`): fix the certificate."""


class ResourceExhausted(GaiosError):
    """A limit of the cell was hit (`RESOURCE_EXHAUSTED`, or `OUT_OF_RANGE`
    for an oversized message on the KeepAlive stream)."""


class Timeout(GaiosError):
    """A wait ran out: `Acquire` waited `wait` without the lock
    (`DEADLINE_EXCEEDED` from the cell; the handle no longer waits)."""


class NoMaster(GaiosError):
    """No master answered before the call's deadline (no quorum, or an
    election that took too long); the call may or may not have been
    applied, and retrying it in a new call is not at-most-once."""


class BadAddress(GaiosError):
    """The cell addresses given do not look like `host:port`."""


class Unexpected(GaiosError):
    """Something the library did not expect from the cell."""


class LockLost(GaiosError):
    """The lock is gone for sure: the session expired, or the node was
    deleted (raised by `Lock.ensure_held`)."""


class LockAtRisk(GaiosError):
    """The session is in jeopardy (or a check of the lock is pending): the
    lock may be lost; stop acting on it (raised by `Lock.ensure_held`)."""


# FAILED_PRECONDITION reasons with a class of their own.
_FAILED_PRECONDITION = {
    "LOCK_HELD": LockHeld,
    "LOCK_DELAY": LockHeld,
    "SESSION_ENDED": SessionExpired,
    "HANDLE_INVALID": HandleInvalid,
    "SEQUENCER_STALE": SequencerStale,
    "GENERATION_MISMATCH": GenerationMismatch,
    "ACL_GENERATION_MISMATCH": AclGenerationMismatch,
    "NOT_EMPTY": NotEmpty,
    "REQUEST_NUMBER_TOO_OLD": RequestNumberTooOld,
    "REQUEST_NUMBER_REUSED": RequestNumberReused,
}

_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.OUT_OF_RANGE: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAVAILABLE: NoMaster,
}


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """The cell's `google.rpc.ErrorInfo`: its reason and metadata."""

    reason: str
    metadata: dict


def error_info(error: grpc.RpcError) -> Optional[ErrorInfo]:
    """The `ErrorInfo` of the Gaios domain in the status details of a
    failed call, decoded the standard way (`grpc_status`); None if there is
    none or it cannot be decoded."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:  # a malformed detail is no reason at all
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return ErrorInfo(reason=info.reason, metadata=dict(info.metadata))
    return None


def from_rpc_error(error: grpc.RpcError) -> GaiosError:
    """The exception for a status that ends a call (one the library does
    not retry), chosen by the code and the reason."""
    code = error.code() if hasattr(error, "code") else None
    message = (error.details() if hasattr(error, "details") else "") or ""
    info = error_info(error)
    reason = info.reason if info else ""
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason in _FAILED_PRECONDITION:
        cls = _FAILED_PRECONDITION[reason]
    elif code == grpc.StatusCode.PERMISSION_DENIED and reason == "ACL_DENIED":
        cls = AclDenied
    else:
        cls = _BY_CODE.get(code, Unexpected)  # type: ignore[arg-type]
    if cls is Unexpected:
        message = f"{code}: {message}"
    return cls(message, code=code, reason=reason)


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Where an `UNAVAILABLE` answer sends the client: the master a replica
    believes in (`NOT_MASTER`) or a master that cannot serve yet
    (`MASTER_NOT_READY`)."""

    reason: str
    master_id: int
    master_address: str


def redirect(error: grpc.RpcError) -> Optional[Redirect]:
    """The redirect an `UNAVAILABLE` status carries; None for any other
    status, and when no master is known (the cell sends no details then)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    info = error_info(error)
    if info is None or info.reason not in ("NOT_MASTER", "MASTER_NOT_READY"):
        return None
    master_id_text = info.metadata.get("master_id", "")
    if not (master_id_text.isascii() and master_id_text.isdigit()) or len(master_id_text) > 20:
        return None
    master_id = int(master_id_text)
    address = info.metadata.get("master_address", "")
    from .client import plausible_address

    if master_id == 0 or not plausible_address(address):
        return None
    return Redirect(reason=info.reason, master_id=master_id, master_address=address)


#: Codes the library retries (on another replica, or a new master), as the
#: Rust library does; a transport failure shows as UNAVAILABLE in Python.
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
})
