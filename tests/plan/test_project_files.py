"""What belongs to a project's images and version: `.stackignore`, its defaults, the hash cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stack.files import ProjectFiles
from stack.plan.versions import api_version, project_digest
from stack.spec import load_spec
from stack.targets.build import ImagePython, failure_summary

SPEC = (
    "project: demo\napis:\n"
    "  - name: a\n    predictor: {path: predictor.py}\n"
    "  - name: b\n    predictor: {path: predictor.py}\n"
)


def make_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(SPEC)
    (root / "predictor.py").write_text("class Predictor:\n    def predict(self):\n        return 1\n")
    return root


def listed(root: Path, spec: str = "stack.yaml") -> list[str]:
    return [p.as_posix() for p in ProjectFiles(root, root / spec)]


def test_defaults_leave_out_logs_state_caches_and_virtualenvs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    for name in ("up.log", ".stack/local/state.json", "__pycache__/x.pyc", ".git/HEAD", "nb/.ipynb_checkpoints/a"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (root / "myenv").mkdir()
    (root / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")  # a virtualenv under any name
    (root / "myenv" / "lib.py").write_text("x")
    (root / "weights").mkdir()
    (root / "weights" / "model.bin").write_bytes(b"\0" * 10)
    assert listed(root) == ["predictor.py", "weights/model.bin"]  # stack.yaml itself never goes into an image


def test_stackignore_patterns(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / "data").mkdir()
    (root / "data" / "big.csv").write_text("1")
    (root / "data" / "keep.csv").write_text("1")
    (root / "notes.md").write_text("x")
    (root / ".stackignore").write_text("# comments work\ndata/*.csv\n!data/keep.csv\n*.md\n")
    assert listed(root) == [".stackignore", "data/keep.csv", "predictor.py"]


def test_a_log_file_does_not_change_the_version_but_code_does(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    loaded = load_spec(root)
    before = project_digest(loaded)
    (root / "up.log").write_text("stack up > up.log")
    (root / "stack.yaml").write_text(SPEC + "# a comment\n")
    assert project_digest(load_spec(root)) == before
    (root / "predictor.py").write_text("class Predictor:\n    def predict(self):\n        return 2\n")
    assert project_digest(load_spec(root)) != before


def test_one_apis_spec_change_leaves_the_others_version(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    loaded = load_spec(root)
    digest = project_digest(loaded)
    (root / "stack.yaml").write_text(SPEC.replace("  - name: b\n", "  - name: b\n    compute: {cpu: 2}\n"))
    changed = load_spec(root)
    assert api_version(changed.spec.apis[0], project_digest(changed)) == api_version(loaded.spec.apis[0], digest)
    assert api_version(changed.spec.apis[1], project_digest(changed)) != api_version(loaded.spec.apis[1], digest)


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    weights = root / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    first = project_digest(load_spec(root))
    # Same size and mtime, other bytes: the cache answers without reading the file, as for weights
    # that never change. (A real edit changes the mtime, and the next test shows that is seen.)
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert project_digest(load_spec(root)) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert project_digest(load_spec(root)) != first


def test_a_corrupt_hash_cache_costs_only_a_reread(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    first = project_digest(load_spec(root))
    cache = root / ".stack/cache/file-hashes.json"
    assert cache.is_file()
    cache.write_text("{not json")
    assert project_digest(load_spec(root)) == first


def test_digest_is_the_same_in_another_process_and_hash_seed(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / "a").mkdir()
    for name in ("z.py", "a.py", "m.txt", "a/b.py"):
        (root / name).write_text(name)
    code = "import sys; from stack.plan.versions import project_digest; from stack.spec import load_spec; "
    code += f"print(project_digest(load_spec({str(root)!r})))"
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "12345")
    }
    assert len(digests) == 1


def test_wheelhouse_targets_the_images_python_not_the_hosts() -> None:
    python = ImagePython("3.11", "cp", "x86_64", "glibc", "2.36")
    args = python.pip_args()
    assert args[:4] == ["--python-version", "3.11", "--implementation", "cp"]
    assert args[4:6] == ["--abi", "cp311"]
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms and platforms[-1] == "any"
    arm = ImagePython("3.12", "cp", "aarch64", "musl", "1.2")
    assert "musllinux_1_2_aarch64" in arm.platforms() and "--abi" in arm.pip_args()
    assert python.key() != arm.key()  # the wheelhouse cache is kept per interpreter and platform


def test_a_failed_pip_step_says_which_step_and_the_fix() -> None:
    classic = (
        "Step 5/9 : RUN pip install aiohttp -r /tmp/requirements.txt\n ---> Running in 1\n"
        "WARNING: Retrying ... SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]'))\n"
        "ERROR: Could not find a version that satisfies the requirement aiohttp\n"
        "The command '/bin/sh -c pip install aiohttp' returned a non-zero code: 1\n"
    )
    summary = failure_summary(classic)
    assert summary.startswith("step 5/9 (`RUN pip install aiohttp -r /tmp/requirements.txt`)")
    assert "cannot reach the package index" in summary and "build.wheelhouse: true" in summary
    buildkit = "#7 [3/6] COPY project /app\n#7 ERROR: failed to compute cache key: not found\n"
    assert "a file the Dockerfile copies is missing" in failure_summary(buildkit)
    lost = (
        "Step 9/14 : COPY project /app\n"
        "failed to export image: failed to set parent sha256:e3a2: unknown parent image ID sha256:e3a2\n"
    )
    assert "an image was removed while it built" in failure_summary(lost)
    assert "missing" not in failure_summary(lost)


def test_a_build_that_lost_a_layer_to_a_removed_image_runs_once_more(tmp_path: Path, monkeypatch) -> None:
    from stack.targets import build

    lost = "Step 9/14 : COPY project /app\nfailed to export image: unknown parent image ID sha256:e3a2\n"
    answers = [subprocess.CompletedProcess([], 1, "", lost), subprocess.CompletedProcess([], 0, "built", "")]
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return answers.pop(0)

    monkeypatch.setattr(build.subprocess, "run", fake_run)
    said: list[str] = []
    build.build_image(tmp_path, "p-api:1", said.append)
    assert len(calls) == 2 and calls[0] == calls[1] and "lost a layer" in said[-1]

    answers[:] = [subprocess.CompletedProcess([], 1, "", lost)] * 2  # lost again: the error, once more only
    calls.clear()
    with pytest.raises(build.BuildError, match="an image was removed while it built"):
        build.build_image(tmp_path, "p-api:1", said.append)
    assert len(calls) == 2


def test_an_onnx_or_s3_api_gets_its_packages_in_the_image(tmp_path: Path) -> None:
    from stack.plan.serving import extra_requirements
    from stack.targets.build import assemble

    root = make_project(tmp_path / "p")
    (root / "models" / "m").mkdir(parents=True)
    (root / "requirements.txt").write_text("numpy==2.0.0\nboto3>=1.30\n")
    (root / "stack.yaml").write_text(
        "project: demo\napis:\n"
        "  - name: a\n    predictor: {type: onnx, path: predictor.py, models: {dir: s3://bucket/models}}\n"
        "    compute: {gpu: 1}\n"
        "  - name: b\n    predictor: {path: predictor.py, multi_model_reloading: {dir: models}}\n"
    )
    a, b = load_spec(root).spec.apis
    assert extra_requirements(a) == ["nvidia-ml-py", "onnxruntime-gpu", "boto3"] and extra_requirements(b) == []
    context = assemble(
        ProjectFiles(root, root / "stack.yaml"),
        "a",
        "FROM x",
        root / "requirements.txt",
        "x",
        False,
        print,
        extra=extra_requirements(a),
    )
    # boto3 is already pinned by the project: kept as the project wrote it, not added twice.
    assert (context / "requirements.txt").read_text() == "numpy==2.0.0\nboto3>=1.30\nnvidia-ml-py\nonnxruntime-gpu\n"


def test_secrets_stay_out_of_images_and_one_that_would_go_in_is_named(tmp_path: Path) -> None:
    from stack.plan.versions import project_files
    from stack.targets.build import warn_secrets

    root = tmp_path / "app"
    root.mkdir()
    (root / "predictor.py").write_text("class Predictor:\n    def predict(self):\n        return 1\n")
    (root / "keys.txt").write_text("a-key-of-sixteen\n")
    (root / "stack.yaml").write_text(
        "project: app\ngateway: {api_keys_file: keys.txt}\napis:\n  - name: a\n    predictor: {path: predictor.py}\n"
    )
    for name in (".env", ".env.prod", "secrets.txt", "certs/gateway.pem", "certs/gateway.key", ".aws/credentials"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("hush\n")
    (root / "db_password.txt").write_text("hush\n")  # a secret's name the defaults do not know
    (root / "weights.bin").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")  # a private key inside
    (root / ".stackignore").write_text("!keys.txt\n")  # the keys file stays out even when asked in
    files = project_files(load_spec(root))
    assert [p.as_posix() for p in files] == [".stackignore", "db_password.txt", "predictor.py", "weights.bin"]
    said: list[str] = []
    warn_secrets(files, said.append)
    assert len(said) == 2 and "db_password.txt looks like a secret" in said[0] and "weights.bin" in said[1]
    assert ".stackignore" in said[0]
    (root / ".stackignore").write_text("!.env\n")  # taken back in on purpose: in, and said
    assert ".env" in [p.as_posix() for p in project_files(load_spec(root))]


def test_a_link_counts_only_as_a_file_of_the_project_that_is_included(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / "models").mkdir()
    (root / "models" / "real.bin").write_text("weights")
    (root / ".aws").mkdir()
    (root / ".aws" / "credentials").write_text("aws_secret_access_key=x")
    (root / "server.pem").write_text("-----BEGIN PRIVATE KEY-----")
    host = tmp_path / "host-secret"
    host.write_text("not ours")
    (root / "weights.bin").symlink_to("models/real.bin")  # inside: in, as its target
    (root / "config.ini").symlink_to(root / ".aws" / "credentials")  # a secret under another name: out
    (root / "cert.txt").symlink_to("server.pem")  # an ignored name behind a harmless one: out
    (root / "shadow.bin").symlink_to(host)  # outside: out, and listed
    (root / "dangling.bin").symlink_to("nowhere")
    (root / "loop.bin").symlink_to("loop.bin")
    files = ProjectFiles(root, root / "stack.yaml")
    assert [p.as_posix() for p in files] == ["models/real.bin", "predictor.py", "weights.bin"]
    outside = {p.as_posix(): pointed for p, pointed in files.links_outside()}
    assert outside == {"shadow.bin": str(host), "dangling.bin": "nowhere", "loop.bin": "loop.bin"}


def test_a_build_refuses_links_outside_the_project_before_copying_anything(tmp_path: Path) -> None:
    from stack.errors import BuildError
    from stack.targets.build import refuse_links_outside

    root = make_project(tmp_path / "p")
    (root / "weights.bin").symlink_to("/etc/passwd")
    with pytest.raises(BuildError) as refused:
        refuse_links_outside(ProjectFiles(root, root / "stack.yaml"))
    assert "weights.bin -> /etc/passwd" in str(refused.value) and ".stackignore" in str(refused.value)
