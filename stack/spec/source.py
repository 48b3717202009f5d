"""Reading a stack.yaml: a bounded read of UTF-8 text, YAML parsed safely and bounded (no alias bomb, no
self-referring alias, no nesting deep enough to exhaust the stack), and where each field is (line, column)
for the messages. The limits are far beyond any real spec; what passes them is read in bounded time and
memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stack.spec.problems import Path_, Problem, SpecError, dotted

SPEC_FILENAME = "stack.yaml"
MAX_SPEC_BYTES = 1 << 20  # 1 MiB: real specs are a few KiB; a bigger file is data that belongs beside it
MAX_VALUES = 100_000  # values once every alias is expanded: real specs have hundreds


def read_spec_text(file: Path, given: Path) -> str:
    """The spec file's text; a missing, unreadable, oversize or non-UTF-8 file is a SpecError saying so."""
    shown = str(file)
    try:
        size = file.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([Problem(shown, 0, 0, "", _too_big(size, shown))])
        with file.open("rb") as handle:  # read no more than the cap, even from a file still growing
            raw = handle.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError([Problem(shown, 0, 0, "", _too_big(len(raw), shown))])
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(shown, 1, 1, "", f"not UTF-8 text (byte {exc.start}): save it as UTF-8")]) from None
    except FileNotFoundError:
        where = given
        if where.is_dir() or not where.suffix:
            message = (
                f"no {SPEC_FILENAME} in {where.resolve()}: create one with `stack init NAME`, "
                "or give the directory (or the spec file) that has it"
            )
        else:
            message = f"{where.resolve()}: file not found"
        raise SpecError([Problem(shown, 0, 0, "", message)]) from None
    except IsADirectoryError:
        raise SpecError([Problem(shown, 0, 0, "", f"{file} is a directory, not a spec file")]) from None
    except OSError as exc:
        raise SpecError([Problem(shown, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    return text


def parse_yaml(text: str, shown: str) -> tuple[Any, dict[Path_, tuple[int, int]]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Problem(shown, 1, 1, "", "the file is empty; it needs at least `project:` and `apis:`")])
        _check_expansion(node, shown)  # before anything walks the aliases' expansion
        data = loader.construct_document(node)
    except RecursionError:
        raise SpecError([Problem(shown, 1, 1, "", "values nested too deeply to be a stack.yaml")]) from None
    except yaml.MarkedYAMLError as exc:
        line, column, message = _plain_yaml_error(exc)
        lines = text.splitlines()
        if 0 < line <= len(lines) and "${" in lines[line - 1]:
            message += '; inside [ ] or { }, quote an environment reference: "${VAR}"'
        raise SpecError([Problem(shown, line, column, "", f"YAML syntax error: {message}")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise SpecError(
            [Problem(shown, node.start_mark.line + 1, 1, "", f"expected a mapping of fields, got a {kind}")]
        )
    positions: dict[Path_, tuple[int, int]] = {}
    duplicates: list[Problem] = []
    _record(node, (), positions, duplicates, shown)
    if duplicates:
        raise SpecError(duplicates)
    return data, positions


def _too_big(size: int, shown: str) -> str:
    return (
        f"{shown}: the file is {size / 1024:,.0f} KiB; a stack.yaml is at most {MAX_SPEC_BYTES // 1024:,} KiB. "
        "Keep data (models, configs, lists) in files beside it and name them (predictor.config, predictor.models)"
    )


def _check_expansion(root: yaml.Node, shown: str) -> None:
    """YAML aliases reuse a node; what reads the document walks each use. A few nested aliases expand
    to billions of values (an alias bomb) and an alias inside its own anchor never ends: both are refused
    from the node graph, in time and memory linear in the file."""
    sizes: dict[int, int] = {}
    walking: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            walking.discard(key)
            sizes[key] = min(1 + sum(sizes[id(child)] for child in children), MAX_VALUES + 1)
            if sizes[key] > MAX_VALUES:
                line = node.start_mark.line + 1
                raise SpecError(
                    [
                        Problem(
                            shown,
                            line,
                            node.start_mark.column + 1,
                            "",
                            f"its aliases (*name) expand to more than {MAX_VALUES:,} values: a stack.yaml "
                            "needs far fewer; repeat less, or refer to a file",
                        )
                    ]
                )
            continue
        if key in sizes:
            continue
        if key in walking:
            mark = node.start_mark
            raise SpecError(
                [Problem(shown, mark.line + 1, mark.column + 1, "", "an alias refers to the value it is inside")]
            )
        walking.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _plain_yaml_error(exc: yaml.MarkedYAMLError) -> tuple[int, int, str]:
    """PyYAML's parser words, translated: where to look and what is most likely wrong."""
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    start = exc.context_mark
    opened = f"line {start.line + 1}" if start is not None else "above"
    problem = str(exc.problem or exc)
    context = str(exc.context or "")
    if "'\\t'" in problem or "\t" in problem:
        return line, column, "a tab character; YAML indents with spaces only: replace the tab with spaces"
    if problem.startswith("expected <block end>"):
        return (
            line,
            column,
            (
                f"this line's indentation does not fit the block it is in (the block starts at {opened}, "
                f"column {start.column + 1 if start else '?'}): keys of one mapping start in the same column, "
                "and a nested value is indented further than its key"
            ),
        )
    if problem == "mapping values are not allowed here":
        return (
            line,
            column,
            (
                "a `key: value` where none may be: this line is indented deeper than the key above it allows, "
                "or a value contains ': ' and needs quotes"
            ),
        )
    if "quoted scalar" in context:
        return (
            (start.line + 1, start.column + 1, "a quoted string is never closed: add its closing quote")
            if start
            else (
                line,
                column,
                "a quoted string is never closed",
            )
        )
    if "flow" in context and "<stream end>" in problem:
        return (
            (start.line + 1 if start else line),
            (start.column + 1 if start else column),
            ("the file ends inside a [ ] or { } value: a bracket is never closed"),
        )
    if "found duplicate anchor" in problem or "found undefined alias" in problem:
        return line, column, problem
    return line, column, problem


def _record(
    node: yaml.Node, path: Path_, positions: dict[Path_, tuple[int, int]], dups: list[Problem], shown: str
) -> None:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                dups.append(Problem(shown, line, col, dotted((*path, key)), "duplicate key; the later one would win"))
            seen.add(key)
            # A key's own position, so "unknown field" points at the key, not its value.
            positions[(*path, key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _record(value_node, (*path, key), positions, dups, shown)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), positions, dups, shown)
