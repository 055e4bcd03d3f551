"""A local Ray cluster for tests: the 2 CPUs here, the loopback address only, quiet.

Use it by importing the fixture into a test module (`from tests.ray_cluster import ray_local  #
noqa: F401`) and naming `ray_local` in a test; it yields the `ray` module after `ray.init` and shuts
the cluster down once, at the end of the session. Without ray installed (`pip install '.[ray]'`)
the tests that use it skip.

What keeps it local and quiet:
- `address="local"`: always a new cluster started by this process, never one found through
  `RAY_ADDRESS` or a `ray start` on this machine;
- `_node_ip_address="127.0.0.1"` and `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: every address the
  cluster advertises and dials (GCS, raylet, workers, object manager, runtime-env agent) is the
  loopback one, and every server binds it (checked with `ss`: GCS, raylet, workers, the agents).
  Without the second, Ray "resolves" a loopback node address to the machine's outward IP
  (`services.resolve_ip_for_localhost`), runs the whole cluster on that and its gRPC servers listen
  on every interface. `tests/test_cluster_replica.py` checks the node's address;
- `include_dashboard=False` (no dashboard HTTP server), `RAY_USAGE_STATS_ENABLED=0` (no usage
  report), `configure_logging=False` and `log_to_driver=False` (workers' logs stay in the session
  folder instead of pytest's output), a small object store (the machine is shared).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

NUM_CPUS = 2
# Ray resolves a loopback node address to the machine's outward IP unless this is "0" (it is Ray's
# switch for single-machine clusters on macOS/Windows: `ray_constants.ENABLE_RAY_CLUSTER`).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
OBJECT_STORE_BYTES = 256 * 1024 * 1024


def init_local_ray(num_cpus: int = NUM_CPUS) -> Any:
    """Start a new loopback-only Ray cluster in this process (see the module docstring); returns `ray`."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ[LOOPBACK_ENV] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: ray may have been imported before this
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
             namespace="sgc-tests")
    return ray


# Test modules import the fixture, so pytest sees one session fixture per module: they share one
# cluster, started by the first and shut down by the last.
_users = {"count": 0}


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """The `ray` module, connected to a local 2-CPU loopback-only cluster (session-wide)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")
    import ray

    if _users["count"] == 0:
        init_local_ray()
    _users["count"] += 1
    try:
        yield ray
    finally:
        _users["count"] -= 1
        if _users["count"] == 0:
            ray.shutdown()
