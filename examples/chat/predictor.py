"""An OpenAI-compatible chat API (`predictor.protocol: openai`) with a tiny rule-based generator.

No model download: the "model" answers from a few rules, one word at a time, so
streaming and every OpenAI client (the `openai` package, LangChain, chat UIs)
can be tried on any machine.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/chat/v1", api_key="unused")
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}])
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

RULES = {
    "hello": "Hello! I am a predictor served by stack, speaking OpenAI's protocol.",
    "name": "I am the chat example of stack.",
    "help": "Ask me about stack: a predictor is just a class, a prediction is just an HTTP request.",
}
FALLBACK = "I only know a few rules; try saying hello."


class Predictor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.delay = float(config.get("token_delay", 0.01))

    async def predict(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        messages = payload.get("messages") or [{"content": payload.get("prompt", "")}]
        last = str(messages[-1].get("content") or "").lower()
        answer = next((text for word, text in RULES.items() if word in last), FALLBACK)
        words = answer.split(" ")
        limit = payload.get("max_tokens") or len(words)
        for index, word in enumerate(words[:limit]):
            await asyncio.sleep(self.delay)
            yield word if index == 0 else " " + word
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        yield {
            "finish_reason": "length" if limit < len(words) else "stop",
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": min(limit, len(words))},
        }
