"""A Fabric Gateway client on grpc.aio: Gateway -> Network(channel) -> Contract(name).

    async with Gateway.connect("127.0.0.1:7051", tls_root, identity, signer) as gateway:
        contract = gateway.network("streamledger").contract("streamledger")
        balance = await contract.evaluate("Balance", "acct-1")
        committed = await contract.submit("Mint", "acct-1", 100)   # endorse, sign, submit, wait
        async for event in gateway.network("streamledger").chaincode_events("streamledger", start_block=5):
            ...

`submit` runs the protocol's steps one level down, each with its own error type:
endorse (the gateway collects endorsements the policy needs) -> sign the prepared
envelope -> submit to the orderer -> wait for the commit status. Transient failures are
retried with bounded backoff: an unreachable peer or orderer retries the same step (the
transaction id stays, so a resent envelope can never commit twice); an MVCC or phantom
read conflict runs the transaction again as a new one, since the invalid one changed
nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import transaction_pb2

from streamledger.retry import RetryPolicy
from streamledger.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EvaluateError,
    GatewayError,
    SubmitError,
    from_rpc_error,
)
from streamledger.fabric.identity import Identity, Signer
from streamledger.fabric.proposal import Proposal, chaincode_result, new_proposal, sign_envelope

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    evaluate: float = 30.0
    endorse: float = 30.0
    submit: float = 30.0
    commit_status: float = 60.0


@dataclass(frozen=True)
class Committed:
    """A transaction committed as valid: the chaincode's answer and where it landed."""

    result: bytes
    transaction_id: str
    block_number: int

    def json(self) -> Any:
        return json.loads(self.result) if self.result else None


@dataclass(frozen=True)
class ChaincodeEvent:
    block_number: int
    transaction_id: str
    chaincode: str
    name: str
    payload: bytes


class Gateway:
    """A connection to one peer's gateway service, acting as one identity."""

    def __init__(self, channel: grpc.aio.Channel, identity: Identity, signer: Signer,
                 retry: RetryPolicy = RetryPolicy(), timeouts: Timeouts = Timeouts()) -> None:
        self._channel = channel
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.identity = identity
        self.signer = signer
        self.retry = retry
        self.timeouts = timeouts

    @classmethod
    def connect(cls, endpoint: str, tls_root_certificate: bytes, identity: Identity, signer: Signer,
                server_name: str | None = None, **kwargs: Any) -> Gateway:
        """A TLS connection to `endpoint` (host:port) trusting `tls_root_certificate` (PEM);
        `server_name` overrides the name checked in the peer's certificate."""
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(tls_root_certificate), options)
        return cls(channel, identity, signer, **kwargs)

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def network(self, channel: str) -> Network:
        return Network(self, channel)

    async def with_retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying a transient GatewayError up to the policy's bound."""
        for attempt in range(self.retry.attempts):
            try:
                return await call()
            except GatewayError as exc:
                if not exc.transient or attempt == self.retry.attempts - 1:
                    raise
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")


class Network:
    def __init__(self, gateway: Gateway, channel: str) -> None:
        self.gateway = gateway
        self.name = channel

    def contract(self, chaincode: str) -> Contract:
        return Contract(self, chaincode)

    async def chaincode_events(self, chaincode: str, start_block: int | None = None,
                               after_transaction_id: str = "") -> AsyncIterator[ChaincodeEvent]:
        """Events the chaincode emitted in committed transactions, from `start_block`
        (default: the next block committed) onward, for as long as the caller iterates.
        To resume, pass the last block seen and the last transaction id handled in it."""
        gw = self.gateway
        position = (ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block))
                    if start_block is not None else ab_pb2.SeekPosition(next_commit=ab_pb2.SeekNextCommit()))
        request = gateway_pb2.ChaincodeEventsRequest(
            channel_id=self.name, chaincode_id=chaincode, identity=gw.identity.serialized(),
            start_position=position, after_transaction_id=after_transaction_id).SerializeToString()
        call = gw.stub.ChaincodeEvents(gateway_pb2.SignedChaincodeEventsRequest(
            request=request, signature=gw.signer.sign(request)))
        try:
            async for response in call:
                for event in response.events:
                    yield ChaincodeEvent(response.block_number, event.tx_id, event.chaincode_id,
                                         event.event_name, event.payload)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(GatewayError, "chaincode events", exc) from exc
        finally:
            call.cancel()


class Contract:
    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name

    def new_proposal(self, function: str, *args: str | bytes | int,
                     transient: dict[str, bytes] | None = None) -> Proposal:
        gw = self.network.gateway
        return new_proposal(gw.identity, gw.signer, self.network.name, self.name, function, args, transient)

    async def evaluate(self, function: str, *args: str | bytes | int) -> bytes:
        """Run a transaction function on a peer without ordering it: a query."""
        return await self.network.gateway.with_retry(lambda: self.evaluate_proposal(self.new_proposal(function, *args)))

    async def evaluate_json(self, function: str, *args: str | bytes | int) -> Any:
        return json.loads(await self.evaluate(function, *args))

    async def submit(self, function: str, *args: str | bytes | int,
                     transient: dict[str, bytes] | None = None) -> Committed:
        """Endorse, sign, submit and wait until committed; a read conflict runs it anew."""
        gw = self.network.gateway
        for attempt in range(gw.retry.attempts):
            proposal = self.new_proposal(function, *args, transient=transient)
            envelope = await gw.with_retry(lambda: self.endorse(proposal))
            await gw.with_retry(lambda: self.submit_envelope(proposal, envelope))
            try:
                block_number = await gw.with_retry(lambda: self.commit_status(proposal))
            except CommitError as exc:
                if not exc.conflict or attempt == gw.retry.attempts - 1:
                    raise
                await asyncio.sleep(gw.retry.delay(attempt))
                continue
            return Committed(chaincode_result(envelope), proposal.transaction_id, block_number)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- the protocol's steps, for callers that want control --
    async def evaluate_proposal(self, proposal: Proposal) -> bytes:
        gw = self.network.gateway
        try:
            response = await gw.stub.Evaluate(gateway_pb2.EvaluateRequest(
                transaction_id=proposal.transaction_id, channel_id=proposal.channel,
                proposed_transaction=proposal.signed), timeout=gw.timeouts.evaluate)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(EvaluateError, "evaluate", exc, proposal.transaction_id) from exc
        return response.result.payload

    async def endorse(self, proposal: Proposal) -> common_pb2.Envelope:
        gw = self.network.gateway
        try:
            response = await gw.stub.Endorse(gateway_pb2.EndorseRequest(
                transaction_id=proposal.transaction_id, channel_id=proposal.channel,
                proposed_transaction=proposal.signed), timeout=gw.timeouts.endorse)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(EndorseError, "endorse", exc, proposal.transaction_id) from exc
        return sign_envelope(response.prepared_transaction, gw.signer)

    async def submit_envelope(self, proposal: Proposal, envelope: common_pb2.Envelope) -> None:
        gw = self.network.gateway
        try:
            await gw.stub.Submit(gateway_pb2.SubmitRequest(
                transaction_id=proposal.transaction_id, channel_id=proposal.channel,
                prepared_transaction=envelope), timeout=gw.timeouts.submit)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(SubmitError, "submit", exc, proposal.transaction_id) from exc

    async def commit_status(self, proposal: Proposal) -> int:
        """Wait until the transaction is in a block; its block number if valid, else CommitError."""
        gw = self.network.gateway
        request = gateway_pb2.CommitStatusRequest(transaction_id=proposal.transaction_id,
                                                  channel_id=proposal.channel,
                                                  identity=gw.identity.serialized()).SerializeToString()
        try:
            response = await gw.stub.CommitStatus(gateway_pb2.SignedCommitStatusRequest(
                request=request, signature=gw.signer.sign(request)), timeout=gw.timeouts.commit_status)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(CommitStatusError, "commit status", exc, proposal.transaction_id) from exc
        if response.result != transaction_pb2.VALID:
            raise CommitError(proposal.transaction_id, transaction_pb2.TxValidationCode.Name(response.result),
                              response.block_number)
        return response.block_number
