"""Audit settings: loopback by default; beyond it, no start without an auditor token."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.audit.settings import AuditSettings
from streamledger.access import BearerToken, bearer, is_loopback

TOKEN = "0123456789abcdef-auditor"


def test_defaults_listen_on_loopback_without_a_token(monkeypatch) -> None:
    monkeypatch.delenv("STREAMLEDGER_AUDIT_TOKEN", raising=False)
    monkeypatch.delenv("STREAMLEDGER_AUDIT_HOST", raising=False)
    s = AuditSettings()
    assert (s.audit_host, s.audit_http_port, s.audit_grpc_port, s.token()) == ("127.0.0.1", 8090, 8091, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "audit.example.com"])
def test_beyond_loopback_it_refuses_without_a_token(monkeypatch, host) -> None:
    monkeypatch.delenv("STREAMLEDGER_AUDIT_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="STREAMLEDGER_AUDIT_TOKEN"):
        AuditSettings(audit_host=host)
    assert AuditSettings(audit_host=host, audit_token=TOKEN).token() == TOKEN


def test_the_token_comes_from_the_environment_and_must_not_be_short(monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_AUDIT_HOST", "0.0.0.0")
    monkeypatch.setenv("STREAMLEDGER_AUDIT_TOKEN", TOKEN)
    assert AuditSettings().token() == TOKEN
    assert TOKEN not in repr(AuditSettings())  # a secret, not printed
    monkeypatch.setenv("STREAMLEDGER_AUDIT_TOKEN", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        AuditSettings()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("10.0.0.1", False), ("myhost", False)])
def test_is_loopback(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_token_check() -> None:
    assert BearerToken(None).allows(None) and not BearerToken(None).required
    token = BearerToken(TOKEN)
    assert token.allows(TOKEN) and not token.allows(None) and not token.allows(TOKEN + "x")
    assert bearer({"authorization": f"Bearer {TOKEN}"}) == TOKEN
    assert bearer({"authorization": f"bearer  {TOKEN} "}) == TOKEN
    assert bearer({"authorization": f"Basic {TOKEN}"}) is None and bearer({}) is None


def test_the_mongo_timeout_is_in_seconds(monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_AUDIT_MONGO_TIMEOUT_SECONDS", "2.5")
    assert AuditSettings().audit_mongo_timeout_seconds == 2.5
    with pytest.raises(ValidationError, match="audit_mongo_timeout_seconds"):
        AuditSettings(audit_mongo_timeout_seconds=0)
