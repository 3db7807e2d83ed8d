"""Every service acts on the ledger as its own identity and checks its role at start, without a
ledger: `LedgerClient.require_role` over a fake contract, the admin-certificate warning of
`LedgerClient.connect` (certificates made here), and services that refuse to start, one line
naming the identity and the missing role, when their identity lacks it.

The real network's refusals are in tests/integration/pipeline/test_ledger_service.py and
tests/integration/test_ledger_seams.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.audit.app import AuditService
from services.audit.settings import AuditSettings
from services.inference.app import Inference
from services.inference.settings import InferenceSettings
from streamledger.ledger import LedgerClient, MissingRole
from streamledger.lifecycle import StartError
from streamledger.settings import LedgerSettings

ACCOUNT = "Org1MSP::CN=anchoring@org1.streamledger.local,OU=client"


class FakeContract:
    """Answers WhoAmI only, as the contract would for `me`."""

    def __init__(self, me: dict[str, Any]) -> None:
        self.me = me

    async def evaluate_json(self, function: str, *args: object) -> Any:
        assert function == "WhoAmI", function
        return self.me


class FakeGateway:
    closed = False

    async def close(self) -> None:
        self.closed = True


def who(roles: list[str], account: str = ACCOUNT, acts_for: str = "", is_admin: bool = False) -> dict[str, Any]:
    return {"Account": account, "MSPID": account.split("::")[0], "IsAdmin": is_admin, "Roles": roles,
            "ActsFor": acts_for}


def fake_client(me: dict[str, Any], identity: str = "anchoring") -> LedgerClient:
    return LedgerClient(FakeGateway(), FakeContract(me), identity)  # type: ignore[arg-type]


# -- LedgerClient.require_role --

async def test_a_granted_role_passes_with_the_callers_record() -> None:
    me = who(["operator"])
    assert await fake_client(me).require_role("operator") == me


async def test_a_missing_role_names_the_identity_its_account_the_role_and_what_it_holds() -> None:
    with pytest.raises(MissingRole) as refused:
        await fake_client(who(["auditor"]), identity="anchoring").require_role("operator")
    message = str(refused.value)
    assert message.startswith(f"ledger identity 'anchoring' ({ACCOUNT}) does not hold the operator role "
                              f"(it holds: auditor)"), message
    assert "an admin of Org1MSP grants it with GrantRole" in message
    assert isinstance(refused.value, StartError)  # `serve` prints it as the one line of a refused start


async def test_an_admin_is_told_that_being_admin_grants_no_role() -> None:
    admin = who([], account="Org1MSP::CN=Admin@org1.streamledger.local,OU=admin", is_admin=True)
    with pytest.raises(MissingRole, match=r"\(it holds: none; an admin holds no role unless granted one\)"):
        await fake_client(admin, identity="Admin").require_role("provider")


# -- the admin-certificate warning --

def write_msp(folder: Path, ou: str) -> Path:
    """An MSP folder (signcerts/, keystore/) with a self-signed certificate of NodeOU `ou`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{ou}@org1.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (folder / "signcerts").mkdir(parents=True)
    (folder / "keystore").mkdir()
    (folder / "signcerts" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "keystore" / "priv_sk").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "tls-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("ou", "warned"), [("admin", True), ("client", False)])
async def test_connecting_with_an_admin_certificate_logs_a_warning(tmp_path: Path, ou: str, warned: bool) -> None:
    msp = write_msp(tmp_path / ou, ou)
    settings = LedgerSettings(fabric_msp_dir=msp, fabric_peer_endpoint="127.0.0.1:1",
                              fabric_peer_tls_root=msp / "tls-ca.pem")
    captured, logger = Captured(), logging.getLogger("streamledger.ledger")
    logger.addHandler(captured)
    try:
        client = LedgerClient.connect(settings, service_identity="settlement")  # connects lazily: no server
        await client.gateway.close()
    finally:
        logger.removeHandler(captured)
    warnings = [r for r in captured.records if r.getMessage() == "ledger_identity_is_admin"]
    assert len(warnings) == int(warned), [r.getMessage() for r in captured.records]
    if warned:
        assert warnings[0].levelno == logging.WARNING
        assert (warnings[0].msp_id, warnings[0].service_identity) == ("Org1MSP", "settlement")
    assert client.identity == str(msp)  # an MSP folder set in the settings names the identity


def test_the_identity_named_is_the_local_user_else_the_services_own() -> None:
    assert LedgerSettings(fabric_user="User5", fabric_msp_id="Org2MSP").msp_dir("settlement").parts[-2] \
        == "User5@org2.streamledger.local"
    assert LedgerSettings().msp_dir("settlement").parts[-2] == "settlement@org1.streamledger.local"


# -- services refuse to start without their role --

LEDGER_SERVICE = """
from streamledger.ledger import LedgerClient

class Contract:
    def __init__(self, me):
        self.me = me

    async def evaluate_json(self, function, *args):
        return self.me

class Gateway:
    async def close(self):
        pass

ROLES = {ROLES}

def connect(settings, retry=None, *, service_identity=""):
    me = {{"Account": f"Org1MSP::CN={{service_identity}}", "MSPID": "Org1MSP", "IsAdmin": False,
          "Roles": ROLES[service_identity], "ActsFor": ""}}
    return LedgerClient(Gateway(), Contract(me), service_identity)

LedgerClient.connect = staticmethod(connect)
from services.ledger.app import main
main()
"""


@pytest.mark.parametrize(("roles", "refusal"), [
    ({"anchoring": [], "settlement": ["provider"]},
     "ledger: cannot start: ledger identity 'anchoring' (Org1MSP::CN=anchoring) does not hold the operator role"),
    ({"anchoring": ["operator"], "settlement": ["client"]},
     "ledger: cannot start: ledger identity 'settlement' (Org1MSP::CN=settlement) does not hold the provider role "
     "(it holds: client)"),
])
def test_the_ledger_service_without_a_loops_role_cannot_start_and_says_which(roles: dict, refusal: str) -> None:
    """`streamledger serve ledger` as it runs (in a child process: `serve` owns the exit code), its
    two identities answered by a fake ledger."""
    code = textwrap.dedent(LEDGER_SERVICE).replace("{ROLES}", json.dumps(roles)).replace("{{", "{").replace("}}", "}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(refusal), done.stderr
    assert "Traceback" not in done.stderr


async def test_paid_inference_without_the_provider_role_cannot_start(monkeypatch, tmp_path: Path) -> None:
    """Refused before anything else is touched (Kafka here listens nowhere)."""
    me = who(["client"], account="Org2MSP::CN=User1@org2.streamledger.local,OU=client")
    gateway = FakeGateway()
    monkeypatch.setattr(LedgerClient, "connect", staticmethod(
        lambda settings, retry=None, *, service_identity="": LedgerClient(gateway, FakeContract(me), "User1")))
    msp = write_msp(tmp_path / "tls", "client")
    settings = InferenceSettings(kafka_bootstrap="127.0.0.1:1", inference_port=0,
                                 inference_tls_cert=msp / "signcerts" / "cert.pem",
                                 inference_tls_key=msp / "keystore" / "priv_sk",
                                 inference_client_cas={"Org2MSP": msp / "tls-ca.pem"})
    with pytest.raises(MissingRole, match="ledger identity 'User1' .* does not hold the provider role"):
        await asyncio.wait_for(Inference(settings).start(), 10)
    assert gateway.closed  # what the failed start opened is closed


async def test_the_audit_without_the_auditor_role_cannot_start(monkeypatch) -> None:
    me = who(["operator"], account="Org1MSP::CN=anchoring@org1.streamledger.local,OU=client")
    monkeypatch.setattr(LedgerClient, "connect", staticmethod(
        lambda settings, retry=None, *, service_identity="": LedgerClient(FakeGateway(), FakeContract(me),
                                                                          service_identity)))
    service = AuditService(AuditSettings(audit_http_port=0, audit_grpc_port=0), LedgerSettings())
    with pytest.raises(MissingRole, match="ledger identity 'audit' .* does not hold the auditor role"):
        async with service:
            pass
