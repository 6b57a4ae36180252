"""Build kubeconfigs: the node kubeconfigs, the operator's admin kubeconfig and their check.

Reads `metadata.name`, `spec.controlPlane.endpoint`, `spec.nodes` (names, roles, IPs) and the
issued PKI. Writes /etc/kubernetes/{controller-manager,scheduler}.conf on control planes,
/etc/kubernetes/bootstrap-admin.conf on the first control plane, and
/etc/kubernetes/kubelet.conf and /var/lib/kube-proxy/kubeconfig.conf on every node, all 0600.
Every kubeconfig embeds the cluster CA, and its user is the client certificate's CN.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from compiler import paths
from compiler.errors import ConsistencyError
from compiler.files import MODE_SECRET, FileMap, text_file
from compiler.model import LOCAL_API_SERVER_PROXY_HOST, Cluster, IPAddress, Node
from compiler.pki import bundle
from compiler.pki.bundle import IssuedCert, PkiBundle
from compiler.pki.inventory import entry
from compiler.serialize import dump_yaml

# The name of the admin kubeconfig in out/<cluster>/, used in error messages.
ADMIN_KUBECONFIG_NAME = "admin.kubeconfig"

KubeconfigScope = Literal["all-nodes", "control-planes", "first-control-plane"]


@dataclass(frozen=True)
class KubeconfigSpec:
    """One kubeconfig a node receives. Its server is always `cluster.api_server_url(node)`."""

    path: str
    cert: str  # inventory name of the client certificate
    scope: KubeconfigScope
    # False for the kubelet: it reads its rotating client certificate file instead.
    embed_key: bool = True


KUBECONFIGS: tuple[KubeconfigSpec, ...] = (
    KubeconfigSpec(
        paths.CONTROLLER_MANAGER_KUBECONFIG, bundle.CONTROLLER_MANAGER, "control-planes"
    ),
    KubeconfigSpec(paths.SCHEDULER_KUBECONFIG, bundle.SCHEDULER, "control-planes"),
    KubeconfigSpec(paths.BOOTSTRAP_KUBECONFIG, bundle.BOOTSTRAP_ADMIN, "first-control-plane"),
    KubeconfigSpec(paths.KUBELET_KUBECONFIG, bundle.KUBELET_CLIENT, "all-nodes", embed_key=False),
    KubeconfigSpec(paths.KUBE_PROXY_KUBECONFIG, bundle.KUBE_PROXY, "all-nodes"),
)


def build_kubeconfig(
    cluster_name: str,
    server: str,
    ca_pem: bytes,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    client_cert_path: str | None = None,
    client_key_path: str | None = None,
) -> str:
    """Build one kubeconfig as YAML text, with either embedded credentials or file paths."""
    context = f"{user}@{cluster_name}"
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster_name,
            "cluster": {"certificate-authority-data": encode_data(ca_pem), "server": server},
        }],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
        "preferences": {},
        "users": [{
            "name": user,
            "user": build_credentials(
                client_cert_pem, client_key_pem, client_cert_path, client_key_path
            ),
        }],
    }
    return dump_yaml(document)


def encode_data(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def build_credentials(
    cert_pem: bytes | None, key_pem: bytes | None, cert_path: str | None, key_path: str | None
) -> dict[str, str]:
    """Build a kubeconfig user entry from either both PEMs or both paths."""
    if cert_pem is not None and key_pem is not None and cert_path is None and key_path is None:
        return {
            "client-certificate-data": encode_data(cert_pem),
            "client-key-data": encode_data(key_pem),
        }
    if cert_path is not None and key_path is not None and cert_pem is None and key_pem is None:
        return {"client-certificate": cert_path, "client-key": key_path}
    raise ValueError(
        "a kubeconfig needs either the client certificate and key PEMs or both file paths"
    )


def common_name(issued: IssuedCert) -> str:
    """Return a certificate's subject CN, which the API server takes as the user name."""
    value = issued.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def find_first_control_plane(cluster: Cluster) -> Node:
    # Stops at the first match, while Cluster.first_control_plane builds the whole list.
    return next(node for node in cluster.nodes if node.is_control_plane)


def list_node_kubeconfigs(cluster: Cluster, node: Node) -> list[KubeconfigSpec]:
    """Return the kubeconfigs one node receives."""
    if not node.is_control_plane:
        return [spec for spec in KUBECONFIGS if spec.scope == "all-nodes"]
    is_first = find_first_control_plane(cluster).name == node.name
    return [
        spec for spec in KUBECONFIGS if spec.scope != "first-control-plane" or is_first
    ]


def build_node_kubeconfig(
    cluster: Cluster, node: Node, pki: PkiBundle, spec: KubeconfigSpec
) -> str:
    issued = pki.cert(spec.cert, node.name if entry(spec.cert).is_per_node else None)
    ca_pem = pki.cert(bundle.CA).cert_pem
    server = cluster.api_server_url(node)
    user = common_name(issued)
    if spec.embed_key:
        return build_kubeconfig(
            cluster.name, server, ca_pem, user,
            client_cert_pem=issued.cert_pem, client_key_pem=issued.key_pem,
        )
    return build_kubeconfig(
        cluster.name, server, ca_pem, user,
        client_cert_path=paths.KUBELET_CLIENT_CURRENT, client_key_path=paths.KUBELET_CLIENT_CURRENT,
    )


def build_kubeconfig_files(cluster: Cluster, node: Node, pki: PkiBundle) -> FileMap:
    """Build every kubeconfig one node receives, each 0600."""
    files: FileMap = {}
    for spec in list_node_kubeconfigs(cluster, node):
        text = build_node_kubeconfig(cluster, node, pki, spec)
        files[spec.path] = text_file(spec.path, text, MODE_SECRET)
    return files


def build_admin_kubeconfig(cluster: Cluster, pki: PkiBundle) -> str:
    """Build the operator's kubeconfig for out/ only, pointing at `cluster.admin_server_url`."""
    issued = pki.cert(bundle.ADMIN)
    return build_kubeconfig(
        cluster.name, cluster.admin_server_url, pki.cert(bundle.CA).cert_pem, common_name(issued),
        client_cert_pem=issued.cert_pem, client_key_pem=issued.key_pem,
    )


def list_kubeconfig_servers(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """Yield (kubeconfig description, server URL) for every kubeconfig a build writes."""
    yield ADMIN_KUBECONFIG_NAME, cluster.admin_server_url
    for node in cluster.nodes:
        server = cluster.api_server_url(node)
        for spec in list_node_kubeconfigs(cluster, node):
            yield f"{spec.path} on node {node.name}", server


@dataclass(frozen=True)
class ServingNames:
    """The DNS and IP SANs of one control plane's apiserver certificate."""

    node: str
    dns_names: tuple[str, ...]
    ip_addresses: frozenset[IPAddress]

    def covers(self, host: str) -> bool:
        """Return whether a TLS client dialing `host` accepts this certificate."""
        try:
            return ipaddress.ip_address(host) in self.ip_addresses
        except ValueError:
            return any(matches_dns_name(pattern, host) for pattern in self.dns_names)


def matches_dns_name(pattern: str, host: str) -> bool:
    """Match a host against a DNS SAN, where a leading "*." is exactly one label (RFC 6125)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return pattern == host


def read_serving_names(node: Node, issued: IssuedCert) -> ServingNames:
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ServingNames(
        node=node.name,
        dns_names=tuple(sans.get_values_for_type(x509.DNSName)),
        ip_addresses=frozenset(
            address for address in sans.get_values_for_type(x509.IPAddress)
            if isinstance(address, IPv4Address | IPv6Address)
        ),
    )


def find_serving_certificates(
    host: str, balanced_host: str, servers: list[ServingNames],
    by_address: dict[IPAddress, ServingNames],
) -> list[ServingNames]:
    """Return the apiserver certificates a client dialing `host` may meet.

    `balanced_host` is the endpoint, or the local kube-apiserver-proxy's address when there is
    no endpoint: either may forward to any control plane. A control-plane address reaches
    that node's API server only.
    """
    if host == balanced_host:
        return servers
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    return [by_address[address]] if address in by_address else []


def check_server(label: str, url: str, host: str, serving: list[ServingNames]) -> list[str]:
    """Return one message per serving certificate that lacks the host, or one if none serves."""
    if not serving:
        return [f"{label}: server {url} names host {host}, where no control-plane node's "
                "API server answers"]
    return [
        f"{label}: server {url} names host {host}, which is missing from the SANs of the "
        f"apiserver certificate of node {names.node}"
        for names in serving if not names.covers(host)
    ]


def validate_server_names(cluster: Cluster, pki: PkiBundle) -> None:
    """Check that every kubeconfig's server host is in the SANs of each API server there.

    Raises ConsistencyError listing each failing host once, with the first kubeconfig that
    names it.
    """
    servers: list[ServingNames] = []
    by_address: dict[IPAddress, ServingNames] = {}
    for node in cluster.control_planes:
        names = read_serving_names(node, pki.cert(bundle.APISERVER, node.name))
        servers.append(names)
        by_address.update(dict.fromkeys(node.ips, names))
    if cluster.endpoint is None:
        balanced_host = LOCAL_API_SERVER_PROXY_HOST
    else:
        balanced_host = urlsplit(cluster.endpoint.url).hostname or ""

    problems: list[str] = []
    checked: set[str] = set()
    for label, url in list_kubeconfig_servers(cluster):
        host = urlsplit(url).hostname or ""
        if host in checked:
            continue
        checked.add(host)
        serving = find_serving_certificates(host, balanced_host, servers, by_address)
        problems.extend(check_server(label, url, host, serving))
    if problems:
        raise ConsistencyError("\n".join(problems))
