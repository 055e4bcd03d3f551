"""`sgc serve --replicas N` / `--replica-url URL ...`: the router process and its replicas' lifetime.

With `--replica-url` the replicas are `sgc serve` processes someone else started; the router only
routes to them. With `--replicas N` alone the router starts them: N Ray actors
(`executor/cluster/server_replica.py`), each an `sgc serve` on its own free 127.0.0.1 port with
`--cores-per-replica` CPUs, on a local Ray cluster bound to 127.0.0.1 (no dashboard, usage stats
off) or on the cluster at `--ray-address`. On SIGINT/SIGTERM the router stops, then the actors
stop their servers (each drains) and Ray shuts down.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

__all__ = ["serve_router", "start_ray_replicas"]

logger = logging.getLogger("sgc.serve.router")


def start_ray_replicas(count: int, serve_args: list[str], cores: int = 1, gpus: float = 0,
                       ray_address: str | None = None) -> tuple[list[str], list[Any], Any]:
    """Start `count` replica actors; returns (their URLs, the actor handles, the ray module)."""
    from executor.cluster.ray_setup import connect
    from executor.cluster.server_replica import ray_actor_class

    try:
        ray, _ = connect(ray_address, num_cpus=max(count * cores, os.cpu_count() or 1))
    except RuntimeError as exc:  # no ray
        raise ValueError(f"{exc}; or start the replicas yourself and pass --replica-url for each") from None
    actor_class = ray_actor_class(cores, gpus)
    # On a local cluster the servers stay on 127.0.0.1; on a cluster of machines each binds to its
    # node's address so that the router (on this machine) can reach it.
    host = None if ray_address else "127.0.0.1"
    actors = [actor_class.remote(serve_args, cores, host) for _ in range(count)]
    try:
        urls = ray.get([a.wait_ready.remote() for a in actors])
    except Exception:
        stop_ray_replicas(ray, actors)
        raise
    return urls, actors, ray


def stop_ray_replicas(ray: Any, actors: list[Any]) -> None:
    for actor in actors:
        try:
            ray.get(actor.stop.remote(), timeout=60)
        except Exception:  # already dead
            pass
        try:
            ray.kill(actor)
        except Exception:
            pass


def serve_router(urls: list[str], *, replicas: int | None = None, serve_args: list[str] | None = None,
                 cores_per_replica: int = 1, gpus_per_replica: float = 0, ray_address: str | None = None,
                 host: str = "127.0.0.1", port: int = 30000, policy: str = "cache_aware", api_key: str | None = None,
                 log_level: str = "info", **policy_options: Any) -> int:
    """Serve the router until SIGINT/SIGTERM; exit code 0."""
    import uvicorn

    from sgc.serve.router_app import build_router_app

    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--replica-url {url!r}: give a URL like http://127.0.0.1:30001")
    if urls and replicas not in (None, len(urls)):
        raise ValueError(f"--replicas {replicas} but {len(urls)} --replica-url given (omit --replicas, or start "
                         "the replicas with Ray by giving no --replica-url)")
    from executor.cluster.router import make_policy

    make_policy(policy, **policy_options)  # a bad policy or option fails before any replica starts
    actors: list[Any] = []
    ray = None
    if not urls:
        if not replicas or replicas < 1:
            raise ValueError(f"--replicas must be >= 1, not {replicas}")
        started = time.perf_counter()
        print(f"sgc serve: starting {replicas} replicas on Ray ({cores_per_replica} CPU each)", file=sys.stderr,
              flush=True)
        urls, actors, ray = start_ray_replicas(replicas, list(serve_args or []), cores_per_replica,
                                               gpus_per_replica, ray_address)
        logger.info("replicas ready in %.1f s: %s", time.perf_counter() - started, ", ".join(urls))
    try:
        app = build_router_app(urls, policy, api_key=api_key, **policy_options)
    except Exception:
        if ray is not None:
            stop_ray_replicas(ray, actors)
        raise
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # exit 0 after the drain, as `sgc serve` does

    server = _Server(config)
    print(f"sgc serve: router ({policy}) over {len(urls)} replicas on http://{host}:{port}: " + ", ".join(urls),
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        if ray is not None:
            stop_ray_replicas(ray, actors)
            ray.shutdown()
    if not server.started:
        raise OSError(f"could not serve on {host}:{port} (is the port taken?)")
    print("sgc serve: router stopped", file=sys.stderr, flush=True)
    return 0
