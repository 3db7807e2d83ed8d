"""Inference settings: paid mode is the default and will not start without mutual TLS."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.inference.settings import InferenceSettings
from streamledger.lifecycle import StartError


@pytest.fixture(autouse=True)
def _no_inference_environment(monkeypatch) -> None:
    for name in ("MODE", "TLS_CERT", "TLS_KEY", "CLIENT_CAS", "CREDIT_WINDOW_UNITS", "RESERVE_UNITS"):
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


def test_free_mode_serves_tls_when_given_a_certificate_and_its_key_mutual_with_client_cas(tmp_path, monkeypatch) -> None:
    from services.inference import tls

    monkeypatch.setenv("STREAMLEDGER_INFERENCE_MODE", "free")
    assert tls.server_credentials(InferenceSettings()) is None  # plaintext
    with pytest.raises(ValidationError, match="STREAMLEDGER_INFERENCE_TLS_KEY is missing"):
        InferenceSettings(inference_tls_cert=tmp_path / "server.pem")
    with pytest.raises(ValidationError, match="CLIENT_CAS in free mode asks for mutual TLS"):
        InferenceSettings(inference_client_cas={"Org2MSP": tmp_path / "ca.pem"})
    files = {"inference_tls_cert": tmp_path / "server.pem", "inference_tls_key": tmp_path / "server.key"}
    assert InferenceSettings(**files).inference_client_cas == {}  # server TLS only
    with pytest.raises(StartError, match="STREAMLEDGER_INFERENCE_TLS_KEY: cannot read"):  # the files are read at start
        tls.server_credentials(InferenceSettings(**files))


def test_the_credit_window_and_the_reservation_chunk_are_settings_of_at_least_one(monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_MODE", "free")
    defaults = InferenceSettings()
    assert (defaults.inference_credit_window_units, defaults.inference_reserve_units) == (100, 1000)
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_CREDIT_WINDOW_UNITS", "16")
    monkeypatch.setenv("STREAMLEDGER_INFERENCE_RESERVE_UNITS", "64")
    assert (InferenceSettings().inference_credit_window_units, InferenceSettings().inference_reserve_units) == (16, 64)
    for name in ("CREDIT_WINDOW_UNITS", "RESERVE_UNITS"):
        monkeypatch.setenv(f"STREAMLEDGER_INFERENCE_{name}", "0")
        with pytest.raises(ValidationError, match=f"inference_{name.lower()} must be at least 1; got 0"):
            InferenceSettings()
        monkeypatch.setenv(f"STREAMLEDGER_INFERENCE_{name}", "16")


def test_paid_mode_with_unreadable_tls_files_refuses_the_start_in_one_line_naming_the_setting(tmp_path) -> None:
    import os
    import subprocess
    import sys

    missing = tmp_path / "org1-ca.pem"
    env = {**os.environ, "STREAMLEDGER_INFERENCE_MODE": "paid", "STREAMLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "STREAMLEDGER_INFERENCE_TLS_CERT": str(tmp_path / "server.pem"),
           "STREAMLEDGER_INFERENCE_TLS_KEY": str(tmp_path / "server.key"),
           "STREAMLEDGER_INFERENCE_CLIENT_CAS": f'{{"Org1MSP": "{missing}"}}'}
    done = subprocess.run([sys.executable, "-c", "from services.inference.app import main; main()"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"inference: cannot start: STREAMLEDGER_INFERENCE_CLIENT_CAS['Org1MSP']: cannot read {missing}: "
        "No such file or directory"]


async def test_a_server_key_that_cannot_be_read_is_a_start_error_before_any_server_is_reached(tmp_path) -> None:
    from services.inference.app import Inference
    from streamledger.lifecycle import StartError

    ca = tmp_path / "org1-ca.pem"
    ca.write_text("a CA")
    settings = InferenceSettings(inference_mode="paid", kafka_bootstrap="127.0.0.1:1",
                                 inference_tls_cert=tmp_path / "server.pem", inference_tls_key=tmp_path / "server.key",
                                 inference_client_cas={"Org1MSP": ca})
    with pytest.raises(StartError, match=f"STREAMLEDGER_INFERENCE_TLS_KEY: cannot read {tmp_path / 'server.key'}"):
        await Inference(settings).start()
