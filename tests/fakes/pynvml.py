"""A stand-in for nvidia-ml-py's `pynvml`, for tests on machines without a GPU (named a fake on purpose).

The GPUs it reports come from $FAKE_NVML (JSON: a list of {"uuid", "total", "used", "util", "procs":
[[pid, bytes], ...]}; "self" as a pid means the calling process); FAKE_NVML=fail makes nvmlInit fail
as it does without a driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


def _gpus() -> list[dict[str, Any]]:
    raw = os.environ.get("FAKE_NVML", "[]")
    if raw == "fail":
        raise NVMLError("NVML Shared Library Not Found")
    return list(json.loads(raw))


def nvmlInit() -> None:
    _gpus()


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetUUID(handle: int) -> bytes:
    return str(_gpus()[handle]["uuid"]).encode()


def nvmlDeviceGetUtilizationRates(handle: int) -> Any:
    return SimpleNamespace(gpu=_gpus()[handle]["util"], memory=0)


def nvmlDeviceGetMemoryInfo(handle: int) -> Any:
    gpu = _gpus()[handle]
    return SimpleNamespace(total=gpu["total"], used=gpu["used"], free=gpu["total"] - gpu["used"])


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[Any]:
    procs = _gpus()[handle].get("procs", [])
    return [SimpleNamespace(pid=os.getpid() if pid == "self" else pid, usedGpuMemory=used) for pid, used in procs]
