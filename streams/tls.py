"""TLS for the gateway's and the API's listeners: server contexts and client identities.

One place builds every server-side :class:`ssl.SSLContext` (certificate and key, a CA for
client certificates, a minimum TLS version), for asyncio (MLLP) and for uvicorn (FHIR
HTTP, the API), so the listeners cannot drift apart. Loading a file is done at start-up:
a missing or unreadable certificate, key or CA stops the component loudly.

Raises :class:`TlsConfigError` (a ``ValueError``, permanent: fix the settings).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the settings' tls_min_version as ssl versions (servers and clients)
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ValueError):
    """The TLS settings of a listener cannot be used (missing key, unreadable file)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a TLS listener needs: its certificate and key, and optionally the CA that
    signs its clients' certificates (set: a client certificate is required)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    min_version: str = "1.2"

    @classmethod
    def of(
        cls,
        cert: Path | None,
        key: Path | None,
        client_ca: Path | None,
        min_version: str,
        what: str,
    ) -> TlsFiles | None:
        """The files of one listener, None for plain text (no certificate, no key).

        Raises TlsConfigError (not retried) for half a configuration: a certificate
        without its key, or a client CA without a certificate.
        """
        if cert is None and key is None:
            if client_ca is not None:
                raise TlsConfigError(f"{what}: a client CA needs TLS; set its certificate and key")
            return None
        if cert is None or key is None:
            raise TlsConfigError(f"{what}: set both the TLS certificate and its key")
        return cls(cert, key, client_ca, min_version)


def server_context(files: TlsFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context: ``files``' certificate and key, TLS ``files.min_version`` or
    newer; with ``files.client_ca`` and ``require_client_cert`` a client must present a
    certificate that CA signed (the handshake fails otherwise).

    Raises TlsConfigError (not retried) when a file is missing or is not PEM of the kind.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[files.min_version]
    try:
        ctx.load_cert_chain(files.cert, files.key)
        if files.client_ca is not None and require_client_cert:
            ctx.load_verify_locations(cafile=files.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        # the paths are settings, not patient data: name them so the operator can fix them
        raise TlsConfigError(
            f"cannot load TLS files ({files.cert}, {files.key}, {files.client_ca}): {exc}"
        ) from None
    return ctx


def peer_names(cert: dict[str, Any] | None) -> set[str]:
    """The names a verified client certificate (``SSLObject.getpeercert()``) stands for:
    its subject CNs and its subjectAltName values (DNS, URI, IP address)."""
    if not cert:
        return set()
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for _kind, value in cert.get("subjectAltName", ()))
    return names


def allowed_clients(setting: str) -> frozenset[str]:
    """The allow-list setting (comma-separated names) as a set; empty: no list."""
    return frozenset(n.strip() for n in setting.split(",") if n.strip())


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def uvicorn_config(app: Any, files: TlsFiles | None, **kwargs: Any) -> Any:
    """A loaded ``uvicorn.Config`` for ``app``, serving TLS with :func:`server_context`
    when ``files`` is given (uvicorn's own context cannot set a minimum version).

    Raises TlsConfigError (not retried) as :func:`server_context`.
    """
    import uvicorn

    if files is not None:
        # uvicorn decides "https" from ssl_certfile; its context is replaced below
        kwargs |= {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
    config = uvicorn.Config(app, **kwargs)
    if files is not None:
        context = server_context(files)  # before load(): a bad file names our settings
        config.load()
        config.ssl = context
    return config


def describe(files: TlsFiles | None, names: Iterable[str] = ()) -> str:
    """A log phrase for a listener's security: plain, TLS, or mutual TLS (+ allow-list)."""
    if files is None:
        return "plain text"
    if files.client_ca is None:
        return f"TLS {files.min_version}+"
    listed = sorted(names)
    return f"mutual TLS {files.min_version}+" + (
        f", {len(listed)} allowed clients" if listed else ""
    )


__all__ = [
    "TlsConfigError",
    "TlsFiles",
    "allowed_clients",
    "describe",
    "is_loopback",
    "peer_names",
    "server_context",
    "uvicorn_config",
]
