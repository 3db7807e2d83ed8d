"""The local Fabric network, brought up by `Stack` with Fabric enabled, driven through
Fabric's own CLI (`peer chaincode invoke/query`, TLS on) as two Org1 identities: Admin
(admin OU: may mint) and User1 (a plain client).

The `network` fixture (tests/integration/conftest.py) brings Fabric up. The ledger keeps
its state between runs, so every id here carries a fresh suffix.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

from devstack import Stack
from devstack.fabric import CHANNEL, FabricError, FabricNetwork
from devstack.settings import StackSettings
from tests.integration.conftest import FABRIC_PARTS

pytestmark = [pytest.mark.integration, pytest.mark.fabric]


@pytest.fixture(scope="module")
def admin(network: FabricNetwork) -> str:
    return json.loads(network.query("WhoAmI"))["Account"]


@pytest.fixture(scope="module")
def user1(network: FabricNetwork) -> str:
    return json.loads(network.query("WhoAmI", user="User1"))["Account"]


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


def balance(network: FabricNetwork, account: str) -> int:
    return json.loads(network.query("Balance", account))["balance"]


def test_up_twice_changes_nothing_and_status_is_healthy(network: FabricNetwork) -> None:
    stack = Stack(StackSettings(fabric=True), say=lambda _msg: None)
    before = {s.name: s.pid for s in stack.status()}
    statuses = {s.name: s for s in stack.up()}
    for name in FABRIC_PARTS:
        assert statuses[name].state == "healthy", statuses[name]
        assert statuses[name].pid == before[name], f"{name} was restarted by a second up"
    channels = network.peer_cli("channel", "list")
    assert CHANNEL in channels.split()


def test_every_listener_is_on_loopback_only(network: FabricNetwork) -> None:
    s = network.settings
    for port in (s.fabric_orderer_port, s.fabric_orderer_admin_port, s.fabric_peer_port, s.fabric_chaincode_port):
        with socket.socket() as sock:
            sock.settimeout(1)
            assert sock.connect_ex(("127.0.0.1", port)) == 0, f"nothing listens on 127.0.0.1:{port}"


def test_identities_are_classified(admin: str, user1: str, network: FabricNetwork) -> None:
    me = json.loads(network.query("WhoAmI"))
    other = json.loads(network.query("WhoAmI", user="User1"))
    assert me["IsAdmin"] is True and me["MSPID"] == "Org1MSP"
    assert other["IsAdmin"] is False and "User1@" in user1 and "Admin@" in admin


def test_mint_transfer_balance(network: FabricNetwork, user1: str, suffix: str) -> None:
    start = balance(network, user1) if _known(network, user1) else 0
    network.invoke("Mint", user1, "500")
    assert balance(network, user1) == start + 500
    payee = f"payee-{suffix}"
    network.invoke("Transfer", payee, "120", user="User1")
    assert balance(network, payee) == 120
    assert balance(network, user1) == start + 380


def test_overdraft_and_non_positive_amounts_are_rejected(network: FabricNetwork, suffix: str) -> None:
    with pytest.raises(FabricError, match="amount"):
        network.invoke("Transfer", f"payee-{suffix}", "1000000000000", user="User1")
    with pytest.raises(FabricError, match="must be a positive integer"):
        network.invoke("Mint", f"acct-{suffix}", "-5")


def test_mint_by_a_non_admin_is_rejected(network: FabricNetwork, user1: str, suffix: str) -> None:
    with pytest.raises(FabricError, match="only the admin identity may mint"):
        network.invoke("Mint", user1, "1000", user="User1")


def test_freeze_authorize_settle_then_second_settle_rejected(
    network: FabricNetwork, user1: str, suffix: str
) -> None:
    network.invoke("Mint", user1, "200")
    before = balance(network, user1)
    hold, provider = f"hold-{suffix}", f"provider-{suffix}"
    expires = str(int(time.time()) + 3600)
    network.invoke("Freeze", hold, user1, provider, "100", expires, user="User1")
    assert balance(network, user1) == before - 100
    network.invoke("Authorize", hold, "60")  # the admin may act for the provider
    network.invoke("Settle", hold, "3", "20")
    settled = json.loads(network.query("GetHold", hold))
    assert (settled["status"], settled["charged"], settled["refunded"]) == ("SETTLED", 60, 40)
    assert balance(network, provider) == 60
    assert balance(network, user1) == before - 60
    with pytest.raises(FabricError, match=hold):
        network.invoke("Settle", hold, "1", "20")
    assert balance(network, provider) == 60  # the rejected settle moved nothing


def test_anchor_then_get_anchor(network: FabricNetwork, suffix: str) -> None:
    batch, root = f"batch-{suffix}", uuid.uuid4().hex * 2
    network.invoke("AnchorBatch", batch, root, "42", "1000", "1041")
    anchor = json.loads(network.query("GetAnchor", batch))
    assert (anchor["batch_id"], anchor["merkle_root"], anchor["count"]) == (batch, root, 42)
    assert anchor["tx_id"]
    with pytest.raises(FabricError, match="only an operator or the admin may anchor"):
        network.invoke("AnchorBatch", f"other-{suffix}", root, "1", "0", "0", user="User1")


def test_register_model_then_get_model(network: FabricNetwork, suffix: str) -> None:
    model, digest = f"model-{suffix}", uuid.uuid4().hex * 2
    network.invoke("RegisterModel", model, "3", digest)
    registered = json.loads(network.query("GetModel", model, "3"))
    assert (registered["model_id"], registered["version"], registered["sha256"]) == (model, 3, digest)
    with pytest.raises(FabricError, match="has no version 4"):
        network.query("GetModel", model, "4")


def test_history_of_a_key(network: FabricNetwork, suffix: str) -> None:
    account = f"audited-{suffix}"
    network.invoke("Mint", account, "10")
    network.invoke("Mint", account, "15")
    entries = json.loads(network.query("History", f"account:{account}"))
    balances = sorted(json.loads(entry["value"])["balance"]
                      for entry in entries)
    assert balances == [10, 25]
    assert all(entry["tx_id"] for entry in entries)


def _known(network: FabricNetwork, account: str) -> bool:
    try:
        network.query("Balance", account)
        return True
    except FabricError:
        return False
