"""Deliver changed files to running nodes: per node, the files and an apply.sh.

cloud-init runs user-data only at a node's first boot, so a build that changes files of nodes
that are already running (renewed certificates, new pod routes) also writes
`renewals/<node>/` to out/<cluster>/: the changed files under `files/` at their node paths,
and `apply.sh`, which installs them and restarts what reads them.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from compiler import paths
from compiler.errors import ConsistencyError
from compiler.files import MODE_PRIVATE_EXECUTABLE, File, FileMap, merge_files
from compiler.model import Cluster, Node
from compiler.output import OutputFile
from compiler.pki import bundle
from compiler.pki.bundle import PkiBundle
from compiler.pki.inventory import entry
from compiler.pki.place import build_pki_files
from compiler.render.host import build_pod_route_files
from compiler.render.kubeconfig import build_kubeconfig_files
from compiler.render.static_pods import CONTROL_PLANE_COMPONENTS

RENEWALS_DIR = "renewals"
APPLY_SCRIPT = "apply.sh"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
POD_ROUTES = "kubecc-pod-routes"

# The components that must restart to read each leaf's files. "kubelet" is the systemd unit and
# the other names are static pods. An empty tuple means that no kubecc component reads the files.
CERTIFICATE_READERS: Mapping[str, tuple[str, ...]] = {
    bundle.APISERVER: ("kube-apiserver",),
    bundle.APISERVER_KUBELET_CLIENT: ("kube-apiserver",),
    bundle.FRONT_PROXY_CLIENT: ("kube-apiserver",),
    bundle.APISERVER_ETCD_CLIENT: ("kube-apiserver",),
    bundle.ETCD_SERVER: ("etcd",),
    bundle.ETCD_PEER: ("etcd",),
    # No kubecc component reads it, because the etcd probes use plain HTTP on the metrics port.
    bundle.ETCD_HEALTHCHECK_CLIENT: (),
    bundle.KUBELET_CLIENT: (KUBELET,),
    bundle.KUBELET_SERVING: (KUBELET,),
}
KUBECONFIG_READERS: Mapping[str, tuple[str, ...]] = {
    paths.CONTROLLER_MANAGER_KUBECONFIG: ("kube-controller-manager",),
    paths.SCHEDULER_KUBECONFIG: ("kube-scheduler",),
    paths.KUBELET_KUBECONFIG: (KUBELET,),
    paths.KUBE_PROXY_KUBECONFIG: (KUBE_PROXY,),
}
# Static pods restart in this order, then the kubelet, then the pod routes are installed again.
RESTART_ORDER = (
    *(component.name for component in CONTROL_PLANE_COMPONENTS), KUBE_PROXY, KUBELET, POD_ROUTES,
)
# The bootstrap unit deletes this kubeconfig after the first boot, so a renewal bundle must not
# put its system:masters credential back on the node.
NOT_DELIVERED = frozenset({paths.BOOTSTRAP_KUBECONFIG})
# The destination of each renewed leaf that no node receives as a file.
NODELESS_DELIVERY: Mapping[str, str] = {
    bundle.ADMIN: "written to admin.kubeconfig in the output folder",
    bundle.BOOTSTRAP_ADMIN: "written to the first control plane's user-data only, because "
    "its node deletes that kubeconfig after the first boot",
}


def build_file_readers() -> dict[str, tuple[str, ...]]:
    """Map every node path that a bundle may carry to what reads it."""
    readers = dict(KUBECONFIG_READERS)
    readers[paths.POD_ROUTES_SCRIPT] = (POD_ROUTES,)
    for name, components in CERTIFICATE_READERS.items():
        spec = entry(name)
        for path in (spec.cert_path, spec.key_path):
            if path is not None:
                readers[path] = components
    return readers


FILE_READERS = build_file_readers()


@dataclass(frozen=True)
class RenewalBundle:
    """The changed files of one running node after a renewal, and the components to restart."""

    node: str
    hostname: str
    files: tuple[File, ...]
    restarts: tuple[str, ...]  # static pod names in RESTART_ORDER, then "kubelet"


def build_credential_files(cluster: Cluster, node: Node, pki: PkiBundle) -> FileMap:
    """Build every node file that embeds or is a certificate or key."""
    return merge_files(
        build_pki_files(cluster, node, pki), build_kubeconfig_files(cluster, node, pki)
    )


def build_renewal_bundles(
    cluster: Cluster, before: PkiBundle, after: PkiBundle
) -> list[RenewalBundle]:
    """Build one bundle per node whose credential files differ between two PKIs.

    Certificates that `after` issued for the first time (a node added since the last build)
    count as unchanged, because that node receives them in its user-data.
    """
    running = PkiBundle(
        certs={key: before.certs.get(key, issued) for key, issued in after.certs.items()},
        service_account=before.service_account or after.service_account,
    )
    bundles = []
    for node in cluster.nodes:
        old = build_credential_files(cluster, node, running)
        new = build_credential_files(cluster, node, after)
        changed = [
            file for path, file in sorted(new.items())
            if path not in NOT_DELIVERED and (path not in old or old[path].content != file.content)
        ]
        if changed:
            bundles.append(
                RenewalBundle(node.name, node.hostname, tuple(changed), list_restarts(changed))
            )
    return bundles


# NOTE: only credentials and static pod routes are delivered. Other changed files of running
# nodes (component settings such as maxPods, new manifests flags) reach a node only when it is
# rebuilt from its new user-data.
def build_update_bundles(
    cluster: Cluster, before: PkiBundle, after: PkiBundle, target: Path
) -> list[RenewalBundle]:
    """Build the bundles of every running node: renewed credentials and, in static mode, pod
    routes that changed since the build in `target` (new or removed nodes).
    """
    bundles = {each.node: each for each in build_renewal_bundles(cluster, before, after)}
    for node in cluster.nodes:
        routes = changed_pod_routes(cluster, node, target)
        if routes is None:
            continue
        old = bundles.get(node.name)
        files = (*(old.files if old else ()), routes)
        bundles[node.name] = RenewalBundle(node.name, node.hostname, files, list_restarts(files))
    return [bundles[node.name] for node in cluster.nodes if node.name in bundles]


def changed_pod_routes(cluster: Cluster, node: Node, target: Path) -> File | None:
    """Return the node's new pod-routes script when it differs from the running node's.

    The running node's script is read from its user-data in the previous output; a node
    without one there boots from its new user-data.
    """
    new = {file.path: file for file in build_pod_route_files(cluster, node)}
    script = new.get(paths.POD_ROUTES_SCRIPT)
    previous = target / "nodes" / node.name / "user-data"
    if script is None or not previous.is_file():
        return None
    try:
        document = yaml.safe_load(previous.read_bytes())
        entries = {entry["path"]: entry["content"] for entry in document["write_files"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if entries.get(paths.POD_ROUTES_SCRIPT) == script.content.decode():
        return None
    return script


def list_restarts(files: Iterable[File]) -> tuple[str, ...]:
    """Return what must restart to read the files, in RESTART_ORDER."""
    readers: set[str] = set()
    for file in files:
        if file.path not in FILE_READERS:
            raise ConsistencyError(f"no restart rule for the renewed node file {file.path}")
        readers.update(FILE_READERS[file.path])
    return tuple(name for name in RESTART_ORDER if name in readers)


def emit_renewal_files(bundles: Iterable[RenewalBundle]) -> dict[str, OutputFile]:
    """Emit renewals/<node>/files/<node path> and renewals/<node>/apply.sh for each bundle."""
    files: dict[str, OutputFile] = {}
    for renewal in bundles:
        folder = f"{RENEWALS_DIR}/{renewal.node}"
        for file in renewal.files:
            relative = f"{folder}/files{file.path}"
            files[relative] = OutputFile(relative, file.content, file.mode)
        script = f"{folder}/{APPLY_SCRIPT}"
        files[script] = OutputFile(
            script, build_apply_script(renewal).encode(), MODE_PRIVATE_EXECUTABLE
        )
    return files


# --- apply.sh -------------------------------------------------------------------------------

# NOTE: tests check apply.sh with `bash -n` and check its install lines, but it has not run on a
# real node.
APPLY_PRELUDE = r"""files_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/files"
parking_dir=""

log() {
    printf 'kubecc: %s\n' "$*" >&2
    logger -t kubecc -- "$*" || true
}
trap 'log "renewal failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# A manifest that a failed run left parked goes back, so the static pod starts again.
restore_parked_manifests() {
    if [[ -n $parking_dir ]]; then
        for parked in "$parking_dir"/*.yaml; do
            if [[ -e $parked ]]; then
                mv -- "$parked" "$manifests_dir/"
            fi
        done
        rmdir -- "$parking_dir"
    fi
}
trap restore_parked_manifests EXIT

# The files carry one node's identity (its kubelet certificates), so check the host first.
if [[ ${1:-} != --force ]] && [[ $(hostname -s) != "${expected_hostname%%.*}" ]]; then
    log "this bundle is for $expected_hostname, but this host is $(hostname -s)"
    log "run it on $expected_hostname, or pass --force if that node has another host name"
    exit 1
fi

# Wait until the kubelet has stopped or started the pod's container (state: stopped or running).
wait_for_container() {
    local name=$1 expected_state=$2 attempt ids
    if ! command -v crictl >/dev/null; then
        # The kubelet rereads the manifest folder at least every 20 seconds
        # (fileCheckFrequency) and at once when inotify reports a change.
        sleep 25
        return 0
    fi
    for ((attempt = 1; attempt <= container_timeout; attempt++)); do
        # A failed crictl call matches neither state, so the loop checks again.
        if ids=$(crictl --runtime-endpoint "$runtime_endpoint" ps --quiet --state running \
                --name "^$name\$"); then
            if [[ $expected_state == stopped && -z $ids ]] ||
                [[ $expected_state == running && -n $ids ]]; then
                return 0
            fi
        fi
        sleep 1
    done
    log "timed out after ${container_timeout}s waiting for $name to be $expected_state"
    log "check the kubelet's log: journalctl -u kubelet"
    return 1
}

# The kubelet restarts a static pod only when the content of its manifest changes, and
# restarting the kubelet leaves running containers alone, so neither touching the manifest nor
# restarting the kubelet makes the pod read new files. Moving the manifest out of the folder
# makes the kubelet stop the pod, and moving it back starts the pod with the new files.
restart_static_pod() {
    local name=$1
    local manifest="$manifests_dir/$name.yaml"
    if [[ -z $parking_dir ]]; then
        parking_dir=$(mktemp -d "$(dirname -- "$manifests_dir")/kubecc-renewal.XXXXXX")
    fi
    log "stopping the static pod $name"
    mv -- "$manifest" "$parking_dir/"
    wait_for_container "$name" stopped
    log "starting the static pod $name"
    mv -- "$parking_dir/$name.yaml" "$manifest"
    wait_for_container "$name" running
}
"""


def build_apply_script(renewal: RenewalBundle) -> str:
    """Build apply.sh: check the host, install the files, then restart what reads them."""
    quote = shlex.quote
    noun = "file" if len(renewal.files) == 1 else "files"
    lines = [
        "#!/bin/bash",
        "# Generated by kubecc certs renew: install the renewed certificates and kubeconfigs of",
        f"# node {renewal.node}, then restart what reads them. Copy this whole folder to the node",
        "# and run it as root there: sudo bash apply.sh",
        "set -Eeuo pipefail",
        "",
        f"expected_hostname={quote(renewal.hostname)}",
        f"manifests_dir={quote(paths.MANIFESTS_DIR)}",
        f"runtime_endpoint={quote('unix://' + paths.CONTAINERD_SOCKET)}",
        "container_timeout=120",
        "",
        APPLY_PRELUDE,
        f'log "installing {len(renewal.files)} renewed {noun}"',
    ]
    for file in renewal.files:
        owner, _, group = file.owner.partition(":")
        lines.append(
            f"install -D -m {file.permissions} -o {quote(owner)} -g {quote(group or owner)} -- "
            f'"$files_dir"{quote(file.path)} {quote(file.path)}'
        )
    if any(file.path == paths.KUBELET_CLIENT_INITIAL for file in renewal.files):
        lines += [
            "",
            "# kubelet.conf reads the client certificate through this link, which the kubelet",
            "# repoints when it rotates the certificate itself. Point it at the renewed file.",
            f"ln -sfn -- {quote(paths.KUBELET_CLIENT_INITIAL)} "
            f"{quote(paths.KUBELET_CLIENT_CURRENT)}",
        ]
    lines.append("")
    for name in renewal.restarts:
        if name == KUBELET:
            lines += ['log "restarting the kubelet"', "systemctl restart kubelet.service"]
        elif name == POD_ROUTES:
            lines += [
                'log "installing the pod routes again"',
                f"systemctl restart {POD_ROUTES}.service",
            ]
        else:
            lines.append(f"restart_static_pod {quote(name)}")
    lines += ['log "renewal finished"', ""]
    return "\n".join(lines)
