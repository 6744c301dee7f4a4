"""``corert serve``: build the Runtime, bind the socket ourselves (a free port for ``--port 0``; a UDS created
with mode 0600, which uvicorn would widen to 0666), print one line with the bound address, run uvicorn."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import stat
from typing import Any, Callable

from ..errors import ConfigError, CorertError
from .security import check_bind


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", default=[],
                   help="a generation model to serve (repeatable; default: the runtime's model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (without a key: loopback only)")
    p.add_argument("--port", type=int, help="TCP port (default 8080; 0 = a free port)")
    p.add_argument("--uds", metavar="PATH", help="listen on a Unix domain socket instead of TCP (mode 0600)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $CORERT_API_KEY)")
    p.add_argument("--n-seqs", type=int, help="sequences generated at once (continuous batching slots)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; more get 429")
    p.add_argument("--max-body", type=int, default=8 << 20, metavar="BYTES", help="largest request body (413)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level")
    r = p.add_argument_group("Ray Serve (the ray extra; docs/scale.md)")
    r.add_argument("--ray", action="store_true", help="serve as Ray Serve replicas behind one endpoint")
    r.add_argument("--replicas", type=int, default=1, help="replicas (default 1)")
    r.add_argument("--autoscale", metavar="MIN:MAX", help="scale between MIN and MAX replicas on queue depth")
    r.add_argument("--num-cpus", type=int, default=1, help="CPUs per replica = its threads (default 1)")
    r.add_argument("--route", choices=("prefix", "random"), default="prefix",
                   help="replica choice: prefix-aware (default) or random (a baseline)")
    r.add_argument("--models-per-replica", type=int, metavar="K",
                   help="with several --model: models a replica keeps loaded, least recently used out (default all)")
    r.add_argument("--ray-address", help="join this Ray cluster (e.g. auto) instead of starting a local one")


def run(args: argparse.Namespace, make_runtime: Callable[..., Any],
        make_config: Callable[..., Any] | None = None) -> int:
    if getattr(args, "ray", False):
        return _run_ray(args, make_config)
    try:
        import uvicorn

        from .app import ServeSettings, create_app
    except ImportError as exc:
        raise CorertError(f"corert serve needs the serve extra: pip install 'corert[serve]' ({exc})") from None
    api_key = args.api_key or os.environ.get("CORERT_API_KEY") or None
    if args.uds and args.port is not None:
        raise ConfigError("give --port or --uds, not both")
    if not args.uds:
        check_bind(args.host, api_key)
    extra = {"n_seqs": args.n_seqs} if args.n_seqs else {}
    # a server outlives its requests: a crash, hang or runaway model in an engine costs one request, not the
    # server, so models run in supervised workers unless the flag, CORERT_ISOLATION or the TOML says "none"
    runtime = make_runtime(defaults={"isolation": "process"}, **extra)
    try:
        sock, url = _bind_uds(args.uds) if args.uds else _bind_tcp(args.host, 8080 if args.port is None else args.port)
        settings = ServeSettings(models=tuple(args.model), api_key=api_key, max_queue=args.max_queue,
                                 max_body_bytes=args.max_body)
        config = uvicorn.Config(create_app(runtime, settings), log_level=args.log_level, access_log=False,
                                timeout_graceful_shutdown=5, lifespan="on")
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found:
        # let that be a no-op, so the socket file is removed and the Runtime closed below
        signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            _announcing_server(config, url).run(sockets=[sock])
        finally:
            sock.close()
            if args.uds:
                with contextlib.suppress(OSError):
                    os.unlink(args.uds)
    finally:
        runtime.close()
    return 0


def _run_ray(args: argparse.Namespace, make_config: Callable[..., Any] | None) -> int:
    # the options are checked before ray is imported (seconds): a usage error comes back at once
    api_key = args.api_key or os.environ.get("CORERT_API_KEY") or None
    if args.uds:
        raise ConfigError("--uds does not go with --ray: Ray Serve listens on TCP (--host, --port)")
    check_bind(args.host, api_key)
    autoscale = None
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
            raise ConfigError(f"--autoscale wants MIN:MAX with 0 < MIN <= MAX, got {args.autoscale!r}")
        autoscale = (int(low), int(high))
    if args.replicas < 1 or args.num_cpus < 1 or (args.models_per_replica is not None
                                                        and args.models_per_replica < 1):
        raise ConfigError("--replicas, --num-cpus and --models-per-replica must be at least 1")
    try:
        from .app import ServeSettings
        from .ray_deploy import RaySettings, run
    except ImportError as exc:
        raise CorertError(f"corert serve --ray needs the ray extra: pip install 'corert[ray]' ({exc})") from None
    if not args.ray_address:  # the ingress listens on this machine: a port in use is a usage error, found now
        sock, _ = _bind_tcp(args.host, 8080 if args.port is None else args.port)
        args.port = sock.getsockname()[1]  # 0: a free one
        sock.close()
    # a replica is the unit of failure here (Serve replaces it): no worker processes inside it
    config = make_config(defaults={"isolation": "none"}, **({"n_seqs": args.n_seqs} if args.n_seqs else {}))
    settings = ServeSettings(models=tuple(args.model), api_key=api_key, max_queue=args.max_queue,
                             max_body_bytes=args.max_body)
    ray = RaySettings(replicas=args.replicas, autoscale=autoscale, num_cpus=args.num_cpus,
                      max_ongoing=2 * config.n_seqs + args.max_queue, policy=args.route,
                      models_per_replica=args.models_per_replica)
    return run(args, config, settings, ray)


def _announcing_server(config, url: str):
    """uvicorn's server, printing the bound address once it accepts connections (tests and `corert bench
    serve` wait for this line)."""
    import uvicorn

    class Announcing(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"corert serve: listening on {url}", flush=True)

    return Announcing(config)


def _bind_tcp(host: str, port: int) -> tuple[socket.socket, str]:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    return sock, f"http://{shown}:{bound[1]}"


def _bind_uds(path: str) -> tuple[socket.socket, str]:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ConfigError(f"--uds {path} exists and is not a socket: refusing to replace it")
        os.unlink(path)  # a stale socket of an earlier server
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        sock.bind(path)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock, f"unix:{path}"

