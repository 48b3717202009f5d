"""Every error meant for the user, in one tree; the CLI alone turns them into exit codes.

    StackError                 the message is for people: the CLI prints it, no traceback
    ├── SpecError              stack.yaml is wrong (stack.spec: every problem with file:line:col)
    ├── UnknownApi             a command named an API the spec does not have (lists the ones it has)
    ├── PlanError              a valid spec that cannot be planned for this target (too few GPUs)
    ├── TargetError            a target cannot do what was asked
    │   ├── BuildError         an image build or its wheelhouse failed
    │   └── NotRunning         there is no running stack to act on
    ├── LockHeld               another `stack` command is changing this project
    └── ScalerError            the autoscaler's scaler failed; retried with back-off
        └── ScalerBusy         the target cannot take a new count right now; retried next tick

Library code raises these, never `SystemExit`.
"""

from __future__ import annotations


class StackError(Exception):
    """An error the user can act on; `str()` is the whole message."""


class UnknownApi(StackError):
    """A command or a request named an API the spec does not have."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no API named {name!r}; the spec has: {', '.join(known) or 'none'}")
        self.name = name
        self.known = known


class PlanError(StackError):
    """The spec is valid but cannot be planned for this target (e.g. too few GPUs)."""


class TargetError(StackError):
    """A target cannot do what was asked."""


class BuildError(TargetError):
    """An image build, or resolving its wheelhouse, failed."""


class NotRunning(TargetError):
    """There is no running stack to act on."""


class LockHeld(StackError):
    """Another `stack` command holds this project's lock."""


class WrongTarget(StackError):
    """The command was meant for another target: the project's stack runs there, not on the one chosen."""


class NameTaken(StackError):
    """A stack of this project name runs on this machine (or cluster) from another directory."""


class ScalerError(StackError):
    """Scaling failed; the autoscaler retries with back-off."""


class ScalerBusy(ScalerError):
    """The target cannot take a new count right now (a deployment is rolling); try again next tick."""
