"""The audit service's lifecycle without servers: a start that fails part-way closes what it opened."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.audit.app import AuditService
from services.audit.settings import AuditSettings
from streamledger.settings import LedgerSettings


async def test_a_port_in_use_fails_the_start_and_leaves_nothing_listening(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No identity at this path: the audit starts with an unreachable ledger, talking to no server.
        service = AuditService(AuditSettings(audit_http_port=port, audit_grpc_port=0),
                               LedgerSettings(fabric_msp_dir=tmp_path / "no-msp"))
        with pytest.raises(OSError, match="Address already in use"):
            async with service:
                pass
    assert service.grpc_port != 0  # the gRPC server had started before the HTTP server failed...
    with socket.socket() as again:
        again.bind(("127.0.0.1", service.grpc_port))  # ...and was stopped again: its port is free
