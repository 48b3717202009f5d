"""Replicas' logs as one stream, each line prefixed with its replica's name.

The name is the one `stack status` shows, so a line in `stack logs` points at
a replica in the status table. `container_logs` merges every container's
lines in time order (Docker's own timestamps); `follow_replicas` prints any
target's replicas' lines as they are written, following the replicas that
start later too (`follow_containers`: with `docker logs --follow`).
"""

from __future__ import annotations

import calendar
import logging
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

LOGGER = logging.getLogger("stack.logs")
LIST_PATIENCE = 30.0  # seconds `--follow` goes on while the replicas cannot be listed
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


def container_logs(names: list[str], since: float | None = None) -> Iterator[str]:
    """The containers' lines merged in time order (Docker's timestamps); `since`: only those written in
    the last this many seconds (Docker's own --since)."""
    window = ["--since", f"{max(since, 0.001):.3f}s"] if since is not None else []
    width = max(len(n) for n in names)
    lines: list[tuple[str, str]] = []
    for name in names:
        out = subprocess.run(["docker", "logs", "--timestamps", *window, name], capture_output=True, text=True)
        for line in (out.stdout + out.stderr).splitlines():
            stamp, _, text = line.partition(" ")
            lines.append((stamp, f"{name:<{width}} | {text}"))
    yield from (text for _, text in sorted(lines, key=lambda item: item[0]))


Listed = Callable[[], list[tuple[str, bool]]]  # an API's replicas now: (name, running)


@dataclass(frozen=True)
class Stream:
    """One replica's lines as they are written; `close` stops reading them."""

    lines: Iterable[str]
    close: Callable[[], None] = lambda: None


Opener = Callable[[str, "float | None"], Stream]  # (name, from when: epoch seconds, or None for the usual window)


def follow_replicas(listed: Listed, open_stream: Opener, poll: float = 1.0) -> Iterator[str]:
    """Lines as they are written by every running replica `listed()` names, re-listed every `poll`
    seconds so that a replica started later (the autoscaler's, one woken from zero) is followed too: a new
    one from its first line (`open_stream(name, when this began)`), one started again from where its
    last lines ended. Those listed at the start get `open_stream(name, None)`: the target's usual window
    (the last lines, or `--since`). Ends once the API has no replica left (`stack down`)."""
    merged: queue.Queue[str] = queue.Queue()
    live: dict[str, Stream] = {}  # name -> its stream, until it ends
    ended: dict[str, float] = {}  # name -> when its stream ended (the replica stopped)
    began = time.time()
    width = 0

    def pump(name: str, stream: Stream) -> None:
        try:
            for line in stream.lines:
                merged.put(f"{name:<{width}} | {line}")
        except Exception as exc:  # a dropped connection: the next listing follows it again, from here
            LOGGER.debug(f"the log stream of {name} ended: {exc}")
        finally:
            ended[name] = time.time()
            live.pop(name, None)

    first, failing_since = True, None
    try:
        while True:
            try:
                replicas = listed()
                failing_since = None
            except Exception:
                # The engine or the cluster did not answer: keep following what runs, list again soon;
                # only a first listing, or one failing for LIST_PATIENCE seconds, is the command's error.
                failing_since = failing_since or time.monotonic()
                if first or time.monotonic() - failing_since > LIST_PATIENCE:
                    raise
                replicas = [(name, True) for name in live]
            if not replicas and not live:
                break
            width = max([width, *(len(name) for name, _ in replicas)])
            for name, running in replicas:
                # A stopped one at the start shows its last lines (and is followed again once it starts).
                if name not in live and (running or first):
                    stream = live[name] = open_stream(name, ended.get(name) or (None if first else began))
                    threading.Thread(target=pump, args=(name, stream), daemon=True).start()
            first = False
            deadline = time.monotonic() + poll
            while (left := deadline - time.monotonic()) > 0:
                try:
                    yield merged.get(timeout=left)
                except queue.Empty:
                    break
        while not merged.empty():
            yield merged.get()
    finally:
        for stream in list(live.values()):
            stream.close()


def follow_containers(listed: Listed, since: float | None = None, poll: float = 1.0) -> Iterator[str]:
    """`follow_replicas` for containers, with `docker logs --follow`: at the start their last 100 lines, or
    those of the last `since` seconds. A container started again goes on after the last line read from
    it, by Docker's own timestamp of that line (fixed-width RFC 3339: they compare as text)."""
    last: dict[str, str] = {}  # name -> the timestamp of the last line read from it

    def open_stream(name: str, start: float | None) -> Stream:
        after = last.get(name)
        if after is not None:
            window = ["--since", after]
        elif start is not None:
            window = ["--since", f"{start:.3f}"]
        else:
            window = ["--since", f"{max(since, 0.001):.3f}s"] if since is not None else ["--tail", "100"]
        proc = subprocess.Popen(
            ["docker", "logs", "--follow", "--timestamps", *window, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def lines() -> Iterator[str]:
            assert proc.stdout is not None
            with proc.stdout:
                for line in proc.stdout:
                    stamp, _, text = line.rstrip("\n").partition(" ")
                    if after is not None and stamp <= after:
                        continue  # --since keeps the line at that very time: read already
                    last[name] = stamp
                    yield text
            proc.wait()

        return Stream(lines(), proc.terminate)

    return follow_replicas(listed, open_stream, poll)
