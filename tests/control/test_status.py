"""One ladder from what a target observed to an API's phase, the same on every target; the local
supervisor's StackStatus read back whole; failures typed, answered from one table."""

from __future__ import annotations

import pytest

from serving.errors import HTTPError, ModelInputInvalid, ModelLoadFailed, ModelNotFound
from serving.failures import PredictTimeout, failure_of
from stack.errors import StackError, UnknownApi
from stack.status import (
    AffinityStatus,
    ApiPhase,
    ApiStatus,
    AutoscalerStatus,
    Observed,
    ReplicaState,
    ReplicaStatus,
    ScaleChange,
    StackStatus,
    api_phase,
)


@pytest.mark.parametrize(
    ("seen", "phase"),
    [
        (Observed(desired=2, ready=2, alive=2), ApiPhase.LIVE),
        (Observed(desired=2, ready=1, alive=2), ApiPhase.STARTING),
        (Observed(desired=2, ready=3, alive=4, updating=True), ApiPhase.UPDATING),
        (Observed(desired=2, ready=0, alive=1, failing=True), ApiPhase.ERROR),
        # A failing replica beside a serving one is not an API in error: it serves.
        (Observed(desired=2, ready=1, alive=2, failing=True), ApiPhase.STARTING),
        (Observed(desired=0, ready=0, alive=0), ApiPhase.SCALED_TO_ZERO),
        (Observed(desired=0, ready=0, alive=1), ApiPhase.SCALING_TO_ZERO),
        (Observed(desired=0, ready=0, deployed=False), ApiPhase.STOPPED),
        (Observed(desired=3, ready=0, failing=True, deployed=False), ApiPhase.STOPPED),
    ],
)
def test_one_ladder_from_observed_replicas_to_a_phase(seen: Observed, phase: ApiPhase) -> None:
    assert api_phase(seen) is phase


def test_phases_are_the_words_stack_status_prints() -> None:
    assert [p.value for p in ApiPhase] == [
        "live",
        "starting",
        "updating",
        "error",
        "stopped",
        "scaled to zero",
        "scaling to zero",
    ]
    assert {p for p in ApiPhase if p.settled} == {ApiPhase.LIVE, ApiPhase.SCALED_TO_ZERO, ApiPhase.SCALING_TO_ZERO}


def test_a_stack_status_survives_its_json_whole() -> None:
    replica = ReplicaStatus("echo-3", ReplicaState.READY, "abc", pid=42, port=9000, uptime_s=1.5)
    scaled = ScaleChange(1_000.0, 1, 2, "target", "in-flight 3.0 over 1 ready", applied=False, error="busy", attempts=2)
    api = ApiStatus(
        "echo",
        ApiPhase.UPDATING,
        1,
        2,
        "/echo",
        "abc",
        error="boom",
        error_replica="echo-2",
        replicas=[replica],
        autoscaler=AutoscalerStatus("hold: stable", [scaled]),
        affinity=AffinityStatus({"m1": ["echo-3"]}, {"echo-3": ["m1", "m2"]}, {"m1": 1.5}, 0.92),
    )
    status = StackStatus("shop", "local", 8080, [api], ["a note"], pid=7)
    back = StackStatus.from_dict(status.to_dict())
    assert back == status
    assert back.apis[0].autoscaler is not None and back.apis[0].autoscaler.changes[0].attempts == 2
    assert back.apis[0].status is ApiPhase.UPDATING and back.apis[0].replicas[0].state is ReplicaState.READY


def test_an_unknown_api_names_the_ones_there_are() -> None:
    error = UnknownApi("irsi", ["iris", "wine"])
    assert isinstance(error, StackError)
    assert str(error) == "no API named 'irsi'; the spec has: iris, wine"


@pytest.mark.parametrize(
    ("exc", "status", "logged"),
    [
        (HTTPError(422, "text too long"), 422, False),
        (ModelNotFound("model 'gpt' not found"), 404, False),
        (ModelInputInvalid("name the model"), 400, False),
        (ModelLoadFailed("weights are corrupt"), 500, True),
        (PredictTimeout(2.0), 504, False),
        (KeyError("x"), 500, True),
    ],
)
def test_every_failure_is_answered_from_one_table(exc: Exception, status: int, logged: bool) -> None:
    failure = failure_of(exc)
    assert (failure.status, failure.logged) == (status, logged)
    assert failure.message  # never empty; never a traceback


def test_an_unknown_exception_names_its_type() -> None:
    assert failure_of(KeyError("x")).message == "KeyError: 'x'"
    assert failure_of(PredictTimeout(2.5)).message == "prediction took longer than the timeout of 2.5s"


@pytest.mark.parametrize("data", [None, "text", [1, 2], {"changes": "no", "models": 3}, {"changes": [{"at": 1.0}]}])
def test_status_parts_read_from_a_damaged_state_file_are_empty_not_a_crash(data: object) -> None:
    """The controller's decisions and affinity files are read by `stack status`; one torn or hand-edited
    says nothing of its API rather than failing the command."""
    scaler = AutoscalerStatus.from_dict(data)
    assert scaler is None or scaler == AutoscalerStatus()
    affinity = AffinityStatus.from_dict(data)
    assert affinity is None or (affinity.models, affinity.held, affinity.hit_ratio) == ({}, {}, None)
