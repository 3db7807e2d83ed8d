"""Chaincode events: what the contract emitted in committed transactions, as a stream.

    async for event in network.chaincode_events("streamledger", start_block=5):
        ...   # ChaincodeEvent(block_number, transaction_id, chaincode, name, payload)

To resume after a drop, pass the last block seen and the last transaction id handled in
it: the stream restarts at that block and skips what came before that transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fabric_protos.gateway import gateway_pb2
from fabric_protos.orderer import ab_pb2

from streamledger.fabric.client import GatewayClient


@dataclass(frozen=True)
class ChaincodeEvent:
    block_number: int
    transaction_id: str
    chaincode: str
    name: str
    payload: bytes


async def chaincode_events(client: GatewayClient, channel: str, chaincode: str, start_block: int | None = None,
                           after_transaction_id: str = "") -> AsyncIterator[ChaincodeEvent]:
    """Events of `chaincode` from `start_block` (default: the next block committed) onward, for
    as long as the caller iterates; a broken stream raises GatewayError."""
    position = (ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block))
                if start_block is not None else ab_pb2.SeekPosition(next_commit=ab_pb2.SeekNextCommit()))
    request = gateway_pb2.ChaincodeEventsRequest(
        channel_id=channel, chaincode_id=chaincode, identity=client.identity.serialized(),
        start_position=position, after_transaction_id=after_transaction_id)
    async for response in client.chaincode_events(request):
        for event in response.events:
            yield ChaincodeEvent(response.block_number, event.tx_id, event.chaincode_id, event.event_name,
                                 event.payload)
