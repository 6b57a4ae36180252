"""State: byte-identical rebuilds, incremental changes, renewal and CA safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from compiler.build import BuildOptions, StatefulBuild, build
from compiler.errors import StateError
from compiler.loader import load_description_text
from compiler.state import FORMAT_VERSION, STATE_FILE, locked, payload_checksum
from tests.conftest import EXAMPLE_NAMES, EXAMPLES

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HARD_WAY = (EXAMPLES / "hard-way.yaml").read_text()
HA = (EXAMPLES / "ha.yaml").read_text()
DUAL_STACK = (EXAMPLES / "dual-stack.yaml").read_text()
NODE_2 = "    - name: node-2\n      role: worker\n      ip: 10.240.0.22\n"
CP_4 = "    - name: cp-4\n      role: control-plane\n      ip: 10.0.1.13\n"


def run_build(
    text: str, work: Path, now: datetime = START, force: bool = False,
    filename: str = "cluster.yaml",
) -> StatefulBuild:
    """Build a description text; files it references are relative to `filename`'s folder."""
    description = load_description_text(text, filename)
    options = BuildOptions(
        out_dir=work / "out", state_dir=work / "state", force=force, clock=lambda: now
    )
    return build(description, options)


def snapshot(work: Path) -> dict[str, bytes]:
    """Return every file of out/ and the state by relative path."""
    return {
        str(path.relative_to(work)): path.read_bytes()
        for path in sorted(work.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def changed_files(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    names = set(before) | set(after)
    return {name for name in names if before.get(name) != after.get(name)}


def route_bundle_files(cluster: str, nodes: tuple[str, ...]) -> set[str]:
    """Return the bundle files that carry a new pod-routes script to running nodes."""
    files = set()
    for node in nodes:
        folder = f"out/{cluster}/renewals/{node}"
        files |= {f"{folder}/apply.sh", f"{folder}/files/usr/local/lib/kubecc/pod-routes.sh"}
    return files


def issued_set(built: StatefulBuild) -> set[tuple[str, str | None, str]]:
    return {(issuance.name, issuance.node, issuance.reason) for issuance in built.issued}


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_rebuild_is_byte_identical(example: str, tmp_path: Path) -> None:
    path = EXAMPLES / f"{example}.yaml"
    text = path.read_text()
    run_build(text, tmp_path, filename=str(path))
    before = snapshot(tmp_path)
    again = run_build(text, tmp_path, now=START + timedelta(days=10), filename=str(path))
    assert snapshot(tmp_path) == before
    assert again.issued == ()
    assert again.state_changed is False


def test_add_worker_changes_only_what_knows_it(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    before = snapshot(tmp_path)
    built = run_build(HARD_WAY + NODE_2, tmp_path)

    # Static mode: every node routes to the new node's pod block, so every route script
    # changes, and the running nodes get it in a bundle because they never reread user-data.
    assert changed_files(before, snapshot(tmp_path)) == {
        "out/hard-way/nodes/node-2/user-data",
        "out/hard-way/nodes/server/user-data",
        "out/hard-way/nodes/node-0/user-data",
        "out/hard-way/nodes/node-1/user-data",
        "out/hard-way/index.json",
        "state/state.json",
        *route_bundle_files("hard-way", ("server", "node-0", "node-1")),
    }
    assert [bundle.node for bundle in built.bundles] == ["server", "node-0", "node-1"]
    apply = (tmp_path / "out/hard-way/renewals/node-0/apply.sh").read_text().splitlines()
    assert "systemctl restart kubecc-pod-routes.service" in apply
    routes = (tmp_path / "out/hard-way/renewals/node-0/files/usr/local/lib/kubecc/pod-routes.sh")
    assert "add_route 10.200.3.0/24 10.240.0.22" in routes.read_text().splitlines()
    assert issued_set(built) == {
        ("kubelet-client", "node-2", "new"),
        ("kubelet-serving", "node-2", "new"),
        ("kube-proxy", "node-2", "new"),
    }
    index = json.loads((tmp_path / "out/hard-way/index.json").read_text())
    assert [node["podCIDR"] for node in index["nodes"]] == [
        "10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24",
    ]


def test_dual_stack_add_worker_keeps_blocks(tmp_path: Path) -> None:
    # worker-1 leaves and worker-3 joins before worker-2, so that the lowest free blocks of
    # both families are the ones worker-1 held.
    without_worker_1 = DUAL_STACK.replace(
        '    - name: worker-1\n      role: worker\n      ips: [10.0.3.20, "fd00:10:0:3::20"]\n', ""
    )
    assert without_worker_1 != DUAL_STACK
    run_build(DUAL_STACK, tmp_path)
    index = json.loads((tmp_path / "out/dual-stack/index.json").read_text())
    before = {node["name"]: node["podCIDRs"] for node in index["nodes"]}
    assert before["worker-1"] == ["10.200.3.0/24", "fd00:10:200:3::/64"]

    run_build(without_worker_1, tmp_path)
    worker_3 = '    - name: worker-3\n      role: worker\n      ips: [10.0.3.22, "fd00:10:0:3::22"]\n'
    with_worker_3 = without_worker_1.replace("    - name: worker-2\n", worker_3 + "    - name: worker-2\n")
    run_build(with_worker_3, tmp_path)

    index = json.loads((tmp_path / "out/dual-stack/index.json").read_text())
    after = {node["name"]: node["podCIDRs"] for node in index["nodes"]}
    assert [node["name"] for node in index["nodes"]] == ["cp-1", "cp-2", "cp-3", "worker-3", "worker-2"]
    for name in ("cp-1", "cp-2", "cp-3", "worker-2"):
        assert after[name] == before[name], name
    assert after["worker-3"] == ["10.200.3.0/24", "fd00:10:200:3::/64"]
    for node in index["nodes"]:
        assert node["podCIDR"] == node["podCIDRs"][0], node["name"]
        assert len(node["ips"]) == 2, node["name"]

    state = json.loads((tmp_path / "state/state.json").read_text())
    assert state["payload"]["allocations"]["podBlocks"]["worker-2"] == before["worker-2"]


def test_flannel_add_worker_changes_one_node(tmp_path: Path) -> None:
    flannel = HARD_WAY.replace("mode: static", "mode: flannel-vxlan")
    run_build(flannel, tmp_path)
    before = snapshot(tmp_path)
    built = run_build(flannel + NODE_2, tmp_path)

    # The controller-manager allocates pod blocks and flannel routes, so no other node's
    # user-data names the new node.
    assert changed_files(before, snapshot(tmp_path)) == {
        "out/hard-way/nodes/node-2/user-data",
        "out/hard-way/index.json",
        "state/state.json",
    }
    assert issued_set(built) == {
        ("kubelet-client", "node-2", "new"),
        ("kubelet-serving", "node-2", "new"),
        ("kube-proxy", "node-2", "new"),
    }
    index = json.loads((tmp_path / "out/hard-way/index.json").read_text())
    assert [node["name"] for node in index["nodes"]] == ["server", "node-0", "node-1", "node-2"]
    for node in index["nodes"]:
        assert "podCIDR" not in node, node["name"]
        assert "podCIDRs" not in node, node["name"]

    after = snapshot(tmp_path)
    again = run_build(flannel + NODE_2, tmp_path, now=START + timedelta(days=10))
    assert snapshot(tmp_path) == after
    assert again.issued == ()


def test_remove_worker_keeps_pod_blocks(tmp_path: Path) -> None:
    run_build(HARD_WAY + NODE_2, tmp_path)
    before = snapshot(tmp_path)
    without_node_0 = (HARD_WAY + NODE_2).replace(
        "    - name: node-0\n      role: worker\n      ip: 10.240.0.20\n", ""
    )
    built = run_build(without_node_0, tmp_path)

    assert changed_files(before, snapshot(tmp_path)) == {
        "out/hard-way/nodes/node-0/user-data",
        "out/hard-way/nodes/server/user-data",
        "out/hard-way/nodes/node-1/user-data",
        "out/hard-way/nodes/node-2/user-data",
        "out/hard-way/index.json",
        "state/state.json",
        *route_bundle_files("hard-way", ("server", "node-1", "node-2")),
    }
    assert not (tmp_path / "out/hard-way/nodes/node-0").exists()
    assert built.issued == ()
    index = json.loads((tmp_path / "out/hard-way/index.json").read_text())
    assert {node["name"]: node["podCIDR"] for node in index["nodes"]} == {
        "server": "10.200.0.0/24", "node-1": "10.200.2.0/24", "node-2": "10.200.3.0/24",
    }

    readded = run_build(HARD_WAY + NODE_2, tmp_path)
    index = json.loads((tmp_path / "out/hard-way/index.json").read_text())
    assert index["nodes"][1]["name"] == "node-0"
    assert index["nodes"][1]["podCIDR"] == "10.200.1.0/24"
    assert {(i.name, i.node) for i in readded.issued} == {
        ("kubelet-client", "node-0"), ("kubelet-serving", "node-0"), ("kube-proxy", "node-0"),
    }


def test_add_control_plane_issues_only_its_certificates(tmp_path: Path) -> None:
    run_build(HA, tmp_path)
    before = snapshot(tmp_path)
    built = run_build(HA.replace("    - name: worker-1\n", CP_4 + "    - name: worker-1\n"), tmp_path)

    assert issued_set(built) == {
        (name, "cp-4", "new")
        for name in ("apiserver", "etcd-server", "etcd-peer", "kubelet-client",
                     "kubelet-serving", "kube-proxy")
    }
    changed = changed_files(before, snapshot(tmp_path))
    # etcd's member list changes on every control plane; static routes change everywhere.
    running = ("cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3")
    assert changed == {
        *(f"out/ha/nodes/{node}/user-data" for node in (*running, "cp-4")),
        "out/ha/index.json",
        "state/state.json",
        *route_bundle_files("ha", running),
    }


def test_cert_san_change_reissues_apiserver_only(tmp_path: Path) -> None:
    run_build(HA, tmp_path)
    with_san = HA.replace("      port: 6443\n", "      port: 6443\n    certSANs: [api.example.com]\n", 1)
    built = run_build(with_san, tmp_path)
    assert issued_set(built) == {
        ("apiserver", node, "subject alternative names changed") for node in ("cp-1", "cp-2", "cp-3")
    }


def test_renewal_window_reissues_leaves_and_keeps_cas(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    ca_before = (tmp_path / "out/hard-way/ca.crt").read_bytes()
    state_before = json.loads((tmp_path / "state" / STATE_FILE).read_text())

    late = START + timedelta(days=340)
    built = run_build(HARD_WAY, tmp_path, now=late)

    reasons = {issuance.reason for issuance in built.issued}
    assert reasons == {"expires on 2027-12-01, within the 30-day renewal window"}
    assert len(built.issued) == 20
    # The running nodes cannot wait for new user-data, so each gets its renewed files.
    assert {bundle.node: bundle.restarts for bundle in built.bundles} == {
        "server": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                   "kube-proxy", "kubelet"),
        "node-0": ("kube-proxy", "kubelet"),
        "node-1": ("kube-proxy", "kubelet"),
    }
    assert (tmp_path / "out/hard-way/ca.crt").read_bytes() == ca_before
    state_after = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    for name in ("ca", "front-proxy-ca", "etcd-ca"):
        assert find_entry(state_after, name) == find_entry(state_before, name)


def test_key_algorithm_change_keeps_cas(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    rsa = HARD_WAY.replace("spec:\n", "spec:\n  pki: {keyAlgorithm: ecdsa-p384}\n", 1)
    built = run_build(rsa, tmp_path)
    assert {issuance.reason for issuance in built.issued} == {
        "key algorithm changed to ecdsa-p384"
    }
    assert not {issuance.name for issuance in built.issued} & {"ca", "front-proxy-ca", "etcd-ca"}


def find_entry(state: dict[str, object], name: str) -> object:
    payload = state["payload"]
    assert isinstance(payload, dict)
    return next(entry for entry in payload["certificates"] if entry["name"] == name)


def state_path(work: Path) -> Path:
    return work / "state" / STATE_FILE


def rewrite_payload(work: Path, change: str) -> None:
    """Edit the state's payload and fix its checksum, as a careless tool would."""
    document = json.loads(state_path(work).read_text())
    payload = document["payload"]
    if change == "drop-ca":
        payload["certificates"] = [e for e in payload["certificates"] if e["name"] != "ca"]
    elif change == "other-cluster":
        payload["cluster"] = "other"
    elif change == "swap-key":
        entries = payload["certificates"]
        entries[0]["privateKey"], entries[1]["privateKey"] = (
            entries[1]["privateKey"], entries[0]["privateKey"]
        )
    document["checksum"] = payload_checksum(payload)
    state_path(work).write_text(json.dumps(document))


DAMAGE = {
    "truncated": (lambda work: state_path(work).write_bytes(state_path(work).read_bytes()[:500]),
                  "is not valid JSON (truncated or damaged)"),
    "edited": (lambda work: state_path(work).write_text(
        state_path(work).read_text().replace("hard-way", "hard-wax", 1)),
               "does not match its checksum (edited or damaged)"),
    "newer-format": (lambda work: state_path(work).write_text(
        state_path(work).read_text().replace(
            f'"formatVersion": {FORMAT_VERSION}', f'"formatVersion": {FORMAT_VERSION + 1}')),
                     f"was written by a newer kubecc (format {FORMAT_VERSION + 1}; this kubecc "
                     f"reads format {FORMAT_VERSION})"),
    "missing-ca": (lambda work: rewrite_payload(work, "drop-ca"),
                   "has no ca certificate although it has other keys"),
    "other-cluster": (lambda work: rewrite_payload(work, "other-cluster"),
                      "belongs to cluster 'other', not 'hard-way'"),
    "mismatched-key": (lambda work: rewrite_payload(work, "swap-key"),
                       "whose private key does not match it"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_state_rejected_and_nothing_written(damage: str, tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    apply, fragment = DAMAGE[damage]
    apply(tmp_path)
    before = snapshot(tmp_path)

    with pytest.raises(StateError) as caught:
        run_build(HARD_WAY + NODE_2, tmp_path)
    assert fragment in str(caught.value)
    assert caught.value.hint
    assert snapshot(tmp_path) == before


def test_locked_state_rejected(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    with locked(tmp_path / "state"), pytest.raises(StateError) as caught:
        run_build(HARD_WAY, tmp_path)
    assert str(caught.value) == f"{tmp_path / 'state'} is in use by another kubecc command"


def test_state_folder_modes(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    folder = tmp_path / "state"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"


def run_encrypted(text: str, work: Path, passphrase: str | None) -> StatefulBuild:
    description = load_description_text(text, "cluster.yaml")
    options = BuildOptions(
        out_dir=work / "out", state_dir=work / "state", clock=lambda: START,
        passphrase=passphrase,
    )
    return build(description, options)


def test_encrypted_state_round_trip(tmp_path: Path) -> None:
    run_encrypted(HARD_WAY, tmp_path, "correct horse")
    raw = state_path(tmp_path).read_bytes()
    document = json.loads(raw)
    assert set(document) == {"formatVersion", "encryption", "ciphertext"}
    assert document["encryption"]["kdf"] == "scrypt"
    assert b"PRIVATE KEY" not in raw
    assert (tmp_path / "state/.gitignore").read_text().splitlines()[1:] == [".lock", ".*.tmp"]
    before = snapshot(tmp_path)

    again = run_encrypted(HARD_WAY, tmp_path, "correct horse")
    assert again.issued == ()
    assert again.state_changed is False
    assert snapshot(tmp_path) == before  # an unchanged state is not re-encrypted


@pytest.mark.parametrize(
    ("passphrase", "fragment"),
    [("wrong", "cannot be decrypted: the passphrase is wrong or the file was changed"),
     (None, "is encrypted")],
    ids=["wrong-passphrase", "no-passphrase"],
)
def test_encrypted_state_needs_passphrase(
    tmp_path: Path, passphrase: str | None, fragment: str
) -> None:
    run_encrypted(HARD_WAY, tmp_path, "correct horse")
    before = snapshot(tmp_path)
    with pytest.raises(StateError) as caught:
        run_encrypted(HARD_WAY, tmp_path, passphrase)
    assert str(caught.value) == f"{state_path(tmp_path)} {fragment}"
    assert snapshot(tmp_path) == before


def test_tampered_ciphertext_rejected(tmp_path: Path) -> None:
    run_encrypted(HARD_WAY, tmp_path, "correct horse")
    document = json.loads(state_path(tmp_path).read_text())
    document["encryption"]["n"] = 2
    state_path(tmp_path).write_text(json.dumps(document))
    with pytest.raises(StateError) as caught:
        run_encrypted(HARD_WAY, tmp_path, "correct horse")
    assert "cannot be decrypted" in str(caught.value)


def test_plain_state_becomes_encrypted(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    plain = json.loads(state_path(tmp_path).read_text())
    built = run_encrypted(HARD_WAY, tmp_path, "correct horse")
    assert built.issued == ()
    assert "encryption" in json.loads(state_path(tmp_path).read_text())
    assert plain["payload"]["cluster"] == "hard-way"


def user_data_files(work: Path, node: str) -> dict[str, str]:
    document = yaml.safe_load((work / f"out/ha/nodes/{node}/user-data").read_text())
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def etcd_flags(files: dict[str, str]) -> dict[str, str]:
    manifest = yaml.safe_load(files["/etc/kubernetes/manifests/etcd.yaml"])
    flags = manifest["spec"]["containers"][0]["command"][1:]
    return dict(flag.removeprefix("--").split("=", 1) for flag in flags)


def test_added_control_plane_joins_running_etcd(tmp_path: Path) -> None:
    run_build(HA, tmp_path)
    before = {node: user_data_files(tmp_path, node) for node in ("cp-1", "cp-2", "cp-3")}
    run_build(HA.replace("    - name: worker-1\n", CP_4 + "    - name: worker-1\n"), tmp_path)

    joining = user_data_files(tmp_path, "cp-4")
    flags = etcd_flags(joining)
    assert flags["initial-cluster-state"] == "existing"
    assert flags["initial-cluster"] == (
        "cp-1=https://10.0.1.10:2380,cp-2=https://10.0.1.11:2380,"
        "cp-3=https://10.0.1.12:2380,cp-4=https://10.0.1.13:2380"
    )
    script = joining["/usr/local/lib/kubecc/first-boot.sh"]
    assert "etcd_peer_url=https://10.0.1.13:2380" in script.splitlines()
    assert script.index('log "joining the running etcd members"') < script.index(
        'log "starting the kubelet"'
    )
    for node, files in before.items():
        after = user_data_files(tmp_path, node)
        path = "/etc/kubernetes/manifests/etcd.yaml"
        assert after[path] == files[path], node
        assert "joining the running etcd members" not in after["/usr/local/lib/kubecc/first-boot.sh"]
        assert etcd_flags(after)["initial-cluster-state"] == "new"


def test_renewal_window_follows_description(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    late = START + timedelta(days=300)
    assert run_build(HARD_WAY, tmp_path, now=late).issued == ()

    wider = HARD_WAY.replace("spec:\n", "spec:\n  pki: {renewBeforeDays: 90}\n", 1)
    built = run_build(wider, tmp_path, now=late)
    assert {issuance.reason for issuance in built.issued} == {
        "expires on 2027-12-01, within the 90-day renewal window"
    }


def test_two_joining_control_planes_are_ordered(tmp_path: Path) -> None:
    run_build(HA, tmp_path)
    cp_5 = "    - name: cp-5\n      role: control-plane\n      ip: 10.0.1.14\n"
    built = run_build(
        HA.replace("    - name: worker-1\n", CP_4 + cp_5 + "    - name: worker-1\n"), tmp_path
    )
    flags = etcd_flags(user_data_files(tmp_path, "cp-5"))
    assert flags["initial-cluster"].split(",")[-2:] == [
        "cp-4=https://10.0.1.13:2380", "cp-5=https://10.0.1.14:2380",
    ]
    assert built.warnings == (
        "control planes cp-4, cp-5 join the running etcd members: boot them one at a time in "
        "this order, each after the previous one is healthy",
    )


def test_removed_control_plane_warns(tmp_path: Path) -> None:
    run_build(HA, tmp_path)
    without = HA.replace("    - name: cp-3\n      role: control-plane\n      ip: 10.0.1.12\n", "")
    built = run_build(without, tmp_path)
    assert built.warnings == (
        "control plane cp-3 was an etcd member: remove it from etcd (etcdctl member remove) "
        "and delete its Node (kubectl delete node cp-3) before you shut it down",
    )


def swap_ca_entries(work: Path) -> None:
    """Swap two CA entries and fix the checksum, as a careless edit would."""
    document = json.loads(state_path(work).read_text())
    entries = {entry["name"]: entry for entry in document["payload"]["certificates"]}
    for field in ("certificate", "privateKey"):
        entries["etcd-ca"][field], entries["front-proxy-ca"][field] = (
            entries["front-proxy-ca"][field], entries["etcd-ca"][field]
        )
    document["checksum"] = payload_checksum(document["payload"])
    state_path(work).write_text(json.dumps(document))


def rewrite_document(work: Path, change: str) -> None:
    document = json.loads(state_path(work).read_text())
    if change == "format-zero":
        document["formatVersion"] = 0
    elif change == "bad-allocations":
        document["payload"]["allocations"] = []
        document["checksum"] = payload_checksum(document["payload"])
    elif change == "bad-block":
        document["payload"]["allocations"]["podBlocks"]["server"] = ["garbage"]
        document["checksum"] = payload_checksum(document["payload"])
    elif change == "garbage-sa-pub":
        document["payload"]["serviceAccount"]["publicKey"] = "garbage"
        document["checksum"] = payload_checksum(document["payload"])
    elif change == "foreign-sa-pub":
        other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document["payload"]["serviceAccount"]["publicKey"] = other.decode()
        document["checksum"] = payload_checksum(document["payload"])
    state_path(work).write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("swap-cas", "has a front-proxy-ca entry that is not the self-signed front-proxy-ca CA"),
        ("format-zero", "has the unknown format 0"),
        ("bad-allocations", "has entries of the wrong shape"),
        ("bad-block", "has entries of the wrong shape"),
        ("garbage-sa-pub", "has an unreadable service-account key"),
        ("foreign-sa-pub", "has a service-account public key that does not match"),
    ],
)
def test_inconsistent_state_rejected(change: str, fragment: str, tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    if change == "swap-cas":
        swap_ca_entries(tmp_path)
    else:
        rewrite_document(tmp_path, change)
    before = snapshot(tmp_path)
    with pytest.raises(StateError) as caught:
        run_build(HARD_WAY, tmp_path)
    assert fragment in str(caught.value)
    assert snapshot(tmp_path) == before


def test_planted_temporary_link_not_followed(tmp_path: Path) -> None:
    run_build(HARD_WAY, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "state/.state.json.tmp").symlink_to(victim)
    run_build(HARD_WAY + NODE_2, tmp_path)
    assert victim.read_text() == "keep me"
    assert not state_path(tmp_path).is_symlink()
