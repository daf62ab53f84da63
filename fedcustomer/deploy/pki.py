"""Development certificates and SuperNode keys for a deployed federation.

TLS protects every connection to the coordinator (SuperLink); SuperNode
authentication lets only partners whose public key the coordinator registered take
part. Organisations with their own PKI bring their own CA and server certificate
instead of :func:`make_dev_certificates` (see docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.errors import ConfigError, KeyMaterialError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
NODE_KEY_NAME = "supernode"  # keys/supernode (private, OpenSSH) and keys/supernode.pub


@dataclass(frozen=True)
class Certificates:
    """Paths of a CA certificate and a server certificate/key signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path | None = None

    @classmethod
    def in_dir(cls, directory: Path) -> Certificates:
        d = Path(directory)
        return cls(d / "ca.crt", d / "server.pem", d / "server.key", d / "ca.key")

    def check(self) -> None:
        """Refuse to start with missing certificate files, naming the file and the fix."""
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise KeyMaterialError(
                    f"{path} not found; create development certificates with `fedcustomer certs --out DIR` "
                    "or point to your organisation's CA/server certificate"
                )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcustomer development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: tuple[str, ...] | list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def make_dev_certificates(
    out: Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, *, days: int = 365, overwrite: bool = False
) -> Certificates:
    """Create a development CA and a server certificate for ``hosts`` (for tests and walkthroughs).

    The CA key stays in ``out`` so more server certificates can be issued; in production
    it would live offline or in the organisation's PKI, never on the coordinator.
    """
    certs = Certificates.in_dir(out)
    if not hosts:
        raise ConfigError("--host: give at least one host name or IP address for the server certificate")
    if certs.ca_cert.exists() and not overwrite:
        raise ConfigError(
            f"{certs.ca_cert} already exists; pass --force to replace the certificates in {out}"
        )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedcustomer development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    nopass = serialization.NoEncryption()
    atomic_write_bytes(
        certs.ca_key,
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nopass),
        mode=0o600,
        exact=True,
    )
    atomic_write_bytes(
        certs.server_key,
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nopass),
        mode=0o600,
        exact=True,
    )
    atomic_write_bytes(certs.ca_cert, ca_cert.public_bytes(pem), mode=0o644, exact=True)
    atomic_write_bytes(certs.server_cert, server_cert.public_bytes(pem), mode=0o644, exact=True)
    return certs


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's authentication key pair (OpenSSH-encoded ECDSA P-384, what Flower expects)."""

    private_key: Path
    public_key: Path

    @classmethod
    def in_dir(cls, keys_dir: Path) -> NodeKeys:
        return cls(Path(keys_dir) / NODE_KEY_NAME, Path(keys_dir) / f"{NODE_KEY_NAME}.pub")

    def fingerprint(self) -> str:
        """SHA-256 of the public key blob, as `ssh-keygen -l` prints it (for out-of-band checks)."""
        import base64
        import hashlib

        blob = base64.b64decode(self.public_key.read_text().split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def make_node_keys(keys_dir: Path, *, comment: str = "", overwrite: bool = False) -> NodeKeys:
    """Create the node's key pair; the private key never leaves the partner (mode 0600)."""
    keys = NodeKeys.in_dir(keys_dir)
    if keys.private_key.exists() and not overwrite:
        raise KeyMaterialError(
            f"{keys.private_key} already exists; the coordinator may have registered its public key. "
            "Pass --force to replace it (then register the new public key)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if comment:
        public += b" " + comment.replace(" ", "_").encode()
    atomic_write_bytes(keys.private_key, private, mode=0o600, exact=True)
    atomic_write_bytes(keys.public_key, public + b"\n", mode=0o644, exact=True)
    return keys


def check_node_private_key(path: Path) -> None:
    """Fail early, with the fix, if the node's private key is unusable for Flower's node authentication."""
    if not path.is_file():
        raise KeyMaterialError(f"{path} not found; create it with `fedcustomer node keys --home DIR`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{path} is not an unencrypted OpenSSH private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(
            f"{path} must hold an ECDSA (NIST curve) key; recreate it with `fedcustomer node keys`"
        )
    if path.stat().st_mode & 0o077:
        raise KeyMaterialError(f"{path} is readable by other users; run `chmod 600 {path}`")
