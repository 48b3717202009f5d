"""Server-side batching over real HTTP (the replica in this process).

Batches here are formed by size: `max_batch_size` equals the burst and
`batch_interval` is long, so a batch is dispatched the moment it is full and
no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import concurrent.futures

from common import PREDICTORS
from waits import until

FULL = 30.0  # a batch_interval no test waits out: batches are dispatched because they are full


def _burst(server, payloads, params=None):
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda p: server.post(json=p, params=params), payloads))


def test_concurrent_requests_share_a_batch(inproc) -> None:
    server = inproc(PREDICTORS / "batch.py", batching={"max_batch_size": 8, "batch_interval": FULL})
    responses = _burst(server, [{"n": i} for i in range(8)], params={"k": "v"})
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert [b["echo"] for b in bodies] == [{"n": i} for i in range(8)]  # each got its own result
    assert {b["batch_size"] for b in bodies} == {8}
    assert all(b["q"] == {"k": "v"} for b in bodies)
    metrics = server.get("/metrics").text
    assert 'predictor_batch_size_count{api="test"} 1.0' in metrics
    assert 'predictor_batch_size_sum{api="test"} 8.0' in metrics


def test_a_lone_request_is_sent_after_the_interval(inproc) -> None:
    server = inproc(PREDICTORS / "batch.py", batching={"max_batch_size": 8, "batch_interval": 0.05})
    response = server.post(json={"n": 1})
    assert response.status_code == 200 and response.json()["batch_size"] == 1


def test_failing_batch_fails_only_its_requests(inproc) -> None:
    server = inproc(PREDICTORS / "batch.py", batching={"max_batch_size": 4, "batch_interval": FULL})
    responses = _burst(server, [{"action": "fail"}, {"n": 1}, {"n": 2}, {"n": 3}])
    assert {r.status_code for r in responses} == {500}
    assert responses[0].json()["error"] == "RuntimeError: batch exploded"
    after = _burst(server, [{"n": i} for i in range(4)])
    assert all(r.status_code == 200 and r.json()["batch_size"] == 4 for r in after)


def test_wrong_length_is_500_naming_the_mismatch(inproc) -> None:
    server = inproc(PREDICTORS / "batch.py", batching={"max_batch_size": 2, "batch_interval": FULL})
    responses = _burst(server, [{"action": "short"}, {"n": 1}])
    assert [r.status_code for r in responses] == [500, 500]
    assert responses[0].json()["error"] == "predict got a batch of 2 payloads but returned 1 results"
    single = inproc(PREDICTORS / "batch.py", batching={"max_batch_size": 1, "batch_interval": FULL})
    lone = single.post(json={"action": "not-a-list"})
    assert lone.status_code == 500
    assert lone.json()["error"] == "with batching on, predict must return a list of 1 results; it returned a dict"


def test_batch_items_can_fail_alone(inproc, tmp_path) -> None:
    predictor = tmp_path / "per_item.py"
    predictor.write_text(
        "from serving import HTTPError\n"
        "class Predictor:\n"
        "    def predict(self, payload):\n"
        "        return [HTTPError(422, 'negative') if p['n'] < 0 else {'n': p['n']} for p in payload]\n"
    )
    server = inproc(predictor, batching={"max_batch_size": 2, "batch_interval": FULL})
    good, bad = _burst(server, [{"n": 1}, {"n": -1}])
    assert (good.status_code, good.json()) == (200, {"n": 1})
    assert (bad.status_code, bad.json()["error"]) == (422, "negative")


def test_timed_out_request_leaves_the_batch(inproc) -> None:
    # predict takes 1 s per batch; every request's timeout is 0.3 s: all time out, none is a predictor error.
    server = inproc(
        PREDICTORS / "batch.py",
        batching={"max_batch_size": 3, "batch_interval": FULL},
        config={"cost": 1.0},
        timeout=0.3,
    )
    responses = _burst(server, [{"n": i} for i in range(6)])
    assert {r.status_code for r in responses} == {504}
    assert server.get("/readyz").status_code == 200
    assert "predict failed" not in server.logs()  # a timeout is not a predictor error


def test_async_predict_is_batched_too(inproc, tmp_path) -> None:
    predictor = tmp_path / "async_batch.py"
    predictor.write_text(
        "class Predictor:\n"
        "    async def predict(self, payload):\n"
        "        return [{'batch_size': len(payload), 'n': p['n']} for p in payload]\n"
    )
    server = inproc(predictor, batching={"max_batch_size": 4, "batch_interval": FULL})
    bodies = [r.json() for r in _burst(server, [{"n": i} for i in range(4)])]
    assert [b["n"] for b in bodies] == [0, 1, 2, 3]
    assert {b["batch_size"] for b in bodies} == {4}


def test_an_array_result_is_split_per_request(inproc, tmp_path) -> None:
    predictor = tmp_path / "array.py"
    predictor.write_text(
        "class Rows:\n"
        "    ndim = 2\n"
        "    def __init__(self, rows):\n"
        "        self.rows = rows\n"
        "    def tolist(self):  # numpy arrays and tensors: one conversion for the whole batch\n"
        "        return [list(r) for r in self.rows]\n"
        "class Predictor:\n"
        "    def predict(self, payload):\n"
        "        return Rows([(p['n'], p['n'] * 2) for p in payload])\n"
    )
    server = inproc(predictor, batching={"max_batch_size": 3, "batch_interval": FULL})
    assert [r.json() for r in _burst(server, [{"n": i} for i in range(3)])] == [[0, 0], [1, 2], [2, 4]]


def test_two_batches_run_at_once_by_default(inproc) -> None:
    # The next batch is taken and started while the first still runs (max_in_flight: 2).
    server = inproc(
        PREDICTORS / "gated.py",
        predictor_class="BatchPredictor",
        batching={"max_batch_size": 2, "batch_interval": FULL},
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(server.post, json={"n": i}) for i in range(4)]
        until(lambda: server.instance.started == 2, "two batches inside predict together")
        server.instance.release.set()
        assert all(f.result().status_code == 200 for f in futures)
    one = inproc(
        PREDICTORS / "gated.py",
        predictor_class="BatchPredictor",
        batching={"max_batch_size": 2, "batch_interval": FULL, "max_in_flight": 1},
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one.post, json={"n": i}) for i in range(4)]
        until(lambda: one.replica.in_flight == 4 and one.instance.started == 1, "one batch in, one waiting")
        assert one.instance.started == 1
        one.instance.release.set()
        assert all(f.result().status_code == 200 for f in futures)


def test_eager_sends_to_an_idle_model_at_once_and_what_waited_as_one_batch(inproc) -> None:
    # batch_interval is never waited out: with `eager`, an idle model takes what has arrived.
    server = inproc(
        PREDICTORS / "gated.py",
        predictor_class="BatchPredictor",
        batching={"max_batch_size": 8, "batch_interval": FULL, "max_in_flight": 1, "eager": True},
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(server.post, json={"n": 0})
        until(lambda: server.instance.started == 1, "the lone request inside predict at once")
        rest = [pool.submit(server.post, json={"n": i}) for i in (1, 2, 3)]
        until(lambda: server.replica.in_flight == 4, "three requests waiting for the busy model")
        server.instance.release.set()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert [len(call) for call in server.instance.calls] == [1, 3]
    assert sorted(p["n"] for p in server.instance.calls[1]) == [1, 2, 3]


def test_requests_that_wait_for_a_busy_slot_go_as_one_batch(inproc) -> None:
    # The interval runs out while the only slot is busy: the batch keeps growing, then goes whole.
    server = inproc(
        PREDICTORS / "gated.py",
        predictor_class="BatchPredictor",
        batching={"max_batch_size": 8, "batch_interval": 0.001, "max_in_flight": 1},
    )
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        first = pool.submit(server.post, json={"n": 0})
        until(lambda: server.instance.started == 1, "the first batch inside predict")
        rest = [pool.submit(server.post, json={"n": i}) for i in range(1, 6)]
        until(lambda: server.replica.in_flight == 6, "five requests waiting for the slot")
        server.instance.release.set()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert [len(call) for call in server.instance.calls] == [1, 5]


def test_with_model_affinity_a_batch_holds_one_models_requests(inproc, tmp_path) -> None:
    predictor = tmp_path / "models.py"
    predictor.write_text(
        "class Predictor:\n"
        "    def __init__(self, config):\n"
        "        pass\n\n"
        "    def predict(self, payload, query_params):\n"
        "        models = sorted({q['model'] for q in query_params})\n"
        "        return [{'models': models, 'size': len(payload)} for _ in payload]\n"
    )
    server = inproc(predictor, batching={"max_batch_size": 4, "batch_interval": FULL}, affinity=["query", "model"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(server.post, json={}, params={"model": "ab"[i % 2]}) for i in range(8)]
        bodies = [f.result().json() for f in futures]
    # Mixed arrivals, batches of one model each, full (4 of "a", 4 of "b"): none waited out the interval.
    assert sorted(b["models"] for b in bodies) == [["a"]] * 4 + [["b"]] * 4, bodies
    assert {b["size"] for b in bodies} == {4}
