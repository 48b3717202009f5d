"""The target interface: every target implements it, the CLI picks one in one place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nomad_schema import schema_errors
from stack.errors import StackError
from stack.spec import load_spec
from stack.targets import open_target
from stack.targets.base import Target, refuse_nomad_autoscaler
from stack.targets.nomad.plan import plan as plan_nomad

SPEC = """\
project: shop
{target}apis:
  - name: a
    predictor: {{path: p.py}}
    autoscaling: {{min_replicas: 1, max_replicas: 5, target_replica_concurrency: 4{engine}}}
  - name: b
    predictor: {{path: p.py}}
    autoscaling: {{min_replicas: 1, max_replicas: 1}}
"""


def project(tmp_path: Path, target: str = "", engine: str = "") -> Path:
    (tmp_path / "p.py").write_text("class Predictor:\n    def predict(self):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text(
        SPEC.format(target=f"target: {target}\n" if target else "", engine=f", engine: {engine}" if engine else "")
    )
    return tmp_path


@pytest.mark.parametrize("kind", ["local", "compose", "nomad"])
def test_every_target_implements_the_protocol(tmp_path: Path, kind: str) -> None:
    target = open_target(load_spec(project(tmp_path)), kind)
    assert isinstance(target, Target) and target.name == kind


def test_the_spec_names_the_default_target_and_a_flag_wins(tmp_path: Path) -> None:
    loaded = load_spec(project(tmp_path, target="nomad"))
    assert open_target(loaded, None).name == "nomad"
    assert open_target(loaded, "local").name == "local"
    assert open_target(load_spec(project(tmp_path)), None).name == "compose"


def test_nomad_autoscaler_engine_renders_a_scaling_policy(tmp_path: Path) -> None:
    plan = plan_nomad(load_spec(project(tmp_path, engine="nomad-autoscaler")))
    job = json.loads(plan.files["shop-a.json"])
    assert schema_errors(job) == []
    policy = job["Job"]["TaskGroups"][0]["Scaling"]["Policy"]
    (check,) = policy["check"]
    (in_flight,) = check["in_flight"]
    assert in_flight["source"] == "prometheus" and in_flight["query"] == 'sum(predictor_requests_in_flight{api="a"})'
    assert in_flight["strategy"] == [{"target-value": [{"target": 4}]}]
    # Nothing left for our autoscaler to decide: its job is not rendered.
    assert "shop-autoscaler.json" not in plan.files
    with pytest.raises(StackError, match="only the Nomad target runs"):
        refuse_nomad_autoscaler(load_spec(tmp_path), "compose")


def test_plan_follows_the_specs_target(tmp_path: Path) -> None:
    root = project(tmp_path, target="nomad")
    result = subprocess.run(
        [sys.executable, "-m", "stack.cli", "plan", str(root)], capture_output=True, text=True, check=True
    )
    assert ".stack/plan/nomad/shop-a.nomad.hcl" in result.stdout


def test_status_takes_the_path_first_or_with_p(tmp_path: Path) -> None:
    root = project(tmp_path, target="local")
    for args in (["status", str(root)], ["status", "-p", str(root)], ["status", str(root), "a"]):
        result = subprocess.run([sys.executable, "-m", "stack.cli", *args], capture_output=True, text=True)
        assert result.returncode == 1 and "no local stack is running" in result.stderr, (args, result.stderr)
    unknown = subprocess.run(
        [sys.executable, "-m", "stack.cli", "status", str(root), "zz"], capture_output=True, text=True
    )
    assert "no API named 'zz'; the spec has: a, b" in unknown.stderr
