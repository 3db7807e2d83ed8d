"""A Python client of the Fabric Gateway gRPC API (Fabric 2.4+): the official protos,
grpc.aio and `cryptography`. See `gateway.py` for the public API."""

from streamledger.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EvaluateError,
    GatewayError,
    PeerDetail,
    SubmitError,
)
from streamledger.fabric.gateway import (
    ChaincodeEvent,
    Committed,
    Contract,
    Gateway,
    Network,
    RetryPolicy,
    Timeouts,
)
from streamledger.fabric.identity import Identity, IdentityError, Signer, load_msp

__all__ = [
    "ChaincodeEvent", "CommitError", "CommitStatusError", "Committed", "Contract", "EndorseError",
    "EvaluateError", "Gateway", "GatewayError", "Identity", "IdentityError", "Network", "PeerDetail",
    "RetryPolicy", "Signer", "SubmitError", "Timeouts", "load_msp",
]
