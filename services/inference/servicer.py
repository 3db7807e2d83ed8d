"""The `inference.GRPCInferenceService` RPCs: requests in, the shelf's models answer.

ModelInfer, step by step: find the model (latest or pinned version) -> rows from the input
tensors -> (paid) charge the caller's hold by the money rule of `credit.py` (the hold id and the
client's latest receipt come in the request metadata `streamledger-hold-id` and
`streamledger-receipt`) -> River predicts -> output tensors -> hand the usage (with the receipt
accepted) and the (sampled) prediction pieces to the record sink, which builds no record here.
Every refusal is a gRPC status whose message names the model, version, tensor or hold at
fault; nothing a caller sends stops the server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError

from services.inference import tls
from services.inference.revocation import Revocations
from services.inference.authorization import (
    AuthorizationError,
    HoldSource,
    client_identity,
)
from services.inference.credit import Charge, CreditMeter
from services.inference.metrics import SERVING
from services.inference.models import (
    InvalidVersion,
    ModelShelf,
    NoSnapshotYet,
    ServedModel,
    UnknownModel,
    UnknownVersion,
)
from services.inference.protocol import pb
from services.inference.record_sink import RecordSink
from services.inference.records import PREDICTION, USAGE
from services.inference.settings import InferenceSettings
from services.inference.tensors import InvalidInput, check_requested, split_head
from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA, Receipt
from streamledger.logging import get_logger

log = get_logger("inference")

_STATUS = {
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    UnknownVersion: grpc.StatusCode.NOT_FOUND,
    InvalidVersion: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NoSnapshotYet: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class Metering:
    """Paid mode: who may call (client CAs by MSP id) and the holds they pay from (the price is each hold's)."""

    meter: CreditMeter
    client_cas: dict[str, x509.Certificate]
    revocations: Revocations = field(default_factory=Revocations)
    clients: dict[bytes, tuple[str, str, x509.Certificate]] = field(default_factory=dict)
    """Client identity (its MSP id, its certificate) by TLS certificate (PEM) already named: a
    connection's calls verify its issuer once; revocation is checked on every call."""

    def client(self, certificate_pem: bytes | None) -> str:
        """`client_identity` of a peer certificate (remembered, a few thousand at most), unless revoked."""
        known = self.clients.get(certificate_pem) if certificate_pem else None
        if known is None:
            identity = client_identity(certificate_pem, self.client_cas)
            known = (identity, identity.split("::", 1)[0], x509.load_pem_x509_certificate(certificate_pem))
            if len(self.clients) >= 4096:
                self.clients.clear()
            self.clients[certificate_pem] = known
        identity, msp_id, certificate = known
        self.revocations.check(msp_id, certificate)
        return identity

    @classmethod
    def of(cls, settings: InferenceSettings, holds: HoldSource, provider: str | None,
           verify: Callable[[str, Receipt], Awaitable[str | None]] | None = None) -> Metering:
        """Paid mode's metering as the settings say, holds read from `holds` (they must pay `provider`),
        receipts checked in the background by `verify` (default: a worker thread, see `CreditMeter`)."""
        meter = CreditMeter(holds, window_units=settings.inference_credit_window_units,
                            reserve_units=settings.inference_reserve_units,
                            cache_seconds=settings.inference_hold_cache_seconds,
                            check_seconds=settings.inference_receipt_check_seconds, provider=provider, verify=verify)
        cas = tls.client_cas(settings)
        return cls(meter, cas, Revocations.load(settings.inference_client_crls, cas))


class InferenceServicer:
    def __init__(self, shelf: ModelShelf, sink: RecordSink, ready: Any, predictions_sample: float = 1.0,
                 metering: Metering | None = None, server_version: str | None = None) -> None:
        self.shelf = shelf
        self.sink = sink
        self.ready = ready
        """Set once the snapshots present at start-up are loaded (an asyncio.Event)."""
        self.predictions_sample = predictions_sample
        self.metering = metering
        self.server_version = server_version or _installed_version()

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Not ready without the record writer: paid requests would be refused, predictions lost.
        return pb.ServerReadyResponse(ready=self.ready.is_set() and self.sink.alive)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Not before the snapshots present at start are loaded: until then the shelf holds older
        # versions on their way to the latest, and a client told "ready" would be served by them.
        return pb.ModelReadyResponse(ready=self.ready.is_set() and self.shelf.ready(request.name, request.version))

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

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The serialized request in, the response as its serialized bytes (see `ResponseWriter`)."""
        started = time.perf_counter()
        charge: Charge | None = None
        client: str | None = None
        model_id = ""
        try:
            model, request_id, rows, requested = self._read(data)
            model_id = model.model_id
            outputs = check_requested(requested, model.output_names, model_id) if requested else model.output_names
            if self.metering is not None:
                client, charge = await self._charge(context, len(rows))
            try:
                prediction = model.predict(rows)
            except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
                raise InvalidInput(f"model {model_id!r} refused the inputs: {type(exc).__name__}: {exc}") from None
        except AuthorizationError as exc:
            SERVING.refused(model_id, exc.code)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except tuple(_STATUS) as exc:
            if charge is not None:
                self.metering.meter.refund(charge)
            status = _STATUS[type(exc)]
            SERVING.refused(model_id or _model_named(data, exc), status.name)
            await context.abort(status, str(exc))

        request_id = request_id or _request_id()
        response = model.responses.write(request_id, prediction, outputs)
        now_ms = int(time.time() * 1000)
        if charge is not None:
            receipt = charge.receipt
            usage = (charge.hold_id, request_id, charge.client, model_id, model.version, charge.units, charge.price,
                     receipt.units if receipt else 0, receipt.sequence if receipt else 0,
                     receipt.signature if receipt else "", now_ms)
            if not self.sink.offer(USAGE, usage):
                self.metering.meter.refund(charge)
                SERVING.refused(model_id, "UNAVAILABLE")
                await context.abort(grpc.StatusCode.UNAVAILABLE, "usage cannot be recorded right now (queue full "
                                    "or record writer down); retry")
        latency = time.perf_counter() - started
        if self.predictions_sample >= 1.0 or random.random() < self.predictions_sample:
            # The raw pieces (records.py): the record writer process builds and encodes the record.
            pieces = (request_id, model_id, model.version, client, rows, prediction.outputs, outputs,
                      prediction.parameters, latency, now_ms)
            if not self.sink.offer(PREDICTION, pieces):
                SERVING.dropped += 1
        SERVING.served(model_id, len(rows), latency)
        return response

    def _read(self, data: bytes) -> tuple[ServedModel, str, list[dict[str, Any]], list[str]]:
        """The model a serialized request asks for, its id, its rows and the output names it requests.

        A request in a layout its model has seen is read from the bytes; any other is parsed
        by protobuf and checked in full (and its layout kept when it can be).
        """
        head = split_head(data)
        if head is not None:
            try:
                model = self.shelf.get(head.model_name, head.model_version)
            except tuple(_STATUS):
                pass  # the general path below names what is wrong
            else:
                known = model.reader.known(head.rest)
                if known is not None:
                    return model, head.id, *known
        request = _decode(data)
        model = self.shelf.get(request.model_name, request.model_version)
        rows = model.reader.rows(request, head.rest if head is not None else None)
        return model, request.id, rows, [o.name for o in request.outputs]

    async def _charge(self, context: grpc.aio.ServicerContext, rows: int) -> tuple[str, Charge]:
        metering = self.metering
        certificates = (context.auth_context() or {}).get("x509_pem_cert")
        client = metering.client(certificates[0] if certificates else None)
        hold = receipt = None
        for key, value in context.invocation_metadata() or ():  # the last of each, as a dict would keep
            if key == HOLD_METADATA:
                hold = value
            elif key == RECEIPT_METADATA:
                receipt = value
        charge = metering.meter.charge_now(hold, client, rows, receipt)
        if charge is None:  # the hold not read yet, or credit to reserve first
            charge = await metering.meter.charge(hold, client, rows, receipt)
        return client, charge


def _installed_version() -> str:
    try:
        return version("streamledger")
    except PackageNotFoundError:
        return "dev"


def _decode(data: bytes) -> Any:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"request is not a ModelInferRequest ({len(data)} bytes): {exc}") from None


def _model_named(data: bytes, error: Exception) -> str:
    """The model a refused request names, as the requests metric labels it ("" for an unknown model)."""
    if isinstance(error, UnknownModel):
        return ""
    try:
        return pb.ModelInferRequest.FromString(data).model_name
    except DecodeError:
        return ""


def _request_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like `uuid.uuid4().hex` at a fraction of its cost.

    The bits come from `random` (seeded by the OS at start), not a system call per request:
    an id must be unique, not secret (knowing one grants nothing).
    """
    value = random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    return f"{value:032x}"


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)

