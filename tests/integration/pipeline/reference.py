"""A reference outside the pipeline: the events tests feed in, and what must come out.

The expected clean features and hashes are derived here from the generator's own
knowledge of each event (RFC 8785 + SHA-256 applied directly, per schemas/CANONICAL.md),
not by calling the cleaning code.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone

import rfc8785

from streamledger.avro import MARKER, AvroCodec

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def valid_event(i: int, tenant: str = "acme") -> tuple[dict, str]:
    """A RawEvent that needs cleaning (name case, numeric and boolean strings, a null), and its hash."""
    x = (i * 0.7310585786300049) % 97.0  # arbitrary non-round doubles, to check bit-exactness
    raw = {
        "event_id": f"ev-{i:06d}",
        "tenant": tenant,
        "source": "test",
        "ts": BASE_MS + i,
        "features": {"X": x, "Amount EUR": f"{i}.25", "Member": "yes" if i % 2 else "no", "missing": None},
        "label": float(i % 3),
    }
    expected = {
        "event_id": raw["event_id"],
        "tenant": tenant,
        "source": "test",
        "ts": BASE_MS + i,
        "features": {"x": x, "amount_eur": float(f"{i}.25"), "member": bool(i % 2)},
        "label": float(i % 3),
    }
    return raw, hashlib.sha256(rfc8785.dumps(expected)).hexdigest()


def non_finite_event(i: int) -> dict:
    return {"event_id": f"bad-{i:06d}", "tenant": "acme", "source": "test", "ts": BASE_MS + i,
            "features": {"x": math.nan if i % 2 else math.inf}, "label": None}


def unknown_fingerprint_message() -> bytes:
    return MARKER + bytes.fromhex("0123456789abcdef") + b"\x02\x00"


def one_megabyte_event(codec: AvroCodec, i: int) -> bytes:
    features = {f"feature_{n:06d}": float(n) for n in range(60_000)}
    value = codec.encode("RawEvent", {"event_id": f"huge-{i}", "tenant": "acme", "source": "test",
                                      "ts": BASE_MS, "features": features, "label": None})
    assert len(value) >= 1_000_000
    return value


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
