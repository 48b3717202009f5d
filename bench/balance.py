"""W5: requests of unequal cost through the gateway, balanced round-robin (wrr) against p2c, one run.

    python bench/balance.py [--seconds 20] [--clients 6]

One API of 3 replicas (`stack up --local`: the real Traefik binary), each
answering one request at a time (a sync predict on one thread, as a model on a
GPU does). 90% of requests cost 2 ms, 10% cost 200 ms, chosen per request from
a seeded generator, sent by `--clients` clients in a closed loop for
`--seconds`. With round-robin a short request can land behind a long one on a
busy replica while another replica is idle; p2c (two replicas at random, the
one with fewer requests in flight) and leasttime avoid that. Each strategy is
its own stack, brought up, measured and torn down in turn, in the same run.
Writes the `balance` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from runtime import free_port

from results import write_section

STACK = [sys.executable, "-m", "stack.cli"]
PREDICTOR = """\
import time


class Predictor:
    def predict(self, payload):
        time.sleep(payload["ms"] / 1000)
        return {"ms": payload["ms"]}
"""
SHORT_MS, LONG_MS, LONG_SHARE = 2, 200, 0.1


async def load(url: str, clients: int, seconds: float, seed: int) -> dict[int, list[float]]:
    """Latency in ms per request cost, from `clients` clients in a closed loop."""
    latencies: dict[int, list[float]] = {SHORT_MS: [], LONG_MS: []}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while time.monotonic() < deadline:
                ms = LONG_MS if rng.random() < LONG_SHARE else SHORT_MS
                started = time.perf_counter()
                async with session.post(url, json={"ms": ms}) as response:
                    await response.read()
                    if response.status == 200:
                        latencies[ms].append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def run(strategy: str, work: Path, seconds: float, clients: int) -> dict[str, float]:
    root = work / strategy
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: balance-{strategy}\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\n"
        "apis:\n  - name: work\n    predictor: {path: predictor.py, threads_per_process: 1}\n"
        f"    networking: {{load_balancer: {strategy}}}\n"
        "    autoscaling: {min_replicas: 3, max_replicas: 3}\n"
    )
    try:
        subprocess.run([*STACK, "up", "--local", str(root)], check=True, capture_output=True)
        url = f"http://127.0.0.1:{port}/work"
        asyncio.run(load(url, clients, 2, seed=0))  # warm up the gateway's connections
        latencies = asyncio.run(load(url, clients, seconds, seed=1))
    finally:
        subprocess.run([*STACK, "down", "--local", str(root)], capture_output=True)
    every = latencies[SHORT_MS] + latencies[LONG_MS]
    return {
        "requests": len(every),
        "p50": quantile(every, 0.5),
        "p99": quantile(every, 0.99),
        "short_p50": quantile(latencies[SHORT_MS], 0.5),
        "short_p99": quantile(latencies[SHORT_MS], 0.99),
        "short_mean": statistics.fmean(latencies[SHORT_MS]) if latencies[SHORT_MS] else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-balance-"))
    try:
        results = {s: run(s, work, args.seconds, args.clients) for s in ("wrr", "p2c", "leasttime")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["wrr"]
    rows = [
        f"| {name} | {r['requests']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['short_p50']:.1f} | "
        f"{r['short_p99']:.1f} | {base['short_p99'] / r['short_p99']:.2f}× |"
        for name, r in results.items()
    ]
    body = "\n".join(
        [
            "## W5: unequal request costs through the gateway — round-robin against least-loaded",
            "",
            f"`python bench/balance.py --seconds {args.seconds:g} --clients {args.clients}` — one API of 3 replicas "
            "(`stack up --local`, the real Traefik), each answering one request at a time; 90% of requests cost "
            f"{SHORT_MS} ms, 10% {LONG_MS} ms, {args.clients} clients in a closed loop, each strategy its own stack "
            "in the same run. Latencies in ms through the gateway.",
            "",
            "| load_balancer | requests | p50 | p99 | 2 ms requests p50 | 2 ms requests p99 | short p99 vs wrr |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("balance", body)


if __name__ == "__main__":
    main()
