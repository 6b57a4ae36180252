"""Fault injection for crash tests: kill the process at a chosen write, fsync or rename.

Every step of the writers that changes the disk calls `checkpoint` first. With
KUBECC_FAULT_AT=N in the environment, the Nth checkpoint sends SIGKILL to the process itself,
so a test can stop a build at every such step without timers. KUBECC_FAULT_TRACE=FILE appends
each checkpoint's label to FILE, so a test can count them first. Without these variables a
checkpoint only increments a counter.
"""

from __future__ import annotations

import os
import signal

_count = 0


def checkpoint(label: str) -> None:
    """Record one disk-changing step; kill the process here if KUBECC_FAULT_AT names this step."""
    global _count
    _count += 1
    trace = os.environ.get("KUBECC_FAULT_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as stream:
            stream.write(f"{_count}\t{label}\n")
    target = os.environ.get("KUBECC_FAULT_AT")
    if target and int(target) == _count:
        os.kill(os.getpid(), signal.SIGKILL)
