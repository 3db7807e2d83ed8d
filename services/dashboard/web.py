"""The dashboard's web app: the page, one JSON frame, and a server-sent event stream of frames.

    GET /            static/index.html (static/dashboard.js draws the frames as SVG)
    GET /api/state   the board's frame now
    GET /events      `event: frame` every tick, until the browser leaves or the dashboard stops
    GET /api/trace?tenant=T&event_id=E[&limit=N&page=P]   the audit API's trace (lineage panel)
    GET /api/bills/{hold_id}                               the audit API's bill of a hold

With a token (`STREAMLEDGER_DASHBOARD_TOKEN`) every route, static files included, answers 401
unless the request carries it: `Authorization: Bearer <token>`, `?token=<token>` (which also
sets an HttpOnly cookie, so the page's own requests and its EventSource carry it), or that cookie.
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
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.dashboard.audit_link import AuditLink
from services.dashboard.board import Board
from streamledger import metrics
from streamledger.access import BearerToken, bearer

STATIC = Path(__file__).parent / "static"
CLIENTS = metrics.gauge("dashboard", "sse_clients", "Browsers connected to /events")
COOKIE = "streamledger_dashboard_token"
NO_AUDIT = {"status": "API_UNREACHABLE", "error": "this dashboard has no audit API to ask (STREAMLEDGER_DASHBOARD_AUDIT_URL)"}


class TokenGate:
    """Lets a request through only with the token (header, query or cookie); a request that
    brought it as `?token=` gets the cookie back, so the browser needs the link only once."""

    def __init__(self, app: ASGIApp, token: BearerToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token.required:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        from_query = request.query_params.get("token")
        if self.token.allows(bearer(request.headers)) or self.token.allows(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
        elif self.token.allows(from_query):
            await self.app(scope, receive, _setting_cookie(send, from_query))
        else:
            await PlainTextResponse("a dashboard token is required: Authorization: Bearer <token>, or open "
                                    "/?token=<token>", status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def _setting_cookie(send: Send, token: str) -> Send:
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending


def create_app(board: Board, tick_seconds: float, closing: asyncio.Event,
               token: BearerToken | None = None, audit: AuditLink | None = None) -> ASGIApp:
    """The web app over `board`; once `closing` is set every event stream ends, so the server
    can stop without waiting on browsers (they reconnect on their own, 2 s later). With a
    `token` that is required, every route asks for it (`TokenGate`). `audit`: where the lineage
    and bills panels ask (none: they say the audit API is not configured)."""

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

    async def trace(request: Request) -> JSONResponse:
        if audit is None:
            return JSONResponse(NO_AUDIT, 503)
        q = request.query_params
        status, answer = await audit.trace(q.get("tenant", ""), q.get("event_id", ""), q.get("limit"), q.get("page"))
        return JSONResponse(answer, status)

    async def bill(request: Request) -> JSONResponse:
        if audit is None:
            return JSONResponse(NO_AUDIT, 503)
        status, answer = await audit.bill(request.path_params["hold_id"])
        return JSONResponse(answer, status)

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/api/trace", trace),
        Route("/api/bills/{hold_id}", bill),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    return TokenGate(app, token or BearerToken(None))
