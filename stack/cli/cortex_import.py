"""`stack import cortex.yaml`: a Cortex v0.2x API list converted into a stack.yaml.

Renamed fields are mapped (`server_side_batching` → `predictor.batching`,
`update_strategy` → `update`, `autoscaling.max_replica_concurrency` →
`predictor.max_concurrency`, a `python_path` string → a list); fields with no
counterpart here are dropped, each listed with the reason, so nothing is lost
silently. The result is validated like any stack.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stack.errors import StackError

DROPPED = {
    "kind": "a RealtimeAPI is the default kind here",
    "networking.api_gateway": "the gateway is Traefik (set `gateway` at the top of stack.yaml)",
    "networking.local_port": "every API is reached at the gateway's port under its endpoint",
    "compute.inf": "AWS Inferentia is not supported",
    "predictor.image": "stack builds each API's image from the project and requirements.txt",
    "predictor.tensorflow_serving_image": "TensorFlow runs in the replica (no TensorFlow Serving sidecar)",
    "predictor.log_level": "replicas log at info; `log_format` sets text or JSON",
    "predictor.shm_size": "not needed: replicas share no memory segment",
    "predictor.multi_model_reloading.signature_key": "a TensorFlow-only field",
    "predictor.models.signature_key": "a TensorFlow-only field",
}
SAME = {
    "predictor": ("type", "path", "config", "env", "processes_per_replica", "threads_per_process"),
    "compute": ("cpu", "gpu", "mem"),
    "autoscaling": (
        "min_replicas",
        "max_replicas",
        "init_replicas",
        "target_replica_concurrency",
        "window",
        "downscale_stabilization_period",
        "upscale_stabilization_period",
        "max_downscale_factor",
        "max_upscale_factor",
        "downscale_tolerance",
        "upscale_tolerance",
    ),
}


@dataclass
class Imported:
    spec: dict[str, Any]
    dropped: list[str] = field(default_factory=list)  # "apis[0].predictor.image: reason"

    def text(self, source: Path) -> str:
        header = f"# Converted by `stack import` from {source.name}.\n"
        if self.dropped:
            header += "# Dropped (no counterpart here):\n" + "".join(f"#   {d}\n" for d in self.dropped)
        return header + yaml.safe_dump(self.spec, sort_keys=False, default_flow_style=False)


def convert(text: str, project: str) -> Imported:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StackError(f"the Cortex file is not valid YAML: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
        raise StackError("a Cortex file is a list of APIs (each a mapping with name, predictor, ...)")
    result = Imported({"project": project, "apis": []})
    splitters: list[dict[str, Any]] = []
    for index, api in enumerate(data):
        if api.get("kind") == "TrafficSplitter":
            splitters.append(_splitter(api, f"apis[{index}]", result.dropped))
            continue
        converted = _api(api, f"apis[{index}]", result.dropped)
        if converted is not None:
            result.spec["apis"].append(converted)
    if splitters:
        result.spec["splitters"] = splitters
    if not result.spec["apis"]:
        raise StackError("no realtime API to convert: " + "; ".join(result.dropped))
    return result


def _api(api: dict[str, Any], at: str, dropped: list[str]) -> dict[str, Any] | None:
    kind = api.get("kind", "RealtimeAPI")
    name = api.get("name", "?")
    if kind not in ("RealtimeAPI", "SyncAPI", "BatchAPI"):
        dropped.append(f"{at} ({name}): a {kind} has no counterpart here; not converted")
        return None
    predictor = dict(api.get("predictor") or {})
    out: dict[str, Any] = {"name": name}
    if kind == "BatchAPI":
        out["kind"] = "BatchAPI"  # jobs on workers (stack.control.batch): Cortex's endpoints and statuses
    elif "kind" in api:
        dropped.append(f"{at}.kind: {DROPPED['kind']}")
    out["predictor"] = pred = {k: predictor[k] for k in SAME["predictor"] if k in predictor}
    if isinstance(predictor.get("python_path"), str):
        pred["python_path"] = [predictor["python_path"]]
    if predictor.get("server_side_batching"):
        pred["batching"] = dict(predictor["server_side_batching"])
    for models_key in ("multi_model_reloading", "models"):
        if isinstance(predictor.get(models_key), dict):
            models = dict(predictor[models_key])
            if models.pop("signature_key", None) is not None:
                reason = DROPPED[f"predictor.{models_key}.signature_key"]
                dropped.append(f"{at}.predictor.{models_key}.signature_key: {reason}")
            if isinstance(models.get("paths"), list):
                models["paths"] = [{k: v for k, v in p.items() if k in ("name", "path")} for p in models["paths"]]
            pred[models_key] = models
    for key in ("image", "tensorflow_serving_image", "log_level", "shm_size"):
        if key in predictor:
            dropped.append(f"{at}.predictor.{key}: {DROPPED[f'predictor.{key}']}")
    autoscaling = dict(api.get("autoscaling") or {})
    if "max_replica_concurrency" in autoscaling:
        pred["max_concurrency"] = autoscaling.pop("max_replica_concurrency")
    compute = {k: v for k, v in (api.get("compute") or {}).items() if k in SAME["compute"]}
    if "inf" in (api.get("compute") or {}):
        dropped.append(f"{at}.compute.inf: {DROPPED['compute.inf']}")
    if compute:
        out["compute"] = compute
    scaling = {k: v for k, v in autoscaling.items() if k in SAME["autoscaling"]}
    for key in sorted(set(autoscaling) - set(SAME["autoscaling"])):
        dropped.append(f"{at}.autoscaling.{key}: no counterpart here")
    if scaling:
        out["autoscaling"] = scaling
    if api.get("update_strategy"):
        out["update"] = dict(api["update_strategy"])
    networking = dict(api.get("networking") or {})
    for key in ("api_gateway", "local_port"):
        if key in networking:
            dropped.append(f"{at}.networking.{key}: {DROPPED[f'networking.{key}']}")
    if networking.get("endpoint"):
        endpoint = str(networking["endpoint"])
        out["networking"] = {"endpoint": endpoint if endpoint.startswith("/") else f"/{endpoint}"}
    if api.get("monitoring"):
        out["monitoring"] = dict(api["monitoring"])
    return out


def _splitter(api: dict[str, Any], at: str, dropped: list[str]) -> dict[str, Any]:
    """Cortex's TrafficSplitter is a `splitters:` entry: the same name, endpoint and weighted APIs."""
    out: dict[str, Any] = {"name": api.get("name", "?")}
    out["apis"] = [
        {"name": member.get("name"), "weight": member.get("weight")}
        for member in api.get("apis") or []
        if isinstance(member, dict)
    ]
    networking = dict(api.get("networking") or {})
    if "api_gateway" in networking:
        dropped.append(f"{at}.networking.api_gateway: {DROPPED['networking.api_gateway']}")
    if networking.get("endpoint"):
        endpoint = str(networking["endpoint"])
        out["networking"] = {"endpoint": endpoint if endpoint.startswith("/") else f"/{endpoint}"}
    return out


def import_file(source: Path, output: Path, project: str | None, force: bool) -> Imported:
    if not source.is_file():
        raise StackError(f"{source}: file not found")
    if output.exists() and not force:
        raise StackError(f"{output} exists; pass -o OTHER.yaml, or --force to overwrite it")
    name = project or re.sub(r"[^a-z0-9-]+", "-", source.resolve().parent.name.lower()).strip("-") or "project"
    imported = convert(source.read_text(), name)
    output.write_text(imported.text(source))
    return imported
