"""A channel seen through the gateway: its contracts and its chaincode events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from streamledger.fabric.client import GatewayClient
from streamledger.fabric.contract import Contract
from streamledger.fabric.events import ChaincodeEvent, chaincode_events
from streamledger.retry import NO_RETRY, RetryPolicy


class Network:
    def __init__(self, client: GatewayClient, name: str, retry: RetryPolicy = NO_RETRY) -> None:
        self.client = client
        self.name = name
        self.retry = retry

    def contract(self, chaincode: str, retry: RetryPolicy | None = None) -> Contract:
        """`chaincode` on this channel, retrying with `retry` (default: the gateway's policy)."""
        return Contract(self.client, self.name, chaincode, self.retry if retry is None else retry)

    def chaincode_events(self, chaincode: str, start_block: int | None = None,
                         after_transaction_id: str = "") -> AsyncIterator[ChaincodeEvent]:
        """See events.py; the stream is not retried: on a GatewayError, resume it."""
        return chaincode_events(self.client, self.name, chaincode, start_block, after_transaction_id)
