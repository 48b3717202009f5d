"""`stack init NAME`: a small project that works as soon as it is created."""

from __future__ import annotations

import re
from pathlib import Path

from stack.errors import StackError
from stack.plan.templates import template_environment
from stack.spec.models import NAME_RULE

FILES = ("stack.yaml", "predictor.py", "requirements.txt", "sample.json")


def scaffold(name: str, target: Path) -> list[Path]:
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}[a-z0-9]|[a-z]", name):
        raise StackError(f"{name!r} is not a valid project name: use {NAME_RULE}")
    existing = [target / f for f in FILES if (target / f).exists()]
    if existing:
        raise StackError(f"{existing[0]} already exists; choose another directory or remove it (nothing was written)")
    env = template_environment()
    target.mkdir(parents=True, exist_ok=True)
    created = []
    for filename in FILES:
        path = target / filename
        path.write_text(env.get_template(f"init/{filename}.j2").render(name=name, api="predict"))
        created.append(path)
    return created
