"""Named client identities (`anchoring@org1...`, `settlement@org1...`) issued by an
organisation's CA, as its Fabric CA would enrol them: cryptogen itself only numbers users
(User1, User2, ...). The MSP folder has cryptogen's layout, so every tool reads it alike."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = datetime.timedelta(days=3650)


def org_ca(org_dir: Path, folder: str = "ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The org CA's certificate and key (cryptogen's `ca/` folder; `tlsca` for its TLS CA)."""
    ca_dir = org_dir / folder
    cert = x509.load_pem_x509_certificate(next(ca_dir.glob("*-cert.pem")).read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "priv_sk").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca_dir / 'priv_sk'} is not an EC key")
    return cert, key


def authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The issuer's key id as the CA certificate states it (cryptogen's is a SHA-256 of the key,
    not the SHA-1 `from_issuer_public_key` computes): TLS stacks find the issuer by it."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_client(org_dir: Path, domain: str, name: str, users_dir: Path | None = None) -> Path:
    """The MSP folder of client `name@domain`, issued now unless it exists; its path. It goes
    in the org's `users/` folder, or in `users_dir` (a test's identity outside the stack's crypto)."""
    user_dir = (users_dir or org_dir / "users") / f"{name}@{domain}"
    msp = user_dir / "msp"
    if (msp / "signcerts").is_dir():
        return msp
    ca_cert, ca_key = org_ca(org_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "California"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),  # the NodeOU clients carry
        x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@{domain}"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Fabric checks the chain at this instant, so it must fall within the CA's validity.
        .not_valid_before(max(ca_cert.not_valid_before_utc, now - datetime.timedelta(minutes=5)))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    partial = user_dir.with_name(user_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    template = org_dir / "users" / f"Admin@{domain}" / "msp"  # cacerts, tlscacerts, config.yaml
    for folder in ("cacerts", "tlscacerts"):
        shutil.copytree(template / folder, partial / "msp" / folder)
    shutil.copy(template / "config.yaml", partial / "msp" / "config.yaml")
    (partial / "msp" / "signcerts").mkdir()
    (partial / "msp" / "signcerts" / f"{name}@{domain}-cert.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM))
    (partial / "msp" / "keystore").mkdir()
    (partial / "msp" / "keystore" / "priv_sk").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (partial / "msp" / "keystore" / "priv_sk").chmod(0o600)
    partial.rename(user_dir)
    return msp


def issue_server_tls(org_dir: Path, domain: str, name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """A TLS server certificate for the org's service `name`, issued by the org's TLS CA (as
    its peers' are) for `hosts`, unless it exists: the folder holding `server.crt`,
    `server.key` (mode 0600) and `ca.crt` (what clients trust), under the org's `servers/`."""
    folder = org_dir / "servers" / f"{name}.{domain}" / "tls"
    if (folder / "server.crt").exists():
        return folder
    ca_cert, ca_key = org_ca(org_dir, "tlsca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.IPAddress(ipaddress.ip_address(h)) if h.replace(".", "").isdigit() else x509.DNSName(h)
             for h in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.{domain}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(ca_cert.not_valid_before_utc, now - datetime.timedelta(minutes=5)))
        .not_valid_after(min(ca_cert.not_valid_after_utc, now + VALIDITY))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    partial = folder.with_name("tls.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (partial / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key_file = partial / "server.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    partial.rename(folder)
    return folder
