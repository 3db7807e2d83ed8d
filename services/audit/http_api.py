"""HTTP JSON interface of the audit API (Starlette), read-only: GET only.

    GET /v1/verify/{event_id}?tenant=T     Verification (services/audit/verification.py)
    GET /v1/models/{model_id}[?version=N]  ModelReport (latest version without `version`)
    GET /v1/accounts/{account}             AccountStatement
    GET /v1/bills/{hold_id}                Bill (services/audit/bill.py)
    GET /v1/trace/{event_id}?tenant=T[&limit=N&page=P]   Trace (services/audit/trace.py)
    GET /healthz                           liveness, no token needed (it reveals nothing)
    GET /metrics                           Prometheus

Path parts are percent-encoded (an account id holds ',', '=' and spaces; an event id may
hold '/'); the tenant is a query parameter, required (event ids are per tenant). Answers: 200 with the verdict in `status` (VERIFIED and TAMPERED alike: the
audit itself succeeded); 400 `{"status": "INVALID_ARGUMENT", "field", "error"}`; 401 without
the auditor token when one is configured; 503 + Retry-After when the ledger or MongoDB
cannot be read, with `status` LEDGER_UNREACHABLE or STORE_UNREACHABLE and the evidence
gathered so far.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.audit.auditor import Auditor
from services.audit.metrics import observe
from services.audit.ports import InvalidArgument
from services.audit.trace import DEFAULT_LIMIT
from streamledger.access import BearerToken, bearer
from streamledger.logging import get_logger

log = get_logger("audit")
UNREACHABLE = frozenset({"LEDGER_UNREACHABLE", "STORE_UNREACHABLE"})
RETRY_AFTER_SECONDS = 5


def build_http_app(auditor: Auditor, token: BearerToken) -> Starlette:
    def answering(query: str, ask: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            if not token.allows(bearer(request.headers)):
                observe("http", query, "UNAUTHENTICATED", started)
                return JSONResponse({"status": "UNAUTHENTICATED", "error": "send the auditor token as "
                                     "'Authorization: Bearer <token>'"}, 401, headers={"WWW-Authenticate": "Bearer"})
            try:
                answer = (await ask(request)).as_dict()
            except InvalidArgument as exc:
                observe("http", query, "INVALID_ARGUMENT", started)
                return JSONResponse({"status": "INVALID_ARGUMENT", "field": exc.field, "error": str(exc)}, 400)
            observe("http", query, answer["status"], started)
            if answer["status"] in UNREACHABLE:
                log.warning("audit_unreachable", extra={"query": query, "status": answer["status"],
                                                        "detail": answer["detail"]})
                return JSONResponse(answer, 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return JSONResponse(answer)
        return endpoint

    async def verify(request: Request):
        return await auditor.verify(request.query_params.get("tenant"), request.path_params["event_id"])

    async def model(request: Request):
        return await auditor.model(request.path_params["model_id"], _version(request.query_params.get("version")))

    async def account(request: Request):
        return await auditor.account(request.path_params["account"])

    async def bill(request: Request):
        return await auditor.bill(request.path_params["hold_id"])

    async def trace(request: Request):
        params = request.query_params
        return await auditor.trace(params.get("tenant"), request.path_params["event_id"],
                                   _whole("limit", params.get("limit"), DEFAULT_LIMIT),
                                   _whole("page", params.get("page"), 1))

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if not token.allows(bearer(request.headers)):
            return JSONResponse({"status": "UNAUTHENTICATED"}, 401, headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/v1/verify/{event_id:path}", answering("verify", verify), methods=["GET"]),
        Route("/v1/models/{model_id}", answering("model", model), methods=["GET"]),
        Route("/v1/accounts/{account:path}", answering("account", account), methods=["GET"]),
        Route("/v1/bills/{hold_id}", answering("bill", bill), methods=["GET"]),
        Route("/v1/trace/{event_id:path}", answering("trace", trace), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])


def _version(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument("version", f"must be a positive integer, got {text!r}") from None


def _whole(name: str, text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(name, f"must be a whole number, got {text!r}") from None
