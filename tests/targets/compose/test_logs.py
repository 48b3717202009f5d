"""`stack logs API --follow` on Compose, on the real engine: replicas that start after the command began
(the autoscaler's, one woken from zero) are followed too, and one started again goes on from where its
lines ended, without repeating them."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from docker_stack import DOCKER
from waits import until

from stack.targets.logs import follow_containers

pytestmark = DOCKER

# Prints a numbered line when a file appears in the container, so the test decides when lines are written.
SCRIPT = (
    "import os, time, sys\n"
    "print('started', flush=True)\n"
    "n = 0\n"
    "while True:\n"
    "    if os.path.exists('/tmp/say'):\n"
    "        n += 1\n"
    "        os.remove('/tmp/say')\n"
    "        print(f'line {n}', flush=True)\n"
    "    time.sleep(0.02)\n"
)


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_follow_picks_up_replicas_that_start_later_and_restarted_ones_without_repeats(names: list[str]) -> None:
    stamp = int(time.time() * 1000) % 10**8
    first, second = f"logs{stamp}-a", f"logs{stamp}-b"
    for name in (first, second):
        _docker("create", "--name", name, "python:3.11-slim", "python", "-u", "-c", SCRIPT)
        names.append(name)
    _docker("start", first)
    shown: list[str] = []
    listed: list[str] = [first]  # what the API's containers are, as the target would list them

    def containers() -> list[tuple[str, bool]]:
        return [(n, _docker("inspect", "-f", "{{.State.Running}}", n) == "true") for n in list(listed)]

    stream = follow_containers(containers, poll=0.2)
    reader = threading.Thread(target=lambda: shown.extend(stream), daemon=True)
    reader.start()

    def shown_line(line: str, times: int = 1, timeout: float = 30) -> None:
        until(lambda: shown.count(line) >= times, lambda: f"{line!r} shown {times}×; shown: {shown}", timeout)

    def say(name: str) -> None:
        _docker("exec", name, "touch", "/tmp/say")

    try:
        shown_line(f"{first} | started")
        say(first)
        shown_line(f"{first} | line 1")
        # A replica added after `stack logs --follow` began: followed from its first line.
        _docker("start", second)
        listed.append(second)
        shown_line(f"{second} | started")
        say(second)
        shown_line(f"{second} | line 1")
        # One stopped and started again (a replica woken from zero): its new lines follow, the old ones
        # are not shown a second time.
        _docker("stop", "-t", "1", first)
        _docker("start", first)
        say(first)
        shown_line(f"{first} | line 1", timeout=0)
        shown_line(f"{first} | started", times=2)
        say(first)
        shown_line(f"{first} | line 1", times=2)  # the restarted process counts from 1 again
        assert shown.count(f"{second} | started") == 1 and shown.count(f"{second} | line 1") == 1
        assert shown.count(f"{first} | started") == 2, shown  # once per start, never repeated
    finally:
        # The API has no container left (`stack down`): the stream ends.
        listed.clear()
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        reader.join(20)
    assert not reader.is_alive()
