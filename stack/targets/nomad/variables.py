"""What `stack up --nomad` keeps in Nomad Variables for its jobs: the API keys and the gateway's TLS
(each rendered into a job's secrets directory, never its environment, image or plan files)."""

from __future__ import annotations

from stack.plan.serving import api_keys_text
from stack.spec import LoadedSpec
from stack.targets.base import Progress
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.plan import batch_keys_variable, keys_variable, tls_variable
from stack.tls import render_config, tls_files


def write_keys(nomad: NomadApi, loaded: LoadedSpec, progress: Progress) -> None:
    """Each API job reads the API keys from its own Nomad Variable, rendered into its secrets directory. Always
    written (no key in it: the stack is open): the template re-renders it and the replicas follow, so keys
    added, rotated or removed apply without a restart."""
    keys = api_keys_text(loaded)
    for api in loaded.spec.apis:
        nomad.put_variable(keys_variable(f"{loaded.spec.project}-{api.name}"), {"api_keys": keys})
    # The controller checks a BatchAPI's clients and the dashboard's readers.
    nomad.put_variable(batch_keys_variable(loaded.spec.project), {"api_keys": keys})
    if loaded.spec.gateway.all_keys:
        progress(f"API keys written to the Nomad Variables nomad/jobs/{loaded.spec.project}-*")


def forget_secrets(nomad: NomadApi, loaded: LoadedSpec) -> None:
    """`stack down --purge`: the API keys (every API's and the controller's) and the gateway's TLS go
    with the jobs."""
    project = loaded.spec.project
    for api in loaded.spec.apis:
        nomad.delete_variable(keys_variable(f"{project}-{api.name}"))
    nomad.delete_variable(batch_keys_variable(project))
    nomad.delete_variable(tls_variable(project))


def write_tls(nomad: NomadApi, loaded: LoadedSpec, progress: Progress) -> None:
    """The gateway's certificate, key and client CA (inline in its tls.yml) into the Traefik job's Nomad
    Variable, which it renders into its secrets directory; a renewal is this again."""
    tls = loaded.spec.gateway.tls
    path = tls_variable(loaded.spec.project)
    files = tls_files(loaded.root, tls)
    if tls is None or files is None:
        nomad.delete_variable(path)
        return
    items = {"tls": render_config(files)}
    if tls.acme is not None and tls.acme.ca_file:
        items["acme_ca"] = (loaded.root / tls.acme.ca_file).read_text()
    nomad.put_variable(path, items)
    progress(f"the gateway's TLS written to the Nomad Variable {path}")
