"""Command line: the only place that prints errors and chooses exit codes.

Exit codes: 0 success, 1 invalid input or a failed check, 2 usage error, 3 internal error.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from passlib.hash import sha512_crypt

from compiler import __version__, certs, delivery
from compiler.addressing import block_capacity
from compiler.build import BuildOptions, StatefulBuild, build
from compiler.errors import (
    DescriptionError,
    InputError,
    KubeccError,
    OutputError,
    Problem,
    StateError,
)
from compiler.loader import Description, load_description
from compiler.model import Cluster
from compiler.pipeline import plan_file, validate_description
from compiler.pki.issue import Clock, utc_now
from compiler.state import PASSPHRASE_VARIABLE, default_state_dir

# Larger clusters get a count instead of one summary line per node.
SUMMARY_NODES = 20
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
# For tests only: an ISO 8601 time with a UTC offset that the certs commands use as "now".
NOW_VARIABLE = "KUBECC_NOW"
STATE_HELP = (
    "state folder with the cluster's keys, certificates and allocations "
    "(default: <description stem>.state/ beside the description)"
)
PASSPHRASE_HELP = (
    "file whose first line is the passphrase that encrypts the state (default: the "
    "KUBECC_STATE_PASSPHRASE environment variable; without either, the state is not encrypted)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubecc",
        description="Compile a Kubernetes cluster description into per-node cloud-init "
        "user-data.",
    )
    parser.add_argument("--version", action="version", version=f"kubecc {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log each step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", parents=[common], help="check a description and list every problem",
        description="Check a description against the schema and the semantic rules.",
    )
    validate.add_argument("description", type=Path, help="cluster description (YAML)")

    build = commands.add_parser(
        "build", parents=[common], help="write user-data for every node",
        description="Validate, issue the PKI and write out/<cluster>/ with one user-data per "
        "node, admin.kubeconfig, ca.crt and index.json.",
    )
    build.add_argument("description", type=Path, help="cluster description (YAML)")
    build.add_argument(
        "-o", "--output", type=Path, default=Path("out"), metavar="DIR",
        help="folder that receives <cluster>/ (default: ./out)",
    )
    build.add_argument("--state", type=Path, metavar="DIR", help=STATE_HELP)
    build.add_argument(
        "--state-passphrase-file", type=Path, metavar="FILE", help=PASSPHRASE_HELP,
    )
    build.add_argument(
        "--force", action="store_true",
        help="replace an earlier build in the output folder although its CA differs",
    )
    commands.add_parser(
        "hash-password", parents=[common], help="print a crypt(3) hash for spec.admin.passwordHash",
        description="Read a password (prompted twice on a terminal, else one line from "
        "standard input) and print its SHA-512 crypt(3) hash.",
    )
    add_certs_parser(commands, common)
    return parser


def non_negative_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of days: {text!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"the number of days must be 0 or more, not {days}")
    return days


def add_certs_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    environment = (
        f"An encrypted state is read with the passphrase in {PASSPHRASE_VARIABLE} or "
        "--state-passphrase-file. For tests, "
        f"{NOW_VARIABLE} (an ISO 8601 time with a UTC offset, such as 2027-11-20T00:00:00Z) "
        "replaces the current time."
    )
    group = commands.add_parser(
        "certs", parents=[common], help="list, check and renew the cluster's certificates",
        description="Inspect the certificates in the state, or renew leaf certificates.",
        epilog=environment,
    )
    subcommands = group.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    state_options = argparse.ArgumentParser(add_help=False, parents=[common])
    state_options.add_argument("description", type=Path, help="cluster description (YAML)")
    state_options.add_argument("--state", type=Path, metavar="DIR", help=STATE_HELP)
    state_options.add_argument(
        "--state-passphrase-file", type=Path, metavar="FILE", help=PASSPHRASE_HELP,
    )

    subcommands.add_parser(
        "list", parents=[state_options], help="print every certificate with its expiry",
        description="Print one row per certificate in the state: CAs first, then the leaves "
        "in inventory and node order. The state is only read.",
        epilog=environment,
    )

    check = subcommands.add_parser(
        "check", parents=[state_options], help="fail when a certificate expires soon",
        description="Print the certificates that expire within --days days or have expired, "
        "and exit 1 when there is any.",
        epilog=environment,
    )
    check.add_argument(
        "--days", type=non_negative_days, default=certs.DEFAULT_CHECK_DAYS, metavar="N",
        help=f"warning window in days (default: {certs.DEFAULT_CHECK_DAYS})",
    )

    renew = subcommands.add_parser(
        "renew", parents=[state_options],
        help="reissue leaf certificates and rebuild out/<cluster>/",
        description="Reissue the named leaf certificates, keep every CA, rebuild "
        "out/<cluster>/ and write renewals/<node>/ with the renewed files and an apply.sh "
        "for every running node that needs them.",
        epilog=environment,
    )
    renew.add_argument(
        "names", nargs="*", metavar="NAME",
        help="certificate to renew, such as apiserver, or NAME/NODE for one node's copy",
    )
    renew.add_argument("--all", action="store_true", help="renew every leaf certificate")
    renew.add_argument(
        "-o", "--output", type=Path, default=Path("out"), metavar="DIR",
        help="folder that receives <cluster>/ (default: ./out)",
    )


def read_password() -> str:
    """Read the password to hash: prompted twice on a terminal, else one stdin line."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat: "):
            raise InputError("the two passwords differ; nothing was printed")
        return first
    line = sys.stdin.buffer.readline().rstrip(b"\r\n")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the password is not UTF-8 text; nothing was printed") from None


def run_hash_password(args: argparse.Namespace) -> int:
    password = read_password()
    if not password:
        raise InputError("the password is empty; nothing was printed")
    print(sha512_crypt.hash(password))
    return EXIT_OK


def print_warnings(filename: str, warnings: Sequence[Problem]) -> None:
    for warning in warnings:
        print(warning.format(filename), file=sys.stderr)


def run_validate(args: argparse.Namespace) -> int:
    planned = plan_file(args.description)
    print_warnings(planned.description.filename, planned.warnings)
    cluster = planned.cluster
    roles = (f"{plural(len(cluster.control_planes), 'control plane')}, "
             f"{plural(len(cluster.workers), 'worker')}")
    print(f"{args.description}: valid; cluster {cluster.name}, "
          f"{plural(len(cluster.nodes), 'node')} ({roles}), "
          f"Kubernetes {cluster.release.kubernetes_version}")
    return EXIT_OK


def describe_api_access(cluster: Cluster) -> str:
    if cluster.endpoint is not None:
        return f"endpoint {cluster.endpoint.url}"
    return (f"no endpoint (workers use a local kube-apiserver-proxy, "
            f"admin.kubeconfig uses {cluster.admin_server_url})")


def print_summary(cluster: Cluster, target: Path) -> None:
    network = cluster.network
    print(f"cluster {cluster.name}: Kubernetes {cluster.release.kubernetes_version}, "
          f"{describe_api_access(cluster)}")
    pods = ", ".join(
        f"{pod} in /{mask} blocks (room for {block_capacity(mask, pod.prefixlen)} nodes)"
        for pod, mask in zip(network.pod_cidrs, network.node_cidr_mask_sizes, strict=True)
    )
    services = ", ".join(str(service) for service in network.service_cidrs)
    print(f"  pods {pods}, services {services} (kubernetes "
          f"{network.kubernetes_service_ip}, DNS {network.dns_service_ip})")
    listed_nodes = cluster.nodes[:SUMMARY_NODES]
    width = max(len(node.name) for node in listed_nodes)
    for node in listed_nodes:
        blocks = ",".join(str(block) for block in node.pod_cidrs) or "allocated by the cluster"
        addresses = ",".join(str(ip) for ip in node.ips)
        print(f"  {node.name:<{width}}  {node.role:<13}  {node.arch:<5}  {addresses:<15}  "
              f"pods {blocks}")
    if len(cluster.nodes) > len(listed_nodes):
        print(f"  ... and {len(cluster.nodes) - len(listed_nodes)} more nodes "
              f"({len(cluster.control_planes)} control planes in all); index.json lists every "
              "node")
    print(f"wrote {target}/: nodes/<node>/user-data, admin.kubeconfig, ca.crt, index.json")
    print(f"  {target} holds private keys: keep it out of version control")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_issued(built: StatefulBuild, state_dir: Path, encrypted: bool) -> None:
    if built.state_created:
        advice = "commit it or back it up" if encrypted else (
            "back it up and keep it out of version control"
        )
        print(f"created the state {state_dir} with {plural(len(built.issued), 'certificate')}; "
              f"it holds the cluster's CA keys: {advice}")
    elif built.issued:
        print(f"issued {plural(len(built.issued), 'certificate')} (state: {state_dir}):")
        for issuance in built.issued:
            owner = f" for {issuance.node}" if issuance.node else ""
            print(f"  {issuance.name}{owner}: {issuance.reason}")
    else:
        print(f"reused every certificate from {state_dir}")
    for warning in built.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def read_passphrase(args: argparse.Namespace) -> str | None:
    """Return the state passphrase: the file's first line, else the environment, else None.

    A passphrase never comes from the command line, where other users could read it.
    """
    path: Path | None = args.state_passphrase_file
    if path is None:
        return os.environ.get(PASSPHRASE_VARIABLE) or None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise InputError(f"cannot read the passphrase file {path}: {reason}") from None
    if not lines or not lines[0]:
        raise InputError(f"the passphrase file {path} is empty; its first line is the passphrase")
    return lines[0]


def print_bundles(target: Path, bundles: Sequence[delivery.RenewalBundle]) -> bool:
    """Print where the files for running nodes went; return False when there are none."""
    if not bundles:
        return False
    print(f"files for running nodes, which do not read their user-data again: copy each "
          f"folder to its node and run `sudo bash {delivery.APPLY_SCRIPT}` there, one node at "
          "a time")
    folders = [f"{target / delivery.RENEWALS_DIR / each.node}/" for each in bundles]
    width = max(len(folder) for folder in folders)
    for folder, bundle in zip(folders, bundles, strict=True):
        count = len(bundle.files)
        restarts = ", ".join(bundle.restarts) or "nothing"
        print(f"  {folder:<{width}}  {count} {'file' if count == 1 else 'files'}; "
              f"restarts {restarts}")
    return True


def run_build(args: argparse.Namespace) -> int:
    description = load_description(args.description)
    warnings = validate_description(description)
    print_warnings(description.filename, warnings)
    state_dir = args.state or default_state_dir(args.description)
    passphrase = read_passphrase(args)
    built = build(description, BuildOptions(
        out_dir=args.output, state_dir=state_dir, force=args.force, passphrase=passphrase,
    ))
    print_summary(built.result.cluster, built.result.target)
    print_issued(built, state_dir, passphrase is not None)
    print_bundles(built.result.target, built.bundles)
    return EXIT_OK


def load_clock() -> Clock:
    """Parse KUBECC_NOW into a fixed clock for the certs commands; without it, use the real one."""
    text = os.environ.get(NOW_VARIABLE)
    if not text:
        return utc_now
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{NOW_VARIABLE}={text!r} is not an ISO 8601 time; expected a time "
                         "such as 2027-11-20T00:00:00Z") from None
    if now.utcoffset() is None:
        raise InputError(f"{NOW_VARIABLE}={text!r} has no UTC offset; add Z or +00:00")
    return lambda: now


def load_certs_description(args: argparse.Namespace) -> tuple[Description, Path]:
    """Load and validate the description, print its warnings, and return it with the state."""
    description = load_description(args.description)
    print_warnings(description.filename, validate_description(description))
    return description, args.state or default_state_dir(args.description)


def describe_certificate(row: certs.CertificateRow) -> str:
    return f"{row.name} of node {row.node}" if row.node else row.name


def run_certs_list(args: argparse.Namespace) -> int:
    description, state_dir = load_certs_description(args)
    rows = certs.list_certificates(
        description, state_dir, load_clock(), read_passphrase(args)
    )
    for line in certs.format_certificate_table(rows):
        print(line)
    return EXIT_OK


def run_certs_check(args: argparse.Namespace) -> int:
    description, state_dir = load_certs_description(args)
    rows = certs.list_certificates(
        description, state_dir, load_clock(), read_passphrase(args)
    )
    expiring = certs.find_expiring(rows, args.days)
    if not expiring:
        first = min(rows, key=lambda row: row.remaining)
        print(f"all {len(rows)} certificates are valid for more than {args.days} days; the "
              f"first to expire is {describe_certificate(first)} on {first.not_after:%Y-%m-%d}")
        return EXIT_OK

    for line in certs.format_certificate_table(expiring):
        print(line)
    expired = sum(1 for row in expiring if row.days_left < 0)
    print(f"{len(expiring)} of {len(rows)} certificates expire within {args.days} days "
          f"({expired} already expired)")
    if any(row.signer is not None for row in expiring):
        print(f"  hint: renew the leaves with kubecc certs renew {args.description} NAME... "
              "or --all")
    if any(row.signer is None for row in expiring):
        print("  hint: kubecc cannot renew a CA, so plan a CA rotation or a new cluster before "
              "it expires")
    return EXIT_INVALID


def run_certs_renew(args: argparse.Namespace) -> int:
    description, state_dir = load_certs_description(args)
    renewal = certs.renew_certificates(
        description, args.names, args.all, args.output, state_dir, load_clock(),
        read_passphrase(args),
    )
    built = renewal.built
    target = built.result.target
    noun = "certificate" if len(built.issued) == 1 else "certificates"
    print(f"renewed {len(built.issued)} {noun} (state: {state_dir}):")
    for issuance in built.issued:
        owner = f" for {issuance.node}" if issuance.node else ""
        destination = delivery.NODELESS_DELIVERY.get(issuance.name)
        suffix = f"; {destination}" if destination else ""
        print(f"  {issuance.name}{owner}: {issuance.reason}{suffix}")
    print(f"wrote {target}/: nodes/<node>/user-data for nodes booted from now on, "
          "admin.kubeconfig, ca.crt, index.json, renewals/")
    if not print_bundles(target, renewal.bundles):
        print("no running node needs new files")
    for warning in built.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


CERTS_HANDLERS = {"list": run_certs_list, "check": run_certs_check, "renew": run_certs_renew}


def run_certs(args: argparse.Namespace) -> int:
    return CERTS_HANDLERS[args.certs_command](args)


def report(error: KubeccError, command: str) -> None:
    if isinstance(error, DescriptionError):
        count = sum(1 for problem in error.problems if problem.severity == "error")
        warnings = len(error.problems) - count
        print(error.format(), file=sys.stderr)
        also = f" and {plural(warnings, 'warning')}" if warnings else ""
        outcome = "; nothing was written" if command in ("build", "certs renew") else ""
        print(f"{error.filename}: {plural(count, 'problem')}{also}{outcome}", file=sys.stderr)
        return
    print(f"error: {error}", file=sys.stderr)
    if isinstance(error, OutputError | StateError) and error.hint:
        print(f"  hint: {error.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    if command == "certs":
        command = f"certs {args.certs_command}"
    if command == "certs renew" and not args.names and not args.all:
        parser.error("certs renew: name the certificates to renew, or pass --all")
    if command == "certs renew" and args.names and args.all:
        parser.error("certs renew: pass either certificate names or --all, not both")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="kubecc: %(levelname)s: %(message)s",
    )
    handlers = {
        "validate": run_validate, "build": run_build, "hash-password": run_hash_password,
        "certs": run_certs,
    }
    try:
        return handlers[args.command](args)
    except KubeccError as error:
        report(error, command)
        return error.exit_code
    except KeyboardInterrupt:
        # The writer swaps the output folder in one step, so either build may be in place.
        print("interrupted; the output folder holds either the previous build or the "
              "complete new one", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:
        print(f"internal error: {type(error).__name__}: {error}", file=sys.stderr)
        print("  hint: this is a kubecc bug; rerun with -v and report it with the "
              "description (remove secrets first)", file=sys.stderr)
        return EXIT_INTERNAL
