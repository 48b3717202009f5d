"""Named keys' mistakes in stack.yaml, and `stack usage` asked what it cannot answer: each a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import stack

PREDICTOR = "class Predictor:\n    def predict(self, payload):\n        return payload\n"


def _project(root: Path, keys: str, prometheus: str = "") -> Path:
    root.mkdir(exist_ok=True)
    (root / "p.py").write_text(PREDICTOR)
    (root / "stack.yaml").write_text(
        f"project: keys\n{prometheus}gateway:\n  keys:\n{keys}apis:\n  - name: alpha\n    predictor: {{path: p.py}}\n"
    )
    return root


def test_key_mistakes_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAME_KEY", "same-key-0123456789abcdef")
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    (tmp_path / "k.txt").write_text("file-key-0123456789abcdef\n")
    root = _project(
        tmp_path / "p",
        '    - {name: a, key: "${SAME_KEY}"}\n'
        '    - {name: b, key: "${SAME_KEY}"}\n'
        '    - {name: c, key: "${NOT_SET_KEY}"}\n'
        '    - {name: d, key: "x-0123456789abcdef", key_file: ../k.txt}\n'
        "    - {name: e}\n",
    )
    result = stack("validate", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "stack.yaml:5:" in result.stderr and "the same key as gateway.keys[0]" in result.stderr
    assert "stack.yaml:6:" in result.stderr and "environment variable NOT_SET_KEY is not set" in result.stderr
    assert "stack.yaml:7:" in result.stderr and "give key or key_file, not both" in result.stderr
    assert "stack.yaml:8:" in result.stderr and "give exactly one of key" in result.stderr
    assert "same-key-0123456789abcdef" not in result.stderr  # the key itself is never printed


def test_stack_usage_says_what_it_cannot_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_KEY", "a-key-0123456789abcdef")
    root = _project(tmp_path / "p", '    - {name: a, key: "${A_KEY}"}\n', "prometheus: {enabled: false}\n")
    bad = stack("usage", "--compose", "--since", "soon", str(root), cwd=root, check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr and "like 30m, 24h or 7d" in bad.stderr
    off = stack("usage", "--compose", str(root), cwd=root, check=False)
    assert off.returncode == 1 and "runs without Prometheus (prometheus.enabled: false)" in off.stderr
    nomad = stack("usage", "--nomad", str(root), cwd=root, check=False)
    assert nomad.returncode == 1 and "stack usage --nomad --prometheus http://<node>:9090" in nomad.stderr
