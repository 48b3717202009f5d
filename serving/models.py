"""Many models per API, their versions, a cache, and live reloading: Cortex's `python_client`
and `onnx_client`.

Where models come from (`ModelsConfig`, from `predictor.multi_model_reloading` or
`predictor.models`): one `path`, named `paths`, or a `dir` whose every
sub-directory is a model; each a local directory (relative to the project) or
an `s3://bucket/prefix` URL (boto3: `AWS_ENDPOINT_URL` and the usual
credentials chain, so MinIO and other S3-compatible servers work). A model's
versions are its integer sub-directories; "latest" is the highest. A model
without them has one version, 1 (as Cortex numbers it). "latest" is a name for
a numbered version, never a copy of it: `?version=3` and latest, when 3 is the
newest, are one model in memory.

- `get_model(name, version)` returns what the predictor's `load_model(path)`
  returned (ONNX: an onnxruntime session). A model not in memory is loaded on
  first use — once, however many requests ask at the same time; the others
  wait for that load. `cache_size` bounds the models in memory (least recently
  used evicted), `disk_cache_size` the versions kept on local disk from S3.
- A watcher thread lists the sources every `poll_interval` seconds: a new
  version of a model in memory is loaded in the background and replaces the
  old one for "latest" (no restart, no request waits for it); a removed
  version or model is unloaded.
- Unknown model or version: 404 naming what exists; a model that fails to
  load: 500 naming it and the cause, other models unaffected.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ModelError, ModelInputInvalid, ModelLoadFailed, ModelNotFound
from serving.model_cache import ModelCache

LOGGER = logging.getLogger("serving.models")
LATEST = "latest"
Loader = Callable[[str], Any]


@dataclass(frozen=True)
class ModelsConfig:
    path: str | None = None  # one model
    paths: list[dict[str, str]] = field(default_factory=list)  # [{name, path}]
    dir: str | None = None  # every sub-directory is a model
    cache_size: int | None = None  # models in memory; None: all
    disk_cache_size: int | None = None  # model versions on local disk (from S3); None: all
    poll_interval: float = 2.0  # seconds between listings of the sources (live reloading)
    # Where S3 models are downloaded (predictor.model_cache, mounted into every replica of the host):
    # shared by them, so a version is downloaded once per host. None: this replica's own temporary one.
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelsConfig:
        return cls(**data)


class ModelStore:
    """The models of one replica process: where they are, which are loaded, loading them."""

    def __init__(self, config: ModelsConfig, root: Path, metrics: Any = None) -> None:
        self.config = config
        self.root = root
        self.metrics = metrics
        self.loader: Loader | None = None
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], Any] = OrderedDict()  # LRU, newest last
        self._loading: dict[tuple[str, str], Future[Any]] = {}
        self._available: dict[str, dict[str, str]] = {}  # name -> version -> location
        # name -> the version "latest" serves now: the newest, once it is loaded (until then, the previous).
        self._latest: dict[str, str] = {}
        self._prints: dict[tuple[str, str], object] = {}  # a loaded version's files when it was loaded
        self._own_cache = config.cache_dir is None
        self._cache_dir = Path(config.cache_dir) if config.cache_dir else Path(tempfile.mkdtemp(prefix="stack-models-"))
        self._disk_cache = ModelCache(self._cache_dir, _list_objects, _download_object, config.disk_cache_size)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.refresh()

    # -- sources -------------------------------------------------------------------------

    def _sources(self) -> dict[str, str]:
        """model name -> location (a directory or an s3:// URL)."""
        c = self.config
        if c.path:
            return {_basename(c.path): self._resolve(c.path)}
        if c.paths:
            return {p["name"]: self._resolve(p["path"]) for p in c.paths}
        if c.dir:
            base = self._resolve(c.dir)
            return {name: _join(base, name) for name in _list_dirs(base)}
        return {}

    def _resolve(self, location: str) -> str:
        return location if location.startswith("s3://") else str((self.root / location).resolve())

    def refresh(self) -> None:
        """List every model's versions now; unload what disappeared, reload what has a newer version."""
        found: dict[str, dict[str, str]] = {}
        for name, location in self._sources().items():
            try:
                versions = {v: _join(location, v) for v in _list_dirs(location) if v.isdigit()}
                found[name] = versions or {"1": location}  # no version directories: version 1, as Cortex
            except Exception as exc:
                LOGGER.warning(f"cannot list model {name} at {location}: {exc}")
                if name in self._available:
                    found[name] = self._available[name]
        warm = []
        with self._lock:
            self._available = found
            gone = [key for key in self._memory if key[1] not in self._versions_of(key[0])]
            for key in set(gone):
                self._evict(key, "removed from its source")
            for name, versions in found.items():
                newest, serving = _latest(versions), self._latest.get(name)
                if newest is None or newest == serving:
                    continue
                if serving in versions and (name, serving) in self._memory:
                    warm.append((name, newest))  # latest moves once the newest is loaded: no request waits
                else:
                    self._latest[name] = newest
            for name in [n for n in self._latest if n not in found]:
                del self._latest[name]
        for name, newest in warm:
            LOGGER.info(f"model {name}: version {newest} appeared; loading it in the background")
            self._load_async((name, newest), becomes_latest=True)
        for key in self._overwritten():
            LOGGER.info(f"model {key[0]} version {key[1]}: its files changed in place; reloading it in the background")
            self._load_async(key)

    def _overwritten(self) -> list[tuple[str, str]]:
        """Loaded versions whose files changed since they were loaded (Cortex reloads an overwritten version)."""
        with self._lock:
            loaded = [(key, self._versions_of(key[0]).get(key[1]), self._prints.get(key)) for key in self._memory]
        changed = []
        for key, location, before in loaded:
            if location is None or before is None:
                continue
            try:
                if _fingerprint(location) != before:
                    changed.append(key)
            except Exception as exc:  # a listing that failed says nothing about the files
                LOGGER.warning(f"cannot list model {key[0]} version {key[1]} at {location}: {exc}")
        return changed

    def _versions_of(self, name: str) -> dict[str, str]:
        return self._available.get(name, {})

    def start_watching(self) -> None:
        def watch() -> None:
            while not self._stop.wait(self.config.poll_interval):
                try:
                    self.refresh()
                except Exception:
                    LOGGER.exception("listing the models failed")

        self._watcher = threading.Thread(target=watch, name="model-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._own_cache:  # a shared cache outlives this replica: the next one finds its models there
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    # -- getting a model -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """For `GET /`: every model, its versions, and which are in memory."""
        with self._lock:
            return {
                name: {
                    "versions": sorted(versions, key=int),
                    "latest": self._latest.get(name),
                    "loaded": sorted({key[1] for key in self._memory if key[0] == name}, key=int),
                }
                for name, versions in sorted(self._available.items())
            }

    def loaded_names(self) -> set[str]:
        """The models with a version in memory now (what the replica reports it holds: serving.affinity)."""
        with self._lock:
            return {name for name, _version in self._memory}

    def get(self, name: str | None, version: str | int = LATEST) -> Any:
        name = self._name(name)
        version = str(version)
        with self._lock:
            versions = self._available.get(name)
            if versions is None:
                available = ", ".join(sorted(self._available)) or "none"
                raise ModelNotFound(f"model {name!r} not found; available: {available}")
            if version == LATEST:
                version = self._latest.get(name) or _latest(versions) or ""
            if version not in versions:
                listed = ", ".join(sorted(versions, key=int)) or "none"
                raise ModelNotFound(f"model {name!r} has no version {version}; versions: {listed}")
            key = (name, version)
            if key in self._memory:
                self._memory.move_to_end(key)
                self._count("hit")
                return self._memory[key]
            self._count("miss")
            future = self._loading.get(key)
            if future is None:
                future = self._loading[key] = Future()
                owner = True
            else:
                owner = False
        if owner:
            self._load(key, future)
        return future.result()

    def _name(self, name: str | None) -> str:
        if name is not None:
            return name
        with self._lock:
            if len(self._available) == 1:
                return next(iter(self._available))
        raise ModelInputInvalid(f"name the model: several are served ({', '.join(sorted(self._available))})")

    def _load_async(self, key: tuple[str, str], becomes_latest: bool = False) -> None:
        with self._lock:
            if key in self._loading:
                return
            future: Future[Any] = Future()
            self._loading[key] = future
        thread = threading.Thread(
            target=self._load, args=(key, future, becomes_latest), name=f"load-{key[0]}", daemon=True
        )
        thread.start()

    def _load(self, key: tuple[str, str], future: Future[Any], becomes_latest: bool = False) -> None:
        name, version = key
        started = time.perf_counter()
        try:
            if self.loader is None:
                raise RuntimeError("no loader: the predictor defines no load_model")
            with self._lock:
                location = self._available.get(name, {}).get(version, "")
            files = _fingerprint(location) if location else None  # before the load: a change during it is seen
            path = self._local(name, version, location)
            model = self.loader(str(path))
        except ModelError as exc:
            future.set_exception(exc)
        except Exception as exc:
            LOGGER.error(f"model {name} version {version} failed to load", exc_info=exc)
            future.set_exception(ModelLoadFailed(f"model {name!r} version {version} failed to load: {exc}"))
        else:
            with self._lock:
                self._memory[key] = model  # an overwritten version: the new load replaces the old in place
                self._memory.move_to_end(key)
                self._prints[key] = files
                replaced = self._latest.get(name)
                if becomes_latest or replaced is None:
                    self._latest[name] = version
                if becomes_latest and replaced not in (None, version):
                    self._evict((name, str(replaced)), f"version {version} serves latest now")
                limit = self.config.cache_size
                while limit is not None and len(self._memory) > limit:
                    self._evict(next(iter(self._memory)), "cache full")
                self._gauge()
            if self.metrics is not None:
                self.metrics.model_load_duration.observe(time.perf_counter() - started)
            LOGGER.info(f"model {name} version {version} loaded in {time.perf_counter() - started:.2f}s")
            future.set_result(model)
        finally:
            with self._lock:
                if self._loading.get(key) is future:
                    del self._loading[key]

    def _evict(self, key: tuple[str, str], why: str) -> None:
        """With the lock held."""
        model = self._memory.pop(key, None)
        self._prints.pop(key, None)
        if model is not None:
            LOGGER.info(f"model {key[0]} version {key[1]} unloaded: {why}")
            self._count("eviction")
            del model
            self._gauge()

    def _local(self, name: str, version: str, location: str) -> Path:
        if not location.startswith("s3://"):
            if not Path(location).is_dir():
                raise ModelNotFound(f"model {name!r} version {version} is gone from {location}")
            return Path(location)
        fetched = self._disk_cache.fetch(location)
        self._count("download" if fetched.downloaded else "disk_hit")
        return fetched.path

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.model_cache.labels(self.metrics.api, result).inc()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.models_loaded.set(len(self._memory))


class PythonClient:
    """Cortex's `python_client`: `get_model(model_name=None, model_version="latest")`."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def get_model(self, model_name: str | None = None, model_version: str | int = LATEST) -> Any:
        return self._store.get(model_name, model_version)


class ONNXClient:
    """Cortex's `onnx_client`: `predict(model_input, model_name=None, model_version="latest")`.

    `model_input` is one array (a model with one input) or a dict of arrays by input name;
    the result is onnxruntime's list of outputs.
    """

    def __init__(self, store: ModelStore, gpu: bool) -> None:
        self._store = store
        self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        store.loader = self._session

    def _session(self, path: str) -> Any:
        import onnxruntime

        files = sorted(Path(path).glob("*.onnx"))
        if len(files) != 1:
            raise RuntimeError(f"{path} must hold exactly one .onnx file, it holds {len(files)}")
        available = set(onnxruntime.get_available_providers())
        providers = [p for p in self._providers if p in available] or ["CPUExecutionProvider"]
        return onnxruntime.InferenceSession(str(files[0]), providers=providers)

    def get_model(self, model_name: str | None = None, model_version: str | int = LATEST) -> Any:
        return self._store.get(model_name, model_version)

    def predict(self, model_input: Any, model_name: str | None = None, model_version: str | int = LATEST) -> Any:
        session = self._store.get(model_name, model_version)
        inputs = session.get_inputs()
        if len(inputs) == 1 and not isinstance(model_input, dict):
            model_input = {inputs[0].name: model_input}
        elif not isinstance(model_input, dict):
            names = ", ".join(i.name for i in inputs)
            raise ModelInputInvalid(f"the model takes several inputs ({names}): pass a dict by input name")
        feed = {}
        for declared in inputs:
            if model_input.get(declared.name) is None:
                raise ModelInputInvalid(
                    f"missing key {declared.name!r}: the model's inputs are " + ", ".join(i.name for i in inputs)
                )
            feed[declared.name] = _as_input(model_input[declared.name], declared)
        return session.run(None, feed)


class TensorFlowClient:
    """Cortex's `tensorflow_client`: `predict(model_input, model_name=None, model_version="latest")` over
    SavedModels loaded in this process (Cortex called a TensorFlow Serving sidecar over gRPC).

    `model_input` is a dict of values by the signature's input names (or one value for a one-input
    signature). Each is made a tensor of the input's dtype and reshaped to its declared shape when at most
    one dimension is unknown, as the ONNX client does (a scalar for a `[None]` input is one example). The
    result is what Cortex v0.25 returned from TF Serving's answer (`json_format.MessageToDict`): each output
    as its flat list of values, 64-bit integers as strings, bytes as base64, NaN and infinities as strings.
    """

    def __init__(self, store: ModelStore) -> None:
        try:
            import tensorflow  # noqa: F401  (checked here: the replica says what to install at start)
        except ImportError:
            from serving.loader import StartupError

            raise StartupError(
                "predictor.type tensorflow needs TensorFlow in the replica: add tensorflow-cpu (or tensorflow "
                "for GPUs) to requirements.txt, or pip install tensorflow-cpu"
            ) from None
        self._store = store
        store.loader = self._load

    def _load(self, path: str) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(path)

    def get_model(self, model_name: str | None = None, model_version: str | int = LATEST) -> Any:
        return self._store.get(model_name, model_version)

    def predict(self, model_input: Any, model_name: str | None = None, model_version: str | int = LATEST) -> Any:
        import tensorflow as tf

        model = self._store.get(model_name, model_version)
        signatures = dict(model.signatures)
        if not signatures:
            raise ModelInputInvalid("the SavedModel has no signatures to call")
        signature = signatures.get("serving_default") or next(iter(signatures.values()))
        _, declared = signature.structured_input_signature
        if not isinstance(model_input, dict):
            if len(declared) != 1:
                names = ", ".join(sorted(declared))
                raise ModelInputInvalid(f"the model takes several inputs ({names}): pass a dict by input name")
            model_input = {next(iter(declared)): model_input}
        missing = sorted(set(declared) - set(model_input))
        if missing:
            raise ModelInputInvalid(f"missing key {missing[0]!r}: the model's inputs are {', '.join(sorted(declared))}")
        try:
            feed = {name: _tf_input(name, model_input[name], spec) for name, spec in declared.items()}
            outputs = signature(**feed)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise ModelInputInvalid(f"the input does not fit the model: {exc}") from None
        return {name: _serving_values(value.numpy()) for name, value in outputs.items()}


def _tf_input(name: str, value: Any, spec: Any) -> Any:
    """One input as a tensor of its declared dtype and, where it can be inferred, its declared shape."""
    import numpy as np
    import tensorflow as tf

    dims = spec.shape.as_list() if spec.shape.rank is not None else None
    array = np.asarray(value, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    if dims is not None and dims.count(None) <= 1 and list(array.shape) != dims:
        try:
            array = array.reshape([-1 if d is None else d for d in dims])
        except ValueError:
            raise ValueError(f"input {name!r} has shape {list(array.shape)}, the model takes {dims}") from None
    if not spec.shape.is_compatible_with(array.shape):
        raise ValueError(f"input {name!r} has shape {list(array.shape)}, the model takes {spec.shape}")
    return tf.constant(array, dtype=spec.dtype)


def _serving_values(array: Any) -> list[Any]:
    """An output as TF Serving's answer read through `json_format.MessageToDict` (what Cortex v0.25 returned):
    its values flat, in row-major order."""
    import base64
    import math

    import numpy as np

    flat = array.reshape(-1)
    if flat.dtype == object or flat.dtype.kind == "S":  # bytes: protobuf JSON writes them as base64
        return [base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode() for v in flat.tolist()]
    if flat.dtype in (np.int64, np.uint64):  # protobuf JSON writes 64-bit integers as strings
        return [str(v) for v in flat.tolist()]
    values: list[Any] = flat.tolist()
    if flat.dtype.kind == "f":
        return [
            v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in values
        ]
    return values


def model_clients(predictor_type: str, store: ModelStore, gpu: bool) -> dict[str, Any]:
    """What `__init__` may ask for by name when the API serves models, by predictor type."""
    if predictor_type == "onnx":
        return {"onnx_client": ONNXClient(store, gpu=gpu)}
    if predictor_type == "tensorflow":
        return {"tensorflow_client": TensorFlowClient(store)}
    return {"python_client": PythonClient(store)}


# onnxruntime's element types as numpy's (onnxruntime_pybind_mlvalue.cc)
_ONNX_DTYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def _as_input(value: Any, declared: Any) -> Any:
    """One input as Cortex handed it to onnxruntime: a numpy array of the input's element type, reshaped to
    its declared shape (a named or unknown dimension is inferred, when at most one is)."""
    import numpy as np

    dtype = _ONNX_DTYPES.get(declared.type)
    if dtype is None:
        raise ModelInputInvalid(f"input {declared.name!r} has type {declared.type}, which cannot be made from JSON")
    try:
        if isinstance(value, np.ndarray):
            if np.issubdtype(value.dtype, np.number) != np.issubdtype(np.dtype(dtype), np.number):
                raise ValueError(f"expected dtype {dtype}, got {value.dtype}")
            array = value.astype(dtype, copy=False)
        else:
            array = np.array(value, dtype=dtype)
        shape = [dim if isinstance(dim, int) else -1 for dim in (declared.shape or [])]
        if shape and shape.count(-1) <= 1:
            array = array.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise ModelInputInvalid(f"input {declared.name!r} (shape {declared.shape}, {dtype}): {exc}") from None
    return array


# -- local directories and S3 --------------------------------------------------------------


def _basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _list_dirs(location: str) -> list[str]:
    if not location.startswith("s3://"):
        base = Path(location)
        if not base.is_dir():
            raise FileNotFoundError(f"{location} is not a directory")
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    bucket, prefix = _split_s3(location)
    client = _s3()
    names: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            names.add(common["Prefix"][len(prefix) :].strip("/"))
    return sorted(names)


def _list_objects(location: str) -> dict[str, tuple[int, str]]:
    """A version's objects under its S3 prefix: relative path -> (size, ETag)."""
    bucket, prefix = _split_s3(location)
    found: dict[str, tuple[int, str]] = {}
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :]
            if relative and not relative.endswith("/"):
                found[relative] = (int(item["Size"]), str(item.get("ETag", "")).strip('"'))
    return found


def _fingerprint(location: str) -> object:
    """What a version's files are now: S3's keys, sizes and ETags; on disk, paths, sizes and mtimes."""
    if location.startswith("s3://"):
        return tuple(sorted(_list_objects(location).items()))
    base = Path(location)
    if not base.is_dir():
        return None
    return tuple(
        sorted(
            (str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for p in base.rglob("*") if p.is_file()
        )
    )


def _download_object(location: str, relative: str, destination: Path) -> None:
    bucket, prefix = _split_s3(location)
    _s3().download_file(bucket, prefix + relative, str(destination))


def _split_s3(location: str) -> tuple[str, str]:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, (prefix.rstrip("/") + "/") if prefix else ""


def _s3() -> Any:
    try:
        import boto3
    except ImportError:
        raise RuntimeError("models on S3 need boto3: add boto3 to requirements.txt") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")


def _latest(versions: dict[str, str]) -> str | None:
    return max(versions, key=int) if versions else None
