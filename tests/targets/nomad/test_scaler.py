"""Contract test of the Nomad scaler: no Nomad server can run here.

The fake below answers Nomad's job scale endpoint as Nomad's OpenAPI schema
describes it, and rejects any request body the schema does not allow
(unknown fields included). It also refuses the first change with the 400
Nomad gives during an active deployment. The autoscaler loop drives it
through python-nomad, exactly as `stack autoscale --target nomad` does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nomad
from aiohttp import web

from nomad_schema import schema_errors
from stack.control.autoscale.config import ApiScaling, AutoscalerConfig
from stack.control.autoscale.loop import Autoscaler
from stack.control.autoscale.policy import Bounds
from stack.control.autoscale.signal import Signal
from stack.targets.nomad.scaler import NomadScaler

BOUNDS = Bounds(min_replicas=1, max_replicas=10, target=1.0, window=10, upscale_stabilization=0)


class FakeNomad:
    def __init__(self, count: int, healthy: int, refuse_first: int) -> None:
        self.count, self.healthy = count, healthy
        self.refuse = refuse_first
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/job/{job}/scale", self.status)
        app.router.add_post("/v1/job/{job}/scale", self.scale)
        return app

    async def status(self, request: web.Request) -> web.Response:
        if request.match_info["job"] != "shop-slow":
            return web.Response(status=404, text="job not found")
        group = {"Desired": self.count, "Running": self.count, "Placed": self.count, "Healthy": self.healthy}
        body = {"JobID": "shop-slow", "JobStopped": False, "Namespace": "default", "TaskGroups": {"predictor": group}}
        self.problems += schema_errors(body, "JobScaleStatusResponse")
        return web.json_response(body)

    async def scale(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.problems += schema_errors(body, "ScalingRequest")
        if body.get("Target") != {"Group": "predictor"}:
            return web.Response(status=400, text="missing or unknown task group")
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=400, text="job scaling blocked due to active deployment")
        self.count = body["Count"]
        response = {"EvalID": "e1", "EvalCreateIndex": 10, "JobModifyIndex": 10, "Warnings": ""}
        self.problems += schema_errors(response, "JobRegisterResponse")
        return web.json_response(response)


class Busy:
    """Eight requests in flight, steadily."""

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        return Signal(8.0, 8.0)


async def _drive(fake: FakeNomad, ticks: int) -> Autoscaler:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        client = nomad.Nomad(host="127.0.0.1", port=port, timeout=5)
        config = AutoscalerConfig("shop", 1.0, [ApiScaling("slow", BOUNDS)])
        now = [1000.0]
        autoscaler = Autoscaler(config, NomadScaler("shop", client), Busy(), clock=lambda: now[0])
        for _ in range(ticks):
            await autoscaler.tick()
            now[0] += 1.0
        return autoscaler
    finally:
        await runner.cleanup()


def test_scales_the_predictor_group_through_the_scale_endpoint() -> None:
    fake = FakeNomad(count=2, healthy=2, refuse_first=0)
    autoscaler = asyncio.run(_drive(fake, ticks=1))
    assert fake.problems == []
    assert fake.requests and fake.requests[0]["Count"] == 4  # panic: double at most per tick
    assert fake.requests[0]["Target"] == {"Group": "predictor"}
    assert "panic" in fake.requests[0]["Message"]
    assert fake.count == 4
    assert autoscaler.status()["slow"].changes[0].applied is True


def test_a_400_during_a_deployment_is_retried_next_tick() -> None:
    fake = FakeNomad(count=2, healthy=2, refuse_first=1)
    autoscaler = asyncio.run(_drive(fake, ticks=2))
    assert fake.problems == []
    assert [r["Count"] for r in fake.requests] == [4, 4]  # refused, then the same decision again
    assert fake.count == 4
    [change] = autoscaler.status()["slow"].changes  # one change, applied at the second attempt
    assert change.applied is True and change.attempts == 2 and (change.current, change.desired) == (2, 4)
    # A refusal during a deployment is not a failure: no back-off, no error counted.
    assert autoscaler.registry.get_sample_value("stack_autoscaler_scale_errors_total", {"api": "slow"}) is None


def test_starting_allocations_are_credited() -> None:
    # Nomad counts 4 wanted but only 2 healthy: the other 2 are starting, so no further step up.
    fake = FakeNomad(count=4, healthy=2, refuse_first=0)
    autoscaler = asyncio.run(_drive(fake, ticks=3))
    assert fake.requests == [] and fake.count == 4
    assert "still starting" in autoscaler.status()["slow"].last
