"""BatchAPI tests' helpers: a job submitted and followed like a client does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from cli import stack
from waits import until_seen


class Batch:
    def __init__(self, root: Path, port: int, out: Path) -> None:
        self.root, self.port, self.out = root, port, out
        self.url = f"http://127.0.0.1:{port}/scorer"

    def submit(self, body: dict[str, Any], api: str = "scorer") -> requests.Response:
        return requests.post(f"http://127.0.0.1:{self.port}/{api}", json=body, timeout=30)

    def job(self, job_id: str, api: str = "scorer") -> dict[str, Any]:
        answer = requests.get(f"http://127.0.0.1:{self.port}/{api}", params={"jobID": job_id}, timeout=10)
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()["job_status"]
        return status

    def wait(self, job_id: str, done: Callable[[dict[str, Any]], bool], what: str, api: str = "scorer") -> dict:
        return until_seen(lambda: self.job(job_id, api), done, f"job {job_id}: {what}", 90)

    def ended(self, job_id: str, api: str = "scorer") -> dict[str, Any]:
        return self.wait(job_id, lambda s: s["status"] not in ("status_enqueuing", "status_running"), "end", api)

    def results(self, job_id: str) -> list[dict[str, Any]]:
        path = self.out / f"{job_id}.results.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def completions(self, job_id: str) -> list[dict[str, Any]]:
        path = self.out / f"{job_id}.complete.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def started(self, gate: str) -> int:
        marker = self.out / f"{gate}.started"
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, f"the batch gated on {gate} never started"
            time.sleep(0.05)
        return int(marker.read_text())

    def release(self, gate: str) -> None:
        (self.out / f"{gate}.release").write_text("go")

    def up(self) -> None:
        stack("up", "--local", str(self.root), cwd=self.root)
