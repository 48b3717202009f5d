"""The `splitters:` part of the `stack.yaml` schema: one endpoint weighted across APIs (Cortex's
TrafficSplitter), shadow traffic, and canaries (Flagger's analysis)."""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from stack.spec.base import Duration, Fraction, Name, Networking, NonNegativeInt, Strict


class SplitApi(Strict):
    # One of the stack's APIs.
    name: str
    weight: Annotated[int, Field(ge=0)]  # a share of the splitter's requests, relative to the others


class Mirror(Strict):
    api: str  # gets copies of requests; its answers are discarded
    # The share of requests copied to it.
    percent: Annotated[int, Field(ge=0, le=100)] = 100


class Canary(Strict):
    """Progressive delivery (Flagger's canary analysis): the canary API's share of the splitter
    rises step by step while its own metrics stay within bounds, and drops to 0 at the first breach."""

    api: str  # the canary: one of the splitter's APIs; the others are the baseline
    # The canary's share of the splitter, step by step (percent), rising while it is healthy.
    steps: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1)] = Field(
        default_factory=lambda: [5, 25, 50, 100]
    )
    interval: Duration = 60.0  # time at each step; its metrics decide the next one
    max_error_rate: Fraction = 0.01  # the canary's 5xx share over an interval, above which it is rolled back
    # canary p99 / baseline p99 over the interval; null: latency is not checked.
    max_latency_ratio: Annotated[float, Field(gt=0)] | None = 1.5
    # p99s below this count as this: a few milliseconds of scheduling jitter on a fast API is not a regression.
    latency_floor: Duration = 0.05
    min_requests: NonNegativeInt = 50  # per interval, or the step is held (not judged on too little data)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must rise, like [5, 25, 50, 100], got {steps}")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 1:
            raise ValueError("interval must be at least 1s")
        return value


class Splitter(Strict):
    """One endpoint, weighted across APIs (Cortex's TrafficSplitter), with optional shadow traffic."""

    # Names its endpoint (/NAME) and its routes.
    name: Name
    # The APIs it splits across, with their weights.
    apis: Annotated[list[SplitApi], Field(min_length=1)]
    # Shadow traffic: copies of requests to another API, whose answers are dropped; null: none.
    mirror: Mirror | None = None
    sticky: bool = False  # a cookie keeps a client on the API it first got
    # Where clients reach it (default /NAME), and how the gateway picks a replica.
    networking: Networking = Networking()
    canary: Canary | None = None  # automated rollout of one of the APIs

    @property
    def endpoint(self) -> str:
        return self.networking.endpoint or f"/{self.name}"

    @field_validator("networking")
    @classmethod
    def _no_affinity(cls, networking: Networking) -> Networking:
        if networking.affinity is not None:
            raise ValueError("affinity applies to an API: set networking.affinity on the APIs the splitter lists")
        return networking

    @model_validator(mode="after")
    def _weights(self) -> Splitter:
        if not any(a.weight > 0 for a in self.apis):
            raise ValueError("at least one API needs a weight above 0")
        names = [a.name for a in self.apis]
        if len(set(names)) != len(names):
            raise ValueError(f"an API is listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        if self.canary is not None and len(self.apis) < 2:
            raise ValueError("a canary needs a baseline: list another API in the splitter beside it")
        return self
