"""Who may talk to the server: a bearer key compared in constant time, and without a key, loopback only."""
from __future__ import annotations

import hmac
import ipaddress

from ..errors import ConfigError
from .errors import APIError


def check_key(expected: str | None, authorization: str | None) -> None:
    """Raise a 401 APIError unless ``authorization`` is ``Bearer <expected>`` (no key set: anyone)."""
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())
    if not ok:
        what = "no API key given" if not authorization else "wrong API key"
        raise APIError(401, f"{what}: send the server's key as 'Authorization: Bearer KEY'",
                       "authentication_error", code="invalid_api_key")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """A server without a key listens on loopback only: anyone who can reach the port may use it."""
    if api_key is None and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} without an API key: give --api-key KEY (or set "
                          f"CORERT_API_KEY), or listen on 127.0.0.1")
