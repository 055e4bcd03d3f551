"""Starting `sgc serve` as a real subprocess for the tests: 127.0.0.1 only, a free port, bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`sgc serve ...` on 127.0.0.1:<free port>; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, model: str | Path, *args: str, log: Path, start_timeout: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sgc.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--device", "cpu", "--log-level", "warning", *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + start_timeout
        headers = {}
        if "--api-key" in args:
            headers["authorization"] = f"Bearer {args[list(args).index('--api-key') + 1]}"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sgc serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2, headers=headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"sgc serve did not become healthy in {start_timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._log.close()
                raise RuntimeError(f"sgc serve did not exit within {timeout} s of SIGTERM:\n{self.log()}") from None
        self._log.close()
        return self.proc.returncode


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
