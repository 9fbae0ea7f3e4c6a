"""The stubs generated from `proto/gaios/cell/v1/cell.proto` when the
package was built (see setup.py): `pb` holds the messages, `pb_grpc` the
`CellStub`."""

try:
    from .cell.v1 import cell_pb2 as pb
    from .cell.v1 import cell_pb2_grpc as pb_grpc
except ImportError as error:  # pragma: no cover - a broken install
    raise ImportError(
        "gaios: the generated stubs are missing; install the package with "
        "`pip install ./clients/python` (they are made from proto/ at build time)"
    ) from error

__all__ = ["pb", "pb_grpc"]
