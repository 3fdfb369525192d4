"""Certificates and kubeconfigs for a sandbox control plane.

A real kube-apiserver serves TLS and authenticates clients by certificate, so the sandbox
needs a small PKI: one CA, the apiserver's serving certificate (SANs for 127.0.0.1,
localhost and the in-cluster ``kubernetes.default`` names), client certificates for the
admin (``system:masters``), the controller-manager and the scheduler (their real
``system:kube-*`` identities, so the default RBAC bootstrap roles apply), and an RSA key
pair for signing ServiceAccount tokens. Keys are ECDSA P-256 except the service-account
key (RSA, as most tooling expects).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class ClientIdentity:
    """A certificate-authenticated user: common name = user, organisations = groups."""

    name: str  # file stem, e.g. "admin"
    user: str
    groups: tuple[str, ...] = ()


ADMIN = ClientIdentity("admin", "kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
KWOK = ClientIdentity("kwok", "kwok-controller", ("system:masters",))


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class PKI:
    """Creates (once) and locates the sandbox's certificates under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, ident: ClientIdentity) -> Path:
        return self.dir / f"{ident.name}.crt"

    def client_key(self, ident: ClientIdentity) -> Path:
        return self.dir / f"{ident.name}.key"

    def ensure(self, service_ip: str = "10.0.0.1") -> None:
        """Generate everything that is missing (idempotent)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        if not self.ca_cert.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = _name("qwen-operator-sandbox-ca")
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + _VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256())
            )
            _write(self.ca_key, _pem_key(key), private=True)
            _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if not self.serving_cert.exists():
            sans: list[x509.GeneralName] = [
                x509.DNSName(n)
                for n in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
            self._issue(
                ca_key,
                ca_cert,
                now,
                _name("kube-apiserver"),
                self.serving_cert,
                self.serving_key,
                usage=ExtendedKeyUsageOID.SERVER_AUTH,
                sans=sans,
            )
        for ident in (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK):
            if not self.client_cert(ident).exists():
                self._issue(
                    ca_key,
                    ca_cert,
                    now,
                    _name(ident.user, ident.groups),
                    self.client_cert(ident),
                    self.client_key(ident),
                    usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                )
        if not self.sa_key.exists():
            sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(self.sa_key, _pem_key(sa), private=True)
            _write(
                self.sa_pub,
                sa.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )

    def _issue(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        now: dt.datetime,
        subject: x509.Name,
        cert_path: Path,
        key_path: Path,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(key_path, _pem_key(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def write_kubeconfig(self, path: Path, server: str, ident: ClientIdentity, cluster_name: str) -> Path:
        """A kubeconfig for ``ident`` against ``server`` (file paths, not inline data)."""
        user = ident.name
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster_name, "cluster": {"server": server, "certificate-authority": str(self.ca_cert)}}
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.client_cert(ident)),
                        "client-key": str(self.client_key(ident)),
                    },
                }
            ],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
            "current-context": cluster_name,
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path
