"""Train the iris classifier and save it beside this file as model.pkl.

The data set ships inside scikit-learn, so nothing is downloaded.
    python examples/iris/train.py
"""

from __future__ import annotations

import pickle
from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

MODEL_FILE = Path(__file__).with_name("model.pkl")


def train(path: Path = MODEL_FILE) -> float:
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(iris.data, iris.target, test_size=0.2, random_state=0)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    path.write_bytes(pickle.dumps({"model": model, "labels": list(iris.target_names)}))
    return float(model.score(x_test, y_test))


if __name__ == "__main__":
    accuracy = train()
    print(f"saved {MODEL_FILE} (test accuracy {accuracy:.2f})")
