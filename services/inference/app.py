"""`streamledger serve inference`: the Open Inference Protocol (KServe V2) over gRPC on 127.0.0.1:8001.

    models.snapshots --> verify sha256, unpickle safely --> ModelShelf (latest + recent versions)
                                                               |
    gRPC ModelInfer --> tensors -> rows --> (paid: mTLS identity, hold) --> River --> response
                                                               +--> RecordSink --> record writer process
                                                                    --> predictions (sampled), usage (paid)

Paid mode (`STREAMLEDGER_INFERENCE_MODE=paid`) reads holds from the ledger: `serve` connects
a `LedgerClient` (the `STREAMLEDGER_FABRIC_*` settings of `LedgerSettings`), learns this
server's account from `WhoAmI` (holds must name it as provider) and passes a
`LedgerHoldSource` to `run`. Free mode never touches the ledger.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc
from cryptography import x509

from streamledger import metrics
from streamledger.avro import AvroCodec, CodecError, SchemaRegistry
from streamledger import kafka
from streamledger.kafka import topics
from streamledger import lifecycle
from streamledger.lifecycle import Loop
from streamledger.logging import get_logger
from services.inference import protocol
from services.inference.authorization import HoldAuthorizer, HoldSource
from services.inference.ledger_holds import LedgerHoldSource
from services.inference.models import ModelShelf, SnapshotRefused, UnknownModel, load_snapshot
from services.inference.record_sink import RecordSink, RecordWriterDied
from services.inference.record_writer import WriterSettings
from services.inference.records import PREDICTION, USAGE
from services.inference.servicer import InferenceServicer, Metering
from services.inference.settings import InferenceSettings
from services.inference.snapshot_feed import follow_snapshots
from streamledger.core.models import load_declarations
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings

log = get_logger("inference")
LOADED = metrics.counter("inference", "snapshots_loaded", "Snapshots verified and served", ("model_id",))
REFUSED = metrics.counter("inference", "snapshots_refused", "Snapshots refused", ("reason",))
SERVED_VERSION = metrics.gauge("inference", "model_version", "Latest version served", ("model_id",))


async def serve(settings: InferenceSettings, ledger_settings: LedgerSettings, stop: asyncio.Event,
                on_started: Callable[[int], None] | None = None) -> None:
    """`run` with the hold source of the mode: none for free, the ledger for paid."""
    if settings.inference_mode == "free":
        await run(settings, stop, on_started=on_started)
        return
    async with LedgerClient.connect(ledger_settings) as ledger:
        provider = (await ledger.who_am_i())["Account"]  # fails fast when the ledger is unreachable
        log.info("ledger_connected", extra={"peer": ledger_settings.fabric_peer_endpoint, "provider": provider})
        await run(settings, stop, LedgerHoldSource(ledger), on_started, provider=provider)


async def run(settings: InferenceSettings, stop: asyncio.Event, hold_source: HoldSource | None = None,
              on_started: Callable[[int], None] | None = None, provider: str | None = None) -> None:
    """Serve until `stop` is set; `on_started(port)` is called once the port is bound. In paid
    mode holds come from `hold_source`, and must pay `provider` when it is given."""
    shelf = ModelShelf(load_declarations(settings.inference_models_file), settings.inference_versions_kept)
    codec = AvroCodec(SchemaRegistry.from_dir())
    bootstrap = settings.kafka_bootstrap
    metering = _metering(settings, hold_source, provider)
    out_topics = {PREDICTION: settings.inference_predictions_topic}
    if metering:
        out_topics[USAGE] = settings.inference_usage_topic
    await kafka.provision(bootstrap, [kafka.spec(topics.PREDICTIONS, settings.inference_predictions_topic),
                                      kafka.spec(topics.USAGE, settings.inference_usage_topic),
                                      kafka.spec(topics.SNAPSHOTS, settings.inference_snapshot_topic)])

    async def on_snapshot(record: dict[str, Any]) -> None:
        try:
            declaration = shelf.declaration(record["model_id"])
            # Unpickling a large model takes a while: off the loop, so requests keep flowing.
            model = await asyncio.to_thread(load_snapshot, record, declaration)
        except UnknownModel:
            log.info("snapshot_ignored", extra={"model_id": record["model_id"], "why": "not declared here"})
            return
        except SnapshotRefused as exc:
            REFUSED.labels(exc.reason).inc()
            log.error("snapshot_refused", extra={"reason": exc.reason, "error": str(exc)})
            return
        if shelf.offer(model):
            SERVED_VERSION.labels(model.model_id).set(model.version)
        LOADED.labels(model.model_id).inc()
        log.info("model_loaded", extra={"model_id": model.model_id, "version": model.version, "sha256": model.sha256,
                                        "features": len(model.features)})

    def on_undecodable(error: CodecError) -> None:
        REFUSED.labels(error.reason).inc()
        log.error("snapshot_refused", extra={"reason": error.reason, "error": str(error)})

    ready = asyncio.Event()
    limit = settings.inference_max_request_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    writer = WriterSettings.of(bootstrap, out_topics, settings.inference_records_linger_seconds, settings.log_level)
    # Leaving the block drains: every queued usage and prediction record is delivered, then the writer exits.
    async with RecordSink(writer, settings.inference_queue_size) as sink:
        protocol.add_servicer(server, InferenceServicer(
            shelf, sink, ready, settings.inference_predictions_sample, metering, _version()))
        address = f"{settings.inference_host}:{settings.inference_port}"
        port = server.add_secure_port(address, _server_credentials(settings)) if metering else server.add_insecure_port(address)
        freezing = asyncio.create_task(_freeze_when_ready(ready))
        following = asyncio.create_task(follow_snapshots(bootstrap, settings.inference_snapshot_topic, codec,
                                                         on_snapshot, on_undecodable, ready, stop))
        await server.start()
        log.info("inference_started", extra={"port": port, "mode": settings.inference_mode,
                                             "models": list(shelf.declarations)})
        if on_started is not None:
            on_started(port)
        try:
            await _until(stop, following, sink)
        finally:
            await server.stop(grace=5.0)  # requests in flight finish
            following.cancel()
            freezing.cancel()
            await asyncio.gather(following, freezing, return_exceptions=True)
    log.info("inference_stopped")


async def _freeze_when_ready(ready: asyncio.Event) -> None:
    """Once the start-up snapshots are loaded, move every object then alive (interpreter, libraries,
    models) out of the cyclic GC's reach: a full collection then walks only what serving made, and
    takes a few milliseconds instead of a tail-latency spike of a hundred."""
    await ready.wait()
    gc.freeze()


async def _until(stop: asyncio.Event, following: asyncio.Task, sink: RecordSink) -> None:
    """Wait for `stop`; if the snapshot follower or the record writer dies first, raise (the server must not
    go stale silently, nor serve without recording)."""
    stopping = asyncio.create_task(stop.wait())
    writer_died = asyncio.create_task(sink.died.wait())
    done, _ = await asyncio.wait({stopping, following, writer_died}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    writer_died.cancel()
    if stop.is_set():
        return
    if following in done:
        following.result()
        raise RuntimeError("the snapshot follower stopped unexpectedly")
    raise RecordWriterDied("the record writer process ended; the server stops rather than serve unrecorded")


def _metering(settings: InferenceSettings, hold_source: HoldSource | None, provider: str | None) -> Metering | None:
    if settings.inference_mode == "free":
        return None
    if hold_source is None:
        raise RuntimeError("paid mode needs a HoldSource reading holds from the ledger: start it with `serve`, "
                           "which connects the LedgerClient, or pass one to `run`")
    cas = {msp: x509.load_pem_x509_certificate(path.read_bytes()) for msp, path in settings.inference_client_cas.items()}
    return Metering(HoldAuthorizer(hold_source, settings.inference_hold_cache_seconds, provider=provider), cas,
                    settings.inference_price_per_row)


def _server_credentials(settings: InferenceSettings) -> grpc.ServerCredentials:
    roots = b"".join(path.read_bytes() for path in settings.inference_client_cas.values())
    return grpc.ssl_server_credentials(
        [(settings.inference_tls_key.read_bytes(), settings.inference_tls_cert.read_bytes())],
        root_certificates=roots, require_client_auth=True)


def _version() -> str:
    try:
        return version("streamledger")
    except PackageNotFoundError:
        return "dev"


def main() -> None:
    lifecycle.serve("inference", InferenceSettings,
                    lambda settings: Loop.of(lambda stop: serve(settings, LedgerSettings(), stop)))
