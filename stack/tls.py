"""HTTPS at the gateway (`gateway.tls`): the checks of the certificate files before anything starts,
Traefik's static arguments for TLS, ACME and the plain-HTTP redirect, and its dynamic TLS configuration.

The dynamic configuration (`tls.yml`, beside the routes) carries the certificate and key *contents*,
not their paths: Traefik reloads a provider's configuration only when it differs, so a renewed
certificate written over the old file is picked up when the control plane (which re-reads the files
whenever it publishes routes) writes the new contents — no restart. The file is 0600.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from stack.routes import ENTRYPOINT, write

TLS_FILE = "tls.yml"
HTTP_ENTRYPOINT = "http"  # plain HTTP with tls: a redirect to HTTPS, and ACME's http challenge
RESOLVER = "acme"
CLIENT_CERT_MIDDLEWARE = "stack-client-cert"  # the client certificate's subject to the replicas
VERSIONS = {"1.2": "VersionTLS12", "1.3": "VersionTLS13"}


@dataclass(frozen=True)
class TlsFiles:
    """The certificate files as the control plane that writes `tls.yml` reads them (host paths on the
    local target, mounted paths in the Compose controller)."""

    cert_file: str | None
    key_file: str | None
    client_ca_file: str | None
    min_version: str = "1.2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TlsFiles:
        return cls(
            data.get("cert_file"), data.get("key_file"), data.get("client_ca_file"), data.get("min_version", "1.2")
        )


def dynamic_config(files: TlsFiles) -> dict[str, Any]:
    """Traefik's `tls` section (and the client-certificate middleware) with the files' contents inline.
    Raises OSError when a file cannot be read (the previous configuration then stays)."""
    options: dict[str, Any] = {
        "minVersion": VERSIONS[files.min_version],
        "alpnProtocols": ["h2", "http/1.1"],  # HTTP/2 where the client offers it
        "sniStrict": False,  # clients that connect by IP address still get the certificate
    }
    config: dict[str, Any] = {"tls": {"options": {"default": options}}}
    if files.client_ca_file:
        options["clientAuth"] = {
            "caFiles": [Path(files.client_ca_file).read_text()],
            "clientAuthType": "RequireAndVerifyClientCert",
        }
        config["http"] = {
            "middlewares": {
                CLIENT_CERT_MIDDLEWARE: {
                    "passTLSClientCert": {
                        "info": {"subject": {"commonName": True, "organization": True, "organizationalUnit": True}}
                    }
                }
            }
        }
    if files.cert_file and files.key_file:
        pair = {"certFile": Path(files.cert_file).read_text(), "keyFile": Path(files.key_file).read_text()}
        config["tls"]["certificates"] = [pair]
        config["tls"]["stores"] = {"default": {"defaultCertificate": pair}}
    return config


def render_config(files: TlsFiles) -> str:
    """`tls.yml`'s text. Raises OSError when a file cannot be read."""
    return "# The gateway's TLS, written by the stack. Do not edit.\n" + yaml.safe_dump(
        dynamic_config(files), sort_keys=True, default_flow_style=False
    )


def write_config(directory: Path, files: TlsFiles) -> bool:
    """Write `tls.yml` into Traefik's watched directory when its contents changed (0600: it holds the key)."""
    try:
        text = render_config(files)
    except OSError:
        return False  # mid-renewal, or gone: keep serving the certificate Traefik has
    return write(directory, text, 0o600, name=TLS_FILE)


@dataclass(frozen=True)
class AcmePaths:
    storage: str  # where Traefik keeps the account and certificates (0600, reused across `stack up`)
    ca_file: str | None = None  # as Traefik sees acme.ca_file (LEGO_CA_CERTIFICATES)


def traefik_args(tls: Any, http_port: int | None, acme: AcmePaths | None, http_address: str = "") -> list[str]:
    """Traefik's static arguments for `gateway.tls` (a stack.spec.models.Tls): TLS on the gateway's
    entrypoint, the redirect listener, the ACME resolver, the client-certificate middleware."""
    web = f"--entrypoints.{ENTRYPOINT}.http"
    args = [f"{web}.tls=true"]
    if tls.client_ca_file:
        args.append(f"{web}.middlewares={CLIENT_CERT_MIDDLEWARE}@file")
    if http_port is not None:
        plain = f"--entrypoints.{HTTP_ENTRYPOINT}"
        args += [
            f"{plain}.address={http_address}:{http_port}",
            f"{plain}.http.redirections.entryPoint.to={ENTRYPOINT}",
            f"{plain}.http.redirections.entryPoint.scheme=https",
            f"{plain}.http.redirections.entryPoint.permanent=true",
        ]
    if tls.acme is not None and acme is not None:
        resolver = f"--certificatesresolvers.{RESOLVER}.acme"
        args += [
            f"{resolver}.email={tls.acme.email}",
            f"{resolver}.storage={acme.storage}",
            f"{resolver}.caserver={tls.acme.ca_server}",
            f"{web}.tls.certresolver={RESOLVER}",
            f"{web}.tls.domains[0].main={tls.acme.domains[0]}",
        ]
        if len(tls.acme.domains) > 1:
            args.append(f"{web}.tls.domains[0].sans={','.join(tls.acme.domains[1:])}")
        if tls.acme.challenge == "http":
            args.append(f"{resolver}.httpchallenge.entrypoint={HTTP_ENTRYPOINT}")
        else:
            args.append(f"{resolver}.tlschallenge=true")
    return args


def tls_files(root: Path, tls: Any, where: Callable[[Path], str] = str) -> TlsFiles | None:
    """`gateway.tls`'s files (relative to stack.yaml at `root`) as the control plane reads them;
    `where` maps a host path to that view (a mounted path in the Compose controller)."""
    if tls is None:
        return None

    def seen(name: str | None) -> str | None:
        return where((root / name).resolve()) if name else None

    return TlsFiles(seen(tls.cert_file), seen(tls.key_file), seen(tls.client_ca_file), tls.min_version)


def keys_in_clear(gateway: Any, target: str) -> list[str]:
    """A warning when `gateway.api_keys` would cross the network in clear text (no TLS, not on 127.0.0.1)."""
    host = gateway.host or ("127.0.0.1" if target == "local" else "0.0.0.0")
    if not gateway.all_keys or gateway.tls is not None or host in ("127.0.0.1", "localhost", "::1"):
        return []
    return [
        f"gateway.api_keys is set and the gateway listens on {host} without TLS: the keys would travel in clear "
        "text; set gateway.tls (the README's HTTPS section) or gateway.host: 127.0.0.1"
    ]
