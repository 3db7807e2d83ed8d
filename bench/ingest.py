"""Ingestion throughput next to the raw producer, measured in the same run. Prints figures only.

    .venv/bin/python bench/ingest.py [--events 50000] [--seconds 4] [--concurrency 1,4,16] [--batch 100]

1. raw: aiokafka (the same reliable producer settings as the backfill) sending pre-encoded
   RawEvent bytes with `send()`, every future awaited: the baseline of the issue. Printed
   next to it, the same bytes through aiokafka's batch API (`send_batch`), which the
   ingestion writer uses: the ceiling for our own path.
2. backfill: `streamledger ingest`'s engine on a CSV of --events rows (read, type,
   validate, encode, produce, acknowledged). Goal: >= 50% of the raw rate.
3. http: `streamledger serve ingestion` in its own process; clients POST JSON batches of
   --batch events at each concurrency for --seconds; only acknowledged events count.

Each run writes to fresh topics (events.raw.bench.*.<random>) so results never mix. On a
secured stack everything runs as the ingestion service's principal (its ACLs cover those
topics); with the stack's bench-only PLAINTEXT listener on (STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT),
the whole run is repeated there and a table gives secured / plaintext for each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from aiokafka.partitioner import DefaultPartitioner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.listeners import Listener, compare, listeners  # noqa: E402
from services.ingestion.auth import hash_key  # noqa: E402
from services.ingestion.backfill import BackfillOptions, backfill  # noqa: E402
from services.ingestion.settings import IngestionSettings  # noqa: E402
from services.ingestion.validation import validate_event  # noqa: E402
from streamledger import kafka  # noqa: E402
from streamledger.avro import AvroCodec, SchemaRegistry  # noqa: E402
from streamledger.kafka import topics  # noqa: E402

CLI = str(Path(sys.executable).with_name("streamledger"))
KEY = "bench-key-" + uuid.uuid4().hex
PREFIX = f"{topics.RAW}.bench"
"""Under the raw topic, so the ingestion principal's ACLs allow the bench's topics."""


def sample_event(i: int, rng: random.Random) -> dict:
    return {"event_id": f"b-{uuid.uuid4().hex}", "source": "bench", "ts": 1_700_000_000_000 + i,
            "features": {"amount": round(rng.uniform(1, 500), 2), "merchant": f"m{i % 97}", "card_present": i % 3 > 0},
            "label": i % 50 == 0}


def pre_encoded(count: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(1)
    codec = AvroCodec(SchemaRegistry.from_dir())
    records = [validate_event(sample_event(i, rng), "bench") for i in range(count)]
    return [r["event_id"].encode() for r in records], codec.encode_many("RawEvent", records)


async def raw_send_rate(bootstrap: str, keys: list[bytes], values: list[bytes]) -> float:
    """The plain aiokafka way: `send(key, value)` per record, then await every future."""
    topic = f"{PREFIX}.raw.{uuid.uuid4().hex[:8]}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=3)])
    async with kafka.producer(bootstrap, linger_ms=20, max_batch_size=1 << 20) as producer:
        start = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in zip(keys, values)]
        await asyncio.gather(*futures)
        return len(keys) / (time.perf_counter() - start)


async def raw_batch_rate(bootstrap: str, keys: list[bytes], values: list[bytes]) -> float:
    """aiokafka's batch API (`create_batch`/`send_batch`), the path the ingestion writer uses."""
    topic = f"{PREFIX}.rawbatch.{uuid.uuid4().hex[:8]}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=3)])
    partitioner = DefaultPartitioner()
    async with kafka.producer(bootstrap, linger_ms=20, max_batch_size=1 << 20) as producer:
        start = time.perf_counter()
        partitions = sorted(await producer.partitions_for(topic))
        batches = {p: producer.create_batch() for p in partitions}
        futures = []
        for key, value in zip(keys, values):
            p = partitioner(key, partitions, partitions)
            if batches[p].append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(key=key, value=value, timestamp=None)
        for p, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
        return len(keys) / (time.perf_counter() - start)


async def backfill_rate(settings: IngestionSettings, count: int) -> float:
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.csv"
        with path.open("w") as f:
            f.write("ts,amount,merchant,card_present,fraud\n")
            for i in range(count):
                f.write(f"{1_600_000_000_000 + i},{rng.uniform(1, 500):.2f},m{i % 97},{i % 3 > 0},{i % 50 == 0}\n")
        options = BackfillOptions(tenant="bench", source="bench", label_column="fraud")
        settings = settings.model_copy(update={"ingestion_raw_topic": f"{PREFIX}.backfill.{uuid.uuid4().hex[:8]}"})
        await kafka.provision(settings.kafka_bootstrap, [kafka.TopicSpec(settings.ingestion_raw_topic, partitions=3)])
        start = time.perf_counter()
        report = await backfill(path, options, settings)
        elapsed = time.perf_counter() - start
    assert report.accepted == count, f"backfill accepted {report.accepted} of {count}"
    return count / elapsed


async def http_rate(port: int, concurrency: int, batch: int, seconds: float) -> tuple[float, int]:
    rng = random.Random(3)
    accepted = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal accepted, errors
        while time.perf_counter() < deadline:
            events = [sample_event(i, rng) for i in range(batch)]
            answer = await http.post("/v1/events", json=events, headers={"X-API-Key": KEY})
            if answer.status_code == 200:
                accepted += answer.json()["accepted"]
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return accepted / (time.perf_counter() - start), errors


def start_service(settings: IngestionSettings, port: int) -> subprocess.Popen:
    env = os.environ | {
        "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({"bench": [hash_key(KEY)]}),
        "STREAMLEDGER_INGESTION_RAW_TOPIC": f"{PREFIX}.http.{uuid.uuid4().hex[:8]}",
        "STREAMLEDGER_INGESTION_HTTP_PORT": str(port),
        "STREAMLEDGER_INGESTION_GRPC_PORT": "0",
        "STREAMLEDGER_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([CLI, "serve", "ingestion"], env=env, stderr=subprocess.DEVNULL)


async def wait_healthy(port: int, timeout: float = 30) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, listener: Listener, keys: list[bytes], values: list[bytes]) -> dict[str, float]:
    settings = IngestionSettings()
    rates: dict[str, float] = {}
    print(f"-- {listener.name} listener {listener.bootstrap}")
    raw = rates["raw aiokafka send()"] = await raw_send_rate(settings.kafka_bootstrap, keys, values)
    print(f"raw aiokafka send(), pre-encoded      {raw:>9,.0f} events/s   (baseline \"raw\", {args.events:,} events)")
    raw_batch = rates["raw aiokafka send_batch()"] = await raw_batch_rate(settings.kafka_bootstrap, keys, values)
    print(f"raw aiokafka send_batch(), pre-encoded {raw_batch:>8,.0f} events/s   {raw_batch / raw:6.1%} of raw")
    filled = rates["backfill CSV"] = await backfill_rate(settings, args.events)
    print(f"backfill CSV (streamledger ingest)    {filled:>9,.0f} events/s   {filled / raw:6.1%} of raw (goal >= 50%), "
          f"{filled / raw_batch:.1%} of raw send_batch")

    service = start_service(settings, args.port)
    try:
        await wait_healthy(args.port)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            rate, errors = await http_rate(args.port, concurrency, args.batch, args.seconds)
            rates[f"http POST x{concurrency}"] = rate
            print(f"http POST x{concurrency:<3} batch {args.batch:<5}         {rate:>9,.0f} events/s   {rate / raw:6.1%} of raw"
                  + (f"   ({errors} non-200 answers)" if errors else ""))
    finally:
        service.terminate()
        service.wait(timeout=30)
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--port", type=int, default=18180)
    parser.add_argument("--plaintext-port", type=int, default=None,
                        help="the stack's bench-only PLAINTEXT listener (default: STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT)")
    args = parser.parse_args()
    # Secured: act as the ingestion service (its principal may write events.raw.*), children too.
    os.environ.setdefault("STREAMLEDGER_KAFKA_SASL_USERNAME", topics.INGESTION)

    keys, values = pre_encoded(args.events)
    rates = {}
    for listener in listeners(args.plaintext_port):
        with listener.active():
            rates[listener.name] = await measure(args, listener, keys, values)
    print(compare(rates))


if __name__ == "__main__":
    asyncio.run(main())
