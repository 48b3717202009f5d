"""Models the tests make: an ONNX model shaped like Cortex's iris, a multi-model Python predictor."""

from __future__ import annotations

from pathlib import Path


def iris_like_onnx(path: Path) -> None:
    """A stand-in for Cortex's iris model: float_input [None, 4] (float32) -> the arg-max of x·W (int64)."""
    import onnx
    from onnx import TensorProto, helper

    weights = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # class = argmax of the first 3
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["float_input", "w"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "iris",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MULTI_MODEL = """\
import threading

class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.loads = []
        self.lock = threading.Lock()

    def load_model(self, model_path):
        with self.lock:
            self.loads.append(model_path)
        with open(f"{model_path}/weights.txt") as weights:
            text = weights.read().strip()
        if text == "corrupt":
            raise ValueError("weights are corrupt")
        return text

    def predict(self, query_params):
        name = query_params.get("model")
        version = query_params.get("version", "latest")
        return {"model": name, "weights": self.client.get_model(name, version)}
"""
