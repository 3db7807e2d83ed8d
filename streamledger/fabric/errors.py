"""Errors of the gateway client, one per step, each carrying the gRPC status and what
every peer or orderer said (the gateway's `ErrorDetail`s), so a user can act on it.

    GatewayError                 any failure talking to the gateway
      EndorseError               proposal refused (chaincode error, policy, no peer)
      SubmitError                the orderer did not take the endorsed transaction
      CommitStatusError          the commit status could not be read
      CommitError                committed but invalid (MVCC conflict, policy failure, ...)
      EvaluateError              a query refused

When the contract itself refused (its message starts with a code such as NOT_FOUND),
`GatewayError.contract_error` is that refusal typed (`streamledger.core.contract_errors`):

    except EndorseError as exc:
        if isinstance(exc.contract_error, AlreadySettled): ...

`is_transient(exc)` says what a caller's retry policy should try again.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from fabric_protos.gateway import gateway_pb2
from google.rpc import status_pb2

from streamledger.core.contract_errors import ContractError, parse


@dataclass(frozen=True)
class PeerDetail:
    address: str
    msp_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.address} ({self.msp_id}): {self.message}"


class GatewayError(Exception):
    """A gateway call failed. `code` is the gRPC status (None when the failure is not a gRPC
    status, as for an invalid commit), `details` what each peer answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 details: tuple[PeerDetail, ...] = (), transaction_id: str = "") -> None:
        self.code = code
        self.details = details
        self.transaction_id = transaction_id
        text = message
        if details:
            text += "; " + "; ".join(str(d) for d in details)
        super().__init__(text)

    @property
    def transient(self) -> bool:
        """Worth retrying: the peer or orderer was unreachable or overloaded."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    @property
    def chaincode_message(self) -> str:
        """What the contract itself said, as best the details tell (the first peer's message)."""
        return self.details[0].message if self.details else str(self)

    @property
    def contract_error(self) -> ContractError | None:
        """The contract's refusal, typed (`NotFound`, `InsufficientFunds`, ...); None when the
        failure is not the contract's (peer down, endorsement policy, unknown function)."""
        for detail in self.details:
            if (refusal := parse(detail.message)) is not None:
                return refusal
        return parse(str(self))


class EndorseError(GatewayError):
    pass


class SubmitError(GatewayError):
    pass


class CommitStatusError(GatewayError):
    pass


class EvaluateError(GatewayError):
    pass


class CommitError(GatewayError):
    """The transaction reached a block but was marked invalid; `status` names the
    validation code (for example MVCC_READ_CONFLICT) and `block_number` where."""

    def __init__(self, transaction_id: str, status: str, block_number: int) -> None:
        self.status = status
        self.block_number = block_number
        super().__init__(f"transaction {transaction_id} committed as invalid: {status} (block {block_number})",
                         transaction_id=transaction_id)

    @property
    def conflict(self) -> bool:
        """Another transaction changed what this one read: worth running again as a new one."""
        return self.status in ("MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT")


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: the peer or orderer was unreachable or too slow (UNAVAILABLE,
    DEADLINE_EXCEEDED), or the transaction lost an MVCC or phantom read conflict (run it anew)."""
    if isinstance(exc, CommitError):
        return exc.conflict
    return isinstance(exc, GatewayError) and exc.transient


def peer_details(error: grpc.aio.AioRpcError) -> tuple[PeerDetail, ...]:
    """The gateway's per-peer `ErrorDetail`s from the rich status in the trailing metadata."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        found = []
        for any_detail in status.details:
            detail = gateway_pb2.ErrorDetail()
            if any_detail.Unpack(detail):
                found.append(PeerDetail(detail.address, detail.msp_id, detail.message))
        return tuple(found)
    return ()


def from_rpc_error(kind: type[GatewayError], step: str, error: grpc.aio.AioRpcError,
                   transaction_id: str = "") -> GatewayError:
    return kind(f"{step} failed: {error.code().name}: {error.details()}", code=error.code(),
                details=peer_details(error), transaction_id=transaction_id)
