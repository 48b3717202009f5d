"""Day 2 on Nomad, rendered and checked against Nomad's API schema (no Nomad can run here): a liveness check
that restarts a stuck task, keys that change without a restart, a progress deadline that reverts a rollout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common import EXAMPLES

from nomad_schema import schema_errors
from stack.spec import load_spec
from stack.targets.nomad.plan import plan as plan_nomad


def _job(tmp_path: Path, predictor: str = "", update: str = "", gateway: str = "") -> dict:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack", "stack.yaml"))
    (root / "stack.yaml").write_text(
        f"project: day2\n{gateway}apis:\n  - name: echo\n    predictor: {{path: predictor.py{predictor}}}\n{update}"
    )
    plan = plan_nomad(load_spec(root))
    document = json.loads(plan.files["day2-echo.json"])
    assert schema_errors(document) == []
    return dict(document["Job"])


def test_a_stuck_replica_fails_its_liveness_check_and_nomad_restarts_it(tmp_path: Path) -> None:
    job = _job(tmp_path, predictor=", health_check_timeout: 20s, stuck_after: 2m, timeout: 30s")
    group = job["TaskGroups"][0]
    checks = {c["Path"]: c for c in group["Services"][0]["Checks"]}
    assert set(checks) == {"/readyz", "/healthz"}
    alive = checks["/healthz"]
    # /healthz is 503 when stuck or unhealthy, silent when the loop is blocked: health_check_timeout's worth of
    # failures in a row restarts the task.
    interval = alive["Interval"] / 1e9
    assert alive["CheckRestart"]["Limit"] * interval >= 20 and alive["CheckRestart"]["IgnoreWarnings"] is False
    assert "CheckRestart" not in checks["/readyz"] or not checks["/readyz"]["CheckRestart"]  # loading is not stuck
    config = json.loads(group["Tasks"][0]["Env"]["STACK_SERVING_CONFIG"])
    assert (config["stuck_after"], config["health_check_timeout"], config["timeout"]) == (120.0, 20.0, 30.0)


def test_keys_are_rendered_always_and_followed_without_a_restart(tmp_path: Path) -> None:
    for gateway in ("", "gateway: {api_keys: [literal-key-0123456789]}\n"):
        job = _job(tmp_path / str(len(gateway)), gateway=gateway)
        task = job["TaskGroups"][0]["Tasks"][0]
        template = task["Templates"][0]
        assert template["DestPath"] == "secrets/api_keys" and template["ChangeMode"] == "noop"
        assert 'nomadVar "nomad/jobs/day2-echo"' in template["EmbeddedTmpl"]
        assert json.loads(task["Env"]["STACK_SERVING_CONFIG"])["api_keys_file"] == "/secrets/api_keys"
        assert "literal-key" not in json.dumps(job)


def test_a_rollout_that_misses_its_progress_deadline_is_reverted(tmp_path: Path) -> None:
    update = _job(tmp_path / "a", update="    update: {progress_deadline: 15m}\n")["Update"]
    assert update["AutoRevert"] is True
    assert update["ProgressDeadline"] == 15 * 60 * 10**9 and update["HealthyDeadline"] < update["ProgressDeadline"]
    # The default is 10 minutes; a short one is raised to Nomad's minimum (room for min_healthy_time).
    assert _job(tmp_path / "b")["Update"]["ProgressDeadline"] == 600 * 10**9
    short = _job(tmp_path / "c", update="    update: {progress_deadline: 5s}\n")["Update"]
    assert short["ProgressDeadline"] == 60 * 10**9 and short["MinHealthyTime"] < short["HealthyDeadline"]
