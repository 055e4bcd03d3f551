"""A local Ray cluster for tests: the 2 CPUs here, the loopback address only, quiet.

Use it by importing the fixture into a test module (`from tests.ray_cluster import ray_local  #
noqa: F401`) and naming `ray_local` in a test; it yields the `ray` module after `ray.init` and shuts
the cluster down once, at the end of the session. Without ray installed (`pip install '.[ray]'`)
the tests that use it skip.

What keeps it local and quiet:
- `address="local"`: always a new cluster started by this process, never one found through
  `RAY_ADDRESS` or a `ray start` on this machine;
- `_node_ip_address="127.0.0.1"`: every address the cluster advertises (GCS, raylet, workers,
  object manager) is the loopback one, so no traffic goes to any other address (this Ray build's
  gRPC servers still *listen* on the wildcard address; nothing is told to reach them there);
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
OBJECT_STORE_BYTES = 256 * 1024 * 1024


def init_local_ray(num_cpus: int = NUM_CPUS) -> Any:
    """Start a new loopback-only Ray cluster in this process (see the module docstring); returns `ray`."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
             namespace="sgc-tests")
    return ray


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """The `ray` module, connected to a local 2-CPU loopback-only cluster (session-wide)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")
    ray = init_local_ray()
    try:
        yield ray
    finally:
        ray.shutdown()
