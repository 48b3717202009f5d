"""W8: a multi-model API on 4 replicas, each holding 2 models, balanced by p2c against model affinity, one run.

    python bench/affinity.py [--seconds 20] [--clients 8] [--models 6] [--load-ms 300]

One API (`stack up --local`: the real Traefik binary) of 4 replicas, each answering one request at a time
through Cortex's python_client over models/<name>/1/ (`multi_model_reloading`, `cache_size: 2`): a model's
first request on a replica loads it (`--load-ms`), evicting the least recently used one; a request whose
model is held costs 5 ms. `--clients` clients in a closed loop pick the model per request from a seeded
generator, uniformly or Zipf-distributed (s = 1.1: the first model gets about 40% of the requests), for
`--seconds` each. The same stack twice, in the same run: without affinity (p2c over every replica) and
with `networking.affinity: {query: model}`. Each stack gets one request per model and a few seconds to
route them before it is measured. Counted from the answers: the hit ratio (requests that loaded no model),
model loads per minute, p50/p99 in ms through the gateway. Writes the `affinity` section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
PREDICTOR = """\
import os
import time


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client
        self.load_s = config["load_ms"] / 1000
        self.loads = 0

    def load_model(self, model_path):
        time.sleep(self.load_s)  # what reading a model's weights costs
        self.loads += 1
        return os.path.basename(os.path.dirname(model_path))

    def predict(self, payload, query_params):
        name = self.client.get_model(query_params["model"])
        time.sleep(0.005)
        return {"pid": os.getpid(), "loads": self.loads, "model": name}
"""
ZIPF_S = 1.1


def weights(models: int, zipf: bool) -> list[float]:
    return [1 / (rank + 1) ** ZIPF_S for rank in range(models)] if zipf else [1.0] * models


async def load(url: str, clients: int, seconds: float, models: list[str], zipf: bool, seed: int) -> dict[str, float]:
    """Closed-loop clients; the hit ratio from each replica's load counter before and after."""
    latencies: list[float] = []
    loads_first: dict[int, int] = {}
    loads_last: dict[int, int] = {}
    errors = 0
    deadline = time.monotonic() + seconds
    share = weights(len(models), zipf)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(n: int) -> None:
            nonlocal errors
            rng = random.Random(seed * 1000 + n)
            while time.monotonic() < deadline:
                model = rng.choices(models, share)[0]
                started = time.perf_counter()
                async with session.post(url, params={"model": model}, json={}) as response:
                    body = await response.json(content_type=None)
                if response.status != 200:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                pid, seen = body["pid"], body["loads"]
                # the counter as this request left it: the first answer per replica has its own load in it
                loads_first.setdefault(pid, seen)
                loads_first[pid] = min(loads_first[pid], seen)
                loads_last[pid] = max(loads_last.get(pid, 0), seen)

        await asyncio.gather(*(client(n) for n in range(clients)))
    requests = len(latencies)
    # The first answer of each replica includes a load of this phase if it missed; counted from one below.
    loads = sum(loads_last[p] - loads_first[p] for p in loads_last)
    ordered = sorted(latencies)
    return {
        "requests": requests,
        "errors": errors,
        "hit_ratio": 1 - loads / requests if requests else float("nan"),
        "loads_per_minute": loads / (seconds / 60),
        "p50": ordered[len(ordered) // 2] if ordered else float("nan"),
        "p99": ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)] if ordered else float("nan"),
    }


def run(affinity: bool, work: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    name = "affinity" if affinity else "p2c"
    root = work / name
    models = [f"model-{i}" for i in range(args.models)]
    for model in models:
        (root / "models" / model / "1").mkdir(parents=True)
        (root / "models" / model / "1" / "weights.bin").write_bytes(b"\0" * 1024)
    (root / "predictor.py").write_text(PREDICTOR)
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: bench-w8-{name}\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\n"
        "apis:\n  - name: models\n"
        "    predictor:\n      type: python\n      path: predictor.py\n      threads_per_process: 1\n"
        f"      config: {{load_ms: {args.load_ms}}}\n"
        "      multi_model_reloading: {dir: models, cache_size: 2}\n"
        + ("    networking: {affinity: {query: model}}\n" if affinity else "")
        + "    autoscaling: {min_replicas: 4, max_replicas: 4}\n"
    )
    try:
        subprocess.run([*STACK, "up", "--local", str(root)], check=True, capture_output=True)
        url = f"http://127.0.0.1:{port}/models"
        asyncio.run(load(url, len(models), 2, models, zipf=False, seed=0))  # every model seen: routed
        time.sleep(5)  # two probes: the controller places the models it was told of
        return {
            "uniform": asyncio.run(load(url, args.clients, args.seconds, models, zipf=False, seed=1)),
            "zipf": asyncio.run(load(url, args.clients, args.seconds, models, zipf=True, seed=2)),
        }
    finally:
        subprocess.run([*STACK, "down", "--local", str(root)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--load-ms", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-affinity-"))
    try:
        results = {"p2c": run(False, work, args), "affinity": run(True, work, args)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for traffic in ("uniform", "zipf"):
        base = results["p2c"][traffic]
        for name, by_traffic in results.items():
            r = by_traffic[traffic]
            rows.append(
                f"| {traffic} | {name} | {r['requests']:.0f} | {r['hit_ratio']:.2f} | {r['loads_per_minute']:.0f} | "
                f"{r['p50']:.1f} | {r['p99']:.1f} | {r['p99'] / base['p99']:.2f} | {r['errors']:.0f} |"
            )
    uniform = results["affinity"]["uniform"]
    body = "\n".join(
        [
            "## W8: multi-model API — model affinity against p2c",
            "",
            f"`python bench/affinity.py --seconds {args.seconds:g} --clients {args.clients} --models {args.models} "
            f"--load-ms {args.load_ms}` — one API of 4 replicas (`stack up --local`, the real Traefik), each "
            f"answering one request at a time through Cortex's python_client with `cache_size: 2` ({args.models} "
            f"models: {'they fit' if args.models <= 8 else 'more than fit'} in 4 × 2); a model load costs "
            f"{args.load_ms} ms, a held model 5 ms. {args.clients} clients in a closed loop, uniform or Zipf "
            f"(s = {ZIPF_S}) over the models, {args.seconds:g} s each; the same stack without and with "
            "`networking.affinity: {query: model}`, in the same run. Hit ratio = requests that loaded no model.",
            "",
            "| traffic | routing | requests | hit ratio | model loads/min | p50 ms | p99 ms | p99 × p2c | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"With affinity the uniform hit ratio is **{uniform['hit_ratio']:.2f}** "
            f"(p2c: {results['p2c']['uniform']['hit_ratio']:.2f}) and p99 is "
            f"**{uniform['p99'] / results['p2c']['uniform']['p99']:.2f}×** p2c's.",
        ]
    )
    print(body)
    write_section("affinity", body)


if __name__ == "__main__":
    main()
