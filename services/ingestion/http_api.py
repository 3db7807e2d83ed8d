"""HTTP interface: `POST /v1/events`, `GET /healthz`, `GET /metrics` (Starlette).

Answers of `POST /v1/events`:
  200 every event accepted        {"accepted": n, "event_ids": [...], "rejected": []}
  207 some accepted, some not     same body; each rejection has index, field, error
  422 no event valid              same body
  400 body unusable as a whole (empty, not UTF-8, not JSON, bad gzip)   {"error": "..."}
  401 missing or unknown API key; 413 body or event count over the limit; 415 unknown encoding
  503 Kafka slow or down, with Retry-After    {"error": "...", "acknowledged": [...]}
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingestion.auth import AuthenticationError, key_from_headers
from services.ingestion.intake import Intake
from services.ingestion.metrics import REQUEST_SECONDS, REQUESTS
from services.ingestion.payload import (
    BodyError,
    BodyTooLargeError,
    decode_content,
    parse_events,
)
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import KafkaUnavailableError
from streamledger.logging import get_logger

log = get_logger("ingestion")


def build_http_app(intake: Intake, settings: IngestionSettings) -> Starlette:
    async def post_events(request: Request) -> Response:
        started = time.perf_counter()
        response = await _post_events(request, intake, settings)
        REQUESTS.labels("http", str(response.status_code)).inc()
        REQUEST_SECONDS.labels("http").observe(time.perf_counter() - started)
        return response

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "pending_events": intake.writer.budget.pending})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])


async def _post_events(request: Request, intake: Intake, settings: IngestionSettings) -> Response:
    try:
        tenant = intake.authenticate(key_from_headers(request.headers))
    except AuthenticationError as exc:
        return JSONResponse({"error": str(exc)}, 401, headers={"WWW-Authenticate": "Bearer"})
    try:
        body = await _read_limited(request, settings.ingestion_max_body_bytes)
        data = decode_content(body, request.headers.get("content-encoding"), settings.ingestion_max_body_bytes)
        events = parse_events(data, request.headers.get("content-type"), settings.ingestion_max_events_per_request)
        result = await intake.accept(events, tenant, "http")
    except BodyError as exc:
        return JSONResponse({"error": str(exc)}, exc.status)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read it
    except KafkaUnavailableError as exc:
        log.warning("kafka_unavailable", extra={"tenant": tenant, "error": str(exc), "acknowledged": len(exc.acknowledged)})
        return JSONResponse({"error": str(exc), "acknowledged": exc.acknowledged}, 503,
                            headers={"Retry-After": str(settings.ingestion_retry_after_seconds)})
    status = 200 if not result.rejected else 207 if result.event_ids else 422
    return JSONResponse(result.as_dict(), status)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed `limit` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"body is {int(declared)} bytes, more than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body is more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
