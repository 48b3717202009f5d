"""Compose target benchmark: the gateway hop, and cold start.

    python bench/gateway.py [--duration 10]

Brings up examples/echo with `stack up` (one replica, offline wheelhouse build),
then in the same run:
- W0 JSON echo at 32 connections through Traefik (`/echo` on the gateway) and
  directly to the replica (its container address on the stack network), one
  after the other with `wrk`; the difference is the gateway hop.
- Cold start: `stack down`, then `stack up` with the image already built, timed
  to the first successful prediction through the gateway.
Writes the `gateway` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from runtime import PAYLOAD, _latency, free_port

from results import write_section

HERE = Path(__file__).resolve().parent
STACK = [sys.executable, "-m", "stack.cli"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    root = work / "echo"
    shutil.copytree(HERE.parent / "examples" / "echo", root)
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: benchgw\ngateway: {{port: {port}}}\nprometheus: {{port: {free_port()}}}\n"
        "build: {wheelhouse: true}\n"
        "apis:\n  - name: echo\n    predictor: {path: predictor.py}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
    )
    try:
        subprocess.run([*STACK, "up", str(root)], check=True, capture_output=True)
        replica = _replica_address()
        results = {}
        for connections in (32, 1):
            results[connections] = (
                run_wrk(f"http://127.0.0.1:{port}/echo", connections, args.duration),
                run_wrk(f"http://{replica}:8888/", connections, args.duration),
            )
        subprocess.run([*STACK, "down", str(root)], check=True, capture_output=True)
        cold = cold_start(root, port)
    finally:
        subprocess.run([*STACK, "down", "--volumes", str(root)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{results}\ncold start: {cold:.1f}s")
    write_section("gateway", render(results, cold, args.duration))


def _replica_address() -> str:
    ids = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            "label=stack.api=echo",
            "--filter",
            "label=com.docker.compose.project=benchgw",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    info = json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True).stdout)[0]
    return info["NetworkSettings"]["Networks"]["benchgw-stack"]["IPAddress"]


def run_wrk(url: str, connections: int, duration: int) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of wrk posting the W0 payload to url, after a 2 s warm-up."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(PAYLOAD)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    base = ["wrk", "-t1", f"-c{connections}", "-s", str(script), url]
    subprocess.run([*base, "-d2s"], capture_output=True)
    time.sleep(1)
    out = subprocess.run([*base, f"-d{duration}s", "--latency"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rps, _latency(out, "50%"), _latency(out, "99%")


def cold_start(root: Path, port: int) -> float:
    start = time.monotonic()
    proc = subprocess.Popen([*STACK, "up", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=1).status_code == 200:
                elapsed = time.monotonic() - start
                break
        except requests.RequestException:
            pass
        time.sleep(0.05)
    proc.wait()
    return elapsed


def render(
    results: dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]], cold: float, duration: int
) -> str:
    lines = [
        "## Compose target: the gateway hop and cold start",
        "",
        f"`python bench/gateway.py --duration {duration}` — examples/echo, one replica, `stack up` on the local "
        "Docker engine; `wrk` through Traefik and then straight to the replica's container address, same run, "
        "at 32 connections (W0, saturating the 2 cores that Traefik, the replica and wrk share) and at 1 "
        "connection (the hop's own latency, no queueing).",
        "",
        "| connections | path | req/s | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|",
    ]
    for connections, (gateway, direct) in results.items():
        lines.append(f"| {connections} | through Traefik | {gateway[0]:,.0f} | {gateway[1]:.2f} | {gateway[2]:.2f} |")
        lines.append(
            f"| {connections} | direct to the replica | {direct[0]:,.0f} | {direct[1]:.2f} | {direct[2]:.2f} |"
        )
    lines.append("")
    for connections, (gateway, direct) in results.items():
        lines.append(
            f"- {connections} connection(s): the gateway hop adds **{gateway[1] - direct[1]:.2f} ms at p50** "
            f"and **{gateway[2] - direct[2]:.2f} ms at p99** (throughput ×{gateway[0] / direct[0]:.2f})."
        )
    lines += [
        "",
        f"Cold start, `stack up` with the image built to the first successful prediction through the "
        f"gateway: **{cold:.1f} s**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
