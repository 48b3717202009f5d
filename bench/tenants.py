"""W7: named keys (gateway.keys) — priorities under a flood, the rate limiter's accuracy, and what the check costs.

    python bench/tenants.py [--seconds 15]

Every stack here is `stack up --local` (the real Traefik binary asking the controller), brought up, measured
and torn down in turn, in the same run:

1. Priorities. One API of one replica answering one request at a time (20 ms each, `max_concurrency` 100):
   16 clients of a low-priority key flood it in a closed loop, while one client of a high-priority key
   sends a request every 100 ms. The high requests' latency, with the keys' priorities (high and low)
   and without (both normal).
2. The limits, stack-wide. A key with `rate: 20/s, burst: 1`, 8 clients in a closed loop for `--seconds`, on
   1, 4 and 8 replicas: the accepted rate (200s per second) against the configured one. A key with
   `concurrency: 4` against an async predict of 100 ms, 16 clients: the requests it had in flight (Little's
   law: accepted per second x their mean latency) against the configured 4, on 1, 4 and 8 replicas.
3. The check's cost. A JSON echo (async predict), 16 clients: an unnamed key (`api_keys`: the replicas
   check it) against a named key without limits (the gateway asks the controller first), requests per
   second through the gateway.

Writes the `tenants` section of bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from runtime import free_port

from results import write_section

STACK = [sys.executable, "-m", "stack.cli"]
SLOW = """\
import time


class Predictor:
    def predict(self, payload):
        time.sleep(0.02)
        return {"ok": True}
"""
ECHO = """\
class Predictor:
    async def predict(self, payload):
        return payload
"""
NAP = """\
import asyncio


class Predictor:
    async def predict(self, payload):
        await asyncio.sleep(0.1)
        return {"ok": True}
"""
HIGH, LOW = "high-key-0123456789abcdef", "low-key-0123456789abcdef"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


class Stack:
    def __init__(self, work: Path, name: str, predictor: str, gateway: str, api: str) -> None:
        self.root = work / name
        self.root.mkdir()
        (self.root / "predictor.py").write_text(predictor)
        self.port = free_port()
        (self.root / "stack.yaml").write_text(
            f"project: bench-w7-{name}\nprometheus: {{enabled: false}}\n"
            f"gateway:\n  port: {self.port}\n{gateway}"
            f"apis:\n  - name: work\n    predictor: {{path: predictor.py, threads_per_process: 1}}\n{api}"
        )
        self.url = f"http://127.0.0.1:{self.port}/work"

    def __enter__(self) -> Stack:
        subprocess.run([*STACK, "up", "--local", str(self.root)], check=True, capture_output=True)
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run([*STACK, "down", "--local", str(self.root)], capture_output=True)


async def closed_loop(
    url: str, key: str, clients: int, seconds: float, accepted: list[float] | None = None
) -> dict[int, int]:
    """Requests by status from `clients` clients in a closed loop; `accepted` collects the 200s' latencies (s)."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.post(url, json={"x": 1}, headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
                    if r.status == 200 and accepted is not None:
                        accepted.append(time.perf_counter() - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    return codes


async def flood_and_trickle(url: str, seconds: float) -> list[float]:
    """The high key's latencies (ms) while the low key floods."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def trickle(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(1)  # the flood's queue first
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.post(url, json={}, headers={"Authorization": f"Bearer {HIGH}"}) as r:
                await r.read()
                if r.status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(closed_loop(url, LOW, 16, seconds), trickle(session))
    return latencies


def keys(high: str, low: str, bulk_limits: str = "") -> str:
    return (
        "  keys:\n"
        f"    - {{name: interactive, key: {HIGH}, priority: {high}}}\n"
        f"    - {{name: batch, key: {LOW}, priority: {low}{bulk_limits}}}\n"
    )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    one = "    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
    fixed = {n: f"    autoscaling: {{min_replicas: {n}, max_replicas: {n}}}\n" for n in ("1", "4", "8")}
    try:
        priority = {}
        for label, (high, low) in {"without priorities": ("normal", "normal"), "with": ("high", "low")}.items():
            with Stack(work, f"prio-{high}", SLOW, keys(high, low), one) as s:
                asyncio.run(closed_loop(s.url, HIGH, 2, 1))  # warm up
                priority[label] = asyncio.run(flood_and_trickle(s.url, args.seconds))
        accepted = {}
        for replicas, api in fixed.items():
            with Stack(work, f"rate-{replicas}", ECHO, keys("normal", "normal", ", rate: 20/s, burst: 1"), api) as s:
                asyncio.run(closed_loop(s.url, HIGH, 2, 1))
                codes = asyncio.run(closed_loop(s.url, LOW, 8, args.seconds))
                accepted[replicas] = (codes.get(200, 0) / args.seconds, codes.get(429, 0), codes)
        in_flight = {}
        for replicas, api in fixed.items():
            with Stack(work, f"conc-{replicas}", NAP, keys("normal", "normal", ", concurrency: 4"), api) as s:
                asyncio.run(closed_loop(s.url, HIGH, 2, 1))
                latencies: list[float] = []
                codes = asyncio.run(closed_loop(s.url, LOW, 16, args.seconds, latencies))
                per_second = codes.get(200, 0) / args.seconds
                mean = sum(latencies) / len(latencies) if latencies else float("nan")
                in_flight[replicas] = (per_second, mean, per_second * mean, codes.get(429, 0))
        cost = {}
        plain = f"  api_keys: [{HIGH}]\n"
        for label, gateway in {
            "unnamed key (replicas check it)": plain,
            "named key (the controller checks it)": keys("normal", "normal"),
        }.items():
            with Stack(work, f"cost-{len(cost)}", ECHO, gateway, one) as s:
                asyncio.run(closed_loop(s.url, HIGH, 4, 1))
                codes = asyncio.run(closed_loop(s.url, HIGH, 16, args.seconds))
                cost[label] = codes.get(200, 0) / args.seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = priority["without priorities"]
    rows = [
        f"| {label} | {len(lat)} | {quantile(lat, 0.5):.0f} | {quantile(lat, 0.99):.0f} | "
        f"{quantile(lat, 0.99) / quantile(base, 0.99):.2f} |"
        for label, lat in priority.items()
    ]
    rate_rows = [
        f"| {replicas} | 20.0 | {per_second:.1f} | {per_second / 20:.2f} | {refused} |"
        for replicas, (per_second, refused, _codes) in accepted.items()
    ]
    concurrency_rows = [
        f"| {replicas} | 4 | {per_second:.1f} | {mean * 1000:.0f} | {held:.2f} | {held / 4:.2f} | {refused} |"
        for replicas, (per_second, mean, held, refused) in in_flight.items()
    ]
    plain_rps = cost["unnamed key (replicas check it)"]
    cost_rows = [f"| {label} | {rps:,.0f} | {rps / plain_rps:.2f} |" for label, rps in cost.items()]
    with_p99, without_p99 = quantile(priority["with"], 0.99), quantile(base, 0.99)
    body = "\n".join(
        [
            "## W7: named keys — priorities under a flood, the rate limiter, the check's cost",
            "",
            f"`python bench/tenants.py --seconds {args.seconds:g}` — `stack up --local` stacks (the real Traefik "
            "asking the controller), each brought up, measured and torn down in turn, in the same run.",
            "",
            "**Priorities.** One replica answering one request at a time (20 ms each); 16 clients of a "
            "low-priority key flood it while one client of a high-priority key sends a request every 100 ms. "
            "The high key's latency in ms:",
            "",
            "| keys | high requests | p50 ms | p99 ms | p99 × without |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            "**The rate limiter.** A key with `rate: 20/s, burst: 1`, 8 clients in a closed loop against a JSON "
            "echo, on 1, 4 and 8 replicas:",
            "",
            "| replicas | configured /s | accepted /s | × configured | 429s |",
            "|---:|---:|---:|---:|---:|",
            *rate_rows,
            "",
            "**The concurrency limit.** A key with `concurrency: 4`, 16 clients in a closed loop against an async "
            "predict of 100 ms; requests in flight = accepted per second × their mean latency (Little's law):",
            "",
            "| replicas | configured | accepted /s | mean ms | in flight | × configured | 429s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *concurrency_rows,
            "",
            "**The check's cost.** A JSON echo on one replica, 16 clients, requests per second through the gateway:",
            "",
            "| key | req/s | × unnamed |",
            "|---|---:|---:|",
            *cost_rows,
            "",
            f"With priorities the high key's p99 is **{with_p99:.0f} ms** against {without_p99:.0f} ms without "
            f"({with_p99 / without_p99:.2f}×); the limiter accepts "
            + ", ".join(f"{accepted[n][0] / 20:.2f}×" for n in fixed)
            + " of the configured rate on 1, 4 and 8 replicas, and holds "
            + ", ".join(f"{in_flight[n][2] / 4:.2f}×" for n in fixed)
            + " of the configured concurrency.",
        ]
    )
    print(body)
    write_section("tenants", body)


if __name__ == "__main__":
    main()
