"""kubectl 1.33 as a real client of every kubeconfig that a build writes.

Each kubeconfig is decoded from the built output: out's admin.kubeconfig and the write_files of
each node's user-data. A fake API server, a small HTTPS server on 127.0.0.1, takes the place of
the control plane at the kubeconfig's server address. It serves that control plane's generated
apiserver certificate, requires a client certificate signed by the generated cluster CA, and
records the CN and O of each client. kubectl dials the loopback port with `tls-server-name` set to the
original host, so the CA data, the client certificate and key, and the server's SANs are
checked as they would be on a real cluster.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from compiler.build import build_output_files
from compiler.output import OutputFile
from tests.conftest import EXAMPLES, example_cluster

KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"
KUBECTL_MISSING = (
    f"{KUBECTL} is missing, and these tests need a real kubectl 1.33 client. Install the "
    "'kubectl' package from Google Cloud's apt repository (https://packages.cloud.google.com/apt, "
    "suite cloud-sdk), which ships kubectl.1.27 to kubectl.1.33 in /usr/lib/google-cloud-sdk/bin, "
    "or download https://dl.k8s.io/release/v1.33.1/bin/linux/amd64/kubectl to that path and "
    "make it executable."
)
# Wall-clock limit for one kubectl run. kubectl itself gives up after --request-timeout=5s.
KUBECTL_TIMEOUT_SECONDS = 30
# Socket timeout of the fake API server for the TLS handshake and each read.
SERVER_TIMEOUT_SECONDS = 10
# /version body of the fake API server, in the shape of version.Info from k8s.io/apimachinery.
SERVER_VERSION = {
    "major": "1", "minor": "36", "gitVersion": "v1.36.4", "gitCommit": "", "gitTreeState": "",
    "buildDate": "", "goVersion": "", "compiler": "gc", "platform": "linux/amd64",
}

APISERVER_CERT = "/etc/kubernetes/pki/apiserver.crt"
APISERVER_KEY = "/etc/kubernetes/pki/apiserver.key"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
KUBELET_CLIENT_CURRENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
KUBELET_CLIENT_INITIAL = "/var/lib/kubelet/pki/kubelet-client-kubecc.pem"
FIRST_BOOT_SCRIPT = "/usr/local/lib/kubecc/first-boot.sh"
# Symlinks that the first-boot script creates, because cloud-init's write_files cannot create
# them. Each maps the link path to the file that write_files writes.
FIRST_BOOT_LINKS = {KUBELET_CLIENT_CURRENT: KUBELET_CLIENT_INITIAL}

Identity = tuple[str, tuple[str, ...]]  # (client CN, client O values)
Expectation = tuple[str, str, tuple[str, ...]]  # (server URL, client CN, client O values)

HARD_WAY_SERVER = "https://10.240.0.10:6443"
HA_CP_1 = "https://10.0.1.10:6443"
HA_CP_2 = "https://10.0.1.11:6443"
HA_CP_3 = "https://10.0.1.12:6443"
HA_ENDPOINT = "https://lb.example.internal:6443"
NODE = ("system:nodes",)

# example -> artifact -> (server, client CN, client O). An artifact is "admin.kubeconfig" in out/
# or "nodes/<node>/user-data: <path>" for a file in that node's write_files.
EXPECTED: dict[str, dict[str, Expectation]] = {
    "hard-way": {
        "admin.kubeconfig": (HARD_WAY_SERVER, "kubernetes-admin", ("kubecc:cluster-admins",)),
        "nodes/server/user-data: /etc/kubernetes/bootstrap-admin.conf": (HARD_WAY_SERVER, "kubecc:bootstrap", ("system:masters",)),
        "nodes/server/user-data: /etc/kubernetes/controller-manager.conf": (HARD_WAY_SERVER, "system:kube-controller-manager", ()),
        "nodes/server/user-data: /etc/kubernetes/kubelet.conf": (HARD_WAY_SERVER, "system:node:server", NODE),
        "nodes/server/user-data: /etc/kubernetes/scheduler.conf": (HARD_WAY_SERVER, "system:kube-scheduler", ()),
        "nodes/server/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HARD_WAY_SERVER, "system:kube-proxy", ()),
        "nodes/node-0/user-data: /etc/kubernetes/kubelet.conf": (HARD_WAY_SERVER, "system:node:node-0", NODE),
        "nodes/node-0/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HARD_WAY_SERVER, "system:kube-proxy", ()),
        "nodes/node-1/user-data: /etc/kubernetes/kubelet.conf": (HARD_WAY_SERVER, "system:node:node-1", NODE),
        "nodes/node-1/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HARD_WAY_SERVER, "system:kube-proxy", ()),
    },
    "ha": {
        "admin.kubeconfig": (HA_ENDPOINT, "kubernetes-admin", ("kubecc:cluster-admins",)),
        "nodes/cp-1/user-data: /etc/kubernetes/bootstrap-admin.conf": (HA_CP_1, "kubecc:bootstrap", ("system:masters",)),
        "nodes/cp-1/user-data: /etc/kubernetes/controller-manager.conf": (HA_CP_1, "system:kube-controller-manager", ()),
        "nodes/cp-1/user-data: /etc/kubernetes/kubelet.conf": (HA_CP_1, "system:node:cp-1", NODE),
        "nodes/cp-1/user-data: /etc/kubernetes/scheduler.conf": (HA_CP_1, "system:kube-scheduler", ()),
        "nodes/cp-1/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_CP_1, "system:kube-proxy", ()),
        "nodes/cp-2/user-data: /etc/kubernetes/controller-manager.conf": (HA_CP_2, "system:kube-controller-manager", ()),
        "nodes/cp-2/user-data: /etc/kubernetes/kubelet.conf": (HA_CP_2, "system:node:cp-2", NODE),
        "nodes/cp-2/user-data: /etc/kubernetes/scheduler.conf": (HA_CP_2, "system:kube-scheduler", ()),
        "nodes/cp-2/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_CP_2, "system:kube-proxy", ()),
        "nodes/cp-3/user-data: /etc/kubernetes/controller-manager.conf": (HA_CP_3, "system:kube-controller-manager", ()),
        "nodes/cp-3/user-data: /etc/kubernetes/kubelet.conf": (HA_CP_3, "system:node:cp-3", NODE),
        "nodes/cp-3/user-data: /etc/kubernetes/scheduler.conf": (HA_CP_3, "system:kube-scheduler", ()),
        "nodes/cp-3/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_CP_3, "system:kube-proxy", ()),
        "nodes/worker-1/user-data: /etc/kubernetes/kubelet.conf": (HA_ENDPOINT, "system:node:worker-1", NODE),
        "nodes/worker-1/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_ENDPOINT, "system:kube-proxy", ()),
        "nodes/worker-2/user-data: /etc/kubernetes/kubelet.conf": (HA_ENDPOINT, "system:node:worker-2", NODE),
        "nodes/worker-2/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_ENDPOINT, "system:kube-proxy", ()),
        "nodes/worker-3/user-data: /etc/kubernetes/kubelet.conf": (HA_ENDPOINT, "system:node:worker-3", NODE),
        "nodes/worker-3/user-data: /var/lib/kube-proxy/kubeconfig.conf": (HA_ENDPOINT, "system:kube-proxy", ()),
    },
}

CASES = [(example, artifact) for example, table in EXPECTED.items() for artifact in table]
CASE_IDS = [
    f"{example}:{artifact.replace('nodes/', '').replace('/user-data: ', ':')}"
    for example, artifact in CASES
]


def require_kubectl() -> str:
    """Return the kubectl path, or fail the test with how to install it."""
    if not os.access(KUBECTL, os.X_OK):
        pytest.fail(KUBECTL_MISSING, pytrace=False)
    return KUBECTL


# ---------------------------------------------------------------------------------------------
# The built output, decoded as a node and an operator would read it


@cache
def built(example: str) -> dict[str, OutputFile]:
    return build_output_files(example_cluster(example))


@cache
def built_again(example: str) -> dict[str, OutputFile]:
    """Build the example a second time, which issues a new CA and new keys."""
    return build_output_files(example_cluster(example))


@cache
def node_files(example: str, node: str, again: bool = False) -> dict[str, bytes]:
    """Return path -> content of every file in the node's user-data write_files."""
    files = built_again(example) if again else built(example)
    document = yaml.safe_load(files[f"nodes/{node}/user-data"].content)
    contents = {}
    for entry in document["write_files"]:
        assert "encoding" not in entry, (
            f"nodes/{node}/user-data: {entry['path']} has encoding {entry['encoding']}, "
            "which this test does not decode"
        )
        contents[entry["path"]] = entry["content"].encode()
    return contents


def parse_kubeconfig(content: bytes) -> dict[str, Any] | None:
    """Return the document if the content is a kubeconfig (kind: Config), else None."""
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError:
        return None
    if isinstance(document, dict) and document.get("kind") == "Config":
        return document
    return None


@dataclass(frozen=True)
class Kubeconfig:
    """One generated kubeconfig and the node whose write_files contain it (None for out/)."""

    artifact: str
    document: dict[str, Any]
    node: str | None


@dataclass(frozen=True)
class Topology:
    """The description's endpoint host and the address of each control plane, by node name."""

    endpoint_host: str
    control_planes: dict[str, str]
    nodes: tuple[str, ...]


@cache
def read_topology(example: str) -> Topology:
    """Read the cluster description itself, so that the compiler's model is not trusted here."""
    description = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    spec = description["spec"]
    return Topology(
        endpoint_host=spec["controlPlane"]["endpoint"]["host"],
        control_planes={
            node["name"]: node["ip"] for node in spec["nodes"] if node["role"] == "control-plane"
        },
        nodes=tuple(node["name"] for node in spec["nodes"]),
    )


@cache
def list_kubeconfigs(example: str, again: bool = False) -> dict[str, Kubeconfig]:
    """Return every kubeconfig in the built output by artifact name.

    The result is cached and shared, so callers copy a document before they change it.
    """
    files = built_again(example) if again else built(example)
    found = {"admin.kubeconfig": Kubeconfig(
        "admin.kubeconfig", yaml.safe_load(files["admin.kubeconfig"].content), None
    )}
    for node in read_topology(example).nodes:
        for path, content in sorted(node_files(example, node, again).items()):
            document = parse_kubeconfig(content)
            if document is not None:
                artifact = f"nodes/{node}/user-data: {path}"
                found[artifact] = Kubeconfig(artifact, document, node)
    return found


def current_cluster(document: dict[str, Any]) -> dict[str, Any]:
    """Return the `cluster` mapping that the current context uses."""
    (context,) = [c["context"] for c in document["contexts"] if c["name"] == document["current-context"]]
    (cluster,) = [c["cluster"] for c in document["clusters"] if c["name"] == context["cluster"]]
    return cluster


def current_user(document: dict[str, Any]) -> dict[str, Any]:
    """Return the `user` mapping that the current context uses."""
    (context,) = [c["context"] for c in document["contexts"] if c["name"] == document["current-context"]]
    (user,) = [u["user"] for u in document["users"] if u["name"] == context["user"]]
    return user


def server_url(kubeconfig: Kubeconfig) -> str:
    url: str = current_cluster(kubeconfig.document)["server"]
    return url


def answering_control_planes(example: str, host: str) -> list[str]:
    """Return the control planes whose API server a client dialing `host` reaches.

    An endpoint host that is no control plane's address is a load balancer in front of every
    control plane. A control plane's own address reaches only that node.
    """
    topology = read_topology(example)
    by_address = [name for name, ip in topology.control_planes.items() if ip == host]
    if by_address:
        return by_address
    if host == topology.endpoint_host:
        return sorted(topology.control_planes)
    return []


def localize_files(kubeconfig: Kubeconfig, example: str, work: Path) -> dict[str, Any]:
    """Copy the kubeconfig and replace each file path in it with a local copy of that file.

    A path is looked up in the node's write_files after following FIRST_BOOT_LINKS.
    """
    document = copy.deepcopy(kubeconfig.document)
    user = current_user(document)
    cluster = current_cluster(document)
    for fields, field in ((user, "client-certificate"), (user, "client-key"),
                          (cluster, "certificate-authority")):
        if field not in fields:
            continue
        assert kubeconfig.node is not None, f"{kubeconfig.artifact}: {field} names a file"
        path = fields[field]
        written = FIRST_BOOT_LINKS.get(path, path)
        files = node_files(example, kubeconfig.node)
        assert written in files, (
            f"{kubeconfig.artifact}: {field} names {path}, which the node's user-data does not write"
        )
        local = work / f"{kubeconfig.node}-{Path(written).name}"
        local.write_bytes(files[written])
        fields[field] = str(local)
    return document


# ---------------------------------------------------------------------------------------------
# Fake API server


def read_identity(der: bytes) -> Identity:
    subject = x509.load_der_x509_certificate(der).subject
    common_names = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    organizations = tuple(
        str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    )
    return ",".join(common_names), organizations


class FakeApiHandler(http.server.BaseHTTPRequestHandler):
    """Request handler that serves /healthz ("ok") and /version and records each client."""

    server: FakeApiServer
    timeout = SERVER_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        # The listening socket defers the TLS handshake to this connection's own thread, so a
        # client that stalls or fails the handshake cannot block the accept loop.
        self.request.do_handshake()

    def do_GET(self) -> None:
        self.server.record(read_identity(self.request.getpeercert(binary_form=True)))
        # kubectl appends ?timeout=5s from --request-timeout.
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.send_body(200, "text/plain", b"ok")
        elif path == "/version":
            self.send_body(200, "application/json", json.dumps(SERVER_VERSION).encode())
        else:
            self.send_body(404, "text/plain", b"not found")

    def send_body(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeApiServer(http.server.ThreadingHTTPServer):
    """HTTPS on a free 127.0.0.1 port with one apiserver certificate, client certificates required."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), FakeApiHandler)
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        self.lock = threading.Lock()
        self.identities: list[Identity] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def record(self, identity: Identity) -> None:
        with self.lock:
            self.identities.append(identity)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The negative tests expect failed handshakes, so the errors are stored for failure
        # messages instead of printed to stderr.
        with self.lock:
            self.errors.append(repr(sys.exc_info()[1]))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=SERVER_TIMEOUT_SECONDS)


class FakeApiServers:
    """One fake API server per (CA, apiserver certificate), started on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.servers: dict[tuple[bytes, bytes], FakeApiServer] = {}

    def serve(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> FakeApiServer:
        key = (ca_pem, cert_pem)
        if key not in self.servers:
            folder = self.folder / f"server-{len(self.servers)}"
            folder.mkdir()
            (folder / "ca.crt").write_bytes(ca_pem)
            (folder / "tls.crt").write_bytes(cert_pem)
            (folder / "tls.key").write_bytes(key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
            context.load_verify_locations(folder / "ca.crt")
            context.verify_mode = ssl.CERT_REQUIRED
            self.servers[key] = FakeApiServer(context)
        return self.servers[key]

    def serve_control_plane(self, example: str, node: str) -> FakeApiServer:
        """Serve the node's apiserver certificate from its user-data, trusting out's ca.crt."""
        files = node_files(example, node)
        return self.serve(built(example)["ca.crt"].content, files[APISERVER_CERT], files[APISERVER_KEY])

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def api_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApiServers]:
    servers = FakeApiServers(tmp_path_factory.mktemp("fake-api-servers"))
    try:
        yield servers
    finally:
        servers.stop_all()


@dataclass(frozen=True)
class KubectlRun:
    returncode: int
    stdout: str
    stderr: str
    identities: list[Identity]  # clients that the server saw during this run
    server_errors: list[str]  # connections that the server dropped during this run


def run_kubectl(
    kubectl: str, document: dict[str, Any], server: FakeApiServer, work: Path
) -> KubectlRun:
    """Run `kubectl get --raw /healthz` at the fake API server, keeping the original TLS name."""
    document = copy.deepcopy(document)
    cluster = current_cluster(document)
    cluster["tls-server-name"] = urlsplit(cluster["server"]).hostname
    cluster["server"] = f"https://127.0.0.1:{server.port}"
    config = work / "kubeconfig"
    config.write_text(yaml.safe_dump(document))
    # A bare environment keeps any HTTPS_PROXY away from kubectl, so it dials 127.0.0.1 itself.
    environment = {"HOME": str(work), "PATH": "/usr/bin:/bin"}
    with server.lock:
        seen_identities = len(server.identities)
        seen_errors = len(server.errors)
    result = subprocess.run(
        [kubectl, "--kubeconfig", str(config), "--request-timeout=5s", "get", "--raw", "/healthz"],
        capture_output=True, text=True, check=False, env=environment, stdin=subprocess.DEVNULL,
        timeout=KUBECTL_TIMEOUT_SECONDS,
    )
    with server.lock:
        identities = server.identities[seen_identities:]
        errors = server.errors[seen_errors:]
    return KubectlRun(result.returncode, result.stdout, result.stderr, identities, errors)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.consumer
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_kubeconfigs_match_table(example: str) -> None:
    kubeconfigs = list_kubeconfigs(example)
    assert sorted(kubeconfigs) == sorted(EXPECTED[example])
    for artifact, kubeconfig in kubeconfigs.items():
        assert server_url(kubeconfig) == EXPECTED[example][artifact][0], artifact


@pytest.mark.consumer
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_kubelet_client_link(example: str) -> None:
    for artifact, kubeconfig in list_kubeconfigs(example).items():
        if not artifact.endswith(f": {KUBELET_KUBECONFIG}"):
            continue
        assert kubeconfig.node is not None
        assert current_user(kubeconfig.document) == {
            "client-certificate": KUBELET_CLIENT_CURRENT, "client-key": KUBELET_CLIENT_CURRENT,
        }, artifact
        script = node_files(example, kubeconfig.node)[FIRST_BOOT_SCRIPT].decode()
        for path in (KUBELET_CLIENT_CURRENT, KUBELET_CLIENT_INITIAL):
            assert path in script, f"nodes/{kubeconfig.node}/user-data: {FIRST_BOOT_SCRIPT} never names {path}"


@pytest.mark.consumer
@pytest.mark.parametrize(("example", "artifact"), CASES, ids=CASE_IDS)
def test_kubectl_reaches_api_server(
    example: str, artifact: str, api_servers: FakeApiServers, tmp_path: Path
) -> None:
    kubectl = require_kubectl()
    kubeconfig = list_kubeconfigs(example)[artifact]
    server, common_name, organizations = EXPECTED[example][artifact]
    assert server_url(kubeconfig) == server, artifact
    host = urlsplit(server).hostname or ""
    document = localize_files(kubeconfig, example, tmp_path)
    answering = answering_control_planes(example, host)
    assert answering, f"{artifact}: no control plane of the description answers at {host}"

    for node in answering:
        run = run_kubectl(kubectl, document, api_servers.serve_control_plane(example, node), tmp_path)
        label = f"{artifact} via the API server of {node}"

        assert run.returncode == 0, (
            f"{label}: kubectl exited {run.returncode}: {run.stderr}\n"
            f"fake API server errors: {run.server_errors}"
        )
        assert run.stdout == "ok", f"{label}: {run.stdout!r}"
        assert run.identities, f"{label}: the server saw no request"
        assert set(run.identities) == {(common_name, organizations)}, label


@pytest.mark.consumer
@pytest.mark.parametrize(("example", "artifact"), CASES, ids=CASE_IDS)
def test_kubectl_rejects_other_build_ca(
    example: str, artifact: str, api_servers: FakeApiServers, tmp_path: Path
) -> None:
    kubectl = require_kubectl()
    other_ca = built_again(example)["ca.crt"].content
    assert other_ca != built(example)["ca.crt"].content, "a second build reused the CA"
    kubeconfig = list_kubeconfigs(example)[artifact]
    document = localize_files(kubeconfig, example, tmp_path)
    current_cluster(document)["certificate-authority-data"] = base64.b64encode(other_ca).decode()
    host = urlsplit(server_url(kubeconfig)).hostname or ""
    answering = answering_control_planes(example, host)
    assert answering, f"{artifact}: no control plane of the description answers at {host}"
    node = answering[0]

    run = run_kubectl(kubectl, document, api_servers.serve_control_plane(example, node), tmp_path)

    label = f"{artifact} with the CA of another build, via the API server of {node}"
    assert run.returncode != 0, f"{label}: kubectl accepted the server: {run.stdout!r}"
    assert "x509: certificate signed by unknown authority" in run.stderr, f"{label}: {run.stderr}"
    assert run.identities == [], label


@pytest.mark.consumer
def test_kubectl_rejects_other_node(api_servers: FakeApiServers, tmp_path: Path) -> None:
    kubectl = require_kubectl()
    artifact = "nodes/cp-1/user-data: /etc/kubernetes/scheduler.conf"
    kubeconfig = list_kubeconfigs("ha")[artifact]

    run = run_kubectl(kubectl, kubeconfig.document, api_servers.serve_control_plane("ha", "cp-2"), tmp_path)

    label = f"{artifact} via the API server of cp-2"
    assert run.returncode != 0, f"{label}: kubectl accepted the server: {run.stdout!r}"
    assert "x509: certificate is valid for" in run.stderr, f"{label}: {run.stderr}"
    assert "not 10.0.1.10" in run.stderr, f"{label}: {run.stderr}"
    assert run.identities == [], label


@pytest.mark.consumer
def test_fake_server_rejects_foreign_client(api_servers: FakeApiServers, tmp_path: Path) -> None:
    """The fake API server must reject a client certificate that the cluster CA did not sign."""
    kubectl = require_kubectl()
    document = copy.deepcopy(list_kubeconfigs("hard-way")["admin.kubeconfig"].document)
    other_user = current_user(list_kubeconfigs("hard-way", again=True)["admin.kubeconfig"].document)
    current_user(document).update(other_user)

    run = run_kubectl(kubectl, document, api_servers.serve_control_plane("hard-way", "server"), tmp_path)

    assert run.returncode != 0, f"kubectl reached the server: {run.stdout!r}"
    assert "tls: unknown certificate authority" in run.stderr, run.stderr
    assert run.identities == []

