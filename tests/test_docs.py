"""The manual is a docs site (docs/, mkdocs.yml) that cannot drift from the code: its references are generated
from the schema and the CLI, every field says why, the site builds with --strict (no broken link or anchor),
and the README is the front door."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from common import ROOT
from pydantic import BaseModel

from stack.spec.models import Spec

DOCS = ROOT / "docs"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_references_are_the_code_s_own_words() -> None:
    """`python docs/gen_reference.py` writes them; a field or an option changed without it fails here."""
    generator = _generator()
    assert (DOCS / "reference" / "fields.md").read_text() == generator.fields_page(), "run docs/gen_reference.py"
    assert (DOCS / "reference" / "cli.md").read_text() == generator.cli_page(), "run docs/gen_reference.py"


def test_every_field_of_stack_yaml_says_why() -> None:
    assert _generator().undocumented() == []


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    import click

    from stack.cli import cli

    page = (DOCS / "reference" / "cli.md").read_text()
    context = click.Context(cli, info_name="stack")
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        assert command is not None
        assert f"## `stack {name}`" in page, name
        section = page.split(f"## `stack {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option):
                assert all(f"`{opt}`" in section for opt in param.opts), (name, param.opts)


def _keys(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in [f"{path}{key}", *_keys(value, f"{path}{key}.")]]
    if isinstance(node, list):
        return [k for item in node for k in _keys(item, path.rstrip(".") + "[].")]
    return []


def _fields(model: type[BaseModel], path: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        key = f"{path}{field.alias or name}"
        found.add(key)
        args = [field.annotation, *getattr(field.annotation, "__args__", ())]
        for arg in args:
            inner = [arg, *getattr(arg, "__args__", ())]
            for candidate in inner:
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    listed = str(field.annotation).startswith("list")
                    found |= _fields(candidate, f"{key}{'[]' if listed else ''}.")
    return found


def test_the_annotated_stack_yaml_names_only_fields_that_exist() -> None:
    page = (DOCS / "reference" / "stack-yaml.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert block is not None
    shown = set(_keys(yaml.safe_load(block.group(1))))
    assert shown - _fields(Spec) == set()
    assert {"project", "apis[].name", "apis[].predictor.path", "gateway.port"} <= shown


def test_the_site_builds_with_no_broken_link(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is missing: pip install -e '.[docs]' (the test extra has it)")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "reference" / "fields" / "index.html").is_file()
    assert yaml.safe_load((ROOT / "mkdocs.yml").read_text())["docs_dir"] == "docs"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    assert pages == listed, pages ^ listed  # every page is in the navigation, and every entry is a page


def test_the_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert commands[0].startswith("pip install -e '.[local]' && stack up --local examples/echo")
    assert "<!-- test-command -->\n```bash\npip install -e '.[test]' && python -m pytest\n```" in readme
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 10  # it points into the site for everything it no longer holds
    for target in links:
        assert (ROOT / target).is_file(), target
