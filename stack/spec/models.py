"""The `stack.yaml` schema: every field, its default, and why.

Units are parsed on the way in: durations become float seconds, memory int
bytes, CPU float cores. Cross-field rules that need the file system (does the
predictor exist?) live in `stack.spec.loader`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from serving.keys import KeyEntry
from stack.errors import UnknownApi
from stack.spec.base import (
    NAME_RULE,
    Cpu,
    Duration,
    GpuShare,
    Memory,
    Name,
    Networking,
    NonNegativeInt,
    PositiveInt,
    Strict,
)
from stack.spec.keys import NamedKey
from stack.spec.splitters import Splitter

__all__ = ["NAME_RULE", "Api", "Duration", "Memory", "Networking", "Spec", "Splitter", "Strict"]


class Batching(Strict):
    # The most payloads one predict gets; a batch also closes when batch_interval passes.
    max_batch_size: PositiveInt = 8
    batch_interval: Duration = 0.01  # 10ms: the most a request waits for its batch to fill
    # Batches running at once: with 2 the next batch is collected, decoded and its tensors built
    # while the previous one runs on the GPU (predict must then be safe to call from two threads,
    # as PyTorch and ONNX Runtime inference are). 1: strictly one batch at a time.
    max_in_flight: PositiveInt = 2


class ModelPath(Strict):
    # How a request asks for it (?model=NAME), and how the model clients name it.
    name: Name
    path: str  # a directory relative to stack.yaml, or s3://bucket/prefix


class Models(Strict):
    """Cortex's `multi_model_reloading` (python) / `models` (onnx): where models are, how many to keep."""

    path: str | None = None  # one model
    paths: list[ModelPath] | None = None  # several, named
    dir: str | None = None  # every sub-directory is a model
    cache_size: PositiveInt | None = None  # models in memory (least recently used evicted); null: all
    disk_cache_size: PositiveInt | None = None  # model versions on local disk (from S3); null: all
    # How often the sources are listed for new or removed versions (live reloading).
    poll_interval: Duration = 2.0

    @model_validator(mode="after")
    def _one_source(self) -> Models:
        given = [k for k in ("path", "paths", "dir") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, paths or dir (got {', '.join(given) or 'none'})")
        if self.cache_size and self.disk_cache_size and self.disk_cache_size < self.cache_size:
            raise ValueError("disk_cache_size must be at least cache_size")
        return self

    def locations(self) -> list[str]:
        return [p for p in [self.path, self.dir, *(m.path for m in self.paths or [])] if p]


class Monitoring(Strict):
    """Cortex's model monitoring: the predictions as Prometheus metrics."""

    # Classification: a counter per predicted class; regression: a histogram of the values.
    model_type: Literal["classification", "regression"]
    key: str | None = None  # the response field holding the prediction; null: the whole response


class Predictor(Strict):
    # python: a Python class; onnx: a class given `onnx_client` (onnxruntime) for `models`; tensorflow: a
    # class given `tensorflow_client` for `models` (SavedModels loaded in the replica, not TF Serving).
    type: Literal["python", "onnx", "tensorflow"] = "python"
    # default: POST / with our contract; openai: /v1/chat/completions, /v1/completions, /v1/models;
    # v2: the Open Inference Protocol (KServe v2: Triton's and MLServer's clients).
    protocol: Literal["default", "openai", "v2"] = "default"
    # The predictor's file, relative to stack.yaml (inside the project: it goes into the image).
    path: str
    class_name: str = Field("", alias="class")  # empty: Predictor, else PythonPredictor (Cortex)
    # Passed to __init__(self, config) as it is: weights' paths, thresholds, anything the predictor reads.
    config: dict[str, Any] = Field(default_factory=dict)
    # More import directories, relative to stack.yaml (Cortex's python_path).
    python_path: list[str] = Field(default_factory=list)
    requirements: str | None = None  # default: requirements.txt beside stack.yaml, if present
    # The replicas' environment variables (numbers become text; booleans must be quoted).
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None  # a prebuilt image: skip the build
    # Worker processes in a replica, sharing its port (SO_REUSEPORT): CPU-bound Python past one core.
    processes_per_replica: PositiveInt = 1
    # Threads a plain `def predict` runs on in each process (an `async def predict` runs on the event loop).
    threads_per_process: PositiveInt = 1
    # Requests executing or queued per replica before it answers 503 (Cortex: 1 + 100 queued).
    max_concurrency: PositiveInt = 100
    timeout: Duration | None = None  # per request; null waits as long as predict takes
    # A request's body; a longer one is a 413 (from the gateway at once, when its length is declared).
    max_body_size: Memory = 16 * 1024**2
    # The whole body must arrive within this, else 408: a client trickling a body cannot hold a slot.
    body_timeout: Duration = 30.0
    # Server-side batching: predict gets a list of payloads and returns a list; null: one at a time.
    batching: Batching | None = None
    drain_delay: Duration = 5.0  # keep serving after SIGTERM while the router notices
    grace_period: Duration = 30.0  # then let in-flight requests finish
    # Liveness (serving.health). A predict running this long is stuck: the replica answers what it holds
    # with 504 and is replaced. null: twice `timeout` (at least timeout + 5s), or 5m without one — a big
    # model's predict may take minutes, a thread still running twice its timeout is wedged.
    stuck_after: Duration | None = None
    # check_health() (when the predictor has one) every this often, as Ray Serve's health_check_period_s.
    health_check_period: Duration = 10.0
    # The event loop not answering the controller's probe for this long is stuck; check_health() must
    # return within it. 10s: well past any pause of a busy loop, well within a minute of being stuck.
    health_check_timeout: Duration = 10.0
    multi_model_reloading: Models | None = None  # python: models for python_client (load_model)
    models: Models | None = None  # onnx: models for onnx_client
    # Where models from S3 are downloaded, shared by every replica on a host (and kept across restarts):
    # a directory (absolute, or relative to stack.yaml) or, on Compose, a volume name (no `/`).
    # null: the stack's own (local: .stack/model-cache/; Compose: the volume `model-cache`).
    model_cache: str | None = None

    @field_validator("model_cache")
    @classmethod
    def _cache_place(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or ":" in value):
            raise ValueError(f"expected a directory or a volume name (no ':'), got {value!r}")
        return value

    @model_validator(mode="after")
    def _models_match_type(self) -> Predictor:
        if self.type == "onnx" and self.models is None:
            raise ValueError("type onnx needs `models` (path, paths or dir of .onnx models)")
        if self.type == "tensorflow" and self.models is None:
            raise ValueError("type tensorflow needs `models` (path, paths or dir of SavedModel directories)")
        if self.type == "python" and self.models is not None:
            raise ValueError(
                "`models` is for types onnx and tensorflow; a python predictor's models go in multi_model_reloading"
            )
        if self.type != "python" and self.multi_model_reloading is not None:
            raise ValueError(f"multi_model_reloading is for type python; a {self.type} predictor's models go in models")
        chosen = self.models or self.multi_model_reloading
        if chosen is not None and chosen.cache_size is not None and self.processes_per_replica > 1:
            raise ValueError("a model cache_size needs processes_per_replica: 1 (each process would hold its own)")
        return self

    @model_validator(mode="after")
    def _stuck_after_timeout(self) -> Predictor:
        for name in ("stuck_after", "health_check_period", "health_check_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be longer than 0s")
        if self.stuck_after is not None and self.timeout is not None and self.stuck_after <= self.timeout:
            raise ValueError(
                f"stuck_after ({self.stuck_after:g}s) must be longer than timeout ({self.timeout:g}s): a predict "
                "is stuck only once it runs past its timeout"
            )
        return self

    @property
    def stuck_limit(self) -> float:
        """stuck_after, or its default: twice the timeout (at least timeout + 5s), else 5 minutes."""
        if self.stuck_after is not None:
            return self.stuck_after
        if self.timeout is not None:
            return max(2 * self.timeout, self.timeout + 5.0)
        return 300.0

    @field_validator("python_path", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # Cortex wrote python_path as one string

    @field_validator("env", mode="before")
    @classmethod
    def _env_numbers(cls, env: Any) -> Any:
        # Numbers read as numbers in YAML; an environment variable is their text (as in Compose).
        # Booleans are refused: `true` would become "True", which few programs read as true.
        if not isinstance(env, dict):
            return env
        out = {}
        for key, value in env.items():
            if isinstance(value, bool):
                raise ValueError(f'the value of {key} is a boolean; quote it ("true") to pass the text')
            out[key] = str(value) if isinstance(value, (int, float)) else value
        return out

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return env


class Compute(Strict):
    cpu: Cpu | None = None  # null: no limit
    mem: Memory | None = None  # null: no limit
    # NVIDIA GPUs per replica: whole GPUs (1, 2), or a fraction of one below 1 (0.25: four replicas
    # share a GPU). `stack plan` places every replica slot on one of the host's GPUs; 0: no GPU.
    gpu: GpuShare = 0
    # The GPU memory one replica needs (20Gi): the replicas placed on a GPU fit in its memory.
    # null: only `gpu` is counted.
    gpu_mem: Memory | None = None

    @model_validator(mode="after")
    def _memory_needs_a_gpu(self) -> Compute:
        if self.gpu_mem is not None and not self.gpu:
            raise ValueError("gpu_mem is the GPU memory of a replica that has a GPU: set compute.gpu too")
        return self


class Autoscaling(Strict):
    """Cortex's defaults, which Cortex tuned on real traffic."""

    # 0: scale to zero after `idle_timeout` without a request; the next request wakes a replica
    # (the gateway holds it meanwhile) and is answered once it is ready.
    min_replicas: NonNegativeInt = 1
    # The most replicas the autoscaler may run (GPU APIs: also bounded by the host's GPU slots).
    max_replicas: PositiveInt = 100
    init_replicas: PositiveInt | None = None  # default: min_replicas (at least 1: `stack up` proves the API starts)
    # With min_replicas 0: no request for this long and the API runs no replica (the activator wakes it).
    idle_timeout: Duration = 600.0
    # stack: our autoscaler decides. nomad-autoscaler (Nomad only): the job carries a scaling policy
    # for HashiCorp's Nomad Autoscaler (Prometheus APM, target-value on the same in-flight query).
    engine: Literal["stack", "nomad-autoscaler"] = "stack"
    # Requests in flight per replica the autoscaler aims for; default processes x threads.
    target_replica_concurrency: Annotated[float, Field(gt=0)] | None = None
    # Requests in flight are averaged over this before a decision: at least two scrape_intervals.
    window: Duration = 60.0
    # A scale-up waits until the higher count held this long (no reaction to a single spike).
    upscale_stabilization_period: Duration = 60.0
    # A scale-down takes the highest count asked over this period (no flapping after a burst).
    downscale_stabilization_period: Duration = 300.0
    # One decision multiplies the count by at most this (Cortex's default).
    max_upscale_factor: Annotated[float, Field(gt=1)] = 1.5
    # One decision keeps at least this share of the replicas (Cortex's default).
    max_downscale_factor: Annotated[float, Field(gt=0, lt=1)] = 0.75
    # A wanted count within this share above the current one changes nothing.
    upscale_tolerance: Annotated[float, Field(ge=0)] = 0.05
    # A wanted count within this share below the current one changes nothing.
    downscale_tolerance: Annotated[float, Field(ge=0)] = 0.05
    # A GPU API also grows when its replicas' GPU utilization (percent, averaged over `window`) is above
    # this, beside requests in flight; null: in flight alone decides.
    target_gpu_utilization: Annotated[float, Field(gt=0, le=100)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        init = self.init_replicas
        if init is not None and not max(self.min_replicas, 1) <= init <= self.max_replicas:
            raise ValueError(
                f"init_replicas ({init}) must lie between min_replicas ({self.min_replicas}) "
                f"and max_replicas ({self.max_replicas})"
            )
        return self

    @property
    def initial(self) -> int:
        return self.init_replicas or max(self.min_replicas, 1)


SurgeValue = Annotated[int | str, Field(union_mode="left_to_right")]


class Update(Strict):
    max_surge: SurgeValue = "25%"  # extra replicas allowed during a rolling update
    max_unavailable: SurgeValue = "25%"  # replicas allowed to be missing during it
    # A rollout whose new replicas are not all ready within this is rolled back (as are new replicas that
    # fail to start 3 times in a row). 10m, as Kubernetes' progressDeadlineSeconds and Nomad's
    # progress_deadline: room for a large model's download and load.
    progress_deadline: Duration = 600.0

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _count_or_percent(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if not re.fullmatch(r"\d{1,3}%", value) or int(value[:-1]) > 100:
            raise ValueError(f"expected a replica count or a percentage like 25%, got {value!r}")
        return value

    def resolve(self, replicas: int) -> tuple[int, int]:
        """(surge, unavailable) in replicas; like Kubernetes, surge rounds up and unavailable down."""
        surge = _of(self.max_surge, replicas, up=True)
        unavailable = _of(self.max_unavailable, replicas, up=False)
        return (surge, unavailable) if surge or unavailable else (1, 0)


def _of(value: int | str, replicas: int, up: bool) -> int:
    if isinstance(value, int):
        return value
    share = int(value[:-1]) * replicas
    return -(-share // 100) if up else share // 100


class Api(Strict):
    # Names its endpoint (/NAME), its containers, jobs and metrics' label.
    name: Name
    # RealtimeAPI: replicas answer requests. BatchAPI (Cortex's): the endpoint takes jobs, each run on
    # `workers` worker replicas started for it and stopped after it (stack.control.batch).
    kind: Literal["RealtimeAPI", "BatchAPI"] = "RealtimeAPI"
    # What runs in each replica: the class, its settings, how it is served.
    predictor: Predictor
    # Cortex's prediction monitoring: a metric of what predict answers; null: none.
    monitoring: Monitoring | None = None
    # What one replica may use: CPU, memory, GPUs.
    compute: Compute = Compute()
    # How many replicas, and how the autoscaler changes the count.
    autoscaling: Autoscaling = Autoscaling()
    # How a new version rolls out, and when it is rolled back.
    update: Update = Update()
    # Where clients reach it, and how the gateway picks a replica.
    networking: Networking = Networking()
    # Pipelines: the APIs of this stack its predictor may call through the `apis` handle (serving.calls),
    # replica to replica inside the stack, never through the public port. No cycles.
    calls: list[Name] = Field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.networking.endpoint or f"/{self.name}"

    @property
    def target_concurrency(self) -> float:
        given = self.autoscaling.target_replica_concurrency
        return given or float(self.predictor.processes_per_replica * self.predictor.threads_per_process)

    @property
    def autoscaled(self) -> bool:
        return self.kind == "RealtimeAPI" and self.autoscaling.min_replicas != self.autoscaling.max_replicas

    @model_validator(mode="after")
    def _batch_has_no_replicas_at_rest(self) -> Api:
        if self.kind == "BatchAPI":
            for field in ("autoscaling", "update"):
                if field in self.model_fields_set:
                    raise ValueError(
                        f"a BatchAPI has no replicas at rest (each job's `workers` says how many run it): "
                        f"remove {field}"
                    )
        return self

    @model_validator(mode="after")
    def _gpu_and_processes(self) -> Api:
        if self.autoscaling.target_gpu_utilization is not None and not self.compute.gpu:
            raise ValueError("autoscaling.target_gpu_utilization needs a GPU: set compute.gpu")
        gpus, processes = self.compute.gpu, self.predictor.processes_per_replica
        # With several GPUs each worker process gets one of them; one GPU (or a share) is shared by all.
        if gpus > 1 and processes != gpus:
            raise ValueError(
                f"compute.gpu is {gpus:g} but predictor.processes_per_replica is {processes}: with more than one GPU "
                "per replica each process gets one GPU, so set processes_per_replica to the GPU count"
            )
        return self


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class Acme(Strict):
    """Certificates from an ACME server (Let's Encrypt by default), through Traefik's ACME resolver."""

    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]  # the account's contact (expiry notices)
    domains: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]  # first: the main name
    # The ACME directory; default: Let's Encrypt (its staging directory for a first try).
    ca_server: Annotated[str, Field(pattern=r"^https://")] = LETS_ENCRYPT
    # tls-alpn: validated on the HTTPS port itself; http: on gateway.http_port (port 80 where the CA
    # reaches it), whose other requests are redirected to HTTPS.
    challenge: Literal["tls-alpn", "http"] = "tls-alpn"
    # A CA bundle to trust for ca_server itself (a private ACME server: step-ca, Pebble); null: the system's.
    ca_file: str | None = None


class Tls(Strict):
    """HTTPS at the gateway: your certificate files, or ACME; optionally client certificates (mutual TLS)."""

    cert_file: str | None = None  # a PEM chain, relative to stack.yaml; re-read when it changes (renewals)
    key_file: str | None = None  # its private key (PEM; keep it 0600)
    # Mutual TLS: clients must show a certificate signed by this CA (PEM), else the handshake fails;
    # replicas see the client's subject in X-Forwarded-Tls-Client-Cert-Info.
    client_ca_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"  # older clients are refused at the handshake
    # Certificates from an ACME CA (Let's Encrypt), renewed by the gateway; instead of cert_file and key_file.
    acme: Acme | None = None

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return f"{value:.1f}" if isinstance(value, float) else value  # `min_version: 1.2` unquoted

    @model_validator(mode="after")
    def _one_source(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(f"cert_file and key_file go together: set {missing} too")
        if self.cert_file is None and self.acme is None:
            raise ValueError("tls needs a certificate: cert_file and key_file, or acme: {email, domains}")
        if self.cert_file is not None and self.acme is not None:
            raise ValueError("tls takes cert_file/key_file or acme, not both")
        return self


class Gateway(Strict):
    # Where clients reach every API; the only port the stack opens to the network.
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # The address the gateway listens on. Default: every interface on Compose and Nomad (it is the
    # stack's front door), 127.0.0.1 for `stack up --local` (a development stack stays on this machine).
    host: str | None = None
    # Traefik's dashboard and API, on 127.0.0.1 only (read-only, but it shows every route). Off by default.
    dashboard: bool = False
    # Where Traefik's dashboard listens, on 127.0.0.1, when `dashboard` is on.
    dashboard_port: Annotated[int, Field(ge=1, le=65535)] = 8081
    # One line per request in the gateway's log; off by default (it costs CPU on the hot path).
    access_log: bool = False
    # Clients must send `Authorization: Bearer <key>` or `X-API-Key: <key>` when set. Keep them out of
    # stack.yaml: `api_keys: ${STACK_API_KEYS}` (comma-separated) or `api_keys_file: keys.txt` (one per
    # line). Replicas read them from a 0600 file (a Compose secret), never from their environment.
    api_keys: list[Annotated[str, Field(min_length=8)]] = Field(default_factory=list)
    # A file of keys, one per line (# comments), relative to stack.yaml: read by the command that loads the
    # spec, added to api_keys, and never copied into an image.
    api_keys_file: str | None = None
    # Named keys with their own rate, concurrency, priority and APIs (see NamedKey); api_keys and
    # api_keys_file keep working beside them as unnamed keys of normal priority and no limit.
    keys: list[NamedKey] = Field(default_factory=list)
    # With api_keys, GET /API/openapi.json answers only with a key, like the prediction routes (it
    # describes what the API takes). true publishes it to every client.
    public_openapi: bool = False
    # HTTPS on `port` (see Tls). Off by default: keys and payloads then travel in clear text.
    tls: Tls | None = None
    # With tls: plain HTTP on this port answers a redirect to HTTPS (and ACME's http challenge);
    # null: no plain listener.
    http_port: Annotated[int, Field(ge=1, le=65535)] | None = None

    @property
    def key_entries(self) -> list[KeyEntry]:
        """Every key of the stack: the named ones, then api_keys (what the keys file holds)."""
        return [k.entry() for k in self.keys] + [KeyEntry(key.encode()) for key in self.api_keys]

    @property
    def all_keys(self) -> list[str]:
        return [e.key.decode() for e in self.key_entries]

    @model_validator(mode="after")
    def _http_port(self) -> Gateway:
        if self.http_port is not None and self.tls is None:
            raise ValueError("http_port redirects to HTTPS: it needs tls (without tls, port serves plain HTTP)")
        if self.http_port is not None and self.http_port == self.port:
            raise ValueError(f"http_port {self.http_port} is the gateway's port too: choose another")
        acme = self.tls.acme if self.tls is not None else None
        if acme is not None and acme.challenge == "http" and self.http_port is None:
            raise ValueError("acme challenge http is answered on http_port: set http_port (80 for a public CA)")
        return self


class Prometheus(Strict):
    # The local target runs Prometheus only when its binary is on PATH; without it
    # the autoscaler scrapes the replicas itself. Compose and Nomad always run it.
    enabled: bool = True
    # Prometheus' web port, published on 127.0.0.1 only.
    port: Annotated[int, Field(ge=1, le=65535)] = 9090
    # How long samples are kept (the dashboard's charts reach back 24h at most).
    retention: Duration = 15 * 86400.0
    # Short by default: the autoscaler's window must hold several samples.
    scrape_interval: Duration = 5.0


class Build(Strict):
    # The image every API's image starts from (the controller's too); Python 3.11+ with pip.
    base_image: str = "python:3.11-slim"
    # Where `stack up --nomad` pushes images (HOST:PORT[/PATH]); Nomad clients pull from it.
    registry: str | None = None
    # Resolve every package on this host, for the image's own Python and platform, and install
    # them offline in the image: builds need no index (air-gapped sites, TLS-intercepting proxies
    # that containers do not trust). false: pip runs inside the image and needs the network.
    wheelhouse: bool = True
    # Images kept per API after a successful rollout: the current one and the one before it (what a
    # rollback runs). Older ones are removed; `stack down --images` removes them all.
    keep_images: Annotated[int, Field(ge=1)] = 2


class Tracing(Strict):
    """OpenTelemetry traces of every request: the gateway (Traefik's own tracing) starts a trace or
    continues a client's W3C `traceparent`; every replica continues it (request, queue, batch,
    predict, post_predict, and the calls of a pipeline), exporting over OTLP/HTTP."""

    # An OTLP/HTTP collector (Jaeger, Tempo, the OpenTelemetry Collector): http(s)://host:port, spans go
    # to its /v1/traces (give the full URL when it differs). Compose replicas and gateway reach a
    # 127.0.0.1 collector at the Docker host (it must listen on an address the containers reach).
    endpoint: str
    # Head sampling at the gateway: the share of new traces kept. A client's sampled `traceparent`
    # is always kept (parent-based), so a request someone is debugging is never dropped.
    sample_rate: float = 0.1

    @field_validator("sample_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"sample_rate is a fraction from 0 to 1 (0.1 keeps one new trace in ten), got {value!r}")
        return float(value)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        match = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(/[^\s?#]*)?", value)
        if match is None:
            raise ValueError(f"expected an OTLP/HTTP URL like http://127.0.0.1:4318, got {value!r}")
        if match.group(3) and not 0 < int(match.group(3)[1:]) < 65536:
            raise ValueError(f"the port of {value!r} is not one from 1 to 65535")
        return value.rstrip("/")

    @property
    def traces_url(self) -> str:
        """Where spans are posted: the endpoint's /v1/traces unless it names a path of its own."""
        return self.endpoint if re.search(r"//[^/]+/.", self.endpoint) else f"{self.endpoint}/v1/traces"


class Spec(Strict):
    # Names the Compose project, the Nomad jobs, every container and label.
    project: Name
    # Where `stack up` runs the stack unless a flag (--local, --nomad, --compose) says otherwise.
    target: Literal["compose", "local", "nomad"] | None = None
    # The stack's front door: Traefik, its port, keys, TLS.
    gateway: Gateway = Gateway()
    # The metrics store the autoscaler, the canaries and the dashboard read.
    prometheus: Prometheus = Prometheus()
    # How images are built (Compose, Nomad) and kept.
    build: Build = Build()
    # The prediction APIs (kind: RealtimeAPI, the default) and BatchAPIs.
    apis: Annotated[list[Api], Field(min_length=1)]
    # Endpoints weighted across APIs: A/B splits, shadow traffic, canaries.
    splitters: list[Splitter] = Field(default_factory=list)
    # The replicas' log lines: text for people, json (one object a line) for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    tracing: Tracing | None = None  # off by default: without it, nothing of tracing runs or is installed
    _batch: list[Api] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _batch_apis_apart(self) -> Spec:
        """`apis` are the realtime APIs (replicas, routes, scaling); `batch_apis` take jobs (stack.control.batch)."""
        self._batch = [a for a in self.apis if a.kind == "BatchAPI"]
        self.__dict__["apis"] = [a for a in self.apis if a.kind == "RealtimeAPI"]  # frozen: set once, here
        return self

    @property
    def batch_apis(self) -> list[Api]:
        return self._batch

    @property
    def every_api(self) -> list[Api]:
        """The realtime APIs, then the BatchAPIs."""
        return [*self.apis, *self._batch]

    def batch_api(self, name: str) -> Api:
        for api in self._batch:
            if api.name == name:
                return api
        raise UnknownApi(name, [a.name for a in self._batch])

    def api(self, name: str) -> Api:
        for api in self.apis:
            if api.name == name:
                return api
        raise UnknownApi(name, [a.name for a in self.apis])
