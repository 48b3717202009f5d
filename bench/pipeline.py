"""Pipelines benchmark: what a call from one API to another costs, and what a chain keeps.

    python bench/pipeline.py [--duration 8] [--rounds 3]

Servers on CPU 0, `wrk` on CPU 1 (32 connections), each configuration started, loaded and stopped
in interleaved rounds; medians are reported.

One hop: a caller that passes its JSON payload to a no-op callee (an async echo replica) through
the `apis` handle (serving.calls: upstreams file, balancing, request id and deadline headers,
retries, per-edge metrics), against the same caller with a plain pooled aiohttp client posting to
the callee replica's URL; the callee alone is the ceiling. Caller and callee share CPU 0, so the
ratio is the CPU the handle adds per call.

Chain: three stages that each wait (a model's time, off the CPU) and call the next one —
2 ms, 5 ms and 1 ms, at most 4 requests at once each — against the slowest stage (5 ms, 4 at once:
at most 800 req/s) alone. The ratio is how much of the slowest stage's throughput the chain keeps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from runtime import Result, free_port, measure, median, ours, ratio_table, start, stop

from results import write_section

CONNECTIONS = 32
STAGES = [("first", 2.0), ("slowest", 5.0), ("last", 1.0)]
CAPACITY = 4


def upstreams_file(folder: Path, servers: dict[str, int]) -> str:
    """What the controller writes for the callers: each callee's replica URL."""
    path = folder / f"upstreams-{len(list(folder.iterdir()))}.json"
    apis = {
        name: {"servers": [f"http://127.0.0.1:{port}"], "activators": [], "strategy": "p2c"}
        for name, port in servers.items()
    }
    path.write_text(json.dumps({"apis": apis}))
    return str(path)


def one_hop(folder: Path, duration: int) -> dict[str, Result]:
    leaf_port, port = free_port(), free_port()
    results: dict[str, Result] = {}
    # The callee's command is built first: ours() sets the environment start() passes on.
    leaf = ours("echo_async.py", leaf_port)
    results["callee alone (ceiling)"] = measure(
        "callee alone (ceiling)", [*leaf, str(leaf_port)], duration, CONNECTIONS
    )
    proc = start(ours("echo_async.py", leaf_port, api="leaf"), leaf_port)
    try:
        handle = ours("hop_apis.py", port, calls=["leaf"], upstreams_file=upstreams_file(folder, {"leaf": leaf_port}))
        results["caller → callee, apis handle"] = measure(
            "caller → callee, apis handle", [*handle, str(port)], duration, CONNECTIONS
        )
        plain = ours("hop_aiohttp.py", port, config={"url": f"http://127.0.0.1:{leaf_port}/"})
        results["caller → callee, plain aiohttp client"] = measure(
            "caller → callee, plain aiohttp client", [*plain, str(port)], duration, CONNECTIONS
        )
    finally:
        stop(proc)
    return results


def chain(folder: Path, duration: int) -> dict[str, Result]:
    ports = {name: free_port() for name, _ in STAGES}
    results: dict[str, Result] = {}
    alone_port = free_port()
    slowest = dict(STAGES)["slowest"]
    alone = ours("stage.py", alone_port, api="slowest", config={"cost_ms": slowest, "capacity": CAPACITY})
    results["slowest stage alone (ceiling)"] = measure(
        "slowest stage alone (ceiling)", [*alone, str(alone_port)], duration, CONNECTIONS
    )
    procs = []
    try:
        for index in reversed(range(len(STAGES))):  # the last stage first, so each caller finds its callee
            name, cost = STAGES[index]
            following = STAGES[index + 1][0] if index + 1 < len(STAGES) else None
            config = {"cost_ms": cost, "capacity": CAPACITY, "next": following}
            calls = {}
            if following:
                calls = {"calls": [following], "upstreams_file": upstreams_file(folder, {following: ports[following]})}
            command = ours("stage.py", ports[name], api=name, config=config, **calls)
            if index == 0:
                results["three-stage chain"] = measure(
                    "three-stage chain", [*command, str(ports[name])], duration, CONNECTIONS
                )
            else:
                procs.append(start(command, ports[name]))
    finally:
        for proc in procs:
            stop(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    hops: dict[str, list[Result]] = {}
    chains: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, result in one_hop(Path(tmp), args.duration).items():
                hops.setdefault(name, []).append(result)
            for name, result in chain(Path(tmp), args.duration).items():
                chains.setdefault(name, []).append(result)
    hop = {name: median(results) for name, results in hops.items()}
    plain = hop["caller → callee, plain aiohttp client"]
    ceiling = hop["callee alone (ceiling)"]
    chained = {name: median(results) for name, results in chains.items()}
    slowest = chained["slowest stage alone (ceiling)"]
    body = f"""## Pipelines: one hop, and a three-stage chain (issue: pipelines)

`python bench/pipeline.py --duration {args.duration} --rounds {args.rounds}` — servers on CPU 0, `wrk` on CPU 1,
{CONNECTIONS} connections, a 2 s warm-up then {args.duration} s; the median of {args.rounds} interleaved rounds.

### One hop: a caller passing its payload to a no-op callee (both on CPU 0)

Ratio: against the plain aiohttp client (the callee alone is the ceiling: one server instead of two).

{ratio_table([(n, r, r.rps / plain.rps) for n, r in hop.items()])}

The callee alone does {ceiling.rps:,.0f} req/s; a hop through the `apis` handle keeps
{hop["caller → callee, apis handle"].rps / ceiling.rps:.2f} of that with two servers on one core, and
{hop["caller → callee, apis handle"].rps / plain.rps:.2f}× what a hand-written aiohttp client keeps — the
price of balancing, the request id and deadline headers, retries and the per-edge metrics.

### Three stages (2 ms → 5 ms → 1 ms, 4 at once each) against the slowest stage alone

{ratio_table([(n, r, r.rps / slowest.rps) for n, r in chained.items()])}
"""
    print(body)
    write_section("pipeline", body)


if __name__ == "__main__":
    main()
