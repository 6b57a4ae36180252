"""Apply cloud-init user-data to a throwaway Debian root, the way a booting node would.

tests/prepare-rootfs caches a debootstrapped bookworm root with cloud-init 22.4 as a tarball.
It is unpacked once per session and serves as the lower layer of one overlayfs per case. The
case's upper folder then contains exactly what cloud-init and the first-boot script wrote,
besides the stubs and the seed that this module puts there. The unpacked root is never written to.

Safety: before cloud-init runs, every program in the root that would act on the kernel, the
host or the network is replaced by a recording stub (STUBBED_PROGRAMS), in every program
folder on the chroot's PATH. cloud-init then runs chrooted into the overlay, inside new mount,
PID, UTS, IPC and network namespaces, with a read-only /sys and a read-only /proc/sys. /dev is
the root's own, not the host's: debootstrap creates only the character devices null, zero,
full, random, urandom, tty, console and ptmx, so no disk device is reachable. The cloud-init configuration enables only the modules
these tests need and turns off the NoCloud probe of block devices.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOTFS_CACHE = "/var/cache/kubecc-tests/rootfs-bookworm.tar.gz"

# Programs that act on the kernel, the host or the network, plus the ones whose real
# behaviour a test root cannot satisfy: tar would reject the placeholder downloads, and
# sha256sum their checksums. logger is stubbed so its messages show the script's progress.
STUBBED_PROGRAMS = (
    "curl", "ip", "ip6tables", "iptables", "logger", "modprobe", "mount", "nft", "sha256sum",
    "swapoff", "sysctl", "systemctl", "tar", "umount", "wget",
)
# Every folder on CHROOT_PATH gets a stub, so an absolute path such as /sbin/modprobe and a
# PATH lookup both reach one. On a merged-/usr root /sbin and /bin resolve to /usr/sbin and
# /usr/bin.
PROGRAM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
CHROOT_PATH = ":".join(PROGRAM_DIRS)
CHROOT_ENV = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}

STUB_LOG = "/var/log/kubecc-test-stubs.log"
STUB_MARKER = "# kubecc test stub"

# One line per call: the program name and its arguments, tab-separated, with backslash, tab
# and newline escaped. sha256sum and nft also record their standard input as "stdin:<text>".
STUB_SCRIPT = f"""#!/bin/bash
{STUB_MARKER}: records the call in {STUB_LOG} and exits 0
# without acting on the kernel, the host or the network.
name=${{0##*/}}
fields=("$name" "$@")
case $name in
    sha256sum | nft)
        fields+=("stdin:$(cat)")
        ;;
esac
escaped=()
for field in "${{fields[@]}}"; do
    field=${{field//\\\\/\\\\\\\\}}
    field=${{field//$'\\t'/\\\\t}}
    field=${{field//$'\\n'/\\\\n}}
    escaped+=("$field")
done
(IFS=$'\\t'; printf '%s\\n' "${{escaped[*]}}") >>{STUB_LOG}

case $name in
    curl)
        # Write a placeholder where -o points, so the install step finds a file.
        url=${{!#}}
        output=""
        while (($#)); do
            if [[ $1 == -o ]]; then
                output=$2
                shift
            fi
            shift
        done
        if [[ -n $output ]]; then
            printf 'placeholder for %s\\n' "$url" >"$output"
        fi
        ;;
    ip)
        # cloud-init's network report parses `ip --json addr`: report no interfaces.
        if [[ " $* " == *" --json "* ]]; then
            printf '[]\\n'
        fi
        ;;
    systemctl)
        # Nothing runs in the test root, so every unit reports inactive (exit 3).
        if [[ ${{1-}} == is-active ]]; then
            exit 3
        fi
        ;;
esac
exit 0
"""

TEST_CLOUD_CONFIG = """\
# Written by tests/rootfs_support.py. Only modules that act inside the root are enabled:
# cloud-init's default lists include growpart, resizefs and disk_setup, which act on disks.
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    # Read only the seed folder and never look for a "cidata" block device.
    fs_label: null
network: {config: disabled}
cloud_init_modules: [write-files, set_hostname, update_hostname, update_etc_hosts, users-groups]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-user, write-files-deferred]
"""

# cloud-init's boot stages in boot order, as its command-line arguments.
CLOUD_INIT_STAGES = ("init --local", "init", "modules --mode config", "modules --mode final")

# Runs inside the new namespaces with $1 = the overlay root, $2 = the case folder and the
# cloud-init stages after them. The host's mount sets up the root's /proc and /sys, which are
# unmounted on exit and vanish with the namespace anyway. A failed mount stops the script
# before cloud-init starts. Every cloud-init command runs chrooted.
STAGES_SCRIPT = r"""
set -uo pipefail
root=$1
out=$2
mounted=()
cleanup() {
    local index
    for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do
        umount -- "${mounted[index]}" || umount --lazy -- "${mounted[index]}"
    done
}
trap cleanup EXIT
mount_at() {
    mount "$@" || exit 1
    mounted+=("${!#}")
}

mount_at -t proc -o nosuid,nodev,noexec proc "$root/proc"
# Even from a new PID namespace, /proc/sys and /proc/sysrq-trigger change the host kernel.
# A kernel built without magic SysRq has no sysrq-trigger.
for entry in sys sysrq-trigger; do
    if [[ ! -e $root/proc/$entry ]]; then
        continue
    fi
    mount_at --bind "$root/proc/$entry" "$root/proc/$entry"
    mount -o remount,bind,ro -- "$root/proc/$entry" || exit 1
done
mount_at -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
# first-boot.sh requires cgroup v2. A tmpfs with an empty cgroup.controllers replaces the real
# hierarchy, so nothing reaches the host's cgroups.
mount_at -t tmpfs -o size=1m,mode=0755 cgroup "$root/sys/fs/cgroup"
: >"$root/sys/fs/cgroup/cgroup.controllers"

for stage in "${@:3}"; do
    # shellcheck disable=SC2086 # the stage is split into cloud-init's arguments
    chroot "$root" cloud-init $stage >>"$out/cloud-init-stages.log" 2>&1
    printf '%s\t%s\n' "$stage" "$?" >>"$out/exit-codes.tsv"
done
chroot "$root" cloud-init status --long >"$out/status.txt" 2>&1
printf 'status\t%s\n' "$?" >>"$out/exit-codes.tsv"
chroot "$root" cloud-init schema --system >"$out/schema.txt" 2>&1
printf 'schema\t%s\n' "$?" >>"$out/exit-codes.tsv"
"""

# Runs inside the new namespaces with $1 = the overlay root and the unit names after it.
# The minbase root has no systemd, so the host's units (network-online.target and the
# others the kubecc units name) are bound read-only over the root's unit folder.
VERIFY_SCRIPT = r"""
set -euo pipefail
root=$1
shift
units=$root/usr/lib/systemd/system
mount --bind /usr/lib/systemd/system "$units"
trap 'umount -- "$units"' EXIT
mount -o remount,bind,ro -- "$units"
systemd-analyze verify --man=no --root="$root" "$@"
"""

NAMESPACES = ("unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork")


@dataclass(frozen=True)
class StubCall:
    """One recorded call of a stubbed program."""

    program: str
    arguments: tuple[str, ...]
    stdin: str | None = None

    def __str__(self) -> str:
        return " ".join((self.program, *self.arguments))


@dataclass(frozen=True)
class AppliedRoot:
    """A root that cloud-init has booted once with one user-data."""

    artifact: str  # the output file name, e.g. nodes/node-0/user-data
    user_data: bytes
    root: Path  # the mounted overlay: the node's root filesystem
    upper: Path  # only what the boot wrote
    output: Path  # the case folder with stage output, exit codes and status

    def exit_codes(self) -> dict[str, int]:
        lines = (self.output / "exit-codes.tsv").read_text().splitlines()
        return {stage: int(code) for stage, code in (line.split("\t") for line in lines)}

    def stub_calls(self) -> list[StubCall]:
        path = resolve_in_root(self.root, STUB_LOG)
        if not path.exists():
            return []
        return [parse_stub_line(line) for line in path.read_text().splitlines()]

    def read_output(self, name: str) -> str:
        return (self.output / name).read_text(errors="replace")


def rootfs_cache() -> Path:
    return Path(os.environ.get("KUBECC_ROOTFS_CACHE", DEFAULT_ROOTFS_CACHE))


def unpack_rootfs(tarball: Path, destination: Path) -> None:
    subprocess.run(
        ["tar", "--numeric-owner", "-xzf", str(tarball), "-C", str(destination)], check=True,
    )


def resolve_in_root(root: Path, path: str) -> Path:
    """Resolve path the way a process chrooted to root would, so no symlink leads out of root.

    The last component is resolved too when it is a symlink. A missing component ends the
    walk, and the rest of the path is appended as written.
    """
    pending = [part for part in path.split("/") if part]
    resolved: list[str] = []
    links_followed = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        links_followed += 1
        if links_followed > 40:
            raise OSError(f"too many levels of symbolic links resolving {path} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [part for part in target.split("/") if part] + pending
    return root.joinpath(*resolved)


def write_in_root(root: Path, path: str, content: str | bytes, mode: int) -> None:
    """Write a file at path inside root, replacing any symlink there instead of following it."""
    folder = resolve_in_root(root, os.path.dirname(path))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / os.path.basename(path)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    target.chmod(mode)


def install_stubs(root: Path) -> None:
    """Replace every STUBBED_PROGRAMS entry in every PROGRAM_DIRS folder of root."""
    for program in STUBBED_PROGRAMS:
        for folder in PROGRAM_DIRS:
            write_in_root(root, f"{folder}/{program}", STUB_SCRIPT, 0o755)


def stub_problems(root: Path) -> list[str]:
    """List every stubbed program that a shell in root would not resolve to a stub."""
    problems = []
    for program in STUBBED_PROGRAMS:
        found = subprocess.run(
            ["chroot", str(root), "sh", "-c", f"command -v {program}"],
            capture_output=True, text=True, check=False, env=CHROOT_ENV,
        ).stdout.strip()
        paths = [found] + [f"{folder}/{program}" for folder in PROGRAM_DIRS]
        for path in paths:
            if not path.startswith("/") or not is_stub(resolve_in_root(root, path)):
                problems.append(f"{program}: {path or 'not found'} in {root} is not a test stub")
    return problems


def is_stub(path: Path) -> bool:
    return path.is_file() and STUB_MARKER in path.read_text(errors="replace")


def parse_stub_line(line: str) -> StubCall:
    fields = [unescape(field) for field in line.split("\t")]
    stdin = None
    if fields[-1].startswith("stdin:") and fields[0] in ("sha256sum", "nft"):
        stdin = fields.pop().removeprefix("stdin:")
    return StubCall(fields[0], tuple(fields[1:]), stdin)


def unescape(field: str) -> str:
    replacements = {"\\\\": "\\", "\\t": "\t", "\\n": "\n"}
    return re.sub(r"\\[\\tn]", lambda match: replacements[match.group(0)], field)


def seed_root(root: Path, user_data: bytes, hostname: str) -> None:
    """Write the NoCloud seed and the test's cloud-init configuration into root."""
    seed = "/var/lib/cloud/seed/nocloud"
    write_in_root(root, f"{seed}/user-data", user_data, 0o600)
    meta_data = f"instance-id: kubecc-test-{hostname}\nlocal-hostname: {hostname}\n"
    write_in_root(root, f"{seed}/meta-data", meta_data, 0o600)
    write_in_root(root, "/etc/cloud/cloud.cfg.d/99-test.cfg", TEST_CLOUD_CONFIG, 0o644)


@contextmanager
def overlay(lower: Path, case: Path) -> Iterator[tuple[Path, Path]]:
    """Mount an overlayfs over lower with its upper and work folders in case.

    Yields the mounted root and the upper folder, and unmounts on exit.
    """
    upper, work, merged = case / "upper", case / "work", case / "root"
    for folder in (upper, work, merged):
        folder.mkdir()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged, upper
    finally:
        unmount(merged)


def unmount(path: Path) -> None:
    """Unmount path, detaching it lazily when it is busy so that no mount outlives the test."""
    if subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@contextmanager
def applied_root(
    lower: Path, case: Path, artifact: str, user_data: bytes, hostname: str,
) -> Iterator[AppliedRoot]:
    """Boot the user-data once on an overlay of lower and yield the result while mounted.

    Raises AssertionError before cloud-init starts when a stub is missing.
    """
    output = case / "output"
    output.mkdir()
    with overlay(lower, case) as (root, upper):
        install_stubs(root)
        problems = stub_problems(root)
        assert problems == [], "cloud-init not started, stubs missing: " + "; ".join(problems)
        seed_root(root, user_data, hostname)
        script = output / "stages.sh"
        script.write_text(STAGES_SCRIPT)
        subprocess.run(
            [*NAMESPACES, "bash", str(script), str(root), str(output), *CLOUD_INIT_STAGES],
            check=True, env=CHROOT_ENV,
        )
        yield AppliedRoot(artifact, user_data, root, upper, output)


def verify_units(
    root: Path, output: Path, units: list[str],
) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze verify on units inside root, in new namespaces."""
    script = output / "verify.sh"
    script.write_text(VERIFY_SCRIPT)
    return subprocess.run(
        [*NAMESPACES, "bash", str(script), str(root), *units],
        capture_output=True, text=True, check=False, env=CHROOT_ENV,
    )


def remove_tree(path: Path) -> None:
    """Remove path, or raise RuntimeError when anything below it is still mounted."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    prefix = str(path.resolve()) + "/"
    busy = [line.split()[1] for line in mounts if line and line.split()[1].startswith(prefix)]
    if busy:
        raise RuntimeError(f"cannot remove {path}: {', '.join(busy)} still mounted; unmount first")
    shutil.rmtree(path)
