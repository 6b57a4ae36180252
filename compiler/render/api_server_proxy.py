"""The workers' local API server load balancer, used when the description has no endpoint.

Reads `spec.controlPlane.endpoint` (only whether it is present) and `spec.nodes` (roles, IPs).
Writes, on workers only, /etc/kubernetes/kube-apiserver-proxy/haproxy.cfg (0644) and the
static Pod /etc/kubernetes/manifests/kube-apiserver-proxy.yaml (0600).

The Pod listens on 127.0.0.1:6443 in the host network and passes each TCP connection to one
control plane's API server, so TLS stays end to end and the apiserver certificates carry
127.0.0.1. The kubelet needs the API server to register its node, but it starts static Pods
from the manifest directory without one, so the proxy comes up before the kubelet's first
API request succeeds. containerd pulls the image from docker.io directly, which needs no API
server either.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from compiler import paths
from compiler.files import MODE_PUBLIC, MODE_SECRET, FileMap, text_file
from compiler.model import API_SERVER_PORT, LOCAL_API_SERVER_PROXY_HOST, Cluster, Node
from compiler.render.static_pods import (
    HostPathVolume,
    build_pod,
    build_volume_mounts,
    manifest_path,
)
from compiler.render.templates import render_template
from compiler.serialize import dump_yaml

NAME = "kube-apiserver-proxy"
# HAProxy's monitor-uri responds on this port without contacting the backends. No component
# that kubecc runs listens on it.
HEALTH_PORT = 8081
HEALTH_PATH = "/healthz"
# Mount point of the host's config directory in the container.
CONTAINER_CONFIG_DIR = "/usr/local/etc/haproxy"
REQUESTS = (("cpu", "25m"), ("memory", "32Mi"))


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # HAProxy's `address:port`, with the ipv6@ prefix for IPv6


def build_backends(cluster: Cluster) -> list[Backend]:
    """Build one backend per control plane, at its primary address and the API server port."""
    backends = []
    for node in cluster.control_planes:
        prefix = "ipv6@" if node.ip.version == 6 else ""
        backends.append(Backend(node.name, f"{prefix}{node.ip}:{API_SERVER_PORT}"))
    return backends


def render_proxy_config(cluster: Cluster) -> str:
    return render_template(
        "api-server-proxy/haproxy.cfg.j2",
        listen_bind=f"{LOCAL_API_SERVER_PROXY_HOST}:{API_SERVER_PORT}",
        health_bind=f"{LOCAL_API_SERVER_PROXY_HOST}:{HEALTH_PORT}",
        health_path=HEALTH_PATH,
        servers=build_backends(cluster),
    )


def build_probe(period_seconds: int, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {
            "host": LOCAL_API_SERVER_PROXY_HOST, "path": HEALTH_PATH, "port": HEALTH_PORT,
            "scheme": "HTTP",
        },
        "periodSeconds": period_seconds,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def build_proxy_pod(cluster: Cluster) -> dict[str, Any]:
    """Build the kube-apiserver-proxy static Pod with the host's config directory mounted."""
    volume = HostPathVolume(NAME, paths.API_SERVER_PROXY_DIR, "Directory", True)
    config = posixpath.join(CONTAINER_CONFIG_DIR, posixpath.basename(paths.API_SERVER_PROXY_CONFIG))
    container = {
        "name": NAME,
        "image": cluster.release.images.api_server_proxy,
        "imagePullPolicy": "IfNotPresent",
        # -W: master-worker mode. -db: stay in the foreground as the container's main process.
        "command": ["haproxy", "-W", "-db", "-f", config],
        "livenessProbe": build_probe(10, 3),
        "readinessProbe": build_probe(5, 3),
        "resources": {"requests": dict(REQUESTS)},
        "volumeMounts": [
            {**mount, "mountPath": CONTAINER_CONFIG_DIR}
            for mount in build_volume_mounts([volume])
        ],
    }
    return build_pod(
        NAME, "node", container, [volume], {"seccompProfile": {"type": "RuntimeDefault"}}
    )


def build_api_server_proxy_files(cluster: Cluster, node: Node) -> FileMap:
    """Build the proxy's config and manifest on workers of a cluster without an endpoint."""
    if not cluster.has_local_api_server_proxy or node.is_control_plane:
        return {}
    manifest = manifest_path(NAME)
    return {
        paths.API_SERVER_PROXY_CONFIG: text_file(
            paths.API_SERVER_PROXY_CONFIG, render_proxy_config(cluster), MODE_PUBLIC
        ),
        manifest: text_file(manifest, dump_yaml(build_proxy_pod(cluster)), MODE_SECRET),
    }
