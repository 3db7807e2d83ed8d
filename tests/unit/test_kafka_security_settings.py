"""How clients connect to a secured Kafka (KafkaSecurity, CommonSettings), the local stack's
Kafka secrets (devstack/kafka_auth.py) and the broker's listener lines."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from devstack.kafka import KafkaPart
from devstack.kafka_auth import PRINCIPALS, KafkaAuth
from devstack.part import InstallError
from devstack.runner import kafka_identity
from devstack.settings import StackSettings
from streamledger.kafka import KafkaSecurity, child_environment
from streamledger.kafka.clients import KafkaCredentialsError
from streamledger.settings import CommonSettings


@pytest.fixture
def stack_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KafkaAuth:
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    for name in list(__import__("os").environ):
        if name.startswith("STREAMLEDGER_KAFKA_"):
            monkeypatch.delenv(name)
    auth = KafkaAuth(tmp_path / "data" / "kafka-auth")
    auth.ensure()
    return auth


def test_the_stack_makes_secrets_only_their_owner_reads(stack_home: KafkaAuth) -> None:
    assert stat.S_IMODE(stack_home.folder.stat().st_mode) == 0o700
    for principal in PRINCIPALS:
        path = stack_home.password_file(principal)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(stack_home.password(principal)) >= 32
    assert stat.S_IMODE(stack_home.broker_pem.stat().st_mode) == 0o600
    assert len({stack_home.password(p) for p in PRINCIPALS}) == len(PRINCIPALS)
    before = stack_home.password("ingestion")
    stack_home.ensure()  # a second `stack up` keeps them
    assert stack_home.password("ingestion") == before


def test_the_broker_certificate_is_signed_by_the_ca_for_its_address(stack_home: KafkaAuth) -> None:
    ca = x509.load_pem_x509_certificate(stack_home.ca_cert.read_bytes())
    broker = x509.load_pem_x509_certificates(stack_home.broker_pem.read_bytes())[0]
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def test_by_default_a_client_is_the_local_admin_over_sasl_ssl(stack_home: KafkaAuth) -> None:
    security = KafkaSecurity.from_settings()
    assert (security.protocol, security.username, security.mechanism) == ("SASL_SSL", "admin", "SCRAM-SHA-512")
    assert security.password == stack_home.password("admin")
    assert security.cafile == stack_home.ca_cert
    assert security.password not in repr(security)
    options = security.options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_plain_username"] == "admin"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname


def test_a_named_principal_reads_its_own_password(stack_home: KafkaAuth, monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_KAFKA_SASL_USERNAME", "cleaning")
    assert KafkaSecurity.from_settings().password == stack_home.password("cleaning")
    assert KafkaSecurity.from_settings(username="inference").password == stack_home.password("inference")


def test_settings_for_another_cluster(tmp_path: Path, stack_home: KafkaAuth) -> None:
    ca = tmp_path / "their-ca.pem"
    ca.write_bytes(stack_home.ca_cert.read_bytes())
    settings = CommonSettings(kafka_sasl_username="svc", kafka_sasl_password="s3cret", kafka_ssl_cafile=ca,
                              kafka_sasl_mechanism="SCRAM-SHA-256")
    security = KafkaSecurity.from_settings(settings)
    assert (security.username, security.password, security.cafile, security.mechanism) == (
        "svc", "s3cret", ca, "SCRAM-SHA-256")
    assert KafkaSecurity.from_settings(CommonSettings(kafka_security_protocol="PLAINTEXT")).options() == {
        "security_protocol": "PLAINTEXT"}


def test_a_missing_password_file_is_an_error_naming_it(stack_home: KafkaAuth, tmp_path: Path) -> None:
    gone = tmp_path / "gone.password"
    with pytest.raises(KafkaCredentialsError, match="gone.password"):
        KafkaSecurity.from_settings(CommonSettings(kafka_sasl_password_file=gone))
    with pytest.raises(KafkaCredentialsError, match="nobody"):
        KafkaSecurity.from_settings(username="nobody")


def test_a_child_gets_files_never_a_password(stack_home: KafkaAuth) -> None:
    env = child_environment(username="ledger")
    assert env["STREAMLEDGER_KAFKA_SASL_USERNAME"] == "ledger"
    assert env["STREAMLEDGER_KAFKA_SASL_PASSWORD_FILE"] == str(stack_home.password_file("ledger"))
    assert not any(stack_home.password(p) in value for p in PRINCIPALS for value in env.values())
    identity = kafka_identity("storage")
    assert identity["STREAMLEDGER_KAFKA_SASL_USERNAME"] == "storage"
    assert "STREAMLEDGER_KAFKA_BOOTSTRAP" not in identity


def test_the_secured_broker_config(tmp_path: Path) -> None:
    part = KafkaPart(StackSettings(home=tmp_path, kafka_port=19092))
    part.auth.ensure()
    lines = part.listener_config().splitlines()
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in lines
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "super.users=User:admin;User:CN=streamledger-kafka" in lines
    assert any(line.startswith("listeners=SASL_SSL://127.0.0.1:19092,") for line in lines)
    assert "PLAINTEXT://" not in part.listener_config()
    assert not any(part.auth.password(p) in part.listener_config() for p in PRINCIPALS)
    bench = KafkaPart(StackSettings(home=tmp_path, kafka_plaintext_port=19094)).listener_config()
    assert "PLAINTEXT://127.0.0.1:19094" in bench and "User:ANONYMOUS" in bench
    plain = KafkaPart(StackSettings(home=tmp_path, kafka_secure=False)).listener_config()
    assert "SASL" not in plain and "authorizer" not in plain


def test_a_running_broker_of_the_other_kind_is_an_error_saying_to_restart(tmp_path: Path) -> None:
    part = KafkaPart(StackSettings(home=tmp_path))
    part.config.parent.mkdir(parents=True)
    part.config.write_text("listeners=PLAINTEXT://127.0.0.1:9092\n")  # started before security was on
    with pytest.raises(InstallError, match="STREAMLEDGER_STACK_KAFKA_SECURE"):
        part.settle()


@pytest.mark.parametrize(("setting", "codec"), [(None, "snappy"), ("lz4", "lz4"), ("none", None), ("zstd", "zstd")])
async def test_producers_compress_as_the_setting_says(monkeypatch: pytest.MonkeyPatch, setting: str | None,
                                                      codec: str | None) -> None:
    from aiokafka.producer.producer import AIOKafkaProducer

    from streamledger import kafka

    if setting is None:
        monkeypatch.delenv("STREAMLEDGER_KAFKA_COMPRESSION", raising=False)
    else:
        monkeypatch.setenv("STREAMLEDGER_KAFKA_COMPRESSION", setting)
    producer = kafka.producer("127.0.0.1:1", security=KafkaSecurity(protocol="PLAINTEXT"))  # built, never started
    wanted = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", compression_type=codec)
    assert producer._compression_type == wanted._compression_type


def test_an_unknown_compression_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="kafka_compression"):
        CommonSettings()
