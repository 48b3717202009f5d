"""`stack.yaml` validation: each broken file and the exact message a user sees."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stack.spec import SpecError, load_spec

GOOD_API = """\
  - name: iris
    predictor:
      path: predictor.py
"""

CASES = [
    ("empty file", "", ["stack.yaml:1:1: the file is empty; it needs at least `project:` and `apis:`"]),
    ("not a mapping", "- a\n- b\n", ["stack.yaml:1:1: expected a mapping of fields, got a list"]),
    (
        "yaml syntax error",
        "project: x\napis: [\n",
        ["stack.yaml:3:1: YAML syntax error: the file ends inside a [ ] or {{ }} value: a bracket is never closed"],
    ),
    (
        "indentation error",
        "project: x\napis:\n  - name: a\n    predictor:\n      path: p.py\n     class: X\n",
        [
            "stack.yaml:6:6: YAML syntax error: this line's indentation does not fit the block it is in (the block "
            "starts at line 3, column 5): keys of one mapping start in the same column, and a nested value is "
            "indented further than its key"
        ],
    ),
    (
        "tab indentation",
        "project: x\napis:\n  - name: a\n\tpredictor: {}\n",
        [
            "stack.yaml:4:1: YAML syntax error: a tab character; YAML indents with spaces only: "
            "replace the tab with spaces"
        ],
    ),
    (
        "unclosed quote",
        'project: "x\napis: []\n',
        ["stack.yaml:1:10: YAML syntax error: a quoted string is never closed: add its closing quote"],
    ),
    (
        "a number written as a string",
        f'project: demo\napis:\n{GOOD_API}      threads_per_process: "2"\n',
        ["stack.yaml:6:28: apis[0].predictor.threads_per_process: input should be a valid integer, got '2'"],
    ),
    (
        "a boolean in env",
        f"project: demo\napis:\n{GOOD_API}      env: {{DEBUG: true}}\n",
        ['stack.yaml:6:12: apis[0].predictor.env: the value of DEBUG is a boolean; quote it ("true") to pass the text'],
    ),
    (
        "missing fields",
        "gateway: {port: 8080}\n",
        ["stack.yaml:1:1: apis: required field is missing", "stack.yaml:1:1: project: required field is missing"],
    ),
    (
        "misspelt key",
        f"project: demo\napis:\n{GOOD_API}    autoscaling:\n      min_replica: 2\n",
        ["stack.yaml:7:7: apis[0].autoscaling.min_replica: unknown field `min_replica` — did you mean `min_replicas`?"],
    ),
    (
        "unknown key without a near match",
        f"project: demo\nflavour: vanilla\napis:\n{GOOD_API}",
        [
            "stack.yaml:2:1: flavour: unknown field `flavour`; expected one of: project, target, gateway, prometheus, "
            "build, apis, splitters, log_format, tracing"
        ],
    ),
    (
        "bad types",
        f"project: demo\ngateway:\n  port: eighty\napis:\n{GOOD_API}    compute:\n      gpu: -1\n      mem: lots\n",
        [
            "stack.yaml:3:9: gateway.port: input should be a valid integer, got 'eighty'",
            "stack.yaml:9:12: apis[0].compute.gpu: must not be negative, got -1",
            "stack.yaml:10:12: apis[0].compute.mem: expected a memory size like 512Mi, 2Gi or 500M, got 'lots'",
        ],
    ),
    (
        "gpu neither a fraction nor whole",
        f"project: demo\napis:\n{GOOD_API}    compute: {{gpu: 1.5}}\n",
        [
            "stack.yaml:6:20: apis[0].compute.gpu: 1.5 is neither a fraction of one GPU (0 < gpu < 1) nor whole "
            "GPUs: use 1 or 2, or a fraction like 0.5 to share one GPU"
        ],
    ),
    (
        "gpu memory without a unit, or without a gpu",
        f"project: demo\napis:\n{GOOD_API}    compute: {{gpu: 0.5, gpu_mem: 20}}\n"
        f"  - name: other\n    predictor: {{path: predictor.py}}\n    compute: {{gpu_mem: 20Gi}}\n",
        [
            "stack.yaml:6:34: apis[0].compute.gpu_mem: 20 has no unit: write it with one of Ki, Mi, Gi, Ti "
            "(1024-based) or K, M, G, T (1000-based), e.g. 20Mi",
            "stack.yaml:9:14: apis[1].compute: gpu_mem is the GPU memory of a replica that has a GPU: set "
            "compute.gpu too",
        ],
    ),
    (
        "bad duration",
        f"project: demo\napis:\n{GOOD_API}      timeout: soon\n",
        [
            "stack.yaml:6:16: apis[0].predictor.timeout: expected a duration like 250ms, 10s, 5m, 1h or 1m30s, "
            "got 'soon'"
        ],
    ),
    (
        "min greater than max",
        f"project: demo\napis:\n{GOOD_API}    autoscaling:\n      min_replicas: 5\n      max_replicas: 2\n",
        ["stack.yaml:7:7: apis[0].autoscaling: min_replicas (5) is greater than max_replicas (2)"],
    ),
    (
        "init outside bounds",
        f"project: demo\napis:\n{GOOD_API}    autoscaling: {{min_replicas: 2, max_replicas: 4, init_replicas: 9}}\n",
        [
            "stack.yaml:6:18: apis[0].autoscaling: init_replicas (9) must lie between min_replicas (2) and "
            "max_replicas (4)"
        ],
    ),
    (
        "duplicate names",
        f"project: demo\napis:\n{GOOD_API}{GOOD_API}",
        ["stack.yaml:6:11: apis[1].name: API name 'iris' is already used by apis[0]"],
    ),
    (
        "duplicate endpoints",
        f"project: demo\napis:\n{GOOD_API}    networking: {{endpoint: /x}}\n"
        "  - name: other\n    predictor: {path: predictor.py}\n    networking: {endpoint: /x/}\n",
        ["stack.yaml:9:28: apis[1].networking.endpoint: endpoint /x is already used by apis[0]"],
    ),
    (
        "window shorter than two scrapes",
        f"project: demo\nprometheus: {{scrape_interval: 5s}}\napis:\n{GOOD_API}    autoscaling:\n"
        "      max_replicas: 3\n      window: 6s\n",
        [
            "stack.yaml:9:15: apis[0].autoscaling.window: window 6s holds fewer than two scrapes "
            "(prometheus.scrape_interval is 5s); make it at least 10s or scrape more often"
        ],
    ),
    (
        "missing predictor file",
        "project: demo\napis:\n  - name: iris\n    predictor:\n      path: nowhere.py\n",
        ["stack.yaml:5:13: apis[0].predictor.path: predictor file nowhere.py not found (looked in {root})"],
    ),
    (
        "bad names",
        "project: Demo_1\napis:\n  - name: 9lives\n    predictor: {path: predictor.py}\n",
        [
            "stack.yaml:1:10: project: 'Demo_1' is not a valid name: use lowercase letters, digits and '-', "
            "starting with a letter (it names containers, jobs and metrics)",
            "stack.yaml:3:11: apis[0].name: '9lives' is not a valid name: use lowercase letters, digits and '-', "
            "starting with a letter (it names containers, jobs and metrics)",
        ],
    ),
    (
        "gpu count versus processes",
        f"project: demo\napis:\n{GOOD_API}      processes_per_replica: 3\n    compute: {{gpu: 2}}\n",
        [
            "stack.yaml:3:5: apis[0]: compute.gpu is 2 but predictor.processes_per_replica is 3: with more than one "
            "GPU per replica each process gets one GPU, so set processes_per_replica to the GPU count"
        ],
    ),
    (
        "duplicate key",
        "project: a\nproject: b\napis: []\n",
        ["stack.yaml:2:1: project: duplicate key; the later one would win"],
    ),
    (
        "no apis",
        "project: demo\napis: []\n",
        ["stack.yaml:2:7: apis: list should have at least 1 item after validation, not 0"],
    ),
    (
        "bad surge",
        f"project: demo\napis:\n{GOOD_API}    update: {{max_surge: lots}}\n",
        ["stack.yaml:6:25: apis[0].update.max_surge: expected a replica count or a percentage like 25%, got 'lots'"],
    ),
    (
        "a call to an unknown API",
        f"project: demo\napis:\n{GOOD_API}    calls: [scroe]\n  - name: score\n    predictor: {{path: predictor.py}}\n",
        ["stack.yaml:6:13: apis[0].calls[0]: no API named 'scroe'; did you mean 'score'?"],
    ),
    (
        "an API calling itself",
        f"project: demo\napis:\n{GOOD_API}    calls: [iris]\n",
        [
            "stack.yaml:6:13: apis[0].calls[0]: API 'iris' calls itself; "
            + "a stage calls the next stage, not its own endpoint"
        ],
    ),
    (
        "a cycle of calls",
        "project: demo\napis:\n"
        + "".join(
            f"  - name: {n}\n    predictor: {{path: predictor.py}}\n    calls: [{c}]\n"
            for n, c in [("a", "b"), ("b", "c"), ("c", "a")]
        ),
        ["stack.yaml:5:13: apis[0].calls[0]: calls go round in a cycle: a → b → c → a"],
    ),
    (
        "a call to a BatchAPI",
        f"project: demo\napis:\n{GOOD_API}    calls: [jobs]\n  - name: jobs\n    kind: BatchAPI\n"
        "    predictor: {path: predictor.py}\n",
        [
            "stack.yaml:6:13: apis[0].calls[0]: 'jobs' is a BatchAPI: "
            + "it takes jobs, not calls (submit a job to its endpoint)"
        ],
    ),
    (
        "a callee listed twice",
        f"project: demo\napis:\n{GOOD_API}    calls: [b, b]\n  - name: b\n    predictor: {{path: predictor.py}}\n",
        ["stack.yaml:6:16: apis[0].calls[1]: 'b' is listed twice"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_spec_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]) -> None:
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        load_spec("stack.yaml")
    assert [str(p) for p in caught.value.problems] == [e.format(root=tmp_path) for e in expected]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert str(caught.value) == (
        f"no stack.yaml in {tmp_path}: create one with `stack init NAME`, "
        "or give the directory (or the spec file) that has it"
    )
    with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'other.yaml'}: file not found")):
        load_spec(tmp_path / "other.yaml")


def test_defaults_are_cortex_like(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text("")
    (tmp_path / "stack.yaml").write_text("project: demo\napis:\n  - name: a\n    predictor: {path: p.py}\n")
    api = load_spec(tmp_path).spec.apis[0]
    scaling = api.autoscaling
    assert (scaling.min_replicas, scaling.max_replicas, scaling.initial) == (1, 100, 1)
    assert (scaling.window, scaling.upscale_stabilization_period, scaling.downscale_stabilization_period) == (
        60,
        60,
        300,
    )
    assert (scaling.max_upscale_factor, scaling.max_downscale_factor) == (1.5, 0.75)
    assert api.endpoint == "/a" and api.target_concurrency == 1
    assert api.update.resolve(4) == (1, 1)


def test_validate_command(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("project: demo\napis:\n  - name: a\n    predictor: {path: gone.py}\n")
    bad = subprocess.run([sys.executable, "-m", "stack.cli", "validate", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "1 problem in" in bad.stderr and "apis[0].predictor.path: predictor file gone.py not found" in bad.stderr
    (tmp_path / "gone.py").write_text("")
    good = subprocess.run(
        [sys.executable, "-m", "stack.cli", "validate", str(tmp_path)], capture_output=True, text=True
    )
    assert good.returncode == 0 and good.stdout.startswith("ok:")


def _keys_spec(tmp_path: Path, gateway: str) -> Path:
    (tmp_path / "predictor.py").write_text(
        "class Predictor:\n    def predict(self, payload):\n        return payload\n"
    )
    (tmp_path / "stack.yaml").write_text(f"project: shop\ngateway:\n{gateway}apis:\n{GOOD_API}")
    return tmp_path


def test_api_keys_from_the_environment_and_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_KEYS", "first-key-123, second-key-456")
    (tmp_path / "keys.txt").write_text("# rotated 2026-11\nthird-key-789\n\n")
    loaded = load_spec(_keys_spec(tmp_path, "  api_keys: ${SHOP_KEYS}\n  api_keys_file: keys.txt\n"))
    assert loaded.spec.gateway.api_keys == ["first-key-123", "second-key-456", "third-key-789"]
    assert loaded.warnings == []
    monkeypatch.setenv("ONE_KEY", "only-one-key-1")
    listed = load_spec(_keys_spec(tmp_path, "  api_keys:\n    - ${ONE_KEY}\n    - literal-key-42\n"))
    assert listed.spec.gateway.api_keys == ["only-one-key-1", "literal-key-42"]
    assert len(listed.warnings) == 1 and "1 key(s) in the file itself" in listed.warnings[0]


def test_api_keys_that_cannot_be_found_are_spec_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_KEYS", raising=False)
    with pytest.raises(SpecError) as unset:
        load_spec(_keys_spec(tmp_path, "  api_keys: ${NOT_SET_KEYS}\n"))
    assert str(unset.value).endswith(
        "stack.yaml:3:13: gateway.api_keys: environment variable NOT_SET_KEYS is not set "
        "(export it, or use gateway.api_keys_file)"
    ), str(unset.value)
    with pytest.raises(SpecError, match=r'quote an environment reference: "\$\{VAR\}"'):
        load_spec(_keys_spec(tmp_path, "  api_keys: [${NOT_SET_KEYS}]\n"))
    with pytest.raises(SpecError) as missing:
        load_spec(_keys_spec(tmp_path, "  api_keys_file: nowhere.txt\n"))
    assert "gateway.api_keys_file: cannot read" in str(missing.value) and "nowhere.txt" in str(missing.value)
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(SpecError, match="holds no key"):
        load_spec(_keys_spec(tmp_path, "  api_keys_file: empty.txt\n"))


def test_min_replicas_zero_starts_one_and_scales_to_zero_after_idle_timeout(tmp_path: Path) -> None:
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text(
        f"project: z\napis:\n{GOOD_API}    autoscaling: {{min_replicas: 0, max_replicas: 3, idle_timeout: 2m}}\n"
    )
    scaling = load_spec(tmp_path).spec.apis[0].autoscaling
    assert (scaling.min_replicas, scaling.initial, scaling.idle_timeout) == (0, 1, 120.0)
    assert load_spec(tmp_path).spec.apis[0].autoscaled


def _validate_bounded(root: Path) -> subprocess.CompletedProcess[str]:
    """`stack validate` in a process that may use at most 1 GiB and 60 s: a loader that walks an alias
    bomb fails this test instead of taking the machine's memory (4 GB in 39 s before the bound)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "validate", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
        cwd=root,
    )


def test_an_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    # Ten levels of nine aliases: 9**10 (3.5 billion) values once expanded, from a 1 KiB file.
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        levels.append(f"a{level}: &a{level} [{refs}]")
    (tmp_path / "stack.yaml").write_text("project: bomb\n" + "\n".join(f"x-{line}" for line in levels) + "\napis: []\n")
    result = _validate_bounded(tmp_path)
    assert result.returncode == 1, result.stderr
    assert "expand to more than 100,000 values" in result.stderr and "Traceback" not in result.stderr
    assert re.search(r"stack\.yaml:\d+:\d+: ", result.stderr), result.stderr  # where: file, line, column


def test_a_few_shared_anchors_are_still_fine(tmp_path: Path) -> None:
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text(
        "project: shared\n"
        "apis:\n"
        "  - name: a\n    predictor: {path: predictor.py}\n    compute: &small {cpu: 1, mem: 1Gi}\n"
        "  - name: b\n    predictor: {path: predictor.py}\n    compute: *small\n"
    )
    assert load_spec(tmp_path).spec.apis[1].compute.cpu == 1


def test_an_alias_inside_its_own_anchor_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("project: loop\nx-loop: &loop [1, *loop]\napis: []\n")
    with pytest.raises(SpecError) as looped:
        load_spec(tmp_path)
    assert str(looped.value).endswith("stack.yaml:2:9: an alias refers to the value it is inside")
    (tmp_path / "stack.yaml").write_text("project: deep\nx-deep: " + "[" * 5000 + "]" * 5000 + "\napis: []\n")
    result = _validate_bounded(tmp_path)
    assert result.returncode == 1 and "nested too deeply" in result.stderr, result.stderr


def test_an_oversize_or_binary_spec_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    spec = tmp_path / "stack.yaml"
    with spec.open("w") as out:  # 50 MiB of valid YAML: refused from its size, not parsed for a minute
        out.write("project: big\napis: []\nx-data:\n")
        line = "  - " + "y" * 1000 + "\n"
        for _ in range(50 * 1024):
            out.write(line)
    result = _validate_bounded(tmp_path)
    assert result.returncode == 1
    assert re.search(r"stack\.yaml: the file is 50,\d{3} KiB; a stack\.yaml is at most 1,024 KiB", result.stderr)
    spec.write_bytes(b"project: \xff\xfe\napis: []\n")
    with pytest.raises(SpecError) as binary:
        load_spec(tmp_path)
    assert "not UTF-8 text (byte 9): save it as UTF-8" in str(binary.value)


def test_paths_outside_the_project_are_refused_with_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "predictor.py").write_text("class Predictor:\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "models").symlink_to(tmp_path / "elsewhere")  # a link inside that leads out
    (root / "stack.yaml").write_text(
        "project: out\n"
        "apis:\n"
        "  - name: a\n"
        "    predictor:\n"
        "      path: /etc/passwd\n"
        "      requirements: /etc/shadow\n"
        "      python_path: [/etc, lib]\n"
        "  - name: b\n"
        "    predictor:\n"
        "      path: ../../../../etc/passwd\n"
        "  - name: c\n"
        "    predictor:\n"
        "      type: onnx\n"
        "      path: predictor.py\n"
        "      models: {dir: models}\n"
    )
    with pytest.raises(SpecError) as refused:
        load_spec(root)
    shown = str(refused.value)
    project = root.resolve()
    outside = f"is outside the project: every file an API uses must be inside {project}"
    assert f"stack.yaml:5:13: apis[0].predictor.path: /etc/passwd {outside}" in shown
    assert f"stack.yaml:6:21: apis[0].predictor.requirements: /etc/shadow {outside}" in shown
    assert f"stack.yaml:7:21: apis[0].predictor.python_path[0]: /etc {outside}" in shown
    assert "apis[0].predictor.python_path[1]: directory lib not found" in shown  # inside, but missing
    climbed = (root / "../../../../etc/passwd").resolve()
    assert f"stack.yaml:10:13: apis[1].predictor.path: ../../../../etc/passwd (that is {climbed}) {outside}" in shown
    assert f"apis[2].predictor.models.dir: models (that is {(tmp_path / 'elsewhere').resolve()}) {outside}" in shown
    assert shown.count("not found") == 1 and shown.startswith("6 problems")  # an outside path: one problem


def test_validate_compiles_the_predictor(tmp_path: Path) -> None:
    """A predictor that does not compile fails `stack validate` (and `stack up`, before anything is built),
    at its own file and line; `stack status` and `stack down` still load the spec."""
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self, payload)\n        return 1\n")
    (tmp_path / "stack.yaml").write_text("project: broken\napis:\n  - name: a\n    predictor: {path: predictor.py}\n")
    result = subprocess.run(
        [sys.executable, "-m", "stack.cli", "validate", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'predictor.py'}:2:" in result.stderr
    assert "API a's predictor does not compile: SyntaxError: expected ':'" in result.stderr, result.stderr
    assert load_spec(tmp_path).spec.project == "broken"  # what every other command loads
    down = subprocess.run(
        [sys.executable, "-m", "stack.cli", "down", "--local", str(tmp_path)], capture_output=True, text=True
    )
    assert down.returncode == 0 and down.stdout.strip() == "nothing was running", down.stderr
