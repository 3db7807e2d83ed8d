"""The ledger service on the running local stack (`streamledger stack up --fabric`): records
anchored per second next to the rate they were produced at, anchor lag (produced to
anchored on the ledger) p50/p99, and `audit verify` latency p50/p99 next to its floor,
one bare GetAnchor query of the same event's batch, all measured in the same run: each
verified event is followed by its floor query, so both are sampled as often and under
the same load.

`streamledger serve ledger` and `serve storage` run as child processes on fresh topics,
groups and a fresh database; the bench produces CleanEvents at `--rate` (0: as fast as it
can), reads ledger.anchors for when each batch was anchored, then verifies a sample.

    .venv/bin/python bench/ledger.py --events 20000 --rate 5000 --verify 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from ledger_tx import percentile  # bench/ is the script's folder, so on its path
from pymongo import AsyncMongoClient

from services.audit.auditor import open_auditor
from services.audit.settings import AuditSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.canonical import content_hash
from streamledger.kafka import topics as table
from streamledger.ledger import LedgerClient
from streamledger.settings import CommonSettings, LedgerSettings

CODEC = AvroCodec(SchemaRegistry.from_dir())
CLI = Path(sys.executable).with_name("streamledger")


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:8.1f} ms   p99 {percentile(values, 0.99) * 1000:8.1f} ms"


def event(run: str, i: int) -> dict:
    record = {"event_id": f"bench-{run}-{i}", "tenant": "bench", "source": "bench", "ts": int(time.time() * 1000),
              "features": {"x": i * 0.5, "y": float(i % 7)}, "label": bool(i % 2), "raw_partition": 0, "raw_offset": i}
    record["content_hash"] = content_hash(record)
    return record


async def produce(bootstrap: str, topic: str, run: str, count: int,
                  rate: float) -> tuple[float, dict[int, float], dict[int, int]]:
    """Produce `count` events; (seconds taken, offset -> time it was acknowledged, event number -> offset)."""
    acked: dict[int, float] = {}
    offsets: dict[int, int] = {}
    chunk = 200
    async with kafka.producer(bootstrap) as producer:
        started = time.perf_counter()
        for start in range(0, count, chunk):
            futures = [await producer.send(topic, CODEC.encode("CleanEvent", event(run, i)))
                       for i in range(start, min(start + chunk, count))]
            for i, meta in enumerate(await asyncio.gather(*futures), start):
                acked[meta.offset] = time.time()
                offsets[i] = meta.offset
            if rate:
                ahead = (start + chunk) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return time.perf_counter() - started, acked, offsets


async def anchors_until(bootstrap: str, topic: str, count: int, timeout: float) -> dict[str, dict]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    anchors: dict[str, dict] = {}
    try:
        async with asyncio.timeout(timeout):
            while sum(a["count"] for a in anchors.values()) < count:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for m in messages:
                        a = CODEC.decode(m.value, reader="Anchor")
                        anchors[a["batch_id"]] = {**a, "seen": time.time()}
    finally:
        await consumer.stop()
    return anchors


async def main(events: int, rate: float, verify_count: int, batch_records: int) -> None:
    common = CommonSettings()
    run = uuid.uuid4().hex[:8]
    # Names under the table's (events.clean.bench-<run>, ...): the services act as their own Kafka
    # principals, whose ACLs cover their topics and the names under them.
    roles = {"clean": table.CLEAN, "anchors": table.ANCHORS, "usage": table.USAGE, "deadletter": table.DEADLETTER,
             "predictions": table.PREDICTIONS, "snapshots": table.SNAPSHOTS}
    topics = {name: f"{role}.bench-{run}" for name, role in roles.items()}
    env = {**os.environ, "STREAMLEDGER_MONGO_DB": f"bench_{run}", "STREAMLEDGER_LEDGER_SETTLEMENT": "false",
           "STREAMLEDGER_LEDGER_BATCH_RECORDS": str(batch_records),
           "STREAMLEDGER_LEDGER_ANCHOR_GROUP": f"streamledger-ledger-anchoring-bench-{run}",
           "STREAMLEDGER_STORAGE_GROUP": f"streamledger-storage-bench-{run}",
           **{f"STREAMLEDGER_STORAGE_{name.upper()}_TOPIC": topics[name] for name in ("clean", "predictions", "anchors",
                                                                                       "snapshots", "deadletter")},
           **{f"STREAMLEDGER_LEDGER_{name.upper()}_TOPIC": topics[name] for name in ("clean", "anchors", "usage",
                                                                                      "deadletter")}}
    await kafka.provision(common.kafka_bootstrap, [kafka.TopicSpec(name) for name in list(topics.values())])
    logs = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    children = [subprocess.Popen([str(CLI), "serve", name], env=env, stdout=open(logs / f"{name}.log", "wb"),
                                 stderr=subprocess.STDOUT) for name in ("ledger", "storage")]
    mongo = AsyncMongoClient(common.mongo_url, tz_aware=True)
    try:
        await asyncio.sleep(3)  # both services join their groups
        print(f"ledger service: {events} CleanEvents, batches of up to {batch_records} records or 1 s "
              f"(logs in {logs})")
        anchoring = asyncio.create_task(anchors_until(common.kafka_bootstrap, topics["anchors"], events, 600))
        produce_s, acked, offsets = await produce(common.kafka_bootstrap, topics["clean"], run, events, rate)
        anchors = await anchoring
        last_anchor = max(a["ts"].timestamp() for a in anchors.values())
        first_ack = min(acked.values())
        lags = [a["ts"].timestamp() - acked[o] for a in anchors.values()
                for o in range(a["first_offset"], a["last_offset"] + 1) if o in acked]
        print(f"  produced (the baseline)    {events / produce_s:9.0f} records/s")
        print(f"  anchored                   {events / (last_anchor - first_ack):9.0f} records/s   "
              f"({len(anchors)} Fabric transactions, {events / len(anchors):.0f} records each)")
        print(f"  anchor lag                 {ms(lags)}")

        db = mongo[env["STREAMLEDGER_MONGO_DB"]]
        deadline = time.monotonic() + 120
        while await db["events"].count_documents({}) < events and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        sample = list(range(0, events, max(1, events // verify_count)))[:verify_count]
        batch_of = {i: next(a["batch_id"] for a in anchors.values()
                            if a["first_offset"] <= offsets[i] <= a["last_offset"]) for i in sample}
        audit = AuditSettings(mongo_db=env["STREAMLEDGER_MONGO_DB"])
        verify_s, floor_s, statuses = [], [], {}
        async with open_auditor(audit, LedgerSettings()) as auditor, LedgerClient.connect(LedgerSettings(), service_identity="audit") as client:
            for i in sample:
                started = time.perf_counter()
                answer = await auditor.verify("bench", f"bench-{run}-{i}")
                verify_s.append(time.perf_counter() - started)
                status = getattr(answer.status, "value", answer.status)
                statuses[status] = statuses.get(status, 0) + 1
                started = time.perf_counter()
                await client.get_anchor(batch_of[i])
                floor_s.append(time.perf_counter() - started)
        print(f"  {f'verify ({len(verify_s)} events)':<28} {ms(verify_s)}   {statuses}")
        print(f"  {f'floor: GetAnchor ({len(floor_s)} calls)':<28} {ms(floor_s)}   (each verified event's batch)")
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        await mongo.drop_database(f"bench_{run}")
        await mongo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5000, help="events/s to produce; 0 for as fast as possible")
    parser.add_argument("--verify", type=int, default=200, help="events to verify")
    parser.add_argument("--batch-records", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rate, args.verify, args.batch_records))
