"""What the dashboard knows about the Fabric ledger: holds, model registrations, anchors.

Fed by `LedgerWatch` (the contract's chaincode events and point lookups) and read by the
`Board` when it renders a frame. Pure: no I/O, bounded memory, every rule unit-tested.

    view = LedgerView(enabled=True)
    view.connected(now, identity="Org1MSP::Admin", height=12)
    view.on_event(now, "HoldFrozen", {"hold_id": "h1", ...}, tx_id="ab12", block=12)
    view.hold_status("h1")["status"]       # "open"
    view.model_status("m1", 3, sha256)     # {"status": "registered", ...} once the ledger said so

What the ledger once said final stays true while it is unreachable (a settled hold stays
settled, a registered hash never changes); what could still change (an open hold, a model
not registered yet) is shown as "unreachable" until the ledger answers again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

OFF, CONNECTING, CONNECTED, UNREACHABLE = "off", "connecting", "connected", "unreachable"
OPEN, SETTLED, RELEASED = "open", "settled", "released"
CLOSED = (SETTLED, RELEASED)
EVENTS = ("HoldFrozen", "HoldSettled", "HoldReleased", "BatchAnchored", "ModelRegistered")
"""The contract's event names (chaincode/ledger/holds.go); others are counted, not shown."""

FEED_LENGTH = 20
MAX_HOLDS = 1000
MAX_ANCHORS = 1000
MAX_REGISTRATIONS = 256
ERROR_CHARS = 300

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMap(OrderedDict[K, V]):
    """A dict that forgets its least recently written keys beyond `maxlen`."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxlen:
            self.popitem(last=False)


@dataclass
class Known:
    """What the ledger said about one key: its record, or None when it has none (yet)."""

    record: dict[str, Any] | None
    checked_at: float
    error: str | None = None
    """Set when the ledger refused the lookup itself (for example a malformed id)."""


@dataclass(frozen=True)
class Lookup:
    """A point read the watcher should make: kind is "model", "hold" or "anchor"."""

    kind: str
    key: Any


def _seconds(text: Any) -> float | None:
    """An RFC 3339 timestamp from the contract (nanoseconds allowed) as epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _hold_from_contract(record: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's Hold JSON (GetHold, HoldFrozen, HoldReleased) in the page's terms."""
    return {"hold_id": record["hold_id"], "client": record["client"], "provider": record["provider"],
            "amount": int(record["amount"]), "status": str(record["status"]).lower(),
            "charged": int(record.get("charged") or 0), "refunded": int(record.get("refunded") or 0),
            "freeze_tx_id": record.get("freeze_tx_id") or None, "close_tx_id": record.get("close_tx_id") or None}


class LedgerView:
    def __init__(self, enabled: bool, recheck_s: float = 10.0) -> None:
        self.enabled = enabled
        self.recheck_s = recheck_s
        self.status = CONNECTING if enabled else OFF
        self.error: str | None = None
        self.identity: str | None = None
        self.height: int | None = None
        self.contact_at: float | None = None
        self.first_block: int | None = None
        self.last_block: int | None = None
        self.events = 0
        self.counts = {name: 0 for name in EVENTS}
        self.charged_total = 0
        self.undecodable = 0
        self.holds: BoundedMap[str, Known] = BoundedMap(MAX_HOLDS)
        self.models: BoundedMap[tuple[str, int], Known] = BoundedMap(MAX_REGISTRATIONS)
        self.anchors: BoundedMap[str, Known] = BoundedMap(MAX_ANCHORS)
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        """Freezes, settlements and releases, newest first."""
        self.confirmed: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        """Anchors confirmed by BatchAnchored events, newest first."""

    # -- connection ----------------------------------------------------------------------------

    def connected(self, now: float, identity: str | None, height: int | None) -> None:
        self.status, self.error, self.contact_at = CONNECTED, None, now
        self.identity = identity
        if height is not None:
            self.height = height

    def heartbeat(self, now: float, height: int | None) -> None:
        """The ledger answered a call at `now`."""
        self.status, self.error, self.contact_at = CONNECTED, None, now
        if height is not None:
            self.height = max(self.height or 0, height)

    def unreachable(self, error: str) -> None:
        if self.enabled:
            self.status, self.error = UNREACHABLE, error[:ERROR_CHARS]

    # -- events --------------------------------------------------------------------------------

    def on_event(self, now: float, name: str, payload: Mapping[str, Any], tx_id: str, block: int) -> None:
        """One chaincode event (JSON-decoded payload) from block `block`, transaction `tx_id`.

        Raises KeyError/TypeError/ValueError for a payload missing what its event must carry."""
        self.events += 1
        self.first_block = block if self.first_block is None else min(self.first_block, block)
        self.last_block = max(self.last_block or 0, block)
        self.height = max(self.height or 0, block + 1)
        self.contact_at = now
        if name not in self.counts:
            return
        if name == "HoldFrozen":
            hold = _hold_from_contract(payload)
            self._put_hold(now, {**hold, "block": block})
            self._feed("frozen", hold, tx_id, block, _seconds(payload.get("created_at")))
        elif name == "HoldReleased":
            hold = _hold_from_contract(payload)
            self._put_hold(now, {**hold, "status": RELEASED, "block": block})
            self._feed("released", hold, tx_id, block, _seconds(payload.get("closed_at")))
        elif name == "HoldSettled":
            charged, refunded = int(payload["charged"]), int(payload["refunded"])
            # The price frozen with the hold; settlements the contract made before issue 21 said `price`.
            price = payload["price_per_unit"] if "price_per_unit" in payload else payload["price"]
            hold = {"hold_id": payload["hold_id"], "client": payload["client"], "provider": payload["provider"],
                    "amount": charged + refunded,  # the contract refunds exactly what it did not charge
                    "status": SETTLED, "charged": charged, "refunded": refunded,
                    "units": int(payload["units"]), "price": int(price),
                    "close_tx_id": payload.get("tx_id") or tx_id}
            self._put_hold(now, {**hold, "block": block})
            self.charged_total += charged
            self._feed("settled", hold, tx_id, block, None)
        elif name == "BatchAnchored":
            anchor = {"batch_id": payload["batch_id"], "merkle_root": payload["merkle_root"],
                      "count": int(payload["count"]), "first_offset": int(payload["first_offset"]),
                      "last_offset": int(payload["last_offset"]), "tx_id": payload.get("tx_id") or tx_id,
                      "block": block}
            self.anchors.put(anchor["batch_id"], Known(anchor, now))
            self.confirmed.appendleft({**anchor, "ts": _seconds(payload.get("anchored_at"))})
        elif name == "ModelRegistered":
            key = (str(payload["model_id"]), int(payload["version"]))
            self.models.put(key, Known({"sha256": payload["sha256"], "tx_id": payload.get("tx_id") or tx_id,
                                        "block": block}, now))
        self.counts[name] += 1

    def on_undecodable_event(self) -> None:
        self.undecodable += 1

    def _feed(self, event: str, hold: Mapping[str, Any], tx_id: str, block: int, ts: float | None) -> None:
        self.feed.appendleft({"event": event, "hold_id": hold["hold_id"], "client": hold["client"],
                              "provider": hold["provider"], "amount": hold["amount"],
                              "charged": hold.get("charged", 0), "refunded": hold.get("refunded", 0),
                              "units": hold.get("units"), "price": hold.get("price"),
                              "tx_id": tx_id, "block": block, "ts": ts})

    def _put_hold(self, now: float, update: dict[str, Any]) -> None:
        known = self.holds.get(update["hold_id"])
        before = known.record if known and known.record else {}
        if before.get("status") in CLOSED and update.get("status") not in CLOSED:
            update = {**update, **before}  # a late answer never reopens a closed hold
        self.holds.put(update["hold_id"], Known({**before, **{k: v for k, v in update.items() if v is not None}}, now))

    # -- point lookups -------------------------------------------------------------------------

    def due(self, now: float, models: Iterable[tuple[str, int]], holds: Iterable[str], anchors: Iterable[str],
            limit: int) -> list[Lookup]:
        """Reads worth making now: keys never looked up, and keys the ledger did not have
        (or refused) `recheck_s` ago; nothing while the ledger is not connected."""
        if self.status != CONNECTED:
            return []
        wanted = ([Lookup("model", key) for key in dict.fromkeys(models)]
                  + [Lookup("hold", key) for key in dict.fromkeys(holds)]
                  + [Lookup("anchor", key) for key in dict.fromkeys(anchors)])
        tables: dict[str, BoundedMap[Any, Known]] = {"model": self.models, "hold": self.holds, "anchor": self.anchors}
        out = []
        for lookup in wanted:
            known = tables[lookup.kind].get(lookup.key)
            if known is None or ((known.record is None or known.error) and now - known.checked_at >= self.recheck_s):
                out.append(lookup)
                if len(out) >= limit:
                    break
        return out

    def on_model(self, now: float, model_id: str, version: int, record: Mapping[str, Any] | None,
                 error: str | None = None) -> None:
        """GetModel's answer for (model_id, version): the registered record or None."""
        key = (model_id, version)
        known = self.models.get(key)
        if known and known.record and not record:
            return  # registered is final: a stale "not found" never undoes it
        self.models.put(key, Known(None if record is None else
                                   {"sha256": record["sha256"], "tx_id": record.get("tx_id"), "block": None},
                                   now, None if error is None else error[:ERROR_CHARS]))

    def on_hold(self, now: float, hold_id: str, record: Mapping[str, Any] | None, error: str | None = None) -> None:
        """GetHold's answer: the contract's hold or None."""
        if record is None:
            known = self.holds.get(hold_id)
            if known and known.record:
                return
            self.holds.put(hold_id, Known(None, now, None if error is None else error[:ERROR_CHARS]))
            return
        self._put_hold(now, _hold_from_contract(record))

    def on_anchor(self, now: float, batch_id: str, record: Mapping[str, Any] | None, error: str | None = None) -> None:
        """GetAnchor's answer: the anchor on the ledger or None."""
        known = self.anchors.get(batch_id)
        if known and known.record and not record:
            return
        self.anchors.put(batch_id, Known(None if record is None else {
            "batch_id": batch_id, "merkle_root": record["merkle_root"], "count": int(record["count"]),
            "tx_id": record.get("tx_id"), "block": (known.record or {}).get("block") if known else None,
        }, now, None if error is None else error[:ERROR_CHARS]))

    # -- output --------------------------------------------------------------------------------

    def _not_final(self, known: Known | None) -> dict[str, Any]:
        """The status of something the ledger has not (yet) confirmed."""
        if self.status != CONNECTED:
            return {"status": self.status, "error": self.error}
        if known is None:
            return {"status": "checking"}
        if known.error:
            return {"status": "refused", "error": known.error}
        return {"status": "missing"}

    def model_status(self, model_id: str, version: int | None, sha256: str | None) -> dict[str, Any]:
        """registered | mismatch (registered with another hash) | not_registered | checking |
        refused | unreachable | connecting | off | no_snapshot."""
        if not self.enabled:
            return {"status": OFF}
        if version is None or sha256 is None:
            return {"status": "no_snapshot"}
        known = self.models.get((model_id, version))
        if known and known.record:
            registered = known.record["sha256"]
            return {"status": "registered" if registered == sha256 else "mismatch", "version": version,
                    "registered_sha256": registered, "tx_id": known.record.get("tx_id")}
        status = self._not_final(known)
        if status["status"] == "missing":
            status["status"] = "not_registered"
        return {**status, "version": version}

    def hold_status(self, hold_id: str) -> dict[str, Any]:
        """open | settled | released | not_found | checking | refused | unreachable | connecting | off."""
        if not self.enabled:
            return {"status": OFF}
        known = self.holds.get(hold_id)
        record = known.record if known else None
        if record and (record["status"] in CLOSED or self.status == CONNECTED):
            return {"status": record["status"], "amount": record.get("amount"), "charged": record.get("charged"),
                    "refunded": record.get("refunded"),
                    "tx_id": record.get("close_tx_id") or record.get("freeze_tx_id")}
        if record:
            return {"status": self.status, "error": self.error, "last_known": record["status"]}
        status = self._not_final(known)
        if status["status"] == "missing":
            status["status"] = "not_found"
        return status

    def anchor_status(self, batch_id: str, merkle_root: str) -> dict[str, Any]:
        """confirmed | root_mismatch | pending (not on the ledger) | checking | refused |
        unreachable | connecting | off."""
        if not self.enabled:
            return {"status": OFF}
        known = self.anchors.get(batch_id)
        if known and known.record:
            on_ledger = known.record["merkle_root"]
            return {"status": "confirmed" if on_ledger == merkle_root else "root_mismatch",
                    "ledger_root": on_ledger, "tx_id": known.record.get("tx_id"), "block": known.record.get("block")}
        status = self._not_final(known)
        if status["status"] == "missing":
            status["status"] = "pending"
        return status

    def summary(self, now: float) -> dict[str, Any]:
        return {"enabled": self.enabled, "status": self.status, "connected": self.status == CONNECTED,
                "error": self.error, "identity": self.identity, "height": self.height,
                "first_block": self.first_block, "last_block": self.last_block, "events": self.events,
                "undecodable": self.undecodable,
                "last_contact_ago": None if self.contact_at is None else round(max(0.0, now - self.contact_at), 1),
                "counts": {"frozen": self.counts["HoldFrozen"], "settled": self.counts["HoldSettled"],
                           "released": self.counts["HoldReleased"], "anchored": self.counts["BatchAnchored"],
                           "registered": self.counts["ModelRegistered"]},
                "charged_total": self.charged_total}
