"""Several models behind one endpoint; `?model=NAME` picks one.

Models train in __init__ on data sets bundled with scikit-learn (a second or two).
    curl -X POST 'localhost:8080/?model=wine' -H 'Content-Type: application/json' -d '{"features": [...]}'
"""

from __future__ import annotations

from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serving import HTTPError

DATASETS = {"iris": load_iris, "wine": load_wine, "cancer": load_breast_cancer}


class Predictor:
    def __init__(self, config: dict) -> None:
        self.default = config.get("default_model", "iris")
        self.models = {}
        for name in config.get("models", list(DATASETS)):
            data = DATASETS[name]()
            if name == "cancer":
                model = RandomForestClassifier(n_estimators=50, random_state=0)
            else:
                model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            self.models[name] = (model.fit(data.data, data.target), list(data.target_names), data.data.shape[1])

    def predict(self, payload: dict, query_params: dict) -> dict:
        name = query_params.get("model", self.default)
        if name not in self.models:
            raise HTTPError(404, f"no model {name!r}; available: {', '.join(sorted(self.models))}")
        model, labels, width = self.models[name]
        features = payload.get("features") if isinstance(payload, dict) else None
        if not isinstance(features, list) or len(features) != width:
            raise HTTPError(422, f'model {name} needs {{"features": [{width} numbers]}}')
        label = int(model.predict([features])[0])
        return {"model": name, "label": str(labels[label])}
