"""Errors of the gateway client, one per step, each carrying the gRPC status and what
every peer or orderer said (the gateway's `ErrorDetail`s), so a user can act on it.

    GatewayError                 any failure talking to the gateway
      EndorseError               proposal refused (chaincode error, policy, no peer)
        EndorsementUnavailable   the peers of some organisation(s) could not be reached to
                                 endorse; `orgs` names them (transient)
        EndorsementMismatch      the peers' results differ, as when one has not yet committed
                                 the latest block (transient)
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

import re
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


class EndorsementUnavailable(EndorseError):
    """The gateway could not collect the endorsements the policy needs because peers could
    not be reached (stopped, unreachable, or not yet rediscovered after a restart). `orgs`
    names the organisations (MSP ids) whose peers could not endorse, as the gateway's answer
    or, failing that, the channel's discovery service tells; empty when neither does.
    Transient: the same proposal can be endorsed once those peers are back."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: tuple[PeerDetail, ...] = (),
                 transaction_id: str = "", orgs: tuple[str, ...] = ()) -> None:
        self.reason = message
        self.orgs = tuple(orgs)
        who = f"no peer of {', '.join(self.orgs)} could endorse" if self.orgs else "too few peers could endorse"
        super().__init__(f"{who}: {message}", code, details, transaction_id)

    @property
    def transient(self) -> bool:
        return True

    def naming(self, orgs: tuple[str, ...]) -> EndorsementUnavailable:
        """The same failure, naming `orgs` (found out after the gateway answered)."""
        return EndorsementUnavailable(self.reason, self.code, self.details, self.transaction_id, orgs)


class EndorsementMismatch(EndorseError):
    """The organisations' peers simulated the proposal to different results, so the gateway
    could not assemble one transaction ("ProposalResponsePayloads do not match"). With a
    deterministic contract that means their ledgers differ for a moment: one peer has not yet
    committed the block the other has (its reads have older versions), as after a peer or an
    orderer failover, or when a client submits right after its last commit. Transient: the
    same proposal endorses alike once the lagging peer catches up. `orgs` names the peers'
    organisations whose result differed from the first endorser's."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: tuple[PeerDetail, ...] = (),
                 transaction_id: str = "") -> None:
        self.orgs = tuple(sorted({d.msp_id for d in details if d.msp_id}))
        super().__init__(message, code, details, transaction_id)

    @property
    def transient(self) -> bool:
        return True


class SubmitError(GatewayError):
    pass


class CommitStatusError(GatewayError):
    """Waiting for a transaction's commit status failed; the transaction may still commit."""

    @property
    def transient(self) -> bool:
        """Also CANCELLED: the peer dropped the wait's stream (seen while an orderer stops). Asking
        again is safe: the wait reads, and a resubmit carries the same transaction id."""
        return super().transient or self.code == grpc.StatusCode.CANCELLED


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
    DEADLINE_EXCEEDED), another organisation's peers could not be reached to endorse
    (EndorsementUnavailable) or had not caught up (EndorsementMismatch), or the transaction
    lost an MVCC or phantom read conflict (run it anew)."""
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


_UNREACHABLE_PEER = re.compile(r"\bcode = (Unavailable|DeadlineExceeded)\b")
"""How the gateway reports, in an ErrorDetail, a peer it could not reach (gRPC status text)."""
_NO_ENDORSERS = (
    # Discovery knows no live peers enough to satisfy the policy (a stopped peer drops out).
    "no combination of peers can be derived which satisfy the endorsement policy",
    # Discovery lists the peers but the gateway has no connection to them.
    "failed to select a set of endorsers that satisfy the endorsement policy due to unavailability of peers",
)
_MISSING_ORGS = re.compile(r"failed to find any endorsing peers for org\(s\): (.+)$")
_MISMATCH = "ProposalResponsePayloads do not match"
"""The gateway's ErrorDetail for a peer whose result differs from the first endorser's."""


def unreachable_endorsers(code: grpc.StatusCode | None, message: str,
                          details: tuple[PeerDetail, ...]) -> tuple[str, ...] | None:
    """Of a failed Endorse call: None unless it failed because peers could not be reached;
    then the MSP ids of the organisations whose peers the gateway's answer names (sorted,
    possibly none). Fabric's gateway says it in one of three ways:
      ABORTED, a detail per peer it tried, each "rpc error: code = Unavailable ..."
      FAILED_PRECONDITION "no combination of peers can be derived ..." (no org named)
      UNAVAILABLE "failed to find any endorsing peers for org(s): Org2MSP" (orgs chosen by the client)
    A detail with any other failure (the contract refused, access denied) means it is not
    only unreachable peers, so not this."""
    if code == grpc.StatusCode.ABORTED and details:
        if all(_UNREACHABLE_PEER.search(d.message) for d in details):
            return tuple(sorted({d.msp_id for d in details if d.msp_id}))
        return None
    if code == grpc.StatusCode.FAILED_PRECONDITION and any(text in message for text in _NO_ENDORSERS):
        return ()
    if code == grpc.StatusCode.UNAVAILABLE and (missing := _MISSING_ORGS.search(message)):
        return tuple(sorted(org.strip() for org in missing.group(1).split(",") if org.strip()))
    return None


def from_rpc_error(kind: type[GatewayError], step: str, error: grpc.aio.AioRpcError,
                   transaction_id: str = "") -> GatewayError:
    message, details = f"{step} failed: {error.code().name}: {error.details()}", peer_details(error)
    if issubclass(kind, EndorseError):
        orgs = unreachable_endorsers(error.code(), error.details() or "", details)
        if orgs is not None:
            return EndorsementUnavailable(message, error.code(), details, transaction_id, orgs)
        if error.code() == grpc.StatusCode.ABORTED and details and all(d.message == _MISMATCH for d in details):
            return EndorsementMismatch(message, error.code(), details, transaction_id)
    return kind(message, code=error.code(), details=details, transaction_id=transaction_id)
