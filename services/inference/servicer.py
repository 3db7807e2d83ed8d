"""The `inference.GRPCInferenceService` RPCs: requests in, the shelf's models answer.

ModelInfer, step by step: find the model (latest or pinned version) -> rows from the input
tensors -> (paid) charge the caller's hold -> River predicts -> output tensors -> queue the
usage and the (sampled) prediction records. Every refusal is a gRPC status whose message
names the model, version, tensor or hold at fault; nothing a caller sends stops the server.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from services.common import metrics
from services.common.logging import get_logger
from services.inference.authorization import AuthorizationError, Charge, HoldAuthorizer, client_identity
from services.inference.models import (InvalidVersion, ModelShelf, NoSnapshotYet, UnknownModel, UnknownVersion)
from services.inference.protocol import pb
from services.inference.records import RecordSink
from services.inference.tensors import InvalidInput, check_requested, output_values, put_outputs, rows_from_request

log = get_logger("inference")
REQUESTS = metrics.counter("inference", "requests", "ModelInfer requests", ("model_id", "status"))
ROWS = metrics.counter("inference", "rows", "Rows predicted", ("model_id",))
LATENCY = metrics.seconds("inference", "request", "ModelInfer server-side latency")
DROPPED = metrics.counter("inference", "predictions_dropped", "Prediction records dropped (queue full)")
HOLD_METADATA = "streamledger-hold-id"

_STATUS = {
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    UnknownVersion: grpc.StatusCode.NOT_FOUND,
    InvalidVersion: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NoSnapshotYet: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class Metering:
    """Paid mode: who may call (client CAs by MSP id), the holds they pay from, and the price."""

    authorizer: HoldAuthorizer
    client_cas: dict[str, x509.Certificate]
    price_per_row: int
    usage_topic: str


class InferenceServicer:
    def __init__(self, shelf: ModelShelf, sink: RecordSink, ready: Any, predictions_topic: str,
                 predictions_sample: float = 1.0, metering: Metering | None = None,
                 server_version: str = "0.1.0") -> None:
        self.shelf = shelf
        self.sink = sink
        self.ready = ready
        """Set once the snapshots present at start-up are loaded (an asyncio.Event)."""
        self.predictions_topic = predictions_topic
        self.predictions_sample = predictions_sample
        self.metering = metering
        self.server_version = server_version

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.ready.is_set())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self.shelf.ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="streamledger-inference", version=self.server_version, extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            model = self.shelf.get(request.name, request.version)
        except tuple(_STATUS) as exc:
            await context.abort(_STATUS[type(exc)], str(exc))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.model_id,
            versions=[str(v) for v in self.shelf.versions(model.model_id)],
            platform="river",
            inputs=[tensor(name=name, datatype=datatype, shape=[-1]) for name, datatype in model.features],
            outputs=[tensor(name=name, datatype=datatype, shape=list(shape))
                     for name, datatype, shape in model.output_metadata()],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        model_id = request.model_name
        charge: Charge | None = None
        client: str | None = None
        try:
            model = self.shelf.get(model_id, request.model_version)
            rows = rows_from_request(request, model.features)
            outputs = check_requested([o.name for o in request.outputs], model.output_names, model.model_id)
            if self.metering is not None:
                client, charge = await self._charge(context, len(rows))
            try:
                prediction = model.predict(rows)
            except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
                raise InvalidInput(f"model {model_id!r} refused the inputs: {type(exc).__name__}: {exc}") from None
        except AuthorizationError as exc:
            REQUESTS.labels(model_id, exc.code).inc()
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except tuple(_STATUS) as exc:
            if charge is not None:
                self.metering.authorizer.refund(charge)
            status = _STATUS[type(exc)]
            REQUESTS.labels(model_id if not isinstance(exc, UnknownModel) else "", status.name).inc()
            await context.abort(status, str(exc))

        request_id = request.id or uuid.uuid4().hex
        response = pb.ModelInferResponse(model_name=model.model_id, model_version=str(model.version), id=request_id)
        for key, value in prediction.parameters.items():
            response.parameters[key].string_param = value
        put_outputs(response, prediction.outputs, outputs)
        now_ms = int(time.time() * 1000)
        if charge is not None:
            usage = {"hold_id": charge.hold_id, "request_id": request_id, "client": charge.client,
                     "model_id": model.model_id, "model_version": model.version, "units": charge.units,
                     "price": charge.price, "ts": now_ms}
            if not self.sink.offer(self.metering.usage_topic, "UsageRecord", charge.hold_id, usage):
                self.metering.authorizer.refund(charge)
                REQUESTS.labels(model_id, "UNAVAILABLE").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, "usage cannot be recorded right now (queue full); retry")
        latency = time.perf_counter() - started
        if self.predictions_sample >= 1.0 or random.random() < self.predictions_sample:
            record = {
                "request_id": request_id, "model_id": model.model_id, "model_version": model.version,
                "client": client, "inputs": json.dumps(rows), "latency_ms": latency * 1000, "ts": now_ms,
                "outputs": json.dumps({**{o.name: output_values(o) for o in prediction.outputs if o.name in outputs},
                                       **{k: json.loads(v) for k, v in prediction.parameters.items()}}),
            }
            if not self.sink.offer(self.predictions_topic, "Prediction", request_id, record):
                DROPPED.inc()
        REQUESTS.labels(model_id, "OK").inc()
        ROWS.labels(model_id).inc(len(rows))
        LATENCY.observe(latency)
        return response

    async def _charge(self, context: grpc.aio.ServicerContext, rows: int) -> tuple[str, Charge]:
        metering = self.metering
        certificates = (context.auth_context() or {}).get("x509_pem_cert") or [None]
        client = client_identity(certificates[0], metering.client_cas)
        hold_id = dict(context.invocation_metadata() or ()).get(HOLD_METADATA)
        return client, await metering.authorizer.charge(hold_id, client, rows, metering.price_per_row)
