"""The Open Inference Protocol (KServe V2) messages and service, from `proto/grpc_predict_v2.proto`.

    from services.inference.protocol import pb, add_servicer, InferenceStub
    request = pb.ModelInferRequest(model_name="phishing-logreg")
    stub = InferenceStub(channel)              # grpc.Channel or grpc.aio.Channel
    response = await stub.ModelInfer(request)

Why not `streamledger.protos.load`: that registers the messages in protobuf's default
descriptor pool, where Triton's own client (`tritonclient.grpc`) registers the very same
`inference.*` names from its copy of the protocol. Two definitions of one name in a pool
fail at import, so a process holding both (our tests, a gateway using Triton's client)
could not start. Here the file is compiled by grpcio-tools into a descriptor set and built
in a private pool; on the wire the messages are the same.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

from streamledger.listen import grpc_listen_options
from streamledger.protos import PROTO_DIR

PROTO_FILE = "grpc_predict_v2.proto"
SERVICE = "inference.GRPCInferenceService"
# RPC name -> (request, response) message names; the handlers of the servicer carry these names.
RPCS: dict[str, tuple[str, str]] = {
    name: (f"{name}Request", f"{name}Response")
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
}
RAW_REQUESTS = frozenset({"ModelInfer"})
"""RPCs whose handler is given the request's serialized bytes (it reads them itself)."""


def _compile(proto_file: str = PROTO_FILE) -> SimpleNamespace:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        status = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", proto_file])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {PROTO_DIR / proto_file} (exit {status})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    package = files.file[0].package
    messages = {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{m.name}"))
                for m in files.file[0].message_type}
    return SimpleNamespace(**messages)


pb = _compile()
"""Message classes by name: `pb.ModelInferRequest`, `pb.InferTensorContents`, ..."""


def add_servicer(server: grpc.aio.Server | grpc.Server, servicer: Any) -> None:
    """Register `servicer`, which has one method per RPC (`async def ModelInfer(request, context)`).

    A method is given the request message (its bytes for `RAW_REQUESTS`) and may answer
    with the response message or with its serialized bytes.
    """
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, rpc),
            request_deserializer=None if rpc in RAW_REQUESTS else getattr(pb, request).FromString,
            response_serializer=_serialize,
        )
        for rpc, (request, response) in RPCS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def server(servicer: Any, address: str, credentials: grpc.ServerCredentials | None,
           max_message_bytes: int, share_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server of `servicer` on `address` (TLS with `credentials`, else plaintext) and the port
    it bound; a larger message than `max_message_bytes` is refused with RESOURCE_EXHAUSTED. The port is
    this process's alone unless `share_port` (replicas on one machine, see `streamledger.listen`)."""
    bound = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                     ("grpc.max_send_message_length", max_message_bytes),
                                     *grpc_listen_options(share_port)])
    add_servicer(bound, servicer)
    port = bound.add_secure_port(address, credentials) if credentials else bound.add_insecure_port(address)
    return bound, port


def _serialize(response: Any) -> bytes:
    return response if response.__class__ is bytes else response.SerializeToString()


class InferenceStub:
    """Client calls, one attribute per RPC, on a sync or asyncio channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for rpc, (request, response) in RPCS.items():
            call: Callable = channel.unary_unary(
                f"/{SERVICE}/{rpc}",
                request_serializer=getattr(pb, request).SerializeToString,
                response_deserializer=getattr(pb, response).FromString,
            )
            setattr(self, rpc, call)
