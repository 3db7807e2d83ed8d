"""`streamledger serve audit`: the read-only audit API, HTTP JSON on 127.0.0.1:8090 and gRPC on
127.0.0.1:8091.

    GET /v1/verify/{id}, gRPC Verify --> Auditor --> MongoDB (events, proofs, models)
    GET /v1/models/..., gRPC Model        |      --> Fabric gateway, evaluate only
    GET /v1/accounts/..., gRPC Account    +          (GetAnchor, GetModel, Balance, HoldsOf,
                                                      History, qscc GetBlockByTxID)

The ledger is read as the identity `audit`, which must hold the auditor role: at start the
audit asks WhoAmI, and an identity without it refuses the start, naming it (a ledger that does
not answer then is logged, and the audit starts: its answers say LEDGER_UNREACHABLE).
A ledger read whose peer is unavailable is tried again, up to AUDIT_LEDGER_ATTEMPTS in all
(`ledger_retry.py`, the one place the audit retries). Listening beyond loopback needs
STREAMLEDGER_AUDIT_TOKEN (the settings refuse to load without it); with a token set, every
call must carry it. With STREAMLEDGER_AUDIT_TLS_CERT and _KEY both servers serve TLS only.
"""

from __future__ import annotations

import contextlib

from services.audit.auditor import IDENTITY, ROLE, open_auditor
from services.audit.grpc_api import build_grpc_server
from services.audit.http_api import build_http_app
from services.audit.ports import LedgerUnreachable
from services.audit.settings import AuditSettings
from streamledger.access import BearerToken
from streamledger.http_server import EmbeddedHttpServer
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.settings import LedgerSettings
from streamledger.tls import ServerTls

log = get_logger("audit")


class AuditService(Loop):
    """Both servers over one Auditor; the bound ports are in `http_port` and `grpc_port` once
    started (settings may ask for port 0)."""

    def __init__(self, settings: AuditSettings, ledger_settings: LedgerSettings) -> None:
        super().__init__()
        self.settings = settings
        self.ledger_settings = ledger_settings
        self.http_port = settings.audit_http_port
        self.grpc_port = settings.audit_grpc_port
        self._opened = contextlib.AsyncExitStack()

    async def start(self) -> None:
        s = self.settings
        tls = ServerTls.optional(s.audit_tls_cert, s.audit_tls_key, "STREAMLEDGER_AUDIT_TLS")  # files readable: fail fast
        async with contextlib.AsyncExitStack() as opened:  # a step that fails closes what came before
            auditor = await opened.enter_async_context(open_auditor(s, self.ledger_settings))
            try:
                me = await auditor.ledger.require_role(ROLE)  # MissingRole: the audit cannot start
                log.info("ledger_connected", extra={"account": me["Account"], "roles": me["Roles"]})
            except LedgerUnreachable as exc:
                log.error("ledger_unavailable", extra={"error": str(exc),
                                                       "msp_dir": str(self.ledger_settings.msp_dir(IDENTITY))})
            token = BearerToken(s.token())
            grpc_server, self.grpc_port = build_grpc_server(auditor, token, s.audit_host, s.audit_grpc_port, tls,
                                                            s.share_port)
            await grpc_server.start()
            opened.push_async_callback(grpc_server.stop, 5)  # grace: answers in flight land
            http_server = EmbeddedHttpServer(build_http_app(auditor, token), s.audit_host, s.audit_http_port, tls,
                                             share_port=s.share_port)
            self.http_port = await http_server.start()
            opened.push_async_callback(http_server.stop)
            self._opened = opened.pop_all()
        log.info("serving", extra={"http": f"{s.audit_host}:{self.http_port}",
                                   "grpc": f"{s.audit_host}:{self.grpc_port}", "token_required": token.required,
                                   "tls": tls is not None,
                                   "mongo_db": s.mongo_db, "peer": self.ledger_settings.peer_endpoint()})

    async def stop(self) -> None:
        await self._opened.aclose()  # the HTTP server, the gRPC server, then the Auditor's clients


def main() -> None:
    # AuditSettings refuses to load when exposed beyond loopback without a token.
    serve("audit", AuditSettings, lambda settings: AuditService(settings, LedgerSettings()))
