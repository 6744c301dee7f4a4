"""Who may talk to the server: a bearer key compared in constant time, and without a key, loopback only."""
from __future__ import annotations

import hmac
import ipaddress

from ..errors import ConfigError
from .errors import APIError


def check_key(expected: str | None, given: str | None) -> None:
    """Raise a 401 APIError unless ``given`` (the bearer token of the request, None without one) is the
    server's key (no key set: anyone may call)."""
    if expected is None:
        return
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        what = "no API key given" if given is None else "wrong API key"
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
