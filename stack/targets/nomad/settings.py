"""How the Nomad target's controller (the stack's autoscaler job) is started: the cluster it talks to, and
where it serves the activator for APIs scaled to zero."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NomadControlSettings:
    nomad_addr: str = "http://127.0.0.1:4646"  # with NOMAD_TOKEN and NOMAD_NAMESPACE from the environment
    activator_port: int | None = None  # the planned job passes it when an API may scale to zero
