"""The dashboard's web app: the page, one JSON frame, and a server-sent event stream of frames.

    GET /            static/index.html (static/dashboard.js draws the frames as SVG)
    GET /api/state   the board's frame now
    GET /events      `event: frame` every tick, until the browser leaves or the dashboard stops
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.dashboard.board import Board
from streamledger import metrics

STATIC = Path(__file__).parent / "static"
CLIENTS = metrics.gauge("dashboard", "sse_clients", "Browsers connected to /events")


def create_app(board: Board, tick_seconds: float, closing: asyncio.Event) -> Starlette:
    """The web app over `board`; once `closing` is set every event stream ends, so the server
    can stop without waiting on browsers (they reconnect on their own, 2 s later)."""

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(board.frame(time.time()))

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            CLIENTS.inc()
            try:
                yield "retry: 2000\n\n"  # how soon EventSource reconnects after a drop
                while not closing.is_set() and not await request.is_disconnected():
                    yield f"event: frame\ndata: {json.dumps(board.frame(time.time()))}\n\n"
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closing.wait(), tick_seconds)
            finally:
                CLIENTS.dec()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
