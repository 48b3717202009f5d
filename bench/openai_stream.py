"""OpenAI streaming through the server: ours against LitServe's OpenAISpec, same generator, one run.

    python bench/openai_stream.py [--requests 200] [--tokens 64] [--concurrency 8]

Both servers stream a generator that yields `--tokens` words with no delay of
its own, so what is measured is the server: time to first token (one client,
sequential requests: p50 and p99) and tokens per second (`--concurrency`
clients). Each server is pinned to CPU 0 and the client to CPU 1, one server
at a time. Results go to bench/RESULTS.md (section `openai`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
PY = sys.executable
BODY = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "count"}]}


def ours(port: int, tokens: int) -> tuple[list[str], dict[str, str]]:
    config = {
        "predictor_path": str(HERE / "predictors" / "words.py"),
        "api": "chat",
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "drain_delay": 0,
        "protocol": "openai",
        "max_concurrency": 1024,
        "config": {"tokens": tokens},
    }
    return [PY, "-m", "serving"], {**os.environ, "STACK_SERVING_CONFIG": json.dumps(config)}


def litserve(port: int, tokens: int) -> tuple[list[str], dict[str, str]]:
    return [PY, str(HERE / "peers" / "litserve_openai.py"), str(port), str(tokens)], dict(os.environ)


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, int, float]:
    """(time to first token, tokens, total seconds) of one streamed chat completion."""
    start = time.perf_counter()
    first, tokens = 0.0, 0
    async with session.post(url, json=BODY) as response:
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if not first:
                        first = time.perf_counter() - start
    return first, tokens, time.perf_counter() - start


async def measure(url: str, requests: int, concurrency: int, expected: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm-up
            await one(session, url)
        ttft = []
        for _ in range(requests):
            first, tokens, _total = await one(session, url)
            assert tokens == expected, f"{url} streamed {tokens} tokens, not {expected}"
            ttft.append(first)
        counted = 0
        semaphore = asyncio.Semaphore(concurrency)

        async def limited() -> None:
            nonlocal counted
            async with semaphore:
                counted += (await one(session, url))[1]

        start = time.perf_counter()
        await asyncio.gather(*(limited() for _ in range(requests)))
        elapsed = time.perf_counter() - start
    ttft.sort()
    return {
        "ttft_p50_ms": statistics.median(ttft) * 1000,
        "ttft_p99_ms": ttft[int(len(ttft) * 0.99) - 1] * 1000,
        "tokens_per_s": counted / elapsed,
    }


def run(name: str, launch: tuple[list[str], dict[str, str]], port: int, args: argparse.Namespace) -> dict[str, float]:
    command, env = launch
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                asyncio.run(asyncio.wait_for(_probe(url), 5))
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.3)
        os.sched_setaffinity(0, {1})
        result = asyncio.run(measure(url, args.requests, args.concurrency, args.tokens))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    print(
        f"{name:<24} TTFT p50 {result['ttft_p50_ms']:.2f} ms  p99 {result['ttft_p99_ms']:.2f} ms  "
        f"{result['tokens_per_s']:,.0f} tokens/s",
        flush=True,
    )
    return result


async def _probe(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        await one(session, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    import socket

    results = {}
    for name, launch in (("stack serving (openai)", ours), ("LitServe OpenAISpec", litserve)):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        results[name] = run(name, launch(port, args.tokens), port, args)
    ours_r, lit = results["stack serving (openai)"], results["LitServe OpenAISpec"]
    lines = [
        "## OpenAI-compatible streaming (issue: protocols)",
        "",
        f"`python bench/openai_stream.py --requests {args.requests} --tokens {args.tokens} --concurrency "
        f"{args.concurrency}` — a generator of {args.tokens} words with no delay of its own, streamed as OpenAI "
        "chat-completion chunks; server on CPU 0, client on CPU 1; time to first token over sequential requests, "
        f"tokens/s with {args.concurrency} concurrent streams.",
        "",
        "| server | TTFT p50 ms | TTFT p99 ms | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ttft_p50_ms']:.2f} | {r['ttft_p99_ms']:.2f} | {r['tokens_per_s']:,.0f} |")
    lines += [
        "",
        f"Ours: **{lit['ttft_p50_ms'] / ours_r['ttft_p50_ms']:.1f}×** lower median time to first token and "
        f"**{ours_r['tokens_per_s'] / lit['tokens_per_s']:.1f}×** the tokens per second of LitServe's OpenAISpec.",
    ]
    sys.path.insert(0, str(HERE))
    from results import write_section

    write_section("openai", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
