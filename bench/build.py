"""Time and memory of `kubecc build` for generated clusters.

Usage: .venv/bin/python bench/build.py [NODES ...]   (default: 3 25 100 1000 5000)

Up to 100 nodes the cluster uses static mode, above that flannel-vxlan. Each size runs in a
fresh process three times against one state folder, so the first run issues every
certificate and the later ones reuse them. The script prints the first run, the fastest
later run and the peak resident memory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 3


def description(nodes: int) -> str:
    control_planes = 3 if nodes >= 3 else 1
    mode = "static" if nodes <= 100 else "flannel-vxlan"
    lines = [
        "apiVersion: kubecc/v1alpha1",
        "kind: Cluster",
        "metadata: {name: bench}",
        "spec:",
        "  controlPlane: {endpoint: {host: lb.example.internal, port: 6443}}",
        f"  network: {{mode: {mode}, podCIDR: 10.64.0.0/11, nodeCIDRMaskSize: 24, "
        "serviceCIDR: 10.96.0.0/16}",
        "  nodes:",
    ]
    for index in range(nodes):
        role = "control-plane" if index < control_planes else "worker"
        address = f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}"
        lines.append(f"    - {{name: node-{index}, role: {role}, ip: {address}}}")
    return "\n".join(lines) + "\n"


def measure(nodes: int, work: Path) -> tuple[float, int]:
    path = work / f"bench-{nodes}.yaml"
    path.write_text(description(nodes))
    script = (
        "import resource, sys\n"
        "from compiler.cli import main\n"
        "code = main(['build', '--state', sys.argv[3], '-o', sys.argv[2], sys.argv[1]])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(work / f"out-{nodes}"),
         str(work / f"state-{nodes}")],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.perf_counter() - start
    return elapsed, int(result.stdout.strip().splitlines()[-1])


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [3, 25, 100, 1000, 5000]
    print(f"{'nodes':>5}  {'first s':>7}  {'rebuild s':>9}  {'peak MiB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for nodes in sizes:
            samples = [measure(nodes, work) for _ in range(RUNS)]
            first = samples[0][0]
            rebuild = min(elapsed for elapsed, _ in samples[1:])
            peak = max(rss for _, rss in samples) / 1024
            print(f"{nodes:>5}  {first:>7.2f}  {rebuild:>9.2f}  {peak:>8.1f}")


if __name__ == "__main__":
    main()
