# Nomad client agent config for a GPU node: the docker driver with the NVIDIA
# runtime and the nvidia device plugin, so `device "nvidia/gpu"` in the API
# jobs finds GPUs. Needs the NVIDIA driver and Container Toolkit on the node
# (see compose/README.md for the toolkit steps) and the nomad-device-nvidia
# plugin binary in plugin_dir.
client {
  enabled = true
}

plugin_dir = "/opt/nomad/plugins"

plugin "docker" {
  config {
    allow_runtimes = ["runc", "nvidia"]
  }
}

plugin "nomad-device-nvidia" {
  config {
    enabled            = true
    fingerprint_period = "1m"
  }
}
