"""The replica's GPUs as Prometheus metrics, read from NVML (nvidia-ml-py's `pynvml`) at scrape time.

    predictor_gpu_utilization_ratio{api,gpu}     the share of the last sample period a kernel ran (0..1)
    predictor_gpu_memory_used_bytes{api,gpu}     the GPU's memory in use, by every process on it
    predictor_gpu_memory_total_bytes{api,gpu}    the GPU's memory
    predictor_gpu_process_memory_bytes{api,gpu}  this replica's own processes' memory on it

`gpu` is the GPU's UUID (the same name inside a container and on the host,
where indexes are renumbered). Only the replica's GPUs are reported: inside a
container NVML sees only those; elsewhere `CUDA_VISIBLE_DEVICES` names them.
Without the library, a driver or a GPU there is no metric at all — never a
crash, never a zero that looks like an idle GPU. A process's own memory is
found by its pid, which NVML reports from the host's pid namespace: inside a
container (another namespace) that series is left out rather than guessed.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

LOGGER = logging.getLogger("serving")


class GpuMetrics:
    """A prometheus_client collector; `available` says whether NVML answered at all."""

    def __init__(self, api: str, nvml: ModuleType | None = None, pids: set[int] | None = None) -> None:
        self.api = api
        self.pids = pids if pids is not None else {os.getpid()}  # whose memory is "this replica's"
        self.nvml = nvml if nvml is not None else _load()
        self.handles: list[tuple[str, Any]] = []
        if self.nvml is not None:
            self.handles = self._handles()

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def _handles(self) -> list[tuple[str, Any]]:
        nvml = self.nvml
        assert nvml is not None
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            found = []
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                found.append((index, _text(nvml.nvmlDeviceGetUUID(handle)), handle))
        except Exception as exc:  # no driver, no GPU: no metrics
            LOGGER.info(f"no GPU metrics: NVML did not answer ({exc})")
            return []
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if visible:
            found = [(i, u, h) for i, u, h in found if u in visible or str(i) in visible]
        return [(uuid or str(index), handle) for index, uuid, handle in found]

    def collect(self) -> Iterator[Metric]:
        if not self.handles:
            return
        nvml = self.nvml
        assert nvml is not None
        labels = ["api", "gpu"]
        utilization = GaugeMetricFamily(
            "predictor_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the GPU.", labels=labels
        )
        used = GaugeMetricFamily(
            "predictor_gpu_memory_used_bytes", "GPU memory in use, by every process.", labels=labels
        )
        total = GaugeMetricFamily("predictor_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        own = GaugeMetricFamily(
            "predictor_gpu_process_memory_bytes", "GPU memory held by this replica's processes.", labels=labels
        )
        for gpu, handle in self.handles:
            with _skip(f"utilization of {gpu}"):
                utilization.add_metric([self.api, gpu], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            with _skip(f"memory of {gpu}"):
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([self.api, gpu], float(info.used))
                total.add_metric([self.api, gpu], float(info.total))
            with _skip(f"processes on {gpu}"):
                mine = [p for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in self.pids]
                if mine:
                    own.add_metric([self.api, gpu], float(sum(p.usedGpuMemory or 0 for p in mine)))
        yield from (utilization, used, total, own)


class _skip:
    """One reading that fails (a GPU that fell off the bus) leaves its series out, the rest stand."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is not None and isinstance(exc, Exception):
            LOGGER.debug(f"GPU metrics: no {self.what} ({exc})")
            return True
        return False


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
