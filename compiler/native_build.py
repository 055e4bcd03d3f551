"""Small C libraries built once with the host's C compiler and loaded with ctypes (no torch needed).

Two users: the runtime's CPU kernels (`executor.kernels.cpu_native`) and the constraint compiler's
automaton passes (`compiler.constraints.native`). Each names its sources and flags; a library is
built into the sgc cache (`$SGC_CACHE/kernels`), keyed by the sources, the flags, the compiler and
the CPU's feature flags, so a cache shared between machines never hands one another's code. A
build is atomic (written aside, then renamed), so concurrent builders see the old file or the new.

Callers treat every failure (no compiler, a failed build, `SGC_NATIVE_KERNELS=0`) as "no library"
and keep their pure-Python path; the exceptions below are theirs to log once.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

BUILD_TIMEOUT_S = 120


def cache_root() -> Path:
    """$SGC_CACHE, or ~/.cache/sgc: the rule `models.hub.cache_root` follows too (the layers keep
    `models` and `compiler` from importing each other, so each states it)."""
    configured = os.environ.get("SGC_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sgc"


def native_enabled() -> bool:
    """False when `SGC_NATIVE_KERNELS` is 0/false/no, or off Linux: every native path then stays off."""
    return platform.system() == "Linux" and os.environ.get("SGC_NATIVE_KERNELS", "1") not in (
        "0", "", "false", "no"
    )


def c_compiler() -> str | None:
    """`$CC`, else `cc` or `gcc` on the PATH, else None."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def cpu_fingerprint() -> str:
    """The CPU's model and feature flags: what `-march=native` compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def load_or_none(
    stem: str, sources: Sequence[Path], headers: Sequence[Path], flags: Sequence[str], *,
    log: logging.Logger, what: str, instead: str, no_compiler: str,
) -> ctypes.CDLL | None:
    """`build_library` for a caller with a fallback: None (and one log line saying what runs
    `instead`) when native code is off, there is no compiler, a source is missing or the build
    fails. `what` names the library in those lines; `no_compiler` is the line for no compiler."""
    if not native_enabled():
        return None
    compiler = c_compiler()
    if compiler is None:
        log.warning("no C compiler found: %s", no_compiler)
        return None
    try:
        return build_library(stem, compiler, sources, headers, flags)
    except FileNotFoundError as exc:  # an install without the C sources
        log.warning("%s sources missing, %s: %s", what, instead, exc)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("%s unavailable, %s: %s", what, instead, exc)
    return None


def build_library(
    stem: str, compiler: str, sources: Sequence[Path], headers: Sequence[Path], flags: Sequence[str]
) -> ctypes.CDLL:
    """Load `stem-<key>.so` from the cache, building it first if it is not there.

    Raises OSError (a source is missing, the library does not load), RuntimeError (the compiler
    failed: its message included) or subprocess.SubprocessError (the build timed out)."""
    texts = [p.read_text() for p in (*sources, *headers)]
    key = hashlib.sha256("\0".join([*texts, " ".join(flags), compiler, cpu_fingerprint()]).encode())
    target = cache_root() / "kernels" / f"{stem}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(compiler, sources, flags, target)
    return ctypes.CDLL(str(target))


def _build(compiler: str, sources: Sequence[Path], flags: Sequence[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *flags, *map(str, sources), "-o", str(built), "-lm"],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        )
        if result.returncode != 0:
            names = ", ".join(s.name for s in sources)
            raise RuntimeError(f"{compiler} failed on {names}:\n{result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: a concurrent builder sees the old file or the whole new one
