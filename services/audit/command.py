"""`streamledger audit verify|model|account|bill|trace`: ask the audit, print the answer, exit by verdict.

By default the command runs the audit core in-process, reading MongoDB and the ledger itself
with this machine's `STREAMLEDGER_*` settings and Fabric identity: an auditor then trusts no
running service, only storage and the ledger. With `--api URL` (or STREAMLEDGER_AUDIT_API_URL)
it asks a running audit API over HTTP instead (with `--token` / STREAMLEDGER_AUDIT_TOKEN when
that API needs one, and `--ca` / STREAMLEDGER_AUDIT_API_CA, the CA file that issued an https
API's certificate, when it is not one the system trusts), for auditors who hold no database or
ledger credentials. Both print the
same answer: readable by default, the API's JSON with `--json`.

Exit codes: 0 VERIFIED / MATCH / FOUND; 1 TAMPERED, DELETED, MISMATCH or DISPUTED (a bill); 2 a
malformed argument, bad settings or a refused token; 3 NOT_ANCHORED_YET or NOT_SETTLED_YET (ask
again later); 4 UNKNOWN, NOT_REGISTERED, NO_SNAPSHOT or NOT_FOUND; 5 the ledger, MongoDB, the
usage topic or the API could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from rich.console import Console

from services.audit.auditor import open_auditor
from services.audit.ports import InvalidArgument
from services.audit.render import RENDERERS, render_error
from services.audit.render_bill import render_bill
from services.audit.render_trace import render_trace
from services.audit.settings import AuditSettings
from services.audit.trace import DEFAULT_LIMIT, check_page
from services.audit.verification import check_event_id, check_tenant
from streamledger.settings import LedgerSettings

EXIT_CODES = {
    "VERIFIED": 0, "MATCH": 0, "FOUND": 0,
    "TAMPERED": 1, "DELETED": 1, "MISMATCH": 1, "DISPUTED": 1,
    "INVALID_ARGUMENT": 2, "UNAUTHENTICATED": 2, "CONFIGURATION": 2,
    "NOT_ANCHORED_YET": 3, "NOT_SETTLED_YET": 3,
    "UNKNOWN": 4, "NOT_REGISTERED": 4, "NO_SNAPSHOT": 4, "NOT_FOUND": 4,
    "LEDGER_UNREACHABLE": 5, "STORE_UNREACHABLE": 5, "API_UNREACHABLE": 5,
}


class CaFileError(Exception):
    """The CA file given for an https audit API cannot be used."""


def _trusting(ca: Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies the API's certificate with: the system's CAs, or only `ca`."""
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise CaFileError(f"STREAMLEDGER_AUDIT_API_CA: cannot use {ca}: {exc}") from None


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, 1)


def run_audit(query: str, args: dict[str, Any], as_json: bool, api_url: str | None, token: str | None,
              console: Console, ca: Path | None = None) -> int:
    """Answer `query` ("verify", "model", "account", "bill" or "trace") for `args`, print it; the exit code. `ca`: the
    CA certificate (PEM) to trust for an https API."""
    try:
        if api_url:
            with httpx.Client(timeout=60.0, verify=_trusting(ca)) as client:
                answer = ask_api(client, api_url, token, query, args)
        else:
            answer = asyncio.run(_ask_in_process(query, args))
    except InvalidArgument as exc:
        answer = {"status": "INVALID_ARGUMENT", "field": exc.field, "error": str(exc)}
    except ValidationError as exc:
        answer = {"status": "CONFIGURATION", "error": "; ".join(e["msg"] for e in exc.errors())}
    except httpx.HTTPError as exc:
        answer = {"status": "API_UNREACHABLE", "error": f"the audit API at {api_url} did not answer: {exc}"}
    except CaFileError as exc:
        answer = {"status": "CONFIGURATION", "error": str(exc)}
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    elif "error" in answer:
        render_error(console, answer)
    else:
        {**RENDERERS, "bill": render_bill, "trace": render_trace}[query](console, answer)
    return exit_code(answer["status"])


async def _ask_in_process(query: str, args: dict[str, Any]) -> dict[str, Any]:
    if query in ("verify", "trace"):  # a malformed or missing part is said before connecting to anything
        check_event_id(args["event_id"])
        check_tenant(args.get("tenant"))
    if query == "trace":
        check_page(args.get("limit", DEFAULT_LIMIT), args.get("page", 1))
    async with open_auditor(AuditSettings(), LedgerSettings()) as auditor:
        if query == "verify":
            return (await auditor.verify(args.get("tenant"), args["event_id"])).as_dict()
        if query == "model":
            return (await auditor.model(args["model_id"], args.get("version"))).as_dict()
        if query == "bill":
            return (await auditor.bill(args["hold_id"])).as_dict()
        if query == "trace":
            return (await auditor.trace(args.get("tenant"), args["event_id"], args.get("limit", DEFAULT_LIMIT),
                                        args.get("page", 1))).as_dict()
        return (await auditor.account(args["account"])).as_dict()


def ask_api(client: httpx.Client, api_url: str, token: str | None, query: str, args: dict[str, Any]) -> dict[str, Any]:
    """The audit API's answer (its JSON), or an API_UNREACHABLE answer when it sent something else."""
    base = api_url.rstrip("/")
    params: dict[str, Any] = {}
    if query == "verify":
        url = f"{base}/v1/verify/{quote(args['event_id'], safe='')}"
        if args.get("tenant") is not None:  # without it the API answers INVALID_ARGUMENT naming the tenant
            params["tenant"] = args["tenant"]
    elif query == "model":
        url = f"{base}/v1/models/{quote(args['model_id'], safe='')}"
        if args.get("version") is not None:
            params["version"] = args["version"]
    elif query == "bill":
        url = f"{base}/v1/bills/{quote(args['hold_id'], safe='')}"
    elif query == "trace":
        url = f"{base}/v1/trace/{quote(args['event_id'], safe='')}"
        params.update({k: args[k] for k in ("tenant", "limit", "page") if args.get(k) is not None})
    else:
        url = f"{base}/v1/accounts/{quote(args['account'], safe='')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get(url, params=params, headers=headers)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "status" not in answer:
        return {"status": "API_UNREACHABLE",
                "error": f"the audit API at {api_url} answered HTTP {response.status_code}: {response.text[:200]}"}
    if response.status_code == 401:
        answer.setdefault("error", "the audit API refused the token")
    return answer
