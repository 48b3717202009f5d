"""What a replica reports of the affinity values it holds (serving.affinity), on /healthz: a predictor with a
cache of its own says what it holds through `loaded_models()`; one that fails to say is not taken down."""

from __future__ import annotations

from typing import Any

from common import PREDICTORS

OWN_CACHE = PREDICTORS / "own_cache.py"


def _report(replica: Any) -> dict[str, Any]:
    report: dict[str, Any] = replica.get("/healthz").json()["affinity"]
    return report


def test_a_predictors_own_cache_is_what_the_replica_holds(inproc: Any) -> None:
    replica = inproc(OWN_CACHE, affinity=["query", "model"])
    for model in ["a", "b", "a", "c"]:
        assert replica.post(params={"model": model}, json={}).status_code == 200
    report = _report(replica)
    # c evicted b (the least recently used), whatever was served in the last minutes.
    assert report["held"] == ["a", "c"] and report["cached"] is True
    assert (report["hits"], report["misses"]) == (1, 3)  # the second a was held; a, b, c were loads
    assert replica.instance.loads == 3


def test_a_failing_loaded_models_falls_back_to_the_values_served(inproc: Any) -> None:
    replica = inproc(OWN_CACHE, affinity=["query", "model"], config={"broken": True})
    for model in ["a", "b", "c"]:
        assert replica.post(params={"model": model}, json={}).status_code == 200
    report = _report(replica)
    assert report["held"] == ["a", "b", "c"] and report["cached"] is False
    assert replica.get("/healthz").status_code == 200  # still alive and ready: only its report is rougher
    assert replica.logs().count("loaded_models() failed") == 1  # said once, not on every request
