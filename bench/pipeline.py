"""Events/s of the cleaning and storage services, next to a bare aiokafka consume loop.

    .venv/bin/python bench/pipeline.py [--events 20000]

Needs the local stack (`streamledger stack up`). In one run, on fresh topics:
1. produces N RawEvents to a raw topic;
2. baseline: a bare aiokafka consumer reads that topic end to end (no decoding);
3. in-process: `Cleaner.handle` over the same bytes (decode, rules, hash, encode; no Kafka);
4. `streamledger serve cleaning` as a subprocess: raw -> clean, timed from its first to its
   last output message (faust's start-up is left out);
5. baseline again on the clean topic, then `streamledger serve storage` as a subprocess:
   clean -> MongoDB, timed by its committed offsets.
It prints each rate and its ratio to the bare loop on the same topic.
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

from services.cleaning.cleaner import Cleaner, RawMessage  # noqa: E402
from services.cleaning.dedup import DedupWindow  # noqa: E402
from services.cleaning.rules import RuleBook  # noqa: E402
from streamledger.avro import AvroCodec, SchemaRegistry  # noqa: E402
from streamledger import kafka  # noqa: E402
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
    """Seconds a plain aiokafka consumer takes to read `count` messages from the start."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batches and started is None:
                started = time.perf_counter()
            seen += sum(len(messages) for messages in batches.values())
        return time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()


async def timed_progress(progress: Callable[[], Awaitable[int]], count: int, timeout: float) -> float:
    """Seconds from the first to the last of `count` units of progress (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    first_at, first_done = None, 0
    while True:
        done = await progress()
        now = time.perf_counter()
        if done and first_at is None:
            first_at, first_done = now, done
        if done >= count:
            # Scale to the whole count: the units done before the first poll saw any are not timed.
            return (now - first_at) * count / max(count - first_done, 1) if first_at else 0.0
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {count} done after {timeout}s")
        await asyncio.sleep(0.1)


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


def line(what: str, count: int, seconds: float, baseline: float | None = None) -> str:
    rate = count / seconds if seconds else float("inf")
    ratio = f"  {rate / baseline:8.4f}x bare loop on the same topic" if baseline else ""
    return f"{what:<46} {rate:>10,.0f} events/s{ratio}"


async def main(count: int) -> None:
    settings = CommonSettings()
    bootstrap, run = settings.kafka_bootstrap, uuid.uuid4().hex[:8]
    topics = {"raw": f"bench-raw-{run}", "clean": f"bench-clean-{run}", "dead": f"bench-dead-{run}"}
    await kafka.provision(bootstrap, [kafka.TopicSpec(name) for name in topics.values()])
    values = CODEC.encode_many("RawEvent", (raw_event(i) for i in range(count)))
    await produce(bootstrap, topics["raw"], values)
    print(f"{count:,} RawEvents ({sum(map(len, values)) / count:.0f} bytes each) on {topics['raw']}\n")

    bare_raw = count / await bare_consume(bootstrap, topics["raw"], count)
    print(line("bare aiokafka loop, raw topic", count, count / bare_raw))

    cleaner = Cleaner(CODEC, RuleBook(), DedupWindow({}, 3_600_000))
    started = time.perf_counter()
    for i, value in enumerate(values):
        cleaner.handle(RawMessage(topics["raw"], 0, i, None, value, 0))
    print(line("Cleaner.handle in-process (no Kafka)", count, time.perf_counter() - started, bare_raw))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    with tempfile.TemporaryDirectory() as scratch:
        env.update({
            "STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap, "STREAMLEDGER_MONGO_URL": settings.mongo_url,
            "STREAMLEDGER_MONGO_DB": f"bench_{run}", "STREAMLEDGER_RAW_TOPIC": topics["raw"],
            "STREAMLEDGER_CLEAN_TOPIC": topics["clean"], "STREAMLEDGER_DEADLETTER_TOPIC": topics["dead"],
            "STREAMLEDGER_PREDICTIONS_TOPIC": f"bench-pred-{run}", "STREAMLEDGER_ANCHORS_TOPIC": f"bench-anch-{run}",
            "STREAMLEDGER_SNAPSHOTS_TOPIC": f"bench-snap-{run}", "STREAMLEDGER_CLEANING_GROUP": f"bench-cleaning-{run}",
            "STREAMLEDGER_STORAGE_GROUP": f"bench-storage-{run}", "STREAMLEDGER_CLEANING_DATA_DIR": scratch,
            "STREAMLEDGER_LOG_LEVEL": "WARNING",
        })
        cleaning = serve("cleaning", env, Path(scratch) / "cleaning.log")
        watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await watcher.start()
        try:
            seconds = await timed_progress(lambda: end_offset(watcher, topics["clean"]), count, 600)
        finally:
            stop(cleaning)
            await watcher.stop()
        print(line("cleaning service (faust), raw -> clean", count, seconds, bare_raw))

        bare_clean = count / await bare_consume(bootstrap, topics["clean"], count)
        print(line("bare aiokafka loop, clean topic", count, count / bare_clean))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        storage = serve("storage", env, Path(scratch) / "storage.log")
        try:
            group = env["STREAMLEDGER_STORAGE_GROUP"]
            seconds = await timed_progress(lambda: committed(admin, group, topics["clean"]), count, 600)
        finally:
            stop(storage)
            await admin.close()
        print(line("storage service, clean -> MongoDB (FerretDB)", count, seconds, bare_clean))

    client = AsyncMongoClient(settings.mongo_url)
    await client.drop_database(f"bench_{run}")
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().events))
