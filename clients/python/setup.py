"""Builds the `gaios` package, generating its gRPC stubs from the
repository's `proto/` directory with grpcio-tools' protoc (no stubs are
checked in, so they always match the schema the cell was built from).

The schema is found at `$GAIOS_PROTO_DIR`, else `../../proto` next to this
file (the repository layout; `pip install ./clients/python` builds in
place), else `proto/` inside this directory (an sdist carries a copy).
"""

import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
# The files of the schema a client needs: the client-facing service only.
PROTOS = ["gaios/cell/v1/cell.proto"]


def proto_dir() -> pathlib.Path:
    """Where the schema is (see the module docs)."""
    candidates = []
    if os.environ.get("GAIOS_PROTO_DIR"):
        candidates.append(pathlib.Path(os.environ["GAIOS_PROTO_DIR"]))
    candidates += [HERE.parent.parent / "proto", HERE / "proto"]
    for candidate in candidates:
        if all((candidate / proto).is_file() for proto in PROTOS):
            return candidate
    raise SystemExit(f"gaios: cannot find the schema ({PROTOS[0]}) in any of {[str(c) for c in candidates]}")


def generate(out: pathlib.Path) -> None:
    """Runs protoc (from grpcio-tools) on the schema into `out`, which is
    the directory that holds the `gaios` package, and makes the generated
    folders packages."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml)
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    source = proto_dir()
    out.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{source}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ])
        if status != 0:
            raise SystemExit(f"gaios: protoc failed on {proto} ({status})")
        folder = out / pathlib.Path(proto).parent
        while folder != out / "gaios":
            (folder / "__init__.py").touch()
            folder = folder.parent


class BuildWithStubs(build_py):
    """`build_py` that first generates the stubs into the build tree."""

    def run(self) -> None:
        super().run()
        generate(pathlib.Path(self.build_lib))


class SdistWithSchema(sdist):
    """`sdist` that carries a copy of the schema, so the sdist builds
    outside the repository."""

    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        source = proto_dir()
        for proto in PROTOS:
            target = pathlib.Path(base_dir) / "proto" / proto
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((source / proto).read_bytes())


setup(cmdclass={"build_py": BuildWithStubs, "sdist": SdistWithSchema})
