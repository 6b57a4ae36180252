"""Second validation layer: meaning across fields, run only on a schema-valid description.

Reads all of `spec`; every check appends Problems and the caller raises once. A cross-field
problem points at the later field.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import string
from typing import Any, cast

from passlib.hosts import linux_context

from compiler import versions
from compiler.addressing import node_addresses
from compiler.checker import Checker
from compiler.component_checks import check_components
from compiler.errors import DescriptionError, Problem
from compiler.loader import Description
from compiler.model import Arch, IPAddress
from compiler.network_checks import check_network, is_ip

NODE_NAME_MAX = 52  # "system:node:" + name must fit the 64-character X.509 CN limit
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_NAME_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# passlib cannot verify yescrypt (the default of Debian 11 and later), so its format is checked.
YESCRYPT_RE = re.compile(r"^\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]*\$[./A-Za-z0-9]{43}$")
STRONG_SCHEMES = frozenset({"sha512_crypt", "sha256_crypt"})
# Key types OpenSSH 9 accepts in authorized_keys (ssh-keygen -Q key, without certificates).
SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
# Accounts every Debian or Ubuntu image already has; cloud-init would change them instead.
RESERVED_USERS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "nobody", "systemd-network",
    "systemd-resolve", "messagebus", "sshd", "_apt",
})
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

# Labels a kubelet may set on itself under the kubernetes.io and k8s.io namespaces
# (NodeRestriction admission plugin, Kubernetes 1.16 and later).
KUBELET_ALLOWED_LABELS = frozenset({
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")


def check_control_plane(check: Checker, spec: dict[str, Any]) -> None:
    control_plane = spec["controlPlane"]
    if control_plane.get("securityModel", "https") == "http":
        check.error(
            ("spec", "controlPlane", "securityModel"),
            'found "http"; expected "https"',
            "Kubernetes 1.20 removed the API server's insecure port (--insecure-port and "
            "--insecure-bind-address), so a plain-HTTP cluster cannot be built; remove the "
            "field and kubecc secures every component with TLS",
        )
    if "endpoint" in control_plane:
        check_endpoint_host(check, str(control_plane["endpoint"]["host"]))
    for index, san in enumerate(control_plane.get("certSANs", [])):
        if is_ip(san):
            valid = not ipaddress.ip_address(san).is_unspecified
        else:
            valid = is_dns_name(san) and not looks_numeric(san)
        if not valid:
            check.error(
                ("spec", "controlPlane", "certSANs", index),
                f'found "{san}"; expected an IP address or a lowercase DNS name',
                'use names like "api.example.com" or "*.example.com", or IP addresses',
            )


def check_endpoint_host(check: Checker, host: str) -> None:
    host_parts = ("spec", "controlPlane", "endpoint", "host")
    if not is_ip(host) and (not is_dns_name(host) or looks_numeric(host) or host.startswith("*.")):
        check.error(
            host_parts, f'found "{host}"; expected an IP address or a lowercase DNS name',
            "use the load balancer's DNS name or IP, or a control-plane node's IP",
        )
    elif is_ip(host) and not is_unicast(ipaddress.ip_address(host)):
        check.error(
            host_parts, f'found "{host}"; expected an address every node can reach',
            "loopback, link-local, multicast and unspecified addresses name a different "
            "machine on every node; use the load balancer's or a control plane's address",
        )


def is_dns_name(text: str) -> bool:
    """Return True for a lowercase DNS name (RFC 1123), optionally with a leading "*."."""
    labels = text.removeprefix("*.").split(".")
    return (
        DNS_NAME_RE.match(text) is not None
        and len(text) <= 253
        and all(len(label) <= 63 for label in labels)
    )


def looks_numeric(text: str) -> bool:
    """Return True for dotted numbers that are not a valid address, such as 10.0.0.300."""
    return all(label.isdigit() for label in text.split("."))


def is_unicast(address: IPAddress) -> bool:
    """Return True for an address that names one machine on a shared network."""
    return not (
        address.is_loopback or address.is_unspecified or address.is_multicast
        or address.is_link_local or address.is_reserved
    )


def check_version(check: Checker, spec: dict[str, Any], arches: set[str]) -> None:
    kubernetes = spec.get("kubernetes", {})
    version = kubernetes.get("version", versions.DEFAULT_KUBERNETES_VERSION)
    parts = ("spec", "kubernetes", "version")
    parsed = versions.parse_version(version)
    assert parsed is not None  # the schema's pattern guarantees vX.Y.Z
    if versions.find_minor((parsed[0], parsed[1])) is None:
        check.error(
            parts,
            f'found "{version}"; expected a release of a supported minor '
            f"({', '.join(versions.supported_minors())})",
            "kubecc knows the flags of these minors only; choose one of: "
            + ", ".join(versions.known_kubernetes_versions()),
        )
        return
    etcd = kubernetes.get("pins", {}).get("images", {}).get("etcd")
    if etcd is not None and versions.minor_of(etcd) not in versions.SUPPORTED_ETCD_MINORS:
        known = " or ".join(f"{major}.{minor}" for major, minor in versions.SUPPORTED_ETCD_MINORS)
        check.error(
            ("spec", "kubernetes", "pins", "images", "etcd"),
            f'found "{etcd}"; expected an etcd release of {known}',
            "kubecc writes etcd flags for these minors only",
        )
    check_pins(check, kubernetes.get("pins", {}))
    missing = versions.missing_checksums(
        version, cast(set[Arch], arches), kubernetes.get("pins", {})
    )
    if missing:
        check.error(
            parts,
            f'found "{version}", which has no published checksums in kubecc\'s version table '
            f"(missing: {'; '.join(missing)}); expected one of: "
            + ", ".join(versions.known_kubernetes_versions()),
            "choose a listed version, or add the release's published sha256 values under "
            "spec.kubernetes.pins",
        )


def check_pins(check: Checker, pins: dict[str, Any]) -> None:
    base = ("spec", "kubernetes", "pins")
    containerd = pins.get("containerd", {}).get("version")
    if containerd is not None and versions.minor_of(containerd) < (2, 0):
        check.error(
            (*base, "containerd", "version"), f'found "{containerd}"; expected containerd 2.0 '
            "or later", "kubecc writes the containerd 2.x configuration (version = 3)",
        )
    for artifact, pin in pins.items():
        if artifact == "images" or "url" not in pin:
            continue
        fields = url_template_fields(pin["url"])
        if fields is None or not fields <= {"version", "arch"}:
            check.error(
                (*base, artifact, "url"), "found a URL template with placeholders other than "
                "{version} and {arch}; expected only those two",
                "write literal braces as {{ and }}",
            )


def url_template_fields(template: str) -> set[str] | None:
    """Return the placeholder names of a str.format template, or None if it is malformed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    fields = {field for _, field, spec, conversion in parsed if field is not None}
    if any(spec or conversion for _, field, spec, conversion in parsed if field is not None):
        return None
    return fields


def check_names(check: Checker, nodes: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        name = str(node["name"])
        parts = ("spec", "nodes", index, "name")
        if not NAME_RE.match(name) or len(name) > NODE_NAME_MAX:
            suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:NODE_NAME_MAX]
            check.error(
                parts,
                f'found "{name}"; expected a lowercase RFC 1123 name of at most '
                f"{NODE_NAME_MAX} characters",
                f'Kubernetes node names allow only a-z, 0-9 and "-"; use e.g. "{suggestion}"'
                if suggestion else None,
            )
        if name in seen:
            check.error(
                parts, f'found "{name}" again; expected unique node names',
                f"spec.nodes[{seen[name]}] already uses this name; rename one of them",
            )
        seen.setdefault(name, index)


def check_node_addresses(check: Checker, nodes: list[dict[str, Any]]) -> None:
    seen: dict[IPAddress, str] = {}
    for index, node in enumerate(nodes):
        base = ("spec", "nodes", index)
        if ("ip" in node) == ("ips" in node):
            check.error(
                base, f"found {'both' if 'ip' in node else 'neither'} \"ip\" and \"ips\"; "
                "expected exactly one of them",
                'give the node address as "ip" (or "ips" for dual-stack)',
            )
            continue
        addresses = [ipaddress.ip_address(text) for text in node_addresses(node)]
        if len(addresses) == 2 and addresses[0].version == addresses[1].version:
            check.error(
                (*base, "ips", 1), f"found two IPv{addresses[0].version} addresses; expected "
                "one IPv4 and one IPv6 address", "a dual-stack node has one address of each "
                "family, in the order of podCIDR",
            )
        field = "ip" if "ip" in node else "ips"
        for offset, text in enumerate(node_addresses(node)):
            parts = (*base, field) if field == "ip" else (*base, field, offset)
            address = ipaddress.ip_address(text)
            if not is_unicast(address):
                check.error(parts, f'found "{text}"; expected a unicast address other nodes '
                            "can reach", "use the address of the node's network interface")
            if address in seen:
                check.error(parts, f'found "{text}", which node "{seen[address]}" already uses; '
                            "expected unique node addresses", "give each node its own address")
            seen.setdefault(address, str(node["name"]))


def check_roles(check: Checker, nodes: list[dict[str, Any]], has_external_etcd: bool) -> None:
    """Check the node roles. The even-count warning is about the quorum of stacked etcd, so
    it does not apply with external etcd, where extra API servers cost no quorum."""
    control_planes = [node for node in nodes if node["role"] == "control-plane"]
    if control_planes and len(control_planes) == len(nodes) and all(
        "taints" not in node for node in nodes
    ):
        check.warning(
            ("spec", "nodes"),
            "found only control-plane nodes; they carry the node-role.kubernetes.io/"
            "control-plane:NoSchedule taint, so ordinary pods (CoreDNS too) cannot run",
            "add a worker, or set taints: [] on a control plane to let it run workloads",
        )
    if not control_planes:
        check.error(("spec", "nodes"), "found no control-plane node; expected at least one",
                    'set role: control-plane on one node (three for high availability)')
    elif len(control_planes) % 2 == 0 and not has_external_etcd:
        check.warning(
            ("spec", "nodes"),
            f"found {len(control_planes)} control-plane nodes; an even number of etcd members "
            "tolerates no more failures than one fewer",
            "use an odd number of control planes (1, 3 or 5)",
        )


def check_labels(check: Checker, nodes: list[dict[str, Any]]) -> None:
    for index, node in enumerate(nodes):
        for key in node.get("labels", {}):
            parts = ("spec", "nodes", index, "labels", key)
            prefix, slash, name = key.rpartition("/")
            if not LABEL_NAME_RE.match(name) or len(name) > 63 or (
                slash and not is_dns_name(prefix)
            ):
                check.problems.append(check.description.problem(
                    parts, f'found "{key}"; expected a label key ([prefix/]name)',
                    "names are at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
                    at_key=True,
                ))
                continue
            if not forbidden_label(prefix, key):
                continue
            check.problems.append(check.description.problem(
                parts,
                f'found "{key}"; expected a label the kubelet may set on itself',
                "the NodeRestriction admission plugin rejects a kubelet that sets labels under "
                "kubernetes.io or k8s.io other than its allow-list (kubernetes.io/hostname, "
                "topology.kubernetes.io/zone, node.kubernetes.io/*, ...), so the node would "
                "never register; use your own prefix such as example.com/role, or set this "
                "label with kubectl after the node joined",
                at_key=True,
            ))


def in_namespace(prefix: str, namespace: str) -> bool:
    """Return True when a label prefix is the namespace or one of its subdomains."""
    return prefix == namespace or prefix.endswith("." + namespace)


def check_taints(check: Checker, nodes: list[dict[str, Any]]) -> None:
    for index, node in enumerate(nodes):
        seen: set[tuple[str, str]] = set()
        for offset, taint in enumerate(node.get("taints", [])):
            pair = (taint["key"], taint["effect"])
            if pair in seen:
                check.error(
                    ("spec", "nodes", index, "taints", offset),
                    f'found a second taint with key "{pair[0]}" and effect {pair[1]}; expected '
                    "taints unique by key and effect", "the API server rejects such a node; "
                    "remove one of them",
                )
            seen.add(pair)


def forbidden_label(prefix: str, key: str) -> bool:
    """Return True for a label NodeRestriction forbids a kubelet to set on itself."""
    if not (in_namespace(prefix, "kubernetes.io") or in_namespace(prefix, "k8s.io")):
        return False
    if in_namespace(prefix, "node-restriction.kubernetes.io"):
        return True
    if key in KUBELET_ALLOWED_LABELS:
        return False
    return not any(in_namespace(prefix, namespace) for namespace in KUBELET_LABEL_NAMESPACES)


def check_pki(check: Checker, spec: dict[str, Any]) -> None:
    pki = spec.get("pki", {})
    ca_days = pki.get("caValidityDays", 3650)
    leaf_days = pki.get("certValidityDays", 365)
    if leaf_days > ca_days:
        check.error(
            ("spec", "pki", "certValidityDays"),
            f"found {leaf_days} days, longer than caValidityDays ({ca_days}); expected at most "
            "the CA's lifetime", "a certificate cannot outlive the CA that signed it",
        )


def is_strong_crypt_hash(text: str) -> bool:
    """Return True for a well-formed SHA-512, SHA-256 or yescrypt crypt(3) hash."""
    if YESCRYPT_RE.match(text):
        return True
    scheme = linux_context.identify(text)
    if scheme not in STRONG_SCHEMES:
        return False
    try:
        parsed = linux_context.handler(scheme).from_string(text)
    except ValueError:  # wrong checksum length, too few rounds, bad salt characters
        return False
    return bool(parsed.checksum)


def check_ssh_key(check: Checker, index: int, line: str) -> None:
    """Check one authorized_keys line: a known key type and a base64 blob of that type."""
    parts = ("spec", "admin", "sshAuthorizedKeys", index)
    words = line.split()
    key_type = next((word for word in words if word in SSH_KEY_TYPES), None)
    blob = words[words.index(key_type) + 1] if key_type and words[-1] != key_type else ""
    try:
        decoded = base64.b64decode(blob, validate=True)
    except ValueError:
        decoded = b""
    length = int.from_bytes(decoded[:4], "big")
    if key_type is None or decoded[4:4 + length] != key_type.encode():
        check.error(
            parts, "found a line that is not an OpenSSH public key; expected "
            '"<type> <base64 key> [comment]" with a type such as ssh-ed25519',
            "copy the whole line of the .pub file (ssh-keygen writes it)",
        )


def check_admin(check: Checker, spec: dict[str, Any]) -> None:
    admin = spec.get("admin")
    if not admin:
        return
    if admin["name"] in RESERVED_USERS:
        check.error(
            ("spec", "admin", "name"), f'found "{admin["name"]}", a system account; '
            "expected a personal login name", 'use a name such as "ops"; it gets sudo',
        )
    for index, line in enumerate(admin.get("sshAuthorizedKeys", [])):
        check_ssh_key(check, index, line)
    if admin.get("passwordHash") is None:
        return
    if not is_strong_crypt_hash(admin["passwordHash"]):
        check.error(
            ("spec", "admin", "passwordHash"),
            "found a value that is not a SHA-512, SHA-256 or yescrypt crypt(3) hash; expected "
            'a hash such as "$6$..."',
            "make one with `kubecc hash-password`; never put the password itself here",
        )


def validate_semantics(description: Description) -> list[Problem]:
    """Run every semantic check; raise on errors and return the warnings."""
    spec = description.data["spec"]
    nodes = spec["nodes"]
    check = Checker(description, [])

    check_control_plane(check, spec)
    check_version(check, spec, {node.get("arch", "amd64") for node in nodes})
    check_names(check, nodes)
    check_node_addresses(check, nodes)
    check_roles(check, nodes, "external" in spec.get("etcd", {}))
    check_labels(check, nodes)
    check_taints(check, nodes)
    check_pki(check, spec)
    check_admin(check, spec)
    check_network(check, spec)
    check_components(check, spec)

    errors = [problem for problem in check.problems if problem.severity == "error"]
    if errors:
        raise DescriptionError(description.filename, check.problems)
    return check.problems

