"""Every receipt known for one hold, each checked against the certificate that froze it, without I/O.

    checked = check_receipts(hold, usage)     # hold: GetHold's answer; usage: its UsageRecords
    [(r.units, r.sequence, r.verified, r.sources) for r in checked]
    # [(3, 1, True, ['usage']), (5, 2, True, ['ledger', 'usage'])]

A hold's receipts come from two places: the one recorded on the ledger (`receipt`, by
RecordReceipt or Settle) and those the usage topic's records carry (`receipt_units`,
`receipt_sequence`, `receipt_signature`: the latest receipt the inference server had accepted
when it served the request). Each distinct receipt is listed once, with where it was seen, the
requests that carried it, and whether the client's key signed it (`streamledger.core.receipts`).
`wallet receipts` and `audit bill` both list them this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamledger.core.receipts import InvalidReceipt, Receipt, ReceiptKey

LEDGER = "ledger"
USAGE = "usage"


@dataclass
class CheckedReceipt:
    units: int
    sequence: int
    signature: str
    verified: bool = False
    problem: str = ""
    """Why it does not verify ("" when it does)."""
    sources: list[str] = field(default_factory=list)
    """"ledger" (recorded on the hold) and/or "usage" (carried by usage records)."""
    request_ids: list[str] = field(default_factory=list)
    """The usage records' requests that carried it."""
    tx_id: str = ""
    """The transaction that recorded it on the ledger ("" when it was not recorded)."""

    def as_dict(self) -> dict[str, Any]:
        return {"units": self.units, "sequence": self.sequence, "signature": self.signature,
                "verified": self.verified, "problem": self.problem, "sources": self.sources,
                "request_ids": self.request_ids, "tx_id": self.tx_id}


def check_receipts(hold: Mapping[str, Any], usage: Iterable[Mapping[str, Any]]) -> list[CheckedReceipt]:
    """The hold's distinct receipts, by sequence then units, each verified against `client_cert`."""
    hold_id = str(hold.get("hold_id", ""))
    found: dict[tuple[Any, Any, Any], CheckedReceipt] = {}

    def seen(units: Any, sequence: Any, signature: Any) -> CheckedReceipt:
        key = (units, sequence, signature)
        if key not in found:
            found[key] = CheckedReceipt(units, sequence, signature)
        return found[key]

    recorded = hold.get("receipt")
    if isinstance(recorded, Mapping):
        entry = seen(recorded.get("units"), recorded.get("sequence"), recorded.get("signature"))
        entry.sources.append(LEDGER)
        entry.tx_id = str(recorded.get("tx_id") or "")
    for record in usage:
        units, sequence = record.get("receipt_units", 0), record.get("receipt_sequence", 0)
        signature = record.get("receipt_signature", "")
        if sequence == 0 and not units and not signature:
            continue  # the client had signed no receipt yet when this request was served
        entry = seen(units, sequence, signature)
        if USAGE not in entry.sources:
            entry.sources.append(USAGE)
        entry.request_ids.append(str(record.get("request_id", "")))
    try:
        key: ReceiptKey | None = ReceiptKey(hold.get("client_cert") or "")
        unreadable = ""
    except InvalidReceipt as exc:
        key, unreadable = None, str(exc)
    for entry in found.values():
        _verify(entry, hold_id, key, unreadable)
    return sorted(found.values(), key=lambda r: (_number(r.sequence), _number(r.units)))


def _verify(entry: CheckedReceipt, hold_id: str, key: ReceiptKey | None, unreadable: str) -> None:
    units, sequence, signature = entry.units, entry.sequence, entry.signature
    if not _is_int(units) or not _is_int(sequence) or units < 0 or sequence < 1:
        entry.problem = f"malformed: units must be >= 0 and sequence >= 1 (got units={units!r}, sequence={sequence!r})"
    elif not isinstance(signature, str) or not signature:
        entry.problem = "malformed: it carries no signature"
    elif key is None:
        entry.problem = unreadable
    else:
        try:
            key.verify(Receipt(hold_id, units, sequence, signature))
            entry.verified = True
        except InvalidReceipt as exc:
            entry.problem = str(exc)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> int:
    return value if _is_int(value) else -1
