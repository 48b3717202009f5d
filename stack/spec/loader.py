"""Load `stack.yaml` into a validated `Spec`, or fail with every problem at once.

Each problem names the file, line and column, the field path, what was wrong,
and for a misspelt key the likely intended one. Positions come from PyYAML's
node tree; messages come from pydantic, reworded for people.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stack.spec import models
from stack.spec.call_checks import call_checks
from stack.spec.file_checks import compile_problems, file_checks
from stack.spec.problems import Path_, Problem, SpecError, dotted
from stack.spec.source import SPEC_FILENAME, parse_yaml, read_spec_text
from stack.spec.tls_checks import check_tls_files
from stack.spec.units import format_duration, parse_duration


@dataclass(frozen=True)
class LoadedSpec:
    spec: models.Spec
    path: Path  # the stack.yaml file
    warnings: list[str] = field(default_factory=list)  # valid, but the user should know (keys in the file)
    secret_env: list[str] = field(default_factory=list)  # environment variables that hold API keys
    secret_files: list[Path] = field(default_factory=list)  # files that hold them (never in an image)

    @property
    def root(self) -> Path:
        return self.path.parent

    def compile_problems(self) -> list[Problem]:
        """The predictors that do not compile (`stack validate` and `stack up` check; other commands need
        not: a broken predictor must not stop `stack down`)."""
        pairs = [(a.name, a.predictor.path) for a in self.spec.every_api if a.predictor.image is None]
        return compile_problems(self.root, pairs)

    def predictor_file(self, api: models.Api) -> Path:
        return (self.root / api.predictor.path).resolve()

    def requirements_file(self, api: models.Api) -> Path | None:
        given = api.predictor.requirements
        candidate = self.root / (given or "requirements.txt")
        return candidate.resolve() if candidate.is_file() else None


def find_spec_file(path: str | Path = ".") -> Path:
    target = Path(path)
    return target / SPEC_FILENAME if target.is_dir() else target


def load_spec(path: str | Path = ".", secrets: bool = True, environ: Mapping[str, str] | None = None) -> LoadedSpec:
    """The spec at `path`, validated. `secrets=False`: an API key's unset environment variable is
    no error (its keys are left out), for commands that never hand keys to replicas. `environ`: where
    `${VAR}` is read (default: this process's environment) — a long-running process that loads the spec
    again for a command uses the command's environment, never its own."""
    file = find_spec_file(path)
    shown = str(file)
    text = read_spec_text(file, Path(path))
    data, positions = parse_yaml(text, shown)
    secret_env: list[str] = []
    secret_files = _secret_files(data, file.resolve().parent)
    problems, warnings = _resolve_api_keys(
        data, file.resolve().parent, positions, shown, secret_env, secrets, os.environ if environ is None else environ
    )
    problems += _validate(data, positions, shown) + _cross_checks(data, file.resolve().parent, positions, shown)
    gateway = data.get("gateway") if isinstance(data.get("gateway"), dict) else {}
    warnings += check_tls_files(gateway.get("tls"), file.resolve().parent, _adder(problems, positions, shown))
    if problems:
        raise SpecError(sorted(set(problems), key=lambda p: (p.line, p.column, p.field)))
    return LoadedSpec(models.Spec.model_validate(data), file.resolve(), warnings, secret_env, secret_files)


def _adder(problems: list[Problem], positions: dict[Path_, tuple[int, int]], shown: str) -> Any:
    def add(path: Path_, message: str) -> None:
        problems.append(Problem(shown, *_nearest(path, positions), dotted(path), message))

    return add


def _secret_files(data: Any, root: Path) -> list[Path]:
    """gateway.api_keys_file and each named key's key_file, read before the keys are resolved (they replace
    them): files never copied into an image."""
    gateway = data.get("gateway") if isinstance(data, dict) else None
    if not isinstance(gateway, dict):
        return []
    files = [gateway.get("api_keys_file")]
    files += [k.get("key_file") for k in gateway.get("keys") or [] if isinstance(k, dict)]
    return [(root / f).resolve() for f in files if isinstance(f, str) and f]


ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _resolve_api_keys(
    data: Any,
    root: Path,
    positions: dict[Path_, tuple[int, int]],
    shown: str,
    secret_env: list[str],
    required: bool = True,
    environ: Mapping[str, str] = os.environ,
) -> tuple[list[Problem], list[str]]:
    """gateway.api_keys may name environment variables (`${VAR}`, one key or several split by commas)
    and gateway.api_keys_file a file of keys, one per line: secrets stay out of stack.yaml. The keys
    are resolved here, so every later layer sees one list."""
    problems: list[Problem] = []
    warnings: list[str] = []
    gateway = data.get("gateway") if isinstance(data, dict) else None
    if not isinstance(gateway, dict):
        return problems, warnings

    def add(path: Path_, message: str) -> None:
        line, col = _nearest(path, positions)
        problems.append(Problem(shown, line, col, dotted(path), message))

    def from_env(value: str, at: Path_) -> list[str] | None:
        match = ENV_REFERENCE.match(value.strip())
        if match is None:
            return None
        name = match.group(1)
        secret_env.append(name)
        if name not in environ:
            if required:
                add(at, f"environment variable {name} is not set (export it, or use gateway.api_keys_file)")
            return []
        return [k.strip() for k in environ[name].split(",") if k.strip()]

    keys = gateway.get("api_keys")
    literal = 0
    if isinstance(keys, str):
        resolved = from_env(keys, ("gateway", "api_keys"))
        if resolved is None:
            add(("gateway", "api_keys"), "expected a list of keys or ${ENV_VAR}, e.g. api_keys: ${STACK_API_KEYS}")
        gateway["api_keys"] = resolved or []
    elif isinstance(keys, list):
        flat: list[Any] = []
        for index, key in enumerate(keys):
            resolved = from_env(key, ("gateway", "api_keys", index)) if isinstance(key, str) else None
            if resolved is None:
                literal += 1
                flat.append(key)
            else:
                flat.extend(resolved)
        gateway["api_keys"] = flat
    key_file = gateway.get("api_keys_file")
    if key_file is not None:
        at: Path_ = ("gateway", "api_keys_file")
        if not isinstance(key_file, str) or not key_file:
            add(at, "expected the path of a file with one API key per line")
        else:
            path = (root / key_file).resolve()
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                if required:
                    add(at, f"cannot read {path}: {exc.strerror or exc}")
                lines = []
            found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            if not found and not problems and required:
                add(at, f"{path} holds no key (one per line; # starts a comment)")
            gateway["api_keys"] = [*(gateway.get("api_keys") or []), *found]
    if literal:
        warnings.append(
            f"{shown}: gateway.api_keys holds {literal} key(s) in the file itself; anyone who can read "
            "stack.yaml (or its repository) has them. Prefer api_keys: ${STACK_API_KEYS} or api_keys_file."
        )
    named = gateway.get("keys")
    if isinstance(named, list):
        _resolve_named_keys(data, named, root, add, warnings, shown, environ, secret_env, required)
    return problems, warnings


def _resolve_named_keys(
    data: dict[str, Any],
    named: list[Any],
    root: Path,
    add: Any,
    warnings: list[str],
    shown: str,
    environ: Mapping[str, str],
    secret_env: list[str],
    required: bool,
) -> None:
    """gateway.keys: each key from `${VAR}`, a literal (warned about) or key_file, checked against the others
    and the APIs it names."""
    callable_names = [a.get("name") for a in data.get("apis") or [] if isinstance(a, dict)]
    callable_names += [s.get("name") for s in data.get("splitters") or [] if isinstance(s, dict)]
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, int] = {}
    plain = [k for k in (data["gateway"].get("api_keys") or []) if isinstance(k, str)]
    for index, entry in enumerate(named):
        if not isinstance(entry, dict):
            continue
        at: Path_ = ("gateway", "keys", index)
        key, key_file = entry.get("key"), entry.get("key_file")
        if key is not None and key_file is not None:
            add((*at, "key_file"), "give key or key_file, not both")
            continue
        if isinstance(key, str) and (match := ENV_REFERENCE.match(key.strip())):
            name = match.group(1)
            secret_env.append(name)
            if name not in environ:
                if required:
                    add((*at, "key"), f"environment variable {name} is not set (export it, or use key_file)")
                entry["key"] = ""
            else:
                entry["key"] = environ[name].strip()
        elif isinstance(key, str):
            warnings.append(
                f"{shown}: gateway.keys[{index}] ({entry.get('name')}) holds its key in the file itself; "
                "anyone who can read stack.yaml has it. Prefer key: ${VAR} or key_file."
            )
        elif isinstance(key_file, str) and key_file:
            path = (root / key_file).resolve()
            try:
                lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
            except OSError as exc:
                if required:
                    add((*at, "key_file"), f"cannot read {path}: {exc.strerror or exc}")
                lines = [""]
            if not lines and required:
                add((*at, "key_file"), f"{path} holds no key")
            entry.pop("key_file")
            entry["key"] = lines[0] if lines else ""
        resolved = entry.get("key")
        if isinstance(resolved, str) and resolved:
            if resolved in seen_keys or resolved in plain:
                other = f"gateway.keys[{seen_keys[resolved]}]" if resolved in seen_keys else "gateway.api_keys"
                add((*at, "key"), f"the same key as {other}: each caller needs its own key")
            seen_keys.setdefault(resolved, index)
            if len(resolved) < 16:
                warnings.append(
                    f"{shown}: gateway.keys[{index}] ({entry.get('name')}): a key of {len(resolved)} characters "
                    "is easy to guess; use 16 or more (`openssl rand -hex 16`)"
                )
            if any(c.isspace() or not c.isprintable() for c in resolved):
                add((*at, "key"), "a key is one word of printable characters (no spaces)")
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen_names:
                add((*at, "name"), f"gateway.keys[{seen_names[name]}] has this name too: each key needs its own")
            seen_names.setdefault(name, index)
        apis = entry.get("apis")
        if isinstance(apis, list):
            for n, api in enumerate(apis):
                if isinstance(api, str) and api not in callable_names:
                    close = difflib.get_close_matches(api, [c for c in callable_names if isinstance(c, str)], 1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    known = ", ".join(c for c in callable_names if isinstance(c, str)) or "none"
                    add((*at, "apis", n), f"no API or splitter {api!r}{hint} (the stack has: {known})")


# -- YAML with positions -----------------------------------------------------


# -- validation ----------------------------------------------------------------


def _validate(data: dict[str, Any], positions: dict[Path_, tuple[int, int]], shown: str) -> list[Problem]:
    try:
        models.Spec.model_validate(data)
    except ValidationError as exc:
        return [_problem(error, positions, shown) for error in exc.errors()]
    return []


def _problem(error: Any, positions: dict[Path_, tuple[int, int]], shown: str) -> Problem:
    loc = _yaml_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        line, col = positions.get((*loc, "<key>")) or _nearest(loc, positions)
        return Problem(shown, line, col, dotted(loc), _unknown_field(loc))
    if kind == "missing":
        line, col = _nearest(loc[:-1], positions)
        return Problem(shown, line, col, dotted(loc), "required field is missing")
    line, col = _nearest(loc, positions)
    return Problem(shown, line, col, dotted(loc), _reword(error))


def _yaml_path(loc: Path_) -> Path_:
    # pydantic adds the union member or validator name to some locations; drop them.
    fields: dict[str | int, str | int] = {"class_name": "class"}
    return tuple(fields.get(p, p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def _nearest(loc: Path_, positions: dict[Path_, tuple[int, int]]) -> tuple[int, int]:
    for end in range(len(loc), -1, -1):
        if loc[:end] in positions:
            return positions[loc[:end]]
    return (1, 1)


# Cortex's names for fields this spec has under another name or place, for a Cortex user's first spec.
CORTEX_NAMES = {
    "server_side_batching": "use `predictor.batching` (max_batch_size, batch_interval)",
    "update_strategy": "use `update` (max_surge, max_unavailable)",
    "max_replica_concurrency": "use `predictor.max_concurrency`",
    "api_gateway": "drop it: the gateway is Traefik, set under `gateway`",
    "local_port": "drop it: every API is reached at the gateway's port, under its endpoint",
    "inf": "drop it: AWS Inferentia is not supported here",
    "tensorflow_serving_image": "drop it: TensorFlow runs in the replica here (no TensorFlow Serving sidecar)",
    "signature_key": "drop it: a TensorFlow-only field",
}


def _unknown_field(loc: Path_) -> str:
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if key in CORTEX_NAMES:
        advice = CORTEX_NAMES[key]
        return f"unknown field `{key}` (Cortex's): {advice}; `stack import cortex.yaml` converts a whole file"
    if model is None:
        return "unknown field"
    names = [f.alias or name for name, f in model.model_fields.items()]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown field `{key}` — did you mean `{close[0]}`?"
    return f"unknown field `{key}`; expected one of: {', '.join(names)}"


def _model_at(path: Path_) -> type[BaseModel] | None:
    model: type[BaseModel] = models.Spec
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _reword(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    given = error.get("input")
    if error["type"] in (
        "int_parsing",
        "int_type",
        "float_parsing",
        "float_type",
        "bool_type",
        "bool_parsing",
        "string_type",
        "dict_type",
        "list_type",
        "model_type",
        "model_attributes_type",
    ):
        message = f"{message[0].lower()}{message[1:]}, got {_show(given)}"
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1] in ("name", "project"):
        message = f"{_show(given)} is not a valid name: use {models.NAME_RULE}"
    return message[0].lower() + message[1:]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# -- checks across APIs and against the file system ----------------------------
# These read the raw YAML data so they run even when other fields are invalid:
# the user sees every problem in one go.


def _cross_checks(
    data: dict[str, Any], root: Path, positions: dict[Path_, tuple[int, int]], shown: str
) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: Path_, message: str) -> None:
        line, col = _nearest(path, positions)
        problems.append(Problem(shown, line, col, dotted(path), message))

    apis = data.get("apis")
    names: dict[str, int] = {}
    endpoints: dict[str, int] = {}
    for index, api in enumerate(apis if isinstance(apis, list) else []):
        if not isinstance(api, dict):
            continue
        name = api.get("name")
        networking: dict[str, Any] = api["networking"] if isinstance(api.get("networking"), dict) else {}
        endpoint = networking.get("endpoint") or (f"/{name}" if isinstance(name, str) else None)
        duplicate_name = isinstance(name, str) and name in names
        if duplicate_name and isinstance(name, str):
            add(("apis", index, "name"), f"API name {name!r} is already used by apis[{names[name]}]")
        if isinstance(name, str):
            names.setdefault(name, index)
        if isinstance(endpoint, str):
            endpoint = endpoint.rstrip("/") or "/"
            # A repeated name repeats its default endpoint: one message is enough.
            if endpoint in endpoints and not (duplicate_name and not networking.get("endpoint")):
                where = (
                    ("apis", index, "networking", "endpoint") if networking.get("endpoint") else ("apis", index, "name")
                )
                add(where, f"endpoint {endpoint} is already used by apis[{endpoints[endpoint]}]")
            endpoints.setdefault(endpoint, index)
        predictor = api.get("predictor")
        if isinstance(predictor, dict):
            problems += file_checks(predictor, root, ("apis", index, "predictor"), add)
        _window_check(api, data.get("prometheus"), ("apis", index, "autoscaling", "window"), add)
    _splitter_checks(data.get("splitters"), names, endpoints, add)
    call_checks(apis if isinstance(apis, list) else [], names, add, _unknown_api)
    splitters = data.get("splitters")
    batch = (
        {a.get("name") for a in apis if isinstance(a, dict) and a.get("kind") == "BatchAPI"}
        if isinstance(apis, list)
        else set()
    )
    for index, splitter in enumerate(splitters if isinstance(splitters, list) and batch else []):
        for position, item in enumerate(splitter.get("apis") or [] if isinstance(splitter, dict) else []):
            if isinstance(item, dict) and item.get("name") in batch:
                add(
                    ("splitters", index, "apis", position, "name"),
                    "a BatchAPI takes jobs, not requests: it cannot be split",
                )
    for index, splitter in enumerate(splitters if isinstance(splitters, list) else []):
        if isinstance(splitter, dict) and isinstance(splitter.get("canary"), dict):
            _interval_check(splitter["canary"], data.get("prometheus"), ("splitters", index, "canary", "interval"), add)
    return problems


def _splitter_checks(splitters: Any, names: dict[str, int], endpoints: dict[str, int], add: Any) -> None:
    """Each splitter's APIs exist, its endpoint is its own; suggestions for misspelt API names."""
    seen: dict[str, int] = {}
    for index, splitter in enumerate(splitters if isinstance(splitters, list) else []):
        if not isinstance(splitter, dict):
            continue
        members = splitter.get("apis")
        for position, item in enumerate(members if isinstance(members, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name not in names:
                add(("splitters", index, "apis", position, "name"), _unknown_api(name, names))
        canary = splitter.get("canary")
        if isinstance(canary, dict) and isinstance(canary.get("api"), str):
            listed = [i.get("name") for i in (members if isinstance(members, list) else []) if isinstance(i, dict)]
            if canary["api"] not in listed:
                close = difflib.get_close_matches(canary["api"], [n for n in listed if isinstance(n, str)], n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it to the splitter's apis"
                add(
                    ("splitters", index, "canary", "api"),
                    f"the canary {canary['api']!r} is not one of this splitter's APIs; {hint}",
                )
        mirror = splitter.get("mirror")
        if isinstance(mirror, dict) and isinstance(mirror.get("api"), str) and mirror["api"] not in names:
            add(("splitters", index, "mirror", "api"), _unknown_api(mirror["api"], names))
        given = splitter.get("networking")
        networking: dict[str, Any] = given if isinstance(given, dict) else {}
        name = splitter.get("name")
        endpoint = networking.get("endpoint") or (f"/{name}" if isinstance(name, str) else None)
        if isinstance(endpoint, str):
            endpoint = endpoint.rstrip("/") or "/"
            where = (
                ("splitters", index, "networking", "endpoint")
                if networking.get("endpoint")
                else ("splitters", index, "name")
            )
            if endpoint in endpoints:
                add(
                    where,
                    f"endpoint {endpoint} is already used by apis[{endpoints[endpoint]}]; "
                    "give the splitter another name or set its networking.endpoint",
                )
            elif endpoint in seen:
                add(where, f"endpoint {endpoint} is already used by splitters[{seen[endpoint]}]")
            seen.setdefault(endpoint, index)


def _unknown_api(name: str, names: dict[str, int]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; the spec has: {', '.join(names)}"
    return f"no API named {name!r}{hint}"


def _interval_check(canary: dict[str, Any], prometheus: Any, at: Path_, add: Any) -> None:
    """A canary's step is judged on the counters' change over it: it must span at least one scrape."""
    raw_scrape = prometheus.get("scrape_interval", 5.0) if isinstance(prometheus, dict) else 5.0
    try:
        interval = parse_duration(canary.get("interval", 60.0))
        scrape = parse_duration(raw_scrape)
    except (TypeError, ValueError):
        return
    if interval < scrape:
        add(
            at,
            f"interval {format_duration(interval)} is shorter than one scrape (prometheus.scrape_interval is "
            f"{format_duration(scrape)}): a step would end before its numbers do; make it at least "
            f"{format_duration(scrape)} or scrape more often",
        )


def _window_check(api: dict[str, Any], prometheus: Any, at: Path_, add: Any) -> None:
    """The autoscaler averages over `window`: fewer than two scrapes in it is no average at all."""
    autoscaling: dict[str, Any] = api["autoscaling"] if isinstance(api.get("autoscaling"), dict) else {}
    raw_scrape = prometheus.get("scrape_interval", 5.0) if isinstance(prometheus, dict) else 5.0
    try:
        window = parse_duration(autoscaling.get("window", 60.0))
        scrape = parse_duration(raw_scrape)
    except (TypeError, ValueError):
        return  # reported by the field's own validation
    if window < 2 * scrape and autoscaling.get("min_replicas", 1) != autoscaling.get("max_replicas", 100):
        add(
            at,
            f"window {format_duration(window)} holds fewer than two scrapes (prometheus.scrape_interval is "
            f"{format_duration(scrape)}); make it at least {format_duration(2 * scrape)} or scrape more often",
        )
