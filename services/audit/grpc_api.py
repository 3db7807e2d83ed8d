"""gRPC interface of the audit API: `streamledger.audit.v1.Audit` (proto/audit.proto), read-only.

The answers are the same dicts the HTTP API sends as JSON, parsed into the proto messages
(field names are shared). INVALID_ARGUMENT names the field; UNAUTHENTICATED without the
auditor token when one is configured; UNAVAILABLE when the ledger or MongoDB cannot be read,
with the partial answer serialized in the trailing metadata `streamledger-audit-report-bin`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from services.audit.auditor import Auditor
from services.audit.metrics import observe
from services.audit.ports import InvalidArgument
from services.audit.trace import DEFAULT_LIMIT
from streamledger.access import BearerToken, bearer
from streamledger.listen import grpc_listen_options
from streamledger.logging import get_logger
from streamledger.protos import load
from streamledger.tls import ServerTls, bind_grpc

audit_pb2, audit_pb2_grpc = load("audit.proto")
log = get_logger("audit")
REPORT_METADATA_KEY = "streamledger-audit-report-bin"
UNREACHABLE = frozenset({"LEDGER_UNREACHABLE", "STORE_UNREACHABLE"})


def to_message(answer: dict[str, Any], message_type: type) -> Any:
    """A JSON answer of the audit as its proto message (unset where the answer has null)."""
    return json_format.ParseDict(answer, message_type(), ignore_unknown_fields=True)


class AuditServicer(audit_pb2_grpc.AuditServicer):
    def __init__(self, auditor: Auditor, token: BearerToken) -> None:
        self.auditor = auditor
        self.token = token

    async def Verify(self, request, context: grpc.aio.ServicerContext):
        return await self._answer(context, "verify", audit_pb2.Verification,
                                  lambda: self.auditor.verify(request.tenant, request.event_id))

    async def Model(self, request, context: grpc.aio.ServicerContext):
        version = request.version if request.HasField("version") else None
        return await self._answer(context, "model", audit_pb2.ModelReport,
                                  lambda: self.auditor.model(request.model_id, version))

    async def Account(self, request, context: grpc.aio.ServicerContext):
        return await self._answer(context, "account", audit_pb2.AccountStatement,
                                  lambda: self.auditor.account(request.account))

    async def Bill(self, request, context: grpc.aio.ServicerContext):
        return await self._answer(context, "bill", audit_pb2.BillReport, lambda: self.auditor.bill(request.hold_id))

    async def Trace(self, request, context: grpc.aio.ServicerContext):
        limit = request.limit if request.HasField("limit") else DEFAULT_LIMIT
        page = request.page if request.HasField("page") else 1
        return await self._answer(context, "trace", audit_pb2.TraceReport,
                                  lambda: self.auditor.trace(request.tenant, request.event_id, limit, page))

    async def _answer(self, context: grpc.aio.ServicerContext, query: str, message_type: type,
                      ask: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        if not self.token.allows(bearer(metadata)):
            observe("grpc", query, "UNAUTHENTICATED", started)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "send the auditor token as metadata 'authorization: Bearer <token>'")
        try:
            answer = (await ask()).as_dict()
        except InvalidArgument as exc:
            observe("grpc", query, "INVALID_ARGUMENT", started)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        observe("grpc", query, answer["status"], started)
        message = to_message(answer, message_type)
        if answer["status"] in UNREACHABLE:
            log.warning("audit_unreachable", extra={"query": query, "status": answer["status"],
                                                    "detail": answer["detail"]})
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{answer['status']}: {answer['detail']}",
                                trailing_metadata=((REPORT_METADATA_KEY, message.SerializeToString()),))
        return message


def build_grpc_server(auditor: Auditor, token: BearerToken, host: str, port: int,
                      tls: ServerTls | None = None, share_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """The (not yet started) server and the port it bound (`port` 0 picks a free one); TLS only with `tls`;
    `share_port`: replicas on this machine share it (`streamledger.listen`)."""
    server = grpc.aio.server(options=grpc_listen_options(share_port))
    audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(auditor, token), server)
    bound = bind_grpc(server, f"{host}:{port}", tls)
    if not bound:
        raise RuntimeError(f"gRPC server could not bind {host}:{port}")
    return server, bound
