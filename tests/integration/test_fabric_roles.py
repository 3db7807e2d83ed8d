"""Roles on the ledger (chaincode/ledger/roles.go, access.go), through the Python gateway:
each role's forbidden calls are refused by the contract with the code and the field at fault
(typed `contract_error`), role changes come only from an admin of the grantee's own
organisation, a revoked role is refused from the next transaction on, and every grant and
revocation is a transaction that `History("role:<account>")` shows an auditor.

Identities (deploy/fabric/identities.yaml): Org1's `Admin` (mints, grants), `anchoring`
(operator), `settlement` (provider for Org1's `provider` account), `audit` (auditor);
Org2's `Admin` and its client `User5`. Org1's `User6` is granted provider acting for its own
account here (idempotently: grants persist on the ledger), and Org1's `User8` is granted and
then revoked operator by each run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from devstack.fabric import FabricNetwork
from streamledger.core.contract_errors import (
    ContractError,
    Forbidden,
    InvalidArgument,
    NotFound,
)
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.fabric import EndorseError, EvaluateError, GatewayError
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity
from tests.integration.paying import in_an_hour, new_nonce, signer_of

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

ROOT = "ab" * 32  # any well-formed Merkle root


def connect(user: str, org: str = "Org1") -> LedgerClient:
    return LedgerClient.connect(identity(user, org))


@pytest.fixture
async def ledgers(network: FabricNetwork) -> AsyncIterator[dict[str, LedgerClient]]:
    """One client per identity these tests act as, by name; `org2-admin` is Org2's Admin."""
    names = {"admin": ("Admin", "Org1"), "org2-admin": ("Admin", "Org2"), "client": ("User5", "Org2"),
             "anchoring": ("anchoring", "Org1"), "settlement": ("settlement", "Org1"),
             "audit": ("audit", "Org1"), "user6": ("User6", "Org1"), "user8": ("User8", "Org1")}
    opened = {name: connect(*who) for name, who in names.items()}
    try:
        yield opened
    finally:
        for ledger in opened.values():
            await ledger.gateway.close()


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


async def account_of(ledger: LedgerClient) -> str:
    return (await ledger.who_am_i())["Account"]


def refusal(failure: pytest.ExceptionInfo[GatewayError]) -> ContractError:
    """The contract's typed refusal carried by a gateway error (fails if there is none)."""
    refused = failure.value.contract_error
    assert refused is not None, f"not the contract's refusal: {failure.value}"
    return refused


async def test_mint_is_refused_to_every_identity_but_an_org1_admin(
        ledgers: dict[str, LedgerClient], suffix: str) -> None:
    account = f"mint-target-{suffix}"
    for who in ("client", "settlement", "anchoring", "audit"):
        with pytest.raises(EndorseError) as failure:
            await ledgers[who].mint(account, 1000)
        refused = refusal(failure)
        assert isinstance(refused, Forbidden) and refused.field == "creator", (who, refused)
        assert "only an admin of Org1MSP may mint" in refused.detail and "is not an admin" in refused.detail
    with pytest.raises(EndorseError) as failure:
        await ledgers["org2-admin"].mint(account, 1000)  # an admin, but of the client organisation
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "creator"
    assert "is an admin of Org2MSP" in refused.detail
    with pytest.raises(EvaluateError) as nothing:
        await ledgers["audit"].balance(account)
    assert isinstance(nothing.value.contract_error, NotFound)  # no refused mint wrote anything
    await ledgers["admin"].mint(account, 7)
    assert await ledgers["audit"].balance(account) == 7


async def test_anchoring_and_registering_need_the_operator_role(
        ledgers: dict[str, LedgerClient], suffix: str) -> None:
    batch = f"roles-{suffix}:0:0-0"  # <topic>:<partition>:<first>-<last>
    for who in ("client", "settlement", "admin"):
        with pytest.raises(EndorseError) as failure:
            await ledgers[who].anchor_batch(batch, ROOT, 1, 0, 0)
        refused = refusal(failure)
        assert isinstance(refused, Forbidden) and refused.field == "creator", (who, refused)
        assert refused.detail.startswith("anchoring a batch needs the operator role")
    assert "being admin does not include it" in refused.detail  # the admin's refusal says why
    with pytest.raises(EndorseError) as failure:
        await ledgers["client"].register_model(f"roles-model-{suffix}", 1, ROOT)
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "creator"
    assert refused.detail.startswith("registering a model needs the operator role")
    assert await ledgers["anchoring"].get_anchor(batch) is None
    anchored = await ledgers["anchoring"].anchor_batch(batch, ROOT, 1, 0, 0)
    assert (await ledgers["anchoring"].get_anchor(batch))["tx_id"] == anchored.transaction_id


@pytest.fixture
async def user6_provider(ledgers: dict[str, LedgerClient]) -> str:
    """Org1's User6 as a provider acting for its own account (granting a held role is a no-op)."""
    account = await account_of(ledgers["user6"])
    granted = await ledgers["admin"].grant_role(account, "provider")
    assert "provider" in granted["roles"] and granted["acts_for"] == account
    return account


async def test_a_provider_settles_only_the_holds_it_acts_for(
        ledgers: dict[str, LedgerClient], user6_provider: str) -> None:
    client, settlement, user6 = ledgers["client"], ledgers["settlement"], ledgers["user6"]
    me = await account_of(client)
    await ledgers["admin"].mint(me, 100)
    nonce = new_nonce()
    hold = hold_id(me, nonce)
    await client.freeze(nonce, user6_provider, 50, 10, in_an_hour())  # paid to User6, 10 a unit
    two_units = sign_receipt(signer_of("User5"), hold, 2, 1)  # the client's own receipt

    with pytest.raises(EndorseError) as failure:
        await settlement.settle(hold, two_units)  # a provider, but acting for Org1's `provider`
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "hold_id"
    assert f'hold "{hold}" is paid to "{user6_provider}"' in refused.detail
    with pytest.raises(EndorseError) as failure:
        await settlement.authorize(hold, 10)
    assert isinstance(refusal(failure), Forbidden) and refusal(failure).field == "hold_id"
    with pytest.raises(EndorseError) as failure:
        await client.settle(hold, two_units)  # the client cannot settle its own hold
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "creator"
    assert refused.detail.startswith("settling a hold needs the provider role")
    with pytest.raises(EvaluateError) as failure:
        await settlement.get_hold(hold)  # nor read it: it is no party to it
    assert isinstance(refusal(failure), Forbidden) and refusal(failure).field == "hold_id"

    assert (await user6.get_hold(hold))["status"] == "OPEN"  # the refusals changed nothing
    await user6.authorize(hold, 20)
    settled = (await user6.settle(hold, two_units)).json()
    assert (settled["charged"], settled["refunded"], settled["provider"]) == (20, 30, user6_provider)


async def test_roles_change_only_by_an_admin_of_the_grantees_organisation(
        ledgers: dict[str, LedgerClient]) -> None:
    user8, client = await account_of(ledgers["user8"]), await account_of(ledgers["client"])
    settlement = await account_of(ledgers["settlement"])
    roles_before = {a: (await ledgers["audit"].get_roles(a))["roles"] for a in (user8, client, settlement)}

    org1_admin, org2_admin = ledgers["admin"], ledgers["org2-admin"]
    wrong_org = [(lambda: org2_admin.grant_role(user8, "auditor"), "Org2MSP", "Org1MSP"),
                 (lambda: org2_admin.revoke_role(settlement, "provider"), "Org2MSP", "Org1MSP"),
                 (lambda: org1_admin.grant_role(client, "auditor"), "Org1MSP", "Org2MSP"),
                 (lambda: org1_admin.revoke_role(client, "client"), "Org1MSP", "Org2MSP")]
    for call, admins_org, accounts_org in wrong_org:
        with pytest.raises(EndorseError) as failure:
            await call()
        refused = refusal(failure)
        assert isinstance(refused, Forbidden) and refused.field == "account", refused
        assert f"an admin of {admins_org} may change roles of {admins_org} accounts only, not of {accounts_org}" \
            in refused.detail

    for who in ("client", "audit", "settlement", "user8"):  # not admins: they grant nothing, even to themselves
        with pytest.raises(EndorseError) as failure:
            await ledgers[who].grant_role(await account_of(ledgers[who]), "auditor")
        refused = refusal(failure)
        assert isinstance(refused, Forbidden) and refused.field == "creator", (who, refused)
        assert refused.detail.startswith("only an admin may grant or revoke roles")

    with pytest.raises(EndorseError) as failure:
        await ledgers["admin"].grant_role(user8, "admin")  # admin comes from the certificate only
    refused = refusal(failure)
    assert isinstance(refused, InvalidArgument) and refused.field == "role"

    assert {a: (await ledgers["audit"].get_roles(a))["roles"] for a in roles_before} == roles_before


async def test_a_revoked_role_is_refused_afterwards_and_both_changes_are_in_history(
        ledgers: dict[str, LedgerClient], suffix: str) -> None:
    admin, user8, audit = ledgers["admin"], ledgers["user8"], ledgers["audit"]
    account = await account_of(user8)
    await admin.revoke_role(account, "operator")  # a no-op unless an earlier run stopped half-way
    granted = await admin.grant_role(account, "operator")
    assert "operator" in granted["roles"] and granted["tx_id"]
    assert "operator" in (await user8.who_am_i())["Roles"]
    first = await user8.anchor_batch(f"revoke-{suffix}:0:0-0", ROOT, 1, 0, 0)
    assert first.transaction_id

    revoked = await admin.revoke_role(account, "operator")
    assert "operator" not in revoked["roles"] and revoked["tx_id"] != granted["tx_id"]
    with pytest.raises(EndorseError) as failure:
        await user8.anchor_batch(f"revoke-{suffix}:0:1-1", ROOT, 1, 1, 1)
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "creator"
    assert refused.detail.startswith("anchoring a batch needs the operator role")
    assert "operator" not in (await audit.get_roles(account))["roles"]

    history = await audit.history(f"role:{account}")
    changes = {entry["tx_id"]: json.loads(entry["value"]) for entry in history}
    assert granted["tx_id"] in changes and revoked["tx_id"] in changes
    assert "operator" in changes[granted["tx_id"]]["roles"]
    assert "operator" not in changes[revoked["tx_id"]]["roles"]
    admin_account = await account_of(admin)
    assert changes[granted["tx_id"]]["updated_by"] == changes[revoked["tx_id"]]["updated_by"] == admin_account
    # The admin reads role history too (it makes the changes); a client reads no history at all.
    assert {e["tx_id"] for e in await admin.history(f"role:{account}")} == set(changes)
    with pytest.raises(EvaluateError) as failure:
        await ledgers["client"].history(f"role:{account}")
    refused = refusal(failure)
    assert isinstance(refused, Forbidden) and refused.field == "creator"
