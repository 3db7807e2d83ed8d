"""The ids the ledger contract defines, in one place (chaincode/ledger/validate.go, recordID).

    RECORD_ID.fullmatch(hold_id)                    # a hold, model, batch or nonce the contract accepts
    batch_id("events.clean", 0, 100, 199)           # "events.clean:0:100-199"
    parse_batch_id("events.clean:0:100-199")        # ("events.clean", 0, 100, 199), or None
"""

from __future__ import annotations

import re

RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""Every id the contract stores under (holds, nonces, models, batches): anything else was never recorded."""

_BATCH_ID = re.compile(r"(?P<topic>.+):(?P<partition>\d+):(?P<first>\d+)-(?P<last>\d+)")


def batch_id(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The id the contract requires of a batch: `<topic>:<partition>:<first>-<last>`, in decimal."""
    return f"{topic}:{partition}:{first_offset}-{last_offset}"


def parse_batch_id(text: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first offset, last offset) of a batch id, or None if it is not one."""
    match = _BATCH_ID.fullmatch(text)
    if match is None:
        return None
    return match["topic"], int(match["partition"]), int(match["first"]), int(match["last"])
