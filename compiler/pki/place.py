"""Place the PKI on one node: the certificate, key and service-account files that node receives.

Reads `spec.nodes[].role` and the issued PKI. Writes, following the inventory: on every node
/etc/kubernetes/pki/ca.crt, /var/lib/kubelet/pki/kubelet.{crt,key} and the kubelet client
certificate and key in one PEM at /var/lib/kubelet/pki/kubelet-client-kubecc.pem. Control
planes also get ca.key, front-proxy-ca.crt, etcd/ca.crt, apiserver.*, apiserver-kubelet-client.*,
front-proxy-client.*, apiserver-etcd-client.*, etcd/{server,peer,healthcheck-client}.*, sa.key
and sa.pub under /etc/kubernetes/pki. With `spec.etcd.external` control planes get the user's
etcd CA and client pair at etcd/ca.crt and apiserver-etcd-client.* and no other etcd file.
Keys are 0600 and certificates 0644.
"""

from __future__ import annotations

from compiler import paths
from compiler.files import MODE_PUBLIC, MODE_SECRET, File, FileMap, merge_files
from compiler.model import Cluster, ExternalEtcd, Node
from compiler.pki import bundle
from compiler.pki.bundle import IssuedCert, PkiBundle
from compiler.pki.inventory import (
    CERTIFICATES,
    SERVICE_ACCOUNT,
    CertificateSpec,
    Placement,
    entry,
)


def receives(placement: Placement, node: Node) -> bool:
    """Return whether a node's role is in a placement."""
    if placement == "all-nodes":
        return True
    return placement == "control-planes" and node.is_control_plane


def build_pki_files(cluster: Cluster, node: Node, pki: PkiBundle) -> FileMap:
    """Build the PKI files one node receives. No node gets another node's key."""
    files: list[File] = []
    for spec in CERTIFICATES:
        if spec.stacked_etcd_only and cluster.external_etcd is not None:
            continue
        if spec.is_per_node and not in_scope(spec, node):
            continue
        issued = pki.cert(spec.name, node.name if spec.is_per_node else None)
        files.extend(build_certificate_files(spec, issued, node))
    if receives(SERVICE_ACCOUNT.on, node):
        pair = pki.sa()
        files.append(File(SERVICE_ACCOUNT.key_path, pair.private_key_pem, MODE_SECRET))
        files.append(File(SERVICE_ACCOUNT.public_key_path, pair.public_key_pem, MODE_PUBLIC))
    if cluster.external_etcd is not None and node.is_control_plane:
        files.extend(build_external_etcd_files(cluster.external_etcd))
    return merge_files(files)


def build_external_etcd_files(external: ExternalEtcd) -> list[File]:
    """Build the user's etcd CA and API server client pair, at the paths of the stacked ones."""
    client = entry(bundle.APISERVER_ETCD_CLIENT)
    assert client.cert_path is not None and client.key_path is not None
    return [
        File(paths.ETCD_CA_CERT, external.ca_cert_pem, MODE_PUBLIC),
        File(client.cert_path, external.cert_pem, MODE_PUBLIC),
        File(client.key_path, external.key_pem, MODE_SECRET),
    ]


def in_scope(spec: CertificateSpec, node: Node) -> bool:
    """Return whether a per-node entry was issued for this node."""
    return spec.scope == "nodes" or (spec.scope == "control-planes" and node.is_control_plane)


def build_certificate_files(spec: CertificateSpec, issued: IssuedCert, node: Node) -> list[File]:
    """Build the cert and key files of one entry, or one 0600 PEM when they share a path."""
    cert_path = spec.cert_path if receives(spec.cert_on, node) else None
    key_path = spec.key_path if receives(spec.key_on, node) else None
    if cert_path is not None and cert_path == key_path:
        return [File(cert_path, issued.cert_pem + issued.key_pem, MODE_SECRET)]

    files = []
    if cert_path is not None:
        files.append(File(cert_path, issued.cert_pem, MODE_PUBLIC))
    if key_path is not None:
        files.append(File(key_path, issued.key_pem, MODE_SECRET))
    return files
