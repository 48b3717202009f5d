"""Durations, memory and CPU written the way people write them in YAML.

Durations: `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
Memory: `512Mi`, `2Gi` (powers of 1024), `500M`, `2G` (powers of 1000), or bytes.
CPU: `0.5`, `2`, or millicores `500m`.
GPUs: a fraction of one GPU below 1 (`0.25`), or whole GPUs (`1`, `2`).
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
# Go's form, as Cortex and Kubernetes wrote durations: 1m30s, 1h5m, 2h45m30.5s.
_GO_DURATION = re.compile(r"^\s*((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+)\s*$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?[Bb]?\s*$")
_MEMORY_UNITS = {
    None: 1,
    "K": 1000,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_duration(value: Any) -> float:
    """Seconds as a float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s or 5m, got a boolean")
    if isinstance(value, (int, float)):
        return _non_negative(float(value), "duration")
    match = _DURATION.match(str(value))
    if match:
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if _GO_DURATION.match(str(value)):
        return sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_PART.findall(str(value)))
    raise ValueError(f"expected a duration like 250ms, 10s, 5m, 1h or 1m30s, got {value!r}")


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any) -> float:
    """Requests per second, from `5/s`, `300/m` or `1000/h`."""
    match = _RATE.match(str(value)) if not isinstance(value, bool) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"expected a rate like 5/s, 300/m or 1000/h (above zero), got {value!r}")
    return float(match.group(1)) / _RATE_UNITS[match.group(2)]


def parse_memory(value: Any) -> int:
    """Bytes as an int."""
    if isinstance(value, bool):
        raise ValueError("expected a memory size like 512Mi or 2G, got a boolean")
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"expected a memory size like 512Mi, 2Gi or 500M, got {value!r}")
    if match.group(2) is None:
        # A bare number is ambiguous (Kubernetes reads bytes, people mean Mi): say the unit.
        raise ValueError(
            f"{value!r} has no unit: write it with one of Ki, Mi, Gi, Ti (1024-based) or K, M, G, T "
            f"(1000-based), e.g. {value}Mi"
        )
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def parse_cpu(value: Any) -> float:
    """Cores as a float."""
    if isinstance(value, bool):
        raise ValueError("expected a CPU amount like 0.5 or 500m, got a boolean")
    if isinstance(value, (int, float)):
        return _non_negative(float(value), "CPU amount")
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"expected a CPU amount like 0.5, 2 or 500m, got {value!r}") from None


def parse_fraction(value: Any) -> float:
    """A share as a fraction of 1: `1%`, `0.5%`, or a number from 0 to 1."""
    if isinstance(value, bool):
        raise ValueError("expected a percentage like 1% or 0.5%, got a boolean")
    if isinstance(value, (int, float)):
        if not 0 <= value <= 1:
            raise ValueError(
                f"expected a percentage like 1% (or a fraction from 0 to 1), got {value!r}: write {value}%"
            )
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(value))
    if not match or float(match.group(1)) > 100:
        raise ValueError(f"expected a percentage from 0% to 100% like 1% or 0.5%, got {value!r}")
    return float(match.group(1)) / 100


def parse_gpu(value: Any) -> float:
    """GPUs per replica: a fraction of one GPU (0 < gpu < 1, several replicas share it) or whole GPUs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of GPUs like 1, 2 or a fraction of one like 0.25, got {value!r}")
    if value < 0:
        raise ValueError(f"must not be negative, got {value:g}")
    if value >= 1 and value != int(value):
        raise ValueError(
            f"{value:g} is neither a fraction of one GPU (0 < gpu < 1) nor whole GPUs: "
            f"use {int(value)} or {int(value) + 1}, or a fraction like 0.5 to share one GPU"
        )
    return float(value)


def format_memory(size: int) -> str:
    """The shortest exact way to write a size: 20Gi, 512Mi, 80000M, or bytes."""
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("T", 1000**4), ("G", 1000**3), ("M", 1000**2), ("K", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    if size >= 1024**3:
        return f"{size / 1024**3:.1f}Gi"
    return f"{size / 1024**2:.0f}Mi"


def format_duration(seconds: float) -> str:
    """Go/Compose style: 1m30s, 500ms."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs or not whole else "")
    )


def _non_negative(value: float, what: str) -> float:
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value:g}")
    return value
