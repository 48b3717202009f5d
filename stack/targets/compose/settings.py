"""How the Compose target's controller (the stack's `autoscaler` service) is started: where it writes the
gateway's routes and Prometheus' targets, the stack's network, the replicas' port inside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ComposeSettings:
    control_dir: Path  # routes/ (Traefik's file provider), targets/ (Prometheus' file_sd), upstreams/
    network: str  # the stack's network: where the controller finds each replica's address
    replica_port: int = 8888
