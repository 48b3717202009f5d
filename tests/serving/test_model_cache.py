"""Big models cached once per host: replicas that share a model cache download a version from S3 once;
a restart finds it there; a version overwritten in S3 (or a file cut short on disk) is downloaded again.

S3 is a real S3 API (moto's server); the replicas are real replica apps, in this process.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_files import MULTI_MODEL, write

from serving.model_cache import ModelCache
from stack.spec import load_spec
from stack.targets.compose.plan import plan as plan_compose


def cache_counts(server: Any) -> dict[str, float]:
    """The replica's predictor_model_cache counters, by result (download, disk_hit, hit, miss)."""
    counts: dict[str, float] = {}
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("predictor_model_cache_total{"):
            result = line.split('result="')[1].split('"')[0]
            counts[result] = float(line.rsplit(" ", 1)[1])
    return counts


def test_replicas_on_a_host_download_a_version_once(inproc, tmp_path: Path, s3: dict[str, str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="big")
    client.put_object(Bucket="big", Key="models/iris/1/weights.txt", Body=b"iris-one")
    predictor = write(tmp_path / "predictor.py", MULTI_MODEL)
    cache = tmp_path / "cache"
    models = {"dir": "s3://big/models", "cache_dir": str(cache), "poll_interval": 30}

    first = inproc(predictor, models=models)
    assert first.post(params={"model": "iris"}).json()["weights"] == "iris-one"
    assert cache_counts(first).get("download") == 1
    second = inproc(predictor, models=models)  # another replica on the same host
    assert second.post(params={"model": "iris"}).json()["weights"] == "iris-one"
    assert cache_counts(second) == {"miss": 1, "disk_hit": 1}  # found on disk: not downloaded again
    first.close()
    again = inproc(predictor, models=models)  # a restart
    assert again.post(params={"model": "iris"}).json()["weights"] == "iris-one"
    assert "download" not in cache_counts(again)

    # Overwritten in place in S3: a new ETag, so the next replica downloads it again.
    client.put_object(Bucket="big", Key="models/iris/1/weights.txt", Body=b"iris-one-retrained")
    fresh = inproc(predictor, models=models)
    assert fresh.post(params={"model": "iris"}).json()["weights"] == "iris-one-retrained"
    assert cache_counts(fresh).get("download") == 1
    # A file cut short on disk (a full disk, a killed download) is not trusted either.
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / "weights.txt").write_bytes(b"iris")
    mended = inproc(predictor, models=models)
    assert mended.post(params={"model": "iris"}).json()["weights"] == "iris-one-retrained"
    assert cache_counts(mended).get("download") == 1


def test_replicas_starting_at_once_download_once(tmp_path: Path) -> None:
    downloads: list[str] = []
    release = threading.Event()

    def download(location: str, relative: str, target: Path) -> None:
        downloads.append(relative)
        release.wait(10)  # the first replica is still downloading while the others arrive
        target.write_bytes(b"x" * 10)

    def listing(location: str) -> dict[str, tuple[int, str]]:
        return {"weights.bin": (10, "etag-1")}

    cache = ModelCache(tmp_path / "cache", listing, download)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch("s3://b/m/1").downloaded)) for _ in range(4)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert downloads == ["weights.bin"] and sorted(results) == [False, False, False, True]


def test_the_cache_keeps_disk_cache_size_versions_the_least_recently_used_go(tmp_path: Path) -> None:
    def download(location: str, relative: str, target: Path) -> None:
        target.write_text(location)

    cache = ModelCache(tmp_path / "cache", lambda location: {"w": (len(location), "e")}, download, limit=2)
    first = cache.fetch("s3://b/a/1").path
    cache.fetch("s3://b/b/1")
    cache.fetch("s3://b/a/1")  # used again: now the newest
    cache.fetch("s3://b/c/1")
    assert first.is_dir() and len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2
    assert not cache.fetch("s3://b/a/1").downloaded


def test_compose_mounts_one_model_cache_into_every_replica(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    write(root / "predictor.py", MULTI_MODEL)
    api = "  - name: {0}\n    predictor:\n      path: predictor.py\n      multi_model_reloading: {{dir: {1}}}\n{2}"
    (root / "stack.yaml").write_text(
        "project: big\napis:\n"
        + api.format("a", "s3://big/models", "")
        + api.format("b", "s3://big/models", "      model_cache: /srv/models\n")
        + api.format("c", "models", "")
    )
    (root / "models").mkdir()
    compose = yaml.safe_load(plan_compose(load_spec(root), root / "out").files["compose.yaml"])
    services = {s.split("-")[0]: v for s, v in compose["services"].items() if s[:2] in ("a-", "b-", "c-")}
    # every replica mounts the API keys' directory, and where it writes why it could not start
    keys = ["./keys:/run/stack-keys:ro", "./exits:/run/stack-exits"]
    assert services["a"]["volumes"] == [*keys, "model-cache:/model-cache"] and "model-cache" in compose["volumes"]
    assert services["b"]["volumes"] == [*keys, "/srv/models:/model-cache"]
    assert services["c"]["volumes"] == keys  # its models are in the project (and the image): nothing to download
    config = json.loads(services["a"]["environment"]["STACK_SERVING_CONFIG"])
    assert config["models"]["cache_dir"] == "/model-cache"


def test_a_model_cache_with_a_colon_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    write(root / "predictor.py", MULTI_MODEL)
    (root / "stack.yaml").write_text(
        "project: bad\napis:\n  - name: a\n    predictor:\n      path: predictor.py\n      model_cache: 'c:/x'\n"
    )
    from stack.spec import SpecError

    with pytest.raises(SpecError, match=r"predictor.model_cache: expected a directory or a volume name"):
        load_spec(root)
