"""The autoscaler on the real Compose stack: how soon does a load step get a new replica?

    python bench/autoscale_compose.py

One API (a predictor taking 250 ms, one request at a time, target concurrency 1, 1..8
replicas, Cortex's default 60 s window and 60 s upscale stabilization, 1 s
scrape) on the real
engine, Traefik and Prometheus. Each round holds 8 requests in flight from a
standing start at 1 replica and reports, from the responses themselves (each
names the replica that answered), the seconds from the load step to the
first response served by an added replica and to 4 replicas serving; then
waits for the API to shrink back to 1. Rounds, side by side in one run: the
stack's own autoscaler service (our policy), and `stack autoscale` on the
host with Cortex's policy and with ours. Writes the `autoscale-compose`
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from results import write_section
from stack.targets.compose.plan import CONTROL_DIR

# One request at a time per replica: queueing shows in the latency, as with a real model.
PREDICTOR = """import socket
import time


class Predictor:
    def predict(self, payload):
        time.sleep(0.25)
        return {"replica": socket.gethostname()}
"""
STACK = [sys.executable, "-m", "stack.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Round:
    name: str
    policy: str
    first_added: float | None = None  # seconds from the step to the first answer by an added replica
    four_serving: float | None = None
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    failures: int = 0
    requests: int = 0
    replicas: set[str] = field(default_factory=set)


def hold_load(url: str, concurrency: int, seconds: float, result: Round) -> None:
    """`concurrency` clients posting back to back; records who answered and when."""
    start = time.monotonic()
    first: set[str] = set()
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() - start < seconds:
            sent = time.monotonic()
            try:
                response = session.post(url, json={}, timeout=30)
                ok = response.status_code == 200
                replica = response.json()["replica"] if ok else ""
            except (requests.RequestException, ValueError):
                ok, replica = False, ""
            done = time.monotonic()
            with lock:
                result.requests += 1
                latencies.append(done - sent)
                if not ok:
                    result.failures += 1
                    continue
                if not first:
                    first.add(replica)
                if replica not in result.replicas:
                    result.replicas.add(replica)
                    if replica not in first and result.first_added is None:
                        result.first_added = done - start
                    if len(result.replicas) >= 4 and result.four_serving is None:
                        result.four_serving = done - start

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    result.p99_ms = 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
    result.mean_ms = 1000 * statistics.fmean(latencies) if latencies else 0.0


def containers(project: str, label: str, every: bool = False) -> list[str]:
    command = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}", "--filter", label]
    return subprocess.run([*command, *(["-a"] if every else [])], capture_output=True, text=True).stdout.split()


def running_replicas(project: str) -> int:
    return len(containers(project, "label=stack.api"))


def wait_for_one(project: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while running_replicas(project) != 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"{project} did not shrink back to 1 replica within {timeout:.0f}s")
        time.sleep(1)
    time.sleep(10)  # let the panic window forget the last round


def autoscaler_container(project: str) -> str:
    return containers(project, "label=stack.role=autoscaler", every=True)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=100, help="load per round")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stack-autoscale-bench-"))
    project = f"asbench{int(time.time()) % 10**6}"
    port, prom_port = free_port(), free_port()
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "stack.yaml").write_text(
        f"project: {project}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {prom_port}, scrape_interval: 1s}}\n"
        "build: {wheelhouse: true}\n"
        "apis:\n"
        "  - name: bench\n"
        "    predictor: {path: predictor.py, threads_per_process: 1, drain_delay: 2s, grace_period: 5s}\n"
        "    autoscaling:\n"
        "      min_replicas: 1\n"
        "      max_replicas: 8\n"
        "      target_replica_concurrency: 1\n"
        # Cortex's defaults for what decides a step up; a short scale-down so rounds end sooner.
        "      window: 60s\n"
        "      upscale_stabilization_period: 60s\n"
        "      downscale_stabilization_period: 5s\n"
    )
    url = f"http://127.0.0.1:{port}/bench"
    rounds: list[Round] = []
    try:
        subprocess.run([*STACK, "up", str(root)], check=True, capture_output=True)
        in_stack = Round("autoscaler service in the stack", "stack")
        hold_load(url, 8, args.seconds, in_stack)
        rounds.append(in_stack)
        wait_for_one(project)
        subprocess.run(["docker", "stop", autoscaler_container(project)], check=True, capture_output=True)
        for policy in ("cortex", "stack"):
            log = open(root / f"autoscale-{policy}.log", "w")  # noqa: SIM115 (closed below)
            # The service is also the stack's controller (routes, targets): on the host, it is both too.
            host = subprocess.Popen(
                [
                    *STACK,
                    "autoscale",
                    str(root),
                    "--target",
                    "compose",
                    "--policy",
                    policy,
                    "--metrics-port",
                    str(free_port()),
                    "--state-dir",
                    str(root / ".stack" / "autoscaler"),
                    "--control-dir",
                    str(root / CONTROL_DIR),
                    "--network",
                    f"{project}-stack",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            time.sleep(2)
            result = Round("`stack autoscale` on the host", policy)
            hold_load(url, 8, args.seconds, result)
            rounds.append(result)
            wait_for_one(project)
            host.terminate()
            host.wait(30)
            log.close()
    finally:
        subprocess.run([*STACK, "down", "--volumes", str(root)], capture_output=True)
    write_section("autoscale-compose", report(rounds, args.seconds))
    print(json.dumps([r.__dict__ | {"replicas": len(r.replicas)} for r in rounds], indent=1))


def report(rounds: list[Round], seconds: float) -> str:
    def s(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f}"

    lines = [
        "## Autoscaling on the real Compose stack",
        "",
        "`python bench/autoscale_compose.py` — one API (a predictor taking 250 ms, one request at a time per "
        "replica, target concurrency 1, "
        "1..8 replicas, Cortex's default 60 s window and 60 s upscale stabilization, 5 s downscale stabilization, "
        "1 s scrape) on the real engine, Traefik and "
        f"Prometheus; each round holds 8 requests in flight for {seconds:g} s from a standing start at 1 replica. "
        "Times come from the responses: each names the replica that served it.",
        "",
        "| autoscaler | policy | load step → first added replica serving, s | → 4 replicas serving, s | "
        "replicas that served | mean latency ms | p99 latency ms | requests (failed) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.name} | {r.policy} | {s(r.first_added)} | {s(r.four_serving)} | {len(r.replicas)} | "
            f"{r.mean_ms:,.0f} | {r.p99_ms:,.0f} | {r.requests:,} ({r.failures}) |"
        )
    ours = [r for r in rounds if r.policy == "stack" and r.first_added is not None]
    cortex = next((r for r in rounds if r.policy == "cortex"), None)
    if ours and cortex is not None:
        first = statistics.median(r.first_added for r in ours if r.first_added is not None)
        mean = statistics.median(r.mean_ms for r in ours)
        sooner = f"{cortex.first_added / first:.1f}× sooner" if cortex.first_added else "where Cortex's never came"
        lines += [
            "",
            f"First added replica serving: ours after {first:.1f} s (median of our rounds), {sooner} than "
            f"Cortex's policy; mean latency over the round {mean:,.0f} ms against {cortex.mean_ms:,.0f} ms "
            f"({cortex.mean_ms / mean:.1f}× lower). Cortex's policy waits out its upscale stabilization "
            "(never above the lowest recommendation of the last minute); ours skips it in panic mode "
            "(load at twice the ready capacity) and ticks every scrape.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
