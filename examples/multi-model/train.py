"""Train the example's models and save them in Cortex's directory layout: models/<name>/<version>/model.pkl.

The data sets ship inside scikit-learn, so nothing is downloaded.
    python examples/multi-model/train.py              # version 1 of iris, wine and cancer
    python examples/multi-model/train.py --version 2  # a new version: running replicas load it by themselves
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MODELS = Path(__file__).with_name("models")
DATASETS = {"iris": load_iris, "wine": load_wine, "cancer": load_breast_cancer}


def train(version: int = 1, models: Path = MODELS, names: list[str] | None = None) -> list[Path]:
    """Each model's `version` directory, written whole before it appears (a replica never loads half of one)."""
    written = []
    for name in names or list(DATASETS):
        data = DATASETS[name]()
        if name == "cancer":
            model = RandomForestClassifier(n_estimators=20 * version, random_state=version)
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=float(version)))
        model.fit(data.data, data.target)
        target = models / name / str(version)
        staging = models / name / f".{version}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        saved = {"model": model, "labels": [str(x) for x in data.target_names], "width": data.data.shape[1]}
        (staging / "model.pkl").write_bytes(pickle.dumps(saved))
        staging.rename(target)
        written.append(target)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    for path in train(args.version):
        print(f"saved {path}")
