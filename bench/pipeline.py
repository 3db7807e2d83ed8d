"""Events/s of the cleaning and storage services, next to a bare aiokafka consume loop.

    .venv/bin/python bench/pipeline.py [--events 20000]

Needs the local stack (`streamledger stack up`). In one run, on fresh topics:
1. produces N RawEvents to a raw topic;
2. baseline: a bare aiokafka consumer reads that topic end to end (no decoding);
3. in-process: `Cleaner.handle` over the same bytes (decode, rules, hash, encode; no Kafka);
4. `streamledger serve cleaning` as a subprocess: raw -> clean, timed from its start to its
   last output message;
5. baseline again on the clean topic, then `streamledger serve storage` as a subprocess:
   clean -> MongoDB, timed by its committed offsets.
It prints each rate and its ratio to the bare loop on the same topic. On a secured stack the
services run as their own principals (cleaning, storage) on topics under the table's names
(events.raw.bench-<run>, ...); with the stack's bench-only PLAINTEXT listener on
(STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT) the whole run is repeated there, and a table gives
secured / plaintext for each figure. Every rate is the
messages handled divided by the measured wall time it took: the bare loop from its first
fetch to its last (connected beforehand), a service from its `started` log line (faust's
start-up and the dedup table's recovery done) to its last output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.listeners import Listener, compare, listeners  # noqa: E402
from services.cleaning.cleaner import Cleaner  # noqa: E402
from services.cleaning.dedup import DedupWindow  # noqa: E402
from services.cleaning.rules import RuleBook  # noqa: E402
from streamledger import kafka  # noqa: E402
from streamledger.avro import AvroCodec, SchemaRegistry  # noqa: E402
from streamledger.core.records import Consumed  # noqa: E402
from streamledger.kafka import topics as table  # noqa: E402
from streamledger.settings import CommonSettings  # noqa: E402

CODEC = AvroCodec(SchemaRegistry.from_dir())


def raw_event(i: int) -> dict:
    return {
        "event_id": f"bench-{i:08d}",
        "tenant": "acme",
        "source": "bench",
        "ts": 1_767_225_600_000 + i,
        "features": {"X": i * 0.37, "Amount EUR": f"{i % 1000}.5", "member": "yes", "city": "Lyon", "gap": None},
        "label": float(i % 2),
    }


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    async with kafka.producer(bootstrap) as producer:
        for i, value in enumerate(values):
            await producer.send(topic, key=f"bench-{i:08d}".encode(), value=value)
        await producer.flush()


async def bare_consume(bootstrap: str, topic: str, count: int) -> float:
    """Messages/s of a plain aiokafka consumer reading `count` messages from the start, timed
    from its first fetch to its last (connected and positioned before the clock starts)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await consumer.position(tp)
        seen, started = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(messages) for messages in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def service_rate(service: subprocess.Popen, log: Path, progress: Callable[[], Awaitable[int]], count: int,
                       timeout: float) -> float:
    """Units/s of `progress` (polled every 50 ms) from the service's `started` line to all `count` done."""
    deadline = time.monotonic() + timeout
    while '"event": "started"' not in (log.read_text(errors="replace") if log.exists() else ""):
        if service.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem} did not start:\n{log.read_text(errors='replace')[-2000:]}")
        await asyncio.sleep(0.05)
    started = time.perf_counter()
    while (done := await progress()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {count} done after {timeout}s")
        await asyncio.sleep(0.05)
    return count / (time.perf_counter() - started)


async def end_offset(consumer: AIOKafkaConsumer, topic: str) -> int:
    tp = TopicPartition(topic, 0)
    return (await consumer.end_offsets([tp]))[tp]


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    meta = offsets.get(TopicPartition(topic, 0))
    return meta.offset if meta is not None and meta.offset > 0 else 0


def serve(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "streamledger"), "serve", name],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def line(what: str, rate: float, baseline: float | None = None) -> str:
    ratio = f"  {rate / baseline:8.4f}x bare loop on the same topic" if baseline else ""
    return f"{what:<46} {rate:>10,.0f} events/s{ratio}"


async def measure(count: int, listener: Listener) -> dict[str, float]:
    settings = CommonSettings()
    bootstrap, run = settings.kafka_bootstrap, uuid.uuid4().hex[:8]
    rates: dict[str, float] = {}
    print(f"-- {listener.name} listener {listener.bootstrap}")
    topics = {"raw": f"{table.RAW}.bench-{run}", "clean": f"{table.CLEAN}.bench-{run}",
              "dead": f"{table.DEADLETTER}.bench-{run}"}
    await kafka.provision(bootstrap, [kafka.TopicSpec(name) for name in topics.values()])
    values = CODEC.encode_many("RawEvent", (raw_event(i) for i in range(count)))
    await produce(bootstrap, topics["raw"], values)
    print(f"{count:,} RawEvents ({sum(map(len, values)) / count:.0f} bytes each) on {topics['raw']}\n")

    bare_raw = rates["bare aiokafka loop, raw topic"] = await bare_consume(bootstrap, topics["raw"], count)
    print(line("bare aiokafka loop, raw topic", bare_raw))

    cleaner = Cleaner(CODEC, RuleBook(), DedupWindow({}, 3_600_000))
    tp = (topics["raw"], 0)
    started = time.perf_counter()
    for i, value in enumerate(values):
        cleaner.handle(Consumed(tp, topics["raw"], 0, i, None, value, timestamp_ms=0))
    print(line("Cleaner.handle in-process (no Kafka)", count / (time.perf_counter() - started), bare_raw))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    with tempfile.TemporaryDirectory() as scratch:
        env.update({
            "STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap, "STREAMLEDGER_MONGO_URL": settings.mongo_url,
            "STREAMLEDGER_MONGO_DB": f"bench_{run}", "STREAMLEDGER_LOG_LEVEL": "INFO",  # for `started`
            "STREAMLEDGER_CLEANING_RAW_TOPIC": topics["raw"], "STREAMLEDGER_CLEANING_CLEAN_TOPIC": topics["clean"],
            "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": topics["dead"],
            "STREAMLEDGER_CLEANING_GROUP": f"streamledger-cleaning-bench-{run}",
            "STREAMLEDGER_STORAGE_CLEAN_TOPIC": topics["clean"], "STREAMLEDGER_STORAGE_DEADLETTER_TOPIC": topics["dead"],
            "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": f"{table.PREDICTIONS}.bench-{run}",
            "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": f"{table.ANCHORS}.bench-{run}",
            "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": f"{table.SNAPSHOTS}.bench-{run}",
            "STREAMLEDGER_STORAGE_GROUP": f"streamledger-storage-bench-{run}",
        })
        log = Path(scratch) / "cleaning.log"
        cleaning = serve("cleaning", env | kafka.child_environment(settings, username=table.CLEANING), log)
        watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection())
        await watcher.start()
        try:
            rate = await service_rate(cleaning, log, lambda: end_offset(watcher, topics["clean"]), count, 600)
        finally:
            stop(cleaning)
            await watcher.stop()
        rates["cleaning service (faust), raw -> clean"] = rate
        print(line("cleaning service (faust), raw -> clean", rate, bare_raw))

        bare_clean = rates["bare aiokafka loop, clean topic"] = await bare_consume(bootstrap, topics["clean"], count)
        print(line("bare aiokafka loop, clean topic", bare_clean))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
        await admin.start()
        log = Path(scratch) / "storage.log"
        storage = serve("storage", env | kafka.child_environment(settings, username=table.STORAGE), log)
        try:
            group = env["STREAMLEDGER_STORAGE_GROUP"]
            rate = await service_rate(storage, log, lambda: committed(admin, group, topics["clean"]), count, 600)
        finally:
            stop(storage)
            await admin.close()
        rates["storage service, clean -> MongoDB"] = rate
        print(line("storage service, clean -> MongoDB (FerretDB)", rate, bare_clean))

    client = AsyncMongoClient(settings.mongo_url)
    await client.drop_database(f"bench_{run}")
    await client.close()
    return rates


async def main(count: int, plaintext_port: int | None) -> None:
    rates = {}
    for listener in listeners(plaintext_port):
        with listener.active():
            rates[listener.name] = await measure(count, listener)
    print(compare(rates))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--plaintext-port", type=int, default=None,
                        help="the stack's bench-only PLAINTEXT listener (default: STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.plaintext_port))
