"""Bounds for hostile-input tests: every case runs under a wall-time and a memory bound.

```python
from tests.hostile import bounded

def test_huge_regex_is_refused():
    with bounded(seconds=5, mem_mb=300), pytest.raises(ConstraintError, match="constraint_positions"):
        compile_regex("a{99999999}", vocab)
```

`bounded` measures the wall time and the peak resident-memory growth of the block (a sampler thread
reads /proc/self/statm every few milliseconds) and fails the test if either is over its bound. A hard
stop comes from SIGALRM at twice the time bound (main thread only), so a hang ends as a test failure
rather than a stuck suite. Memory is the growth of the whole process's RSS: keep other threads quiet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the peak, which only grows
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak - self.start_rss


class Measured:
    """What a `bounded` block used: `seconds` and `peak_mb` (RSS growth), filled in on exit."""

    seconds: float = 0.0
    peak_mb: float = 0.0


@contextlib.contextmanager
def bounded(seconds: float, mem_mb: float) -> Iterator[Measured]:
    """Fail if the block takes over `seconds` or grows RSS by over `mem_mb` MiB (see module doc)."""
    measured = Measured()
    sampler = _PeakSampler()
    sampler.start()
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def _timeout(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"the block ran past its hard limit of {2 * seconds:.1f} s")

    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _timeout)
        signal.setitimer(signal.ITIMER_REAL, 2 * seconds)
    start = time.perf_counter()
    try:
        yield measured
    finally:
        measured.seconds = time.perf_counter() - start
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        measured.peak_mb = sampler.stop() / (1 << 20)
    assert measured.seconds <= seconds, f"took {measured.seconds:.2f} s, over the bound of {seconds} s"
    assert measured.peak_mb <= mem_mb, f"grew RSS by {measured.peak_mb:.0f} MiB, over the bound of {mem_mb} MiB"
