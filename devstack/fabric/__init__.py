"""A local Hyperledger Fabric v3.1.5 network as stack parts, all on 127.0.0.1 with TLS:
two organisations that do not trust each other (Org1, the provider; Org2, a client), each
with its own CA material, peer and chaincode server; an orderer organisation with three Raft
consenters; the channel `streamledger`, whose contract needs both orgs' endorsement.

Opt-in (`STREAMLEDGER_STACK_FABRIC=1` or `streamledger stack up --fabric`).

  binaries.py    the Fabric commands (built from deploy/fabric/go.mod, or release binaries)
  identities.py  named client identities issued by an org's CA
  revocation.py  an org's CA revokes a certificate: its CRL in the channel configuration
  network.py     orgs, orderers, paths, the peer CLI, channel, chaincode lifecycle, role grants,
                 revocation (`FabricNetwork.revoke`)
  parts.py       the servers as stack parts, and the order they come up in
"""

from devstack.fabric.network import (
    CHANNEL,
    ENDORSEMENT_POLICY,
    FabricError,
    FabricNetwork,
    NoRaftLeader,
    Orderer,
    Org,
)
from devstack.fabric.parts import PART_NAMES, fabric_parts, fabric_was_started

__all__ = ["CHANNEL", "ENDORSEMENT_POLICY", "PART_NAMES", "FabricError", "FabricNetwork", "NoRaftLeader", "Orderer",
           "Org", "fabric_parts", "fabric_was_started"]
