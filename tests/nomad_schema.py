"""Validate Nomad API job JSON against tests/schemas/nomad-openapi-v1.yaml (vendored, MPL-2.0).

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

SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "nomad-openapi-v1.yaml"


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
def _validator(component: str) -> jsonschema.protocols.Validator:
    document = yaml.safe_load(SCHEMA_FILE.read_text())
    schemas = _closed(copy.deepcopy(document["components"]["schemas"]))
    root = {"components": {"schemas": schemas}, "$ref": f"#/components/schemas/{component}"}
    return jsonschema.Draft7Validator(root)


def schema_errors(document: dict[str, Any], component: str = "JobRegisterRequest") -> list[str]:
    """What in `document` does not match the schema `component` (a job register request by default)."""
    errors = sorted(_validator(component).iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
