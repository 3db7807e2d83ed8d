"""The first step of a transaction: a signed proposal, evaluated or endorsed.

    proposal = contract.new_proposal("Transfer", "acct-2", 5)
    transaction = await proposal.endorse()       # see transaction.py
    answer = await contract.new_proposal("Balance", "acct-2").evaluate()

The proposal message (`signed_proposal`, no I/O) is a signed `Proposal` whose header names
the channel, the chaincode, the creator and a fresh nonce; its transaction id is
SHA-256(nonce || creator), which the peer recomputes.
"""

from __future__ import annotations

import hashlib
import os
import time

from fabric_protos.common import common_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2
from google.protobuf import timestamp_pb2

from streamledger.fabric.client import GatewayClient
from streamledger.fabric.identity import Identity, Signer
from streamledger.fabric.transaction import Transaction, sign_envelope


class Proposal:
    """A signed proposal to run one transaction function: `evaluate()` it (a query, nothing
    is ordered) or `endorse()` it (the first step of a submit)."""

    def __init__(self, client: GatewayClient, transaction_id: str, channel: str,
                 signed: proposal_pb2.SignedProposal) -> None:
        self.client = client
        self.transaction_id = transaction_id
        self.channel = channel
        self.signed = signed
        self.created = time.monotonic()

    @property
    def age(self) -> float:
        """Seconds since it was signed: peers refuse one stamped beyond their timewindow."""
        return time.monotonic() - self.created

    async def evaluate(self) -> bytes:
        """The function's answer from one peer, without ordering it."""
        return await self.client.evaluate(self.transaction_id, self.channel, self.signed)

    async def endorse(self) -> Transaction:
        """The transaction endorsed by the peers the policy needs, signed, ready to submit."""
        prepared = await self.client.endorse(self.transaction_id, self.channel, self.signed)
        return Transaction(self.client, self.transaction_id, self.channel,
                           sign_envelope(prepared, self.client.signer))


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def signed_proposal(identity: Identity, signer: Signer, channel: str, chaincode: str, function: str,
                    args: tuple[str | bytes | int, ...] = (),
                    transient: dict[str, bytes] | None = None) -> tuple[str, proposal_pb2.SignedProposal]:
    """The transaction id and the signed `Proposal` message of a call of `function(*args)`."""
    creator = identity.serialized()
    nonce = os.urandom(24)
    transaction_id = hashlib.sha256(nonce + creator).hexdigest()
    now = time.time_ns()
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        timestamp=timestamp_pb2.Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000),
        channel_id=channel,
        tx_id=transaction_id,
        extension=proposal_pb2.ChaincodeHeaderExtension(
            chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)).SerializeToString(),
    )
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=creator, nonce=nonce).SerializeToString(),
    )
    invocation = chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=chaincode_pb2.ChaincodeSpec(
        chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode),
        input=chaincode_pb2.ChaincodeInput(args=[function.encode(), *(_arg(a) for a in args)]),
    ))
    payload = proposal_pb2.ChaincodeProposalPayload(input=invocation.SerializeToString(), TransientMap=transient or {})
    proposal_bytes = proposal_pb2.Proposal(header=header.SerializeToString(),
                                           payload=payload.SerializeToString()).SerializeToString()
    return transaction_id, proposal_pb2.SignedProposal(proposal_bytes=proposal_bytes,
                                                        signature=signer.sign(proposal_bytes))
