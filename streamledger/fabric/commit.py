"""The last step of a submit: wait for the transaction's commit status.

    commit = await transaction.submit()
    committed = await commit.status()    # Committed, or CommitError if the peer marked it invalid

A transaction ordered into a block may still be invalid (another transaction changed what
it read: MVCC_READ_CONFLICT), in which case it changed nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fabric_protos.peer import transaction_pb2

from streamledger.fabric.client import GatewayClient
from streamledger.fabric.errors import CommitError


@dataclass(frozen=True)
class Committed:
    """A transaction committed as valid: the chaincode's answer and where it landed."""

    result: bytes
    transaction_id: str
    block_number: int
    endorsers: tuple[str, ...] = ()
    """The MSP ids of the organisations whose peers endorsed it."""

    def json(self) -> Any:
        return json.loads(self.result) if self.result else None


class Commit:
    """A transaction the orderer accepted; `status()` waits until it is in a block."""

    def __init__(self, client: GatewayClient, transaction_id: str, channel: str, result: bytes,
                 endorsers: tuple[str, ...] = ()) -> None:
        self.client = client
        self.transaction_id = transaction_id
        self.channel = channel
        self.result = result
        self.endorsers = endorsers

    async def status(self) -> Committed:
        """The committed transaction if valid, else CommitError naming its validation code."""
        response = await self.client.commit_status(self.transaction_id, self.channel)
        if response.result != transaction_pb2.VALID:
            raise CommitError(self.transaction_id, transaction_pb2.TxValidationCode.Name(response.result),
                              response.block_number)
        return Committed(self.result, self.transaction_id, response.block_number, self.endorsers)
