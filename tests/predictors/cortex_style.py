"""A Cortex predictor file, unmodified: class PythonPredictor, __init__(self, config)."""


class PythonPredictor:
    def __init__(self, config):
        self.label = config.get("label", "cortex")

    def predict(self, payload):
        return {"label": self.label, "payload": payload}
