"""`stack plan`: golden files, and every rendered file checked by the real tool that reads it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml
from common import ROOT, require_binary

from golden import GOLDEN, example_names, render
from nomad_schema import schema_errors
from stack.targets.nomad.jobs import hcl_to_job

EXAMPLES = example_names()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, str]]]:
    out = {}
    for name in EXAMPLES:
        work = tmp_path_factory.mktemp(name)
        files = render(name, work)
        for relative, content in files.items():
            target = work / name / ".stack/plan" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        out[name] = (work / name, files)
    return out


@pytest.mark.parametrize("name", EXAMPLES)
def test_matches_golden_files(rendered, name: str) -> None:
    _, files = rendered[name]
    golden = {p.relative_to(GOLDEN / name).as_posix(): p.read_text() for p in (GOLDEN / name).rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden), "file set changed: run `python tests/golden.py` and review the diff"
    for relative, content in files.items():
        assert content == golden[relative], f"{name}/{relative} differs: run `python tests/golden.py` and review"


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    """Two processes with different hash seeds (set iteration order differs) render the same bytes."""
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, 'tests'); from golden import render; "
        "print(json.dumps(render(sys.argv[1], Path(sys.argv[2]))))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code, name, str(tmp_path / f"{name}-{seed}")],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for name in ("iris", "gpu")
        for seed in ("0", "4242")
    ]
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3]
    assert json.loads(outputs[0]) and json.loads(outputs[2])


def _has_compose() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(
    not _has_compose(), reason="Docker Compose v2 is not installed (CI installs it with ../shared/tools/docker-offline)"
)
@pytest.mark.parametrize("name", EXAMPLES)
def test_compose_file_passes_docker_compose_config(rendered, name: str) -> None:
    project, _ = rendered[name]
    compose = project / ".stack/plan/compose/compose.yaml"
    result = subprocess.run(["docker", "compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", EXAMPLES)
def test_prometheus_configs_pass_promtool(rendered, name: str, tmp_path: Path) -> None:
    project, files = rendered[name]
    compose_config = project / ".stack/plan/compose/prometheus.yml"
    nomad_job = hcl_to_job(files[f"nomad/{name}-prometheus.nomad.hcl"])
    text = nomad_job["TaskGroups"][0]["Tasks"][0]["Templates"][0]["EmbeddedTmpl"]
    # Debian's promtool 2.42 is built without Nomad discovery, so it cannot read
    # nomad_sd_configs: check that block's fields here, and everything else
    # (relabelling regexes, intervals) with promtool on a copy using a static target.
    parsed = yaml.safe_load(text)
    (nomad_sd,) = parsed["scrape_configs"][0]["nomad_sd_configs"]
    assert set(nomad_sd) <= {"server", "refresh_interval", "namespace", "region", "allow_stale", "tag_separator"}
    assert nomad_sd["refresh_interval"] == parsed["global"]["scrape_interval"]
    parsed["scrape_configs"][0].pop("nomad_sd_configs")
    parsed["scrape_configs"][0]["static_configs"] = [{"targets": ["127.0.0.1:8888"]}]
    embedded = tmp_path / "nomad-prometheus.yml"
    embedded.write_text(yaml.safe_dump(parsed))
    for config in (compose_config, embedded):
        result = subprocess.run(
            [require_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", EXAMPLES)
def test_nomad_jobs_parse_and_validate_against_the_api_schema(rendered, name: str) -> None:
    _, files = rendered[name]
    hcl_files = [f for f in files if f.endswith(".nomad.hcl")]
    apis = [
        f for f in hcl_files if not f.endswith(("-traefik.nomad.hcl", "-prometheus.nomad.hcl", "-autoscaler.nomad.hcl"))
    ]
    assert len(hcl_files) == len(apis) + 3 and apis  # the APIs, Traefik, Prometheus, the autoscaler
    for relative in hcl_files:
        hcl2.loads(files[relative])  # the reference parser accepts it
        request = json.loads(files[relative.removesuffix(".nomad.hcl") + ".json"])
        assert request["Job"] == hcl_to_job(files[relative])
        assert schema_errors(request) == [], relative


def test_schema_rejects_misspelt_fields(rendered) -> None:
    _, files = rendered["echo"]
    request = json.loads(files["nomad/echo-echo.json"])
    request["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["Memory"] = 512
    assert schema_errors(request) == [
        "Job/TaskGroups/0/Tasks/0/Resources: Additional properties are not allowed ('Memory' was unexpected)"
    ]


def test_compose_shape(rendered) -> None:
    _, files = rendered["gpu"]
    compose = yaml.safe_load(files["compose/compose.yaml"])
    assert "version" not in compose
    services = compose["services"]
    version = services["traefik"] and next(s for s in services if s.startswith("classify-")).split("-")[1]
    slots = [f"classify-{version}-gpu0", f"classify-{version}-gpu1"]
    assert set(services) == {"traefik", *slots, "prometheus", "autoscaler", "dashboard"}
    assert [p.split(":")[0] for p in services["dashboard"]["ports"]] == ["127.0.0.1"]  # this machine only
    assert "volumes" not in services["dashboard"]  # no Docker socket
    assert services["traefik"]["ports"] == ["8080:8080"]
    for slot, device in zip(slots, ("0", "1"), strict=True):
        service = services[slot]
        assert "ports" not in service  # replicas are reachable only through Traefik
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [device], "capabilities": ["gpu"]}]
        # The controller probes liveness and readiness over HTTP: Docker starts no process in the replica.
        assert service["healthcheck"] == {"disable": True}
        assert service["volumes"][0] == "./keys:/run/stack-keys:ro"  # the API keys, followed while it runs
        assert service["stop_grace_period"] == "40s"
        assert not any(label.startswith("traefik.") for label in service["labels"])  # routes come from a file
    assert [services[s]["deploy"]["replicas"] for s in slots] == [1, 0]
    assert services[slots[0]]["build"] == {"context": f"../../build/classify-{version}", "dockerfile": "Dockerfile"}
    assert compose["networks"]["stack"]["name"] == "gpu-stack"
    # Only the controller (no published port) holds the engine's socket; the gateway reads a routes file.
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    assert [name for name, s in services.items() if any(v.startswith(socket) for v in s.get("volumes", []))] == [
        "autoscaler"
    ]
    assert "ports" not in services["autoscaler"] and "user" not in services["prometheus"]
    assert "--providers.file.directory=/routes" in services["traefik"]["command"]
    assert not any(c.startswith("--providers.docker") for c in services["traefik"]["command"])


def test_nomad_shape(rendered) -> None:
    _, files = rendered["gpu"]
    job = json.loads(files["nomad/gpu-classify.json"])["Job"]
    group = job["TaskGroups"][0]
    task = group["Tasks"][0]
    service = group["Services"][0]
    assert job["Update"]["AutoRevert"] is True
    assert group["Scaling"] == {"Enabled": True, "Min": 1, "Max": 2}
    assert group["Networks"] == [{"Mode": "bridge", "DynamicPorts": [{"Label": "http", "To": 8888}]}]
    assert service["Provider"] == "nomad" and service["Checks"][0]["Path"] == "/readyz"
    rule = "(Path(`/classify`) || PathPrefix(`/classify/`)) && !PathRegexp(`^/classify/+(metrics|healthz|readyz)/*$`)"
    assert f"traefik.http.routers.gpu-classify.rule={rule}" in service["Tags"]
    assert task["Resources"]["Devices"] == [{"Name": "nvidia/gpu", "Count": 1}]
    assert task["ShutdownDelay"] == 5_000_000_000  # the drain delay, in nanoseconds
    assert json.loads(task["Env"]["STACK_SERVING_CONFIG"])["drain_delay"] == 0  # Nomad drains before SIGTERM


def test_too_few_gpus_is_a_plan_error(tmp_path: Path) -> None:
    from stack.errors import PlanError
    from stack.spec import load_spec
    from stack.targets.compose.plan import plan as plan_compose

    shutil.copytree(ROOT / "examples" / "gpu", tmp_path / "gpu", ignore=shutil.ignore_patterns(".stack"))
    with pytest.raises(PlanError, match=r"the GPUs cannot hold every replica slot: classify \(1 slot\(s\) left over\)"):
        plan_compose(load_spec(tmp_path / "gpu"), tmp_path / "out", host_gpus=1)


def test_cli_plan_writes_files(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "echo", tmp_path / "echo", ignore=shutil.ignore_patterns(".stack"))
    result = subprocess.run(
        [sys.executable, "-m", "stack.cli", "plan", str(tmp_path / "echo")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "echo/.stack/plan/compose/compose.yaml").is_file()
    nomad = subprocess.run(
        [sys.executable, "-m", "stack.cli", "plan", str(tmp_path / "echo"), "--nomad", "-o", str(tmp_path / "jobs")],
        capture_output=True,
        text=True,
    )
    assert nomad.returncode == 0, nomad.stderr
    # The jobs, and the Dockerfiles of the images `stack up --nomad` builds and pushes.
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [
        "autoscaler.Dockerfile",
        "echo-autoscaler.json",
        "echo-autoscaler.nomad.hcl",
        "echo-echo.json",
        "echo-echo.nomad.hcl",
        "echo-prometheus.json",
        "echo-prometheus.nomad.hcl",
        "echo-traefik.json",
        "echo-traefik.nomad.hcl",
        "echo.Dockerfile",
    ]


def test_api_keys_are_a_secret_file_not_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.spec import load_spec
    from stack.targets.compose.plan import plan as plan_compose
    from stack.targets.nomad.plan import plan as plan_nomad

    shutil.copytree(ROOT / "examples" / "echo", tmp_path / "echo", ignore=shutil.ignore_patterns(".stack"))
    spec = tmp_path / "echo" / "stack.yaml"
    spec.write_text(spec.read_text().replace("project: echo", "project: echo\ngateway:\n  api_keys: ${PLAN_KEYS}"))
    monkeypatch.setenv("PLAN_KEYS", "plan-secret-key-1,plan-secret-key-2")
    loaded = load_spec(tmp_path / "echo")
    out = tmp_path / "echo" / ".stack/plan/compose"
    compose_plan = plan_compose(loaded, out)
    compose_plan.write(out)
    compose = yaml.safe_load(compose_plan.files["compose.yaml"])
    assert "plan-secret" not in compose_plan.files["compose.yaml"]
    # A directory mounted read-only (a file mount would keep the old file when `stack up` replaces it).
    replica = next(s for name, s in compose["services"].items() if name.startswith("echo-"))
    assert "./keys:/run/stack-keys:ro" in replica["volumes"] and "secrets" not in compose
    assert "./keys:/run/stack-keys:ro" in compose["services"]["autoscaler"]["volumes"]
    config = json.loads(replica["environment"]["STACK_SERVING_CONFIG"])
    assert config["api_keys"] == [] and config["api_keys_file"] == "/run/stack-keys/api_keys"
    assert (out / "keys/api_keys").read_text() == "plan-secret-key-1\nplan-secret-key-2\n"
    assert (out / "keys/api_keys").stat().st_mode & 0o777 == 0o600
    assert (out / "keys").stat().st_mode & 0o777 == 0o700
    assert (out / "compose.yaml").stat().st_mode & 0o777 == 0o644

    nomad = plan_nomad(loaded)
    assert not any("plan-secret" in text for text in nomad.files.values())
    task = json.loads(nomad.files["echo-echo.json"])["Job"]["TaskGroups"][0]["Tasks"][0]
    assert task["Templates"][0]["DestPath"] == "secrets/api_keys"
    assert 'nomadVar "nomad/jobs/echo-echo"' in task["Templates"][0]["EmbeddedTmpl"]
    assert json.loads(task["Env"]["STACK_SERVING_CONFIG"])["api_keys_file"] == "/secrets/api_keys"
    assert schema_errors(json.loads(nomad.files["echo-echo.json"])) == []

    # Keys removed from stack.yaml: no copy of the old ones stays; the file says the stack is open (replicas
    # that read it open too, without a restart).
    spec.write_text(spec.read_text().replace("gateway:\n  api_keys: ${PLAN_KEYS}\n", ""))
    plan_compose(load_spec(tmp_path / "echo"), out).write(out)
    assert "plan-secret" not in (out / "keys/api_keys").read_text()
    assert not (out / "api_keys").exists()
