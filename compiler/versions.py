"""Version table: per Kubernetes minor, the components and images a node runs.

Reads `spec.kubernetes.version` and `spec.kubernetes.pins` (through the plan) and resolves them
into a `Release`: download URLs with their published sha256 (see `compiler.checksums`) and image
references. A release the table lacks is usable only when the description pins every file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler import checksums
from compiler.model import Arch, Artifact, Images, Release

DEFAULT_REGISTRY = "registry.k8s.io"
ARCHES: tuple[Arch, ...] = ("amd64", "arm64")
BINARY_ARTIFACTS = ("kubelet", "kubectl", "crictl", "containerd", "runc", "cni-plugins")


@dataclass(frozen=True)
class MinorPins:
    """Components that go with one Kubernetes minor.

    Images: pause and CoreDNS follow kubespray's defaults for the minor (same commit as the
    checksums). The etcd image tags are the ones kubeadm pins for the minor
    (`SupportedEtcdVersion` in kubeadm's constants.go), because registry.k8s.io publishes
    `etcd:<version>-0` only for those.
    """

    minor: tuple[int, int]
    crictl: str
    containerd: str
    runc: str
    cni_plugins: str
    pause: str
    coredns: str
    etcd: str


MINORS: tuple[MinorPins, ...] = (
    MinorPins((1, 36), crictl="1.36.0", containerd="2.3.4", runc="1.4.3", cni_plugins="1.9.1",
              pause="3.10.2", coredns="1.14.2", etcd="3.6.9"),
    MinorPins((1, 35), crictl="1.35.0", containerd="2.2.7", runc="1.4.3", cni_plugins="1.8.0",
              pause="3.10.1", coredns="1.12.4", etcd="3.6.6"),
    MinorPins((1, 34), crictl="1.34.0", containerd="2.2.7", runc="1.3.6", cni_plugins="1.8.0",
              pause="3.10.1", coredns="1.12.1", etcd="3.6.5"),
)

# Flannel's release is independent of the Kubernetes minor. Pins from kubespray
# (kubernetes-sigs/kubespray, roles/kubespray_defaults/defaults/main/download.yml at commit
# 46dbdd3994b32640bcd806b0097f50e8fdf1d514). spec.images.registry never rewrites them: it
# replaces registry.k8s.io only, and flannel publishes to docker.io.
FLANNEL_IMAGE = "docker.io/flannel/flannel:v0.28.4"
FLANNEL_CNI_PLUGIN_IMAGE = "docker.io/flannel/flannel-cni-plugin:v1.7.1-flannel1"
# The workers' local API server load balancer: the HAProxy tag kubespray pins for its own
# localhost load balancer (`haproxy_image_tag` in kubernetes-sigs/kubespray,
# roles/kubespray_defaults/defaults/main/download.yml at commit
# 005343fd25b2e5df42bc4a28ac855b9d6cf25724). Like flannel it comes from docker.io, so
# spec.images.registry does not rewrite it.
API_SERVER_PROXY_IMAGE = "docker.io/library/haproxy:3.1.7-alpine"

DEFAULT_KUBERNETES_VERSION = "v1.36.4"
# etcd minors whose flag spellings the static Pod renderer has (3.6 renamed the
# --experimental-* flags).
SUPPORTED_ETCD_MINORS = ((3, 5), (3, 6))


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Parse `v1.36.4` (or `1.36.4`) into numbers; None for anything else."""
    parts = text.removeprefix("v").split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def minor_of(version: str) -> tuple[int, int]:
    """Return (major, minor) of a dotted version such as "3.6.9"."""
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


def find_minor(minor: tuple[int, int]) -> MinorPins | None:
    for pins in MINORS:
        if pins.minor == minor:
            return pins
    return None


def known_kubernetes_versions() -> list[str]:
    """Return every release whose kubelet and kubectl checksums the table has, newest first."""
    versions = set(checksums.SHA256["kubelet"]["amd64"]) & set(checksums.SHA256["kubectl"]["amd64"])
    supported = {pins.minor for pins in MINORS}
    parsed = [parse_version(version) for version in versions]
    return [
        f"v{v[0]}.{v[1]}.{v[2]}"
        for v in sorted((p for p in parsed if p and (p[0], p[1]) in supported), reverse=True)
    ]


def supported_minors() -> list[str]:
    return [f"{pins.minor[0]}.{pins.minor[1]}" for pins in MINORS]


def artifact_versions(pins: MinorPins, kubernetes_version: str) -> dict[str, str]:
    """Return the version of each downloaded artifact for one release."""
    bare = kubernetes_version.removeprefix("v")
    return {
        "kubelet": bare,
        "kubectl": bare,
        "crictl": pins.crictl,
        "containerd": pins.containerd,
        "runc": pins.runc,
        "cni-plugins": pins.cni_plugins,
    }


def lookup_checksum(
    artifact: str, arch: Arch, version: str, user_pins: dict[str, Any]
) -> str | None:
    """Return the sha256 for one file: the description's pin first, then the table."""
    user = user_pins.get(artifact, {})
    if user.get("version", version) == version and arch in user.get("sha256", {}):
        return str(user["sha256"][arch]).removeprefix("sha256:")
    return checksums.SHA256.get(artifact, {}).get(arch, {}).get(version)


def mirror_url(url: str, base_url: str | None) -> str:
    """Rewrite an upstream URL to `<baseURL>/<upstream host>/<upstream path>`."""
    if base_url is None:
        return url
    return f"{base_url.rstrip('/')}/{url.removeprefix('https://')}"


def image_reference(registry: str | None, path: str, tag: str) -> str:
    """Return `<registry>/<path>:<tag>`; a mirror registry keeps the sub-path."""
    return f"{(registry or DEFAULT_REGISTRY).rstrip('/')}/{path}:{tag}"


def build_images(kubernetes_version: str, pins: MinorPins, registry: str | None) -> Images:
    return Images(
        kube_apiserver=image_reference(registry, "kube-apiserver", kubernetes_version),
        kube_controller_manager=image_reference(
            registry, "kube-controller-manager", kubernetes_version
        ),
        kube_scheduler=image_reference(registry, "kube-scheduler", kubernetes_version),
        kube_proxy=image_reference(registry, "kube-proxy", kubernetes_version),
        etcd=image_reference(registry, "etcd", f"{pins.etcd}-0"),
        coredns=image_reference(registry, "coredns/coredns", f"v{pins.coredns}"),
        pause=image_reference(registry, "pause", pins.pause),
        flannel=FLANNEL_IMAGE,
        flannel_cni_plugin=FLANNEL_CNI_PLUGIN_IMAGE,
        api_server_proxy=API_SERVER_PROXY_IMAGE,
    )


def effective_minor_pins(base: MinorPins, user_pins: dict[str, Any]) -> MinorPins:
    """Apply `spec.kubernetes.pins` version overrides to the minor's defaults."""
    def version_of(artifact: str, default: str) -> str:
        return str(user_pins.get(artifact, {}).get("version", default))

    images = user_pins.get("images", {})
    return MinorPins(
        minor=base.minor,
        crictl=version_of("crictl", base.crictl),
        containerd=version_of("containerd", base.containerd),
        runc=version_of("runc", base.runc),
        cni_plugins=version_of("cni-plugins", base.cni_plugins),
        pause=str(images.get("pause", base.pause)),
        coredns=str(images.get("coredns", base.coredns)).removeprefix("v"),
        etcd=str(images.get("etcd", base.etcd)),
    )


def missing_checksums(
    kubernetes_version: str, arches: set[Arch], user_pins: dict[str, Any]
) -> list[str]:
    """List `artifact version arch` for every file that has no checksum."""
    parsed = parse_version(kubernetes_version)
    base = find_minor((parsed[0], parsed[1])) if parsed else None
    if base is None:
        return []
    pins = effective_minor_pins(base, user_pins)
    missing = []
    for artifact, version in artifact_versions(pins, kubernetes_version).items():
        for arch in sorted(arches):
            if lookup_checksum(artifact, arch, version, user_pins) is None:
                missing.append(f"{artifact} {version} {arch}")
    return missing


def build_release(
    kubernetes_version: str,
    arches: set[Arch],
    user_pins: dict[str, Any],
    base_url: str | None,
    registry: str | None,
) -> Release:
    """Resolve a validated version into URLs, checksums and images.

    The semantic checks have already made sure the minor is supported and every checksum
    exists, so a missing one here is a bug.
    """
    parsed = parse_version(kubernetes_version)
    assert parsed is not None
    base = find_minor((parsed[0], parsed[1]))
    assert base is not None
    pins = effective_minor_pins(base, user_pins)
    versions = artifact_versions(pins, kubernetes_version)

    per_arch: list[tuple[Arch, tuple[Artifact, ...]]] = []
    for arch in ARCHES:
        if arch not in arches:
            continue
        artifacts = []
        for name in BINARY_ARTIFACTS:
            version = versions[name]
            sha256 = lookup_checksum(name, arch, version, user_pins)
            assert sha256 is not None, f"{name} {version} {arch}"
            template = user_pins.get(name, {}).get("url") or checksums.URL_TEMPLATES[name]
            url = template.format(version=version, arch=arch)
            artifacts.append(Artifact(name, version, mirror_url(url, base_url), sha256))
        per_arch.append((arch, tuple(artifacts)))

    return Release(
        kubernetes_version=kubernetes_version,
        minor=base.minor,
        etcd_version=pins.etcd,
        containerd_version=pins.containerd,
        artifacts=tuple(per_arch),
        images=build_images(kubernetes_version, pins, registry),
    )
