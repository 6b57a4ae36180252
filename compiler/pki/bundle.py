"""Issued keys and certificates of one build, looked up by inventory name and node."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

# Inventory names. CAs:
CA = "ca"
FRONT_PROXY_CA = "front-proxy-ca"
ETCD_CA = "etcd-ca"
# One per cluster:
APISERVER_KUBELET_CLIENT = "apiserver-kubelet-client"
FRONT_PROXY_CLIENT = "front-proxy-client"
ETCD_HEALTHCHECK_CLIENT = "etcd-healthcheck-client"
APISERVER_ETCD_CLIENT = "apiserver-etcd-client"
ADMIN = "admin"
BOOTSTRAP_ADMIN = "bootstrap-admin"
CONTROLLER_MANAGER = "controller-manager"
SCHEDULER = "scheduler"
# One per control-plane node:
APISERVER = "apiserver"
ETCD_SERVER = "etcd-server"
ETCD_PEER = "etcd-peer"
# One per node:
KUBELET_CLIENT = "kubelet-client"
KUBELET_SERVING = "kubelet-serving"
KUBE_PROXY = "kube-proxy"


@dataclass(frozen=True)
class IssuedCert:
    name: str
    node: str | None  # None for certificates shared by the whole cluster
    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class KeyPair:
    private_key_pem: bytes
    public_key_pem: bytes


@dataclass(frozen=True)
class PkiBundle:
    """Every certificate of a build, keyed by (inventory name, node name or None)."""

    certs: dict[tuple[str, str | None], IssuedCert] = field(default_factory=dict)
    service_account: KeyPair | None = None

    def cert(self, name: str, node: str | None = None) -> IssuedCert:
        """Return one certificate; `node` is required for per-node entries."""
        try:
            return self.certs[(name, node)]
        except KeyError:
            where = f" for node {node}" if node else ""
            raise KeyError(f"no certificate {name}{where} was issued") from None

    def sa(self) -> KeyPair:
        assert self.service_account is not None
        return self.service_account
