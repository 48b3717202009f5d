"""Tracing benchmark: what OpenTelemetry tracing costs a replica on the hot path (W0's JSON echo).

    python bench/tracing.py [--duration 5] [--rounds 3]

The replica on CPU 0, `wrk` on CPU 1 (32 connections, no `traceparent`: each request is a new trace
the replica samples itself), in interleaved rounds, medians reported; three configurations:

- tracing off (no `tracing` in stack.yaml): the predict path tests one attribute for None;
- tracing on, `sample_rate: 0`: no request is sampled: no span is made, nothing is exported;
- tracing on, `sample_rate: 1.0`: every request's spans (request, queue/predict) are recorded and
  exported over OTLP/HTTP to a local collector (a receiver on CPU 1 that reads and acknowledges
  each export, as a collector's HTTP front does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

from runtime import Result, free_port, measure, median, ours, ratio_table

from results import write_section

CONNECTIONS = 32

COLLECTOR = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def traces(request):
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def configurations(collector: str) -> dict[str, dict[str, object]]:
    return {
        "tracing off": {},
        "tracing on, sample_rate 0": {"tracing": {"endpoint": collector, "sample_rate": 0.0, "project": "bench"}},
        "tracing on, sample_rate 1.0 (exporting)": {
            "tracing": {"endpoint": collector, "sample_rate": 1.0, "project": "bench"}
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    collector_port = free_port()
    collector = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", COLLECTOR, str(collector_port)], stdout=subprocess.DEVNULL
    )
    runs: dict[str, list[Result]] = {}
    ratios: dict[str, list[float]] = {}
    try:
        url = f"http://127.0.0.1:{collector_port}/v1/traces"
        for _ in range(args.rounds):
            round_results: dict[str, Result] = {}
            for name, extra in configurations(url).items():
                port = free_port()
                command = ours("echo_async.py", port, **extra)
                round_results[name] = measure(name, [*command, str(port)], args.duration, CONNECTIONS)
                runs.setdefault(name, []).append(round_results[name])
            for name, result in round_results.items():
                ratios.setdefault(name, []).append(result.rps / round_results["tracing off"].rps)
    finally:
        collector.terminate()
        collector.wait(10)
    rows = [(name, median(results), sorted(ratios[name])[len(ratios[name]) // 2]) for name, results in runs.items()]
    body = f"""## Tracing: W0 with tracing off, on at sample_rate 0, and at 1.0 (issue: see it)

`python bench/tracing.py --duration {args.duration} --rounds {args.rounds}` — W0's JSON echo (async predict)
on CPU 0, `wrk` on CPU 1, {CONNECTIONS} connections, a 2 s warm-up then {args.duration} s; the median of
{args.rounds} interleaved rounds, the ratio is the median of each round's req/s over that round's
"tracing off". At 1.0 every request's spans are exported over OTLP/HTTP to a local receiver on CPU 1.

{ratio_table(rows, "ratio to off")}

Tracing off is the runtime as it was: OpenTelemetry is not imported and the predict path tests one
attribute for None (W0 itself is in the runtime section). A request not sampled (the replica's roll
at sample_rate, or an unsampled `traceparent` from the gateway) makes no span: its decision is one
context variable its calls pass on; at 1.0 each request records its spans and the exporter's thread shares the
replica's core — the price of tracing every request, which is why the gateway samples by default
(`sample_rate: 0.1`).
"""
    write_section("tracing", body)
    print(body)


if __name__ == "__main__":
    main()
