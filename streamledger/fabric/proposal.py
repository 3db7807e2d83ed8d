"""The messages of a transaction, built and read without any I/O.

A proposal is a signed `Proposal` whose header names the channel, the chaincode, the
creator and a fresh nonce; its transaction id is SHA-256(nonce || creator), which the
peer recomputes. The endorsed transaction comes back as an `Envelope` for the client to
sign; the chaincode's answer sits inside it, four messages deep.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from fabric_protos.common import common_pb2
from fabric_protos.peer import (
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf import timestamp_pb2

from streamledger.fabric.identity import Identity, Signer


@dataclass(frozen=True)
class Proposal:
    transaction_id: str
    channel: str
    signed: proposal_pb2.SignedProposal


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def new_proposal(identity: Identity, signer: Signer, channel: str, chaincode: str, function: str,
                 args: tuple[str | bytes | int, ...] = (), transient: dict[str, bytes] | None = None) -> Proposal:
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
    signed = proposal_pb2.SignedProposal(proposal_bytes=proposal_bytes, signature=signer.sign(proposal_bytes))
    return Proposal(transaction_id, channel, signed)


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
