"""Generate the reference pages from the code, so they cannot drift: `python docs/gen_reference.py`.

- docs/reference/fields.md: every field of `stack.yaml`, from the pydantic models (stack/spec/): its path,
  type, default, and why — the comments written beside the field in the model's source.
- docs/reference/cli.md: every command of `stack` with its arguments and options, from click.

The suite (tests/test_docs.py) regenerates both and fails when the committed pages differ.
"""

from __future__ import annotations

import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stack.spec import units  # noqa: E402
from stack.spec.models import Spec  # noqa: E402

FIELDS_PAGE = ROOT / "docs" / "reference" / "fields.md"
CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"
UNITS = {
    units.parse_duration: ("duration", units.format_duration),
    units.parse_memory: ("memory", units.format_memory),
    units.parse_cpu: ("CPU", lambda value: f"{value:g}"),
    units.parse_fraction: ("fraction", lambda value: f"{value:g}"),
    units.parse_gpu: ("GPUs", lambda value: f"{value:g}"),
}


# -- stack.yaml ------------------------------------------------------------------------------------


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comments in the model's source: the lines just above it and the one on its line."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"^    (\w+)\s*:", line)
        if match is None or match.group(1) not in model.model_fields:
            continue
        above = []
        previous = number - 1
        while previous >= 1 and lines[previous - 1].strip().startswith("#"):
            above.insert(0, comments.get(previous, ""))
            previous -= 1
        beside = [comments[number]] if number in comments else []
        text = " ".join(part for part in [*above, *beside] if part and not part.startswith("noqa"))
        found[match.group(1)] = text
    return found


def _unit(annotation: Any, metadata: list[Any]) -> tuple[str, Any] | None:
    for item in metadata:
        func = getattr(item, "func", None)
        if func in UNITS:
            return UNITS[func]
    for arg in get_args(annotation):
        found = _unit(arg, list(getattr(arg, "__metadata__", ())))
        if found is not None:
            return found
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field holds (directly, in a list, or as an option)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation: Any, unit: tuple[str, Any] | None) -> str:
    if unit is not None:
        return unit[0] + (" or null" if type(None) in get_args(annotation) else "")
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a, None) for a in get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0], None)
    if origin in (list, tuple):
        args = get_args(annotation)
        return f"list of {_type_name(args[0], None)}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "block"
    return {str: "text", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _default(field: FieldInfo, unit: tuple[str, Any] | None) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        return "`null`"
    if isinstance(value, BaseModel):
        return "(its fields' defaults)"
    if unit is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return f"`{unit[1](value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if isinstance(value, list | dict) and not value:
        return f"`{'[]' if isinstance(value, list) else '{}'}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], path: str, seen: set[type[BaseModel]]) -> list[tuple[str, list[str]]]:
    """(section, table rows) for a model and, after it, the models its fields hold."""
    comments = field_comments(model)
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = field.alias or name
        unit = _unit(field.annotation, list(field.metadata))
        why = comments.get(name, "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation, unit)} | {_default(field, unit)} | {why} |")
        for held in _models_in(field.annotation):
            if held not in seen:
                where = f"{path}.{key}" if path else key
                nested.append((held, where + ("[]" if get_origin(field.annotation) is list else "")))
    sections = [(path or "(top level)", rows)]
    seen.add(model)
    for held, held_path in nested:
        if held not in seen:
            sections += _rows(held, held_path, seen)
    return sections


def undocumented() -> list[str]:
    """Fields whose source says nothing of what they are for (each must: the reference shows it)."""
    missing = []
    for section, rows in _rows(Spec, "", set()):
        missing += [f"{section}: {row.split('`')[1]}" for row in rows if row.rstrip().endswith("|  |")]
    return missing


def fields_page() -> str:
    out = [
        "# Every field of `stack.yaml`",
        "",
        "Generated from the schema (`stack/spec/`) by `python docs/gen_reference.py`: each field's type, its",
        "default, and why, in the words written beside it in the code; the suite fails when this page and the",
        "code differ. [`stack.yaml` reference](stack-yaml.md) shows them as one annotated file.",
        "",
        "Durations are `250ms`, `10s`, `5m`, `1h` or seconds; memory `512Mi`, `2Gi` (1024-based) or `500M`,",
        "`2G` (1000-based); CPU `0.5`, `2` or `500m`. Unknown keys are errors, with the likely intended key.",
    ]
    for section, rows in _rows(Spec, "", set()):
        out += ["", f"## `{section}`", "", "| field | type | default | what, and why |", "|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"


# -- the CLI ---------------------------------------------------------------------------------------


def _option_row(param: click.Parameter) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    help_text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    default = param.default
    shown = ""
    unset = "UNSET" in repr(default)  # click's sentinel for an option without a default
    if isinstance(param, click.Option) and not param.is_flag and not unset and default not in (None, ()):
        shown = (
            f"`{param.show_default}`"
            if callable(default) and isinstance(param.show_default, str)
            else ("(computed)" if callable(default) else f"`{default}`")
        )
    if isinstance(param, click.Option) and param.envvar:
        help_text += f" (environment: `{param.envvar}`)"
    return f"| {names} | {shown} | {help_text} |"


def cli_page() -> str:
    from stack.cli import cli

    out = [
        "# CLI reference",
        "",
        "Generated from the `stack` command itself (click) by `python docs/gen_reference.py`: the suite fails",
        "when this page and the code differ. Every command takes the project as PATH (a directory or a spec",
        "file; `-p PATH` where a command has other arguments); every command exits 0 only on success and prints",
        "errors as one paragraph (`stack --debug COMMAND` shows the traceback).",
    ]
    context = click.Context(cli, info_name="stack")
    for name in sorted(cli.list_commands(context)):
        command = cli.get_command(context, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=f"stack {name}", parent=context)
        usage = " ".join(command.collect_usage_pieces(sub))
        help_text = inspect.cleandoc(command.help or "")
        out += ["", f"## `stack {name}`", "", f"```\nstack {name} {usage}\n```", "", help_text]
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        if options:
            out += ["", "| option | default | what |", "|---|---|---|", *(_option_row(p) for p in options)]
    return "\n".join(out) + "\n"


def main() -> None:
    FIELDS_PAGE.write_text(fields_page())
    CLI_PAGE.write_text(cli_page())
    print(f"wrote {FIELDS_PAGE.relative_to(ROOT)} and {CLI_PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
