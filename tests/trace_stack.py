"""Tracing tests' helpers, on any target: two predictors that call each other, finding a request's span."""

from __future__ import annotations

from otlp import Span

FRONT = """
class Predictor:
    def __init__(self, config, apis):
        self.apis = apis

    def predict(self, payload):
        if payload.get("fail"):
            raise ValueError("front cannot do that")
        return {"front": self.apis["leaf"].predict({"word": payload["word"]})}

    def post_predict(self, response, payload):
        pass
"""


LEAF = """
class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return [{"leaf": item["word"].upper()} for item in payload]
"""


def one_span(spans: list[Span], **match: str) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name, s.span_id) for s in spans])
    return found[0]


def request_span(spans: list[Span], request_id: str, service: str) -> Span:
    found = [
        s for s in spans if s.service == service and s.kind == 2 and s.attributes.get("stack.request_id") == request_id
    ]
    assert len(found) == 1, (request_id, service, [(s.service, s.name, s.attributes) for s in spans])
    return found[0]
