"""Events/s of the cleaning and storage services, next to a bare aiokafka consume loop, the
cleaning handler in-process, and a Quix Streams app running that same handler.

    .venv/bin/python bench/pipeline.py [--events 100000]     # `make bench-deps` first (Quix Streams)
    .venv/bin/python bench/pipeline.py --handler-only [--profile]   # step 3 alone, no Kafka

Needs the local stack (`streamledger stack up`). In one run, on fresh topics:
1. produces N RawEvents, keyed by event id, to a raw topic of 4 partitions;
2. baseline: a bare aiokafka consumer reads that topic end to end (no decoding);
3. in-process: `Cleaner.handle` over the same bytes (decode, rules, hash, encode; no Kafka);
4. `streamledger serve cleaning` as a subprocess: raw -> clean; then two replicas of it (one
   consumer group, two partitions each) on the same raw topic, to fresh output topics; then one
   with `STREAMLEDGER_KAFKA_COMPRESSION=lz4` (aiokafka's level 9, the default before snappy),
   and one with `none`, from a copy of the raw topic written uncompressed (as on one machine,
   where compressing buys nothing);
5. the peer: `bench/quix_cleaner.py`, a plain Quix Streams app calling `Cleaner.handle`;
6. baseline again on the clean topic, then `streamledger serve storage` as a subprocess:
   clean -> MongoDB, timed by its committed offsets.
It prints each rate and its ratio to the bare loop on the same topic, and the cleaning
service's ratios to the handler, to the Quix app and (two replicas) to one. On a secured
stack the services run as their own principals (cleaning, storage) on topics under the
table's names (events.raw.bench-<run>, ...); with the stack's bench-only PLAINTEXT listener on
(STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT) the whole run is repeated there, and a table gives
secured / plaintext for each figure. Every rate is the messages handled divided by the
measured wall time it took: the bare loop from its first fetch to its last (connected
beforehand); a service or the Quix app from its first output to its last (polled every 50
ms), so start-up and the consumer group's join are left out of each alike.
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
RAW_PARTITIONS = 4


def raw_event(i: int) -> dict:
    return {
        "event_id": f"bench-{i:08d}",
        "tenant": "acme",
        "source": "bench",
        "ts": 1_767_225_600_000 + i,
        "features": {"X": i * 0.37, "Amount EUR": f"{i % 1000}.5", "member": "yes", "city": "Lyon", "gap": None},
        "label": float(i % 2),
    }


async def produce(bootstrap: str, topic: str, values: list[bytes], **overrides) -> None:
    async with kafka.producer(bootstrap, **overrides) as producer:
        for i, value in enumerate(values):
            await producer.send(topic, key=f"bench-{i:08d}".encode(), value=value)
        await producer.flush()


async def bare_consume(bootstrap: str, topic: str, count: int) -> float:
    """Messages/s of a plain aiokafka consumer reading `count` messages from the start, timed
    from its first fetch to its last (connected and positioned before the clock starts)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, p in await kafka.partitions_of(bootstrap, [topic])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            await consumer.position(tp)
        seen, started = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(messages) for messages in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def service_rate(services: list[subprocess.Popen], log: Path, progress: Callable[[], Awaitable[int]],
                       count: int, timeout: float) -> float:
    """Units/s of `progress` (polled every 50 ms) from its first unit to all `count` done."""
    deadline = time.monotonic() + timeout
    first = started = None
    while (done := await progress()) < count:
        if any(service.poll() is not None for service in services) or time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {count} done; {log.name}:\n{log.read_text(errors='replace')[-3000:]}")
        if done and first is None:
            first, started = done, time.perf_counter()
        await asyncio.sleep(0.05)
    if first is None:  # all done between two polls
        raise RuntimeError(f"{count} done before the first poll saw any: run with more --events")
    return (count - first) / (time.perf_counter() - started)


def handler_rate(values: list[bytes], topic: str) -> float:
    """Events/s of `Cleaner.handle` over `values` in this process (decode, rules, hash, encode)."""
    cleaner = Cleaner(CODEC, RuleBook(), DedupWindow({}, 3_600_000))
    tp = (topic, 0)
    started = time.perf_counter()
    for i, value in enumerate(values):
        cleaner.handle(Consumed(tp, topic, 0, i, None, value, timestamp_ms=0))
    return len(values) / (time.perf_counter() - started)


def handler_only(count: int, profile: bool) -> None:
    """The in-process handler line alone (no Kafka), optionally under cProfile (top 25 by own time)."""
    values = CODEC.encode_many("RawEvent", (raw_event(i) for i in range(count)))
    if not profile:
        print(line("Cleaner.handle in-process (no Kafka)", handler_rate(values, table.RAW)))
        return
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    rate = profiler.runcall(handler_rate, values, table.RAW)
    print(line("Cleaner.handle in-process, under cProfile", rate))
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


async def end_offset(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    return sum((await consumer.end_offsets(tps)).values())


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def serve(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return spawn([str(Path(sys.executable).parent / "streamledger"), "serve", name], env, log)


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


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
    raw = f"{table.RAW}.bench-{run}"
    raw_plain = f"{raw}-uncompressed"
    outputs = {who: {"clean": f"{table.CLEAN}.bench-{run}-{who}", "dead": f"{table.DEADLETTER}.bench-{run}-{who}"}
               for who in ("one", "two", "lz4", "plain", "quix")}
    await kafka.provision(bootstrap, [kafka.TopicSpec(raw, partitions=RAW_PARTITIONS),
                                      kafka.TopicSpec(raw_plain, partitions=RAW_PARTITIONS)] +
                          [kafka.TopicSpec(name) for names in outputs.values() for name in names.values()])
    values = CODEC.encode_many("RawEvent", (raw_event(i) for i in range(count)))
    await produce(bootstrap, raw, values)
    await produce(bootstrap, raw_plain, values, compression_type=None)  # as STREAMLEDGER_KAFKA_COMPRESSION=none writes it
    print(f"{count:,} RawEvents ({sum(map(len, values)) / count:.0f} bytes each) on {raw} ({RAW_PARTITIONS} partitions)\n")

    bare_raw = rates["bare aiokafka loop, raw topic"] = await bare_consume(bootstrap, raw, count)
    print(line("bare aiokafka loop, raw topic", bare_raw))

    handler = rates["Cleaner.handle in-process"] = handler_rate(values, raw)
    print(line("Cleaner.handle in-process (no Kafka)", handler, bare_raw))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update({"STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap, "STREAMLEDGER_MONGO_URL": settings.mongo_url,
                "STREAMLEDGER_MONGO_DB": f"bench_{run}", "STREAMLEDGER_LOG_LEVEL": "INFO",
                "STREAMLEDGER_CLEANING_RAW_TOPIC": raw,
                "STREAMLEDGER_STORAGE_CLEAN_TOPIC": outputs["one"]["clean"],
                "STREAMLEDGER_STORAGE_DEADLETTER_TOPIC": outputs["one"]["dead"],
                "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": f"{table.PREDICTIONS}.bench-{run}",
                "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": f"{table.ANCHORS}.bench-{run}",
                "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": f"{table.SNAPSHOTS}.bench-{run}",
                "STREAMLEDGER_STORAGE_GROUP": f"streamledger-storage-bench-{run}"})
    cleaning_env = env | kafka.child_environment(settings, username=table.CLEANING)
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection())
    await watcher.start()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for who, replicas, what, extra in (
                    ("one", 1, "", {}), ("two", 2, "", {}),
                    ("lz4", 1, ", compression lz4", {"STREAMLEDGER_KAFKA_COMPRESSION": "lz4"}),
                    ("plain", 1, ", compression none", {"STREAMLEDGER_CLEANING_RAW_TOPIC": raw_plain,
                                                        "STREAMLEDGER_KAFKA_COMPRESSION": "none"})):
                group_env = cleaning_env | extra | {
                    "STREAMLEDGER_CLEANING_CLEAN_TOPIC": outputs[who]["clean"],
                    "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": outputs[who]["dead"],
                    "STREAMLEDGER_CLEANING_GROUP": f"streamledger-cleaning-bench-{run}-{who}"}
                logs = [Path(scratch) / f"cleaning-{who}-{n}.log" for n in range(replicas)]
                clean_tps = [TopicPartition(outputs[who]["clean"], 0)]
                processes = [serve("cleaning", group_env, log) for log in logs]
                try:
                    rate = await service_rate(processes, logs[0], lambda: end_offset(watcher, clean_tps), count, 600)
                finally:
                    for process in processes:
                        stop(process)
                what = f"cleaning service, {replicas} replica{'s' * (replicas > 1)}{what}, raw -> clean"
                rates[what] = rate
                print(line(what, rate, bare_raw))

            log = Path(scratch) / "quix.log"
            quix = spawn([sys.executable, str(REPO / "bench" / "quix_cleaner.py"), raw, outputs["quix"]["clean"],
                          outputs["quix"]["dead"], f"streamledger-cleaning-bench-{run}-quix"],
                         env | kafka.child_environment(settings), log)  # as admin: Quix describes topic configs
            try:
                quix_tps = [TopicPartition(outputs["quix"]["clean"], 0)]
                rate = rates["Quix Streams app, same handler"] = await service_rate(
                    [quix], log, lambda: end_offset(watcher, quix_tps), count, 600)
            finally:
                stop(quix)
            print(line("Quix Streams app, same handler, raw -> clean", rate, bare_raw))
        finally:
            await watcher.stop()
        one = rates["cleaning service, 1 replica, raw -> clean"]
        plain = rates["cleaning service, 1 replica, compression none, raw -> clean"]
        lz4 = rates["cleaning service, 1 replica, compression lz4, raw -> clean"]
        print(f"\ncleaning service / handler in-process      {one / handler:8.2f}x   (goal >= 0.8; "
              f"compression {CommonSettings().kafka_compression})")
        print(f"  the same, STREAMLEDGER_KAFKA_COMPRESSION=lz4 {lz4 / handler:8.2f}x")
        print(f"  the same, STREAMLEDGER_KAFKA_COMPRESSION=none (input written so too) {plain / handler:8.2f}x")
        print(f"cleaning service / Quix Streams app        {one / rates['Quix Streams app, same handler']:8.2f}x   (goal >= 1.0)")
        print(f"two replicas / one (4 partitions)          {rates['cleaning service, 2 replicas, raw -> clean'] / one:8.2f}x"
              f"   (goal >= 1.6; this machine has {os.cpu_count()} cores)\n")

        bare_clean = rates["bare aiokafka loop, clean topic"] = await bare_consume(bootstrap, outputs["one"]["clean"], count)
        print(line("bare aiokafka loop, clean topic", bare_clean))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
        await admin.start()
        log = Path(scratch) / "storage.log"
        storage = serve("storage", env | kafka.child_environment(settings, username=table.STORAGE), log)
        try:
            group = env["STREAMLEDGER_STORAGE_GROUP"]
            rate = await service_rate([storage], log, lambda: committed(admin, group, outputs["one"]["clean"]), count, 600)
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
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--plaintext-port", type=int, default=None,
                        help="the stack's bench-only PLAINTEXT listener (default: STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT)")
    parser.add_argument("--handler-only", action="store_true",
                        help="only the in-process Cleaner.handle line (no Kafka, no services)")
    parser.add_argument("--profile", action="store_true", help="with --handler-only: under cProfile, top 25 functions")
    arguments = parser.parse_args()
    if arguments.handler_only:
        handler_only(arguments.events, arguments.profile)
    else:
        asyncio.run(main(arguments.events, arguments.plaintext_port))
