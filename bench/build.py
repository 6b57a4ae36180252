"""Time and memory of `kubecc build` for generated static-mode clusters.

Usage: .venv/bin/python bench/build.py [NODES ...]   (default: 3 25 100)

Each size runs in a fresh process, three times; the script prints the fastest wall time, the
mean, and the peak resident memory of the build. Static mode allows at most 100 nodes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 3


def description(nodes: int) -> str:
    control_planes = 3 if nodes >= 3 else 1
    lines = [
        "apiVersion: kubecc/v1alpha1",
        "kind: Cluster",
        "metadata: {name: bench}",
        "spec:",
        "  controlPlane: {endpoint: {host: lb.example.internal, port: 6443}}",
        "  network: {podCIDR: 10.200.0.0/16, nodeCIDRMaskSize: 24, serviceCIDR: 10.32.0.0/24}",
        "  nodes:",
    ]
    for index in range(nodes):
        role = "control-plane" if index < control_planes else "worker"
        address = f"10.0.{index // 250}.{index % 250 + 1}"
        lines.append(f"    - {{name: node-{index}, role: {role}, ip: {address}}}")
    return "\n".join(lines) + "\n"


def measure(nodes: int, work: Path) -> tuple[float, int]:
    path = work / f"bench-{nodes}.yaml"
    path.write_text(description(nodes))
    script = (
        "import resource, sys\n"
        "from compiler.cli import main\n"
        "code = main(['build', '--force', '-o', sys.argv[2], sys.argv[1]])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(work / "out")],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.perf_counter() - start
    return elapsed, int(result.stdout.strip().splitlines()[-1])


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [3, 25, 100]
    print(f"{'nodes':>5}  {'best s':>7}  {'mean s':>7}  {'peak MiB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for nodes in sizes:
            samples = [measure(nodes, work) for _ in range(RUNS)]
            times = [elapsed for elapsed, _ in samples]
            peak = max(rss for _, rss in samples) / 1024
            print(f"{nodes:>5}  {min(times):>7.2f}  {statistics.mean(times):>7.2f}  {peak:>8.1f}")


if __name__ == "__main__":
    main()
