"""A predictor with a model cache of its own (two models, least recently used evicted) that says what it
holds through `loaded_models()`; `config.broken` makes that method raise."""

from collections import OrderedDict


class Predictor:
    def __init__(self, config):
        self.size = int(config.get("size", 2))
        self.broken = bool(config.get("broken", False))
        self.models = OrderedDict()
        self.loads = 0

    def predict(self, payload, query_params):
        name = query_params.get("model", "none")
        if name not in self.models:
            self.loads += 1
            self.models[name] = f"weights of {name}"
            while len(self.models) > self.size:
                self.models.popitem(last=False)
        self.models.move_to_end(name)
        return {"model": name, "loads": self.loads}

    def loaded_models(self):
        if self.broken:
            raise RuntimeError("the cache is being rebuilt")
        return list(self.models)
