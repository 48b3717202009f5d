"""Containers' logs as one stream, each line prefixed with its container's name.

The name is the one `stack status` shows, so a line in `stack logs` points at
a replica in the status table. Without `follow` the lines of every container
are merged in time order (Docker's own timestamps); with it, lines appear as
they are written.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator

_DONE = object()


def follow_container_logs(names: list[str], follow: bool) -> Iterator[str]:
    width = max(len(n) for n in names)
    if not follow:
        lines: list[tuple[str, str]] = []
        for name in names:
            out = subprocess.run(["docker", "logs", "--timestamps", name], capture_output=True, text=True)
            for line in (out.stdout + out.stderr).splitlines():
                stamp, _, text = line.partition(" ")
                lines.append((stamp, f"{name:<{width}} | {text}"))
        yield from (text for _, text in sorted(lines, key=lambda item: item[0]))
        return
    merged: queue.Queue[object] = queue.Queue()
    procs = [
        subprocess.Popen(
            ["docker", "logs", "--follow", "--tail", "100", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]

    def pump(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            merged.put(f"{name:<{width}} | {line.rstrip()}")
        merged.put(_DONE)

    for name, proc in zip(names, procs, strict=True):
        threading.Thread(target=pump, args=(name, proc), daemon=True).start()
    open_streams = len(procs)
    try:
        while open_streams:
            item = merged.get()
            if item is _DONE:
                open_streams -= 1
            else:
                yield str(item)
    finally:
        for proc in procs:
            proc.terminate()
