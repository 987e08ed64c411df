"""
TLS for every connection, through Twisted's endpoints (``twisted[tls]``).

The scheduler listens with TLS either through an ``ssl:`` endpoint string
(``--listen ssl:9001:privateKey=key.pem:certKey=cert.pem``) or with
``--tls-cert``/``--tls-key`` around any ``--listen`` endpoint; with
``--tls-client-ca`` it also requires every peer to present a certificate
signed by that CA (mutual TLS), which an ``ssl:`` string cannot ask for.
Workers and clients connect with a ``tls:`` endpoint string, or with
``host:port`` plus ``--tls`` (the platform's trust roots), ``--tls-ca FILE``
(trust this CA), and ``--tls-cert``/``--tls-key`` for their own certificate.
The host name is checked against the scheduler's certificate.

``make_test_certificates`` writes a throwaway CA and certificates for a test
mesh (see the README's Security section): not for production, where a real
CA signs them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


@dataclass(frozen=True)
class ClientTLS:
    """How a worker or client checks the scheduler, and proves itself (mutual TLS)."""

    #: PEM file of the CA to trust; None: the platform's trust roots.
    ca_file: str | None = None
    #: PEM file of this peer's certificate (it may hold the key too), for mutual TLS.
    cert_file: str | None = None
    key_file: str | None = None

    def creator(self, hostname: str) -> Any:
        """The creator for ``wrapClientTLS``: it checks the scheduler's certificate for ``hostname``."""
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

        trust = Certificate.loadPEM(_read(self.ca_file)) if self.ca_file else None
        mine = None
        if self.cert_file:
            key = _read(self.key_file) if self.key_file else b""
            mine = PrivateCertificate.loadPEM(_read(self.cert_file) + b"\n" + key)
        return optionsForClientTLS(hostname, trustRoot=trust, clientCertificate=mine)


@dataclass(frozen=True)
class ServerTLS:
    """The scheduler's certificate, and the CA its peers' certificates must be signed by, if any."""

    cert_file: str
    key_file: str | None = None
    #: With a CA, every peer must present a certificate it signed (mutual TLS).
    client_ca_file: str | None = None

    def context_factory(self) -> Any:
        from twisted.internet.ssl import Certificate, PrivateCertificate

        key = _read(self.key_file) if self.key_file else b""
        mine = PrivateCertificate.loadPEM(_read(self.cert_file) + b"\n" + key)
        if self.client_ca_file:
            return mine.options(Certificate.loadPEM(_read(self.client_ca_file)))
        return mine.options()

    def wrap(self, factory: Any) -> Any:
        """A factory that speaks TLS around ``factory``, for any stream endpoint."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(self.context_factory(), False, factory)


def make_test_certificates(folder: Path, hosts: list[str], days: int = 30) -> dict[str, Path]:
    """
    A throwaway CA, a scheduler certificate for ``hosts`` (names or IP
    addresses) and a client certificate, all signed by that CA, as PEM files
    in ``folder`` (keys mode 0600).  Returns the paths by role.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(path: Path, data: bytes, private: bool = False) -> Path:
        path.write_bytes(data)
        if private:
            path.chmod(0o600)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("taskmesh test CA"))
        .issuer_name(name("taskmesh test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, usage: Any, alternatives: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        certificate = builder.sign(ca_key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem(key)

    alternatives: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternatives.append(x509.DNSName(host))
    scheduler_cert, scheduler_key = issue(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, alternatives)
    client_cert, client_key = issue("taskmesh client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return {
        "ca": write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "ca-key": write(folder / "ca-key.pem", key_pem(ca_key), private=True),
        "scheduler": write(folder / "scheduler.pem", scheduler_cert),
        "scheduler-key": write(folder / "scheduler-key.pem", scheduler_key, private=True),
        "client": write(folder / "client.pem", client_cert),
        "client-key": write(folder / "client-key.pem", client_key, private=True),
    }
