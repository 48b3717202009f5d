"""The rolling-update stepping every target shares, as one pure function.

Given what runs now — replicas of the version being rolled to ("new") and of
any other version ("old"), each ready or still starting — and the spec's
`max_surge` / `max_unavailable`, `next_step` says what to do next: how many
new replicas to start, how many old ones to retire (not-ready ones first),
and how many new ones are beyond the count (a scale-down). A target applies
the step, waits for something to change, and asks again until `done`.

The rules, as Kubernetes' Deployment has them:
- never more than `desired + surge` replicas alive;
- never fewer than `desired - unavailable` ready while old ones are retired;
- an old replica that is not ready serves nobody, so it may always go.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fleet:
    """What runs now, counted."""

    new_ready: int = 0
    new_starting: int = 0
    old_ready: int = 0
    old_starting: int = 0

    @property
    def new(self) -> int:
        return self.new_ready + self.new_starting

    @property
    def old(self) -> int:
        return self.old_ready + self.old_starting

    @property
    def alive(self) -> int:
        return self.new + self.old

    @property
    def ready(self) -> int:
        return self.new_ready + self.old_ready


@dataclass(frozen=True)
class Step:
    start: int = 0  # new replicas to start
    stop_old_starting: int = 0  # old replicas that are not ready: stop them first
    stop_old_ready: int = 0  # old ready replicas that may go without breaking `unavailable`
    stop_new: int = 0  # new replicas beyond `desired` (starting ones first)
    done: bool = False

    @property
    def stop_old(self) -> int:
        return self.stop_old_starting + self.stop_old_ready

    @property
    def idle(self) -> bool:
        """Nothing to do now: wait for a replica to become ready (or fail)."""
        return not (self.start or self.stop_old or self.stop_new or self.done)


def next_step(fleet: Fleet, desired: int, surge: int, unavailable: int) -> Step:
    if surge == 0 and unavailable == 0:
        surge = 1  # both zero could never make progress (Kubernetes refuses it; we allow one extra)
    if fleet.old == 0:
        if fleet.new_ready == desired and fleet.new_starting == 0:
            return Step(done=True)
        if fleet.new > desired:
            return Step(stop_new=fleet.new - desired)
        return Step(start=desired - fleet.new) if fleet.new < desired else Step()
    start = max(0, min(desired - fleet.new, desired + surge - fleet.alive))
    floor = desired - unavailable
    stop_ready = max(0, min(fleet.old_ready, fleet.ready - floor))
    stop_new = max(0, fleet.new - desired)
    return Step(start=start, stop_old_starting=fleet.old_starting, stop_old_ready=stop_ready, stop_new=stop_new)
