"""The contract's refusals as typed exceptions, parsed once from the text the peer passes on.

The chaincode (chaincode/ledger/errors.go) starts every refusal with a code, then the field
at fault when there is one; the peer prefixes it with the chaincode's response status:

    chaincode response 500, INSUFFICIENT_FUNDS: "amount": account "acct-1" has 0, needs 5

    >>> refusal = parse('chaincode response 500, NOT_FOUND: "hold_id": no hold "h-1"')
    >>> type(refusal).__name__, refusal.code, refusal.field, refusal.detail
    ('NotFound', 'NOT_FOUND', 'hold_id', 'no hold "h-1"')
    >>> str(refusal)
    'NOT_FOUND: "hold_id": no hold "h-1"'
    >>> parse("chaincode response 500, Function Nope not found in contract StreamLedger") is None
    True

A code is recognised only where the contract puts it (the start of the message, or right
after the peer's `chaincode response <status>, `), so a gRPC status name such as NOT_FOUND
elsewhere in a gateway error is never read as the contract's answer.
"""

from __future__ import annotations

import re
from typing import ClassVar


class ContractError(Exception):
    """The contract refused the transaction; nothing was written. `code` names the rule,
    `field` the argument or key at fault ("" when none), `detail` the rest."""

    code: ClassVar[str] = ""

    def __init__(self, detail: str, field: str = "") -> None:
        self.detail = detail
        self.field = field
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The refusal as the contract wrote it: `CODE: "field": detail`."""
        if self.field:
            return f'{self.code}: "{self.field}": {self.detail}'
        return f"{self.code}: {self.detail}"


class InvalidArgument(ContractError):
    """An argument is malformed (empty, too long, not a positive amount, ...)."""
    code = "INVALID_ARGUMENT"


class Forbidden(ContractError):
    """The caller's identity may not do this (mint, anchor, settle another provider's hold, ...)."""
    code = "FORBIDDEN"


class NotFound(ContractError):
    """No such account, hold, anchor or model on the ledger."""
    code = "NOT_FOUND"


class InsufficientFunds(ContractError):
    code = "INSUFFICIENT_FUNDS"


class ExceedsHold(ContractError):
    """More than the hold has left was authorized or settled."""
    code = "EXCEEDS_HOLD"


class HoldExpired(ContractError):
    code = "HOLD_EXPIRED"


class WindowOpen(ContractError):
    """The client asked to release its hold before its settlement window closed."""
    code = "WINDOW_OPEN"


class WindowClosed(ContractError):
    """The provider settled or recorded a receipt after the hold's settlement window."""
    code = "WINDOW_CLOSED"


class InvalidReceipt(ContractError):
    """The receipt's signature does not verify against the client certificate of the hold."""
    code = "INVALID_RECEIPT"


class StaleReceipt(ContractError):
    """The receipt does not supersede the recorded one (an older sequence or fewer units)."""
    code = "STALE_RECEIPT"


class AlreadySettled(ContractError):
    code = "ALREADY_SETTLED"


class HoldClosed(ContractError):
    """The hold was released (or otherwise closed) before this call."""
    code = "HOLD_CLOSED"


class Conflict(ContractError):
    """The key exists with other contents (an anchor's root, a model version's hash, a hold's terms)."""
    code = "CONFLICT"


CODES: dict[str, type[ContractError]] = {kind.code: kind for kind in ContractError.__subclasses__()}

_CODE = re.compile(r"(?:^|chaincode response \d+, )([A-Z_]+): ")
_FIELD = re.compile(r'"([^"\\]*)": ')


def parse(message: str) -> ContractError | None:
    """The typed refusal in `message`, or None when it holds none of the contract's codes."""
    for found in _CODE.finditer(message):
        kind = CODES.get(found[1])
        if kind is None:
            continue
        rest = message[found.end():]
        field = _FIELD.match(rest)
        return kind(rest[field.end():], field[1]) if field else kind(rest)
    return None
