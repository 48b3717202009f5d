"""Planning, the same for every target: what a version is (versions), what images are made of (images),
the values every template shares (values, serving, gateway), where GPU replicas go (gpus), and the typed
`Plan` a target's own planner (`stack.targets.<name>.plan`) returns."""

from stack.plan.plan import Plan
from stack.plan.serving import replica_config

__all__ = ["Plan", "replica_config"]
