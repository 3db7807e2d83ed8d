"""Inference records without a broker: built from the servicer's pieces, encoded and sent in
batches per partition by the record writer, handed over by the RecordSink to a real writer process.

This module is also that writer process's program (`python -m tests.unit.test_inference_records`):
the real `record_writer.serve` with the fake `Producer` below, as its hello (`FakeWriterHello`) says."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import REGISTRY

from services.inference import record_writer
from services.inference.record_sink import RecordSink
from services.inference.record_writer import RecordWriter, WriterHello
from services.inference.records import PREDICTION, USAGE, prediction_record
from services.inference.tensors import Output
from streamledger import child
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.retry import RetryPolicy

codec = AvroCodec(SchemaRegistry.from_dir())
TOPICS = {PREDICTION: "predictions", USAGE: "usage"}


class Batch:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.room = room
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if self.closed or len(self.records) == self.room:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class Producer:
    """The calls the record writer makes, recorded (and, given a `log` file, appended to it as JSON
    lines, so a test can read what a writer process sent). `deliver=False`: no batch is ever acked;
    `failures`: that many sends fail (`refused`: at once, else in delivery), then they succeed."""

    def __init__(self, partitions: int = 1, room: int = 1000, log: Path | None = None, deliver: bool = True,
                 failures: float = 0, refused: bool = False) -> None:
        self.partitions = partitions
        self.room = room
        self.log = log
        self.deliver = deliver
        self.failures = failures
        self.refused = refused
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.flushed = False

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> Batch:
        return Batch(self.room)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future:
        assert batch.closed, "a batch is complete when handed over"
        failing = self.failures > 0
        self.failures -= 1
        if failing and self.refused:
            raise KafkaConnectionError("broker down")
        delivered = asyncio.get_running_loop().create_future()
        if failing:
            delivered.set_exception(KafkaTimeoutError("not delivered in time"))
            return delivered
        self.sent.append((topic, partition, batch.records))
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps([topic, partition, [[k.decode(), v.hex()] for k, v in batch.records]]) + "\n")
        if self.deliver:
            delivered.set_result(None)
        return delivered

    async def flush(self) -> None:
        self.flushed = True


class FakeWriterHello(WriterHello):
    """The writer's settings, and where its fake producer logs what it sent."""

    log: Path
    deliver: bool = True


def fake_writer(log: Path, deliver: bool = True, queue_size: int = 100) -> RecordSink:
    """A sink whose writer process sends to a `Producer` logging to `log`."""
    hello = FakeWriterHello(bootstrap="unused", topics=TOPICS, linger_seconds=0.01, log=log, deliver=deliver)
    return RecordSink(hello, queue_size=queue_size, program=__name__)


def usage(n: int) -> tuple:
    return (f"h{n}", f"r{n}", "Org1MSP::CN=c", "m", 1, 1, 2, n, n + 1, f"sig{n}", 1_700_000_000_000)


def prediction(n: int) -> tuple:
    outputs = [Output("label", "BYTES", (1,), [b"True"]), Output("probabilities", "FP64", (1, 2), [0.25, 0.75])]
    return (f"p{n}", "m", 3, None, [{"x": 1.5}], outputs, ("label", "probabilities"), {"classes": '["False", "True"]'},
            0.002, 1_700_000_000_000)


def test_a_prediction_record_is_built_from_the_servicers_pieces():
    key, record = prediction_record(prediction(7))
    assert key == "p7"
    assert record["model_id"] == "m" and record["model_version"] == 3 and record["client"] is None
    assert json.loads(record["inputs"]) == [{"x": 1.5}] and record["latency_ms"] == 2.0
    assert json.loads(record["outputs"]) == {"label": ["True"], "probabilities": [[0.25, 0.75]],
                                             "classes": ["False", "True"]}
    assert codec.decode(codec.encode("Prediction", record))["request_id"] == "p7"


FAST = RetryPolicy(attempts=2**31, initial_seconds=0.01, max_seconds=0.02)


async def write(producer: Producer, frames: list[tuple[int, list]], stop_seconds: float = 10.0) -> list:
    acks: list = []
    writer = RecordWriter(producer, codec, TOPICS, acks.append, redelivery=FAST)
    queue: asyncio.Queue = asyncio.Queue()
    for frame in frames + [None]:
        queue.put_nowait(frame)
    await asyncio.wait_for(writer.run(queue, linger=0.01, stop_seconds=stop_seconds), 5)
    return acks


async def test_frames_leave_as_one_batch_per_partition_encoded_in_order_and_are_acknowledged():
    producer = Producer()
    frames = [(seq, [(USAGE, usage(n)) for n in range(seq * 10, seq * 10 + 10)]) for seq in range(3)]
    acks = await write(producer, frames)
    assert len(producer.sent) == 1, "one lingering batch, not one send per record"
    topic, partition, records = producer.sent[0]
    assert (topic, partition) == ("usage", 0)
    assert [codec.decode(value)["request_id"] for _, value in records] == [f"r{n}" for n in range(30)]
    assert [key for key, _ in records] == [f"h{n}".encode() for n in range(30)]
    assert acks == [([0, 1, 2], {"usage": (30, 0)})]


async def test_keys_keep_their_partition_and_full_batches_are_split():
    producer = Producer(partitions=3, room=4)
    await write(producer, [(1, [(USAGE, usage(n)) for n in range(30)] + [(PREDICTION, prediction(n)) for n in range(5)])])
    by_key: dict[bytes, set[int]] = {}
    for _, partition, records in producer.sent:
        assert 1 <= len(records) <= 4
        for key, _ in records:
            by_key.setdefault(key, set()).add(partition)
    assert len(by_key) == 35 and all(len(p) == 1 for p in by_key.values())
    assert len({p for ps in by_key.values() for p in ps}) > 1, "keys spread over the partitions"
    from aiokafka.partitioner import DefaultPartitioner
    assert all(ps == {DefaultPartitioner()(key, [0, 1, 2], [0, 1, 2])} for key, ps in by_key.items()), \
        "each key where the producer's own `send` would put it"


async def test_an_invalid_record_is_skipped_and_counted_failed():
    producer = Producer()
    bad = ("h-bad", "r-bad", "c", "m", "not a version", 1, 2, 0, 0, "", 0)
    acks = await write(producer, [(5, [(USAGE, usage(1)), (USAGE, bad), (USAGE, usage(2))])])
    assert [codec.decode(v)["request_id"] for _, _, records in producer.sent for _, v in records] == ["r1", "r2"]
    assert acks == [([5], {"usage": (2, 1)})]


@pytest.mark.parametrize("refused", [False, True], ids=["failed in delivery", "refused at once"])
async def test_usage_kafka_did_not_take_is_sent_again_until_delivered_predictions_once(refused, inference_log):
    producer = Producer(failures=3, refused=refused)  # the usage batch and the prediction batch fail, then usage again
    acks = await write(producer, [(1, [(USAGE, usage(1)), (USAGE, usage(2))]), (2, [(PREDICTION, prediction(1))])])
    assert [(topic, [codec.decode(v)["request_id"] for _, v in records]) for topic, _, records in producer.sent] == [
        ("usage", ["r1", "r2"])]
    assert acks == [([1, 2], {"usage": (2, 0), "predictions": (0, 1)})]
    assert [r.getMessage() for r in inference_log if r.getMessage().startswith("usage_")] == [
        "usage_not_delivered_yet", "usage_redelivery_failed"]


async def test_at_shutdown_usage_still_undelivered_is_logged_in_full_and_counted_failed(inference_log):
    producer = Producer(failures=float("inf"))
    acks = await write(producer, [(1, [(USAGE, usage(7))])], stop_seconds=0.2)
    assert acks == [([1], {"usage": (0, 1)})]
    lost = [r.usage for r in inference_log if r.getMessage() == "usage_not_recorded"]
    assert [(u["hold_id"], u["request_id"], u["units"], u["receipt_sequence"], u["receipt_signature"]) for u in lost] \
        == [("h7", "r7", 1, 8, "sig7")]


class TimingOut(Producer):
    """A broker that is gone: every delivery fails, the first only `late` seconds after it was sent
    (the producer's request timeout)."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late
        self.attempts = 0

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future:
        self.attempts += 1
        loop = asyncio.get_running_loop()
        delivered = loop.create_future()
        loop.call_later(self.late if self.attempts == 1 else 0, delivered.set_exception, KafkaTimeoutError("gone"))
        return delivered


async def test_usage_whose_first_delivery_fails_after_the_stop_deadline_is_not_sent_again(inference_log):
    """The writer stops even when a batch's first attempt outlives `stop_seconds` (its server was killed
    while the brokers were away): that usage is logged and counted failed, not retried for ever."""
    producer = TimingOut(late=0.5)
    acks = await write(producer, [(1, [(USAGE, usage(7))])], stop_seconds=0.2)
    assert acks == [([1], {"usage": (0, 1)})]
    assert producer.attempts == 1
    lost = [r.usage for r in inference_log if r.getMessage() == "usage_not_recorded"]
    assert [(u["hold_id"], u["request_id"]) for u in lost] == [("h7", "r7")]


def sent_count(topic: str) -> float:
    return REGISTRY.get_sample_value("streamledger_inference_records_total", {"topic": topic}) or 0.0


def written(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [codec.decode(bytes.fromhex(v))["request_id"] for line in lines for _, v in json.loads(line)[2]]


async def test_the_sink_refuses_when_full_and_drain_delivers_everything_through_the_writer_process(tmp_path):
    log = tmp_path / "sent.jsonl"
    before = sent_count("usage")
    async with fake_writer(log, queue_size=3) as sink:
        assert sink.alive
        assert [sink.offer(USAGE, usage(n)) for n in range(4)] == [True, True, True, False]
        await asyncio.wait_for(sink.drain(), 10)
        assert sink.pending() == 0 and written(log) == ["r0", "r1", "r2"]
        assert sent_count("usage") - before == 3, "acknowledged deliveries are counted in the serving process"
        assert sink.offer(USAGE, usage(9)) and sink.offer(PREDICTION, prediction(1))
    assert written(log) == ["r0", "r1", "r2", "r9", "p1"], "leaving the block drains"
    assert not sink.alive


@pytest.fixture
def inference_log():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("streamledger.inference")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


async def test_when_the_writer_dies_the_sink_refuses_and_logs_every_usage_record_not_delivered(tmp_path, inference_log):
    sink = fake_writer(tmp_path / "sent.jsonl", deliver=False)
    await sink.start()
    try:
        assert sink.offer(USAGE, usage(1)) and sink.offer(PREDICTION, prediction(1))
        await asyncio.wait_for(_until(lambda: written(tmp_path / "sent.jsonl") == ["r1", "p1"]), 10)
        assert sink.pending() == 2, "sent but never acknowledged: still counted"
        os.kill(sink.pid, signal.SIGKILL)
        await asyncio.wait_for(sink.died.wait(), 10)
        assert not sink.alive and sink.pending() == 0
        assert not sink.offer(PREDICTION, prediction(2)) and not sink.offer(USAGE, usage(2))
        lost = [r.usage for r in inference_log if r.getMessage() == "usage_not_recorded"]
        assert lost == [{"hold_id": "h1", "request_id": "r1", "client": "Org1MSP::CN=c", "model_id": "m",
                         "model_version": 1, "units": 1, "price": 2, "receipt_units": 1, "receipt_sequence": 2,
                         "receipt_signature": "sig1", "ts": 1_700_000_000_000}]
        (died,) = [r for r in inference_log if r.getMessage() == "record_writer_died"]
        assert (died.records_lost, died.usage_records_lost) == (2, 1) and died.exit_code == -9
        assert sink.failure.exit_code == -9 and "record writer process exited" in str(sink.failure)
    finally:
        await sink.close()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def test_the_server_is_not_ready_without_its_record_writer():
    from services.inference.models import ModelShelf
    from services.inference.protocol import pb
    from services.inference.servicer import InferenceServicer

    class DeadSink:
        alive = False

    ready = asyncio.Event()
    ready.set()
    servicer = InferenceServicer(ModelShelf([]), DeadSink(), ready)
    assert (await servicer.ServerReady(pb.ServerReadyRequest(), None)).ready is False



async def test_a_model_is_not_ready_before_the_snapshots_at_start_are_loaded() -> None:
    """While the server reads the snapshots topic at start its shelf holds older versions on their
    way to the latest: ModelReady says no until they are all loaded, as ServerReady does."""
    from services.inference.protocol import pb
    from services.inference.servicer import InferenceServicer

    class Shelf:
        def ready(self, name: str, version: str) -> bool:
            return name == "phishing-logreg"

    class LiveSink:
        alive = True

    caught_up = asyncio.Event()
    servicer = InferenceServicer(Shelf(), LiveSink(), caught_up)
    asked = pb.ModelReadyRequest(name="phishing-logreg")
    assert (await servicer.ModelReady(asked, None)).ready is False
    caught_up.set()
    assert (await servicer.ModelReady(asked, None)).ready is True
    assert (await servicer.ModelReady(pb.ModelReadyRequest(name="other"), None)).ready is False

if __name__ == "__main__":
    async def _serve(hello: FakeWriterHello, parent: child.Parent) -> None:
        await record_writer.serve(hello, parent, Producer(log=hello.log, deliver=hello.deliver))

    child.run(_serve, FakeWriterHello)
