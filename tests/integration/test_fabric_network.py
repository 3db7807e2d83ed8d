"""The local Fabric network, brought up by `Stack` with Fabric enabled, driven through
Fabric's own CLI (`peer chaincode invoke/query`, TLS on) as the identities the stack issues
(deploy/fabric/identities.yaml): Org1's `Admin` mints, `anchoring` and `registry` (operator)
anchor and register, `settlement` (provider acting for Org1's `provider` account) authorizes
and settles, `audit` (auditor) reads; Org2's `User5` is a client: it freezes, and signs the
receipts the provider settles on.

The `network` fixture (tests/integration/conftest.py) brings Fabric up. The ledger keeps
its state between runs, so every id here carries a fresh suffix and balances of the
long-lived accounts are compared with what they were before.
"""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest

from devstack import Stack
from devstack.fabric import CHANNEL, FabricError, FabricNetwork
from devstack.settings import StackSettings
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.fabric import load_msp
from tests.integration.conftest import FABRIC_PARTS
from tests.integration.paying import Sign, in_an_hour, new_nonce

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CLIENT = {"user": "User5", "org": "Org2"}
"""The client every test here acts as (Org2 grants its User1..8 the client role)."""


@pytest.fixture(scope="module")
def admin(network: FabricNetwork) -> str:
    return network.account_of("Admin")


@pytest.fixture(scope="module")
def client(network: FabricNetwork) -> str:
    return network.account_of(**CLIENT)


@pytest.fixture(scope="module")
def provider(network: FabricNetwork) -> str:
    """Org1's `provider` account: `settlement` authorizes and settles the holds paid to it."""
    return network.account_of("provider")


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


def refusal(code: str, field: str, text: str) -> str:
    """A pattern for the contract's refusal `CODE: "field": text` as the peer CLI prints it
    (quotes escaped inside its response message)."""
    return rf'{code}: \\?"{field}\\?": {re.escape(text)}'


def client_signer(network: FabricNetwork) -> Sign:
    """The client's own key, which signs its receipts."""
    return load_msp(network.user_msp(**CLIENT), network.org(CLIENT["org"]).msp_id)[1].sign


def balance(network: FabricNetwork, account: str) -> int:
    """Read as the auditor: admins read nothing, a client reads only its own account."""
    return json.loads(network.query("Balance", account, user="audit"))["balance"]


def balance_or_zero(network: FabricNetwork, account: str) -> int:
    try:
        return balance(network, account)
    except FabricError as exc:
        if "NOT_FOUND" in str(exc):
            return 0
        raise


def test_up_twice_changes_nothing_and_status_is_healthy(network: FabricNetwork) -> None:
    stack = Stack(StackSettings(fabric=True), say=lambda _msg: None)
    before = {s.name: s.pid for s in stack.status()}
    statuses = {s.name: s for s in stack.up()}
    for name in FABRIC_PARTS:
        assert statuses[name].state == "healthy", statuses[name]
        assert statuses[name].pid == before[name], f"{name} was restarted by a second up"
    for org in network.orgs:  # both organisations' peers joined the channel
        channels = network.peer_cli("channel", "list", org=org.name)
        assert CHANNEL in channels.split(), (org.name, channels)


def test_every_listener_is_on_loopback_only(network: FabricNetwork) -> None:
    ports = [port for o in network.orderers for port in (o.port, o.admin_port)]
    ports += [port for org in network.orgs for port in (org.peer_port, org.chaincode_port)]
    assert len(set(ports)) == 10  # 3 orderers (node, admin), 2 peers, 2 chaincode servers
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(1)
            assert sock.connect_ex(("127.0.0.1", port)) == 0, f"nothing listens on 127.0.0.1:{port}"


def test_identities_are_classified(admin: str, client: str, network: FabricNetwork) -> None:
    me = json.loads(network.query("WhoAmI"))
    other = json.loads(network.query("WhoAmI", **CLIENT))
    org2_admin = json.loads(network.query("WhoAmI", org="Org2"))
    assert me["IsAdmin"] is True and me["MSPID"] == "Org1MSP" and me["Roles"] == []
    assert other["IsAdmin"] is False and other["MSPID"] == "Org2MSP" and other["Roles"] == ["client"]
    assert org2_admin["IsAdmin"] is True and org2_admin["MSPID"] == "Org2MSP"
    assert "User5@org2" in client and "Admin@org1" in admin


def test_mint_transfer_balance(network: FabricNetwork, client: str, suffix: str) -> None:
    start = balance_or_zero(network, client)
    network.invoke("Mint", client, "500")
    assert balance(network, client) == start + 500
    payee = f"payee-{suffix}"
    network.invoke("Transfer", payee, "120", **CLIENT)
    assert balance(network, payee) == 120
    assert balance(network, client) == start + 380
    # The client reads its own account, on its own org's peer.
    assert json.loads(network.query("Balance", client, **CLIENT))["balance"] == start + 380


def test_overdraft_and_non_positive_amounts_are_rejected(network: FabricNetwork, suffix: str) -> None:
    with pytest.raises(FabricError, match=refusal("INSUFFICIENT_FUNDS", "amount", "")):
        network.invoke("Transfer", f"payee-{suffix}", "1000000000000", **CLIENT)
    with pytest.raises(FabricError, match="must be a positive integer"):
        network.invoke("Mint", f"acct-{suffix}", "-5")


def test_mint_by_a_non_admin_is_rejected(network: FabricNetwork, client: str) -> None:
    with pytest.raises(FabricError, match=refusal("FORBIDDEN", "creator", "only an admin of Org1MSP may mint")):
        network.invoke("Mint", client, "1000", **CLIENT)


def test_freeze_authorize_settle_then_second_settle_rejected(
        network: FabricNetwork, client: str, provider: str, suffix: str) -> None:
    network.invoke("Mint", client, "200")
    before, earned = balance(network, client), balance_or_zero(network, provider)
    nonce = new_nonce()
    hold = hold_id(client, nonce)  # the contract derives it from the client and its nonce
    expires = str(in_an_hour())
    network.invoke("Freeze", nonce, provider, "100", "20", expires, "0", **CLIENT)  # 100 at 20 a unit
    assert balance(network, client) == before - 100
    network.invoke("Authorize", hold, "60", user="settlement")  # a provider acting for `provider`
    signed = sign_receipt(client_signer(network), hold, 3, 1)  # the client signs for 3 units
    network.invoke("Settle", hold, "3", "1", signed.signature, user="settlement")
    settled = json.loads(network.query("GetHold", hold, user="settlement"))
    assert (settled["status"], settled["charged"], settled["refunded"]) == ("SETTLED", 60, 40)
    assert balance(network, provider) == earned + 60
    assert balance(network, client) == before - 60
    with pytest.raises(FabricError, match=refusal("ALREADY_SETTLED", "hold_id", "hold ") + rf'\\?"{hold}\\?" was'):
        network.invoke("Settle", hold, "3", "1", signed.signature, user="settlement")
    assert balance(network, provider) == earned + 60  # the rejected settle moved nothing


def test_anchor_then_get_anchor(network: FabricNetwork, suffix: str) -> None:
    batch, root = f"net-{suffix}:0:1000-1041", uuid.uuid4().hex * 2  # <topic>:<partition>:<first>-<last>
    network.invoke("AnchorBatch", batch, root, "42", "1000", "1041", user="anchoring")
    anchor = json.loads(network.query("GetAnchor", batch, user="anchoring"))
    assert (anchor["batch_id"], anchor["merkle_root"], anchor["count"]) == (batch, root, 42)
    assert anchor["tx_id"]
    with pytest.raises(FabricError, match=refusal("FORBIDDEN", "creator",
                                                 "anchoring a batch needs the operator role")):
        network.invoke("AnchorBatch", f"other-{suffix}:0:0-0", root, "1", "0", "0", **CLIENT)


def test_register_model_then_get_model(network: FabricNetwork, suffix: str) -> None:
    model, digest = f"model-{suffix}", uuid.uuid4().hex * 2
    network.invoke("RegisterModel", model, "1", digest, user="registry")  # a new model starts at version 1
    registered = json.loads(network.query("GetModel", model, "1", user="registry"))
    assert (registered["model_id"], registered["version"], registered["sha256"]) == (model, 1, digest)
    with pytest.raises(FabricError, match="has no version 2"):
        network.query("GetModel", model, "2", user="registry")


def test_history_of_a_key(network: FabricNetwork, suffix: str) -> None:
    account = f"audited-{suffix}"
    network.invoke("Mint", account, "10")
    network.invoke("Mint", account, "15")
    entries = json.loads(network.query("History", f"account:{account}", user="audit"))
    balances = sorted(json.loads(entry["value"])["balance"]
                      for entry in entries)
    assert balances == [10, 25]
    assert all(entry["tx_id"] for entry in entries)
