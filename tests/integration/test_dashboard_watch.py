"""The dashboard's Kafka reader against the real broker: what it shows, bad input it survives,
and an unreachable Kafka: shown, retried, given up after the bound. And who may look: bound
beyond loopback it needs a token, and then every request must carry it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from services.dashboard.app import Dashboard, build_board
from services.dashboard.board import Board
from services.dashboard.kafka_watch import KafkaWatch
from services.dashboard.settings import DashboardSettings
from streamledger import kafka
from streamledger.avro import MARKER, AvroCodec, SchemaRegistry

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("streamledger"))
TOKEN = "integration-dashboard-0123456789"
CODEC = AvroCodec(SchemaRegistry.from_dir())


def dead_letter(key: str) -> bytes:
    return CODEC.encode("DeadLetter", {
        "key": key, "source_topic": "events.raw", "source_partition": 0, "source_offset": 1, "service": "cleaning",
        "reason": "bad_type", "error": f"{key}: features.amount must be a number", "original": b"x",
        "ts": int(time.time() * 1000)})


UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1
UNREACHABLE_ERROR = "KafkaConnectionError: Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)]"


def dashboard_settings(bootstrap: str, unique: str, **overrides: object) -> DashboardSettings:
    names = ("raw", "clean", "deadletter", "predictions", "snapshots", "model_metrics", "usage", "anchors")
    return DashboardSettings(kafka_bootstrap=bootstrap, dashboard_tick_seconds=0.5, dashboard_lag_seconds=0.5,
                             dashboard_feed_tail=3,
                             **{f"dashboard_{name}_topic": f"watch-{name}-{unique}" for name in names}, **overrides)


def reconnects() -> float:
    return REGISTRY.get_sample_value("streamledger_dashboard_kafka_reconnects_total") or 0.0


@contextlib.asynccontextmanager
async def watching(settings: DashboardSettings) -> AsyncIterator[Board]:
    board = build_board(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(KafkaWatch(settings, board, CODEC).run(stop))
    try:
        yield board
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)  # stops promptly, and never died on its own


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_reads_the_tail_and_survives_undecodable_records(bootstrap: str, unique: str) -> None:
    settings = dashboard_settings(bootstrap, unique)
    await kafka.provision(bootstrap, [kafka.TopicSpec(name) for name in settings.watched_topics()])
    async with kafka.producer(bootstrap) as producer:
        for i in range(5):  # before the dashboard starts: only the last 3 (feed tail) are read back
            await producer.send_and_wait(settings.dashboard_deadletter_topic, dead_letter(f"old-{i}"))
        async with watching(settings) as board:
            await until(lambda: len(board.frame(time.time())["dead_letters"]) == 3)
            assert [d["key"] for d in board.frame(time.time())["dead_letters"]] == ["old-4", "old-3", "old-2"]

            await producer.send_and_wait(settings.dashboard_deadletter_topic, b"not avro at all")
            await producer.send_and_wait(settings.dashboard_deadletter_topic,
                                         MARKER + b"\x00" * 8 + b"body")  # unknown schema
            # a DeadLetter where ModelMetrics belong: no model_id
            await producer.send_and_wait(settings.dashboard_model_metrics_topic, dead_letter("wrong-topic"))
            await producer.send_and_wait(settings.dashboard_deadletter_topic, dead_letter("after-garbage"))
            await until(lambda: board.frame(time.time())["dead_letters"][0]["key"] == "after-garbage")
            frame = board.frame(time.time())
            assert frame["undecodable"] == {settings.dashboard_deadletter_topic: 2,
                                            settings.dashboard_model_metrics_topic: 1}
            assert frame["kafka"]["connected"] is True, frame["kafka"]

            def dead_letter_total() -> int:
                (card,) = [t for t in board.frame(time.time())["throughput"] if t["label"] == "dead letters"]
                return card["total"]

            await until(lambda: dead_letter_total() == 5 + 3)  # counted by end offsets, decoded or not


async def test_unreachable_kafka_shows_on_the_board_and_is_retried(unique: str) -> None:
    settings = dashboard_settings(UNREACHABLE, unique, dashboard_kafka_retry_max_seconds=0.5)
    before = reconnects()
    async with watching(settings) as board:
        await until(lambda: reconnects() == before + 3, timeout_s=20)  # three failures, each retried
        frame = board.frame(time.time())
        assert frame["kafka"]["connected"] is False
        assert frame["kafka"]["error"] == UNREACHABLE_ERROR


async def test_unreachable_kafka_is_given_up_after_the_bound_with_its_error(unique: str) -> None:
    settings = dashboard_settings(UNREACHABLE, unique, dashboard_kafka_retry_attempts=3,
                                  dashboard_kafka_retry_max_seconds=0.5)
    board = build_board(settings)
    before = reconnects()
    with pytest.raises(KafkaConnectionError) as raised:
        await asyncio.wait_for(KafkaWatch(settings, board, CODEC).run(asyncio.Event()), 20)
    assert str(raised.value) == UNREACHABLE_ERROR
    assert reconnects() == before + 2  # shown and counted before each of the two retries
    assert board.frame(time.time())["kafka"]["error"] == UNREACHABLE_ERROR


# -- who may look --

def test_bound_beyond_loopback_without_a_token_it_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STREAMLEDGER_DASHBOARD_TOKEN"}
    done = subprocess.run([CLI, "serve", "dashboard"], capture_output=True, text=True, timeout=60, check=False,
                          env={**env, "STREAMLEDGER_DASHBOARD_HOST": "0.0.0.0", "STREAMLEDGER_DASHBOARD_PORT": "0",
                               "STREAMLEDGER_DASHBOARD_LEDGER": "false"})
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("dashboard: cannot start") and "STREAMLEDGER_DASHBOARD_TOKEN" in line


async def test_bound_beyond_loopback_with_a_token_every_request_needs_it(bootstrap: str, unique: str) -> None:
    settings = dashboard_settings(bootstrap, unique, dashboard_host="0.0.0.0", dashboard_port=0,
                                  dashboard_ledger=False, dashboard_token=TOKEN)
    await kafka.provision(bootstrap, [kafka.TopicSpec(name) for name in settings.watched_topics()])
    async with (Dashboard(settings) as dashboard,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{dashboard.port}", timeout=10) as http):
        for route in ("/", "/api/state", "/static/dashboard.js", "/events"):
            assert (route, (await http.get(route)).status_code) == (route, 401)
        allowed = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/", headers=allowed)).status_code == 200
        state = await http.get("/api/state", headers=allowed)
        assert state.status_code == 200 and "kafka" in state.json()
        async with http.stream("GET", "/events", headers=allowed) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            while await asyncio.wait_for(anext(lines), 10) != "event: frame":
                pass
