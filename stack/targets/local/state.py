"""Where the local target keeps its state: `.stack/` beside stack.yaml.

The supervisor writes `.stack/local/state.json` (its pid and control port);
any shell can read it to find the running stack, ask it for status, or stop it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LocalPaths:
    root: Path  # the directory of stack.yaml
    spec_name: str = "stack.yaml"  # another spec file of the same directory is another stack

    @property
    def base(self) -> Path:
        if self.spec_name == "stack.yaml":
            return self.root / ".stack"
        return self.root / ".stack" / f"spec-{Path(self.spec_name).stem}"

    @property
    def state_file(self) -> Path:
        return self.base / "local" / "state.json"

    @property
    def traefik_dir(self) -> Path:
        return self.base / "local" / "traefik"

    @property
    def prometheus_dir(self) -> Path:
        return self.base / "local" / "prometheus"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def replica_log(self, replica_id: str) -> Path:
        return self.logs / f"{replica_id}.log"


def read_state(paths: LocalPaths) -> dict[str, Any] | None:
    try:
        state = json.loads(paths.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if pid_alive(int(state.get("pid", 0))) else None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
