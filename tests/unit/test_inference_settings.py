"""Inference settings: paid mode is the default and will not start without mutual TLS."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.inference.settings import InferenceSettings


@pytest.fixture(autouse=True)
def _no_inference_environment(monkeypatch) -> None:
    for name in ("MODE", "TLS_CERT", "TLS_KEY", "CLIENT_CAS"):
        monkeypatch.delenv(f"STREAMLEDGER_INFERENCE_{name}", raising=False)


def test_the_default_is_paid_and_it_names_the_missing_tls_settings() -> None:
    with pytest.raises(ValidationError) as refused:
        InferenceSettings()
    message = str(refused.value)
    assert "paid mode authenticates clients by mutual TLS" in message
    assert "inference_tls_cert, inference_tls_key, inference_client_cas" in message


def test_paid_mode_starts_with_a_certificate_a_key_and_client_cas(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_CLIENT_CAS", f'{{"Org1MSP": "{tmp_path / "org1-ca.pem"}"}}')
    settings = InferenceSettings(inference_tls_cert=tmp_path / "server.pem", inference_tls_key=tmp_path / "server.key")
    assert settings.inference_mode == "paid"
    assert settings.inference_client_cas == {"Org1MSP": tmp_path / "org1-ca.pem"}
    monkeypatch.delenv("STREAMLEDGER_INFERENCE_CLIENT_CAS")
    with pytest.raises(ValidationError, match=r"missing: inference_client_cas\)"):
        InferenceSettings(inference_tls_cert=tmp_path / "server.pem", inference_tls_key=tmp_path / "server.key")


def test_free_mode_is_a_setting_and_needs_no_tls(monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_MODE", "free")
    assert InferenceSettings().inference_mode == "free"
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_MODE", "open")
    with pytest.raises(ValidationError, match="inference_mode"):
        InferenceSettings()
