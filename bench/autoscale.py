"""Autoscaling policies in the simulator: Cortex's algorithm against ours, same traces.

    python bench/autoscale.py

Writes the `autoscale-sim` section of bench/RESULTS.md.
"""

from __future__ import annotations

from results import write_section
from stack.control.autoscale.policy import POLICIES, stack_policy_without
from stack.control.autoscale.sim import Model, SimResult, compare

# Ours without one of its rules: what each rule is worth, on the same traces.
ABLATIONS = {
    "stack − starting credit": stack_policy_without("starting"),
    "stack − draining hold": stack_policy_without("draining"),
    "stack − panic mode": stack_policy_without("panic"),
}


def main() -> None:
    model = Model()
    results = compare(model=model, policies={**POLICIES, **ABLATIONS})
    lines = [
        "## Autoscaling policies in the simulator",
        "",
        "`python bench/autoscale.py` — `stack.control.autoscale.sim`: a fluid model, one-second steps, "
        "replicas serving "
        f"{1 / model.service_time:g} requests/s each at target concurrency 1, {model.startup:g} s start-up, "
        f"max_concurrency {model.max_concurrency} per replica (beyond it 503), a decision every {model.tick:g} s, "
        "Cortex's default windows (60 s window, 1 m up / 5 m down stabilization), 1..40 replicas.",
        "",
        "| trace | policy | replica-seconds | p99 queue wait s | mean wait s | 503 share | scale events | peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.trace} | {r.policy} | {r.replica_seconds:,.0f} | {r.p99_wait:.2f} | {r.mean_wait:.2f} | "
            f"{r.rejected:.1%} | {r.scale_events} | {r.max_replicas} |"
        )
    lines += ["", *reading(results)]
    write_section("autoscale-sim", "\n".join(lines))


def reading(results: list[SimResult]) -> list[str]:
    """What the table says, with its own numbers."""
    by = {(r.trace, r.policy): r for r in results}

    def change(trace: str, without: str) -> str:
        ours, other = by[(trace, "stack")], by[(trace, f"stack − {without}")]
        return f"{trace} {other.replica_seconds:,.0f} → {ours.replica_seconds:,.0f}"

    cortex_503 = by[("step", "cortex")].rejected
    ours_503 = by[("step", "stack")].rejected
    return [
        "Reading it: ours answers bursts far sooner (panic mode) and so queues and rejects far less "
        f"(step: mean wait {by[('step', 'cortex')].mean_wait:.1f} s → {by[('step', 'stack')].mean_wait:.1f} s, "
        f"503s {cortex_503:.1%} → {ours_503:.1%}). It costs replica-seconds on bursts: in-flight includes the "
        "queue built up while replicas start, which reads as demand. The ablation rows measure each rule: the "
        f"draining hold saves replica-seconds at equal waits ({change('step', 'draining hold')}, "
        f"{change('diurnal', 'draining hold')}); the starting-replica credit saves more "
        f"({change('ramp', 'starting credit')}, {change('diurnal', 'starting credit')}) at some extra wait on "
        "a spike; panic mode is what buys the short waits. What remains of the overshoot is mostly the 5-minute "
        "downscale stabilization held at a burst's peak.",
    ]


if __name__ == "__main__":
    main()
