"""Planning: a validated spec rendered into the files a target runs."""

from stack.plan.nomad import plan_nomad
from stack.plan.render import Plan, plan_compose
from stack.plan.serving import replica_config

__all__ = ["Plan", "plan_compose", "plan_nomad", "replica_config"]
