"""Validate Nomad API job JSON against ../shared/schemas/nomad-openapi-v1.yaml.

Nomad silently ignores unknown fields, so every object schema gets
`additionalProperties: false`: a misspelt field is an error here.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "nomad-openapi-v1.yaml"


def _closed(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _closed(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    document = yaml.safe_load(SCHEMA_FILE.read_text())
    schemas = _closed(copy.deepcopy(document["components"]["schemas"]))
    root = {"components": {"schemas": schemas}, "$ref": "#/components/schemas/JobRegisterRequest"}
    return jsonschema.Draft7Validator(root)


def schema_errors(register_request: dict[str, Any]) -> list[str]:
    errors = sorted(_validator().iter_errors(register_request), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
