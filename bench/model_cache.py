"""A big model from S3: the first replica downloads it, the second and a restart find it on the host.

    python bench/model_cache.py [--size-mb 1024] [--local-only]

A real S3 API (moto's server) holds one model version of `--size-mb` of
weights. One API loads it with Cortex's `python_client` (`load_model` reads the
whole file, as loading weights does). For each target (`stack up --local`, and
`stack up` on Compose when Docker runs here): the first replica's first
prediction (it downloads the version into the host's model cache, then loads
it), a second replica's (`stack scale --force 2`), and a restarted replica's
(the process or container killed; the target brings it back), each timed from
the request to its answer, sent straight to that replica. Writes the
`model-cache` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from stackrun import free_port, stack

from results import write_section

PREDICTOR = """\
class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        with open(f"{model_path}/weights.bin", "rb") as weights:
            return len(weights.read())

    def predict(self, payload):
        return {"bytes": self.client.get_model()}
"""


def moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["moto_server", "-H", "0.0.0.0", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit("moto_server did not start")


def upload(endpoint: str, size_mb: int, work: Path) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
    )
    client.create_bucket(Bucket="weights")
    blob = work / "weights.bin"
    with open(blob, "wb") as out:
        chunk = os.urandom(1024 * 1024)
        for _ in range(size_mb):
            out.write(chunk)
    client.upload_file(str(blob), "weights", "big/1/weights.bin")
    blob.unlink()


def replica_urls(root: Path, flags: list[str], api: str) -> dict[str, str]:
    data = json.loads(stack("status", *flags, "--json", "-p", str(root), cwd=root).stdout)
    found = next(a for a in data["apis"] if a["name"] == api)
    urls = {}
    for replica in found["replicas"]:
        if replica["state"] != "ready":
            continue
        if replica.get("port"):
            urls[replica["id"]] = f"http://127.0.0.1:{replica['port']}"
        else:  # a container: its address on the stack network
            info = json.loads(
                subprocess.run(["docker", "inspect", replica["id"]], capture_output=True, text=True).stdout
            )[0]
            address = next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]
            urls[replica["id"]] = f"http://{address}:8888"
    return urls


def first_prediction(url: str) -> float:
    started = time.monotonic()
    answer = requests.post(url + "/", json={}, timeout=600)
    answer.raise_for_status()
    return time.monotonic() - started


def wait_new(root: Path, flags: list[str], known: set[str], timeout: float = 300) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = {k: v for k, v in replica_urls(root, flags, "big").items() if k not in known}
        if fresh:
            return next(iter(fresh.items()))
        time.sleep(0.3)
    raise SystemExit("no new replica became ready")


def measure(target: str, work: Path, endpoint: str) -> dict[str, float]:
    root = work / target
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "requirements.txt").write_text("boto3\n")
    flags = ["--local"] if target == "local" else []
    (root / "stack.yaml").write_text(
        f"project: cache-{target}\ngateway: {{port: {free_port()}}}\nprometheus: {{port: {free_port()}}}\n"
        "apis:\n  - name: big\n    predictor:\n      path: predictor.py\n"
        "      multi_model_reloading: {path: s3://weights/big}\n"
        f"      env: {{AWS_ENDPOINT_URL: {endpoint}, AWS_ACCESS_KEY_ID: t, AWS_SECRET_ACCESS_KEY: t,\n"
        "             AWS_DEFAULT_REGION: us-east-1}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 2}\n"
    )
    times: dict[str, float] = {}
    try:
        up = stack("up", *flags, str(root), cwd=root)
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        ((first, url),) = replica_urls(root, flags, "big").items()
        times["first replica (downloads it)"] = first_prediction(url)
        stack("scale", *flags, "big", "2", "--force", "-p", str(root), cwd=root)
        second, url = wait_new(root, flags, {first})
        times["second replica (the host's cache)"] = first_prediction(url)
        known = {first, second}
        if target == "local":
            pid = next(
                r["pid"]
                for a in json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)["apis"]
                for r in a["replicas"]
                if r["id"] == second
            )
            os.kill(pid, 9)
        else:
            subprocess.run(["docker", "kill", second], capture_output=True)
            known = {first}  # the engine restarts the same container
        time.sleep(2)
        _restarted, url = wait_new(root, flags, known)
        times["a restarted replica (the host's cache)"] = first_prediction(url)
    finally:
        stack("down", *flags, str(root), cwd=root)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--local-only", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-cache-"))
    port = free_port()
    server = moto(port)
    targets = ["local"] if args.local_only or shutil.which("docker") is None else ["local", "compose"]
    results: dict[str, dict[str, float]] = {}
    try:
        upload(f"http://127.0.0.1:{port}", args.size_mb, work)
        for target in targets:
            # Containers reach the host's moto through the stack network's gateway address.
            endpoint = f"http://127.0.0.1:{port}" if target == "local" else f"http://{_docker_host()}:{port}"
            results[target] = measure(target, work, endpoint)
            print(target, results[target], flush=True)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        f"| {target} | {case} | {seconds:.2f} |" for target, cases in results.items() for case, seconds in cases.items()
    ]
    body = "\n".join(
        [
            "## Big models cached once per host",
            "",
            f"`python bench/model_cache.py --size-mb {args.size_mb}` — one model version of {args.size_mb} MB of "
            "weights on a real S3 API (moto's server), loaded with Cortex's `python_client` (`load_model` reads "
            "the whole file). The first prediction of each new replica, timed from the request to the answer, "
            "sent straight to that replica: it includes fetching the model (a download, or the host's cache) "
            "and loading it.",
            "",
            "| target | replica | first prediction, s |",
            "|---|---|---:|",
            *rows,
        ]
    )
    print(body)
    write_section("model-cache", body)


def _docker_host() -> str:
    """The host's address on Docker's default bridge, which containers can reach."""
    out = subprocess.run(["docker", "network", "inspect", "bridge"], capture_output=True, text=True).stdout
    return json.loads(out)[0]["IPAM"]["Config"][0]["Gateway"]


if __name__ == "__main__":
    sys.exit(main())
