"""The host's GPUs, and every GPU API's replica slots placed on them at plan time.

A replica asks for `compute.gpu` — whole GPUs, or a fraction of one below 1 —
and optionally `compute.gpu_mem`. Every API's slots, up to `max_replicas`,
are placed before anything runs: a whole-GPU slot takes that many GPUs of its
own, a fractional slot shares one GPU with others, and on every GPU the shares
add up to at most 1 and the memory to at most its size. What does not fit is
a plan error naming the APIs, the GPUs and what fits, never a GPU shared by
accident. Fractional slots of one API are spread over the GPUs (the least
used first), so the first replicas of an API land on different GPUs.

The GPUs come from `nvidia-smi` (index, UUID, name, memory) or from
`--gpus N [--gpu-mem 80Gi]`; without either, the plan assumes as many GPUs
as the slots need and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from stack.atomic import write_json_atomic
from stack.errors import PlanError
from stack.spec import Api
from stack.spec.units import format_memory

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str = ""  # GPU-..., where nvidia-smi gave it
    name: str = ""
    memory: int | None = None  # bytes; None: unknown

    @property
    def device_id(self) -> str:
        """How Docker (`device_ids`) and CUDA (`CUDA_VISIBLE_DEVICES`) name it: its UUID where known."""
        return self.uuid or str(self.index)

    def describe(self) -> str:
        parts = [f"GPU {self.index}"]
        details = [d for d in (self.name, format_memory(self.memory) if self.memory else "") if d]
        return " ".join(parts) + (f" ({', '.join(details)})" if details else "")


def parse_query(text: str) -> list[Gpu]:
    """nvidia-smi's `--query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            raise ValueError(f"unexpected nvidia-smi line {line!r}")
        index, uuid, memory = fields[0], fields[1], fields[-1]
        name = ", ".join(fields[2:-1])
        size = int(float(memory)) * 1024**2 if memory.replace(".", "").isdigit() else None  # MiB; "[N/A]" too
        gpus.append(Gpu(int(index), uuid, name, size))
    return sorted(gpus, key=lambda g: g.index)


def detect_gpus() -> list[Gpu] | None:
    """This host's GPUs per nvidia-smi; None when it cannot tell (no nvidia-smi, no driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return parse_query(out.stdout)
    except ValueError:
        return None


def host_gpus(count: int | None = None, memory: int | None = None) -> list[Gpu] | None:
    """`--gpus N [--gpu-mem SIZE]` when given, else nvidia-smi's answer."""
    if count is not None:
        return [Gpu(i, memory=memory) for i in range(count)]
    found = detect_gpus()
    if found is not None and memory is not None:
        return [Gpu(g.index, g.uuid, g.name, memory) for g in found]
    return found


@dataclass(frozen=True)
class Slot:
    """One replica slot of a GPU API, pinned to its GPUs."""

    api: str
    number: int  # 0 .. max_replicas - 1: the autoscaler fills them from 0
    gpus: tuple[int, ...]  # indexes into the placement's GPUs
    share: Fraction  # of each of its GPUs
    memory: int | None  # on each of its GPUs

    @property
    def name(self) -> str:
        return f"{self.api}#{self.number}"


@dataclass(frozen=True)
class Placement:
    gpus: tuple[Gpu, ...]
    slots: tuple[Slot, ...]
    assumed: bool = False  # no GPU information: the GPUs are the ones the slots needed
    warnings: tuple[str, ...] = field(default=())

    def of(self, api: str) -> list[Slot]:
        return [s for s in self.slots if s.api == api]

    def device_ids(self, slot: Slot) -> list[str]:
        return [self.gpus[i].device_id for i in slot.gpus]

    def slot_devices(self) -> dict[str, list[list[str]]]:
        """API -> each slot's device ids, in slot order (what the targets pin replicas to)."""
        result: dict[str, list[list[str]]] = {}
        for slot in self.slots:
            result.setdefault(slot.api, []).append(self.device_ids(slot))
        return result

    def on(self, gpu: int) -> list[Slot]:
        return [s for s in self.slots if gpu in s.gpus]

    def lines(self) -> list[str]:
        """GPU -> slots, as `stack plan` and `stack status` print it."""
        out = []
        for gpu in self.gpus:
            slots = self.on(gpu.index)
            share = sum((s.share for s in slots), Fraction(0))
            memory = sum(s.memory or 0 for s in slots)
            used = f"{_share(share)} of 1"
            if gpu.memory:
                used += f", {format_memory(memory) if memory else '0'} of {format_memory(gpu.memory)}"
            names = ", ".join(f"{s.name} ({_share(s.share)})" for s in slots) or "free"
            out.append(f"{gpu.describe()}: {names}  [{used}]")
        return out


def placement_to_dict(placement: Placement) -> dict[str, Any]:
    return {
        "gpus": [asdict(g) for g in placement.gpus],
        "slots": [{**asdict(s), "share": float(s.share), "gpus": list(s.gpus)} for s in placement.slots],
        "assumed": placement.assumed,
    }


def placement_from_dict(data: Any) -> Placement:
    """What `write_placement` wrote; an unreadable document is an empty placement."""
    try:
        gpus = tuple(Gpu(**g) for g in data["gpus"])
        slots = tuple(
            Slot(
                s["api"], int(s["number"]), tuple(s["gpus"]), Fraction(s["share"]).limit_denominator(1000), s["memory"]
            )
            for s in data["slots"]
        )
        return Placement(gpus, slots, bool(data.get("assumed")))
    except (KeyError, TypeError, ValueError):
        return Placement((), ())


def write_placement(path: Path, placement: Placement) -> None:
    """Where `stack up` placed the slots, for `stack status` (and the local supervisor)."""
    write_json_atomic(path, placement_to_dict(placement))


def read_placement(path: Path) -> Placement:
    try:
        return placement_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return Placement((), ())


def place(apis: list[Api], gpus: list[Gpu] | None) -> Placement:
    """Every GPU API's slots on these GPUs (None: unknown, assume what the slots need)."""
    wanted = [api for api in apis if api.compute.gpu]
    if not wanted:
        return Placement(tuple(gpus or ()), ())
    assumed = gpus is None
    pool = list(gpus or [])
    for api in wanted:
        _check_memory(api, pool)
    share = {g.index: Fraction(0) for g in pool}
    memory = {g.index: 0 for g in pool}
    slots: list[Slot] = []
    missing: dict[str, int] = {}

    def grow() -> int:
        index = len(pool)
        pool.append(Gpu(index))
        share[index], memory[index] = Fraction(0), 0
        return index

    def fits(index: int, need: Fraction, mem: int | None) -> bool:
        gpu = pool[index]
        room = gpu.memory is None or mem is None or memory[index] + mem <= gpu.memory
        return share[index] + need <= 1 and room

    # Whole-GPU APIs first (they need GPUs of their own), then the larger shares: first fit decreasing.
    order = sorted(wanted, key=lambda a: (-(a.compute.gpu >= 1), -a.compute.gpu, -(a.compute.gpu_mem or 0), a.name))
    for api in order:
        whole = api.compute.gpu >= 1
        need = Fraction(1) if whole else Fraction(api.compute.gpu).limit_denominator(1000)
        count = int(api.compute.gpu) if whole else 1
        mem = api.compute.gpu_mem
        for number in range(api.autoscaling.max_replicas):
            free = [g.index for g in pool if fits(g.index, need, mem)]
            if not whole:  # spread: the least used GPU that fits
                free.sort(key=lambda i: (share[i], memory[i], i))
            while assumed and len(free) < count:
                free.append(grow())
            if len(free) < count:
                missing[api.name] = missing.get(api.name, 0) + 1
                continue
            chosen = tuple(sorted(free[:count]))
            for index in chosen:
                share[index] += need
                memory[index] += mem or 0
            slots.append(Slot(api.name, number, chosen, need, mem))
    placement = Placement(tuple(pool), tuple(sorted(slots, key=lambda s: (s.api, s.number))), assumed)
    if missing:
        raise PlanError(_overcommit(wanted, placement, missing))
    if assumed:
        note = (
            f"no GPU information (no nvidia-smi, no --gpus): the plan assumes {len(pool)} GPU(s), enough for "
            "every slot; pass --gpus N [--gpu-mem SIZE] to plan for a GPU host from another machine"
        )
        return Placement(placement.gpus, placement.slots, True, (note,))
    unchecked = [a for a in wanted if a.compute.gpu_mem is not None]
    if unchecked and pool and all(g.memory is None for g in pool):
        asked = ", ".join(f"{a.name} {format_memory(a.compute.gpu_mem or 0)}" for a in unchecked)
        note = (
            f"GPU memory not checked: the GPUs' memory is unknown (--gpus without --gpu-mem), so compute.gpu_mem "
            f"({asked}) was taken as it is; pass --gpu-mem SIZE (e.g. 80Gi) to check it"
        )
        return Placement(placement.gpus, placement.slots, placement.assumed, (*placement.warnings, note))
    return placement


def _check_memory(api: Api, gpus: list[Gpu]) -> None:
    mem = api.compute.gpu_mem
    sizes = [g for g in gpus if g.memory is not None]
    if mem is None or not sizes:
        return
    largest = max(sizes, key=lambda g: g.memory or 0)
    if mem > (largest.memory or 0):
        raise PlanError(
            f"API {api.name}: compute.gpu_mem {format_memory(mem)} is more than any GPU of this host has "
            f"(the largest: {largest.describe()}); lower compute.gpu_mem"
        )


def _overcommit(apis: list[Api], placement: Placement, missing: dict[str, int]) -> str:
    asked = "; ".join(
        f"{a.name}: {a.autoscaling.max_replicas} slot(s) of {_gpu(a.compute.gpu)}"
        + (f" and {format_memory(a.compute.gpu_mem)}" if a.compute.gpu_mem else "")
        + (f" ({len(placement.of(a.name))} fit)" if a.name in missing else "")
        for a in apis
    )
    short = ", ".join(f"{api} ({count} slot(s) left over)" for api, count in sorted(missing.items()))
    gpus = "\n".join(f"  {line}" for line in placement.lines()) or "  (none)"
    return (
        f"the GPUs cannot hold every replica slot: {short} do not fit.\n"
        f"Asked for: {asked}.\nWhat fits, GPU by GPU:\n{gpus}\n"
        "Lower autoscaling.max_replicas, compute.gpu or compute.gpu_mem of those APIs, or plan for more GPUs."
    )


def _gpu(value: float) -> str:
    return f"{value:g} GPU" + ("s" if value > 1 else "")


def _share(value: Fraction) -> str:
    return f"{float(value):.4g}"
