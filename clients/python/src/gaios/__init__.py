"""The official Python client of Gaios, a Chubby-style coordination service:
sessions kept alive in the background with jeopardy, safe and expired
states; handles on files and directories; locks with sequencers; events;
the election recipe; and fencing. A blocking API, safe to use from many
threads.

    import gaios

    with gaios.Cell.connect("127.0.0.1:7201,127.0.0.1:7202") as cell:
        with cell.lock("/jobs/nightly") as lock:
            print("holding", lock.sequencer.lock_generation)

See clients/python/README.md for the whole API.
"""

from ._lease import CLOCK_DRIFT_PPM, SessionState
from ._pb import pb
from .client import EVENTS_ALL, LOCAL_CELL, Cell, Event, EventKind, EventStream, Tls, cell_from_env
from .errors import (
    AclDenied,
    AclGenerationMismatch,
    AlreadyExists,
    BadAddress,
    FailedPrecondition,
    GaiosError,
    GenerationMismatch,
    HandleInvalid,
    InvalidArgument,
    LockAtRisk,
    LockHeld,
    LockLost,
    NoMaster,
    NotEmpty,
    NotFound,
    PermissionDenied,
    RequestNumberReused,
    RequestNumberTooOld,
    ResourceExhausted,
    SequencerStale,
    SessionExpired,
    Timeout,
    Unauthenticated,
    Unexpected,
)
from . import election
from .fence import Fence, FenceError, NotCurrent, StaleSequencer
from .handle import LOCK_DELAY_DEFAULT_S, Handle, HandleEvents, Lock, LockMode, LockState

#: The messages of `gaios.cell.v1` (Stat, Sequencer, Acl, ...).
Acl = pb.Acl
Sequencer = pb.Sequencer
Stat = pb.Stat

__all__ = [name for name in dir() if not name.startswith("_")]
__version__ = "0.1.0"
