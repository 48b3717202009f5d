"""`GET /openapi.json`: an OpenAPI 3.1 document of an API's routes, and payload validation.

When `predict`'s `payload` (or its return) is annotated with a pydantic model,
a TypedDict or a dataclass, its JSON Schema is in the document, and with
pydantic installed an invalid payload is refused with 422 naming the field
path before `predict` runs (`predict` then gets the validated value: a model
instance for a pydantic model).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

from serving.config import ServingConfig
from serving.errors import HTTPError
from serving.loader import LoadedPredictor

LOGGER = logging.getLogger("serving")
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
    "required": ["error"],
}


def _annotations(predictor: LoadedPredictor | None) -> tuple[Any, Any]:
    if predictor is None:
        return None, None
    func = getattr(type(predictor.instance), "predict", None)
    try:
        hints = typing.get_type_hints(func) if func is not None else {}
    except Exception:
        return None, None
    return hints.get("payload"), hints.get("return")


def _modelled(annotation: Any) -> bool:
    """A structured type worth a schema and validation (not Any, dict, str, ...)."""
    if annotation is None or not inspect.isclass(annotation):
        return False
    if typing.is_typeddict(annotation) or dataclasses.is_dataclass(annotation):
        return True
    try:
        import typing_extensions
    except ImportError:
        pass
    else:
        if typing_extensions.is_typeddict(annotation):
            return True
    try:
        from pydantic import BaseModel
    except ImportError:
        return False
    return issubclass(annotation, BaseModel)


def payload_validator(predictor: LoadedPredictor) -> Callable[[Any], Any] | None:
    annotation, _ = _annotations(predictor)
    if not _modelled(annotation):
        return None
    try:
        from pydantic import TypeAdapter, ValidationError
    except ImportError:
        return None
    try:
        adapter = TypeAdapter(annotation)
    except Exception as exc:  # a type pydantic cannot validate (e.g. typing.TypedDict before 3.12)
        LOGGER.warning(f"payload annotation {annotation!r} is not validated: {exc}")
        return None

    def validate(payload: Any) -> Any:
        try:
            return adapter.validate_python(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'payload'}: {error['msg']}" for error in exc.errors()
            )
            raise HTTPError(422, f"invalid payload: {problems}") from exc

    return validate


def _schema(annotation: Any, components: dict[str, Any]) -> dict[str, Any]:
    if not _modelled(annotation):
        return {}
    try:
        from pydantic import TypeAdapter
    except ImportError:
        return {"type": "object"}
    try:
        schema = TypeAdapter(annotation).json_schema(ref_template="#/components/schemas/{model}")
    except Exception:
        return {"type": "object"}
    components.update(schema.pop("$defs", {}))
    name = getattr(annotation, "__name__", "Payload")
    components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(config: ServingConfig, predictor: LoadedPredictor | None) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR}
    payload, returned = _annotations(predictor)
    request_schema = _schema(payload, components)
    response_schema = _schema(returned, components)
    errors = {
        "4XX": {"description": "The request was refused", "content": _json({"$ref": "#/components/schemas/Error"})},
        "5XX": {"description": "The prediction failed", "content": _json({"$ref": "#/components/schemas/Error"})},
    }
    predict = {
        "summary": f"A prediction of {config.api}",
        "operationId": "predict",
        "requestBody": {"required": False, "content": _json(request_schema)},
        "responses": {"200": {"description": "The prediction", "content": _json(response_schema)}, **errors},
    }
    plain = {"200": {"description": "OK", "content": _json({"type": "object"})}}
    paths: dict[str, Any] = {
        "/": {"post": predict, "get": {"summary": "The replica's status", "operationId": "status", "responses": plain}},
        "/predict": {"post": {**predict, "operationId": "predictCortexRoute"}},
        "/healthz": {"get": {"summary": "Alive", "operationId": "healthz", "responses": plain}},
        "/readyz": {"get": {"summary": "Ready to serve", "operationId": "readyz", "responses": plain}},
    }
    if config.protocol == "openai":
        for path, op in (("/v1/chat/completions", "createChatCompletion"), ("/v1/completions", "createCompletion")):
            paths[path] = {
                "post": {
                    "summary": "OpenAI-compatible: whole, or streamed as Server-Sent Events when stream is true",
                    "operationId": op,
                    "requestBody": {"required": True, "content": _json({"type": "object"})},
                    "responses": {
                        "200": {
                            "description": "A completion",
                            "content": {
                                **_json({"type": "object"}),
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **errors,
                    },
                }
            }
        paths["/v1/models"] = {
            "get": {"summary": "The model of this API", "operationId": "listModels", "responses": plain}
        }
    elif config.protocol == "v2":
        tensor = {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string"},
                "data": {"type": "array"},
            },
            "required": ["name", "shape", "datatype", "data"],
        }
        components["Tensor"] = tensor
        infer_request = {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            },
            "required": ["inputs"],
        }
        paths["/v2/health/live"] = {"get": {"summary": "Live", "operationId": "v2Live", "responses": plain}}
        paths["/v2/health/ready"] = {"get": {"summary": "Ready", "operationId": "v2Ready", "responses": plain}}
        model = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths["/v2/models/{name}"] = {
            "get": {"summary": "Model metadata", "operationId": "v2Metadata", "parameters": [model], "responses": plain}
        }
        paths["/v2/models/{name}/infer"] = {
            "post": {
                "summary": "Open Inference Protocol inference (JSON tensors)",
                "operationId": "v2Infer",
                "parameters": [model],
                "requestBody": {"required": True, "content": _json(infer_request)},
                "responses": {"200": {"description": "Output tensors", "content": _json({"type": "object"})}, **errors},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": config.api, "version": "1", "description": f"The {config.api} API, served by stack."},
        "paths": paths,
        "components": {"schemas": components},
    }
