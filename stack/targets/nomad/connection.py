"""A python-nomad client configured the way Nomad's own CLI reads its environment.

NOMAD_ADDR (any URL form: `https://nomad.example.com`, a trailing slash, no
port), NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, and TLS through
NOMAD_CACERT, NOMAD_CLIENT_CERT / NOMAD_CLIENT_KEY and NOMAD_SKIP_VERIFY.
python-nomad takes the address whole (`address=`), so nothing here parses
host and port by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import nomad

from stack.errors import StackError

DEFAULT_ADDR = "http://127.0.0.1:4646"


@dataclass(frozen=True)
class NomadSettings:
    address: str
    token: str | None = None
    namespace: str | None = None
    region: str | None = None
    verify: bool | str = True  # a CA bundle path, or False with NOMAD_SKIP_VERIFY
    cert: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, address: str | None = None, env: Mapping[str, str] | None = None) -> NomadSettings:
        env = os.environ if env is None else env
        raw = (address or env.get("NOMAD_ADDR") or DEFAULT_ADDR).strip()
        if "://" not in raw:
            raw = f"http://{raw}"
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StackError(
                f"NOMAD_ADDR {raw!r} is not a Nomad address: use a URL like http://10.0.0.5:4646 or "
                "https://nomad.example.com"
            )
        skip = env.get("NOMAD_SKIP_VERIFY", "").lower() in ("1", "true", "yes")
        verify: bool | str = False if skip else (env.get("NOMAD_CACERT") or True)
        cert_file, key_file = env.get("NOMAD_CLIENT_CERT"), env.get("NOMAD_CLIENT_KEY")
        return cls(
            address=f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}",
            token=env.get("NOMAD_TOKEN") or None,
            namespace=env.get("NOMAD_NAMESPACE") or None,
            region=env.get("NOMAD_REGION") or None,
            verify=verify,
            cert=(cert_file, key_file) if cert_file and key_file else None,
        )

    def client(self, timeout: float = 10) -> nomad.Nomad:
        return nomad.Nomad(
            address=self.address,
            token=self.token,
            namespace=self.namespace,
            region=self.region,
            verify=self.verify,
            cert=self.cert or (),
            timeout=timeout,
        )
