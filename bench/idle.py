"""What an idle stack costs: CPU of idle replicas and of their controller, per target, in one run.

    python bench/idle.py              # Compose (when Docker runs here) and the local target
    python bench/idle.py --local      # the local target only

Ten echo APIs of one replica each, no traffic. After the stack settles, each replica's CPU time is read
twice, `--seconds` apart (local: /proc/PID/stat of the replica's process tree; Compose: the container's
cgroup through the engine's stats), as a share of one core; the controller's too (it probes every replica's
/healthz every 2 s). For comparison, in the same run, the health check Compose replicas had before
(Docker running `python -m serving.probe` in the replica every 2 s) is replayed with `docker exec` against
one idle replica, and measured the same way. Writes the `idle` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from stackrun import ROOT, free_port, stack

from results import write_section

APIS = 10
TICKS = os.sysconf("SC_CLK_TCK")
# What the replicas' Docker health check ran every 2 s until the controller probed them over HTTP.
OLD_PROBE = (
    "import http.client,sys;c=http.client.HTTPConnection('127.0.0.1',8888,timeout=2);"
    "c.request('GET','/readyz');sys.exit(0 if c.getresponse().status==200 else 1)"
)


def project(base: Path, name: str) -> Path:
    root = base / name
    shutil.copytree(ROOT / "examples" / "echo", root, ignore=shutil.ignore_patterns(".stack", "stack.yaml"))
    one = "    predictor: {path: predictor.py}\n    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
    apis = "".join(f"  - name: idle{i}\n{one}" for i in range(APIS))
    (root / "stack.yaml").write_text(
        f"project: {name}\ngateway: {{port: {free_port()}}}\nprometheus: {{port: {free_port()}}}\napis:\n{apis}"
    )
    return root


def process_seconds(pid: int) -> float:
    """CPU seconds of a process and everything below it."""
    total = 0.0
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in os.listdir(f"/proc/{current}/task"):
                queue += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def container_seconds(name: str) -> float:
    """CPU seconds of everything in a container's cgroup (its processes and any exec'd into it), from the
    engine's stats (cgroup v1 or v2 alike)."""
    import docker

    stats = docker.from_env().containers.get(name).stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def share(before: float, after: float, seconds: float) -> float:
    return (after - before) / seconds * 100


def local_run(base: Path, seconds: float) -> list[str]:
    root = project(base, f"idlelocal{os.getpid()}")
    up = stack("up", "--local", str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up --local failed:\n{up.stderr}")
    try:
        time.sleep(10)  # settled: every replica ready, the first probes and scrapes done
        status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)
        replicas = [r["pid"] for a in status["apis"] for r in a["replicas"]]
        supervisor = int(status["pid"])
        before = [process_seconds(p) for p in replicas]
        own = process_seconds(supervisor) - sum(before)
        time.sleep(seconds)
        after = [process_seconds(p) for p in replicas]
        own_after = process_seconds(supervisor) - sum(after)
        per = [share(b, a, seconds) for b, a in zip(before, after, strict=True)]
        return [
            f"| local | {len(per)} | {statistics.mean(per):.2f}% | {max(per):.2f}% | "
            f"{share(own, own_after, seconds):.2f}% (supervisor, Traefik, Prometheus) | — |"
        ]
    finally:
        stack("down", "--local", str(root), cwd=root)


def compose_run(base: Path, seconds: float) -> list[str]:
    name = f"idlecompose{os.getpid()}"
    root = project(base, name)
    up = stack("up", str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up failed:\n{up.stderr}")
    try:
        time.sleep(10)
        listed = subprocess.run(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={name}", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        replicas = sorted(n for n in listed if "-idle" in n)
        controller = next(n for n in listed if n.endswith("-autoscaler-1"))
        before = [container_seconds(n) for n in replicas]
        own = container_seconds(controller)
        time.sleep(seconds)
        after = [container_seconds(n) for n in replicas]
        own_after = container_seconds(controller)
        per = [share(b, a, seconds) for b, a in zip(before, after, strict=True)]
        # The old way, replayed on one replica for the same time: a Python probe started in it every 2 s.
        probed = replicas[0]
        stop = threading.Event()

        def old_health_check() -> None:
            while not stop.wait(2.0):
                subprocess.run(["docker", "exec", probed, "python", "-c", OLD_PROBE], capture_output=True)

        checker = threading.Thread(target=old_health_check, daemon=True)
        start = container_seconds(probed)
        checker.start()
        time.sleep(seconds)
        stop.set()
        checker.join(10)
        old = share(start, container_seconds(probed), seconds)
        mean = statistics.mean(per)
        return [
            f"| compose | {len(per)} | {mean:.2f}% | {max(per):.2f}% | {share(own, own_after, seconds):.2f}% "
            f"(controller) | {old:.2f}% per replica = {old / max(mean, 0.01):.0f}x |"
        ]
    finally:
        stack("down", "--images", str(root), cwd=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="the local target only")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measuring window")
    args = parser.parse_args()
    docker_ok = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if docker_ok and not args.local:
            rows += compose_run(Path(tmp), args.seconds)
        rows += local_run(Path(tmp), args.seconds)
    lines = [
        "## Idle: what ten idle APIs cost (issue: day 2)",
        "",
        f"`python bench/idle.py --seconds {args.seconds:g}` — ten echo APIs of one replica each, no traffic; CPU",
        "over the window as a share of one core. The controller asks every replica's /healthz every 2 s over HTTP",
        "(liveness, readiness and the keys it applies, in one probe). The last column replays, on one idle replica",
        "in the same run, the Docker health check Compose replicas had before (`python -m serving.probe` started",
        "in the replica every 2 s), and divides by today's idle replica.",
        "",
        "| target | replicas | CPU per idle replica (mean) | (max) | the stack's own processes "
        "| the old health check |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_section("idle", "\n".join(lines))


if __name__ == "__main__":
    main()
