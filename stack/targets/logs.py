"""Replicas' logs as one stream, each line prefixed with its replica's name.

The name is the one `stack status` shows, so a line in `stack logs` points at
a replica in the status table. Without `follow` the lines of every container
are merged in time order (Docker's own timestamps); with it, lines appear as
they are written. `merge_streams` is the same merge for any target's streams.
"""

from __future__ import annotations

import calendar
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator

_DONE = object()
# A record's time as serving.logs writes it, at the start of a text line or as a JSON line's first key.
_STAMP = re.compile(r'^(?:\{"time": ")?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z')


def record_time(line: str) -> float | None:
    """The epoch seconds a replica's log record was written, or None for a line that starts none (the
    rest of a traceback, a line from before the replica's logging was set up)."""
    match = _STAMP.match(line)
    if match is None:
        return None
    seconds = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    return seconds + float(match.group(2) or 0)


def lines_since(lines: Iterable[str], cutoff: float | None) -> Iterator[str]:
    """The lines of records written at `cutoff` (epoch seconds) or later; a line without a time goes
    with the record before it (a traceback stays whole)."""
    if cutoff is None:
        yield from lines
        return
    keep = False
    for line in lines:
        stamp = record_time(line)
        if stamp is not None:
            keep = stamp >= cutoff
        if keep:
            yield line


def follow_container_logs(names: list[str], follow: bool, since: float | None = None) -> Iterator[str]:
    """`since`: only lines written in the last this many seconds (Docker's own --since)."""
    window = ["--since", f"{max(since, 0.001):.3f}s"] if since is not None else []
    if not follow:
        width = max(len(n) for n in names)
        lines: list[tuple[str, str]] = []
        for name in names:
            out = subprocess.run(["docker", "logs", "--timestamps", *window, name], capture_output=True, text=True)
            for line in (out.stdout + out.stderr).splitlines():
                stamp, _, text = line.partition(" ")
                lines.append((stamp, f"{name:<{width}} | {text}"))
        yield from (text for _, text in sorted(lines, key=lambda item: item[0]))
        return
    procs = {
        name: subprocess.Popen(
            ["docker", "logs", "--follow", *(window or ["--tail", "100"]), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    }
    try:
        yield from merge_streams(
            {name: (line.rstrip("\n") for line in proc.stdout or []) for name, proc in procs.items()}
        )
    finally:
        for proc in procs.values():
            proc.terminate()


def merge_streams(streams: dict[str, Iterable[str]]) -> Iterator[str]:
    """Lines of several streams as they arrive, each prefixed with its stream's name."""
    width = max(len(n) for n in streams)
    merged: queue.Queue[object] = queue.Queue()

    def pump(name: str, lines: Iterable[str]) -> None:
        try:
            for line in lines:
                merged.put(f"{name:<{width}} | {line}")
        finally:
            merged.put(_DONE)

    for name, lines in streams.items():
        threading.Thread(target=pump, args=(name, lines), daemon=True).start()
    open_streams = len(streams)
    while open_streams:
        item = merged.get()
        if item is _DONE:
            open_streams -= 1
        else:
            yield str(item)
