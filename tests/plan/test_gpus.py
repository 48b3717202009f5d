"""The GPU box: replica slots placed on the host's GPUs (fractions, memory, over-commit), each target's
rendering of the placement, the replicas' GPU metrics, and least-loaded routing.

No GPU here: the host's GPUs come from a stand-in `nvidia-smi` on PATH (tests/fakes/nvidia-smi), NVML
from a stand-in `pynvml` module (tests/fakes/pynvml.py); Compose files are checked with `docker compose
config`, Nomad jobs against Nomad's API schema. Nothing here pretends a GPU ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from cli import stack
from common import EXAMPLES, ROOT, free_port, require_binary
from prometheus_client.parser import text_string_to_metric_families

from nomad_schema import schema_errors
from stack.errors import PlanError
from stack.plan.gpus import Gpu, detect_gpus, parse_query, place
from stack.spec import load_spec
from stack.targets.compose.plan import plan as plan_compose
from stack.targets.nomad.plan import plan as plan_nomad

FAKES = ROOT / "tests" / "fakes"
H100 = "GPU-0aa3c2f1-6ee2-4c65-9a1b-7d2b4e1c0001"
H100_2 = "GPU-0aa3c2f1-6ee2-4c65-9a1b-7d2b4e1c0002"
SMI = f"0, {H100}, NVIDIA H100 80GB HBM3, 81559\n1, {H100_2}, NVIDIA H100 80GB HBM3, 81559\n"
GIB = 1024**3


def project(tmp_path: Path, apis: str, name: str = "box") -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    (root / "stack.yaml").write_text(f"project: {name}\napis:\n{apis}")
    return root


def api(name: str, gpu: float, max_replicas: int, mem: str = "", min_replicas: int = 1) -> str:
    memory = f", gpu_mem: {mem}" if mem else ""
    return (
        f"  - name: {name}\n    predictor: {{path: predictor.py}}\n    compute: {{gpu: {gpu}{memory}}}\n"
        f"    autoscaling: {{min_replicas: {min_replicas}, max_replicas: {max_replicas}}}\n"
    )


def gpus(count: int, memory: int | None = 80 * GIB) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i}", "NVIDIA H100", memory) for i in range(count)]


@pytest.fixture
def fake_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two H100s, as nvidia-smi would report them."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVIDIA_SMI", SMI)


# -- placement ---------------------------------------------------------------------------------


def test_nvidia_smi_is_read_for_index_uuid_name_and_memory(fake_smi: None) -> None:
    found = detect_gpus()
    assert found == [
        Gpu(0, H100, "NVIDIA H100 80GB HBM3", 81559 * 1024**2),
        Gpu(1, H100_2, "NVIDIA H100 80GB HBM3", 81559 * 1024**2),
    ]
    assert parse_query("0, GPU-x, Tesla T4, [N/A]\n") == [Gpu(0, "GPU-x", "Tesla T4", None)]


def test_four_quarter_gpu_replicas_share_one_gpu_and_a_fifth_does_not_fit(tmp_path: Path) -> None:
    spec = load_spec(project(tmp_path, api("small", 0.25, 4))).spec
    placement = place(spec.apis, gpus(1))
    assert [(s.number, s.gpus, float(s.share)) for s in placement.of("small")] == [(n, (0,), 0.25) for n in range(4)]
    assert placement.lines() == [
        "GPU 0 (NVIDIA H100, 80Gi): small#0 (0.25), small#1 (0.25), small#2 (0.25), small#3 (0.25)  [1 of 1, 0 of 80Gi]"
    ]
    spec = load_spec(project(tmp_path, api("small", 0.25, 5), "box5")).spec
    with pytest.raises(PlanError) as failed:
        place(spec.apis, gpus(1))
    message = str(failed.value)
    assert "small (1 slot(s) left over) do not fit" in message
    assert "small: 5 slot(s) of 0.25 GPU (4 fit)" in message and "GPU 0 (NVIDIA H100, 80Gi)" in message
    assert "Lower autoscaling.max_replicas, compute.gpu or compute.gpu_mem" in message


def test_two_whole_gpu_apis_on_one_gpu_are_an_error_not_a_shared_gpu(tmp_path: Path) -> None:
    spec = load_spec(project(tmp_path, api("a", 1, 1) + api("b", 1, 1))).spec
    with pytest.raises(PlanError, match=r"b \(1 slot\(s\) left over\) do not fit"):
        place(spec.apis, gpus(1))
    placement = place(spec.apis, gpus(2))
    assert {s.api: s.gpus for s in placement.slots} == {"a": (0,), "b": (1,)}


def test_memory_adds_up_per_gpu(tmp_path: Path) -> None:
    spec = load_spec(project(tmp_path, api("big", 0.5, 2, "50Gi"))).spec
    with pytest.raises(PlanError, match="big"):  # 0.5 + 0.5 fit one GPU, 100Gi do not fit 80Gi
        place(spec.apis, gpus(1))
    assert [s.gpus for s in place(spec.apis, gpus(2)).slots] == [(0,), (1,)]
    spec = load_spec(project(tmp_path, api("big", 0.5, 2, "40Gi"), "fits")).spec
    assert [s.gpus for s in place(spec.apis, gpus(1)).slots] == [(0,), (0,)]


def test_gpu_memory_bigger_than_every_gpu_names_the_largest(tmp_path: Path) -> None:
    spec = load_spec(project(tmp_path, api("huge", 0.5, 1, "100Gi"))).spec
    with pytest.raises(PlanError) as failed:
        place(spec.apis, gpus(2))
    assert str(failed.value) == (
        "API huge: compute.gpu_mem 100Gi is more than any GPU of this host has (the largest: GPU 0 "
        "(NVIDIA H100, 80Gi)); lower compute.gpu_mem"
    )


def test_fractional_slots_spread_over_the_gpus_and_whole_gpus_come_first(tmp_path: Path) -> None:
    pair = api("pair", 2, 1).replace("{path: predictor.py}", "{path: predictor.py, processes_per_replica: 2}")
    spec = load_spec(project(tmp_path, api("half", 0.5, 2) + pair + api("quarter", 0.25, 4))).spec
    placement = place(spec.apis, gpus(4))
    assert placement.of("pair")[0].gpus == (0, 1)  # whole GPUs of its own
    assert [s.gpus for s in placement.of("half")] == [(2,), (3,)]  # the first replicas on different GPUs
    assert [s.gpus for s in placement.of("quarter")] == [(2,), (3,), (2,), (3,)]
    assert placement.slot_devices()["pair"] == [["GPU-0", "GPU-1"]]


def test_without_gpu_information_the_plan_assumes_enough_and_says_so(tmp_path: Path) -> None:
    spec = load_spec(project(tmp_path, api("a", 0.5, 3))).spec
    placement = place(spec.apis, None)
    assert placement.assumed and len(placement.gpus) == 2 and "no GPU information" in placement.warnings[0]


def test_gpus_without_their_memory_say_gpu_mem_was_not_checked(tmp_path: Path) -> None:
    """`stack plan --gpus 2` without --gpu-mem: a gpu_mem no GPU has is not refused, but never silently."""
    root = project(tmp_path, api("huge", 1, 2, "120Gi"))
    planned = subprocess.run(
        [sys.executable, "-m", "stack.cli", "plan", str(root), "--gpus", "2"], capture_output=True, text=True
    )
    assert planned.returncode == 0, planned.stderr
    assert "GPU memory not checked" in planned.stderr and "compute.gpu_mem (huge 120Gi)" in planned.stderr
    assert "pass --gpu-mem SIZE" in planned.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "stack.cli", "plan", str(root), "--gpus", "2", "--gpu-mem", "80Gi"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1 and "compute.gpu_mem 120Gi is more than any GPU of this host has" in checked.stderr
    known = place(load_spec(root).spec.apis, gpus(2, memory=None))
    assert any("GPU memory not checked" in w for w in known.warnings)


# -- every target --------------------------------------------------------------------------------


def test_compose_pins_each_slot_to_its_gpu_by_uuid(tmp_path: Path, fake_smi: None) -> None:
    root = project(tmp_path, api("small", 0.25, 3, "10Gi"))
    out = root / ".stack/plan/compose"
    plan = stack("plan", str(root), cwd=root)
    assert "GPU placement (GPU: replica slots):" in plan.stdout
    assert "GPU 0 (NVIDIA H100 80GB HBM3, 81559Mi): small#0 (0.25), small#2 (0.25)  [0.5 of 1, 20Gi of 81559Mi]" in (
        plan.stdout
    )
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    slots = sorted(s for s in compose["services"] if s.startswith("small-"))
    devices = [compose["services"][s]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in slots]
    assert devices == [[H100], [H100_2], [H100]]
    config = json.loads(compose["services"]["autoscaler"]["environment"]["STACK_AUTOSCALER_CONFIG"])
    assert config["apis"][0]["gpu_slots"] == [[H100], [H100_2], [H100]]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        checked = subprocess.run(
            ["docker", "compose", "-f", str(out / "compose.yaml"), "config", "-q"], capture_output=True
        )
        assert checked.returncode == 0, checked.stderr


def test_plan_and_validate_refuse_an_overcommit_with_what_fits(tmp_path: Path, fake_smi: None) -> None:
    root = project(tmp_path, api("a", 1, 1) + api("b", 0.5, 4))
    planned = stack("plan", str(root), cwd=root, check=False)
    assert planned.returncode == 1 and "the GPUs cannot hold every replica slot: b (2 slot(s) left over)" in (
        planned.stderr
    )
    assert "GPU 0 (NVIDIA H100 80GB HBM3, 81559Mi): a#0 (1)" in planned.stderr
    checked = stack("validate", str(root), cwd=root, check=False)
    assert checked.returncode == 1 and "b (2 slot(s) left over)" in checked.stderr
    # Planned for another host: --gpus and --gpu-mem instead of this one's nvidia-smi.
    elsewhere = stack("plan", str(root), "--gpus", "4", "--gpu-mem", "40Gi", cwd=root)
    assert "GPU 3 (40Gi): b#2 (0.5)" in elsewhere.stdout
    bad = stack("plan", str(root), "--gpus", "4", "--gpu-mem", "40", cwd=root, check=False)
    assert bad.returncode == 2 and "--gpu-mem" in bad.stderr and "has no unit" in bad.stderr


def test_nomad_runs_a_fraction_as_replica_processes_sharing_one_gpu(tmp_path: Path) -> None:
    root = project(tmp_path, api("small", 0.25, 8, "10Gi", min_replicas=2))
    plan = plan_nomad(load_spec(root))
    job = json.loads(plan.files["box-small.json"])["Job"]
    assert schema_errors({"Job": job}) == []
    group = job["TaskGroups"][0]
    task = group["Tasks"][0]
    assert task["Resources"]["Devices"] == [
        {
            "Name": "nvidia/gpu",
            "Count": 1,
            "Constraints": [{"LTarget": "${device.attr.memory}", "Operand": ">=", "RTarget": "40960 MiB"}],
        }
    ]
    assert json.loads(task["Env"]["STACK_SERVING_CONFIG"])["processes_per_replica"] == 4
    assert group["Count"] == 1 and (group["Scaling"]["Min"], group["Scaling"]["Max"]) == (1, 2)  # in allocations
    assert plan.notes and "each allocation holds one GPU" in plan.notes[0] and "4 replica processes" in plan.notes[0]
    out = stack("plan", str(root), "--nomad", cwd=root)
    assert "runs 4 replica processes on it" in out.stderr


WHERE = """\
import os


class Predictor:
    def predict(self):
        return {"gpu": os.environ["CUDA_VISIBLE_DEVICES"]}
"""


def test_local_replicas_are_pinned_to_their_slots_gpu(tmp_path: Path, fake_smi: None) -> None:
    root = project(tmp_path, api("where", 0.5, 2, min_replicas=2))
    (root / "predictor.py").write_text(WHERE)
    port = free_port()
    top = f"gateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:"
    (root / "stack.yaml").write_text((root / "stack.yaml").read_text().replace("apis:", top))
    try:
        up = stack("up", "--local", str(root), cwd=root)
        assert "GPU placement: GPU 0 (NVIDIA H100 80GB HBM3, 81559Mi): where#0 (0.5)" in up.stderr
        seen = {requests.post(f"http://127.0.0.1:{port}/where", json={}, timeout=10).json()["gpu"] for _ in range(20)}
        assert seen == {H100, H100_2}  # each replica on its own slot's GPU, by UUID
        status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
        assert sorted(r["gpu"] for r in status["replicas"]) == [H100, H100_2]
        assert status["gpu_slots"] == 2
        table = stack("status", "--local", "-p", str(root), cwd=root).stdout
        assert "live, at GPU capacity (2/2 slots)" in table, table
        assert f"0 {H100}" in table and "where#0" in table and "0.5 of 1" in table, table
        detail = stack("status", "--local", "where", "-p", str(root), cwd=root).stdout
        assert "gpu memory" in detail and H100_2 in detail, detail
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)


# -- GPU metrics ---------------------------------------------------------------------------------


def nvml_env(value: str) -> dict[str, str]:
    return {"PYTHONPATH": str(FAKES), "FAKE_NVML": value}


def test_a_gpu_replica_exports_its_gpus_from_nvml(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = [
        {"uuid": H100, "total": 80 * GIB, "used": 30 * GIB, "util": 62, "procs": [["self", 12 * GIB], [1, 18 * GIB]]},
        {"uuid": H100_2, "total": 80 * GIB, "used": 1 * GIB, "util": 3, "procs": []},
    ]
    env = {**nvml_env(json.dumps(fake)), "CUDA_VISIBLE_DEVICES": H100}
    server = servers.serving(EXAMPLES / "echo" / "predictor.py", api="echo", gpus=0.5, env=env)
    text = server.get("/metrics").text
    samples = {
        (sample.name, sample.labels["gpu"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("predictor_gpu_")
    }
    assert samples == {
        ("predictor_gpu_utilization_ratio", H100): 0.62,
        ("predictor_gpu_memory_used_bytes", H100): 30 * GIB,
        ("predictor_gpu_memory_total_bytes", H100): 80 * GIB,
        ("predictor_gpu_process_memory_bytes", H100): 12 * GIB,  # its own process's, not the other's
    }
    assert H100_2 not in text  # not this replica's GPU
    promtool = require_binary("promtool")
    (tmp_path / "metrics.txt").write_text(text)
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("nvml", ["fail", None], ids=["no-driver", "no-library"])
def test_without_nvml_there_is_no_gpu_metric_and_no_crash(servers, nvml: str | None) -> None:  # type: ignore[no-untyped-def]
    env = nvml_env(nvml) if nvml else {}
    server = servers.serving(EXAMPLES / "echo" / "predictor.py", api="echo", gpus=1, env=env)
    assert server.post(json={"a": 1}).status_code == 200
    assert "predictor_gpu_" not in server.get("/metrics").text


# -- least-loaded routing ------------------------------------------------------------------------


def test_replicas_are_balanced_least_loaded_by_default(tmp_path: Path) -> None:
    plain = "  - name: {0}\n    predictor: {{path: predictor.py}}\n{1}"
    root = project(tmp_path, plain.format("a", "") + plain.format("b", "    networking: {load_balancer: wrr}\n"))
    loaded = load_spec(root)
    services = yaml.safe_load(plan_compose(loaded, tmp_path / "out").files["compose.yaml"])["services"]
    config = json.loads(services["autoscaler"]["environment"]["STACK_AUTOSCALER_CONFIG"])
    assert {r["name"]: r["load_balancer"] for r in config["routed"]} == {"a": "p2c", "b": "wrr"}
    tags = json.loads(plan_nomad(loaded).files["box-b.json"])["Job"]["TaskGroups"][0]["Services"][0]["Tags"]
    assert "traefik.http.services.box-b.loadbalancer.strategy=wrr" in tags
    typo = (root / "stack.yaml").read_text().replace("load_balancer: wrr", "load_balancer: fastest")
    (root / "stack.yaml").write_text(typo)
    bad = stack("validate", str(root), cwd=root, check=False)
    assert bad.returncode == 1 and "networking.load_balancer" in bad.stderr, bad.stderr
    assert "'p2c', 'wrr' or 'leasttime'" in bad.stderr, bad.stderr
