"""The gateway service's gRPC calls, as one identity: each call bounded by its timeout and
its failure raised as that step's error (errors.py). The step objects (proposal,
transaction, commit, events) make their calls through it; nothing here retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.discovery import protocol_pb2_grpc
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.peer import proposal_pb2

from streamledger.fabric.discovery import orgs_without_endorsers
from streamledger.fabric.errors import (
    CommitStatusError,
    EndorseError,
    EndorsementUnavailable,
    EvaluateError,
    GatewayError,
    SubmitError,
    from_rpc_error,
)
from streamledger.fabric.identity import Identity, Signer


@dataclass(frozen=True)
class Timeouts:
    """Seconds each call may take before it fails with DEADLINE_EXCEEDED."""

    evaluate: float = 30.0
    endorse: float = 30.0
    submit: float = 30.0
    commit_status: float = 60.0
    discovery: float = 5.0
    """Only to name the organisations behind an EndorsementUnavailable."""


class GatewayClient:
    def __init__(self, stub: gateway_pb2_grpc.GatewayStub, identity: Identity, signer: Signer,
                 timeouts: Timeouts = Timeouts(), discovery: protocol_pb2_grpc.DiscoveryStub | None = None) -> None:
        self.stub = stub
        self.identity = identity
        self.signer = signer
        self.timeouts = timeouts
        self.discovery = discovery

    async def evaluate(self, transaction_id: str, channel: str, proposal: proposal_pb2.SignedProposal) -> bytes:
        try:
            response = await self.stub.Evaluate(gateway_pb2.EvaluateRequest(
                transaction_id=transaction_id, channel_id=channel, proposed_transaction=proposal),
                timeout=self.timeouts.evaluate)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(EvaluateError, "evaluate", exc, transaction_id) from exc
        return response.result.payload

    async def endorse(self, transaction_id: str, channel: str,
                      proposal: proposal_pb2.SignedProposal) -> common_pb2.Envelope:
        """The endorsed transaction, prepared by the gateway, for the client to sign. When
        peers could not be reached and the gateway does not say whose, the peer's discovery
        service is asked which organisations have no live peer (EndorsementUnavailable.orgs)."""
        try:
            response = await self.stub.Endorse(gateway_pb2.EndorseRequest(
                transaction_id=transaction_id, channel_id=channel, proposed_transaction=proposal),
                timeout=self.timeouts.endorse)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(EndorseError, "endorse", exc, transaction_id)
            if isinstance(error, EndorsementUnavailable) and not error.orgs and self.discovery is not None:
                error = error.naming(await orgs_without_endorsers(self.discovery, self.identity, self.signer, channel,
                                                                  proposal, self.timeouts.discovery))
            raise error from exc
        return response.prepared_transaction

    async def submit(self, transaction_id: str, channel: str, envelope: common_pb2.Envelope) -> None:
        try:
            await self.stub.Submit(gateway_pb2.SubmitRequest(
                transaction_id=transaction_id, channel_id=channel, prepared_transaction=envelope),
                timeout=self.timeouts.submit)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(SubmitError, "submit", exc, transaction_id) from exc

    async def commit_status(self, transaction_id: str, channel: str) -> gateway_pb2.CommitStatusResponse:
        """Waits until the transaction is in a block."""
        request = gateway_pb2.CommitStatusRequest(transaction_id=transaction_id, channel_id=channel,
                                                  identity=self.identity.serialized()).SerializeToString()
        try:
            return await self.stub.CommitStatus(gateway_pb2.SignedCommitStatusRequest(
                request=request, signature=self.signer.sign(request)), timeout=self.timeouts.commit_status)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(CommitStatusError, "commit status", exc, transaction_id) from exc

    async def chaincode_events(
            self, request: gateway_pb2.ChaincodeEventsRequest) -> AsyncIterator[gateway_pb2.ChaincodeEventsResponse]:
        """The event stream's responses, for as long as the caller iterates (no timeout)."""
        body = request.SerializeToString()
        call = self.stub.ChaincodeEvents(gateway_pb2.SignedChaincodeEventsRequest(
            request=body, signature=self.signer.sign(body)))
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(GatewayError, "chaincode events", exc) from exc
        finally:
            call.cancel()
