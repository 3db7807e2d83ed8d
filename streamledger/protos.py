"""gRPC message and service modules compiled from `proto/*.proto` at import time.

grpcio-tools compiles them in memory (`grpc.protos_and_services`), so no generated code is
committed and none can go stale:

    ingest_pb2, ingest_pb2_grpc = load("ingest.proto")
"""

from __future__ import annotations

import sys
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType

import grpc

PROTO_DIR = Path(str(resources.files("streamledger") / "proto"))  # package data


@cache
def load(proto_file: str) -> tuple[ModuleType, ModuleType]:
    """The (messages, services) modules for a file in `proto/`, e.g. "ingest.proto"."""
    if not (PROTO_DIR / proto_file).exists():
        raise FileNotFoundError(f"no proto file {proto_file!r} in {PROTO_DIR}")
    if str(PROTO_DIR) not in sys.path:
        sys.path.append(str(PROTO_DIR))  # grpc_tools resolves proto imports through sys.path
    return grpc.protos_and_services(proto_file)
