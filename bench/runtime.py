"""Predictor runtime benchmark: our server against named peers, side by side, one run.

    python bench/runtime.py [--duration 10]

Each server is pinned to CPU 0 and wrk to CPU 1 (`taskset`), one at a time.
W0: JSON echo at 32 connections — bare aiohttp (the ceiling), ours with async
and sync predict, FastAPI + uvicorn, LitServe — in interleaved rounds; each
round's ratio to bare aiohttp is taken in that round, and the median ratio is
reported (this machine's throughput drifts by ±20% between runs; a ratio of
back-to-back runs drifts far less). W3: a predictor costing 20 ms + 0.2 ms per
item at 64 connections, batching (32, 10 ms) against off. W4: a simulated
accelerator (one batch at a time, 2 ms + 0.025 ms an item, the GIL released,
as the GPU benchmark's model on an H200) with the GPU benchmark's payloads:
the model alone, ours and LitServe with batching off and 32 / 5 ms — how much
of the model's own throughput the server keeps, on one core. Also the
resident memory of an echo replica. Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from results import write_section

HERE = Path(__file__).resolve().parent
PY = sys.executable
PAYLOAD = json.dumps({"inputs": [1.5, 2.5, 3.5], "text": "a predictor is just a class", "n": 7})
TOKENS = json.dumps({"ids": [(i * 7919) % 30522 for i in range(128)]})  # W4: the GPU benchmark's payload
SERVER_CPU, LOAD_CPU = "0", "1"
W4_ROUNDS = 3


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ours(predictor: str, port: int, **config: object) -> list[str]:
    os.environ["STACK_SERVING_CONFIG"] = json.dumps(
        {
            "predictor_path": str(HERE / "predictors" / predictor),
            "api": "bench",
            "host": "127.0.0.1",
            "port": port,
            "log_level": "warning",
            "drain_delay": 0,
            **config,
        }
    )
    return [PY, "-m", "serving"]


def start(command: list[str], port: int, path: str = "/", body: str = PAYLOAD) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                requests.post(
                    f"http://127.0.0.1:{port}{path}", data=body, timeout=2, headers={"Content-Type": "application/json"}
                ).status_code
                == 200
            ):
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{command} did not answer on port {port}")


def descendants(pid: int) -> list[int]:
    """Every process below pid (LitServe leaves busy-polling workers behind otherwise)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen[bytes]) -> None:
    family = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in family:  # whatever outlived its parent, in or out of the process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wrk(port: int, path: str, connections: int, duration: int, body: str = PAYLOAD) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
    # Warm up, let the requests the warm-up left queued drain, then measure.
    subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            "-d2s",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
    )
    time.sleep(3)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, _latency(out, "50%"), _latency(out, "99%"), errors


def _latency(out: str, quantile: str) -> float:
    value, unit = re.search(rf"^\s+{quantile}\s+([\d.]+)(us|ms|s)\b", out, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(
    name: str,
    command: list[str],
    duration: int,
    connections: int,
    path: str = "/",
    body: str = PAYLOAD,
    port: int | None = None,
) -> Result:
    """Start the server, load it, stop it. The port is `port`, else the command's last argument."""
    if port is None:
        port = int(command.pop())
    proc = start(command, port, path, body)
    try:
        rps, p50, p99, errors = wrk(port, path, connections, duration, body)
    finally:
        stop(proc)
    print(f"{name:<34} {rps:>9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}", flush=True)
    return Result(name, rps, p50, p99, errors)


def median(results: list[Result]) -> Result:
    ranked = sorted(results, key=lambda r: r.rps)
    return ranked[len(ranked) // 2]


def ratio_table(rows: list[tuple[str, Result, float]], ratio: str = "ratio") -> str:
    """A markdown table of (configuration, its median result, its ratio) rows, as RESULTS.md shows them."""
    lines = [f"| configuration | req/s | {ratio} | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, r, value in rows:
        lines.append(f"| {name} | {r.rps:,.0f} | {value:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    return "\n".join(lines)


def median_ratio(results: list[Result], ceilings: list[Result]) -> float:
    """The median over rounds of this server's req/s over the ceiling's in the same round."""
    ratios = sorted(r.rps / c.rps for r, c in zip(results, ceilings, strict=True))
    return ratios[len(ratios) // 2]


def paired(build: Callable[[int], list[str]], duration: int, rounds: int) -> float:
    """Bare aiohttp and another server on the server CPU at once, each loaded by its own wrk (32
    connections) on the load CPU: the ratio of their req/s is the inverse ratio of their CPU cost
    per request, and both live through the same disturbances of the machine. The median over rounds."""
    ratios = []
    for _ in range(rounds):
        bare_port, port = free_port(), free_port()
        bare = start([PY, str(HERE / "peers/bare_aiohttp.py"), str(bare_port)], bare_port)
        try:
            other = start(build(port), port)
            try:
                with ThreadPoolExecutor(2) as pool:
                    ceiling, rps = pool.map(lambda p: wrk(p, "/", 32, duration)[0], (bare_port, port))
            finally:
                stop(other)
        finally:
            stop(bare)
        ratios.append(rps / ceiling)
    return sorted(ratios)[len(ratios) // 2]


def model_alone_w4(seconds: float = 3.0) -> float:
    """Items/s of W4's predictor called on 32 payloads in a loop: the ceiling no server can pass."""
    sys.path.insert(0, str(HERE / "predictors"))
    from device_sim import Predictor

    predictor, payloads = Predictor({}), [json.loads(TOKENS) for _ in range(32)]
    start, items = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        predictor.predict(payloads)
        items += len(payloads)
    return items / (time.perf_counter() - start)


def replica_rss_mb() -> float:
    port = free_port()
    proc = start(ours("echo_async.py", port), port)
    try:
        wrk(port, "/", 32, 3)
        status = Path(f"/proc/{_server_pid(proc)}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
    finally:
        stop(proc)


def _server_pid(proc: subprocess.Popen[bytes]) -> int:
    # taskset execs the command, so the pid is the server's own.
    return proc.pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="W0 rounds, interleaved; medians are reported")
    args = parser.parse_args()
    d = args.duration

    print("W0: JSON echo, 32 connections")
    servers = [
        ("bare aiohttp (ceiling)", lambda p: [PY, str(HERE / "peers/bare_aiohttp.py"), str(p)], "/"),
        ("stack serving, async predict", lambda p: ours("echo_async.py", p), "/"),
        ("stack serving, sync predict", lambda p: ours("echo_sync.py", p), "/"),
        ("FastAPI + uvicorn", lambda p: [PY, str(HERE / "peers/fastapi_echo.py"), str(p)], "/"),
        ("LitServe", lambda p: [PY, str(HERE / "peers/litserve_echo.py"), str(p)], "/predict"),
    ]
    rounds: dict[str, list[Result]] = {name: [] for name, _, _ in servers}
    for _ in range(args.rounds):  # interleaved, so drift in the machine hits every server alike
        for name, build, path in servers:
            port = free_port()
            rounds[name].append(measure(name, [*build(port), str(port)], d, 32, path=path))
    w0 = [median(results) for results in rounds.values()]
    ceilings = rounds[servers[0][0]]
    ratios = [median_ratio(results, ceilings) for results in rounds.values()]
    print("W0 at once: each of ours beside bare aiohttp on the server CPU")
    together = {}
    for name, build, _ in servers[:3]:  # bare aiohttp beside itself: the method's own error
        together[name] = paired(build, d, args.rounds)
        print(f"{name:<34} {together[name]:.2f}x bare aiohttp's req/s, both at once", flush=True)

    print("W3: 20 ms + 0.2 ms/item predictor, 64 connections")
    w3 = []
    port = free_port()
    w3.append(measure("batching off", [*ours("sleep_batch.py", port), str(port)], d, 64))
    port = free_port()
    w3.append(
        measure(
            "batching 32 / 10 ms",
            [
                *ours(
                    "sleep_batch.py",
                    port,
                    config={"batched": True},
                    batching={"max_batch_size": 32, "batch_interval": 0.01},
                ),
                str(port),
            ],
            d,
            64,
        )
    )

    print("W4: simulated accelerator, 64 connections")
    alone = model_alone_w4()
    print(f"{'model alone: predict() on 32 payloads':<34} {alone:>9.0f} items/s", flush=True)
    batched = {"max_batch_size": 32, "batch_interval": 0.005}

    def ours_w4(extra: dict[str, object]) -> Callable[[int], tuple[list[str], str]]:
        return lambda port: (ours("device_sim.py", port, max_concurrency=1024, **extra), "/")

    def litserve_w4(batch: str) -> Callable[[int], tuple[list[str], str]]:
        return lambda port: ([PY, str(HERE / "peers/litserve_sim.py"), str(port), batch, "0.005"], "/predict")

    w4_servers = [
        ("ours, batching off", ours_w4({})),
        ("ours, batching 32 / 5 ms", ours_w4({"batching": batched})),
        ("ours, batching 32 / 5 ms, eager", ours_w4({"batching": {**batched, "eager": True}})),
        ("LitServe, batching off", litserve_w4("1")),
        ("LitServe, batching 32 / 5 ms", litserve_w4("32")),
    ]
    w4_rounds: dict[str, list[Result]] = {name: [] for name, _ in w4_servers}
    for _ in range(W4_ROUNDS):  # interleaved, as W0
        for name, launch in w4_servers:
            port = free_port()
            command, path = launch(port)
            w4_rounds[name].append(measure(name, command, d, 64, path=path, body=TOKENS, port=port))
    w4 = [median(results) for results in w4_rounds.values()]

    rss = replica_rss_mb()
    print(f"echo replica RSS after load: {rss:.1f} MB")
    write_section("runtime", render(w0, ratios, together, w3, alone, w4, rss, d, args.rounds))


def render(
    w0: list[Result],
    ratios: list[float],
    together: dict[str, float],
    w3: list[Result],
    alone: float,
    w4: list[Result],
    rss: float,
    duration: int,
    rounds: int,
) -> str:
    lines = [
        "## Predictor runtime (issue: serving/)",
        "",
        f"`python bench/runtime.py --duration {duration} --rounds {rounds}` — server pinned to CPU 0, `wrk` on CPU 1, "
        f"one server at a time, 2 s warm-up then a {duration} s run; W0 runs the servers in {rounds} interleaved "
        "rounds and reports each one's median req/s and its median ratio to bare aiohttp in the same round. "
        "Request logging is off in every server (ours: log level "
        "warning; with per-request info logs ours costs about 15 µs more per request).",
        "",
        "### W0: JSON echo, 32 connections",
        "",
        "| server | req/s | × bare aiohttp | × bare aiohttp, both at once | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, ratio in zip(w0, ratios, strict=True):
        at_once = f"{together[r.name]:.2f}" if r.name in together else ""
        lines.append(
            f"| {r.name} | {r.rps:,.0f} | {ratio:.2f} | {at_once} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        )
    lines += [
        "",
        "*Both at once*: the server and bare aiohttp share CPU 0 at the same time, each loaded by its own "
        "`wrk` on CPU 1, so the ratio of their req/s is the inverse ratio of their CPU per request and both "
        f"live through the same disturbances (median of {rounds} rounds; bare aiohttp beside itself gives the "
        "method's own error). One server at a time, this machine's throughput drifts by ±20% from run to run.",
    ]
    off, on = w3
    lines += [
        "",
        "### W3: predictor costing 20 ms + 0.2 ms per item, 64 connections",
        "",
        "| batching | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
        f"| {off.name} | {off.rps:,.1f} | {off.p50_ms:.1f} | {off.p99_ms:.1f} | {off.errors} |",
        f"| {on.name} | {on.rps:,.1f} | {on.p50_ms:.1f} | {on.p99_ms:.1f} | {on.errors} |",
        "",
        f"Batching gives **{on.rps / off.rps:.1f}×** the throughput of batching off.",
        "",
        "### W4: simulated accelerator (one batch at a time, 2 ms + 0.025 ms an item), 64 connections",
        "",
        f"Each server's median of {W4_ROUNDS} interleaved rounds.",
        "",
        "| what | req/s | × model alone | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| model alone: predict() on 32 payloads (the ceiling) | {alone:,.0f} | 1.00 | | | |",
    ]
    for r in w4:
        lines.append(
            f"| {r.name} | {r.rps:,.0f} | {r.rps / alone:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        )
    ours_on, lit_on = w4[1], w4[4]
    lines += [
        "",
        f"Ours with batching keeps **{ours_on.rps / alone:.2f}×** of the model's own throughput "
        f"(LitServe with the same batching: {lit_on.rps / alone:.2f}×, so ours serves "
        f"{ours_on.rps / lit_on.rps:.1f}× LitServe); the server has one core, as the event loop has on a GPU machine.",
        "",
        "### Replica memory",
        "",
        f"Echo replica (one process, async predict) after 3 s of load: **{rss:.1f} MB** RSS.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
