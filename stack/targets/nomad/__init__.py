"""The cluster target: jobs registered through Nomad's HTTP API (python-nomad), and its scaler."""
