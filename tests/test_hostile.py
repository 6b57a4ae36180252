"""Hostile free text end to end: it reaches the node byte for byte or is rejected."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler.build import build_output_files
from compiler.errors import DescriptionError
from compiler.pipeline import plan_text
from tests.conftest import MINIMAL

SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostile o'brien \"$(touch /tmp/pwned)\" `id` "
    "# %n %% {{ x }} !!python/object:os.system &anchor *alias"
)
MIRROR = "https://mirror.example/a'b\"c/$(touch${IFS}/tmp/pwned)/`id`/%20#frag;x&y|z{#"


def hostile_description() -> str:
    quoted_key = SSH_KEY.replace("'", "''")
    quoted_mirror = MIRROR.replace("'", "''")
    return (
        MINIMAL.replace("port: 6443}}", "port: 6443}, certSANs: ['*.example.com', '192.0.2.7']}")
        + f"  install: {{baseURL: '{quoted_mirror}'}}\n"
        + f"  admin: {{name: ops, sshAuthorizedKeys: ['{quoted_key}']}}\n"
    )


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    files = build_output_files(plan_text(hostile_description()).cluster)
    return {
        name: yaml.safe_load(files[f"nodes/{name}/user-data"].content)
        for name in ("cp-1", "worker-1")
    }


def files_of(document: dict[str, Any]) -> dict[str, str]:
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def test_ssh_key_reaches_node_unchanged(documents: dict[str, dict[str, Any]]) -> None:
    for document in documents.values():
        (user,) = document["users"]
        assert user["ssh_authorized_keys"] == [SSH_KEY]
        assert user["lock_passwd"] is True


@pytest.mark.consumer
def test_hostile_user_data_passes_cloud_init(
    documents: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    for name, document in documents.items():
        path = tmp_path / name
        path.write_text("#cloud-config\n" + yaml.safe_dump(document))
        result = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(path)],
            capture_output=True, text=True, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def install_urls(script: str) -> list[str]:
    """Return the URL argument of every install line, split the way a POSIX shell would."""
    urls = []
    for line in script.splitlines():
        if line.startswith("fetch_and_install "):
            urls.append(shlex.split(line)[2])
    return urls


def test_mirror_url_is_one_literal_argument(documents: dict[str, dict[str, Any]]) -> None:
    script = files_of(documents["worker-1"])["/usr/local/lib/kubecc/first-boot.sh"]
    urls = install_urls(script)
    assert len(urls) == 6
    assert urls[0] == f"{MIRROR}/dl.k8s.io/release/v1.36.2/bin/linux/amd64/kubelet"
    assert all(url.startswith(MIRROR + "/") for url in urls)
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cert_sans_reach_apiserver_certificate(documents: dict[str, dict[str, Any]]) -> None:
    from cryptography import x509

    pem = files_of(documents["cp-1"])["/etc/kubernetes/pki/apiserver.crt"].encode()
    sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert "*.example.com" in sans.get_values_for_type(x509.DNSName)
    assert "192.0.2.7" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


@pytest.mark.parametrize(
    "san",
    ["$(reboot)", "a b", "name\nnext", "`id`", "x;y", "EXAMPLE.com"],
    ids=["command", "space", "newline", "backtick", "semicolon", "uppercase"],
)
def test_hostile_cert_san_rejected(san: str) -> None:
    quoted = san.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    text = MINIMAL.replace("port: 6443}}", f'port: 6443}}, certSANs: ["{quoted}"]}}')
    with pytest.raises(DescriptionError) as caught:
        plan_text(text)
    (problem,) = caught.value.problems
    assert problem.path == "spec.controlPlane.certSANs[0]"
    expected = (
        "expected text on one line" if "\n" in san
        else "expected an IP address or a lowercase DNS name"
    )
    assert problem.message.endswith(expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [("hostname", "host\nname"), ("hostname", "a;b"), ("name", "ops\nroot")],
    ids=["hostname-newline", "hostname-semicolon", "admin-name-newline"],
)
def test_hostile_identifiers_rejected(field: str, value: str) -> None:
    quoted = value.replace("\n", "\\n")
    if field == "hostname":
        text = MINIMAL.replace("ip: 10.0.0.20}", f'ip: 10.0.0.20, hostname: "{quoted}"}}')
    else:
        text = MINIMAL + f'  admin: {{name: "{quoted}"}}\n'
    with pytest.raises(DescriptionError):
        plan_text(text)
