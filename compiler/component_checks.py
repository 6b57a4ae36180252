"""Semantic checks of component settings: the kube-proxy mode and the cloud provider.

Reads `spec.kubeProxy.mode`, `spec.cloudProvider` and `spec.nodes[].taints`.
"""

from __future__ import annotations

from typing import Any

from compiler.checker import Checker

# Kubernetes 1.31 removed the last in-tree cloud providers. The schema lists their names so
# that this layer can explain why they are rejected.
IN_TREE_CLOUD_PROVIDERS = frozenset({"aws", "azure", "gce", "openstack", "vsphere"})
# The taint a kubelet with --cloud-provider=external registers with, as key and effect.
UNINITIALIZED_TAINT = ("node.cloudprovider.kubernetes.io/uninitialized", "NoSchedule")


def check_kube_proxy(check: Checker, spec: dict[str, Any]) -> None:
    if spec.get("kubeProxy", {}).get("mode") != "ipvs":
        return
    check.warning(
        ("spec", "kubeProxy", "mode"),
        'found "ipvs"; Kubernetes 1.35 deprecated the ipvs mode of kube-proxy',
        'use "nftables" (GA since Kubernetes 1.33) or "iptables"',
    )


def check_cloud_provider(check: Checker, spec: dict[str, Any]) -> None:
    provider = spec.get("cloudProvider", "none")
    if provider in IN_TREE_CLOUD_PROVIDERS:
        check.error(
            ("spec", "cloudProvider"), f'found "{provider}"; expected "none" or "external"',
            f"Kubernetes 1.31 removed the in-tree {provider} provider from the kubelet and "
            'kube-controller-manager; set "external" and install the cloud controller manager '
            f"of {provider}",
        )
    if provider != "external":
        return

    key, effect = UNINITIALIZED_TAINT
    for index, node in enumerate(spec["nodes"]):
        for offset, taint in enumerate(node.get("taints", [])):
            if (taint["key"], taint["effect"]) != UNINITIALIZED_TAINT:
                continue
            check.error(
                ("spec", "nodes", index, "taints", offset),
                f"found the taint {key}:{effect}, which the kubelet adds itself with "
                "--cloud-provider=external; expected it only once",
                "the API server rejects a node with two taints of the same key and effect, so "
                "the node would never register; remove this taint",
            )


def check_components(check: Checker, spec: dict[str, Any]) -> None:
    check_kube_proxy(check, spec)
    check_cloud_provider(check, spec)
