"""The Nomad HTTP API calls the target makes, through python-nomad, with errors people can act on.

Every call goes through python-nomad's request helper (its address, token,
namespace, region and TLS handling); what fails becomes one `StackError`
paragraph naming the fix: an unreachable cluster, an ACL denial, an unknown
namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import nomad
from nomad.api import exceptions
from nomad.api.base import Requester

from stack.errors import StackError, TargetError
from stack.targets.nomad.connection import NomadSettings


class _Service(Requester):
    """`/v1/service/<name>`: python-nomad has no class for Nomad's own service catalogue; its request helper
    (address, token, namespace, TLS) serves it as it serves the others."""

    ENDPOINT = "service"


class NomadApi:
    def __init__(self, settings: NomadSettings, timeout: float = 15) -> None:
        self.settings = settings
        self.client: nomad.Nomad = settings.client(timeout=timeout)
        self._service = _Service(**self.client.requester_settings)

    # -- the calls ------------------------------------------------------------------------

    def check(self) -> None:
        """Reachable, the token accepted, the namespace there: or one clear error."""
        self._call(lambda: self.client.status.leader.request(method="get"), "reach the cluster")
        namespace = self.settings.namespace
        if namespace and namespace != "default":
            try:
                self._call(lambda: self.client.namespace.request(namespace, method="get"), "read the namespace")
            except _NotFound:
                raise TargetError(
                    f"Nomad namespace {namespace!r} (NOMAD_NAMESPACE) does not exist on {self.settings.address}: "
                    f"create it (`nomad namespace apply {namespace}`) or unset NOMAD_NAMESPACE"
                ) from None

    def job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self._json(lambda: self.client.job.request(job_id, method="get"), f"read job {job_id}")
        except _NotFound:
            return None

    def register(self, job: dict[str, Any]) -> dict[str, Any]:
        return self._json(lambda: self.client.jobs.request(method="post", json={"Job": job}), f"register {job['ID']}")

    def deployment(self, job_id: str) -> dict[str, Any] | None:
        body = self._json(lambda: self.client.job.request(job_id, "deployment", method="get"), "read a deployment")
        return body or None

    def allocations(self, job_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(
            lambda: self.client.job.request(job_id, "allocations", method="get"), f"list allocations of {job_id}"
        )
        return result or []

    def deregister(self, job_id: str, purge: bool) -> bool:
        params = {"purge": "true"} if purge else None
        try:
            self._call(lambda: self.client.job.request(job_id, method="delete", params=params), f"stop {job_id}")
        except _NotFound:
            return False
        return True

    def scale(self, job_id: str, group: str, count: int, message: str, meta: dict[str, str]) -> None:
        body = {"Count": count, "Target": {"Group": group}, "Message": message[:300], "Meta": meta}
        self._call(lambda: self.client.job.request(job_id, "scale", method="post", json=body), f"scale {job_id}")

    def scale_status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            lambda: self.client.job.request(job_id, "scale", method="get"), f"read the scale of {job_id}"
        )
        return result or {}

    def put_variable(self, path: str, items: dict[str, str]) -> None:
        """Create or replace a Nomad Variable (encrypted at rest by Nomad, readable by the job it is under)."""
        body = {"Path": path, "Items": items}
        if self.settings.namespace:
            body["Namespace"] = self.settings.namespace
        self._call(lambda: self.client.variable.request(path, method="put", json=body), f"write variable {path}")

    def get_variable(self, path: str) -> dict[str, str] | None:
        """A Nomad Variable's items; None when there is none."""
        try:
            body = self._json(lambda: self.client.variable.request(path, method="get"), f"read variable {path}")
        except _NotFound:
            return None
        items = (body or {}).get("Items")
        return {str(k): str(v) for k, v in items.items()} if isinstance(items, dict) else None

    def delete_variable(self, path: str) -> None:
        with contextlib.suppress(_NotFound):
            self._call(lambda: self.client.variable.request(path, method="delete"), f"delete variable {path}")

    def service(self, name: str) -> list[dict[str, Any]]:
        """The registrations of one service in Nomad's catalogue (each allocation's address and port)."""
        namespace = {"namespace": self.settings.namespace} if self.settings.namespace else None
        found: list[dict[str, Any]] = self._json(
            lambda: self._service.request(name, params=namespace, method="get"), f"read service {name}"
        )
        return found or []

    def nodes(self) -> list[dict[str, Any]]:
        stubs: list[dict[str, Any]] = self._json(lambda: self.client.nodes.request(method="get"), "list the nodes")
        return stubs or []

    def node(self, node_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(lambda: self.client.node.request(node_id, method="get"), "read a node")
        return result

    def logs(self, alloc_id: str, task: str, kind: str, follow: bool, from_start: bool = False) -> Iterator[str]:
        """A task's stdout or stderr, as lines; with `follow`, until the caller stops reading: its last
        20 kB first, or all of it `from_start` (an allocation placed while the caller follows)."""
        params = {"task": task, "type": kind, "plain": "true", "follow": "true" if follow else "false"}
        if follow:
            params.update({"origin": "start", "offset": "0"} if from_start else {"origin": "end", "offset": "20000"})
        response = self._call(
            lambda: self.client.client.stream_logs.request(alloc_id, params=params, method="get", stream=follow),
            f"read the logs of allocation {alloc_id[:8]}",
        )
        if not follow:
            yield from response.text.splitlines()
            return
        yield from (line.decode(errors="replace") for line in response.iter_lines())

    # -- errors ------------------------------------------------------------------------------

    def _json(self, call: Any, what: str) -> Any:
        response = self._call(call, what)
        return response.json() if response.content else None

    def _call(self, call: Any, what: str) -> Any:
        try:
            return call()
        except exceptions.URLNotFoundNomadException as exc:
            raise _NotFound(_text(exc)) from exc
        except exceptions.URLNotAuthorizedNomadException as exc:
            raise TargetError(
                f"Nomad refused to {what} (403: {_text(exc)}). Set NOMAD_TOKEN to a token whose ACL policy allows "
                "it: submit-job, read-job, scale-job and read-logs on the namespace, node:read "
                "(nomad/README.md has the policy)."
            ) from None
        except exceptions.BadRequestNomadException as exc:
            raise TargetError(f"Nomad refused to {what}: {_text(exc)}") from None
        except exceptions.BaseNomadException as exc:
            if getattr(exc, "nomad_resp", None) is not None and hasattr(exc.nomad_resp, "status_code"):
                raise TargetError(f"Nomad could not {what}: {_text(exc)}") from None
            raise TargetError(
                f"cannot reach Nomad at {self.settings.address} to {what}: {exc.nomad_resp}. "
                "Set NOMAD_ADDR to an agent's address (and NOMAD_CACERT/NOMAD_SKIP_VERIFY for TLS)."
            ) from None


class _NotFound(StackError):
    pass


def _text(exc: exceptions.BaseNomadException) -> str:
    response = getattr(exc, "nomad_resp", None)
    return str(getattr(response, "text", response) or exc).strip()[:400]
