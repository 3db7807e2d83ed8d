"""A Python client of the Fabric Gateway gRPC API (Fabric 2.4+): the official protos,
grpc.aio and `cryptography`. See `gateway.py` for the public API and the file layout."""

from streamledger.fabric.client import Timeouts
from streamledger.fabric.commit import Commit, Committed
from streamledger.fabric.contract import Contract
from streamledger.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EndorsementMismatch,
    EndorsementUnavailable,
    EvaluateError,
    GatewayError,
    PeerDetail,
    SubmitError,
    is_transient,
)
from streamledger.fabric.events import ChaincodeEvent
from streamledger.fabric.gateway import Gateway
from streamledger.fabric.identity import Identity, IdentityError, Signer, load_msp
from streamledger.fabric.network import Network
from streamledger.fabric.proposal import Proposal
from streamledger.fabric.transaction import Transaction
from streamledger.retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY", "ChaincodeEvent", "Commit", "CommitError", "CommitStatusError", "Committed", "Contract",
    "EndorseError", "EndorsementMismatch", "EndorsementUnavailable", "EvaluateError", "Gateway", "GatewayError",
    "Identity", "IdentityError", "Network", "PeerDetail", "Proposal", "RetryPolicy", "Signer", "SubmitError",
    "Timeouts", "Transaction", "is_transient", "load_msp",
]
