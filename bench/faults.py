"""What a fault costs a user, measured: the README's fault table.

    python bench/faults.py            # Compose (when Docker runs here) and the local target
    python bench/faults.py --local    # the local target only

One API (an echo predictor, 3 replicas, not autoscaled, so every replica that
comes back was brought back by the stack's own repair, not by the autoscaler;
`compute.mem: 256Mi`) under 8 clients posting in a loop. Each fault is injected
under that load; reported: requests that failed (of all sent while the fault
played out), the slowest request, and the seconds until the stack is whole
again: 3 replicas serve (from `stack status`, which checks through the gateway)
and every component it lists (gateway, Prometheus, controller) runs. Writes the
`faults` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from stackrun import ROOT, free_port, stack

from results import write_section

CLIENTS = 8
REPLICAS = 3


@dataclass
class Load:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                ok = session.post(self.url, json={"bench": True}, headers=self.headers, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            self.durations.append(time.monotonic() - started)
            self.failures += not ok

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@dataclass
class Outcome:
    target: str
    fault: str
    sent: int
    failed: int
    longest: float
    recovered: float | None  # seconds until REPLICAS serve again; None: not within the wait
    note: str = ""


def shown(root: Path, flags: list[str]) -> dict | None:
    result = stack("status", *flags, "--json", "-p", str(root), cwd=root)
    return json.loads(result.stdout) if result.returncode == 0 else None


def whole(root: Path, flags: list[str], name: str | None = None, also: Callable[[dict], bool] | None = None) -> bool:
    """3 replicas serve through the gateway and every component of the stack runs (and `also` holds)."""
    status = shown(root, flags)
    if status is None:
        return False
    api = next((a for a in status["apis"] if a["name"] == name), None) if name else status["apis"][0]
    if api is None:
        return False
    running = all(c["running"] for c in status.get("components", []))
    settled = api["status"] == "live" and int(api["ready"]) == REPLICAS and running
    return settled and (also is None or also(api))


def inject(
    target: str,
    fault: str,
    root: Path,
    url: str,
    flags: list[str],
    act: Callable[[], str | Callable[[], str]],
    wait: float = 90,
    api: str | None = None,
    also: Callable[[dict], bool] | None = None,
    headers: dict[str, str] | None = None,
    since_start: bool = False,
) -> Outcome:
    """`act` injects the fault and returns what happens, or a function that says it once the stack is
    whole again (what `stack status` shows then). Whole again counts from the end of `act` (`since_start`:
    from its start, for a fault that plays out within it); `api` and `also` say what whole means beyond
    3 replicas of the first API serving."""
    with Load(url, headers=headers or {}) as load:
        time.sleep(2)
        began = time.monotonic()
        said = act()
        injected = began if since_start else time.monotonic()
        time.sleep(1)
        recovered = None
        while time.monotonic() < injected + wait:
            if whole(root, flags, api, also):
                recovered = time.monotonic() - injected
                break
            time.sleep(0.25)
        time.sleep(2)
    note = said if isinstance(said, str) else said()
    outcome = Outcome(target, fault, len(load.durations), load.failures, max(load.durations), recovered, note)
    print(outcome, flush=True)
    return outcome


def project(base: Path, name: str, port: int) -> Path:
    root = base / name
    root.mkdir()
    shutil.copy(ROOT / "bench" / "predictors" / "leak_on_demand.py", root / "predictor.py")
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: echo\n"
        "    predictor: {path: predictor.py}\n"
        "    compute: {mem: 256Mi}\n"
        f"    autoscaling: {{min_replicas: {REPLICAS}, max_replicas: {REPLICAS}}}\n"
    )
    return root


def out_of_memory(url: str) -> None:
    """One request that makes the replica it reaches keep 400 MB: over its 256Mi."""
    with contextlib.suppress(requests.RequestException):
        requests.post(url, json={"leak_mb": 400}, timeout=30)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def replicas_of(name: str) -> list[dict]:
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={name}", "--filter", "label=stack.api")
    items = json.loads(docker("inspect", *ids.split())) if ids.split() else []
    return sorted(items, key=lambda c: c["Name"])


def compose_faults(base: Path) -> list[Outcome]:
    name = f"faults{os.getpid()}"
    port = free_port()
    root = project(base, name, port)
    url = f"http://127.0.0.1:{port}/echo"
    up = stack("up", str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up failed:\n{up.stderr}")
    results = []
    try:

        def kill() -> str:
            docker("kill", replicas_of(name)[0]["Name"].lstrip("/"))
            return "the controller starts it again"

        def remove() -> str:
            docker("rm", "-f", replicas_of(name)[0]["Name"].lstrip("/"))
            return "the controller copies a living replica"

        def crash() -> str:
            os.kill(replicas_of(name)[0]["State"]["Pid"], signal.SIGKILL)
            return "Docker's restart policy restarts it"

        def role(which: str) -> list[str]:
            labels = [f"label=com.docker.compose.project={name}", f"label=stack.role={which}"]
            return docker("ps", "-q", "--filter", labels[0], "--filter", labels[1]).split()

        def gateway() -> str:
            docker("kill", *role("gateway"))
            return "the controller starts it again"

        def prometheus() -> str:
            docker("kill", *role("prometheus"))
            return "the controller starts it again; the autoscaler holds meanwhile"

        def oom() -> Callable[[], str]:
            out_of_memory(url)

            def said() -> str:
                api = (shown(root, []) or {"apis": [{}]})["apis"][0]
                return f"Docker restarts it; `stack status`: restarts {api.get('restarts')}, `{api.get('error')}`"

            return said

        def controller() -> str:
            docker("kill", *role("autoscaler"))
            notes = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["notes"]
            flagged = any("controller" in n for n in notes)
            return "traffic unaffected; `stack status` flags it" + ("" if flagged else " (NOT flagged)")

        results.append(inject("compose", "`docker kill` a replica", root, url, [], kill))
        results.append(inject("compose", "`docker rm -f` a replica", root, url, [], remove))
        results.append(inject("compose", "replica process crashes (kill -9)", root, url, [], crash))
        results.append(inject("compose", "`docker kill` the gateway", root, url, [], gateway))
        results.append(inject("compose", "`docker kill` Prometheus", root, url, [], prometheus))
        results.append(inject("compose", "a replica over `compute.mem` (kernel OOM kill)", root, url, [], oom))
        results.append(inject("compose", "`docker kill` the controller", root, url, [], controller, wait=5))
        started = time.monotonic()
        stack("up", str(root), cwd=root)
        results[-1].recovered = None
        results[-1].note += f"; `stack up` restarts it in {time.monotonic() - started:.1f} s"
    finally:
        stack("down", "--volumes", str(root), cwd=root)
        for image in docker("images", "-q", f"{name}-*").split():
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    return results


def local_faults(base: Path) -> list[Outcome]:
    port = free_port()
    root = project(base, f"localfaults{os.getpid()}", port)
    url = f"http://127.0.0.1:{port}/echo"
    flags = ["--local"]
    up = stack("up", "--local", str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up --local failed:\n{up.stderr}")
    results = []
    other_port = free_port()
    other_root = project(base, f"localother{os.getpid()}", other_port)
    try:

        def status() -> dict:
            return json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)

        def crash() -> str:
            os.kill(status()["apis"][0]["replicas"][0]["pid"], signal.SIGKILL)
            return "the supervisor replaces it"

        def component(which: str) -> int:
            found = next(c for c in status()["components"] if c["name"] == which)
            return int(found["detail"].rsplit("pid ", 1)[1])

        def gateway() -> str:
            os.kill(component("gateway"), signal.SIGKILL)
            return "the supervisor starts it again (same port, same routes)"

        def prometheus() -> str:
            os.kill(component("prometheus"), signal.SIGKILL)
            return "the supervisor starts it again; the autoscaler holds meanwhile"

        def oom() -> Callable[[], str]:
            out_of_memory(url)

            def said() -> str:
                api = status()["apis"][0]
                return (
                    f"the supervisor's watchdog kills and replaces it; `stack status`: restarts {api['restarts']}, "
                    f"`{api['error']}`"
                )

            return said

        def lost_state() -> str:
            shutil.rmtree(root / ".stack" / "local")
            return "the supervisor rewrites its state and routes; `up` and `down` find it"

        def supervisor() -> str:
            pid = status()["pid"]
            os.kill(pid, signal.SIGKILL)
            time.sleep(1)
            said = stack("status", "--local", "-p", str(root), cwd=root)
            return "everything stops (by design); `stack status` says it died" + (
                "" if "died" in said.stderr else " (NOT said)"
            )

        results.append(inject("local", "replica process crashes (kill -9)", root, url, flags, crash))
        results.append(inject("local", "the gateway (Traefik) killed", root, url, flags, gateway))
        results.append(inject("local", "Prometheus killed", root, url, flags, prometheus))
        results.append(inject("local", "a replica over `compute.mem` (watchdog)", root, url, flags, oom))
        results.append(inject("local", "`rm -rf .stack/local` (lost state)", root, url, flags, lost_state))

        # Pid reuse: this stack's state names another project's supervisor (a reboot handed its pid on).
        # `stack down` of this project stops this one only; the load runs on the other.
        other_up = stack("up", "--local", str(other_root), cwd=other_root)
        if other_up.returncode != 0:
            raise SystemExit(f"stack up --local failed:\n{other_up.stderr}")
        other_url = f"http://127.0.0.1:{other_port}/echo"

        def pid_reuse() -> str:
            state_file = root / ".stack" / "local" / "state.json"
            state = json.loads(state_file.read_text())
            theirs = json.loads((other_root / ".stack" / "local" / "state.json").read_text())["pid"]
            state_file.write_text(json.dumps({**state, "pid": theirs}))
            said = stack("down", "--local", str(root), cwd=root).stdout.strip()
            return f"`stack down` of this project: `{said}`, the other stack serves on"

        reuse = "state naming another stack's supervisor (pid reuse)"
        results.append(inject("local", reuse, other_root, other_url, flags, pid_reuse))
        stack("up", "--local", str(root), cwd=root)
        results.append(inject("local", "supervisor killed (kill -9)", root, url, flags, supervisor, wait=3))
        started = time.monotonic()
        stack("up", "--local", str(root), cwd=root)
        results[-1].note += f"; `stack up --local` brings it back in {time.monotonic() - started:.1f} s"
    finally:
        stack("down", "--local", str(root), cwd=root)
        stack("down", "--local", str(other_root), cwd=other_root)
    return results


KEEP, OLD, NEW = (f"{which}-bench-key-0123456789" for which in ("keep", "old", "new"))


def day2_project(base: Path, name: str, port: int) -> Path:
    """Two APIs of 3 replicas behind API keys: `echo` (a plain predict, timeout 2s: stuck_after defaults to 7s)
    and `aecho` (an async predict); everything else at its default (health_check_timeout 10s)."""
    root = base / name
    root.mkdir()
    shutil.copy(ROOT / "bench" / "predictors" / "day2.py", root / "predictor.py")
    (root / "keys.txt").write_text(f"{KEEP}\n{OLD}\n")
    release = root / "release"
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}, api_keys_file: keys.txt}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: echo\n"
        f"    predictor: {{path: predictor.py, timeout: 2s, config: {{release: {json.dumps(str(release))}}}}}\n"
        f"    autoscaling: {{min_replicas: {REPLICAS}, max_replicas: {REPLICAS}}}\n"
        "  - name: aecho\n"
        "    predictor: {path: predictor.py, class: AsyncPredictor, "
        f"config: {{release: {json.dumps(str(release))}}}}}\n"
        f"    autoscaling: {{min_replicas: {REPLICAS}, max_replicas: {REPLICAS}}}\n"
    )
    return root


def day2_faults(target: str, base: Path) -> list[Outcome]:
    """Week-two faults: a wedged predict, a blocked event loop, a rollout that cannot start, a key rotation."""
    flags = ["--local"] if target == "local" else []
    port = free_port()
    root = day2_project(base, f"day2{target}{os.getpid()}", port)
    up = stack("up", *flags, str(root), cwd=root)
    if up.returncode != 0:
        raise SystemExit(f"stack up failed:\n{up.stderr}")
    gateway = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEEP}"}
    results = []

    def restarts(api: str) -> int:
        status = shown(root, flags) or {"apis": []}
        return next((int(a["restarts"]) for a in status["apis"] if a["name"] == api), 0)

    def background(api: str, payload: dict, answers: list[str]) -> None:
        def send() -> None:
            started = time.monotonic()
            try:
                answer = requests.post(f"{gateway}/{api}", json=payload, headers=auth, timeout=120)
                answers.append(f"{answer.status_code} after {time.monotonic() - started:.1f} s")
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)

        threading.Thread(target=send, daemon=True).start()

    try:
        for api, payload, fault, what in (
            ("echo", {"wedge": True}, "a predict wedged for good (timeout 2s)", "stuck_after (7s) passes"),
            ("aecho", {"block_loop": True}, "an async predict blocks the event loop", "its watchdog (10s) fires"),
        ):
            before = restarts(api)
            answers: list[str] = []

            def wedge(
                api: str = api, payload: dict = payload, answers: list[str] = answers, what: str = what
            ) -> Callable[[], str]:
                background(api, payload, answers)
                return lambda: (
                    f"the wedging request: {answers[0] if answers else 'no answer'}; "
                    f"the replica is replaced once {what}"
                )

            def replaced(status: dict, api: str = api, before: int = before) -> bool:
                return int(status["restarts"]) > before

            url = f"{gateway}/{api}"
            results.append(inject(target, fault, root, url, flags, wedge, api=api, also=replaced, headers=auth))

        spec = (root / "stack.yaml").read_text()
        old_version = next(a["version"] for a in (shown(root, flags) or {"apis": []})["apis"] if a["name"] == "echo")

        def broken_rollout() -> str:
            (root / "stack.yaml").write_text(spec.replace("config: {release:", "config: {fail_init: true, release:", 1))
            started = time.monotonic()
            ran = stack("up", *flags, str(root), cwd=root)
            took = time.monotonic() - started
            (root / "stack.yaml").write_text(spec)
            said = "rolled back" if ran.returncode != 0 and "rolled back" in ran.stderr else "NOT rolled back"
            return f"`stack up` exits {ran.returncode} after {took:.1f} s: {said}; the old version serves on"

        def on_old(status: dict) -> bool:
            return bool(status["version"] == old_version)

        fault = "a rollout whose new version cannot start"
        results.append(
            inject(
                target,
                fault,
                root,
                f"{gateway}/echo",
                flags,
                broken_rollout,
                api="echo",
                also=on_old,
                headers=auth,
                since_start=True,
            )
        )

        def rotate() -> str:
            (root / "keys.txt").write_text(f"{KEEP}\n{NEW}\n")
            started = time.monotonic()
            ran = stack("up", *flags, str(root), cwd=root)
            took = time.monotonic() - started
            codes = [
                requests.post(
                    f"{gateway}/echo", json={}, headers={"Authorization": f"Bearer {k}"}, timeout=10
                ).status_code
                for k in (OLD, NEW)
            ]
            return (
                f"`stack up` ({ran.returncode}) took {took:.1f} s; then the removed key gets {codes[0]}, "
                f"the new one {codes[1]}"
            )

        def rotated(status: dict) -> bool:
            with contextlib.suppress(requests.RequestException):
                old = requests.post(f"{gateway}/echo", json={}, headers={"Authorization": f"Bearer {OLD}"}, timeout=5)
                new = requests.post(f"{gateway}/echo", json={}, headers={"Authorization": f"Bearer {NEW}"}, timeout=5)
                return old.status_code == 401 and new.status_code == 200
            return False

        results.append(
            inject(
                target,
                "API keys rotated under load (the load's key kept)",
                root,
                f"{gateway}/echo",
                flags,
                rotate,
                api="echo",
                also=rotated,
                headers=auth,
                since_start=True,
            )
        )
    finally:
        (root / "release").touch()
        stack("down", *flags, "--images", str(root), cwd=root) if target == "compose" else stack(
            "down", *flags, str(root), cwd=root
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="the local target only")
    args = parser.parse_args()
    docker_ok = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        if docker_ok and not args.local:
            outcomes += compose_faults(Path(tmp))
            outcomes += day2_faults("compose", Path(tmp))
        outcomes += local_faults(Path(tmp))
        outcomes += day2_faults("local", Path(tmp))
    lines = [
        "## Faults: what a user sees, and how long until the API is whole again",
        "",
        "`python bench/faults.py` — an echo API, 3 replicas (not autoscaled: what comes back was brought back by",
        f"the stack's repair), `compute.mem: 256Mi`, {CLIENTS} clients posting in a loop while each fault is injected.",
        "Whole again: 3 replicas serve through the gateway and every component `stack status` lists runs.",
        "",
        "The week-two rows (wedged predict, blocked event loop, failed rollout, key rotation) run a second project:",
        "two APIs of 3 replicas behind API keys, `echo` with `timeout: 2s` and `aecho` async, every liveness setting",
        "at its default; the load carries a key that stays. Whole again there also means: the stuck replica was",
        "replaced (its API's restarts went up), the API runs its old version, the rotated keys apply.",
        "",
        "| target | fault | failed requests | slowest request | whole again after | what happens |",
        "|---|---|---:|---:|---:|---|",
    ]
    for o in outcomes:
        back = f"{o.recovered:.1f} s" if o.recovered is not None else "—"
        lines.append(f"| {o.target} | {o.fault} | {o.failed} of {o.sent} | {o.longest:.2f} s | {back} | {o.note} |")
    write_section("faults", "\n".join(lines))


if __name__ == "__main__":
    main()
