"""Which organisations endorsed a transaction, read from its envelope, and whether an
identity is an admin: what the two-org client reports (no peer needed)."""

from __future__ import annotations

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import proposal_response_pb2, transaction_pb2

from streamledger.fabric.transaction import endorsing_orgs


def _envelope(*msp_ids: str) -> common_pb2.Envelope:
    endorsements = [proposal_response_pb2.Endorsement(
        endorser=identities_pb2.SerializedIdentity(mspid=m, id_bytes=b"cert").SerializeToString(), signature=b"s")
        for m in msp_ids]
    action = transaction_pb2.ChaincodeActionPayload(
        action=transaction_pb2.ChaincodeEndorsedAction(proposal_response_payload=b"", endorsements=endorsements))
    transaction = transaction_pb2.Transaction(actions=[
        transaction_pb2.TransactionAction(payload=action.SerializeToString())])
    return common_pb2.Envelope(payload=common_pb2.Payload(data=transaction.SerializeToString()).SerializeToString())


def test_both_orgs_are_named_once_and_sorted() -> None:
    assert endorsing_orgs(_envelope("Org2MSP", "Org1MSP", "Org2MSP")) == ("Org1MSP", "Org2MSP")


def test_a_one_org_endorsement_names_only_that_org() -> None:
    assert endorsing_orgs(_envelope("Org1MSP")) == ("Org1MSP",)
