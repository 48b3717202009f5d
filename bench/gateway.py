"""Compose target benchmark: the gateway hop per core count, and cold start.

    python bench/gateway.py [--duration 8]

Brings up examples/echo with `stack up` (one replica, offline wheelhouse build),
then in the same run, for the stack's containers pinned to 1 core (Traefik and
the replica share CPU 0; wrk on CPU 1) and to 2 cores (CPUs 0-1, shared with
wrk), W0 JSON echo with `wrk` at 32 and at 1 connection(s), three ways:
- through the published port (127.0.0.1:PORT, what a client on the host uses:
  Docker's userland proxy, then Traefik, then the replica),
- through Traefik's own address on the stack network (the Traefik hop alone),
- directly to the replica's address.
At equal CPU (1 core) the Traefik hop's cost is its CPU next to the replica's.
Then cold start: `stack down`, `stack up` with the image built, timed to the
first successful prediction through the gateway. Writes the `gateway` section
of bench/RESULTS.md.
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
from runtime import LOAD_CPU, PAYLOAD, _latency, free_port

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
        replica, replica_ip = _container("label=stack.api=echo")
        traefik, traefik_ip = _container("label=stack.role=gateway")
        proxies = _docker_proxies(port)
        host_port = free_port()
        host_gateway = _host_network_gateway(root, traefik, host_port)
        paths = {
            "published port (docker-proxy, Traefik)": f"http://127.0.0.1:{port}/echo",
            "gateway on the host network (Traefik, no proxy)": f"http://127.0.0.1:{host_port}/echo",
            "Traefik's address": f"http://{traefik_ip}:{port}/echo",
            "direct to the replica": f"http://{replica_ip}:8888/",
        }
        results: dict[tuple[int, int], dict[str, tuple[float, float, float]]] = {}
        for cores, cpus in ((1, "0"), (2, "0,1")):
            for container in (replica, traefik, host_gateway):
                subprocess.run(["docker", "update", "--cpuset-cpus", cpus, container], check=True, capture_output=True)
            for pid in proxies:
                subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)
            for connections in (32, 1):
                results[(cores, connections)] = {
                    name: run_wrk(url, connections, args.duration, LOAD_CPU) for name, url in paths.items()
                }
                print(cores, connections, results[(cores, connections)], flush=True)
        subprocess.run([*STACK, "down", str(root)], check=True, capture_output=True)
        cold = cold_start(root, port)
    finally:
        subprocess.run(["docker", "rm", "-f", "benchgw-host-gateway"], capture_output=True)
        subprocess.run([*STACK, "down", "--volumes", str(root)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"cold start: {cold:.1f}s")
    # The daemon's `userland-proxy: false` (NAT instead of docker-proxy) is a section of its own.
    write_section("gateway" if proxies else "gateway-nat", render(results, cold, args.duration, bool(proxies)))


def _container(label: str) -> tuple[str, str]:
    """(id, address on the stack network) of the benchmark stack's container with this label."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", label, "--filter", "label=com.docker.compose.project=benchgw"],
        capture_output=True,
        text=True,
    ).stdout.split()
    info = json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True).stdout)[0]
    return ids[0], info["NetworkSettings"]["Networks"]["benchgw-stack"]["IPAddress"]


def _host_network_gateway(root: Path, traefik: str, port: int) -> str:
    """A second Traefik beside the stack's, in the host's network namespace (no published port, so no
    userland proxy), with the stack's own flags and routes file; its container id."""
    info = json.loads(subprocess.run(["docker", "inspect", traefik], capture_output=True, text=True).stdout)[0]
    flags = [
        f"--entrypoints.web.address=127.0.0.1:{port}" if a.startswith("--entrypoints.web.address=") else a
        for a in info["Args"]
        if not a.startswith(("--entrypoints.metrics", "--metrics", "--ping"))
    ]
    routes = root / ".stack/compose/control/routes"
    command = ["docker", "run", "-d", "--name", "benchgw-host-gateway", "--network", "host"]
    command += ["-v", f"{routes}:/routes:ro", info["Config"]["Image"], *flags]
    container = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=1).status_code == 200:
                return container
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the host-network gateway did not route within 30 s")


def _docker_proxies(port: int) -> list[int]:
    """Docker's userland proxy processes for the published port (none with `userland-proxy: false`)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"docker-proxy") and str(port).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


def run_wrk(url: str, connections: int, duration: int, cpu: str) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of wrk posting the W0 payload to url, after a 2 s warm-up."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(PAYLOAD)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    base = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", "-s", str(script), url]
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
    results: dict[tuple[int, int], dict[str, tuple[float, float, float]]], cold: float, duration: int, proxied: bool
) -> str:
    lines = [
        "## Compose target: the gateway hop and cold start"
        + ("" if proxied else " — the daemon with `userland-proxy: false`"),
        "",
        f"`python bench/gateway.py --duration {duration}` — examples/echo, one replica, `stack up` on the local "
        "Docker engine; W0 with `wrk` four ways in one run: through the published port (Docker's userland "
        "proxy — or, with the daemon's `userland-proxy: false`, NAT — then Traefik), through a second Traefik "
        "with the stack's flags and routes on the host network (no published port), through Traefik's own "
        "address on the stack network, and straight to the replica. "
        "The stack's containers (and the proxy) pinned to 1 core (CPU 0; `wrk` alone on CPU 1: equal CPU for "
        "the serving side) and to 2 cores (CPUs 0-1, shared with `wrk`).",
        "",
        "| cores | connections | path | req/s | × direct | p50 ms | p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (cores, connections), paths in results.items():
        direct = paths["direct to the replica"]
        for name, (rps, p50, p99) in paths.items():
            lines.append(
                f"| {cores} | {connections} | {name} | {rps:,.0f} | {rps / direct[0]:.2f} | {p50:.2f} | {p99:.2f} |"
            )
    lines.append("")
    for (cores, connections), paths in results.items():
        direct, hop = paths["direct to the replica"], paths["Traefik's address"]
        lines.append(
            f"- {cores} core(s), {connections} connection(s): the Traefik hop adds **{hop[1] - direct[1]:.2f} ms "
            f"at p50** and {hop[2] - direct[2]:.2f} ms at p99; throughput ×{hop[0] / direct[0]:.2f} of direct."
        )
    if not proxied:
        lines.append(
            "- The engine runs without the userland proxy (`userland-proxy: false`): the published port is NAT."
        )
    lines += [
        "",
        f"Cold start, `stack up` with the image built to the first successful prediction through the "
        f"gateway: **{cold:.1f} s**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
