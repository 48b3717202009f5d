"""What `stack up --local` checks before it starts anything: its replicas run in this very Python, so what
stack.yaml asks of them (tracing, ONNX or TensorFlow models, S3 sources) must be installed here. One error
naming the packages and the extra that brings them, instead of a crash loop with a traceback per replica."""

from __future__ import annotations

import importlib.util
import sys

from stack.errors import StackError
from stack.plan.serving import extra_requirements
from stack.spec import LoadedSpec

# package -> (the module a replica imports, the extra of stack-serve that installs it, or None)
PROVIDES = {
    "opentelemetry-sdk": ("opentelemetry.sdk", "tracing"),
    "opentelemetry-exporter-otlp-proto-http": ("opentelemetry.exporter.otlp.proto.http", "tracing"),
    "onnxruntime": ("onnxruntime", "cortex"),
    "onnxruntime-gpu": ("onnxruntime", None),
    "boto3": ("boto3", "cortex"),
    "tensorflow-cpu": ("tensorflow", "tensorflow"),
    "tensorflow": ("tensorflow", None),
    "numpy": ("numpy", None),
}
OPTIONAL = {"nvidia-ml-py"}  # the replicas' GPU metrics: without it they serve, and say so in their log


def check_installed(loaded: LoadedSpec) -> None:
    tracing = loaded.spec.tracing is not None
    missing: dict[str, list[str]] = {}  # package -> the APIs (or "tracing") that need it
    for api in loaded.spec.every_api:
        for package in extra_requirements(api, tracing):
            if package in OPTIONAL:
                continue
            module, _ = PROVIDES.get(package, (package.replace("-", "_"), None))
            if not _importable(module):
                why = "tracing" if package.startswith("opentelemetry") else f"API {api.name}"
                missing.setdefault(package, [])
                if why not in missing[package]:
                    missing[package].append(why)
    if not missing:
        return
    needs = "; ".join(f"{package} (for {', '.join(why)})" for package, why in missing.items())
    extras = sorted({extra for p in missing if (extra := PROVIDES.get(p, ("", None))[1])})
    others = sorted(p for p in missing if PROVIDES.get(p, ("", None))[1] is None)
    fix = []
    if extras:
        fix.append(f"pip install 'stack-serve[{','.join(extras)}]'")
    if others:
        fix.append(f"pip install {' '.join(others)}")
    raise StackError(
        f"the local target runs its replicas in this Python ({_python()}), which lacks what stack.yaml asks "
        f"for: {needs}. Install it: {' and '.join(fix)}; then `stack up --local` again (nothing was started)"
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _python() -> str:
    return sys.executable
