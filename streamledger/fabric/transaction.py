"""An endorsed transaction: the envelope the gateway prepared, signed by the client, ready
to submit to the orderer.

    transaction = await proposal.endorse()
    transaction.result                   # the chaincode's answer, known before ordering
    transaction.endorsers                # ("Org1MSP", "Org2MSP"): which orgs endorsed it
    commit = await transaction.submit()  # the orderer took it; see commit.py

Submitting the same envelope twice is safe: it carries one transaction id, and a peer
marks a second copy in a block invalid (DUPLICATE_TXID), so it can never commit twice.
"""

from __future__ import annotations

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2

from streamledger.fabric.client import GatewayClient
from streamledger.fabric.commit import Commit
from streamledger.fabric.identity import Signer


class Transaction:
    def __init__(self, client: GatewayClient, transaction_id: str, channel: str,
                 envelope: common_pb2.Envelope) -> None:
        self.client = client
        self.transaction_id = transaction_id
        self.channel = channel
        self.envelope = envelope

    @property
    def result(self) -> bytes:
        return chaincode_result(self.envelope)

    @property
    def endorsers(self) -> tuple[str, ...]:
        """The MSP ids of the peers that endorsed it (the gateway collected them)."""
        return endorsing_orgs(self.envelope)

    async def submit(self) -> Commit:
        await self.client.submit(self.transaction_id, self.channel, self.envelope)
        return Commit(self.client, self.transaction_id, self.channel, self.result, self.endorsers)


def sign_envelope(envelope: common_pb2.Envelope, signer: Signer) -> common_pb2.Envelope:
    envelope.signature = signer.sign(envelope.payload)
    return envelope


def _action(envelope: common_pb2.Envelope) -> transaction_pb2.ChaincodeActionPayload:
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    return transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)


def endorsing_orgs(envelope: common_pb2.Envelope) -> tuple[str, ...]:
    """The MSP ids of an endorsed transaction's endorsers, sorted, each once."""
    endorsers = (identities_pb2.SerializedIdentity.FromString(e.endorser).mspid
                 for e in _action(envelope).action.endorsements)
    return tuple(sorted(set(endorsers)))


def chaincode_result(envelope: common_pb2.Envelope) -> bytes:
    """The chaincode's response payload inside an endorsed transaction envelope."""
    action = _action(envelope)
    response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(
        action.action.proposal_response_payload)
    return proposal_pb2.ChaincodeAction.FromString(response_payload.extension).response.payload
