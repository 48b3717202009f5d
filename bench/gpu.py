"""GPU batching benchmark: the model alone, our server and LitServe, side by side in one run.

    python bench/gpu.py [--duration 10] [--connections 64] [--out FILE]
    python bench/gpu.py --sharing [--duration 10] [--connections 64]

The model is a BERT-base-sized encoder with random fp16 weights
(bench/predictors/bert_gpu.py), 128 tokens per request. Measured, in order:

- the model alone: forward passes at batch 32 on a prepared GPU tensor (the
  ceiling), and the predictor's own `predict` on 32 payloads (with building
  the tensor from Python lists: what any server must add);
- ours: batching off; batching 32 / 5 ms (two batches in flight, uvloop);
  the same with two worker processes per replica;
- LitServe: batching off and 32 / 5 ms, one worker.

Load: `hey` (or `wrk`) with `--connections` clients posting the same JSON body.
`--sharing`: four replicas with `compute.gpu: 0.25` on one GPU (`stack up
--local`, placed by the plan, each pinned with CUDA_VISIBLE_DEVICES), each
answering from `cuda` with its own memory (torch.cuda.memory_allocated), then
the same model's throughput through the gateway: four quarter-GPU replicas
against one replica with the whole GPU (section `gpu-sharing`).
Without CUDA it prints "no GPU" and exits 0: a GPU run is a deliberate act.
Results are written to bench/RESULTS.md (section `gpu`), or to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
BATCH, INTERVAL = 32, 0.005


@dataclass
class Row:
    name: str
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0


def model_alone(seconds: float) -> tuple[Row, Row, str]:
    import torch

    sys.path.insert(0, str(HERE / "predictors"))
    from bert_gpu import SEQ, Predictor, build_model, forward

    device_name = torch.cuda.get_device_name(0)
    model = build_model("cuda")
    ids = torch.randint(0, 30522, (BATCH, SEQ), device="cuda")
    for _ in range(20):
        forward(model, ids)
    torch.cuda.synchronize()
    start, items = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        forward(model, ids).cpu()
        items += BATCH
    forward_row = Row("model alone: forward at batch 32 (the ceiling)", items / (time.perf_counter() - start))

    predictor = Predictor({})
    payloads = [{"ids": ids[i].tolist()} for i in range(BATCH)]
    start, items = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        predictor.predict(payloads).tolist()
        items += BATCH
    predict_row = Row("model alone: predict() on 32 payloads", items / (time.perf_counter() - start))
    del model, predictor
    torch.cuda.empty_cache()
    return forward_row, predict_row, device_name


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ours(
    port: int, batching: bool, processes: int = 1, in_flight: int = 2, eager: bool = False
) -> tuple[list[str], dict[str, str], str]:
    config: dict[str, object] = {
        "predictor_path": str(HERE / "predictors" / "bert_gpu.py"),
        "api": "bench",
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "drain_delay": 0,
        "max_concurrency": 1024,
        "processes_per_replica": processes,
        "gpus": 1,
    }
    if batching:
        config["batching"] = {
            "max_batch_size": BATCH,
            "batch_interval": INTERVAL,
            "max_in_flight": in_flight,
            "eager": eager,
        }
    env = {**os.environ, "STACK_SERVING_CONFIG": json.dumps(config), "PYTHONPATH": str(ROOT)}
    return [PY, "-m", "serving"], env, "/"


def litserve(port: int, batching: bool) -> tuple[list[str], dict[str, str], str]:
    batch = str(BATCH if batching else 1)
    return [PY, str(HERE / "peers" / "litserve_gpu.py"), str(port), batch, str(INTERVAL)], dict(os.environ), "/predict"


def wait_ready(url: str, body: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} never answered")


def load(url: str, body_file: Path, seconds: int, connections: int) -> tuple[float, float, float, int]:
    hey = shutil.which("hey") or str(HERE.parent / ".whl" / "hey")
    # Warm-up, then the measured run (the output kept is the last one's).
    for duration in (3, seconds):
        out = subprocess.run(
            [
                hey,
                "-z",
                f"{duration}s",
                "-c",
                str(connections),
                "-m",
                "POST",
                "-T",
                "application/json",
                "-D",
                str(body_file),
                url,
            ],
            capture_output=True,
            text=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1)) * 1000
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1)) * 1000
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    errors = sum(int(n) for code, n in codes.items() if code != "200") + len(re.findall(r"Error distribution", out))
    return rps, p50, p99, errors


def serve(
    name: str,
    launch: tuple[list[str], dict[str, str], str],
    port: int,
    body: str,
    body_file: Path,
    seconds: int,
    connections: int,
) -> Row:
    command, env, path = launch
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        wait_ready(url, body, proc)
        rps, p50, p99, errors = load(url, body_file, seconds, connections)
    except Exception as exc:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None and proc.stderr else ""
        print(f"{name}: failed: {exc}\n{err}", flush=True)
        return Row(name + " (failed)", 0.0)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    row = Row(name, rps, p50, p99, errors)
    print(f"{name:<58} {rps:>9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write the markdown here instead of bench/RESULTS.md")
    parser.add_argument("--sharing", action="store_true", help="four replicas of a quarter GPU each, on one GPU")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("no GPU: torch is not installed")
        return
    if not torch.cuda.is_available():
        print("no GPU: CUDA is not available on this machine; run bench/gpu.py where one is")
        return
    if args.sharing:
        sharing(args.duration, args.connections)
        return
    forward_row, predict_row, device = model_alone(args.duration)
    print(f"{forward_row.name}: {forward_row.rps:,.0f} items/s; {predict_row.name}: {predict_row.rps:,.0f} items/s")
    body = json.dumps({"ids": [(i * 7919) % 30522 for i in range(128)]})
    body_file = Path("/tmp/stack-gpu-body.json")
    body_file.write_text(body)
    d, c = args.duration, args.connections
    rows = []
    runs = [
        ("ours, batching off", lambda p: ours(p, False)),
        ("ours, batching 32 / 5 ms", lambda p: ours(p, True)),
        ("ours, batching 32 / 5 ms, one batch in flight", lambda p: ours(p, True, in_flight=1)),
        ("ours, batching 32 / 5 ms, eager when idle", lambda p: ours(p, True, eager=True)),
        ("ours, batching 32 / 5 ms, 2 processes", lambda p: ours(p, True, processes=2)),
        ("ours, batching 32 / 5 ms, 2 processes, eager", lambda p: ours(p, True, processes=2, eager=True)),
    ]
    if importlib.util.find_spec("litserve") is not None:
        runs += [
            ("LitServe, batching off", lambda p: litserve(p, False)),
            ("LitServe, batching 32 / 5 ms", lambda p: litserve(p, True)),
        ]
    else:
        print("LitServe is not installed: its rows are left out (pip install litserve)")
    for name, launch in runs:
        port = free_port()
        rows.append(serve(name, launch(port), port, body, body_file, d, c))
    text = render(device, forward_row, predict_row, rows, d, c)
    if args.out:
        args.out.write_text(text)
    else:
        from results import write_section

        write_section("gpu", text, machine=f"a lent GPU machine ({device}, 16 CPU cores)")
    print(text)


SHARING = """\
import os

import torch
from bert_gpu import Predictor as Bert


class Predictor(Bert):
    def predict(self, payload):
        if isinstance(payload, dict) and payload.get("where"):
            return {
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "pid": os.getpid(),
                "device": torch.cuda.get_device_name(0),
                "memory_allocated": torch.cuda.memory_allocated(),
            }
        return super().predict(payload)
"""


def sharing(duration: int, connections: int) -> None:
    """Four quarter-GPU replicas on one GPU, through the local target, against one whole-GPU replica."""
    import tempfile

    import requests

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-sharing-"))
    shutil.copy(HERE / "predictors" / "bert_gpu.py", work / "bert_gpu.py")
    (work / "predictor.py").write_text(SHARING)
    body = json.dumps({"ids": [(i * 7919) % 30522 for i in range(128)]})
    body_file = work / "body.json"
    body_file.write_text(body)
    rows, replicas = [], []
    for label, gpu, count in (("4 replicas x gpu 0.25, one GPU", 0.25, 4), ("1 replica x gpu 1", 1, 1)):
        port = free_port()
        batching = "{max_batch_size: 32, batch_interval: 5ms}"
        (work / "stack.yaml").write_text(
            f"project: gpu-sharing-bench\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:\n"
            f"  - name: bert\n    predictor: {{path: predictor.py, batching: {batching}}}\n"
            f"    compute: {{gpu: {gpu}}}\n    autoscaling: {{min_replicas: {count}, max_replicas: {count}}}\n"
        )
        stack = [PY, "-m", "stack.cli"]
        up = subprocess.run([*stack, "up", "--local", str(work), "--gpus", "1"], capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        try:
            url = f"http://127.0.0.1:{port}/bert"
            seen = {}
            for _ in range(40 * count):
                answer = requests.post(url, json={"where": True}, timeout=30).json()
                seen[answer["pid"]] = answer
            if gpu < 1:
                replicas = sorted(seen.values(), key=lambda a: a["pid"])
            rps, p50, p99, errors = load(url, body_file, duration, connections)
            rows.append(Row(label, rps, p50, p99, errors))
        finally:
            subprocess.run([*stack, "down", "--local", str(work)], capture_output=True)
    lines = [
        "## GPU sharing: four replicas of a quarter GPU on one GPU",
        "",
        f"`python bench/gpu.py --sharing --duration {duration} --connections {connections}` — `stack up --local "
        '--gpus 1`, the BERT-sized encoder with batching 32 / 5 ms; each replica answers `{"where": true}` from '
        "its own process on `cuda`, pinned by the plan's placement.",
        "",
        "| replica pid | CUDA_VISIBLE_DEVICES | device | torch memory allocated |",
        "|---:|---|---|---:|",
        *(f"| {r['pid']} | {r['gpu']} | {r['device']} | {r['memory_allocated'] / 2**20:,.0f} MiB |" for r in replicas),
        "",
        "| replicas | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r.name} | {r.rps:,.0f} | {r.p50_ms or 0:.1f} | {r.p99_ms or 0:.1f} | {r.errors} |" for r in rows),
    ]
    from results import write_section

    text = "\n".join(lines)
    write_section("gpu-sharing", text, machine="a GPU machine")
    print(text)


def render(device: str, forward_row: Row, predict_row: Row, rows: list[Row], duration: int, connections: int) -> str:
    ceiling = forward_row.rps
    by = {r.name: r for r in rows}
    lines = [
        "## GPU batching (issue: performance)",
        "",
        f"`python bench/gpu.py --duration {duration} --connections {connections}` on one {device}. Model: a "
        "BERT-base-sized encoder (12 layers, hidden 768) with random fp16 weights, 128 tokens per request; "
        f"`hey` with {connections} connections, 3 s warm-up then {duration} s; one server at a time.",
        "",
        "| what | items or req/s | × model alone | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {forward_row.name} | {forward_row.rps:,.0f} | 1.00 | | | |",
        f"| {predict_row.name} | {predict_row.rps:,.0f} | {predict_row.rps / ceiling:.2f} | | | |",
    ]
    for r in rows:
        p50 = f"{r.p50_ms:.1f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.1f}" if r.p99_ms is not None else ""
        lines.append(f"| {r.name} | {r.rps:,.0f} | {r.rps / ceiling:.2f} | {p50} | {p99} | {r.errors} |")
    ours_on = by.get("ours, batching 32 / 5 ms")
    lit_on = by.get("LitServe, batching 32 / 5 ms")
    off = by.get("ours, batching off")
    if ours_on and off and off.rps:
        lines += ["", f"Batching on gives **{ours_on.rps / off.rps:.1f}×** batching off."]
    if ours_on and lit_on and lit_on.rps:
        lines += [f"Ours with batching serves **{ours_on.rps / lit_on.rps:.2f}×** LitServe with the same batching."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
