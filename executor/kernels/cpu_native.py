"""Native CPU kernels: small C sources in `csrc/`, built once with the host's C compiler, loaded by ctypes.

Why C and ctypes rather than a torch C++ extension: the kernels need only raw float and int64
pointers, so they build without torch's headers in well under a second (a torch extension takes a
minute on two cores), and there is nothing to install ahead of time. The library is built with
`-march=native` into the sgc cache (`$SGC_CACHE/kernels`), keyed by the source, the flags and the
CPU's feature flags, so a cache shared between different machines never hands one another's code.
Threads come from OpenMP, linked against the libgomp that torch has already loaded (same soname),
so the kernels and torch's ops share one thread pool.

Without a compiler, or with `SGC_NATIVE_KERNELS=0`, `library()` returns None and callers keep their
torch path; a failed build is logged once with the compiler's message, never raised into a request.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

from compiler.native_build import load_or_none

log = logging.getLogger(__name__)

SOURCES = (
    Path(__file__).with_name("csrc") / "paged_attention_cpu.c",
    Path(__file__).with_name("csrc") / "layer_ops_cpu.c",
    Path(__file__).with_name("csrc") / "small_gemm_cpu.c",
    Path(__file__).with_name("csrc") / "decoder_cpu.c",
)
HEADERS = (Path(__file__).with_name("csrc") / "simd.h", Path(__file__).with_name("csrc") / "kernels.h")
FLAGS = ("-O3", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=c11")


def target_arch() -> str:
    """`-march=` value: `native`, or `$SGC_NATIVE_ARCH` (e.g. `haswell` builds the AVX2 code paths
    on an AVX-512 machine, which is how the tests cover both)."""
    return os.environ.get("SGC_NATIVE_ARCH", "native")


def build_flags() -> tuple[str, ...]:
    return (*FLAGS, f"-march={target_arch()}")


_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded native kernel library, building it on first use; None when unavailable."""
    import torch  # noqa: F401  (torch's libgomp must be loaded first, so the kernels share it)

    lib = load_or_none(
        "sgc_cpu_kernels", SOURCES, HEADERS, build_flags(), log=log, what="native CPU kernels",
        instead="using the torch path", no_compiler="the CPU step uses torch's kernels (slower at decode)",
    )
    if lib is not None:
        _declare_kernels(lib)
    return lib


def _declare_kernels(lib: ctypes.CDLL) -> None:
    """ctypes signatures of every function `csrc/kernels.h` exports (each returns 0, or a nonzero
    status for arguments it refuses), in one table, so a signature lives in one place here."""
    f32, threads, status = ctypes.c_float, ctypes.c_int, ctypes.c_int
    signatures = {
        # csrc/paged_attention_cpu.c
        "sgc_paged_attention_f32": (status, [
            _PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64,  # q, new k/v and their slots
            _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR,  # pool, table, batch layout
            _I64, _I64, _I64, _I64, f32, _PTR, threads]),  # sizes, scale, out, threads
        "sgc_paged_decode_grouped_f32": (status, [
            _PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64,  # q, new k/v and their slots
            _PTR, _PTR, _PTR, _I64, _PTR, _PTR,  # pool, table, rows, seq_lens
            _PTR, _PTR, _PTR, _I64,  # work items: starts, members, shared lengths, count
            _I64, _I64, _I64, f32, _PTR, threads]),  # sizes, scale, out, threads
        # csrc/layer_ops_cpu.c
        "sgc_rmsnorm_f32": (status, [_PTR, _I64, _PTR, _I64, _I64, f32, _PTR, _I64, threads]),
        "sgc_add_rmsnorm_f32": (status, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, f32, _PTR, _I64, threads]),
        "sgc_rope_f32": (status, [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _I64, threads]),
        "sgc_silu_mul_f32": (status, [_PTR, _I64, _I64, _I64, _PTR, _I64, threads]),
        # csrc/small_gemm_cpu.c
        "sgc_gemm_packed_floats": (_I64, [_I64, _I64]),
        "sgc_gemm_pack_f32": (status, [_PTR, _I64, _I64, _I64, _PTR, threads]),
        "sgc_gemm_f32": (status, [_PTR, _I64, _I64, _I64, _PTR, _I64, _PTR, _PTR, _I64, threads]),
        # csrc/decoder_cpu.c: the address of a `decoder_cpu.DecoderArgs`, hidden, normed
        "sgc_decoder_forward_f32": (status, [_PTR, _PTR, _PTR]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
