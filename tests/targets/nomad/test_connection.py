"""Nomad connection settings read as Nomad's own CLI reads them."""

from __future__ import annotations

import pytest

from stack.errors import StackError
from stack.targets.nomad.connection import NomadSettings


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("https://nomad.example.com", "https://nomad.example.com"),
        ("https://nomad.example.com/", "https://nomad.example.com"),
        ("http://10.0.0.5:4646/", "http://10.0.0.5:4646"),
        ("10.0.0.5:4646", "http://10.0.0.5:4646"),
        ("https://gw.example.com/nomad/", "https://gw.example.com/nomad"),
    ],
)
def test_any_url_form(given: str, address: str) -> None:
    settings = NomadSettings.from_env(env={"NOMAD_ADDR": given})
    assert settings.address == address
    client = settings.client()
    assert client.job._url_builder("v1/job/x") == f"{address}/v1/job/x"


def test_token_namespace_region_and_tls() -> None:
    env = {
        "NOMAD_TOKEN": "secret",
        "NOMAD_NAMESPACE": "ml",
        "NOMAD_REGION": "eu",
        "NOMAD_CACERT": "/etc/nomad/ca.pem",
        "NOMAD_CLIENT_CERT": "/etc/nomad/cli.pem",
        "NOMAD_CLIENT_KEY": "/etc/nomad/cli-key.pem",
    }
    settings = NomadSettings.from_env(env=env)
    assert (settings.address, settings.token, settings.namespace, settings.region) == (
        "http://127.0.0.1:4646",
        "secret",
        "ml",
        "eu",
    )
    assert settings.verify == "/etc/nomad/ca.pem" and settings.cert == ("/etc/nomad/cli.pem", "/etc/nomad/cli-key.pem")
    assert NomadSettings.from_env(env={**env, "NOMAD_SKIP_VERIFY": "true"}).verify is False


def test_a_bad_address_is_a_clear_error() -> None:
    with pytest.raises(StackError, match="is not a Nomad address"):
        NomadSettings.from_env(env={"NOMAD_ADDR": "ftp://nomad"})
