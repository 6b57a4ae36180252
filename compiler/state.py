"""Load, check, lock and write the state directory: every key, certificate and allocation.

The state sits apart from `out/` (default `<description stem>.state/` beside the description).
It holds `state.json` (0600) with a format version and a checksum, a `.gitignore` that keeps
the whole folder out of git, and the `.lock` file that `flock` takes while a build runs. The
folder is 0700. kubecc never regenerates a CA that the state lacks or cannot read: it stops
and names the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from compiler import faults
from compiler.errors import StateError
from compiler.pki.bundle import IssuedCert, KeyPair, PkiBundle

FORMAT_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
GITIGNORE = ".gitignore"
GITIGNORE_TEXT = "# Written by kubecc: this folder holds private keys. Never commit it.\n*\n"
CertKey = tuple[str, str | None]


@dataclass
class State:
    """Everything a build reuses from the previous one."""

    cluster_name: str
    certificates: dict[CertKey, IssuedCert] = field(default_factory=dict)
    service_account: KeyPair | None = None
    pod_blocks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.certificates and self.service_account is None


def default_state_dir(description: Path) -> Path:
    """Return `<stem>.state/` beside the description."""
    return description.with_name(f"{description.stem}.state")


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def payload_checksum(payload: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()


def encode_state(state: State) -> bytes:
    """Serialise a state deterministically: same state, same bytes."""
    certificates = [
        {
            "name": name,
            "node": node,
            "certificate": issued.cert_pem.decode(),
            "privateKey": issued.key_pem.decode(),
        }
        for (name, node), issued in sorted(
            state.certificates.items(), key=lambda item: (item[0][0], item[0][1] or "")
        )
    ]
    payload: dict[str, Any] = {
        "cluster": state.cluster_name,
        "certificates": certificates,
        "serviceAccount": None if state.service_account is None else {
            "privateKey": state.service_account.private_key_pem.decode(),
            "publicKey": state.service_account.public_key_pem.decode(),
        },
        "allocations": {"podBlocks": dict(sorted(state.pod_blocks.items()))},
    }
    document = {
        "formatVersion": FORMAT_VERSION,
        "checksum": payload_checksum(payload),
        "payload": payload,
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def state_file(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path, cluster_name: str) -> State:
    """Load the state of a directory; an absent directory or file is an empty state."""
    path = state_file(directory)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return State(cluster_name=cluster_name)
    except OSError as error:
        raise StateError(path, f"cannot read it: {error.strerror or error}",
                         "check the permissions of the state folder") from None
    return decode_state(path, raw, cluster_name)


def decode_state(path: Path, raw: bytes, cluster_name: str) -> State:
    """Parse and check state bytes; every problem names the file and what to do."""
    damaged = "restore the file from your backup; kubecc never makes new CAs for an existing state"
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StateError(path, "is not valid JSON (truncated or damaged)", damaged) from None
    if not isinstance(document, dict) or not isinstance(document.get("formatVersion"), int):
        raise StateError(path, "is not a kubecc state file (no formatVersion)", damaged)
    if document["formatVersion"] > FORMAT_VERSION:
        raise StateError(
            path, f"was written by a newer kubecc (format {document['formatVersion']}; this "
            f"kubecc reads format {FORMAT_VERSION})", "upgrade kubecc; nothing was changed",
        )
    payload = document.get("payload")
    if not isinstance(payload, dict) or document.get("checksum") != payload_checksum(payload):
        raise StateError(path, "does not match its checksum (edited or damaged)", damaged)
    if payload.get("cluster") != cluster_name:
        raise StateError(
            path, f"belongs to cluster {payload.get('cluster')!r}, not {cluster_name!r}",
            "pass the state of this cluster with --state, or a new folder for a new cluster",
        )
    return State(
        cluster_name=cluster_name,
        certificates=dict(decode_certificates(path, payload.get("certificates", []))),
        service_account=decode_service_account(path, payload.get("serviceAccount")),
        pod_blocks={
            str(node): [str(block) for block in blocks]
            for node, blocks in payload.get("allocations", {}).get("podBlocks", {}).items()
        },
    )


def decode_certificates(
    path: Path, entries: list[dict[str, Any]]
) -> Iterator[tuple[CertKey, IssuedCert]]:
    for entry in entries:
        name, node = entry["name"], entry.get("node")
        where = f"certificate {name}" + (f" of node {node}" if node else "")
        try:
            certificate = x509.load_pem_x509_certificate(entry["certificate"].encode())
            key = serialization.load_pem_private_key(entry["privateKey"].encode(), None)
        except (ValueError, KeyError, TypeError):
            raise StateError(path, f"has an unreadable {where}",
                             "restore the file from your backup") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or (
            public_der(key) != certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ):
            raise StateError(path, f"has a {where} whose private key does not match it",
                             "restore the file from your backup")
        yield (name, node), IssuedCert(
            name=name, node=node, certificate=certificate, private_key=key,
            cert_pem=entry["certificate"].encode(), key_pem=entry["privateKey"].encode(),
        )


def public_der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def decode_service_account(path: Path, entry: dict[str, str] | None) -> KeyPair | None:
    if entry is None:
        return None
    try:
        serialization.load_pem_private_key(entry["privateKey"].encode(), None)
    except (ValueError, KeyError, TypeError):
        raise StateError(path, "has an unreadable service-account key",
                         "restore the file from your backup") from None
    return KeyPair(
        private_key_pem=entry["privateKey"].encode(), public_key_pem=entry["publicKey"].encode()
    )


def state_from_bundle(cluster_name: str, pki: PkiBundle, pod_blocks: dict[str, list[str]]) -> State:
    return State(
        cluster_name=cluster_name,
        certificates=dict(pki.certs),
        service_account=pki.service_account,
        pod_blocks=pod_blocks,
    )


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on the state folder; the kernel releases it if kubecc dies."""
    ensure_directory(directory)
    lock_path = directory / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(
                    directory, "is in use by another kubecc command",
                    "wait for it to finish; a killed kubecc releases the lock at once",
                ) from None
            raise
        yield
    finally:
        os.close(fd)


def ensure_directory(directory: Path) -> None:
    """Create the state folder (0700) with its .gitignore."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ignore = directory / GITIGNORE
        if not ignore.exists():
            write_file_atomically(ignore, GITIGNORE_TEXT.encode(), 0o644)
    except OSError as error:
        raise StateError(directory, f"cannot be created: {error.strerror or error}",
                         "choose a writable place with --state") from None


def write_file_atomically(path: Path, content: bytes, mode: int) -> None:
    """Write a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(content)
        while view:
            faults.checkpoint("state-write")
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)
        faults.checkpoint("state-fsync")
        os.fsync(fd)
    finally:
        os.close(fd)
    faults.checkpoint("state-rename")
    os.rename(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_state(directory: Path, state: State) -> bool:
    """Write the state if it changed; return True when the file was replaced."""
    ensure_directory(directory)
    path = state_file(directory)
    content = encode_state(state)
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    try:
        write_file_atomically(path, content, 0o600)
    except OSError as error:
        raise StateError(path, f"cannot be written: {error.strerror or error}; the previous "
                         "state is unchanged", "check free space and permissions") from None
    return True
