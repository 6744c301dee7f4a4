"""The local Ray instance ``corert serve --ray`` starts (its benchmark and tests start it the same way), with
the endpoint served by our ingress itself on the user's port: Serve's direct ingress, no proxy in between.

Through Serve's HTTP proxy every streamed event crossed one more process (quiet 2 cores, one replica:
0.4 CPU ms per token, ~8% of what a token costs to decode, spent on the cores that decode it).  With direct
ingress the ingress replica runs the HTTP server.  Serve gives ingress replicas ports from a range
(``RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT``, the maximum excluded); a range of one port is the user's
``--port``, and our app has one ingress replica.  Serve still starts its proxy (on the head node), which
is given a free port of its own and serves nothing.

Serve 2.60 binds that port without ``SO_REUSEADDR``: an ingress replaced (crashed, or its app redeployed)
could not bind it while the old one's closed connections sit in TIME_WAIT (60 s), and Serve then blocks the
port for good.  :func:`reuse_address_for_direct_ingress`, called by the ingress before Serve starts its
server, sets it on that server's socket (a live listener on the port still fails the bind).

Ray's daemons and the processes they start inherit the environment of the process that starts Ray, which
is where these settings go (a cluster joined with ``--ray-address`` keeps its own, proxy included).
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Iterator

#: in the environment of the process that starts Ray (its daemons and workers inherit it): Serve's HTTP proxy
#: reads the ingress's response over gRPC too, not as a Ray object per item (proxy + ingress CPU per streamed
#: event 1.6 -> 0.9 ms, model-free replica); what a cluster needs when its endpoint is Serve's proxy
RAY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1"}


def direct_ingress_env(port: int) -> dict[str, str]:
    """Serve's settings for an endpoint on ``port`` served by the ingress replica itself."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
            # a replaced ingress takes the port again at once (Serve would hold it out of its pool for ~60 s,
            # for load balancers that we do not have)
            "RAY_SERVE_PORT_QUARANTINE_S": "0",
            # nothing in front has to deregister the ingress: its shutdown waits for its requests only, not
            # 30 s more (every app deleted, every shutdown)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_local(host: str, port: int, **init: Any) -> None:
    """Starts a local Ray instance (``init``: more of ``ray.init``'s arguments) and Serve, the app's endpoint
    to be ``host:port``.  Ray gives its raylet 30 s to register: a loaded machine may need a second go."""
    import ray
    from ray import serve

    env = {**{k: os.environ.get(k, v) for k, v in RAY_ENV.items()}, **direct_ingress_env(port)}
    for attempt in range(2):
        try:
            with _environment(env):
                ray.init(include_dashboard=False, log_to_driver=False, **init)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    try:
        # the proxy Serve starts anyway: on a port nobody is told of (the ingress answers on ``port``)
        serve.start(http_options={"host": host, "port": free_port(host)})
    except BaseException:
        ray.shutdown()
        raise


class _ReusingSockets:
    """The ``socket`` module as Serve's HTTP server module sees it, with SO_REUSEADDR on every new socket."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def reuse_address_for_direct_ingress() -> None:
    """In the ingress's process, when Serve's direct ingress is on: its endpoint socket with SO_REUSEADDR."""
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        return
    from ray.serve._private import http_util

    http_util.socket = _ReusingSockets()
