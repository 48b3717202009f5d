"""The per-replica serving config derived from an API of the spec."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from serving.config import BatchingConfig, ServingConfig, TracingConfig
from stack.spec import Api, LoadedSpec
from stack.spec.models import Models

REPLICA_PORT = 8888  # every replica listens here inside its container or allocation


def api_keys_text(loaded: LoadedSpec) -> str:
    """The secret file the replicas read their keys from: one per line. It is always written, empty of
    keys when the stack is open, so replicas follow keys added to or removed from a running stack."""
    entries = loaded.spec.gateway.key_entries
    if not entries:
        return "# no API keys (gateway.api_keys, gateway.keys): the stack's APIs are open\n"
    return "".join(f"{entry.to_line()}\n" for entry in entries)


def keys_removed(previous: str | None, loaded: LoadedSpec) -> str | None:
    """The warning for a `stack up` that opens a closed stack: `previous` is the keys file its replicas read."""
    had = previous is not None and any(
        line.strip() and not line.strip().startswith("#") for line in previous.splitlines()
    )
    if not had or loaded.spec.gateway.all_keys:
        return None
    return (
        "warning: gateway.api_keys was removed: the stack's APIs are open now to anyone who reaches the gateway "
        "(add keys back and `stack up` to close them)"
    )


def replica_config(
    loaded: LoadedSpec,
    api: Api,
    *,
    root: str | None = None,
    host: str = "0.0.0.0",
    port: int = REPLICA_PORT,
    drain_delay: float | None = None,
    keys_file: str | None = None,
    model_cache: str | None = None,
    upstreams_file: str | None = None,
    tracing: TracingConfig | None = None,
    leases_url: str | None = None,
) -> ServingConfig:
    """`root` is where the project directory is seen by the replica: /app in images, the real path locally.
    `model_cache`: where this replica finds the host's shared model cache (a path it sees), if any.
    `upstreams_file`: where it reads the ready replicas of the APIs it calls (only used with `calls`)."""
    base = PurePosixPath(root) if root is not None else PurePosixPath(loaded.root.as_posix())
    predictor = api.predictor
    batching = predictor.batching
    return ServingConfig(
        api=api.name,
        predictor_path=str(base / predictor.path),
        predictor_class=predictor.class_name,
        config=predictor.config,
        python_path=[str(base / entry) for entry in predictor.python_path],
        host=host,
        port=port,
        processes_per_replica=predictor.processes_per_replica,
        threads_per_process=predictor.threads_per_process,
        max_concurrency=predictor.max_concurrency,
        timeout=predictor.timeout,
        stuck_after=predictor.stuck_limit,
        health_check_period=predictor.health_check_period,
        health_check_timeout=predictor.health_check_timeout,
        max_body_size=predictor.max_body_size,
        body_timeout=predictor.body_timeout,
        batching=BatchingConfig(batching.max_batch_size, batching.batch_interval, batching.max_in_flight)
        if batching
        else None,
        drain_delay=predictor.drain_delay if drain_delay is None else drain_delay,
        grace_period=predictor.grace_period,
        # With keys_file, the replica reads the keys from there (a secret the target mounts, always there
        # and rewritten when keys change: the replica follows it).
        api_keys=[] if keys_file else loaded.spec.gateway.all_keys,
        api_keys_file=keys_file,
        public_openapi=loaded.spec.gateway.public_openapi,
        gpus=int(api.compute.gpu) if api.compute.gpu == int(api.compute.gpu) else api.compute.gpu,
        log_format=loaded.spec.log_format,
        predictor_type=predictor.type,
        protocol=predictor.protocol,
        models=_models(predictor.models or predictor.multi_model_reloading, model_cache),
        project_root=str(base),
        monitoring=api.monitoring.model_dump() if api.monitoring else None,
        calls=list(api.calls),
        upstreams_file=upstreams_file if api.calls else None,
        tracing=tracing,
        affinity=list(api.networking.affinity.source) if api.networking.affinity is not None else None,
        leases_url=leases_url if any(k.concurrency for k in loaded.spec.gateway.keys) else None,
        priorities=len(
            {k.priority for k in loaded.spec.gateway.keys} | ({"normal"} if loaded.spec.gateway.api_keys else set())
        )
        > 1,
    )


def tracing_config(loaded: LoadedSpec, version: str, traces_url: str | None = None) -> TracingConfig | None:
    """A replica's tracing (None when stack.yaml has no `tracing`); `traces_url`: the collector as the
    replica reaches it, when that differs from stack.yaml's (a container: stack.plan.gateway.from_container)."""
    tracing = loaded.spec.tracing
    if tracing is None:
        return None
    return TracingConfig(traces_url or tracing.traces_url, tracing.sample_rate, loaded.spec.project, version)


def needs_model_cache(api: Api) -> bool:
    """Its models come (at least partly) from S3: they are downloaded, into the host's model cache."""
    models = api.predictor.models or api.predictor.multi_model_reloading
    return models is not None and any(location.startswith("s3://") for location in models.locations())


def host_model_cache(loaded: LoadedSpec, api: Api) -> Path:
    """The local target's model cache directory for an API: predictor.model_cache, or the stack's own."""
    given = api.predictor.model_cache
    if given is None:
        return loaded.root / ".stack" / "model-cache"
    path = Path(given)
    return path if path.is_absolute() else loaded.root / path


def _models(models: Models | None, cache_dir: str | None) -> dict[str, Any] | None:
    if models is None:
        return None
    return {
        "cache_dir": cache_dir,
        "path": models.path,
        "paths": [{"name": p.name, "path": p.path} for p in models.paths or []],
        "dir": models.dir,
        "cache_size": models.cache_size,
        "disk_cache_size": models.disk_cache_size,
        "poll_interval": models.poll_interval,
    }


def extra_requirements(api: Api, tracing: bool = False) -> list[str]:
    """What the replica image needs beyond the runtime for this API's predictor type and models, and for
    `tracing` (stack.yaml's): OpenTelemetry's SDK and OTLP/HTTP exporter, only then."""
    extra = ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"] if tracing else []
    if api.compute.gpu:
        extra.append("nvidia-ml-py")  # the replica's GPU metrics (serving.gpu): NVML, from the driver
    if api.predictor.protocol == "v2":
        extra.append("numpy")  # tensors arrive as numpy arrays
    if api.predictor.type == "onnx":
        extra.append("onnxruntime-gpu" if api.compute.gpu else "onnxruntime")
    if api.predictor.type == "tensorflow":
        extra.append("tensorflow" if api.compute.gpu else "tensorflow-cpu")
    models = api.predictor.models or api.predictor.multi_model_reloading
    if models is not None and any(location.startswith("s3://") for location in models.locations()):
        extra.append("boto3")
    return extra
