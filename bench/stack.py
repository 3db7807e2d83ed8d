"""Figures for the local stack: cold and warm `stack up`, Kafka produce/consume rates,
MongoDB (FerretDB) bulk insert rate. Prints figures only; asserts nothing.

    .venv/bin/python bench/stack.py [--messages 200000] [--cold]

--cold stops the stack and moves its cache aside (to a temporary home) to time a first
install from nothing; without it, "cold" is a start from a stopped stack with a warm cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient

from streamledger import kafka
from streamledger.settings import CommonSettings

CLI = str(Path(sys.executable).with_name("streamledger"))


def timed_up(env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run([CLI, "stack", "up"], check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.monotonic() - start


async def produce_rate(bootstrap: str, topic: str, count: int) -> float:
    value = b"x" * 200
    async with kafka.producer(bootstrap, linger_ms=10) as producer:
        start = time.monotonic()
        pending = []
        for i in range(count):
            pending.append(await producer.send(topic, value, key=str(i).encode()))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return count / (time.monotonic() - start)


async def consume_rate(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=8 * 2**20)
    await consumer.start()
    try:
        seen, start = 0, time.monotonic()
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(v) for v in batch.values())
        return count / (time.monotonic() - start)
    finally:
        await consumer.stop()


async def mongo_rate(url: str, count: int) -> float:
    client: AsyncMongoClient = AsyncMongoClient(url)
    db = client[f"bench_{int(time.time())}"]
    docs = [{"_id": f"e{i}", "tenant": "bench", "ts": i, "v": float(i), "pad": "x" * 150} for i in range(count)]
    try:
        start = time.monotonic()
        for i in range(0, count, 1000):
            await db.events.insert_many(docs[i:i + 1000], ordered=False)
        return count / (time.monotonic() - start)
    finally:
        await client.drop_database(db.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--cold", action="store_true", help="time a first install from an empty cache")
    args = parser.parse_args()
    settings = CommonSettings()

    subprocess.run([CLI, "stack", "down"], check=True, capture_output=True)
    if args.cold:
        with tempfile.TemporaryDirectory() as home:
            cold = timed_up({"STREAMLEDGER_STACK_HOME": home})
            subprocess.run([CLI, "stack", "down"], check=True, capture_output=True,
                           env={**os.environ, "STREAMLEDGER_STACK_HOME": home})
        print(f"stack up, empty cache (download + build + start): {cold:7.1f} s")
    print(f"stack up, stopped stack, warm cache:               {timed_up():7.1f} s")
    print(f"stack up, already running:                         {timed_up():7.2f} s")

    topic = f"bench.stack.{int(time.time())}"
    asyncio.run(kafka.provision(settings.kafka_bootstrap, [kafka.TopicSpec(topic)]))
    produced = asyncio.run(produce_rate(settings.kafka_bootstrap, topic, args.messages))
    consumed = asyncio.run(consume_rate(settings.kafka_bootstrap, topic, args.messages))
    inserted = asyncio.run(mongo_rate(settings.mongo_url, args.documents))
    print(f"aiokafka produce, 200-byte values, acks=all, idempotent: {produced:10,.0f} msg/s")
    print(f"aiokafka consume, same topic:                           {consumed:10,.0f} msg/s")
    print(f"MongoDB wire (FerretDB/SQLite) bulk insert, 1000/batch: {inserted:10,.0f} docs/s")


if __name__ == "__main__":
    main()
