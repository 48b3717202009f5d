"""Iris species from four flower measurements, with a scikit-learn model.

Train first: python examples/iris/train.py (writes model.pkl here).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from serving import HTTPError

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class Predictor:
    def __init__(self, config: dict) -> None:
        model_file = Path(__file__).with_name(config.get("model", "model.pkl"))
        if not model_file.exists():
            raise FileNotFoundError(f"{model_file} is missing; run `python {Path(__file__).with_name('train.py')}`")
        saved = pickle.loads(model_file.read_bytes())
        self.model = saved["model"]
        self.labels = saved["labels"]

    def predict(self, payload: dict) -> dict:
        if not isinstance(payload, dict):
            raise HTTPError(400, f"send a JSON object with {', '.join(FEATURES)}")
        missing = [name for name in FEATURES if name not in payload]
        if missing:
            raise HTTPError(422, f"missing measurement(s): {', '.join(missing)}")
        try:
            row = [[float(payload[name]) for name in FEATURES]]
        except (TypeError, ValueError) as exc:
            raise HTTPError(422, f"measurements must be numbers: {exc}") from exc
        probabilities = self.model.predict_proba(row)[0]
        best = int(probabilities.argmax())
        return {
            "label": self.labels[best],
            "probabilities": {label: round(float(p), 4) for label, p in zip(self.labels, probabilities, strict=True)},
        }
