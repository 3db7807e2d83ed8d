"""`streamledger serve dashboard`: a live web page of the whole system on http://127.0.0.1:8088.

    Kafka  --KafkaWatch: end offsets, group offsets, the feed topics (no group)--> Board
    Fabric --LedgerWatch: chaincode events, point reads (unless DASHBOARD_LEDGER=false)--> Board.ledger
             (as the identity `dashboard`, an auditor; without that role the dashboard cannot start)
    Board  --web: /events (a frame per tick, server-sent), /api/state--> static/dashboard.js (SVG)
    audit API --web: /api/trace, /api/bills/{hold} (asked when an auditor asks)--> the lineage and bills panels

Both readers only read, show their server being away on the page, and reconnect (bounded,
counted: reconnect.py); SIGINT or SIGTERM ends the event streams, the readers, then the server.
Listening beyond loopback needs STREAMLEDGER_DASHBOARD_TOKEN (the settings refuse to load without
it); with a token set, every request must carry it (web.py).
"""

from __future__ import annotations

import asyncio

from services.dashboard.audit_link import AuditLink
from services.dashboard.board import Board, FeedTopics
from services.dashboard.kafka_watch import KafkaWatch
from services.dashboard.ledger_view import LedgerView
from services.dashboard.ledger_watch import (
    FabricLedgerReader,
    LedgerWatch,
    LedgerWatchSettings,
)
from services.dashboard.settings import DashboardSettings
from services.dashboard.web import create_app
from streamledger.access import BearerToken
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.http_server import EmbeddedHttpServer
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.settings import LedgerSettings

log = get_logger("dashboard")


def build_board(settings: DashboardSettings) -> Board:
    feeds = FeedTopics(deadletter=settings.dashboard_deadletter_topic, snapshots=settings.dashboard_snapshots_topic,
                       model_metrics=settings.dashboard_model_metrics_topic, usage=settings.dashboard_usage_topic,
                       anchors=settings.dashboard_anchors_topic, clean=settings.dashboard_clean_topic)
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
        lookups_max=settings.dashboard_ledger_lookups_max, retry=settings.ledger_retry()))


class Dashboard(Loop):
    """The web server and the readers feeding its board; `port` is the bound port once started."""

    def __init__(self, settings: DashboardSettings, ledger_settings: LedgerSettings | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.board = build_board(settings)
        kafka_watch = KafkaWatch(settings, self.board, AvroCodec(SchemaRegistry.from_dir()))
        self.ledger_watch = build_ledger_watch(settings, self.board, ledger_settings)
        self.readers = [reader for reader in (kafka_watch, self.ledger_watch) if reader is not None]
        # `stopping` ends the event streams too, so the server never waits on a browser to leave.
        audit_token = settings.dashboard_audit_token.get_secret_value() if settings.dashboard_audit_token else None
        app = create_app(self.board, settings.dashboard_tick_seconds, closing=self.stopping,
                         token=BearerToken(settings.token()),
                         audit=AuditLink(settings.dashboard_audit_url, audit_token, settings.dashboard_audit_timeout_seconds))
        self.http = EmbeddedHttpServer(app, settings.dashboard_host, settings.dashboard_port)
        self.port = settings.dashboard_port

    async def start(self) -> None:
        if self.ledger_watch is not None:
            await self.ledger_watch.check_identity()  # an identity without the auditor role: cannot start
        self.port = await self.http.start()
        log.info("serving", extra={"url": f"http://{self.settings.dashboard_host}:{self.port}",
                                   "topics": self.settings.watched_topics(), "ledger": self.settings.dashboard_ledger,
                                   "token_required": self.settings.dashboard_token is not None})

    async def run(self, stopping: asyncio.Event) -> None:
        """The readers, until `stopping` is set; one that gives up fails the dashboard (exit 1)."""
        tasks = [asyncio.create_task(reader.run(stopping), name=type(reader).__name__) for reader in self.readers]
        try:
            for finished in asyncio.as_completed(tasks):
                await finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        await self.http.stop()


def main() -> None:
    serve("dashboard", DashboardSettings, Dashboard)
