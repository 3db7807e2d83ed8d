"""Paying on the real ledger in tests, as the contract wants it (deploy/fabric/README.md,
"Pay per use"): a fresh nonce per hold, the hold id the contract derives from the client and
that nonce, receipts signed with the client's own Fabric key, and identities issued for one
run (so their balances hold only what the run did).

    hold = hold_id(me, nonce := new_nonce())
    await client.freeze(nonce, provider, 100, 20, in_an_hour())
    await settlement.authorize(hold, 60)
    await settlement.settle(hold, sign_receipt(signer_of("User5", "Org2"), hold, 3, 1))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from devstack.fabric import FabricNetwork
from devstack.fabric.identities import issue_client
from streamledger.fabric import load_msp
from streamledger.settings import LedgerSettings
from tests.integration.conftest import identity

Sign = Callable[[bytes], bytes]

def new_nonce() -> str:
    return uuid.uuid4().hex


def in_an_hour() -> int:
    """An `expires_at` (unix seconds) no test here reaches."""
    return int(time.time()) + 3600


def signer_of(user: str, org: str = "Org2") -> Sign:
    """The signing function of a local identity (Org2's User1..8 are the stack's clients)."""
    settings = identity(user, org)
    return load_msp(settings.msp_dir(), settings.fabric_msp_id)[1].sign


def signer_of_msp(settings: LedgerSettings) -> Sign:
    """The signing function of the identity `settings` act as."""
    return load_msp(settings.msp_dir(), settings.fabric_msp_id)[1].sign


def issue_identity(network: FabricNetwork, org_name: str, name: str, folder: Path) -> LedgerSettings:
    """Ledger settings acting as a new identity `name` of `org_name`, issued by the org's CA the
    way the stack issues its named identities (devstack.fabric.identities), under `folder` rather
    than the stack's crypto: the issuer reads the org's CA and MSP template through symlinks.
    It holds no role until the org's admin grants one."""
    org = network.org(org_name)
    real, org_dir = network.org_dir(org), folder / name / org.domain
    (org_dir / "users").mkdir(parents=True)
    (org_dir / "ca").symlink_to(real / "ca")
    (org_dir / "users" / f"Admin@{org.domain}").symlink_to(real / "users" / f"Admin@{org.domain}")
    msp = issue_client(org_dir, org.domain, name)
    return LedgerSettings(fabric_msp_id=org.msp_id, fabric_msp_dir=msp)
