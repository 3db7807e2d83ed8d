"""`streamledger.client` without a server: the metadata each call sends, the receipts it signs, the
retry with a newer receipt, and a fresh hold when the old one runs out (tritonclient and the ledger
replaced by fakes; the real server and ledger: tests/integration/test_ledger_seams.py)."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from streamledger.client import PaidInferenceClient, ReceiptBook
from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA, receipt_from_header
from streamledger.fabric.identity import Signer


def msp_folder(root: Path) -> tuple[Path, str]:
    """An MSP folder (signcerts/, keystore/) of a new identity, and its certificate PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "User1@org2.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (root / "signcerts").mkdir(parents=True)
    (root / "keystore").mkdir()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (root / "signcerts" / "cert.pem").write_bytes(pem)
    (root / "keystore" / "priv_sk").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return root, pem.decode()


class FakeTriton:
    """What the wrapped tritonclient was asked; answers `rows` rows, or raises what `refusals` holds next."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.refusals: list[InferenceServerException] = []
        self.closed = False

    def infer(self, model_name: str, inputs: list, headers: dict[str, str], **kwargs) -> object:
        self.calls.append(dict(headers))
        if self.refusals:
            raise self.refusals.pop(0)
        rows = inputs[0].shape()[0]
        return SimpleNamespace(get_response=lambda: SimpleNamespace(outputs=[SimpleNamespace(shape=[rows])]))

    def close(self) -> None:
        self.closed = True


def inputs(rows: int) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [rows], "FP64")
    tensor.set_data_from_numpy(np.zeros(rows))
    return [tensor]


@pytest.fixture
def client(tmp_path):
    msp, cert = msp_folder(tmp_path / "msp")
    (tmp_path / "ca.pem").write_text(cert)
    paid = PaidInferenceClient("localhost:1", msp_dir=msp, msp_id="Org2MSP", server_ca=tmp_path / "ca.pem")
    paid.triton = FakeTriton()
    paid.cert = cert
    yield paid
    paid.close()


def test_each_call_sends_the_hold_and_the_latest_receipt_signed_every_ten_rows_received(client):
    client.use_hold("h-1")
    for rows in (3, 5, 2, 4, 6):
        client.infer("m", inputs(rows), headers={"x-trace": "t"})
    sent = client.triton.calls
    assert [c[HOLD_METADATA] for c in sent] == ["h-1"] * 5 and all(c["x-trace"] == "t" for c in sent)
    assert [c.get(RECEIPT_METADATA) for c in sent[:3]] == [None] * 3, "fewer than 10 rows received: no receipt yet"
    receipts = [receipt_from_header(c[RECEIPT_METADATA]) for c in sent[3:]]
    assert [(r.hold_id, r.units, r.sequence) for r in receipts] == [("h-1", 10, 1), ("h-1", 10, 1)]
    assert (client.receipts.latest.units, client.receipts.sequence) == (20, 2)  # 10 more: signed after the 5th
    assert (client.receipt.units, client.receipt.sequence) == (20, 2), "every row signed for: nothing new to sign"
    client.infer("m", inputs(1))
    assert (client.receipt.units, client.receipt.sequence) == (21, 3), "reading it signs for every row received"
    for receipt in receipts + [client.receipt]:
        receipt.verify(client.cert)  # signed with the MSP folder's key


def test_with_sign_every_units_1_each_call_carries_the_receipt_for_every_row_received_before_it(client):
    client.sign_every_units = 1
    client.use_hold("h-1")
    for rows in (3, 5, 2):
        client.infer("m", inputs(rows))
    receipts = [receipt_from_header(c[RECEIPT_METADATA]) for c in client.triton.calls[1:]]
    assert [(r.units, r.sequence) for r in receipts] == [(3, 1), (8, 2)]
    assert (client.receipts.latest.units, client.receipts.latest.sequence) == (10, 3)


def test_a_hold_used_again_goes_on_from_its_last_receipt(client):
    client.use_hold("h-2", units=40, sequence=7)
    client.infer("m", inputs(1))
    assert receipt_from_header(client.triton.calls[0][RECEIPT_METADATA]).units == 40
    assert (client.receipt.units, client.receipt.sequence) == (41, 8)


def test_a_refusal_for_want_of_a_receipt_is_sent_again_only_if_the_receipt_advanced_meanwhile(client):
    client.use_hold("h-3")
    client.infer("m", inputs(2))
    needed = InferenceServerException("hold 'h-3': ... send a newer receipt in the 'streamledger-receipt' request "
                                      "metadata", status="StatusCode.RESOURCE_EXHAUSTED")
    client.triton.refusals = [needed]
    client.infer("m", inputs(1))  # 2 rows received, not signed for yet: signed now, sent again
    refused, again = client.triton.calls[1:]
    assert RECEIPT_METADATA not in refused and receipt_from_header(again[RECEIPT_METADATA]).units == 2
    assert client.receipt.units == 3  # every row received signed for
    client.triton.refusals = [needed]
    with pytest.raises(InferenceServerException, match="send a newer receipt"):
        client.infer("m", inputs(1))  # nothing to sign, nothing arrived meanwhile: the refusal stands
    assert len(client.triton.calls) == 4
    client.triton.calls.clear()

    class Concurrent(FakeTriton):
        """Another thread's answer arrives while this call is refused."""

        def infer(self, model_name, inputs, headers, **kwargs):
            if self.refusals:
                client.receipts.received(4)
            return super().infer(model_name, inputs, headers, **kwargs)
    client.triton = Concurrent()
    client.triton.refusals = [needed]
    client.infer("m", inputs(1))
    first, again = client.triton.calls
    assert receipt_from_header(again[RECEIPT_METADATA]).units == receipt_from_header(first[RECEIPT_METADATA]).units + 4


def test_with_refreeze_a_hold_that_would_not_pay_for_the_next_rows_is_replaced(client, monkeypatch):
    frozen: list[tuple] = []

    async def freeze(nonce, provider, amount, price, expires_at, window):
        frozen.append((provider, amount, price, window))
        return {"hold_id": f"hold-{len(frozen)}", "expires_at": expires_at}
    monkeypatch.setattr(client, "_freeze", freeze)
    client.refreeze = True
    assert client.freeze(provider="Org1MSP::CN=p", amount=20, price_per_unit=2, expires_in=60) == "hold-1"
    for rows in (4, 4, 3):  # the hold pays for 10 units: the third call would take it to 11
        client.infer("m", inputs(rows))
    assert [c[HOLD_METADATA] for c in client.triton.calls] == ["hold-1", "hold-1", "hold-2"]
    assert RECEIPT_METADATA not in client.triton.calls[2], "a fresh hold starts with no receipt"
    assert frozen == [("Org1MSP::CN=p", 20, 2, 0)] * 2

    client.triton.refusals = [InferenceServerException(
        "hold 'hold-2' has 0 credit left to reserve (...): the client freezes a new hold",
        status="StatusCode.RESOURCE_EXHAUSTED")]
    client.infer("m", inputs(1))  # the server says it is used up: a new hold, the call sent again
    assert [c[HOLD_METADATA] for c in client.triton.calls[3:]] == ["hold-2", "hold-3"]


def test_a_hold_just_frozen_that_the_server_does_not_find_yet_is_asked_for_again(client, monkeypatch):
    async def freeze(nonce, provider, amount, price, expires_at, window):
        return {"hold_id": "fresh", "expires_at": expires_at}
    monkeypatch.setattr(client, "_freeze", freeze)
    monkeypatch.setattr("streamledger.client.paid.time.sleep", lambda _s: None)
    missing = InferenceServerException("hold 'fresh' does not exist on the ledger",
                                       status="StatusCode.PERMISSION_DENIED")
    client.freeze(provider="Org1MSP::CN=p", amount=20, price_per_unit=1)
    client.triton.refusals = [missing, missing]  # the server's peer has not the block yet
    client.infer("m", inputs(1))
    assert len(client.triton.calls) == 3

    client.use_hold("elsewhere")  # not frozen here (nor just now): the refusal stands
    client.triton.refusals = [missing]
    with pytest.raises(InferenceServerException, match="does not exist"):
        client.infer("m", inputs(1))


def test_without_a_hold_there_is_nothing_to_pay_from(client):
    with pytest.raises(RuntimeError, match="call freeze"):
        client.infer("m", inputs(1))


@pytest.mark.parametrize("every", [1, 10, 7])
def test_the_receipt_book_is_safe_to_share_between_threads(every):
    book = ReceiptBook(Signer(ec.generate_private_key(ec.SECP256R1())).sign, "h", every_units=every)
    threads = [threading.Thread(target=lambda: [book.received(1) for _ in range(50)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (book.units, book.sequence, book.latest.units) == (200, 200 // every, 200 // every * every)
    assert (book.sign().units, book.sequence) == (200, 200 // every + (200 % every > 0))


def test_the_receipt_book_signs_once_every_units_came_since_the_last_receipt():
    book = ReceiptBook(Signer(ec.generate_private_key(ec.SECP256R1())).sign, "h", every_units=10)
    assert book.sign() is None and book.header is None, "nothing received: nothing to sign"
    assert book.received(4) is None
    assert book.received(64).units == 68  # one large response: signed at once
    assert book.received(9).units == 68 and book.received(1).units == 78
    assert book.sign() is book.latest and book.sequence == 2, "every unit is signed for already"
    with pytest.raises(ValueError, match="every_units must be at least 1"):
        ReceiptBook(book.sign_message, "h", every_units=0)
