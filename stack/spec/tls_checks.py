"""The checks of `gateway.tls`'s files before anything starts: readable, a PEM certificate that is valid
now, a key that matches it (and that others cannot read), a CA file for client certificates."""

from __future__ import annotations

import datetime
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

Add = Callable[[tuple[Any, ...], str], None]


def check_tls_files(tls: Any, root: Path, add: Add) -> list[str]:
    """The files of `gateway.tls` (the raw mapping of stack.yaml): each problem to `add` with its field;
    returns warnings (a key others may read)."""
    if not isinstance(tls, dict):
        return []
    at = ("gateway", "tls")
    warnings: list[str] = []
    cert, key = _readable(tls.get("cert_file"), root, (*at, "cert_file"), add), None
    if isinstance(tls.get("key_file"), str):
        key = _readable(tls["key_file"], root, (*at, "key_file"), add)
        if key is not None and key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"gateway.tls.key_file {tls['key_file']} is readable by other users "
                f"(mode {stat.S_IMODE(key.stat().st_mode):o}): `chmod 600 {key}`"
            )
    if cert is not None:
        _certificate_checks(cert, key, tls, add)
    ca = _readable(tls.get("client_ca_file"), root, (*at, "client_ca_file"), add)
    if ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError as exc:
            add((*at, "client_ca_file"), f"{tls['client_ca_file']} is not a PEM CA certificate ({exc.reason})")
    acme = tls.get("acme")
    if isinstance(acme, dict):
        _readable(acme.get("ca_file"), root, (*at, "acme", "ca_file"), add)
    return warnings


def _readable(name: Any, root: Path, at: tuple[Any, ...], add: Add) -> Path | None:
    if not isinstance(name, str):
        return None
    path = (root / name).resolve()
    try:
        path.read_bytes()
    except FileNotFoundError:
        add(at, f"{name} not found (looked in {root})")
        return None
    except OSError as exc:
        add(at, f"cannot read {name}: {exc.strerror}")
        return None
    return path


def _certificate_checks(cert: Path, key: Path | None, tls: dict[str, Any], add: Add) -> None:
    from cryptography import x509  # only where a certificate file is named

    at = ("gateway", "tls", "cert_file")
    try:
        first = x509.load_pem_x509_certificate(cert.read_bytes())
    except ValueError:
        add(at, f"{tls['cert_file']} is not a PEM certificate")
        return
    now = datetime.datetime.now(datetime.UTC)
    if first.not_valid_after_utc < now:
        add(at, f"{tls['cert_file']} expired on {first.not_valid_after_utc:%Y-%m-%d}: renew it")
    elif first.not_valid_before_utc > now:
        add(at, f"{tls['cert_file']} is not valid before {first.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if key is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "MISMATCH" in str(exc):
            reason = f"does not match the certificate {tls['cert_file']}"
        else:
            reason = f"is not a usable private key ({exc.reason})"
        add(("gateway", "tls", "key_file"), f"{tls['key_file']} {reason}")
