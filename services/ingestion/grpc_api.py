"""gRPC interface: client-streaming `streamledger.ingest.v1.Ingestion/Ingest` (proto/ingest.proto).

Same validation, partial acceptance and acknowledgements as HTTP. Each frame's valid
events are written and acknowledged before the next frame is read, so gRPC flow control
carries Kafka's back-pressure to the client.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.ingestion.auth import AuthenticationError, key_from_headers
from services.ingestion.intake import IngestResult, Intake
from services.ingestion.metrics import REQUEST_SECONDS, REQUESTS
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import KafkaUnavailableError
from streamledger.listen import grpc_listen_options
from streamledger.logging import get_logger
from streamledger.protos import load
from streamledger.tls import ServerTls, bind_grpc

ingest_pb2, ingest_pb2_grpc = load("ingest.proto")
log = get_logger("ingestion")


def event_from_proto(event: Any) -> dict[str, Any]:
    """A proto `Event` as the dict `validate_event` checks; unset fields stay absent."""
    out: dict[str, Any] = {
        "event_id": event.event_id or None,
        "source": event.source or None,
        "ts": event.ts_millis if event.HasField("ts_millis") else None,
        "features": {name: _value(v) for name, v in event.features.items()},
    }
    if event.tenant:
        out["tenant"] = event.tenant
    if event.HasField("label"):
        out["label"] = _value(event.label)
    return out


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


class IngestionServicer(ingest_pb2_grpc.IngestionServicer):
    def __init__(self, intake: Intake, settings: IngestionSettings) -> None:
        self.intake = intake
        self.settings = settings

    async def Ingest(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC method name
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await self._ingest(request_iterator, context)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            REQUESTS.labels("grpc", code.name).inc()
            REQUEST_SECONDS.labels("grpc").observe(time.perf_counter() - started)

    async def _ingest(self, request_iterator, context: grpc.aio.ServicerContext):
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        try:
            tenant = self.intake.authenticate(key_from_headers(metadata))
        except AuthenticationError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        total = IngestResult()
        seen = 0
        frames = aiter(request_iterator)
        for frame in itertools.count():
            try:
                request = await anext(frames)
            except StopAsyncIteration:
                break
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"frame {frame} is not a streamledger.ingest.v1.IngestRequest ({exc}); "
                    f"the {len(total.event_ids)} events of the frames before it were acknowledged",
                )
            events = [event_from_proto(e) for e in request.events]
            if seen + len(events) > self.settings.ingestion_max_events_per_request:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"stream holds more than the limit of {self.settings.ingestion_max_events_per_request} events; "
                    f"{len(total.event_ids)} were acknowledged before it ({', '.join(total.event_ids[:5])}...)",
                )
            try:
                result = await self.intake.accept(events, tenant, "grpc", first_index=seen)
            except KafkaUnavailableError as exc:
                log.warning("kafka_unavailable", extra={"tenant": tenant, "error": str(exc)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            seen += len(events)
            total.event_ids += result.event_ids
            total.rejected += [_grpc_field_names(r) for r in result.rejected]
        return ingest_pb2.IngestResponse(
            accepted=len(total.event_ids),
            event_ids=total.event_ids,
            rejected=[ingest_pb2.Rejection(index=r.index, field=r.field, error=r.error) for r in total.rejected],
        )


def _grpc_field_names(rejection):
    """Name fields as the proto does (`ts_millis`), so the caller can find them."""
    if rejection.field == "ts":
        return type(rejection)(rejection.index, "ts_millis", rejection.error)
    return rejection


def build_grpc_server(intake: Intake, settings: IngestionSettings,
                      tls: ServerTls | None = None) -> tuple[grpc.aio.Server, int]:
    """The (not yet started) server and the port it bound (`ingestion_grpc_port` 0 picks a free one);
    TLS only with `tls`."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.ingestion_max_body_bytes),
                                      *grpc_listen_options(settings.share_port)])
    ingest_pb2_grpc.add_IngestionServicer_to_server(IngestionServicer(intake, settings), server)
    port = bind_grpc(server, f"{settings.ingestion_http_host}:{settings.ingestion_grpc_port}", tls)
    return server, port
