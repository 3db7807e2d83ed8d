"""The dashboard's questions to the audit API: an event's trace (the lineage panel) and a hold's
bill (the bills panel). Services never import each other, so the dashboard asks the running
audit API over HTTP, as an auditor without database or ledger credentials would:

    link = AuditLink("http://127.0.0.1:8090", token=None, timeout_s=60)
    status, answer = await link.trace("acme", "evt-42", limit=20, page=1)   # the audit's JSON
    status, answer = await link.bill("f898c8e3fcf5d04a8186f04a431e5a78")

The answer is the audit's own (VERIFIED, TAMPERED, INVALID_ARGUMENT naming the field, ...) with
its HTTP status; an audit API that does not answer is `API_UNREACHABLE` (502), never a verdict.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

UNREACHABLE = 502


class AuditLink:
    def __init__(self, url: str, token: str | None, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.transport = transport

    async def trace(self, tenant: str, event_id: str, limit: str | None = None,
                    page: str | None = None) -> tuple[int, dict[str, Any]]:
        params = {k: v for k, v in (("tenant", tenant), ("limit", limit), ("page", page)) if v not in (None, "")}
        return await self._get(f"/v1/trace/{quote(event_id, safe='')}", params)

    async def bill(self, hold_id: str) -> tuple[int, dict[str, Any]]:
        return await self._get(f"/v1/bills/{quote(hold_id, safe='')}", {})

    async def _get(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport) as client:
                response = await client.get(self.url + path, params=params, headers=self.headers)
        except httpx.HTTPError as exc:
            return UNREACHABLE, {"status": "API_UNREACHABLE",
                                 "error": f"the audit API at {self.url} did not answer: {exc or type(exc).__name__}"}
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "status" not in answer:
            return UNREACHABLE, {"status": "API_UNREACHABLE",
                                 "error": f"the audit API at {self.url} answered HTTP {response.status_code}: "
                                          f"{response.text[:200]}"}
        if response.status_code == 401:
            answer.setdefault("error", "the audit API refused the dashboard's auditor token "
                                       "(STREAMLEDGER_DASHBOARD_AUDIT_TOKEN)")
        return response.status_code, answer
