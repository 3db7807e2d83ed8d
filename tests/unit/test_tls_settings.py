"""TLS files of the ingestion and audit servers: both or neither in the settings, and a file that
cannot be read or parsed is a start error naming its setting, before any server is reached."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.audit.app import AuditService
from services.audit.settings import AuditSettings
from services.ingestion.app import IngestionService
from services.ingestion.settings import IngestionSettings
from streamledger.lifecycle import StartError
from streamledger.settings import LedgerSettings
from streamledger.tls import ServerTls, pair_problem
from tests.tls_certs import self_signed


def test_a_certificate_and_its_key_go_together() -> None:
    assert pair_problem(None, None, "STREAMLEDGER_X_TLS") is None
    assert "STREAMLEDGER_X_TLS_KEY is missing" in pair_problem("c.pem", None, "STREAMLEDGER_X_TLS")
    assert "STREAMLEDGER_X_TLS_CERT is missing" in pair_problem(None, "c.key", "STREAMLEDGER_X_TLS")


@pytest.mark.parametrize("settings, missing", [
    (lambda **kw: IngestionSettings(**{f"ingestion_{k}": v for k, v in kw.items()}), "STREAMLEDGER_INGESTION_TLS"),
    (lambda **kw: AuditSettings(**{f"audit_{k}": v for k, v in kw.items()}), "STREAMLEDGER_AUDIT_TLS"),
])
def test_the_settings_refuse_half_a_pair(tmp_path, settings, missing) -> None:
    with pytest.raises(ValidationError, match=f"{missing}_KEY is missing"):
        settings(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValidationError, match=f"{missing}_CERT is missing"):
        settings(tls_key=tmp_path / "c.key")
    assert settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.key") is not None
    assert settings() is not None  # neither: plaintext, as before


def test_server_tls_loads_a_pair_and_names_the_setting_of_a_bad_file(tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ServerTls.load(cert, key, "STREAMLEDGER_X_TLS")
    assert (tls.cert, tls.key) == (cert.read_bytes(), key.read_bytes())
    assert ServerTls.optional(None, None, "STREAMLEDGER_X_TLS") is None
    with pytest.raises(StartError, match=f"STREAMLEDGER_X_TLS_KEY: cannot read {tmp_path / 'nope.key'}"):
        ServerTls.load(cert, tmp_path / "nope.key", "STREAMLEDGER_X_TLS")
    with pytest.raises(StartError, match="STREAMLEDGER_X_TLS_CERT: .* is not a PEM certificate"):
        ServerTls.load(key, key, "STREAMLEDGER_X_TLS")
    with pytest.raises(StartError, match="STREAMLEDGER_X_TLS_KEY: .* is not an unencrypted PEM private key"):
        ServerTls.load(cert, cert, "STREAMLEDGER_X_TLS")


async def test_ingestion_with_an_unreadable_certificate_fails_its_start_before_kafka(tmp_path) -> None:
    _, key = self_signed(tmp_path)
    settings = IngestionSettings(kafka_bootstrap="127.0.0.1:1", ingestion_tls_cert=tmp_path / "gone.pem",
                                 ingestion_tls_key=key)
    with pytest.raises(StartError, match=f"STREAMLEDGER_INGESTION_TLS_CERT: cannot read {tmp_path / 'gone.pem'}"):
        await IngestionService(settings).start()


async def test_audit_with_an_unreadable_key_fails_its_start_before_any_store(tmp_path) -> None:
    cert, _ = self_signed(tmp_path)
    settings = AuditSettings(mongo_url="mongodb://127.0.0.1:1", audit_tls_cert=cert, audit_tls_key=tmp_path)  # a folder
    with pytest.raises(StartError, match=f"STREAMLEDGER_AUDIT_TLS_KEY: cannot read {tmp_path}: Is a directory"):
        await AuditService(settings, LedgerSettings()).start()
