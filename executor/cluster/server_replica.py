"""A serving replica as a Ray actor: an `sgc serve` process on its own free 127.0.0.1 port.

`sgc serve --replicas N` starts N of these (each reserving `cores` CPUs, or a GPU) and puts its router
in front of their URLs. The actor only owns the server's process: it starts it (torch limited to
`cores` threads), waits until `GET /health` answers 200, reports the URL, and stops it. The process
dies with the actor (Linux's parent-death signal), so a killed actor leaves no server behind; the
router notices the dead URL through its health checks.

The server is a separate process rather than uvicorn inside the actor: `sgc serve` keeps its own
signal handling and drain, and the same command is what a user starts by hand for `--replica-url`.
Ray is imported only by `ray_actor_class` (the `ray` extra).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["ServerReplica", "ray_actor_class"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with_libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerReplica:
    """`sgc serve <serve_args>` on `host`:<a free port>, torch on `cores` threads."""

    def __init__(self, serve_args: list[str], cores: int = 1, host: str | None = "127.0.0.1",
                 start_timeout: float = 600.0) -> None:
        """`host=None`: the address Ray knows this node by (a multi-machine cluster, where the router
        runs elsewhere); the default keeps the server on the loopback address."""
        if any(a in ("--host", "--port", "--replicas", "--replica-url") for a in serve_args):
            raise ValueError("a replica's serve arguments must not set --host, --port, --replicas or --replica-url")
        if cores < 1:
            raise ValueError(f"cores must be >= 1, not {cores}")
        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        self.host, self.port = host, _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.start_timeout = start_timeout
        self._log = tempfile.NamedTemporaryFile(prefix=f"sgc-replica-{self.port}-", suffix=".log", delete=False)
        env = dict(os.environ, OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores), PYTHONUNBUFFERED="1")
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sgc.cli", "serve", "--host", host, "--port", str(self.port), *serve_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        with open(self._log.name, errors="replace") as f:
            return f.read()[-chars:]

    def wait_ready(self) -> str:
        """Block until the server answers `/health` with 200; returns its URL (raises with its log
        if it exits or does not come up within `start_timeout`)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sgc serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sgc serve did not become healthy in {self.start_timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the server drains), then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def ray_actor_class(cores: int = 1, gpus: float = 0) -> Any:
    """`ServerReplica` as a Ray actor class reserving `cores` CPUs (and `gpus`)."""
    import ray

    return ray.remote(num_cpus=cores, num_gpus=gpus, max_restarts=0)(ServerReplica)
