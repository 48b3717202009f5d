"""Several models and versions behind one endpoint, through Cortex's python_client.

`?model=iris|wine|cancer` picks the model, `&version=N` a version (default: the latest). Models live in
models/<name>/<version>/ (train first: python examples/multi-model/train.py); a replica loads one when a
request first asks for it and keeps `cache_size` of them, and the gateway sends each model's requests to
the replicas that hold it (networking.affinity). A new version directory is loaded in the background and
served once ready.
    curl -X POST 'localhost:8080/classify?model=wine' -H 'Content-Type: application/json' -d '{"features": [...]}'
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from serving import HTTPError


class PythonPredictor:
    def __init__(self, python_client: Any, config: dict) -> None:
        self.client = python_client
        self.default = config.get("default_model", "iris")

    def load_model(self, model_path: str) -> dict:
        """Called by python_client on a model's first use (Cortex's hook): one version's directory."""
        return pickle.loads((Path(model_path) / "model.pkl").read_bytes())

    def predict(self, payload: dict, query_params: dict) -> dict:
        name = query_params.get("model", self.default)
        version = query_params.get("version", "latest")
        saved = self.client.get_model(name, version)  # 404 for a model or version that is not there
        features = payload.get("features") if isinstance(payload, dict) else None
        if not isinstance(features, list) or len(features) != saved["width"]:
            raise HTTPError(422, f'model {name} needs {{"features": [{saved["width"]} numbers]}}')
        label = int(saved["model"].predict([features])[0])
        return {"model": name, "version": str(version), "label": saved["labels"][label]}
