"""Nomad HCL job files -> the JSON job the Nomad HTTP API takes.

The rendered HCL is the one source: `stack up --nomad` submits what the user
can read. This does what Nomad's `/v1/jobs/parse` does for the blocks our
templates use (PascalCase fields, durations in integer nanoseconds, labelled
blocks as lists with Name/Label), without needing a cluster to parse.
"""

from __future__ import annotations

from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

from stack.spec.units import parse_duration

_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
)


def hcl_to_job(text: str) -> dict[str, Any]:
    document = _unescape(hcl2.loads(text, serialization_options=_OPTIONS))
    ((job_id, body),) = _labelled(document["job"])
    return _job(job_id, body)


def _unescape(node: Any) -> Any:
    """HCL's escaped sigils `$${` and `%%{` mean literal `${` and `%{`."""
    if isinstance(node, str):
        return node.replace("$${", "${").replace("%%{", "%{")
    if isinstance(node, dict):
        return {key: _unescape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unescape(item) for item in node]
    return node


def _ns(value: str) -> int:
    return round(parse_duration(value) * 1e9)


def _labelled(blocks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, body) for block in blocks for label, body in block.items()]


def _one(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    blocks = body.get(key)
    return blocks[0] if blocks else None


def _job(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = {
        "ID": job_id,
        "Name": job_id,
        "Type": body.get("type", "service"),
        "Datacenters": body.get("datacenters", ["*"]),
        "TaskGroups": [_group(name, group) for name, group in _labelled(body.get("group", []))],
    }
    if (meta := _one(body, "meta")) is not None:
        job["Meta"] = meta
    if (update := _one(body, "update")) is not None:
        job["Update"] = _update(update)
    return job


def _update(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "MaxParallel": body["max_parallel"],
        "HealthCheck": body["health_check"],
        "MinHealthyTime": _ns(body["min_healthy_time"]),
        "HealthyDeadline": _ns(body["healthy_deadline"]),
        "ProgressDeadline": _ns(body["progress_deadline"]),
        "AutoRevert": body["auto_revert"],
        "Canary": body["canary"],
    }


def _group(name: str, body: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = {"Name": name, "Count": body.get("count", 1)}
    if (scaling := _one(body, "scaling")) is not None:
        group["Scaling"] = {"Enabled": scaling["enabled"], "Min": scaling["min"], "Max": scaling["max"]}
        if "policy" in scaling:
            # The policy stays free-form, as Nomad stores it from HCL: blocks are lists,
            # labelled blocks lists of {label: [body]}; the Nomad Autoscaler reads this shape.
            group["Scaling"]["Policy"] = _free_form(scaling["policy"][0])
    if (network := _one(body, "network")) is not None:
        group["Networks"] = [_network(network)]
    if (restart := _one(body, "restart")) is not None:
        group["RestartPolicy"] = {
            "Attempts": restart["attempts"],
            "Interval": _ns(restart["interval"]),
            "Delay": _ns(restart["delay"]),
            "Mode": restart["mode"],
        }
    if (reschedule := _one(body, "reschedule")) is not None:
        group["ReschedulePolicy"] = {
            "Delay": _ns(reschedule["delay"]),
            "DelayFunction": reschedule["delay_function"],
            "MaxDelay": _ns(reschedule["max_delay"]),
            "Unlimited": reschedule["unlimited"],
        }
        if "attempts" in reschedule:  # a bounded policy (unlimited = false): this many in `interval`
            group["ReschedulePolicy"].update(
                {"Attempts": reschedule["attempts"], "Interval": _ns(reschedule["interval"])}
            )
    if (disk := _one(body, "ephemeral_disk")) is not None:
        group["EphemeralDisk"] = {
            "Sticky": disk.get("sticky", False),
            "Migrate": disk.get("migrate", False),
            "SizeMB": disk.get("size", 300),
        }
    if "service" in body:
        group["Services"] = [_service(service) for service in body["service"]]
    group["Tasks"] = [_task(task_name, task) for task_name, task in _labelled(body.get("task", []))]
    return group


def _free_form(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out[key] = [
                {label: [_free_form(inner)] for label, inner in block.items()}
                if all(isinstance(inner, dict) for inner in block.values())
                else _free_form(block)
                for block in value
            ]
        else:
            out[key] = value
    return out


def _network(body: dict[str, Any]) -> dict[str, Any]:
    dynamic, reserved = [], []
    for label, port in _labelled(body.get("port", [])):
        if "static" in port:
            reserved.append({"Label": label, "Value": port["static"], "To": port.get("to", 0)})
        else:
            dynamic.append({"Label": label, "To": port.get("to", 0)})
    network: dict[str, Any] = {"Mode": body.get("mode", "host")}
    if dynamic:
        network["DynamicPorts"] = dynamic
    if reserved:
        network["ReservedPorts"] = reserved
    return network


def _service(body: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = {
        "Provider": body.get("provider", "consul"),
        "Name": body["name"],
        "PortLabel": body["port"],
        "Tags": body.get("tags", []),
    }
    if "check" in body:
        service["Checks"] = [_check(check) for check in body["check"]]
    return service


_CHECK_KEYS = frozenset({"name", "type", "path", "interval", "timeout", "check_restart"})


def _check(check: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(check) - _CHECK_KEYS)
    if unknown:  # a field of the HCL the JSON would drop: the user reads one job, Nomad would run another
        raise ValueError(f"service check: {', '.join(unknown)} not converted to Nomad's JSON")
    converted: dict[str, Any] = {
        "Type": check["type"],
        "Path": check["path"],
        "Interval": _ns(check["interval"]),
        "Timeout": _ns(check["timeout"]),
    }
    if "name" in check:
        converted["Name"] = check["name"]
    if (restart := _one(check, "check_restart")) is not None:
        converted["CheckRestart"] = {
            "Limit": int(restart.get("limit", 0)),
            "Grace": _ns(restart.get("grace", "1s")),
            "IgnoreWarnings": bool(restart.get("ignore_warnings", False)),
        }
    return converted


def _task(name: str, body: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = {"Name": name, "Driver": body["driver"], "Config": _one(body, "config") or {}}
    if (env := _one(body, "env")) is not None:
        task["Env"] = env
    if "shutdown_delay" in body:
        task["ShutdownDelay"] = _ns(body["shutdown_delay"])
    if "kill_timeout" in body:
        task["KillTimeout"] = _ns(body["kill_timeout"])
    if (resources := _one(body, "resources")) is not None:
        task["Resources"] = _resources(resources)
    if "template" in body:
        task["Templates"] = [
            {
                "DestPath": template["destination"],
                "EmbeddedTmpl": template["data"],
                "ChangeMode": template.get("change_mode", "restart"),
                "ChangeSignal": template.get("change_signal", ""),
                "LeftDelim": template.get("left_delimiter", "{{"),
                "RightDelim": template.get("right_delimiter", "}}"),
                "Envvars": template.get("env", False),
                **({"Perms": template["perms"]} if "perms" in template else {}),
                **({"Uid": template["uid"]} if "uid" in template else {}),
                **({"Gid": template["gid"]} if "gid" in template else {}),
            }
            for template in body["template"]
        ]
    return task


def _resources(body: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = {"CPU": body["cpu"], "MemoryMB": body["memory"]}
    devices = []
    for name, device in _labelled(body.get("device", [])):
        requested: dict[str, Any] = {"Name": name, "Count": device.get("count", 1)}
        constraints = [_constraint(c) for c in device.get("constraint", [])]
        if constraints:
            requested["Constraints"] = constraints
        devices.append(requested)
    if devices:
        resources["Devices"] = devices
    return resources


def _constraint(block: dict[str, Any]) -> dict[str, str]:
    return {
        "LTarget": block.get("attribute", ""),
        "Operand": block.get("operator", "="),
        "RTarget": block.get("value", ""),
    }
