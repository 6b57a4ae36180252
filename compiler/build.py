"""Run a whole build: plan, PKI, render and emit every node, then write `out/<cluster>/`.

Writes `nodes/<node>/user-data` (0600), `admin.kubeconfig` (0600), `ca.crt` and `index.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from compiler.delivery import RenewalBundle, build_update_bundles, emit_renewal_files
from compiler.emit.cloudinit import emit_cloud_config
from compiler.errors import ConsistencyError, OutputError
from compiler.files import MODE_PUBLIC, MODE_SECRET
from compiler.loader import Description
from compiler.model import Cluster
from compiler.output import OutputFile, os_error_reason, write_output
from compiler.pipeline import validate_description
from compiler.pki import bundle
from compiler.pki.bundle import PkiBundle
from compiler.pki.issue import (
    Clock,
    Issuance,
    Previous,
    build_pki,
    renew_pki,
    utc_now,
)
from compiler.plan import build_cluster
from compiler.render.host import first_boot_command
from compiler.render.kubeconfig import build_admin_kubeconfig, validate_server_names
from compiler.render.node import build_node_files
from compiler.serialize import dump_json
from compiler.state import load_state, locked, state_from_build, write_state

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1

# Builds more files for out/<cluster>/ from the cluster, the state's PKI before this build and
# the PKI this build issued.


@dataclass(frozen=True)
class BuildResult:
    cluster: Cluster
    target: Path
    files: dict[str, OutputFile]


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def build_index(
    cluster: Cluster, user_data: dict[str, bytes], ca_fingerprint: str
) -> dict[str, Any]:
    """Build index.json: what was generated for which node, with sizes and digests."""
    nodes = []
    for node in cluster.nodes:
        entry: dict[str, Any] = {
            "name": node.name,
            "role": node.role,
            "ip": str(node.ip),
            "ips": [str(ip) for ip in node.ips],
        }
        if node.pod_cidrs:
            entry["podCIDR"] = str(node.pod_cidrs[0])
            entry["podCIDRs"] = [str(block) for block in node.pod_cidrs]
        content = user_data[node.name]
        entry["artifacts"] = [{
            "kind": "user-data",
            "path": f"nodes/{node.name}/user-data",
            "bytes": len(content),
            "sha256": sha256_hex(content),
        }]
        nodes.append(entry)
    return {
        "formatVersion": INDEX_FORMAT_VERSION,
        "cluster": {
            "name": cluster.name,
            "kubernetesVersion": cluster.release.kubernetes_version,
            "caCertificateSHA256": ca_fingerprint,
        },
        "nodes": nodes,
    }


def build_output_files(cluster: Cluster) -> dict[str, OutputFile]:
    """Issue a new PKI and render every node; return the output tree by relative path."""
    return render_output_files(cluster, build_pki(cluster))


def ca_fingerprint_of(pki: PkiBundle) -> str:
    return pki.cert(bundle.CA).certificate.fingerprint(hashes.SHA256()).hex()


def render_output_files(cluster: Cluster, pki: PkiBundle) -> dict[str, OutputFile]:
    """Render every node with the given PKI; return the output tree by relative path."""
    validate_server_names(cluster, pki)

    files: dict[str, OutputFile] = {}
    user_data: dict[str, bytes] = {}
    for node in cluster.nodes:
        node_files = build_node_files(cluster, node, pki)
        content = emit_cloud_config(cluster, node, node_files, [first_boot_command(cluster, node)])
        user_data[node.name] = content
        files[f"nodes/{node.name}/user-data"] = OutputFile(
            f"nodes/{node.name}/user-data", content, MODE_SECRET
        )

    ca = pki.cert(bundle.CA)
    ca_fingerprint = ca_fingerprint_of(pki)
    extra = {
        "admin.kubeconfig": (build_admin_kubeconfig(cluster, pki).encode(), MODE_SECRET),
        "ca.crt": (ca.certificate.public_bytes(Encoding.PEM), MODE_PUBLIC),
        "index.json": (
            dump_json(build_index(cluster, user_data, ca_fingerprint)).encode(), MODE_PUBLIC
        ),
    }
    for relative, (content, mode) in extra.items():
        files[relative] = OutputFile(relative, content, mode)
    return files


def check_replace_allowed(target: Path, force: bool, ca_fingerprint: str | None = None) -> bool:
    """Raise OutputError unless `target` is missing, an empty folder or a replaceable build.

    A symbolic link, a file and a non-empty folder without a kubecc index.json are always
    rejected. An earlier build made with another cluster CA (another state, or none) is
    rejected unless forced: nodes booted from its user-data could not join nodes booted from
    the new one. A build with the same CA is replaced. Returns True when only --force allowed
    the replacement.
    """
    try:
        mode = target.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False  # write_output reports an output folder that cannot be created
    except OSError as error:
        raise OutputError(
            f"cannot inspect {target}: {os_error_reason(error)}; it is left unchanged",
            "choose another folder with -o",
        ) from None
    if stat.S_ISLNK(mode):
        raise OutputError(
            f"{target} is a symbolic link; kubecc replaces only a real folder, so the link is "
            "left unchanged",
            "remove the link, or choose another folder with -o",
        )
    if not stat.S_ISDIR(mode):
        raise OutputError(
            f"{target} exists and is not a folder; it is left unchanged",
            "remove it, or choose another folder with -o",
        )

    try:
        is_empty = next(target.iterdir(), None) is None
    except OSError as error:
        raise OutputError(
            f"cannot read the folder {target}: {os_error_reason(error)}; it is left unchanged",
            "choose another folder with -o",
        ) from None
    if is_empty:
        return False

    # A kubecc build has index.json as a regular file with the keys that build_index writes.
    index_path = target / "index.json"
    try:
        is_index_file = stat.S_ISREG(index_path.lstat().st_mode)
        index = json.loads(index_path.read_bytes()) if is_index_file else None
    except (OSError, ValueError):
        index = None
    is_kubecc_build = (
        isinstance(index, dict)
        and "formatVersion" in index
        and isinstance(index.get("cluster"), dict)
        and "caCertificateSHA256" in index["cluster"]
    )
    if not is_kubecc_build:
        raise OutputError(
            f"{target} exists and was not written by kubecc; it is left unchanged",
            "choose another folder with -o, or remove it (--force never replaces a folder "
            "that kubecc did not write)",
        )

    assert isinstance(index, dict)
    if index["cluster"]["caCertificateSHA256"] == ca_fingerprint:
        return False
    if force:
        return True
    raise OutputError(
        f"{target} contains an earlier build whose nodes trust another cluster CA than the "
        "state's, so nodes booted from the old and the new user-data could not form one "
        "cluster",
        "build with the state of that earlier build (--state), or rebuild with --force to "
        "replace it (only before any node booted from it), or choose another folder with -o",
    )


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    state_dir: Path
    force: bool = False
    clock: Clock = utc_now
    # Certificates to reissue whatever their state, as (name, node or None).
    renew: frozenset[tuple[str, str | None]] = frozenset()
    # Encrypts the state file when set; see compiler.state.
    passphrase: str | None = None


def add_extra_files(files: dict[str, OutputFile], extra: Mapping[str, OutputFile]) -> None:
    for relative, file in extra.items():
        if relative in files:
            raise ConsistencyError(f"two parts of the build write {relative}")
        files[relative] = file


@dataclass(frozen=True)
class StatefulBuild:
    result: BuildResult
    issued: tuple[Issuance, ...]
    warnings: tuple[str, ...]
    state_changed: bool
    state_created: bool
    # Files that running nodes need because this build changed them; see compiler.delivery.
    bundles: tuple[RenewalBundle, ...] = ()


def etcd_membership_warnings(
    cluster: Cluster, previous: Mapping[str, tuple[str, str]]
) -> list[str]:
    """Warn about etcd members that join or leave a running cluster in this build."""
    if cluster.external_etcd is not None:
        if not previous:
            return []
        return [
            f"control planes {', '.join(sorted(previous))} ran stacked etcd members in the "
            "previous build, and this build uses external etcd: kubecc copies no etcd data, so "
            "move it to the external etcd (etcdctl snapshot save, etcdutl snapshot restore) "
            "before kube-apiserver connects to it"
        ]
    warnings = []
    joining = [
        member.name for member in cluster.etcd_members
        if previous and member.name not in previous
    ]
    if len(joining) > 1:
        warnings.append(
            f"control planes {', '.join(joining)} join the running etcd members: boot them one "
            "at a time in this order, each after the previous one is healthy"
        )
    current = {member.name for member in cluster.etcd_members}
    for name in sorted(set(previous) - current):
        warnings.append(
            f"control plane {name} was an etcd member: remove it from etcd (etcdctl member "
            f"remove) and delete its Node (kubectl delete node {name}) before you shut it down"
        )
    return warnings


def build(description: Description, options: BuildOptions) -> StatefulBuild:
    """Build with the state: reuse what still fits, write the state, then out/<cluster>/."""
    validate_description(description)
    name = description.data["metadata"]["name"]
    with locked(options.state_dir):
        state = load_state(options.state_dir, name, options.passphrase)
        cluster = build_cluster(description, state.pod_blocks, state.etcd_members)
        previous = Previous(
            certs=state.certificates, service_account=state.service_account,
            renew_before=timedelta(days=cluster.pki.renew_before_days), force=options.renew,
        )
        pki = renew_pki(cluster, previous, options.clock)
        fingerprint = ca_fingerprint_of(pki.bundle)
        target = options.out_dir / cluster.name
        forced = check_replace_allowed(target, options.force, fingerprint)
        files = render_output_files(cluster, pki.bundle)
        bundles: tuple[RenewalBundle, ...] = ()
        if not state.is_empty:
            # Nodes already running never read their user-data again.
            previous_pki = PkiBundle(dict(state.certificates), state.service_account)
            bundles = tuple(build_update_bundles(cluster, previous_pki, pki.bundle, target))
            add_extra_files(files, emit_renewal_files(bundles))

        warnings = (*pki.warnings, *etcd_membership_warnings(cluster, state.etcd_members))
        if forced:
            warnings = (*warnings, f"replaced {target}, whose nodes trust another cluster CA "
                        "(--force): nodes booted from it cannot join this build's nodes")
        changed = write_state(
            options.state_dir, state_from_build(cluster, pki.bundle), options.passphrase
        )
        write_output(target, files)
    logger.info("wrote %d files to %s", len(files), target)
    return StatefulBuild(
        BuildResult(cluster, target, files), pki.issued, warnings, changed, state.is_empty,
        bundles,
    )
