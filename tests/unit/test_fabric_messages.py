"""The gateway client's pure parts: low-S signing, proposal building, result extraction
and the gateway's error details, without a peer."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import (
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf import any_pb2
from google.rpc import status_pb2

from streamledger.fabric import (
    CommitError,
    GatewayError,
    Identity,
    IdentityError,
    Signer,
)
from streamledger.fabric.errors import peer_details
from streamledger.fabric.identity import P256_ORDER
from streamledger.fabric.proposal import signed_proposal
from streamledger.fabric.transaction import chaincode_result


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_signatures_verify_and_are_always_low_s(key: ec.EllipticCurvePrivateKey) -> None:
    signer = Signer(key)
    for i in range(64):  # about half of raw ECDSA signatures are high-S
        message = f"message {i}".encode()
        signature = signer.sign(message)
        key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
        assert decode_dss_signature(signature)[1] <= P256_ORDER // 2


def test_a_non_p256_key_is_refused() -> None:
    with pytest.raises(IdentityError, match="P-256"):
        Signer(ec.generate_private_key(ec.SECP384R1()))


def test_proposal_transaction_id_is_the_hash_of_nonce_and_creator(key: ec.EllipticCurvePrivateKey) -> None:
    identity = Identity("Org1MSP", b"-----BEGIN CERTIFICATE-----\n...")
    transaction_id, signed = signed_proposal(identity, Signer(key), "ch", "cc", "Mint", ("acct", 5, b"\x00raw"))
    inner = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
    header = common_pb2.Header.FromString(inner.header)
    signature_header = common_pb2.SignatureHeader.FromString(header.signature_header)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    assert signature_header.creator == identity.serialized()
    assert transaction_id == hashlib.sha256(signature_header.nonce + signature_header.creator).hexdigest()
    assert (channel_header.channel_id, channel_header.tx_id) == ("ch", transaction_id)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(inner.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input).chaincode_spec
    assert spec.chaincode_id.name == "cc"
    assert list(spec.input.args) == [b"Mint", b"acct", b"5", b"\x00raw"]
    key.public_key().verify(signed.signature, signed.proposal_bytes, ec.ECDSA(hashes.SHA256()))


def test_chaincode_result_is_read_from_the_endorsed_envelope() -> None:
    action = proposal_pb2.ChaincodeAction()
    action.response.status = 200
    action.response.payload = b'{"balance": 7}'
    response_payload = proposal_response_pb2.ProposalResponsePayload(extension=action.SerializeToString())
    cap = transaction_pb2.ChaincodeActionPayload(action=transaction_pb2.ChaincodeEndorsedAction(
        proposal_response_payload=response_payload.SerializeToString()))
    transaction = transaction_pb2.Transaction(actions=[transaction_pb2.TransactionAction(payload=cap.SerializeToString())])
    envelope = common_pb2.Envelope(payload=common_pb2.Payload(data=transaction.SerializeToString()).SerializeToString())
    assert chaincode_result(envelope) == b'{"balance": 7}'


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, trailing: tuple) -> None:
        super().__init__(grpc.StatusCode.ABORTED, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "failed")


def test_peer_details_come_from_the_rich_status() -> None:
    detail = any_pb2.Any()
    detail.Pack(gateway_pb2.ErrorDetail(address="peer0:7051", msp_id="Org1MSP", message="INSUFFICIENT_FUNDS: x"))
    status = status_pb2.Status(code=10, message="failed", details=[detail])
    error = _FakeRpcError((("grpc-status-details-bin", status.SerializeToString()),))
    (found,) = peer_details(error)
    assert (found.address, found.msp_id, found.message) == ("peer0:7051", "Org1MSP", "INSUFFICIENT_FUNDS: x")
    assert peer_details(_FakeRpcError(())) == ()


def test_which_failures_are_worth_retrying() -> None:
    assert GatewayError("x", code=grpc.StatusCode.UNAVAILABLE).transient
    assert not GatewayError("x", code=grpc.StatusCode.ABORTED).transient
    assert CommitError("tx", "MVCC_READ_CONFLICT", 3).conflict
    assert not CommitError("tx", "ENDORSEMENT_POLICY_FAILURE", 3).conflict
