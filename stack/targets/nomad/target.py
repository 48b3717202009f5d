"""The Nomad target: `stack up --nomad` builds, pushes, registers and waits; status, logs, scale, down.

`up` builds each API's image exactly as the Compose target does, tags it
`REGISTRY/PROJECT-API:VERSION`, pushes it, then registers the JSON jobs that
`stack plan --nomad` renders from the reviewable HCL (the APIs, Traefik,
Prometheus and, when an API is autoscaled, the autoscaler) and follows each
API's deployment until it is healthy. A deployment that fails — Nomad's
`auto_revert` then rolls the job back — is reported with the failing
allocation's task events and last log lines, and `up` exits non-zero.

A job whose rendered content did not change since it was registered (the
`stack_job_digest` meta) is not registered again: no new version, no
deployment. A registered API job keeps the count it runs with, so `up` never
resets what the autoscaler or `stack scale` set.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlparse

from stack.atomic import write_text_atomic
from stack.control.autoscale.scaler import Scaler
from stack.control.canary import status_of
from stack.errors import NameTaken, NotRunning, StackError, TargetError
from stack.plan.versions import current_versions, project_files
from stack.spec import LoadedSpec
from stack.splits import splitters_of, with_override
from stack.status import AffinityStatus, SplitterStatus, StackStatus
from stack.targets import build, images
from stack.targets.base import check_scale
from stack.targets.logs import Stream, follow_replicas, lines_since
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.batch_workers import ITEM, worker_variable
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.deploy import TASK, Deployments, owner_of
from stack.targets.nomad.images import ImagePusher
from stack.targets.nomad.plan import nomad_progress_deadline
from stack.targets.nomad.plan import plan as plan_nomad
from stack.targets.nomad.routes import affinity_variable
from stack.targets.nomad.scaler import GROUP, HANDED_BACK, MANUAL_SOURCE, NomadScaler, latest_source
from stack.targets.nomad.splits import NomadSplits, overrides_variable, routes_variable
from stack.targets.nomad.status import api_status
from stack.targets.nomad.values import nomad_gpu
from stack.targets.nomad.variables import forget_secrets, write_keys, write_tls
from stack.traffic import call_graph

Progress = Callable[[str], None]
PLAN_DIR = ".stack/plan/nomad"


def open_target(
    loaded: LoadedSpec, gpus: int | None = None, gpu_mem: int | None = None, registry: str | None = None
) -> NomadTarget:
    """`registry`: where images are pushed (default: build.registry); the cluster's GPUs are Nomad's to know."""
    return NomadTarget(loaded, registry=registry)


class NomadTarget:
    name = "nomad"

    def __init__(self, loaded: LoadedSpec, registry: str | None = None, settings: NomadSettings | None = None) -> None:
        self.loaded = loaded
        self.project = loaded.spec.project
        self.registry = (registry or loaded.spec.build.registry or "").rstrip("/")
        self.settings = settings or NomadSettings.from_env()
        self.api = NomadApi(self.settings)
        self.deployments = Deployments(self.api)

    def job_id(self, api: str) -> str:
        return f"{self.project}-{api}"

    # -- up ----------------------------------------------------------------------------------

    def up(self, progress: Progress) -> StackStatus:
        spec = self.loaded.spec
        needs_build = [a for a in spec.every_api if a.predictor.image is None]
        if not self.registry and needs_build:
            raise TargetError(
                "`stack up --nomad` pushes each API's image to a registry the Nomad clients pull from, and none "
                "is set: pass --registry HOST:PORT or set build.registry in stack.yaml (for a first try, a registry "
                "on this machine: `docker run -d -p 5000:5000 registry:2`, then --registry 127.0.0.1:5000)."
            )
        progress(f"connecting to Nomad at {self.settings.address}")
        self.api.check()
        self._own()
        self._check_gpus()
        plan = plan_nomad(self.loaded, nomad_addr=self.settings.address, registry=self.registry)
        plan_dir = self.loaded.root / PLAN_DIR
        for name, content in plan.files.items():  # the plan holds the serving config: owner-only
            write_text_atomic(plan_dir / name, content, mode=0o600)
        build.warn_secrets(project_files(self.loaded), progress)
        pusher = ImagePusher(self.loaded, self.registry)
        for api in needs_build:
            pusher.api(api, plan, progress)
        if f"{self.project}-autoscaler.json" in plan.files:
            pusher.controller(plan, progress)
        write_keys(self.api, self.loaded, progress)
        write_tls(self.api, self.loaded, progress)
        self._write_splits(plan.versions, progress)
        registered: list[str] = []
        for name in sorted(plan.files):
            if not name.endswith(".json"):
                continue
            job = json.loads(plan.files[name])["Job"]
            if (job.get("Meta") or {}).get("stack_role") == "batch-worker":  # the controller's, per job
                api = job["Meta"]["stack_api"]
                self.api.put_variable(worker_variable(self.project, api), {ITEM: json.dumps(job, sort_keys=True)})
                progress(
                    f"{api}: BatchAPI ready for jobs (each job runs as the Nomad batch job {self.project}-batch-ID)"
                )
                continue
            if self.deployments.register(job, progress, self.owner):
                registered.append(job["ID"])
        for api in spec.apis:
            if self.job_id(api.name) in registered:
                self.deployments.wait(api.name, self.job_id(api.name), nomad_progress_deadline(api), progress)
        self._hand_back(progress)
        return self.status()

    def _write_splits(self, versions: dict[str, str], progress: Progress) -> None:
        """The gateway's splitter routes, in the variable its job renders: the spec's weights (`stack split`'s
        end here), or a canary's while the same version of its API rolls out."""
        splits = NomadSplits(self.api, self.project)
        splitters = splitters_of(self.loaded.spec, versions)
        if not splitters:
            splits.forget()
            return
        splits.api.delete_variable(overrides_variable(self.project))
        splits.write_routes(splitters, splits.canary_weights(splitters), auth=bool(self.loaded.spec.gateway.keys))
        progress(f"splitter routes written to the Nomad Variable {routes_variable(self.project)}")

    def _hand_back(self, progress: Progress) -> None:
        """`stack up` hands every autoscaled API back to the autoscaler (a `stack scale --force` ends here)."""
        for api in self.loaded.spec.apis:
            if not api.autoscaled:
                continue
            status = self.api.scale_status(self.job_id(api.name))
            group = (status.get("TaskGroups") or {}).get(GROUP) or {}
            if latest_source(group) == MANUAL_SOURCE:
                count = int(group.get("Desired") or api.autoscaling.initial)
                self.api.scale(
                    self.job_id(api.name), GROUP, count, "handed back to the autoscaler", {"source": HANDED_BACK}
                )
                progress(f"{api.name}: handed back to the autoscaler")

    def _check_gpus(self) -> None:
        """Before registering a GPU job: is there a client with that many NVIDIA GPUs at all?"""
        wanted = max((nomad_gpu(a).devices for a in self.loaded.spec.apis), default=0)
        if not wanted:
            return
        best = 0
        for stub in self.api.nodes():
            if stub.get("Status") != "ready" or stub.get("SchedulingEligibility") == "ineligible":
                continue
            node = self.api.node(stub["ID"])
            for device in (node.get("NodeResources") or {}).get("Devices") or []:
                if device.get("Vendor") == "nvidia" and device.get("Type") == "gpu":
                    healthy = [i for i in device.get("Instances") or [] if i.get("Healthy", True)]
                    best = max(best, len(healthy))
        if best < wanted:
            names = ", ".join(a.name for a in self.loaded.spec.apis if a.compute.gpu)
            raise TargetError(
                f"API(s) {names} ask for {wanted} NVIDIA GPU(s) per replica, but no ready Nomad client offers "
                f"{'any' if best == 0 else f'more than {best}'}: install the NVIDIA device plugin on the GPU "
                "nodes (nomad/client-gpu.hcl) and check `nomad node status -verbose`. Nothing was registered."
            )

    # -- status, logs, scale, down ------------------------------------------------------------

    def status(self) -> StackStatus:
        on_disk = current_versions(self.loaded)  # what the files would build now
        apis = [api_status(self.api, api, self.job_id(api.name), on_disk[api.name]) for api in self.loaded.spec.apis]
        if any(api.networking.affinity for api in self.loaded.spec.apis):
            shown = _affinity(self.api.get_variable(affinity_variable(self.project)))
            apis = [replace(a, affinity=AffinityStatus.from_dict(shown.get(a.name))) for a in apis]
        notes = [
            f"Nomad at {self.settings.address}"
            + (f", namespace {self.settings.namespace}" if self.settings.namespace else "")
        ]
        splitters: list[SplitterStatus] = []
        if self.loaded.spec.splitters:
            splits = NomadSplits(self.api, self.project)
            splitters = status_of(splitters_of(self.loaded.spec), splits.overrides(), splits.saved_canaries())
        # The graph's edges; their numbers are in the cluster's Prometheus (predictor_calls_total).
        calls = call_graph(self.loaded.spec, None)
        port = self.loaded.spec.gateway.port
        return StackStatus(self.project, "nomad", port, apis, notes, splitters=splitters, calls=calls)

    def logs(self, api: str, follow: bool, since: float | None = None) -> Iterator[str]:
        self.loaded.spec.api(api)  # UnknownApi names the ones it has
        cutoff = time.time() - since if since is not None else None
        allocations = [a for a in self.api.allocations(self.job_id(api)) if a.get("ClientStatus") == "running"]
        if not allocations:
            raise TargetError(f"API {api!r} has no running allocation; is the stack up? (`stack status --nomad`)")
        if follow:  # every running allocation's stream, merged; the ones placed later are followed too
            yield from _follow(self.api, self.job_id(api), cutoff)
            return
        for alloc in allocations:
            for line in lines_since(self.api.logs(alloc["ID"], TASK, "stderr", follow=follow), cutoff):
                yield f"{alloc['ID'][:8]} | {line}"

    def scale(self, api_name: str, replicas: int, force: bool, progress: Progress) -> None:
        self.loaded.spec.api(api_name)  # UnknownApi names the ones it has
        self._own()
        if self.api.job(self.job_id(api_name)) is None:
            raise TargetError(f"Nomad has no job {self.job_id(api_name)}; run `stack up --nomad` first")
        group = (self.api.scale_status(self.job_id(api_name)).get("TaskGroups") or {}).get(GROUP) or {}
        manual = latest_source(group) == MANUAL_SOURCE
        api = check_scale(self.loaded, api_name, replicas, force, "stack up --nomad", manual=manual)
        # The source tells the autoscaler this count was set by hand (it holds until the next `up`).
        meta = {"source": MANUAL_SOURCE if force or manual else "stack scale"}
        self.api.scale(self.job_id(api.name), GROUP, replicas, f"stack scale {api.name} {replicas}", meta)
        progress(f"{api.name}: asked Nomad for {replicas} allocation(s)")

    def remove_images(self) -> str:
        done = images.removed_text(images.remove_all(self.project, [a.name for a in self.loaded.spec.every_api]))
        return f"{done}; the copies pushed to {self.registry or 'the registry'} stay (use the registry's tools)"

    def image_note(self) -> str:
        apis = [a.name for a in self.loaded.spec.every_api]
        return images.note(self.project, apis, self.loaded.spec.build.base_image, self.registry)

    def left_running(self) -> str:
        root = self.loaded.root
        return (
            f"the jobs of {self.project} already submitted stay with Nomad, which goes on placing them: "
            f"`stack status --nomad -p {root}` shows them, `stack down --nomad {root}` stops them"
        )

    def down(self, volumes: bool) -> bool:
        """Stop every job of the project; `volumes` (--purge) also purges them from Nomad's state."""
        self.api.check()
        self._own()
        job_ids = [self.job_id(a.name) for a in self.loaded.spec.apis]
        job_ids += [f"{self.project}-{role}" for role in ("traefik", "prometheus", "autoscaler")]
        stopped = False
        for job_id in job_ids:
            job = self.api.job(job_id)
            if job is None or (job.get("Meta") or {}).get("stack_project") != self.project:
                continue
            if job.get("Stop") and not volumes:
                continue
            stopped = self.api.deregister(job_id, purge=volumes) or stopped
        if volumes:  # purged: the API keys, the TLS, the splitters' routes and the canaries go with the jobs
            forget_secrets(self.api, self.loaded)
            NomadSplits(self.api, self.project).forget()
        return stopped

    def running(self) -> bool:
        quick = NomadApi(self.settings, timeout=3)  # a cluster that does not answer at once runs nothing of ours
        for api in self.loaded.spec.apis:
            try:
                job = quick.job(self.job_id(api.name))
            except StackError:
                return False
            if job is not None and not job.get("Stop"):
                return True
        return False

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{self.loaded.root.resolve()}"

    def _own(self) -> None:
        """One stack per project name on a cluster: refuse to act on jobs of this name that a `stack up
        --nomad` from another directory (or another machine) registered."""
        for job_id in [self.job_id(a.name) for a in self.loaded.spec.apis]:
            owner = owner_of(self.api.job(job_id))
            if owner and owner != self.owner:
                raise NameTaken(
                    f"project {self.project} already runs on Nomad at {self.settings.address}, registered from "
                    f"{owner}; one stack per project name: stop it there (`stack down --nomad`), or give this "
                    f"copy a name of its own (`project:` in {self.loaded.path})"
                )

    def scaler(self) -> Scaler:
        return NomadScaler(self.project, self.api.client)

    def prometheus_url(self) -> str:
        raise StackError(
            "on Nomad the stack's Prometheus runs in the cluster: pass its address, "
            f"`stack usage --nomad --prometheus http://<node>:{self.loaded.spec.prometheus.port}`"
        )

    def dashboard_url(self) -> str:
        """The dashboard through the gateway (on the Nomad address' host, where a one-node cluster runs it);
        its data asks for one of gateway.api_keys as ?key=, which is never printed."""
        spec = self.loaded.spec
        if not spec.gateway.all_keys:
            raise TargetError(
                "on Nomad the dashboard is reached through the gateway and needs a key: set gateway.api_keys "
                "in stack.yaml and run `stack up --nomad`"
            )
        self.api.check()
        if self.api.job(f"{self.project}-autoscaler") is None:
            raise NotRunning(f"the controller of {self.project} is not running; `stack up --nomad` starts it")
        scheme = "https" if spec.gateway.tls is not None else "http"
        host = urlparse(self.settings.address).hostname or "127.0.0.1"
        return f"{scheme}://{host}:{spec.gateway.port}/_stack/dashboard/?key=API_KEY"

    def split(self, splitter: str, weights: dict[str, int]) -> None:
        """Weights set by hand, until the next `stack up --nomad`: into the gateway's variable (Nomad
        re-renders Traefik's routes from it within seconds, no restart)."""
        self.api.check()
        splits = NomadSplits(self.api, self.project)
        if self.api.get_variable(routes_variable(self.project)) is None:
            raise TargetError(f"the gateway of {self.project} has no splitter routes yet; run `stack up --nomad`")
        splitters = splitters_of(self.loaded.spec)
        splits.set_overrides(with_override(splits.overrides(), splitters, splitter, weights))
        splits.write_routes(
            splitters,
            splits.canary_weights(splitters_of(self.loaded.spec, current_versions(self.loaded))),
            auth=bool(self.loaded.spec.gateway.keys),
        )


def _follow(api: NomadApi, job_id: str, cutoff: float | None) -> Iterator[str]:
    """`stack logs --follow --nomad`: each running allocation's stderr as it is written, re-listed as
    allocations are placed (scaled out, replaced); prefixed with the allocation's short id."""
    ids: dict[str, str] = {}
    opened: set[str] = set()

    def listed() -> list[tuple[str, bool]]:
        found = [a for a in api.allocations(job_id) if a.get("ClientStatus") == "running"]
        ids.update({str(a["ID"])[:8]: str(a["ID"]) for a in found})
        return [(str(a["ID"])[:8], True) for a in found]

    def open_stream(name: str, start: float | None) -> Stream:
        lines = api.logs(ids[name], TASK, "stderr", follow=True, from_start=start is not None)
        again = name in opened
        opened.add(name)
        # Listed at the start: the window; placed since: all of it; read before: what came after.
        return Stream(lines_since(lines, start if again else cutoff if start is None else None))

    return follow_replicas(listed, open_stream)


def _affinity(items: dict[str, str] | None) -> dict[str, Any]:
    """The controller's affinity status (its variable), per API; {} when there is none or it is not JSON."""
    try:
        shown = json.loads((items or {}).get("status", "{}"))
    except ValueError:
        return {}
    return shown if isinstance(shown, dict) else {}
