"""Helpers of the inference tests: models trained with the learning package's own code,
their snapshots on a unique topic of the real Kafka, and the server run in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from river import datasets

from services.inference import app
from services.inference.authorization import HoldSource
from services.inference.settings import InferenceSettings
from services.learning.prequential import OnlineModel
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.snapshots import FORMAT, seal
from streamledger.declarations import load_declarations
from streamledger.lifecycle import run_until
from streamledger.settings import LedgerSettings

codec = AvroCodec(SchemaRegistry.from_dir())

MODELS = """
[[model]]
id = "phishing-logreg"
task = "binary"
source = "phishing"
metrics = ["Accuracy", "ROCAUC"]
pipeline = [
  { class = "preprocessing.StandardScaler" },
  { class = "linear_model.LogisticRegression", params = { optimizer = { class = "optim.SGD", params = { lr = 0.1 } } } },
]

[[model]]
id = "trump-linreg"
task = "regression"
source = "trump_approval"
metrics = ["MAE"]
pipeline = [ { class = "preprocessing.StandardScaler" }, { class = "linear_model.LinearRegression" } ]
"""

PHISHING = [({k: float(v) for k, v in x.items()}, y) for x, y in datasets.Phishing()]
TRUMP = [({k: float(v) for k, v in x.items()}, float(y)) for x, y in datasets.TrumpApproval()]


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inference") / "models.toml"
    path.write_text(MODELS)
    return path


def train(models_file: Path, model_id: str, events: list) -> OnlineModel:
    """A model trained exactly as the learning service trains it (prequential `process`)."""
    declaration = next(d for d in load_declarations(models_file) if d.model_id == model_id)
    online = OnlineModel(declaration)
    for x, y in events:
        online.process(x, y)
    return online


def snapshot_record(model_id: str, version: int, online: OnlineModel) -> dict:
    sealed = seal(online.state())
    return {"model_id": model_id, "version": version, "sha256": sealed.sha256, "format": FORMAT, "offsets": [],
            "events_seen": online.learned, "metrics": online.metric_values(), "model": sealed.data,
            "created": 1_700_000_000_000}


def publish(bootstrap: str, topic: str, records: list[dict]) -> None:
    async def send() -> None:
        await kafka.provision(bootstrap, [kafka.TopicSpec(topic, compacted=True, max_message_bytes=64 * 1024 * 1024)])
        async with kafka.producer(bootstrap, max_request_size=64 * 1024 * 1024) as producer:
            for record in records:
                await producer.send_and_wait(topic, codec.encode("ModelSnapshot", record), key=record["model_id"].encode())
    asyncio.run(send())


def registered(record: dict, user: str = "registry") -> dict:
    """`record` renumbered as the next version of its model on the ledger, registered there with its
    sha256 by `user` (the learning service's identity, the model registrant, by default)."""
    from streamledger.ledger import LedgerClient
    from streamledger.settings import LedgerSettings

    async def register() -> dict:
        async with LedgerClient.connect(LedgerSettings(fabric_user=user)) as ledger:
            latest = await ledger.get_model(record["model_id"], 0)
            version = 1 if latest is None else int(latest["version"]) + 1
            await ledger.register_model(record["model_id"], version, record["sha256"])
            return dict(record, version=version)
    return asyncio.run(register())


async def serve_until(service: app.Inference, stop: asyncio.Event, started: Callable[[int], None]) -> None:
    """Run the inference service as `streamledger serve` does, `stop` standing for the signal;
    `started(port)` once it serves."""
    await run_until(service, stop, on_started=lambda: started(service.port))


class ServerThread:
    """`main(stop, on_started)` (by default the service of `settings`, run by `serve_until`) on its own
    event loop in a thread, so the blocking Triton client can call it; `with ServerThread(...) as server:`."""

    def __init__(self, main: Callable[[asyncio.Event, Callable[[int], None]], Awaitable[None]]) -> None:
        self.main = main
        self.port: int | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def of(cls, settings: InferenceSettings, hold_source: HoldSource | None = None,
           ledger: LedgerSettings | None = None) -> ServerThread:
        return cls(lambda stop, started: serve_until(app.Inference(settings, ledger, hold_source=hold_source),
                                                     stop, started))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()

        def started(port: int) -> None:
            self.port = port
            self._started.set()
        try:
            self._loop.run_until_complete(self.main(self._stop, started))
        except BaseException as exc:  # reported to the test by start()/stop()
            self.error = exc
            self._started.set()

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("inference server did not start")
        if self.error:
            raise self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "inference server did not stop"
        if self.error:
            raise self.error

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"
