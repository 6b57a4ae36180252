"""Load, check, lock and write the state directory: every key, certificate and allocation.

The state sits apart from `out/` (default `<description stem>.state/` beside the description).
It contains `state.json` (0600) with a format version and a checksum, a `.gitignore` that keeps
the whole folder out of git, and the `.lock` file that `flock` takes while a build runs. The
folder is 0700. kubecc never regenerates a CA that the state lacks or cannot read: it stops
and names the file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from compiler import faults
from compiler.errors import StateError
from compiler.model import Cluster
from compiler.pki.bundle import IssuedCert, KeyPair, PkiBundle

FORMAT_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
GITIGNORE = ".gitignore"
GITIGNORE_TEXT = "# Written by kubecc: this folder holds private keys. Never commit it.\n*\n"
# An encrypted state may be committed; only the lock and temporary files stay out of git.
ENCRYPTED_GITIGNORE_TEXT = (
    "# Written by kubecc: the state is encrypted and may be committed.\n.lock\n.*.tmp\n"
)
# scrypt parameters (RFC 7914): N = 2**15 costs about 32 MiB and a tenth of a second here.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32  # AES-256-GCM
NONCE_BYTES = 12
CertKey = tuple[str, str | None]
PASSPHRASE_VARIABLE = "KUBECC_STATE_PASSPHRASE"
# A 5,000-node state is about 35 MB; anything far larger is not a kubecc state.
MAX_STATE_BYTES = 256 * 1024 * 1024


@dataclass
class State:
    """Everything a build reuses from the previous one."""

    cluster_name: str
    certificates: dict[CertKey, IssuedCert] = field(default_factory=dict)
    service_account: KeyPair | None = None
    pod_blocks: dict[str, list[str]] = field(default_factory=dict)
    # etcd member name -> (--initial-cluster, --initial-cluster-state) it was created with.
    etcd_members: dict[str, tuple[str, str]] = field(default_factory=dict)

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
        "etcdMembers": {
            name: {"initialCluster": initial_cluster, "initialClusterState": initial_state}
            for name, (initial_cluster, initial_state) in sorted(state.etcd_members.items())
        },
    }
    document = {
        "formatVersion": FORMAT_VERSION,
        "checksum": payload_checksum(payload),
        "payload": payload,
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode())


def encrypt_state(plaintext: bytes, passphrase: str) -> bytes:
    """Encrypt state bytes with a key derived from the passphrase (scrypt, AES-256-GCM)."""
    salt, nonce = os.urandom(16), os.urandom(NONCE_BYTES)
    header = {
        "cipher": "AES-256-GCM", "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode(),
    }
    key = derive_key(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    # The header is authenticated too, so a lowered scrypt cost fails decryption.
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, canonical_json(header))
    document = {
        "formatVersion": FORMAT_VERSION,
        "encryption": header,
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def decrypt_state(path: Path, document: dict[str, Any], passphrase: str | None) -> bytes:
    if passphrase is None:
        raise StateError(path, "is encrypted",
                         f"set {PASSPHRASE_VARIABLE} or pass --state-passphrase-file")
    try:
        header = document["encryption"]
        if not (int(header["n"]) <= SCRYPT_N and int(header["r"]) <= SCRYPT_R
                and int(header["p"]) <= SCRYPT_P):
            # kubecc never writes higher costs, and a planted header must not exhaust memory.
            raise StateError(path, "has encryption parameters that kubecc never writes",
                             "restore the file from your backup")
        key = derive_key(
            passphrase, base64.b64decode(header["salt"]), int(header["n"]), int(header["r"]),
            int(header["p"]),
        )
        return AESGCM(key).decrypt(
            base64.b64decode(header["nonce"]), base64.b64decode(document["ciphertext"]),
            canonical_json(header),
        )
    except InvalidTag:
        raise StateError(path, "cannot be decrypted: the passphrase is wrong or the file was "
                         "changed", "check the passphrase; nothing was changed") from None
    except (KeyError, TypeError, ValueError):
        raise StateError(path, "has a damaged encryption header",
                         "restore the file from your backup") from None


def state_file(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path, cluster_name: str, passphrase: str | None = None) -> State:
    """Load the state of a directory; an absent directory or file is an empty state."""
    path = state_file(directory)
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise StateError(path, f"is larger than {MAX_STATE_BYTES} bytes",
                             "restore the file from your backup")
        raw = path.read_bytes()
    except FileNotFoundError:
        return State(cluster_name=cluster_name)
    except OSError as error:
        raise StateError(path, f"cannot be read: {error.strerror or error}",
                         "make it a readable file, or restore it from your backup") from None
    return decode_state(path, read_plaintext(path, raw, passphrase), cluster_name)


DAMAGED_HINT = "restore the file from your backup; kubecc never makes new CAs for an existing state"


def parse_document(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateError(path, "is not valid JSON (truncated or damaged)", DAMAGED_HINT) from None
    if not isinstance(document, dict) or not isinstance(document.get("formatVersion"), int):
        raise StateError(path, "is not a kubecc state file (no formatVersion)", DAMAGED_HINT)
    return document


def read_plaintext(path: Path, raw: bytes, passphrase: str | None) -> bytes:
    """Return the unencrypted state bytes of a file, decrypting it when it is encrypted."""
    document = parse_document(path, raw)
    if "encryption" not in document:
        return raw
    if document["formatVersion"] > FORMAT_VERSION:
        return raw  # decode_state names the newer format
    return decrypt_state(path, document, passphrase)


def decode_state(path: Path, raw: bytes, cluster_name: str) -> State:
    """Parse and check state bytes; every problem names the file and what to do."""
    damaged = DAMAGED_HINT
    document = parse_document(path, raw)
    if document["formatVersion"] > FORMAT_VERSION:
        raise StateError(
            path, f"was written by a newer kubecc (format {document['formatVersion']}; this "
            f"kubecc reads format {FORMAT_VERSION})", "upgrade kubecc; nothing was changed",
        )
    if document["formatVersion"] != FORMAT_VERSION:
        raise StateError(path, f"has the unknown format {document['formatVersion']!r}", damaged)
    payload = document.get("payload")
    if not isinstance(payload, dict) or document.get("checksum") != payload_checksum(payload):
        raise StateError(path, "does not match its checksum (edited or damaged)", damaged)
    if payload.get("cluster") != cluster_name:
        raise StateError(
            path, f"belongs to cluster {payload.get('cluster')!r}, not {cluster_name!r}",
            "pass the state of this cluster with --state, or a new folder for a new cluster",
        )
    try:
        return decode_payload(path, payload, cluster_name)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise StateError(path, "has entries of the wrong shape", damaged) from None


def decode_payload(path: Path, payload: dict[str, Any], cluster_name: str) -> State:
    for blocks in payload.get("allocations", {}).get("podBlocks", {}).values():
        for block in blocks:
            ipaddress.ip_network(block)  # ValueError for a damaged entry
    return State(
        cluster_name=cluster_name,
        certificates=dict(decode_certificates(path, payload.get("certificates", []))),
        service_account=decode_service_account(path, payload.get("serviceAccount")),
        pod_blocks={
            str(node): [str(block) for block in blocks]
            for node, blocks in payload.get("allocations", {}).get("podBlocks", {}).items()
        },
        etcd_members={
            str(name): (str(member["initialCluster"]), str(member["initialClusterState"]))
            for name, member in payload.get("etcdMembers", {}).items()
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
        key = serialization.load_pem_private_key(entry["privateKey"].encode(), None)
        public = serialization.load_pem_public_key(entry["publicKey"].encode())
    except (ValueError, KeyError, TypeError):
        raise StateError(path, "has an unreadable service-account key",
                         "restore the file from your backup") from None
    public_bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or (
        public_der(key) != public_bytes
    ):
        raise StateError(path, "has a service-account public key that does not match its "
                         "private key", "restore the file from your backup")
    return KeyPair(
        private_key_pem=entry["privateKey"].encode(), public_key_pem=entry["publicKey"].encode()
    )


def state_from_build(cluster: Cluster, pki: PkiBundle) -> State:
    """Build the state that records what a build issued and allocated."""
    return State(
        cluster_name=cluster.name,
        certificates=dict(pki.certs),
        service_account=pki.service_account,
        pod_blocks={node.name: [str(block) for block in node.pod_cidrs] for node in cluster.nodes},
        etcd_members={
            member.name: (member.initial_cluster, member.initial_state)
            for member in cluster.etcd_members
        },
    )


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on the state folder; the kernel releases it if kubecc dies."""
    if directory.exists() and not directory.is_dir():
        raise StateError(directory, "is not a folder", "pass a folder with --state")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StateError(directory, f"cannot be created: {error.strerror or error}",
                         "choose a writable place with --state") from None
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
        # The .gitignore is written only after the flock is taken (here, and by write_state,
        # which builds call under this lock), so concurrent first builds cannot race on it.
        ensure_directory(directory)
        yield
    finally:
        os.close(fd)


def ensure_directory(directory: Path, encrypted: bool | None = None) -> None:
    """Create the state folder (0700) and keep kubecc's .gitignore in line with encryption.

    `encrypted` None leaves an existing .gitignore alone. A .gitignore that kubecc did not
    write is never changed.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ignore = directory / GITIGNORE
        expected_text = ENCRYPTED_GITIGNORE_TEXT if encrypted else GITIGNORE_TEXT
        current = ignore.read_text() if ignore.exists() else None
        ours = current in (None, GITIGNORE_TEXT, ENCRYPTED_GITIGNORE_TEXT)
        if ours and current != expected_text and (encrypted is not None or current is None):
            write_file_atomically(ignore, expected_text.encode(), 0o644)
    except OSError as error:
        raise StateError(directory, f"cannot be created: {error.strerror or error}",
                         "choose a writable place with --state") from None


def write_file_atomically(path: Path, content: bytes, mode: int) -> None:
    """Write a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    # A leftover (or planted) temporary file is removed, not followed: O_EXCL and O_NOFOLLOW
    # keep a symbolic link there from sending the keys elsewhere.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
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


def write_state(directory: Path, state: State, passphrase: str | None = None) -> bool:
    """Write the state if it changed; return True when the file was replaced.

    With a passphrase the file is encrypted. An unchanged state is not rewritten, so an
    encrypted state committed to git stays byte-identical across rebuilds.
    """
    ensure_directory(directory, encrypted=passphrase is not None)
    path = state_file(directory)
    plaintext = encode_state(state)
    try:
        raw = path.read_bytes()
        was_encrypted = "encryption" in parse_document(path, raw)
        if was_encrypted == (passphrase is not None) and (
            read_plaintext(path, raw, passphrase) == plaintext
        ):
            os.chmod(path, 0o600)  # a state someone made readable is private again
            return False
    except FileNotFoundError:
        pass
    content = plaintext if passphrase is None else encrypt_state(plaintext, passphrase)
    try:
        write_file_atomically(path, content, 0o600)
    except OSError as error:
        raise StateError(path, f"cannot be written: {error.strerror or error}; the previous "
                         "state is unchanged", "check free space and permissions") from None
    return True
