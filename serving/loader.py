"""Find, import and construct the user's predictor class.

Every failure here is a `StartupError` whose message names the file and line,
so a replica that cannot start says why in one sentence.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.codec import Headers

# Looked for among the classes *defined* in the file (one imported from elsewhere is never served).
DEFAULT_CLASSES = ("PythonPredictor", "ONNXPredictor", "TensorFlowPredictor", "Predictor")
# batch_id: Cortex's realtime server passes None; accepted so Cortex predictors run unmodified.
PREDICT_PARAMS = frozenset({"payload", "query_params", "headers", "batch_id"})
# response: what predict returned (as in Cortex); status_code: the HTTP status that was sent.
POST_PREDICT_PARAMS = frozenset({"payload", "query_params", "headers", "response", "status_code"})
# apis: the handle to the APIs of `calls` (serving.calls.Apis), empty without calls.
INIT_PARAMS = frozenset({"apis", "config", "python_client", "onnx_client", "tensorflow_client", "job_spec"})
MODULE_NAME = "stack_user_predictor"


# Import names whose package is named otherwise, for the hint on a ModuleNotFoundError.
PACKAGE_OF = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
}


class StartupError(Exception):
    """The predictor cannot be loaded; the message is meant for the user."""


@dataclass(frozen=True)
class Handler:
    """A bound predictor method and the names of the arguments it takes."""

    func: Callable[..., Any]
    params: frozenset[str]
    takes_all: bool  # **kwargs: give it everything we have
    is_async: bool
    is_async_gen: bool

    def call(self, **available: Any) -> Any:
        if self.takes_all:
            return self.func(**available)
        return self.func(**{k: v for k, v in available.items() if k in self.params})

    def predict_caller(self) -> Callable[[Any, Any, Any], Any]:
        """A call taking (payload, query_params, headers) with no per-request introspection."""
        func, params = self.func, self.params
        if self.takes_all or params == PREDICT_PARAMS:
            return lambda p, q, h: func(payload=p, query_params=q, headers=Headers(h), batch_id=None)
        if params == {"payload"}:
            return lambda p, q, h: func(p)
        if not params:
            return lambda p, q, h: func()
        return lambda p, q, h: func(
            **{
                k: v
                for k, v in (("payload", p), ("query_params", q), ("headers", h), ("batch_id", None))
                if k in params
            }
            | ({"headers": Headers(h)} if "headers" in params else {})
        )


@dataclass(frozen=True)
class LoadedPredictor:
    instance: Any
    predict: Handler
    post_predict: Handler | None
    path: Path

    @property
    def class_name(self) -> str:
        return type(self.instance).__name__


def load_predictor(
    path: str | Path,
    class_name: str | None = None,
    config: dict[str, Any] | None = None,
    python_path: list[str] | None = None,
    clients: dict[str, Any] | None = None,
) -> LoadedPredictor:
    """Import the file, find the class, check its methods, construct it.

    `clients` are what `__init__` may ask for by name besides `config`: `python_client`,
    `onnx_client` (None when the API serves no models) and `job_spec` (None on realtime APIs).
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise StartupError(f"{path}: predictor file not found")
    _extend_sys_path(file, python_path or [])
    module = _import_file(file)
    cls = _find_class(module, file, class_name)
    predict = _method(cls, "predict", file, PREDICT_PARAMS)
    if predict is None:
        raise StartupError(f"{_where(file, cls)}: class {cls.__name__} has no predict method")
    post_predict = _method(cls, "post_predict", file, POST_PREDICT_PARAMS)
    available = {
        "python_client": None,
        "onnx_client": None,
        "tensorflow_client": None,
        "job_spec": None,
        "apis": {},
        **(clients or {}),
    }
    python_client = available.get("python_client")
    if python_client is not None:
        load_model = getattr(cls, "load_model", None)
        if load_model is None:
            raise StartupError(
                f"{_where(file, cls)}: class {cls.__name__} has no load_model(self, model_path) method, which "
                "python_client.get_model calls (predictor.multi_model_reloading is set)"
            )
    instance = _construct(cls, file, {"config": config or {}, **available})
    if python_client is not None:
        python_client._store.loader = instance.load_model
    return LoadedPredictor(
        instance=instance,
        predict=_bind(instance, "predict", predict),
        post_predict=_bind(instance, "post_predict", post_predict) if post_predict else None,
        path=file,
    )


def _extend_sys_path(file: Path, python_path: list[str]) -> None:
    # The predictor's own directory first, so sibling modules import as in a script.
    for entry in [str(file.parent), *(str((file.parent / p).resolve()) for p in python_path)]:
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _import_file(file: Path) -> Any:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, file)
    if spec is None or spec.loader is None:
        raise StartupError(f"{file}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise StartupError(f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except BaseException as exc:
        raise StartupError(f"{_failing_line(exc, file)}: importing the predictor failed: {_describe(exc)}") from exc
    return module


def _find_class(module: Any, file: Path, class_name: str | None) -> type:
    defined = {n: v for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == MODULE_NAME}
    if class_name:
        candidate = getattr(module, class_name, None)
        if isinstance(candidate, type):
            return candidate
        names: tuple[str, ...] = (class_name,)
    else:
        names = DEFAULT_CLASSES
        found = [n for n in DEFAULT_CLASSES if n in defined]
        if len(found) == 1:
            return defined[found[0]]
        if len(found) > 1:
            raise StartupError(
                f"{file}: it defines several predictor classes ({', '.join(found)}); "
                "name the one to serve with predictor.class in stack.yaml"
            )
    classes = sorted(defined)
    found_text = f"classes defined there: {', '.join(classes)}" if classes else "it defines no class"
    wanted = " or ".join(names)
    raise StartupError(f"{file}: no class {wanted} ({found_text}); set predictor.class in stack.yaml")


def _method(cls: type, name: str, file: Path, allowed: frozenset[str]) -> Callable[..., Any] | None:
    func = getattr(cls, name, None)
    if func is None:
        return None
    if not callable(func):
        raise StartupError(f"{_where(file, cls)}: {cls.__name__}.{name} is not a method")
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in allowed:
            raise StartupError(
                f"{_where(file, func)}: {cls.__name__}.{name}() has unknown parameter "
                f"'{param.name}'; it may take any of: {', '.join(sorted(allowed))}"
            )
    method: Callable[..., Any] = func
    return method


def _bind(instance: Any, name: str, func: Callable[..., Any]) -> Handler:
    params = list(inspect.signature(func).parameters.values())[1:]
    return Handler(
        func=getattr(instance, name),
        params=frozenset(p.name for p in params),
        takes_all=any(p.kind == p.VAR_KEYWORD for p in params),
        is_async=inspect.iscoroutinefunction(func),
        is_async_gen=inspect.isasyncgenfunction(func),
    )


def _construct(cls: type, file: Path, available: dict[str, Any]) -> Any:
    """`__init__`'s arguments injected by name: config, apis, python_client, onnx_client, tensorflow_client,
    job_spec."""
    init = next((vars(base)["__init__"] for base in cls.__mro__ if "__init__" in vars(base)), object.__init__)
    if init is object.__init__:  # object's takes **kwargs but refuses them
        arguments: dict[str, Any] = {}
    else:
        params = list(inspect.signature(init).parameters.values())[1:]
        if any(p.kind == p.VAR_KEYWORD for p in params):
            arguments = dict(available)
        else:
            for param in params:
                if param.kind not in (param.VAR_POSITIONAL,) and param.name not in INIT_PARAMS:
                    raise StartupError(
                        f"{_where(file, init)}: {cls.__name__}.__init__() has unknown parameter '{param.name}'; "
                        f"it may take any of: {', '.join(sorted(INIT_PARAMS))}"
                    )
            arguments = {p.name: available.get(p.name) for p in params if p.name in INIT_PARAMS}
            # As Cortex: a predictor that asks for a model client needs models to serve (not a None that
            # fails every request later with AttributeError).
            clients = (
                ("python_client", "multi_model_reloading"),
                ("onnx_client", "models"),
                ("tensorflow_client", "models"),
            )
            for name, field in clients:
                if name in arguments and arguments[name] is None:
                    raise StartupError(
                        f"{_where(file, init)}: {cls.__name__}.__init__() takes {name}, but the API serves no "
                        f"models: set predictor.{field} in stack.yaml (a path, paths or dir of models)"
                    )
    try:
        return cls(**arguments)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise StartupError(f"{_failing_line(exc, file)}: {cls.__name__}.__init__ failed: {_describe(exc)}") from exc


def _where(file: Path, obj: Any) -> str:
    try:
        return f"{file}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return str(file)


def _failing_line(exc: BaseException, file: Path) -> str:
    """Where it was raised in the project's own code (beside the predictor, not an installed library): the
    deepest such frame, and the predictor's line that led there when that is another file."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return str(file)
    project = file.parent
    own = [f for f in frames if _in_project(Path(f.filename), project)]
    if not own:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    raised = own[-1]
    at = f"{raised.filename}:{raised.lineno}"
    if Path(raised.filename).resolve() != file:
        entry = [f for f in own if Path(f.filename).resolve() == file]
        if entry:
            at += f" (from {Path(entry[-1].filename).name}:{entry[-1].lineno})"
    return at


def _in_project(path: Path, project: Path) -> bool:
    resolved = path.resolve()
    return resolved.is_relative_to(project) and not any(
        part in ("site-packages", "dist-packages") for part in resolved.parts
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        package = PACKAGE_OF.get(top, top)
        described += (
            f"; add {package} to the API's requirements.txt (predictor.requirements) so its image installs it, "
            "or install it where the replicas run (`stack up --local`, `stack serve`: this Python)"
        )
    return described
