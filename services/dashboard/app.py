"""`streamledger serve dashboard`: a live web page of the whole system on http://127.0.0.1:8088.

Data path: `KafkaWatch` reads end offsets, consumer-group offsets and the small feed
topics (read-only, no consumer group) into the `Board`; `LedgerWatch` (unless
`STREAMLEDGER_DASHBOARD_LEDGER=false`) reads the Fabric contract's events and a few point
reads into the board's ledger view; every tick `/events` sends each browser the board's
frame as a server-sent event; `static/dashboard.js` draws it as SVG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streamledger import metrics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.retry import RetryPolicy
from streamledger.logging import configure_logging, get_logger
from services.dashboard.board import Board, FeedTopics
from services.dashboard.kafka_watch import KafkaWatch
from services.dashboard.ledger_view import LedgerView
from services.dashboard.ledger_watch import FabricLedgerReader, LedgerWatch, LedgerWatchSettings
from services.dashboard.settings import DashboardSettings
from streamledger.settings import LedgerSettings

log = get_logger("dashboard")
STATIC = Path(__file__).parent / "static"
CLIENTS = metrics.gauge("dashboard", "sse_clients", "Browsers connected to /events")


def build_board(settings: DashboardSettings) -> Board:
    feeds = FeedTopics(deadletter=settings.deadletter_topic, snapshots=settings.snapshots_topic,
                       model_metrics=settings.model_metrics_topic, usage=settings.usage_topic,
                       anchors=settings.anchors_topic, clean=settings.clean_topic)
    return Board(settings.throughput_topics(), feeds, settings.dashboard_service_groups,
                 settings.dashboard_stale_after_seconds, settings.dashboard_window_seconds,
                 LedgerView(settings.dashboard_ledger, settings.dashboard_ledger_recheck_seconds))


def build_ledger_watch(settings: DashboardSettings, board: Board,
                       ledger_settings: LedgerSettings | None = None) -> LedgerWatch | None:
    """The Fabric reader, or None when the setting turns it off."""
    if not settings.dashboard_ledger:
        return None
    where = ledger_settings or LedgerSettings()
    return LedgerWatch(board, lambda: FabricLedgerReader.connect(where), LedgerWatchSettings(
        history_blocks=settings.dashboard_ledger_history_blocks, poll_seconds=settings.dashboard_ledger_poll_seconds,
        lookups_max=settings.dashboard_ledger_lookups_max,
        backoff=RetryPolicy(initial_seconds=min(0.5, settings.dashboard_ledger_retry_max_seconds),
                            max_seconds=settings.dashboard_ledger_retry_max_seconds, jitter=0.2)))


def create_app(settings: DashboardSettings, board: Board, watch: KafkaWatch | None = None,
               ledger_watch: LedgerWatch | None = None) -> Starlette:
    """The web app; its lifespan runs the Kafka reader and the ledger reader (when given)
    beside the server."""

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(board.frame(time.time()))

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            CLIENTS.inc()
            try:
                yield "retry: 2000\n\n"  # how soon EventSource reconnects after a drop
                while not await request.is_disconnected():
                    yield f"event: frame\ndata: {json.dumps(board.frame(time.time()))}\n\n"
                    await asyncio.sleep(settings.dashboard_tick_seconds)
            finally:
                CLIENTS.dec()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in (watch, ledger_watch) if w is not None]
        try:
            yield
        finally:
            stop.set()
            if tasks:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*tasks), 10)

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)


def main() -> None:
    settings = DashboardSettings()
    configure_logging(settings.log_level)
    metrics.serve_metrics(settings.metrics_port)
    board = build_board(settings)
    watch = KafkaWatch(settings, board, AvroCodec(SchemaRegistry.from_dir()))
    ledger_watch = build_ledger_watch(settings, board)
    app = create_app(settings, board, watch, ledger_watch)
    log.info("started", extra={"url": f"http://{settings.dashboard_host}:{settings.dashboard_port}",
                               "topics": settings.watched_topics(), "ledger": settings.dashboard_ledger})
    # uvicorn handles SIGINT/SIGTERM (closes the SSE streams, then the lifespan stops the
    # reader) and afterwards re-raises the signal to the handler it found; a no-op one here
    # lets `serve dashboard` exit 0 after that clean shutdown instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=settings.dashboard_host, port=settings.dashboard_port, log_level="warning",
                timeout_graceful_shutdown=3)
