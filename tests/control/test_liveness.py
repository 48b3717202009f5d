"""The controller's liveness probes (stack.control.liveness): what their answers decide, against a real aiohttp
server playing replicas that answer, say they are stuck or unhealthy, or stay silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from stack.control.liveness import MARGIN, Decision, Health, Liveness, Probed, judge
from stack.targets.compose.desired import read_events, record_event

SERVING = Probed("api", "api-1", "http://127.0.0.1:1", serving=True, timeout=10.0)


def test_judge_replaces_what_is_stuck_or_unhealthy_and_leaves_a_starting_replica_alone() -> None:
    now = 1000.0
    assert judge(SERVING, Health(answered=now, status="alive", ready=True), now) is None
    stuck = judge(SERVING, Health(answered=now, status="stuck", reason="stuck: predict running for 45s"), now)
    assert stuck == Decision("stuck: predict running for 45s", kill=True)
    unhealthy = judge(SERVING, Health(answered=now, status="unhealthy", reason="unhealthy: check_health() ..."), now)
    assert unhealthy == Decision("unhealthy: check_health() ...", kill=False)  # drained, not killed
    # Silent: a few missed probes take it out of the routes (suspect); replaced only past its timeout.
    quiet = Health(answered=now - 10.0 - MARGIN + 0.5, misses=3)
    assert quiet.suspect and judge(SERVING, quiet, now) is None
    silent = judge(SERVING, Health(answered=now - 10.0 - MARGIN, misses=6), now)
    assert silent is not None and silent.kill and silent.reason.startswith("stuck: not answering its health check")
    # A replica still starting (loading its model) is never judged, however long it takes.
    starting = Probed("api", "api-2", "http://127.0.0.1:1", serving=False)
    assert judge(starting, Health(answered=0.0, misses=100), now) is None
    assert judge(starting, Health(answered=now, status="stuck"), now) is None


def test_the_probes_read_each_answer_and_replace_once(tmp_path: Path) -> None:
    answers = {"alive": (200, {"status": "alive", "ready": True, "keys": "7-42"})}
    answers["loading"] = (200, {"status": "alive", "ready": False, "keys": "7-42"})
    answers["stuck"] = (503, {"status": "stuck", "reason": "stuck: predict running for 9s (stuck_after 8s)"})
    answers["sick"] = (503, {"status": "unhealthy", "reason": "unhealthy: check_health() returned False"})
    release = asyncio.Event()

    async def healthz(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "frozen":
            await release.wait()  # never answers while the test runs
        status, body = answers[name]
        return web.json_response(body, status=status)

    replaced: list[tuple[str, Decision]] = []

    async def scenario() -> dict[str, Health]:
        app = web.Application()
        app.router.add_get("/{name}/healthz", healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        targets = [
            Probed("api", name, f"http://127.0.0.1:{port}/{name}", serving=name != "loading", timeout=0.5)
            for name in ("alive", "loading", "stuck", "sick", "frozen")
        ]

        async def replace(replica: Probed, decision: Decision) -> None:
            replaced.append((replica.replica, decision))

        try:
            async with aiohttp.ClientSession() as session:
                liveness = Liveness(lambda: targets, replace, session)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while not any(name == "frozen" for name, _ in replaced) and loop.time() < deadline:
                    await liveness.tick(session)
                    await asyncio.sleep(0.05)
                for _ in range(3):  # more ticks: nobody is replaced twice
                    await liveness.tick(session)
                return {t.replica: liveness.of(t.key) for t in targets if liveness.of(t.key) is not None}
        finally:
            release.set()
            await runner.cleanup()

    health = asyncio.run(scenario())
    by_name = dict(replaced)
    assert sorted(name for name, _ in replaced) == ["frozen", "sick", "stuck"]
    assert by_name["stuck"] == Decision("stuck: predict running for 9s (stuck_after 8s)", kill=True)
    assert by_name["sick"] == Decision("unhealthy: check_health() returned False", kill=False)
    assert by_name["frozen"].kill and "not answering its health check" in by_name["frozen"].reason
    assert health["alive"].ready and health["alive"].keys == "7-42" and health["alive"].word == "healthy"
    assert not health["loading"].ready and health["loading"].word == "starting"
    assert health["frozen"].suspect and health["frozen"].word == "not answering"


def test_events_are_appended_whole_trimmed_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    for i in range(3):
        record_event(tmp_path, "a", f"replica a-{i} replaced: stuck", at=1_000_000.0 + i)
    record_event(tmp_path, "b", "rolled back from version x to y: replica b-1 failed to start")
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"at": 1, "api": "a", "mess')  # a writer that died mid-line
    expected = [f"replica a-{i} replaced: stuck" for i in range(3)]
    assert [e.split(" ", 1)[1] for e in read_events(tmp_path, "a")] == expected
    assert len(read_events(tmp_path, "a", newest=2)) == 2
    assert read_events(tmp_path, "b")[0].endswith("rolled back from version x to y: replica b-1 failed to start")
    for i in range(1200):
        record_event(tmp_path, "c", f"event {i}")
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) <= 1000 and read_events(tmp_path, "c", newest=1)[0].endswith("event 1199")
