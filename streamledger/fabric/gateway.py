"""A Fabric Gateway client on grpc.aio: Gateway -> Network(channel) -> Contract(chaincode).

    async with Gateway.connect("127.0.0.1:7051", tls_root, identity, signer, retry=policy) as gateway:
        network = gateway.network("streamledger")
        contract = network.contract("streamledger")
        balance = await contract.evaluate("Balance", "acct-1")
        committed = await contract.submit("Mint", "acct-1", 100)   # endorse, submit, wait
        async for event in network.chaincode_events("streamledger", start_block=5):
            ...

One file per concept, as fabric-gateway's Go `pkg/client`: gateway, network, contract,
then the steps a submit runs one level down, each with its own error type (errors.py):
proposal.py (evaluate or endorse; discovery.py names the orgs behind an endorsement that
found too few reachable peers) -> transaction.py (submit the signed envelope) ->
commit.py (wait for the commit status); events.py for chaincode events; client.py for the
gRPC calls themselves, identity.py for who signs.

The client does not retry on its own: `retry` (a bounded `streamledger.retry.RetryPolicy`,
NO_RETRY by default) is applied once, around each whole evaluate or submit (contract.py).
"""

from __future__ import annotations

import grpc
from fabric_protos.discovery import protocol_pb2_grpc
from fabric_protos.gateway import gateway_pb2_grpc

from streamledger.fabric.client import GatewayClient, Timeouts
from streamledger.fabric.identity import Identity, Signer
from streamledger.fabric.network import Network
from streamledger.retry import NO_RETRY, RetryPolicy


class Gateway:
    """A connection to one peer's gateway service, acting as one identity."""

    def __init__(self, channel: grpc.aio.Channel, identity: Identity, signer: Signer,
                 retry: RetryPolicy = NO_RETRY, timeouts: Timeouts = Timeouts()) -> None:
        self._channel = channel
        self.client = GatewayClient(gateway_pb2_grpc.GatewayStub(channel), identity, signer, timeouts,
                                    protocol_pb2_grpc.DiscoveryStub(channel))
        self.retry = retry

    @classmethod
    def connect(cls, endpoint: str, tls_root_certificate: bytes, identity: Identity, signer: Signer,
                server_name: str | None = None, retry: RetryPolicy = NO_RETRY,
                timeouts: Timeouts = Timeouts()) -> Gateway:
        """A TLS connection to `endpoint` (host:port) trusting `tls_root_certificate` (PEM);
        `server_name` overrides the name checked in the peer's certificate."""
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(tls_root_certificate), options)
        return cls(channel, identity, signer, retry, timeouts)

    @property
    def timeouts(self) -> Timeouts:
        return self.client.timeouts

    @timeouts.setter
    def timeouts(self, timeouts: Timeouts) -> None:
        self.client.timeouts = timeouts

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def network(self, channel: str) -> Network:
        return Network(self.client, channel, self.retry)
