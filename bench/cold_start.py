"""Scale to zero: how long the first request to an idle API waits, per target.

    python bench/cold_start.py            # local and (when Docker runs here) Compose
    python bench/cold_start.py --local    # the local target only

The echo example with `min_replicas: 0` and a 3 s `idle_timeout`, built by
`stack up`. Each round waits until the API runs no replica, then times one
request from send to the whole answer (the predictor loads nothing: what is
measured is ours — noticing the request, starting the replica process or
container, its imports, readiness, forwarding). Writes the `cold-start`
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from stackrun import ROOT, free_port, stack

from results import write_section

ROUNDS = 5


def status(root: Path, flags: list[str]) -> str:
    result = stack("status", *flags, "--json", "-p", str(root), cwd=root)
    return str(json.loads(result.stdout)["apis"][0]["status"]) if result.returncode == 0 else "?"


def measure(target: str, base: Path) -> list[float]:
    port = free_port()
    root = base / target
    shutil.copytree(ROOT / "examples" / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"cold{target}{os.getpid()}"
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: echo\n"
        "    predictor: {path: predictor.py}\n"
        "    autoscaling: {min_replicas: 0, max_replicas: 2, idle_timeout: 3s, window: 4s,\n"
        "                  downscale_stabilization_period: 2s, upscale_stabilization_period: 0s}\n"
    )
    flags = ["--local"] if target == "local" else []
    up = stack("up", *flags, str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up failed:\n{up.stderr}")
    times = []
    try:
        for _ in range(ROUNDS):
            deadline = time.monotonic() + 120
            while status(root, flags) != "scaled to zero":
                if time.monotonic() > deadline:
                    raise SystemExit(f"{target}: never scaled to zero")
                time.sleep(0.5)
            started = time.monotonic()
            answer = requests.post(f"http://127.0.0.1:{port}/echo", json={"cold": True}, timeout=120)
            took = time.monotonic() - started
            if answer.status_code != 200:
                raise SystemExit(f"{target}: the cold request got {answer.status_code}: {answer.text}")
            times.append(took)
            print(f"{target}: {took:.2f} s", flush=True)
    finally:
        stack("down", *flags, *([] if flags else ["--volumes"]), str(root), cwd=root)
        if not flags:
            for image in subprocess.run(
                ["docker", "images", "-q", f"{name}-*"], capture_output=True, text=True
            ).stdout.split():
                subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="the local target only")
    args = parser.parse_args()
    docker_ok = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in ["local"] + (["compose"] if docker_ok and not args.local else []):
            times = measure(target, Path(tmp))
            median, fastest, slowest = statistics.median(times), min(times), max(times)
            rows.append(f"| {target} | {median:.2f} s | {fastest:.2f} s | {slowest:.2f} s | {len(times)} |")
    body = "\n".join(
        [
            "## Cold start: the first request to an API scaled to zero",
            "",
            "`python bench/cold_start.py` — the echo example (nothing to load), `min_replicas: 0`; each round waits",
            "until no replica runs, then times one request from send to the whole answer.",
            "",
            "| target | median | fastest | slowest | rounds |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            "For scale: Knative publishes no fixed activator figure; users report about 15 s to start a function",
            "from zero on Knative (gitlab-org/gitlab#29097, 2019), most of it pod scheduling and image start.",
        ]
    )
    write_section("cold-start", body)


if __name__ == "__main__":
    main()
