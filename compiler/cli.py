"""Command line: the only place that prints errors and chooses exit codes.

Exit codes: 0 success, 1 invalid input or a failed check, 2 usage error, 3 internal error.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from passlib.hash import sha512_crypt

from compiler import __version__
from compiler.build import BuildOptions, StatefulBuild, build
from compiler.errors import (
    DescriptionError,
    InputError,
    KubeccError,
    OutputError,
    Problem,
    StateError,
)
from compiler.loader import load_description
from compiler.model import Cluster
from compiler.network_checks import block_capacity
from compiler.pipeline import plan_file, validate_description
from compiler.state import default_state_dir

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


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
    build.add_argument(
        "--state", type=Path, metavar="DIR",
        help="state folder with the cluster's keys, certificates and allocations "
        "(default: <description stem>.state/ beside the description)",
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
    return parser


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
    print(f"{args.description}: valid; cluster {cluster.name}, {len(cluster.nodes)} nodes "
          f"({len(cluster.control_planes)} control plane, {len(cluster.workers)} worker), "
          f"Kubernetes {cluster.release.kubernetes_version}")
    return EXIT_OK


def print_summary(cluster: Cluster, target: Path) -> None:
    network = cluster.network
    print(f"cluster {cluster.name}: Kubernetes {cluster.release.kubernetes_version}, "
          f"endpoint {cluster.endpoint.url}")
    capacity = block_capacity(network.node_cidr_mask_size, network.pod_cidr.prefixlen)
    print(f"  pods {network.pod_cidr} in /{network.node_cidr_mask_size} blocks (room for "
          f"{capacity} nodes), services {network.service_cidr} (kubernetes "
          f"{network.kubernetes_service_ip}, DNS {network.dns_service_ip})")
    width = max(len(node.name) for node in cluster.nodes)
    for node in cluster.nodes:
        block = str(node.pod_cidr) if node.pod_cidr else "allocated by the cluster"
        print(f"  {node.name:<{width}}  {node.role:<13}  {node.arch:<5}  {node.ip!s:<15}  "
              f"pods {block}")
    print(f"wrote {target}/: nodes/<node>/user-data, admin.kubeconfig, ca.crt, index.json")
    print(f"  {target} holds private keys: keep it out of version control")


def print_issued(built: StatefulBuild, state_dir: Path) -> None:
    if built.state_created:
        print(f"created the state {state_dir} with {len(built.issued)} certificates; it holds "
              "the cluster's CA keys: back it up and keep it out of version control")
    elif built.issued:
        print(f"issued {len(built.issued)} certificates (state: {state_dir}):")
        for issuance in built.issued:
            owner = f" for {issuance.node}" if issuance.node else ""
            print(f"  {issuance.name}{owner}: {issuance.reason}")
    else:
        print(f"reused every certificate from {state_dir}")
    for warning in built.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def run_build(args: argparse.Namespace) -> int:
    description = load_description(args.description)
    warnings = validate_description(description)
    print_warnings(description.filename, warnings)
    state_dir = args.state or default_state_dir(args.description)
    built = build(description, BuildOptions(
        out_dir=args.output, state_dir=state_dir, force=args.force,
    ))
    print_summary(built.result.cluster, built.result.target)
    print_issued(built, state_dir)
    return EXIT_OK


def report(error: KubeccError, command: str) -> None:
    if isinstance(error, DescriptionError):
        count = sum(1 for problem in error.problems if problem.severity == "error")
        print(error.format(), file=sys.stderr)
        noun = "problem" if count == 1 else "problems"
        outcome = "; nothing was written" if command == "build" else ""
        print(f"{error.filename}: {count} {noun}{outcome}", file=sys.stderr)
        return
    print(f"error: {error}", file=sys.stderr)
    if isinstance(error, OutputError | StateError) and error.hint:
        print(f"  hint: {error.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="kubecc: %(levelname)s: %(message)s",
    )
    handlers = {
        "validate": run_validate, "build": run_build, "hash-password": run_hash_password,
    }
    try:
        return handlers[args.command](args)
    except KubeccError as error:
        report(error, args.command)
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
