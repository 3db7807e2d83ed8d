"""Revoking a certificate as its organisation's CA does: the CA signs a certificate
revocation list (CRL), and the org's MSP in the channel configuration carries it. Peers and
orderers check every creator against that MSP, so from the block that commits the new
configuration on, each refuses the certificate ("The certificate has been revoked").

Each CA keeps ONE CRL in the channel, listing every serial it has revoked: a revocation
replaces that CRL with one more entry, so the configuration grows by one serial per
revoked certificate, not by a CRL. Pure: network.py fetches and submits the configuration
(as configtxlator's JSON, edited here)."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.fabric.identities import VALIDITY, org_ca


class RevocationError(ValueError):
    """The certificate cannot be revoked here: the message names the certificate and why."""


def signing_certificate(msp: Path) -> x509.Certificate:
    """The certificate of an MSP folder (the one file in `signcerts/`)."""
    certs = sorted((msp / "signcerts").glob("*.pem"))
    if len(certs) != 1:
        raise RevocationError(f"{msp / 'signcerts'} must hold one certificate; it holds {len(certs)}")
    return x509.load_pem_x509_certificate(certs[0].read_bytes())


def org_msp(config: dict[str, Any], msp_id: str) -> dict[str, Any]:
    """The FabricMSPConfig of application org `msp_id` in a channel configuration (its JSON
    form; editing it edits the configuration)."""
    for group in config["channel_group"]["groups"]["Application"]["groups"].values():
        msp = group["values"]["MSP"]["value"]["config"]
        if msp["name"] == msp_id:
            return msp
    raise RevocationError(f"the channel configuration has no application organisation {msp_id}")


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    # Fabric accepts either encoding; configtxgen copies the files of an MSP's crls/ as they are.
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def issue_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
              revoked: dict[int, datetime.datetime]) -> bytes:
    """A CRL (PEM) signed by the CA, listing `revoked` (serial -> revocation date)."""
    now = datetime.datetime.now(datetime.UTC)
    # Fabric finds a certificate's CRL by the CRL's authority key id, which must equal the
    # CA's subject key id byte for byte (cryptogen's is a SHA-256, not the usual SHA-1).
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + VALIDITY)  # Fabric reads no dates of a CRL; a later one replaces it
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def revoke_in(config: dict[str, Any], msp_id: str, cert: x509.Certificate, org_dir: Path) -> bool:
    """Put `cert` in the CRL of `msp_id`'s CA (its material in `org_dir`) in the channel
    `config`, edited in place: that CA's CRL is replaced by one listing its earlier serials and
    this one; other CRLs stay. False, and `config` untouched, when the CRL already lists it."""
    ca_cert, ca_key = org_ca(org_dir)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise RevocationError(f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) was not issued by "
                              f"{msp_id}'s CA {ca_cert.subject.rfc4514_string()}: {exc or 'bad signature'}") from exc
    msp = org_msp(config, msp_id)
    ours, others = [], []
    for encoded in msp.get("revocation_list") or []:
        crl = _load_crl(base64.b64decode(encoded))
        is_ours = crl.issuer == ca_cert.subject and crl.is_signature_valid(ca_cert.public_key())
        (ours if is_ours else others).append((encoded, crl))
    revoked = {entry.serial_number: entry.revocation_date_utc for _, crl in ours for entry in crl}
    if cert.serial_number in revoked:
        return False
    revoked[cert.serial_number] = datetime.datetime.now(datetime.UTC)
    crl = issue_crl(ca_cert, ca_key, revoked)
    msp["revocation_list"] = [encoded for encoded, _ in others] + [base64.b64encode(crl).decode()]
    return True


def revoked_serials(config: dict[str, Any], msp_id: str) -> set[int]:
    """Every serial the CRLs in `msp_id`'s MSP list (whoever signed them)."""
    return {entry.serial_number for encoded in org_msp(config, msp_id).get("revocation_list") or []
            for entry in _load_crl(base64.b64decode(encoded))}
