"""`gateway.keys`: the stack's named keys, each with its own limits (enforced by stack.control.tenants)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from serving.keys import KeyEntry
from stack.spec.base import Strict
from stack.spec.units import parse_rate

Rate = Annotated[float, BeforeValidator(parse_rate)]
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class NamedKey(Strict):
    """One caller of the stack (a team, an app, a customer): its key, and what it may do.

    Enforced stack-wide by the stack's controller, whatever the replica count: `rate` and `concurrency`
    over every API it calls; a request over either is answered 429 with `Retry-After`. Usage is counted
    under `name` (never the key).
    """

    # Who it is: the label of its usage and metrics, and what 429s and `stack usage` name.
    name: Annotated[str, Field(pattern=KEY_NAME)]
    # The key itself: `${ENV_VAR}` (keeps it out of stack.yaml), or a literal (warned about).
    key: str | None = None
    # ... or a file holding it (relative to stack.yaml; never copied into an image).
    key_file: str | None = None
    # Requests per second, minute or hour, over all its APIs: 5/s, 300/m; null: unlimited.
    rate: Rate | None = None
    # Requests it may send at once above its rate (a token bucket's size); default: the per-second rate.
    burst: Annotated[int, Field(ge=1)] | None = None
    # Requests in flight at once over the whole stack; null: unlimited.
    concurrency: Annotated[int, Field(ge=1)] | None = None
    # Replicas serve queued requests highest priority first; a full queue refuses the lowest first.
    priority: Literal["high", "normal", "low"] = "normal"
    # The APIs (or splitters) it may call; others answer 403. null: all of them.
    apis: list[str] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> NamedKey:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("give exactly one of key (like key: ${GOLD_KEY}) or key_file (a file holding it)")
        return self

    def entry(self) -> KeyEntry:
        return KeyEntry(
            (self.key or "").encode(),
            self.name,
            self.priority,
            self.rate,
            self.burst,
            self.concurrency,
            tuple(self.apis) if self.apis is not None else None,
        )
