"""Predictor logs you can use: every line a replica writes, prints and library warnings included,
is a record with its time, API, replica and the request being served; `stack logs --since`."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cli import STACK, stack
from common import PREDICTORS, ServerFactory, free_port
from waits import until_seen

from stack.spec import load_spec
from stack.targets import open_target
from stack.targets.logs import Stream, follow_replicas, lines_since, record_time

CHATTY = PREDICTORS / "chatty.py"


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _wait_for(server, needle: str, timeout: float = 10) -> str:  # type: ignore[no-untyped-def]
    return until_seen(server.logs, lambda logs: needle in logs, f"{needle!r} in the logs", timeout)


def test_json_lines_carry_api_replica_and_request_id(servers: ServerFactory) -> None:
    server = servers.serving(
        CHATTY,
        api="chatty",
        log_format="json",
        threads_per_process=2,
        config={"meet": 2},
        env={"STACK_REPLICA": "chatty-7"},
    )
    # Two requests in predict at once, on two threads: each line names its own request.
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda word: server.post(json={"word": word}, headers={"X-Request-ID": f"id-{word}"}), ["ant", "bee"]
            )
        )
    assert [a.json()["word"] for a in answers] == ["ant", "bee"]
    _wait_for(server, "deprecated bee")
    records = _records(server.logs())
    assert all({"time", "level", "logger", "message", "api", "replica"} <= set(r) for r in records), records
    assert {r["api"] for r in records} == {"chatty"} and {r["replica"] for r in records} == {"chatty-7"}
    by_message = {r["message"]: r for r in records}
    loading = by_message["chatty loading"]  # a print from __init__: no request
    assert loading["logger"] == "predictor" and "request_id" not in loading
    for word in ("ant", "bee"):
        printed = by_message[f"thinking about {word}"]
        assert (printed["level"], printed["logger"], printed["request_id"]) == ("info", "predictor", f"id-{word}")
        to_stderr = by_message[f"stderr about {word}"]
        assert (to_stderr["level"], to_stderr["request_id"]) == ("warning", f"id-{word}")
        logged = by_message[f"logged {word}"]
        assert (logged["logger"], logged["request_id"]) == ("chatty.model", f"id-{word}")
        warned = next(r for r in records if f"deprecated {word}" in r["message"])
        assert (warned["logger"], warned["level"], warned["request_id"]) == ("py.warnings", "warning", f"id-{word}")
    # No line of the replica's output is outside a record.
    assert all(line.startswith("{") for line in server.logs().splitlines() if line.strip()), server.logs()


def test_text_lines_of_an_async_predictor_carry_the_request_id(servers: ServerFactory) -> None:
    server = servers.serving(CHATTY, api="chatty", predictor_class="AsyncPredictor", env={"STACK_REPLICA": "r-1"})
    assert server.post(json={"word": "cat"}, headers={"X-Request-ID": "async-1"}).json() == {"word": "cat"}
    logs = _wait_for(server, "async about cat")
    line = next(x for x in logs.splitlines() if "async about cat" in x)
    assert record_time(line) is not None and "INFO" in line
    assert "api=chatty" in line and "replica=r-1" in line and "request_id=async-1" in line, line


def test_lines_since_keeps_whole_records() -> None:
    text = [
        "2026-12-04T10:00:00.000Z INFO    old api=a",
        "Traceback of the old record",
        '{"time": "2026-12-04T10:00:05.250Z", "level": "info", "message": "new"}',
        "Traceback of the new record",
        "2026-12-04T10:00:06Z INFO    newer",
    ]
    cutoff = record_time(text[2])
    assert cutoff is not None and record_time(text[4]) == cutoff + 0.75
    assert list(lines_since(text, cutoff)) == text[2:]
    assert list(lines_since(text, None)) == text


@pytest.fixture
def chatty_project(tmp_path: Path):
    root = tmp_path / "chat"
    root.mkdir()
    shutil.copy(CHATTY, root / "predictor.py")
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: chatty\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\n"
        "apis:\n  - name: talk\n    predictor: {path: predictor.py}\n"
    )
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


def test_stack_logs_since_and_follow_on_the_local_target(chatty_project) -> None:
    root, port = chatty_project
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/talk"
    requests.post(url, json={"word": "early"}, headers={"X-Request-ID": "early-1"}, timeout=10).raise_for_status()
    shown = stack("logs", "--local", "talk", "-p", str(root), cwd=root).stdout
    line = next(x for x in shown.splitlines() if "thinking about early" in x)
    assert line.startswith("talk-1 | ") and "replica=talk-1" in line and "request_id=early-1" in line, line

    # --since: the window is measured back from when `stack logs` runs; a second apart on each side.
    time.sleep(1.1)
    middle = time.time()
    time.sleep(1.1)
    requests.post(url, json={"word": "late"}, headers={"X-Request-ID": "late-1"}, timeout=10).raise_for_status()
    recent = "\n".join(open_target(load_spec(root), "local").logs("talk", False, time.time() - middle))
    assert "thinking about late" in recent and "early" not in recent, recent
    assert (
        "thinking about early" in stack("logs", "--local", "talk", "--since", "10m", "-p", str(root), cwd=root).stdout
    )
    bad = stack("logs", "--local", "talk", "--since", "soon", "-p", str(root), cwd=root, check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr, bad.stderr

    # --follow: a new request's lines appear while it runs.
    follower = subprocess.Popen(
        [*STACK, "logs", "--local", "talk", "--follow", "-p", str(root)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        requests.post(url, json={"word": "followed"}, headers={"X-Request-ID": "f-1"}, timeout=10)
        deadline = time.monotonic() + 20
        seen = ""
        assert follower.stdout is not None
        while time.monotonic() < deadline and "thinking about followed" not in seen:
            seen = follower.stdout.readline()
        assert "thinking about followed" in seen and "request_id=f-1" in seen, seen
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_follow_goes_on_through_a_failed_listing_and_picks_up_a_new_replica() -> None:
    """`--follow` re-lists the replicas as it goes: a listing that fails (the engine or Nomad not
    answering for a moment) keeps the streams it has; a replica listed later is opened from this
    command's start; the stream ends once the API has none. A first listing that fails is the error."""
    answers: queue.Queue[object] = queue.Queue()
    for answer in ([("r-1", True)], OSError("engine busy"), OSError("engine busy"), [("r-1", True), ("r-2", True)]):
        answers.put(answer)
    opened: list[tuple[str, float | None]] = []
    released = {"r-1": threading.Event(), "r-2": threading.Event()}

    def listed() -> list[tuple[str, bool]]:
        answer = answers.get_nowait() if not answers.empty() else []
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    def open_stream(name: str, start: float | None) -> Stream:
        opened.append((name, start))

        def lines() -> Iterator[str]:
            yield f"hello from {name}"
            released[name].wait(10)

        return Stream(lines())

    begun = time.time()
    shown: list[str] = []
    for line in follow_replicas(listed, open_stream, poll=0.05):
        shown.append(line)
        if line == "r-2 | hello from r-2":
            released["r-1"].set()
            released["r-2"].set()
    assert shown == ["r-1 | hello from r-1", "r-2 | hello from r-2"]
    (first, first_start), (second, second_start) = opened
    assert (first, first_start) == ("r-1", None)  # listed at the start: the target's usual window
    assert second == "r-2" and second_start is not None and begun <= second_start <= time.time()  # all of it

    def broken() -> list[tuple[str, bool]]:
        raise OSError("no engine")

    with pytest.raises(OSError, match="no engine"):
        list(follow_replicas(broken, open_stream, poll=0.05))
