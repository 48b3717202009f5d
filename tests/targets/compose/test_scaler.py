"""How the Compose scaler turns a running replica into the config of a new one.

The end-to-end path is in test_compose_autoscale.py; this pins the GPU-slot
case, which needs an NVIDIA host to run for real: a replica added to slot 1
gets slot 1's service name and GPUs, keeping everything else of the copy.
"""

from __future__ import annotations

from stack.targets.compose.scaler import NUMBER_LABEL, SERVICE_LABEL, _copy_config

INSPECT = {
    "Config": {
        "Hostname": "3f2a9c1b0d4e",  # belongs to the copied container: must not be copied
        "Image": "shop-classify:abc123",
        "Env": ["STACK_SERVING_CONFIG={}"],
        "Labels": {SERVICE_LABEL: "classify-abc123-gpu0", NUMBER_LABEL: "1", "com.docker.compose.config-hash": "h"},
        "Healthcheck": {"Test": ["CMD", "python", "-m", "serving.probe", "http://127.0.0.1:8888/readyz"]},
    },
    "HostConfig": {
        "NetworkMode": "shop-stack",
        "RestartPolicy": {"Name": "unless-stopped"},
        "DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}],
    },
    "NetworkSettings": {"Networks": {"shop-stack": {"Aliases": ["shop-classify-abc123-gpu0-1"]}}},
}


def test_a_gpu_slot_copy_takes_the_slot_s_service_and_gpus() -> None:
    config = _copy_config(INSPECT, "classify-abc123-gpu1", 1, ["1"])
    assert "Hostname" not in config
    assert config["Labels"][SERVICE_LABEL] == "classify-abc123-gpu1"
    assert config["Labels"]["com.docker.compose.config-hash"] == "h"
    [gpus] = config["HostConfig"]["DeviceRequests"]
    assert gpus == {"Driver": "nvidia", "DeviceIDs": ["1"], "Capabilities": [["gpu"]]}
    assert config["HostConfig"]["RestartPolicy"] == {"Name": "unless-stopped"}
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"shop-stack": {"Aliases": ["classify-abc123-gpu1"]}}}
    # The copied container keeps its own GPUs.
    assert INSPECT["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]


def test_a_plain_copy_gets_the_next_number() -> None:
    config = _copy_config(INSPECT, "classify-abc123-gpu0", 4, None)
    assert config["Labels"][NUMBER_LABEL] == "4"
    assert config["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]
