"""The field types every part of the `stack.yaml` schema shares, parsed on the way in (durations to float
seconds, memory to int bytes, CPU to float cores), the strict base model, and the networking block that
APIs and splitters both have."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from stack.spec.units import parse_cpu, parse_duration, parse_fraction, parse_gpu, parse_memory

Duration = Annotated[float, BeforeValidator(parse_duration)]
Memory = Annotated[int, BeforeValidator(parse_memory)]
Cpu = Annotated[float, BeforeValidator(parse_cpu)]
Fraction = Annotated[float, BeforeValidator(parse_fraction)]
GpuShare = Annotated[float, BeforeValidator(parse_gpu)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$|^[a-z]$")]
NAME_RULE = "lowercase letters, digits and '-', starting with a letter (it names containers, jobs and metrics)"


class Strict(BaseModel):
    # Unknown keys are errors: a misspelt field silently ignored is the worst kind of bug.
    # strict: `threads_per_process: "2"` is an error, not a silent conversion.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


AFFINITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Affinity(Strict):
    """`networking.affinity`: requests carrying the same value (a model's name) go to the same replicas.

    Exactly one of `query` (a query parameter: `{query: model}` for `?model=iris`) or `header` (`{header:
    X-Model}`). A request without the value is balanced as usual (`load_balancer`).
    """

    # The query parameter that carries the value (?model=iris: query: model).
    query: str | None = None
    # ... or the header that carries it (X-Model: iris: header: X-Model).
    header: str | None = None
    # In-flight requests of one value that one replica takes before the value spreads to one more replica
    # (a hot model never piles up on one replica while others idle); default: the replica's
    # target_replica_concurrency (its processes x threads).
    spread_at: Annotated[float, Field(gt=0)] | None = None

    @field_validator("query", "header")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not AFFINITY_NAME.fullmatch(value):
            raise ValueError(
                f"expected a query parameter or header name (letters, digits, '_', '.', '-'), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Affinity:
        if (self.query is None) == (self.header is None):
            raise ValueError(
                "give exactly one of query: NAME (like query: model) or header: NAME (like header: X-Model)"
            )
        return self

    @property
    def source(self) -> tuple[str, str]:
        """("query", "model") or ("header", "X-Model")."""
        return ("query", self.query) if self.query is not None else ("header", self.header or "")


class Networking(Strict):
    endpoint: str | None = None  # default: /<api name>
    # How the gateway picks a replica: p2c (two at random, the one with fewer requests in flight: a
    # long request does not hold up short ones behind it), wrr (round robin), leasttime (the fastest
    # to answer, weighed by requests in flight).
    load_balancer: Literal["p2c", "wrr", "leasttime"] = "p2c"
    # An API's model affinity (stack.control.affinity): requests with the same value of a query parameter
    # or header go to the replicas that hold it; null: none. Not for splitters.
    affinity: Affinity | None = None

    @field_validator("endpoint")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"/[A-Za-z0-9._~/-]*", value):
            raise ValueError(f"expected a URL path starting with '/', like /iris, got {value!r}")
        if value is not None and len(value) > 1:
            value = value.rstrip("/")
        return value
