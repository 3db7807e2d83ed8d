"""Hold ids and receipts agree byte for byte with the contract: the Go tests
(chaincode/ledger/receipts_test.go) check the same vectors from the other side."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from streamledger.core.receipts import (
    InvalidReceipt,
    Receipt,
    hold_id,
    receipt_message,
    sign_receipt,
)
from streamledger.fabric.identity import Signer

VECTOR_CERT = """-----BEGIN CERTIFICATE-----
MIIBUDCB96ADAgECAgEHMAoGCCqGSM49BAMCMDIxHzAdBgNVBAMMFlVzZXIxQG9y
ZzIuZXhhbXBsZS5jb20xDzANBgNVBAsMBmNsaWVudDAeFw0yNTAxMDEwMDAwMDBa
Fw0zNTAxMDEwMDAwMDBaMDIxHzAdBgNVBAMMFlVzZXIxQG9yZzIuZXhhbXBsZS5j
b20xDzANBgNVBAsMBmNsaWVudDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEuH
GTZFuCVKlu+6ert/7tI+yu+ylfZ1U/USeXodUpAXo5ki1DFy4J+IVGf1kYSxJF86
eRUzar1/uu32aum6+8QwCgYIKoZIzj0EAwIDSAAwRQIgDIFk3boItxsQIx0CoxrZ
yBe0ToB5RjWs0JYCP2wcFKkCIQDCfZGhQA1ZsbodRBMaw7FY6JGmfbCuF1jCMBRU
uiuZSA==
-----END CERTIFICATE-----
"""
VECTOR_HOLD = "f898c8e3fcf5d04a8186f04a431e5a78"
VECTOR_LOW_S = "MEUCIQCCGaPSG54CRwbKJ8bGxdc79YovHcDh4l4gjTRNzww3gQIgOiYxxWDhpEKAilfh8DtB172kKkjhIRIwtOLwchOI9dQ="


def test_the_hold_id_is_the_contracts() -> None:
    assert hold_id("Org2MSP::CN=User1@org2.example.com,OU=client", "0f8e2a7c") == VECTOR_HOLD
    assert hold_id("Org2MSP::CN=User2@org2.example.com,OU=client", "0f8e2a7c") != VECTOR_HOLD


@pytest.mark.parametrize("nonce", ["", "-leading-dash", "has space", "x" * 129, "é"])
def test_a_bad_nonce_is_named(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        hold_id("Org2MSP::x", nonce)


def test_the_go_vector_verifies_and_any_other_number_does_not() -> None:
    Receipt(VECTOR_HOLD, 42, 7, VECTOR_LOW_S).verify(VECTOR_CERT)
    for units, sequence in ((43, 7), (42, 8)):
        with pytest.raises(InvalidReceipt, match="does not verify"):
            Receipt(VECTOR_HOLD, units, sequence, VECTOR_LOW_S).verify(VECTOR_CERT)
    with pytest.raises(InvalidReceipt, match="base64"):
        Receipt(VECTOR_HOLD, 42, 7, "not base64!").verify(VECTOR_CERT)


def test_a_signed_receipt_verifies_only_against_its_signers_certificate() -> None:
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    receipt = sign_receipt(signer.sign, VECTOR_HOLD, 3, 1)
    assert receipt_message(VECTOR_HOLD, 3, 1) == f"streamledger-receipt/v1\n{VECTOR_HOLD}\n3\n1".encode()
    with pytest.raises(InvalidReceipt):
        receipt.verify(VECTOR_CERT)  # another key's certificate


def test_a_receipt_supersedes_only_with_a_higher_sequence_and_no_fewer_units() -> None:
    first = Receipt(VECTOR_HOLD, 5, 2, "")
    assert first.supersedes(None)
    assert Receipt(VECTOR_HOLD, 5, 3, "").supersedes(first)
    assert not Receipt(VECTOR_HOLD, 4, 3, "").supersedes(first)
    assert not Receipt(VECTOR_HOLD, 9, 2, "").supersedes(first)
    with pytest.raises(InvalidReceipt):
        receipt_message(VECTOR_HOLD, -1, 1)
