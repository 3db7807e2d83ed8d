"""`streamledger serve inference`: the Open Inference Protocol (KServe V2) over gRPC on 127.0.0.1:8001.

    models.snapshots --> follow_snapshots: ledger vouches? sha256, unpickle safely --> ModelShelf (latest + recent)
    gRPC ModelInfer --> InferenceServicer: tensors -> rows --> (paid: mTLS identity, hold) --> River
                                           +--> RecordSink --> record writer process --> predictions, usage

Paid mode (`STREAMLEDGER_INFERENCE_MODE=paid`, the default) reads and reserves holds on the
ledger (`STREAMLEDGER_FABRIC_*`) as its own identity, `inference` (provider), in a child process
(`hold_process.py`: the gateway client's CPU stays off the serving loop), and learns with
`WhoAmI` the account it acts for: holds must pay that account (`ActsFor`). A request is served
within the client's latest signed receipt plus the credit window and within credit this server
reserved (`credit.py`). An identity without the provider role cannot start the service. Free mode never touches the
ledger for requests; it serves plaintext, or TLS when `STREAMLEDGER_INFERENCE_TLS_CERT` and `_KEY` are set
(mutual TLS with `STREAMLEDGER_INFERENCE_CLIENT_CAS`: nobody is metered, the handshake costs as in paid mode).

Snapshots: whenever a ledger is configured (paid mode; `STREAMLEDGER_INFERENCE_SNAPSHOT_LEDGER=true` in
free mode, as the demo runs) a snapshot is loaded only if the ledger's `GetModel` holds exactly its
sha256, registered by the model registrant (`STREAMLEDGER_INFERENCE_SNAPSHOT_REGISTRANT`, by default the
local identity `registry`); read as `inference`. Without one the service warns at start and
`streamledger_inference_snapshots_unverified` is 1. If the snapshot
follower, the record writer or the hold process dies, the service stops: it must not go stale
silently, nor serve unrecorded or unmetered.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from services.inference import protocol, tls
from services.inference.authorization import HoldSource
from services.inference.hold_process import HoldHello, HoldProcess
from services.inference.models import ModelShelf
from services.inference.record_sink import RecordSink
from services.inference.record_writer import WriterHello
from services.inference.servicer import InferenceServicer, Metering
from services.inference.settings import InferenceSettings
from services.inference.snapshot_feed import follow_snapshots
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import DeclarationError
from streamledger.declarations import load_declarations
from streamledger.ledger import LedgerClient
from streamledger.lifecycle import Loop, StartError, serve
from streamledger.logging import get_logger
from streamledger.settings import LedgerSettings
from streamledger.snapshot_vouching import SnapshotVouching, local_registrant, wait_for

log = get_logger("inference")
UNVERIFIED = metrics.gauge("inference", "snapshots_unverified",
                           "1: no ledger vouches for snapshots (free mode without STREAMLEDGER_INFERENCE_SNAPSHOT_LEDGER)")
IDENTITY = "inference"
"""The local ledger identity paid mode acts as (deploy/fabric/identities.yaml): a provider."""


class Inference(Loop):
    def __init__(self, settings: InferenceSettings, ledger: LedgerSettings | None = None, *,
                 hold_source: HoldSource | None = None, provider: str | None = None) -> None:
        """Paid mode reads holds from `hold_source` (default: the ledger at `ledger`, as the identity
        `inference`, whose `ActsFor` names `provider`)."""
        super().__init__()
        self.settings, self.ledger, self.hold_source, self.provider = settings, ledger, hold_source, provider
        self.resources = AsyncExitStack()
        self.server, self.following, self.port, self.ledger_client = None, None, None, None
        self.hold_process: HoldProcess | None = None
        """Paid mode's holds, read and reserved in a child process (unless `hold_source` was given)."""
        """The gRPC server, the snapshot follower, the port served on (`inference_port` 0: a free one), and
        the ledger client (paid mode's holds, snapshots' vouching)."""

    async def start(self) -> None:
        s = self.settings
        try:
            shelf = ModelShelf(load_declarations(s.inference_models_file), s.inference_versions_kept)
        except DeclarationError as exc:
            raise StartError(f"STREAMLEDGER_INFERENCE_MODELS_FILE={s.inference_models_file}: {exc}") from None
        credentials = tls.server_credentials(s)  # files readable: fail fast
        ready = asyncio.Event()
        try:
            metering = await self._metering()  # paid: the ledger identity first, refused without its role
            vouching = await self._vouching()  # with a ledger: who vouches for snapshots
            await kafka.provision(s.kafka_bootstrap, s.topic_specs())
            self.sink = await self.resources.enter_async_context(RecordSink(WriterHello.of(s), s.inference_queue_size))
            servicer = InferenceServicer(shelf, self.sink, ready, s.inference_predictions_sample, metering)
            self.server, self.port = protocol.server(servicer, f"{s.inference_host}:{s.inference_port}", credentials,
                                                     s.inference_max_request_bytes, s.share_port)
            self.following = asyncio.create_task(follow_snapshots(
                s.kafka_bootstrap, s.inference_snapshot_topic, AvroCodec(SchemaRegistry.from_dir()), shelf, ready,
                self.stopping, vouching))
            await self.server.start()
        except BaseException:
            await self.stop()
            raise
        log.info("inference_started", extra={"port": self.port, "mode": s.inference_mode, "models": list(shelf.declarations)})

    async def _metering(self) -> Metering | None:
        if self.settings.inference_mode == "free":
            return None
        if self.hold_source is None:
            ledger = await self._ledger_client()
            me = await ledger.require_role("provider")  # fails fast when the ledger is unreachable
            self.provider = me["ActsFor"]  # the account the holds pay, which this identity serves for
            log.info("ledger_connected", extra={"identity": ledger.identity, "account": me["Account"],
                                                "provider": self.provider})
            self.hold_process = await self.resources.enter_async_context(HoldProcess(HoldHello.of(
                self.ledger or LedgerSettings(), IDENTITY, self.settings.log_level)))
            self.hold_source = self.hold_process
        return Metering.of(self.settings, self.hold_source, self.provider,
                           self.hold_process.verify if self.hold_process is not None else None)

    async def _ledger_client(self) -> LedgerClient:
        """The service's one ledger client, as its identity `inference` (holds, and vouching for snapshots)."""
        if self.ledger_client is None:
            self.ledger_client = await self.resources.enter_async_context(
                LedgerClient.connect(self.ledger or LedgerSettings(), service_identity=IDENTITY))
        return self.ledger_client

    async def _vouching(self) -> SnapshotVouching | None:
        s = self.settings
        if not s.snapshots_vouched:
            UNVERIFIED.set(1)
            log.warning("snapshots_unverified", extra={
                "why": f"no ledger vouches for snapshots ({s.inference_mode} mode, STREAMLEDGER_INFERENCE_SNAPSHOT_LEDGER "
                       f"{'unset' if s.inference_snapshot_ledger is None else 'false'})",
                "risk": "a snapshot rewritten with its own hash on the snapshots topic would be served"})
            return None
        UNVERIFIED.set(0)
        registrant = s.inference_snapshot_registrant
        if not registrant:
            try:
                registrant = local_registrant(self.ledger or LedgerSettings())
            except FileNotFoundError as exc:
                raise StartError(f"snapshots are vouched for by the ledger, but {exc}: set "
                                 "STREAMLEDGER_INFERENCE_SNAPSHOT_REGISTRANT to the account that registers them "
                                 "(<MSP id>::<certificate subject>)") from None
        ledger = await self._ledger_client()
        me = await ledger.who_am_i()  # fails fast when the ledger is unreachable
        log.info("snapshots_vouched_by_ledger", extra={"identity": ledger.identity, "account": me["Account"],
                                                       "registrant": registrant})
        return SnapshotVouching(ledger, registrant, wait_for(s.inference_snapshot_registration_wait_seconds))

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve until `stopping` is set; raise if the snapshot follower, the record writer or the hold process
        ends first."""
        stopped, writer_died = asyncio.create_task(stopping.wait()), asyncio.create_task(self.sink.died.wait())
        watched = {stopped, self.following, writer_died}
        if self.hold_process is not None:
            holds_died = asyncio.create_task(self.hold_process.died.wait())
            watched.add(holds_died)
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in watched - {self.following}:
            task.cancel()
        if stopping.is_set():
            return
        if self.following in done:
            self.following.result()
            raise RuntimeError("the snapshot follower stopped unexpectedly")
        if self.sink.failure is not None:
            raise self.sink.failure  # ChildDied, with the writer's exit code
        raise self.hold_process.failure

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=5.0)  # requests in flight finish
        if self.following is not None:
            self.following.cancel()
            await asyncio.gather(self.following, return_exceptions=True)
        await self.resources.aclose()  # the record sink delivers what it holds (usage retried), the ledger closes
        log.info("inference_stopped")


def main() -> None:
    serve("inference", InferenceSettings, Inference)
