"""The certificate inventory: one record per certificate the cluster PKI issues.

Reads nothing from the description itself. The issuer fills each record in from
`spec.nodes` (names and IPs), `spec.controlPlane` (endpoint, certSANs) and `spec.network`
(serviceCIDR, clusterDomain). The node paths follow kubeadm's layout under /etc/kubernetes/pki,
plus the kubelet's own files under /var/lib/kubelet/pki.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compiler import paths
from compiler.pki import bundle

# The builder in compiler.pki.issue that makes the subjectAltName extension.
SanRule = Literal["ca-name", "apiserver", "etcd-member", "kubelet-serving", "none"]
# The nodes a certificate is issued for. "cluster" and "first-control-plane" entries are
# issued once (bundle key node=None), the other two once per matching node.
Scope = Literal["cluster", "control-planes", "first-control-plane", "nodes"]
# The nodes that receive a file. For per-node entries each node receives only its own copy.
Placement = Literal["all-nodes", "control-planes", "nowhere"]
ExtendedUsage = Literal["server", "client"]

PER_NODE_SCOPES: frozenset[Scope] = frozenset({"control-planes", "nodes"})


@dataclass(frozen=True)
class CertificateSpec:
    """One certificate of the inventory, or a CA when `signer` is None."""

    name: str
    signer: str | None
    # May contain "{node}", replaced by the node name of per-node entries.
    common_name: str
    organizations: tuple[str, ...] = ()
    usages: tuple[ExtendedUsage, ...] = ()
    sans: SanRule = "none"
    scope: Scope = "cluster"
    cert_path: str | None = None
    # Equal to cert_path when the certificate and key share one PEM file.
    key_path: str | None = None
    cert_on: Placement = "nowhere"
    key_on: Placement = "nowhere"
    # True for the etcd CA and the certificates it signs, which a cluster with external etcd
    # does not issue (kubeadm skips the same five): the user supplies the etcd CA and the
    # API server's client pair instead.
    stacked_etcd_only: bool = False

    @property
    def is_ca(self) -> bool:
        return self.signer is None

    @property
    def is_per_node(self) -> bool:
        return self.scope in PER_NODE_SCOPES

    def subject_common_name(self, node: str | None) -> str:
        """Return the subject CN, with "{node}" replaced by the node name."""
        if "{node}" not in self.common_name:
            return self.common_name
        if node is None:
            raise ValueError(f"certificate {self.name} needs a node name for its CN")
        return self.common_name.replace("{node}", node)


def pki_path(name: str) -> str:
    return f"{paths.PKI_DIR}/{name}"


def etcd_path(name: str) -> str:
    return f"{paths.ETCD_PKI_DIR}/{name}"


SERVER: tuple[ExtendedUsage, ...] = ("server",)
CLIENT: tuple[ExtendedUsage, ...] = ("client",)
SERVER_AND_CLIENT: tuple[ExtendedUsage, ...] = ("server", "client")

# CAs come first: the issuer walks this table in order and signs each leaf with a CA issued
# before it.
CERTIFICATES: tuple[CertificateSpec, ...] = (
    CertificateSpec(
        bundle.CA, None, "kubernetes", sans="ca-name",
        cert_path=paths.CA_CERT, key_path=paths.CA_KEY,
        # kube-controller-manager signs kubelet CSRs with the CA key, so client rotation works.
        cert_on="all-nodes", key_on="control-planes",
    ),
    CertificateSpec(
        bundle.FRONT_PROXY_CA, None, "front-proxy-ca", sans="ca-name",
        cert_path=paths.FRONT_PROXY_CA_CERT, key_path=pki_path("front-proxy-ca.key"),
        cert_on="control-planes",
    ),
    CertificateSpec(
        bundle.ETCD_CA, None, "etcd-ca", sans="ca-name",
        cert_path=paths.ETCD_CA_CERT, key_path=etcd_path("ca.key"),
        cert_on="control-planes",
        stacked_etcd_only=True,
    ),
    CertificateSpec(
        bundle.APISERVER, bundle.CA, "kube-apiserver", usages=SERVER, sans="apiserver",
        scope="control-planes",
        cert_path=pki_path("apiserver.crt"), key_path=pki_path("apiserver.key"),
        cert_on="control-planes", key_on="control-planes",
    ),
    # No organization: the bootstrap unit binds this user to system:kubelet-api-admin.
    CertificateSpec(
        bundle.APISERVER_KUBELET_CLIENT, bundle.CA, "kube-apiserver-kubelet-client",
        usages=CLIENT,
        cert_path=pki_path("apiserver-kubelet-client.crt"),
        key_path=pki_path("apiserver-kubelet-client.key"),
        cert_on="control-planes", key_on="control-planes",
    ),
    CertificateSpec(
        bundle.FRONT_PROXY_CLIENT, bundle.FRONT_PROXY_CA, "front-proxy-client", usages=CLIENT,
        cert_path=pki_path("front-proxy-client.crt"), key_path=pki_path("front-proxy-client.key"),
        cert_on="control-planes", key_on="control-planes",
    ),
    CertificateSpec(
        bundle.ETCD_SERVER, bundle.ETCD_CA, "{node}", usages=SERVER_AND_CLIENT,
        sans="etcd-member", scope="control-planes",
        cert_path=etcd_path("server.crt"), key_path=etcd_path("server.key"),
        cert_on="control-planes", key_on="control-planes",
        stacked_etcd_only=True,
    ),
    CertificateSpec(
        bundle.ETCD_PEER, bundle.ETCD_CA, "{node}", usages=SERVER_AND_CLIENT,
        sans="etcd-member", scope="control-planes",
        cert_path=etcd_path("peer.crt"), key_path=etcd_path("peer.key"),
        cert_on="control-planes", key_on="control-planes",
        stacked_etcd_only=True,
    ),
    CertificateSpec(
        bundle.ETCD_HEALTHCHECK_CLIENT, bundle.ETCD_CA, "kube-etcd-healthcheck-client",
        usages=CLIENT,
        cert_path=etcd_path("healthcheck-client.crt"), key_path=etcd_path("healthcheck-client.key"),
        cert_on="control-planes", key_on="control-planes",
        stacked_etcd_only=True,
    ),
    CertificateSpec(
        bundle.APISERVER_ETCD_CLIENT, bundle.ETCD_CA, "kube-apiserver-etcd-client", usages=CLIENT,
        cert_path=pki_path("apiserver-etcd-client.crt"),
        key_path=pki_path("apiserver-etcd-client.key"),
        cert_on="control-planes", key_on="control-planes",
        stacked_etcd_only=True,
    ),
    # The operator's credential: written to out/ only, never to a node.
    CertificateSpec(
        bundle.ADMIN, bundle.CA, "kubernetes-admin", ("kubecc:cluster-admins",), CLIENT,
    ),
    # Used by the one-shot bootstrap unit, which deletes its kubeconfig after success.
    CertificateSpec(
        bundle.BOOTSTRAP_ADMIN, bundle.CA, "kubecc:bootstrap", ("system:masters",), CLIENT,
        scope="first-control-plane",
    ),
    CertificateSpec(
        bundle.CONTROLLER_MANAGER, bundle.CA, "system:kube-controller-manager", usages=CLIENT,
    ),
    CertificateSpec(bundle.SCHEDULER, bundle.CA, "system:kube-scheduler", usages=CLIENT),
    # The Node authorizer accepts a kubelet only as user system:node:<name> in system:nodes.
    CertificateSpec(
        bundle.KUBELET_CLIENT, bundle.CA, "system:node:{node}", ("system:nodes",), CLIENT,
        scope="nodes",
        cert_path=paths.KUBELET_CLIENT_INITIAL, key_path=paths.KUBELET_CLIENT_INITIAL,
        cert_on="all-nodes", key_on="all-nodes",
    ),
    CertificateSpec(
        bundle.KUBELET_SERVING, bundle.CA, "system:node:{node}", ("system:nodes",), SERVER,
        sans="kubelet-serving", scope="nodes",
        cert_path=paths.KUBELET_SERVING_CERT, key_path=paths.KUBELET_SERVING_KEY,
        cert_on="all-nodes", key_on="all-nodes",
    ),
    # The key travels inside /var/lib/kube-proxy/kubeconfig.conf, not as a file of its own.
    CertificateSpec(
        bundle.KUBE_PROXY, bundle.CA, "system:kube-proxy", usages=CLIENT, scope="nodes",
    ),
)

_BY_NAME = {spec.name: spec for spec in CERTIFICATES}


def entry(name: str) -> CertificateSpec:
    """Return the inventory record of one certificate name, or raise KeyError when unknown."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"certificate {name} is not in the inventory") from None


@dataclass(frozen=True)
class KeyPairSpec:
    """A bare key pair without a certificate, shared by the whole cluster."""

    name: str
    key_path: str
    public_key_path: str
    on: Placement


# kube-apiserver signs service-account tokens with sa.key and verifies them with sa.pub;
# kube-controller-manager signs with sa.key too, so every control plane needs the same pair.
SERVICE_ACCOUNT = KeyPairSpec(
    "sa", paths.SERVICE_ACCOUNT_KEY, paths.SERVICE_ACCOUNT_PUB, on="control-planes"
)
