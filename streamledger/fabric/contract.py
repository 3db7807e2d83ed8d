"""A chaincode on a channel: `evaluate` (a query) and `submit` (endorse, submit, wait for
the commit) for the common case; `new_proposal` for callers that want each step.

    contract = gateway.network("streamledger").contract("streamledger")
    balance = await contract.evaluate_json("Balance", "acct-1")
    committed = await contract.submit("Mint", "acct-1", 100)

The contract's retry policy (the gateway's by default, NO_RETRY unless the caller gives
one) is applied here and only here, around the whole evaluate or submit, to what
`errors.is_transient` accepts. A retried submit resumes at the step that failed: an
unreachable peer or orderer gets the same proposal (while it is fresh: FRESH_PROPOSAL_SECONDS)
or the same signed envelope again (one transaction id, so it can never commit twice); a transaction that lost an MVCC or phantom
read conflict changed nothing, so the next attempt runs it anew as a new transaction.

A transaction the orderer accepted may still never reach a block: a Raft leader that stops
loses what was forwarded to it and not yet cut. So when the wait for its commit runs out
(DEADLINE_EXCEEDED), the next attempt submits the same envelope again before waiting: if both
copies land, the peers mark the second DUPLICATE_TXID and the status is the first's.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from streamledger.fabric.client import GatewayClient
from streamledger.fabric.commit import Commit, Committed
from streamledger.fabric.errors import CommitError, CommitStatusError, is_transient
from streamledger.fabric.proposal import Proposal, signed_proposal
from streamledger.fabric.transaction import Transaction
from streamledger.retry import NO_RETRY, RetryPolicy, retry

Arg = str | bytes | int

FRESH_PROPOSAL_SECONDS = 10.0
"""An endorse is retried with the same proposal while it is younger than this (under the
peers' timewindow: 15 s on the local stack, 15 min by default), else with a new one."""


class Contract:
    def __init__(self, client: GatewayClient, channel: str, name: str, retry: RetryPolicy = NO_RETRY) -> None:
        self.client = client
        self.channel = channel
        self.name = name
        self.retry = retry

    def new_proposal(self, function: str, *args: Arg, transient: dict[str, bytes] | None = None) -> Proposal:
        transaction_id, signed = signed_proposal(self.client.identity, self.client.signer, self.channel, self.name,
                                                 function, args, transient)
        return Proposal(self.client, transaction_id, self.channel, signed)

    async def evaluate(self, function: str, *args: Arg) -> bytes:
        """Run a transaction function on a peer without ordering it: a query."""
        return await retry(lambda: self.new_proposal(function, *args).evaluate(), self.retry,
                           is_transient=is_transient)

    async def evaluate_json(self, function: str, *args: Arg) -> Any:
        return json.loads(await self.evaluate(function, *args))

    async def submit(self, function: str, *args: Arg, transient: dict[str, bytes] | None = None) -> Committed:
        """Endorse, submit and wait until committed as valid (CommitError otherwise)."""
        submission = _Submission(self, function, args, transient)
        return await retry(submission.attempt, self.retry, is_transient=is_transient)


class _Submission:
    """One submit across the attempts of its retry policy: each attempt resumes at the step
    that failed (a commit wait that ran out resumes at the submit of the same envelope), and
    a read conflict starts again from a new proposal."""

    def __init__(self, contract: Contract, function: str, args: tuple[Arg, ...],
                 transient: dict[str, bytes] | None) -> None:
        self.contract = contract
        self.function = function
        self.args = args
        self.transient = transient
        self.proposal: Proposal | None = None
        self.transaction: Transaction | None = None
        self.commit: Commit | None = None

    async def attempt(self) -> Committed:
        if self.proposal is None or (self.transaction is None and self.proposal.age > FRESH_PROPOSAL_SECONDS):
            # An endorse retried long after signing would be refused for its timestamp; a
            # proposal never endorsed was never ordered, so a new one cannot commit twice.
            self.proposal = self.contract.new_proposal(self.function, *self.args, transient=self.transient)
        if self.transaction is None:
            self.transaction = await self.proposal.endorse()
        if self.commit is None:
            self.commit = await self.transaction.submit()
        try:
            return await self.commit.status()
        except CommitError as exc:
            if exc.conflict:
                self.proposal = self.transaction = self.commit = None
            raise
        except CommitStatusError as exc:
            if exc.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self.commit = None  # the next attempt submits the same envelope again, then waits
            raise
