"""Connecting to Ray: an existing cluster by address, or a new local one bound to 127.0.0.1.

`connect(address)` returns `ray` and whether this call started the cluster (so the caller shuts
down only what it started). Without an address it starts a new local cluster that advertises only
the loopback address (`_node_ip_address="127.0.0.1"`, and Ray's single-machine switch so that it
keeps that address instead of the machine's outward IP), with no dashboard, usage stats off
(`RAY_USAGE_STATS_ENABLED=0`), the workers' logs kept in Ray's session folder, and the workers at
normal priority: Ray starts them at nice 15 so that its own daemons stay responsive, but here the
workers are the engines doing the work (at nice 15 they lose the CPU to every other process of a
shared machine). With an address
(`ray start --head` printed it: `HOST:6379`, or `auto`) it joins that cluster as a driver.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["connect", "import_ray"]


def import_ray() -> Any:
    """`ray`, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("running on replicas needs Ray: pip install 'sgc[ray]' (or pip install -e '.[ray]')") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> tuple[Any, bool]:
    """Join the Ray cluster at `address`, or start a local one (see the module docstring)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ConnectionError(f"no Ray cluster at {address}: {exc} (start one with `ray start --head`)") from None
        return ray, True
    _loopback_only(ray)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    return ray, True


def _loopback_only(ray: Any) -> None:
    """Keep a local cluster on 127.0.0.1. Ray "resolves" a loopback node address to the machine's
    outward IP (and its servers then listen on every interface) unless its single-machine switch,
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, is off; it is read at import, so set it on the module too."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # another Ray layout: the node address still says 127.0.0.1
        pass
