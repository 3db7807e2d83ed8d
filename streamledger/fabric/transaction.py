"""An endorsed transaction: the envelope the gateway prepared, signed by the client, ready
to submit to the orderer.

    transaction = await proposal.endorse()
    transaction.result                   # the chaincode's answer, known before ordering
    commit = await transaction.submit()  # the orderer took it; see commit.py

Submitting the same envelope twice is safe: it carries one transaction id, and a peer
marks a second copy in a block invalid (DUPLICATE_TXID), so it can never commit twice.
"""

from __future__ import annotations

from fabric_protos.common import common_pb2
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

    async def submit(self) -> Commit:
        await self.client.submit(self.transaction_id, self.channel, self.envelope)
        return Commit(self.client, self.transaction_id, self.channel, self.result)


def sign_envelope(envelope: common_pb2.Envelope, signer: Signer) -> common_pb2.Envelope:
    envelope.signature = signer.sign(envelope.payload)
    return envelope


def chaincode_result(envelope: common_pb2.Envelope) -> bytes:
    """The chaincode's response payload inside an endorsed transaction envelope."""
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    action = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)
    response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(
        action.action.proposal_response_payload)
    return proposal_pb2.ChaincodeAction.FromString(response_payload.extension).response.payload
