"""Pipelines' checks of stack.yaml: each API's `calls` name other realtime APIs of the spec, and no
chain of calls comes back to where it started (the path is shown: a → b → a)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call_checks(
    apis: list[Any], names: dict[str, int], add: Any, unknown: Callable[[str, dict[str, int]], str]
) -> None:
    """Each API's `calls` name other realtime APIs of the spec, and no chain of calls comes back."""
    kinds = {a.get("name"): a.get("kind", "RealtimeAPI") for a in apis if isinstance(a, dict)}
    graph: dict[str, list[str]] = {}
    for index, api in enumerate(apis):
        calls = api.get("calls") if isinstance(api, dict) else None
        name = api.get("name") if isinstance(api, dict) else None
        if not isinstance(calls, list) or not isinstance(name, str):
            continue
        if calls and kinds.get(name) == "BatchAPI":
            add(("apis", index, "calls"), "a BatchAPI runs jobs, not a pipeline stage: remove calls")
            continue
        for position, callee in enumerate(calls):
            if not isinstance(callee, str):
                continue
            at = ("apis", index, "calls", position)
            if callee == name:
                add(at, f"API {name!r} calls itself; a stage calls the next stage, not its own endpoint")
            elif callee not in names:
                add(at, unknown(callee, names))
            elif kinds.get(callee) == "BatchAPI":
                add(at, f"{callee!r} is a BatchAPI: it takes jobs, not calls (submit a job to its endpoint)")
            elif callee in calls[:position]:
                add(at, f"{callee!r} is listed twice")
            else:
                graph.setdefault(name, []).append(callee)
    for cycle in _cycles(graph):
        index = names[cycle[0]]
        position = next(i for i, c in enumerate(apis[index]["calls"]) if c == cycle[1])
        add(("apis", index, "calls", position), f"calls go round in a cycle: {' → '.join(cycle)}")


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle of the call graph once, as the path that closes it (a → b → a)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for callee in graph.get(node, []):
            if callee in path:
                cycle = [*path[path.index(callee) :], callee]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif callee not in done:
                visit(callee, [*path, callee])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found
