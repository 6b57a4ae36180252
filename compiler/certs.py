"""Inspect and renew the certificates in the state: `kubecc certs list`, `check` and `renew`.

Reads `metadata.name` and `spec.nodes` (names and roles) of the description, and the state
folder. `renew` reissues leaf certificates through compiler.build and adds
`renewals/<node>/` to out/<cluster>/ for every running node whose files changed: the renewed
files under `files/` at their node paths, and `apply.sh`, which installs them and restarts
what reads them. CAs are never reissued here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from compiler.build import BuildOptions, StatefulBuild, build
from compiler.delivery import (
    RenewalBundle,
)
from compiler.errors import InputError, StateError
from compiler.loader import Description
from compiler.model import Cluster
from compiler.pipeline import validate_description
from compiler.pki.inventory import CERTIFICATES, entry
from compiler.pki.issue import Clock, list_subjects, read_clock, utc_now
from compiler.plan import build_cluster
from compiler.state import STATE_FILE, CertKey, State, load_state, locked, state_file

DEFAULT_CHECK_DAYS = 30
TABLE_COLUMNS = ("NAME", "NODE", "SUBJECT", "SANS", "NOT AFTER", "DAYS LEFT", "SIGNER")

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
        subjects = list_subjects(spec, cluster, cluster.control_planes)
        # A cluster with external etcd issues no etcd certificate, so none is renewable.
        if spec.is_ca or not subjects:
            continue
        renewable[spec.name] = [
            node.name if spec.is_per_node and node is not None else None
            for node in subjects
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

    built = build(description, BuildOptions(
        out_dir=out_dir, state_dir=state_dir, clock=clock, renew=targets,
        passphrase=passphrase,
    ))
    return Renewal(built, targets, built.bundles)


