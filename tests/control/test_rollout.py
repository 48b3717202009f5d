"""The rolling-update stepping, without processes: every target uses this one function."""

from __future__ import annotations

import itertools

import pytest

from stack.targets.rollout import Fleet, Step, next_step


def test_a_first_start_starts_the_whole_count() -> None:
    assert next_step(Fleet(), desired=3, surge=1, unavailable=0) == Step(start=3)
    assert next_step(Fleet(new_ready=3), desired=3, surge=1, unavailable=0).done


def test_scale_down_without_old_replicas() -> None:
    assert next_step(Fleet(new_ready=4), desired=2, surge=1, unavailable=0) == Step(stop_new=2)


def test_surge_bounds_the_first_step_and_unavailable_keeps_capacity() -> None:
    # 4 old ready, surge 1, unavailable 0: one new replica first, no old one may go yet.
    assert next_step(Fleet(old_ready=4), desired=4, surge=1, unavailable=0) == Step(start=1)
    # The new one is ready: one old may go (5 ready, floor 4); no start while 5 are alive.
    assert next_step(Fleet(new_ready=1, old_ready=4), desired=4, surge=1, unavailable=0) == Step(stop_old_ready=1)


def test_old_replicas_that_are_not_ready_go_first_and_always() -> None:
    step = next_step(Fleet(new_starting=1, old_ready=2, old_starting=1), desired=3, surge=1, unavailable=0)
    assert step.stop_old_starting == 1 and step.stop_old_ready == 0


def test_new_replicas_that_never_get_ready_hold_the_old_ones() -> None:
    step = next_step(Fleet(new_starting=1, old_ready=2), desired=2, surge=1, unavailable=0)
    assert step.idle  # wait: the target decides when a starting replica has failed


def simulate(desired: int, surge: int, unavailable: int, old: int) -> tuple[int, int, int]:
    """Replicas started in one round are ready in the next. Returns (rounds, max alive, min ready)."""
    fleet = Fleet(old_ready=old)
    max_alive, min_ready = fleet.alive, fleet.ready
    for rounds in range(1, 200):
        step = next_step(fleet, desired, surge, unavailable)
        if step.done:
            return rounds, max_alive, min_ready
        assert not (step.idle and fleet.new_starting == 0), (fleet, step)  # idle only while waiting
        stop_starting = min(step.stop_new, fleet.new_starting)
        # Stops happen first...
        fleet = Fleet(
            new_ready=fleet.new_ready - (step.stop_new - stop_starting),
            new_starting=fleet.new_starting - stop_starting,
            old_ready=fleet.old_ready - step.stop_old_ready,
            old_starting=fleet.old_starting - step.stop_old_starting,
        )
        min_ready = min(min_ready, fleet.ready)
        # ...then last round's starting replicas are ready and this round's starts begin.
        fleet = Fleet(fleet.new_ready + fleet.new_starting, step.start, fleet.old_ready, fleet.old_starting)
        max_alive = max(max_alive, fleet.alive)
    raise AssertionError("never finished")


@pytest.mark.parametrize(
    ("desired", "surge", "unavailable", "old"),
    [c for c in itertools.product([1, 2, 4, 10], [0, 1, 3], [0, 1, 2], [0, 1, 4, 10]) if c[3] != 0 or c[1] == 0],
)
def test_every_update_finishes_within_its_bounds(desired: int, surge: int, unavailable: int, old: int) -> None:
    rounds, max_alive, min_ready = simulate(desired, surge, unavailable, old)
    effective_surge = surge if (surge or unavailable) else 1
    assert max_alive <= max(old, desired + effective_surge)
    if old >= desired:
        assert min_ready >= min(old, desired - unavailable)
    assert rounds <= 2 * (desired + old) + 3
