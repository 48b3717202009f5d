"""`compute.mem` on the local target: a watchdog on each replica's resident memory.

A replica is a process tree (its server and, with `processes_per_replica`, its
workers); the supervisor sums their RSS twice a second and kills the tree when it
goes over the limit, with the reason in the API's events and `stack status`.
Containers get the kernel's limit instead (Compose `mem_limit`, Nomad's
`memory`); a local replica can overshoot for up to half a second before it is
caught, which the kernel's limit would not allow.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (Linux: /proc/PID/task/TID/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                queue += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def resident_bytes(pids: list[int]) -> int:
    """The processes' resident memory together (VmRSS), in bytes; gone ones count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
