"""How the local target's controller (its supervisor) is started: with the spec file it supervises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalSettings:
    spec_file: Path  # the supervisor's stack.yaml: it loads it, and again on each `stack up`
