"""Inspect and renew the certificates in the state: `kubecc certs list`, `check` and `renew`.

Reads `metadata.name` and `spec.nodes` (names and roles) of the description, and the state
folder. `renew` reissues leaf certificates through compiler.build and adds
`renewals/<node>/` to out/<cluster>/ for every running node whose files changed: the renewed
files under `files/` at their node paths, and `apply.sh`, which installs them and restarts
what reads them. CAs are never reissued here.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from compiler import paths
from compiler.build import BuildOptions, StatefulBuild, build
from compiler.errors import ConsistencyError, InputError, StateError
from compiler.files import MODE_PRIVATE_EXECUTABLE, File, FileMap, merge_files
from compiler.loader import Description
from compiler.model import Cluster, Node
from compiler.output import OutputFile
from compiler.pipeline import validate_description
from compiler.pki import bundle
from compiler.pki.bundle import PkiBundle
from compiler.pki.inventory import CERTIFICATES, entry
from compiler.pki.issue import Clock, list_subjects, read_clock, utc_now
from compiler.pki.place import build_pki_files
from compiler.plan import build_cluster
from compiler.render.kubeconfig import build_kubeconfig_files
from compiler.render.static_pods import CONTROL_PLANE_COMPONENTS
from compiler.state import STATE_FILE, CertKey, State, load_state, locked, state_file

DEFAULT_CHECK_DAYS = 30
RENEWALS_DIR = "renewals"
APPLY_SCRIPT = "apply.sh"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
TABLE_COLUMNS = ("NAME", "NODE", "SUBJECT", "SANS", "NOT AFTER", "DAYS LEFT", "SIGNER")

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
# Static pods restart in this order, and the kubelet last.
RESTART_ORDER = (*(component.name for component in CONTROL_PLANE_COMPONENTS), KUBE_PROXY, KUBELET)
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
    """Map every node path of a renewable leaf's files to what reads it."""
    readers = dict(KUBECONFIG_READERS)
    for name, components in CERTIFICATE_READERS.items():
        spec = entry(name)
        for path in (spec.cert_path, spec.key_path):
            if path is not None:
                readers[path] = components
    return readers


FILE_READERS = build_file_readers()


# --- Reading the state --------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateRow:
    """One certificate of the state as `certs list` shows it."""

    name: str
    node: str | None
    subject: str  # RFC 4514 string, CN first
    sans: tuple[str, ...]  # "DNS:<name>" and "IP:<address>" in certificate order
    not_after: datetime
    remaining: timedelta  # negative once expired
    signer: str | None  # None for a self-signed CA

    @property
    def days_left(self) -> int:
        """Return the whole days left, rounded down, so -1 means expired within the last day."""
        return self.remaining // timedelta(days=1)


def load_existing_state(state_dir: Path, cluster_name: str, passphrase: str | None) -> State:
    """Load the state that a build wrote, holding its lock; a missing state raises StateError.

    NOTE: `locked` creates the lock file and a missing .gitignore, but the state file is never
    written here.
    """
    if not state_file(state_dir).is_file():
        raise StateError(
            state_dir, f"has no {STATE_FILE}, so there are no certificates to read",
            "run kubecc build first, or pass the cluster's state folder with --state",
        )
    with locked(state_dir):
        state = load_state(state_dir, cluster_name, passphrase)
    if not state.certificates:
        raise StateError(state_file(state_dir), "contains no certificates",
                         "run kubecc build first, or pass the cluster's state folder with --state")
    return state


def list_certificates(
    description: Description, state_dir: Path, clock: Clock = utc_now,
    passphrase: str | None = None,
) -> list[CertificateRow]:
    """Return one row per certificate in the state: CAs first, then inventory and node order."""
    validate_description(description)
    state = load_existing_state(state_dir, description.data["metadata"]["name"], passphrase)
    node_order = [node["name"] for node in description.data["spec"]["nodes"]]
    return build_certificate_rows(state, node_order, read_clock(clock))


def build_certificate_rows(
    state: State, node_order: Sequence[str], now: datetime
) -> list[CertificateRow]:
    """Build the rows of a state's certificates, in inventory order and then `node_order`.

    Nodes of the state that the description no longer names follow, sorted by name.
    """
    inventory_order = {spec.name: index for index, spec in enumerate(CERTIFICATES)}
    node_index = {name: index for index, name in enumerate(node_order)}

    def sort_key(key: CertKey) -> tuple[int, str, int, str]:
        name, node = key
        position = node_index.get(node, len(node_index)) if node is not None else -1
        return (inventory_order.get(name, len(inventory_order)), name, position, node or "")

    rows = []
    for key in sorted(state.certificates, key=sort_key):
        certificate = state.certificates[key].certificate
        not_after = certificate.not_valid_after_utc
        rows.append(CertificateRow(
            name=key[0],
            node=key[1],
            subject=certificate.subject.rfc4514_string(),
            sans=format_alt_names(certificate),
            not_after=not_after,
            remaining=not_after - now,
            signer=find_signer(key[0], certificate),
        ))
    return rows


def format_alt_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    formatted = []
    for name in names:
        if isinstance(name, x509.DNSName):
            formatted.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            formatted.append(f"IP:{name.value}")
        else:
            formatted.append(f"{type(name).__name__}:{name.value}")
    return tuple(formatted)


def find_signer(name: str, certificate: x509.Certificate) -> str | None:
    """Return the inventory name of the signing CA; the issuer DN for a name not in it."""
    try:
        return entry(name).signer
    except KeyError:
        if certificate.issuer == certificate.subject:
            return None
        return certificate.issuer.rfc4514_string()


def find_expiring(rows: Iterable[CertificateRow], days: int) -> list[CertificateRow]:
    """Return the rows that expire within `days` days, expired ones included."""
    window = timedelta(days=days)
    return [row for row in rows if row.remaining <= window]


def format_certificate_table(rows: Sequence[CertificateRow]) -> list[str]:
    """Format rows as aligned columns under TABLE_COLUMNS; "-" marks an empty cell."""
    cells = [
        (
            row.name,
            row.node or "-",
            row.subject,
            ",".join(row.sans) or "-",
            row.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            str(row.days_left),
            row.signer or "self-signed",
        )
        for row in rows
    ]
    widths = [
        max(len(line[index]) for line in (TABLE_COLUMNS, *cells))
        for index in range(len(TABLE_COLUMNS))
    ]
    days_column = TABLE_COLUMNS.index("DAYS LEFT")
    lines = []
    for line in (TABLE_COLUMNS, *cells):
        padded = [
            cell.rjust(width) if index == days_column else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


# --- Choosing what to renew ---------------------------------------------------------------


def list_renewable(cluster: Cluster) -> dict[str, list[str | None]]:
    """Return every leaf name with the nodes it is issued for ([None] for a cluster-wide one)."""
    renewable: dict[str, list[str | None]] = {}
    for spec in CERTIFICATES:
        if spec.is_ca:
            continue
        renewable[spec.name] = [
            node.name if spec.is_per_node and node is not None else None
            for node in list_subjects(spec, cluster, cluster.control_planes)
        ]
    return renewable


def load_renewal_targets(
    cluster: Cluster, names: Sequence[str], renew_all: bool
) -> frozenset[CertKey]:
    """Parse NAME and NAME/NODE arguments into certificate keys; `renew_all` takes every leaf.

    Raises InputError listing every invalid argument: a CA, an unknown name, or a node that
    the certificate is not issued for.
    """
    renewable = list_renewable(cluster)
    if renew_all:
        return frozenset((name, node) for name, nodes in renewable.items() for node in nodes)

    targets: set[CertKey] = set()
    problems: list[str] = []
    for argument in names:
        name, _, node = argument.partition("/")
        problem = check_renewal_argument(argument, name, node, renewable)
        if problem is not None:
            problems.append(problem)
        elif node:
            targets.add((name, node))
        else:
            targets.update((name, each) for each in renewable[name])
    if problems:
        raise InputError("\n".join(problems))
    return frozenset(targets)


def check_renewal_argument(
    argument: str, name: str, node: str, renewable: Mapping[str, list[str | None]]
) -> str | None:
    """Return why one NAME or NAME/NODE argument is invalid, or None when it is valid."""
    try:
        spec = entry(name)
    except KeyError:
        close = difflib.get_close_matches(name, renewable, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        return (f"{argument}: unknown certificate {name}{guess}. Valid names: "
                f"{', '.join(renewable)}, each optionally followed by /NODE")
    if spec.is_ca:
        return (f"{argument}: kubecc cannot renew a CA, because every running node trusts the "
                f"current {name} certificate and a new one would cut them off. Name leaf "
                "certificates or pass --all. A CA stays valid for pki.caValidityDays (3650 days "
                "by default)")
    nodes = renewable[name]
    if node and nodes == [None]:
        return (f"{argument}: {name} is one certificate for the whole cluster, so name it "
                f"without /{node}")
    if node and node not in nodes:
        issued_for = ", ".join(each for each in nodes if each is not None)
        return f"{argument}: {name} is issued only for {issued_for}, not for {node}"
    return None


# --- Renewing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenewalBundle:
    """The changed files of one running node after a renewal, and the components to restart."""

    node: str
    hostname: str
    files: tuple[File, ...]
    restarts: tuple[str, ...]  # static pod names in RESTART_ORDER, then "kubelet"


@dataclass(frozen=True)
class Renewal:
    """The outcome of `certs renew`: the build, the requested keys and the node bundles."""

    built: StatefulBuild
    requested: frozenset[CertKey]
    bundles: tuple[RenewalBundle, ...]


def renew_certificates(
    description: Description,
    names: Sequence[str],
    renew_all: bool,
    out_dir: Path,
    state_dir: Path,
    clock: Clock = utc_now,
    passphrase: str | None = None,
) -> Renewal:
    """Reissue the named leaves, keep every CA, and rebuild out/<cluster>/ with the bundles.

    The build may also reissue other leaves for the reasons that `kubecc build` has, such as a
    certificate inside the renewal window. Their files join the bundles too.
    """
    validate_description(description)
    state = load_existing_state(state_dir, description.data["metadata"]["name"], passphrase)
    cluster = build_cluster(description, state.pod_blocks, state.etcd_members)
    targets = load_renewal_targets(cluster, names, renew_all)

    bundles: list[RenewalBundle] = []

    def add_renewal_files(
        cluster: Cluster, before: PkiBundle, after: PkiBundle
    ) -> dict[str, OutputFile]:
        # The build calls this under the state lock. Another kubecc may have emptied the state
        # since load_existing_state read it, and an empty state would get new CAs.
        if not before.certs:
            raise StateError(state_dir, "lost its certificates while kubecc renew ran",
                             "restore the state from your backup")
        bundles.extend(build_renewal_bundles(cluster, before, after))
        return emit_renewal_files(bundles)

    built = build(description, BuildOptions(
        out_dir=out_dir, state_dir=state_dir, clock=clock, renew=targets,
        extra_files=add_renewal_files, passphrase=passphrase,
    ))
    return Renewal(built, targets, tuple(bundles))


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
        else:
            lines.append(f"restart_static_pod {quote(name)}")
    lines += ['log "renewal finished"', ""]
    return "\n".join(lines)
