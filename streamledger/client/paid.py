"""`PaidInferenceClient`: a Triton gRPC client that pays for what it is served with signed receipts.

    client = PaidInferenceClient("localhost:8001", msp_dir=msp, msp_id="Org2MSP", server_ca="server-ca.pem")
    hold_id = client.freeze(provider=PROVIDER, amount=1_000, price_per_unit=1, expires_in=3600)
    result = client.infer("phishing-logreg", inputs)      # as tritonclient.grpc's infer, paid
    client.triton.is_model_ready("phishing-logreg")       # the wrapped tritonclient, for everything else

What it does, step by step:
- **mutual TLS** with the identity of an MSP folder (`signcerts/` certificate, `keystore/` key:
  the client's Fabric enrollment, which its organisation's CA issued) against a server whose
  certificate `server_ca` issued;
- **a hold**: `freeze(...)` freezes credit on the ledger as this same identity (`Freeze`, the
  client role; the ledger's peer and TLS root from `ledger`, default the local network's), or
  `use_hold(hold_id)` takes one frozen elsewhere (`streamledger wallet freeze`);
- **every `infer`** sends the hold id and the latest receipt as gRPC metadata
  (`streamledger-hold-id`, `streamledger-receipt`), and counts the rows of each response; once
  `sign_every_units` rows (default 10) came since the last receipt it signs, with the identity's
  Fabric key, a receipt for all the rows received on the hold (`ReceiptBook`), and at once
  whenever a server asks for a newer receipt or `receipt` is read;
- **a fresh hold** (with `refreeze=True`, after a `freeze`): when the hold would not pay for the
  next request's rows, is about to expire, or the server says it is used up, the client freezes a
  new one on the same terms and goes on with it.

The server serves a hold only up to the client's latest receipt plus its credit window, so a
client may be told to send a newer receipt (rows received and not signed for yet, or earlier
answers still on their way when it sends several requests at once): `infer` then signs for every
row received and sends the request once more if its receipt has advanced. A hold frozen moments ago that the server does not find yet (it reads another peer, which may
lag) is asked for again for up to `FRESH_HOLD_SECONDS`. Any other refusal is tritonclient's
`InferenceServerException`, naming what is wrong.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from streamledger.client.receipts import SIGN_EVERY_UNITS, ReceiptBook
from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA, Receipt
from streamledger.fabric.identity import load_msp
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings

EXPIRY_MARGIN_SECONDS = 5.0
"""With `refreeze`, a hold this close to its expiry is replaced before a request."""
FRESH_HOLD_SECONDS = 10.0
"""A hold this client froze this recently that the server does not find yet is asked for again: the
server reads another peer than the one the client froze through, which may not have its block yet."""


@dataclass(frozen=True)
class HoldTerms:
    """What the client froze (or was told about a hold it uses): enough to know when it runs out."""

    hold_id: str
    provider: str = ""
    amount: int = 0
    """0: unknown (a hold used, not frozen here)."""
    price_per_unit: int = 1
    expires_at: float = float("inf")


class PaidInferenceClient:
    def __init__(self, url: str, *, msp_dir: str | Path, msp_id: str, server_ca: str | Path,
                 server_name: str = "", ledger: LedgerSettings | None = None, refreeze: bool = False,
                 sign_every_units: int = SIGN_EVERY_UNITS) -> None:
        """A client of the inference server at `url` acting as the identity of `msp_dir` (of `msp_id`).

        `server_name`: the name to check in the server's certificate when it is not `url`'s host.
        `ledger`: where `freeze` submits (default: the local network, as this identity).
        `refreeze`: freeze a fresh hold on the same terms when the current one runs out.
        `sign_every_units`: rows received between two receipts (keep it well within the server's
        credit window; 1 signs after every response).
        """
        self.sign_every_units = sign_every_units
        self.msp_dir, self.msp_id = Path(msp_dir).expanduser(), msp_id
        self.identity, self.signer = load_msp(self.msp_dir, msp_id)
        self.ledger = ledger or LedgerSettings(fabric_msp_id=msp_id, fabric_msp_dir=self.msp_dir)
        self.refreeze = refreeze
        self.triton = triton.InferenceServerClient(
            url, ssl=True, root_certificates=str(server_ca), private_key=str(_only_file(self.msp_dir / "keystore")),
            certificate_chain=str(_only_file(self.msp_dir / "signcerts")),
            channel_args=[("grpc.ssl_target_name_override", server_name)] if server_name else None)
        """The tritonclient underneath: metadata, readiness, everything but paid `infer`."""
        self.terms: HoldTerms | None = None
        self.receipts: ReceiptBook | None = None
        self._frozen_at = float("-inf")
        """When (monotonic) the current hold was frozen here."""
        self._expires_in, self._window = 3600.0, 0
        """How long, and with which settlement window, the last `freeze` froze (repeated by `refreeze`)."""

    # -- the hold --

    def freeze(self, *, provider: str, amount: int, price_per_unit: int, expires_in: float = 3600,
               settlement_window_seconds: int = 0) -> str:
        """Freeze `amount` credit for `provider` on the ledger, as this client, at `price_per_unit` per
        row, for `expires_in` seconds; use it from now on. Returns the hold id."""
        expires_at = int(time.time() + expires_in)
        hold = asyncio.run(self._freeze(uuid.uuid4().hex, provider, amount, price_per_unit, expires_at,
                                        settlement_window_seconds))
        self._expires_in, self._window = expires_in, settlement_window_seconds
        self.terms = HoldTerms(hold["hold_id"], provider, amount, price_per_unit, float(hold["expires_at"]))
        self._frozen_at = time.monotonic()
        self.receipts = ReceiptBook(self.signer.sign, hold["hold_id"], every_units=self.sign_every_units)
        return hold["hold_id"]

    def use_hold(self, hold_id: str, *, units: int = 0, sequence: int = 0) -> None:
        """Pay from a hold frozen elsewhere; `units` and `sequence`: the last receipt signed on it, if any."""
        self.terms = HoldTerms(hold_id)
        self.receipts = ReceiptBook(self.signer.sign, hold_id, units, sequence, every_units=self.sign_every_units)
        self._frozen_at = float("-inf")

    @property
    def hold_id(self) -> str | None:
        return self.terms.hold_id if self.terms is not None else None

    @property
    def receipt(self) -> Receipt | None:
        """A receipt for every row received on the current hold (signed now if the latest does not cover them)."""
        return self.receipts.sign() if self.receipts is not None else None

    async def _freeze(self, nonce: str, provider: str, amount: int, price: int, expires_at: int,
                      window: int) -> dict[str, Any]:
        async with LedgerClient.connect(self.ledger) as ledger:
            return await ledger.freeze(nonce, provider, amount, price, expires_at, window)

    # -- paid calls --

    def infer(self, model_name: str, inputs: list[triton.InferInput], **kwargs: Any) -> triton.InferResult:
        """tritonclient's `infer`, charged to the hold, with the latest receipt; counts (and signs for) the rows received."""
        if self.receipts is None:
            raise RuntimeError("no hold to pay from: call freeze(...) or use_hold(hold_id) first")
        if self._runs_out(_rows(inputs)):
            self._freeze_again()
        headers = dict(kwargs.pop("headers", None) or {})
        sent = self.receipts.header
        try:
            result = self._call(model_name, inputs, headers, kwargs)
        except InferenceServerException as exc:
            if self.refreeze and _used_up(exc):
                self._freeze_again()
            elif not (_about_the_receipt(exc) and self.receipts.sign() is not None and self.receipts.header != sent):
                raise
            result = self._call(model_name, inputs, headers, kwargs)  # once more, with the newer receipt or hold
        self.receipts.received(_rows_of(result))
        return result

    def _call(self, model_name: str, inputs: list[triton.InferInput], headers: dict[str, str],
              kwargs: dict[str, Any]) -> triton.InferResult:
        """One paid call; sent again while the server does not find the hold this client just froze."""
        while True:
            try:
                return self._send(model_name, inputs, headers, kwargs)
            except InferenceServerException as exc:
                if not (_not_found(exc) and time.monotonic() < self._frozen_at + FRESH_HOLD_SECONDS):
                    raise
            time.sleep(0.2)

    def _send(self, model_name: str, inputs: list[triton.InferInput], headers: dict[str, str],
              kwargs: dict[str, Any]) -> triton.InferResult:
        paid = dict(headers)
        paid[HOLD_METADATA] = self.receipts.hold_id
        header = self.receipts.header
        if header is not None:
            paid[RECEIPT_METADATA] = header
        return self.triton.infer(model_name, inputs, headers=paid, **kwargs)

    def _runs_out(self, rows: int) -> bool:
        terms = self.terms
        if not self.refreeze or terms is None or not terms.amount:
            return False
        pays_for = terms.amount // terms.price_per_unit
        return self.receipts.units + rows > pays_for or time.time() >= terms.expires_at - EXPIRY_MARGIN_SECONDS

    def _freeze_again(self) -> None:
        terms = self.terms
        if terms is None or not terms.amount:
            raise RuntimeError("refreeze needs a hold frozen by this client (freeze(...)), to repeat its terms")
        self.freeze(provider=terms.provider, amount=terms.amount, price_per_unit=terms.price_per_unit,
                    expires_in=self._expires_in, settlement_window_seconds=self._window)

    def close(self) -> None:
        self.triton.close()

    def __enter__(self) -> PaidInferenceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _only_file(folder: Path) -> Path:
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no file in {folder} (an MSP folder has signcerts/ and keystore/)")
    return files[0]


def _rows(inputs: list[triton.InferInput]) -> int:
    shape = inputs[0].shape() if inputs else []
    return int(shape[0]) if shape else 0


def _rows_of(result: triton.InferResult) -> int:
    """Rows answered: the first output's first dimension (what the server charged for)."""
    outputs = result.get_response().outputs
    return int(outputs[0].shape[0]) if outputs and outputs[0].shape else 0


def _about_the_receipt(exc: InferenceServerException) -> bool:
    return exc.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT") \
        and "receipt" in (exc.message() or "")


def _not_found(exc: InferenceServerException) -> bool:
    return exc.status() == "StatusCode.PERMISSION_DENIED" and "does not exist on the ledger" in (exc.message() or "")


def _used_up(exc: InferenceServerException) -> bool:
    message = exc.message() or ""
    return (exc.status() == "StatusCode.RESOURCE_EXHAUSTED" and "freezes a new hold" in message) or \
        (exc.status() == "StatusCode.PERMISSION_DENIED" and "expired" in message)
