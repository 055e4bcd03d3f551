"""The constraint compiler's hottest loops in C (`csrc/automata.c`), with the numpy code as fallback.

Moore's and the positional refinement, the dense trie walk (token_index.py), the product
construction and trim's searches (automaton.py) were most of a large schema's compile in numpy,
where each round or level is a dozen whole-array passes (Moore: 0.1-0.3 s on 80-140k-state
automata). The C library is built on first use like the runtime's kernels
(`compiler.native_build`); without a compiler, with `SGC_NATIVE_KERNELS=0`, or when the C code
refuses its input, these functions return None and the caller runs its numpy code, whose output
the C code gives exactly (labels by first occurrence, product states in the same order), so both
paths build identical automata and indexes.

The C code checks the compile's deadline (`constraint_seconds`) between rounds; memory is checked
against `constraint_memory_bytes` before a call (and by the Moore pass itself, once it has counted
its predecessor lists).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from compiler import budgets
from compiler.native_build import load_or_none

from .limits import check_memory, check_states, check_time, current_deadline
from .limits import max_states as limit_of_states

log = logging.getLogger(__name__)

SOURCES = (Path(__file__).with_name("csrc") / "automata.c",)
FLAGS = ("-O3", "-funroll-loops", "-fPIC", "-shared", "-std=c11")

_ERR_MEMORY, _ERR_DEADLINE, _ERR_TABLE, _ERR_STATES, _ERR_BUDGET = -1, -2, -3, -4, -5  # csrc/automata.c's
_MOORE_BYTES_PER_STATE = 148  # csrc/automata.c's arrays per state (predecessor lists counted there)
_I64, _PTR, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded automaton library, built on first use; None when unavailable (logged once)."""
    lib = load_or_none(
        "sgc_automata", SOURCES, (), FLAGS, log=log, what="native automaton passes", instead="using numpy",
        no_compiler="the constraint compiler uses its numpy path",
    )
    if lib is None:
        return None
    lib.sgc_moore_classes.restype = _I64
    lib.sgc_moore_classes.argtypes = [_PTR, _I64, _I64, _I64, _F64, _I64, _PTR, _PTR]
    lib.sgc_positional_classes.restype = _I64
    lib.sgc_positional_classes.argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _I64, _F64, _PTR]
    lib.sgc_product.restype = _PTR
    lib.sgc_product.argtypes = [_PTR, _I64, _PTR, _I64, _I64, _I64, ctypes.c_int32, _I64, _I64, _F64, _PTR, _PTR]
    lib.sgc_product_copy.restype = _I64
    lib.sgc_product_copy.argtypes = [_PTR, _PTR, _PTR, _I64]
    lib.sgc_product_free.restype = None
    lib.sgc_product_free.argtypes = [_PTR]
    lib.sgc_trim.restype = _I64
    lib.sgc_trim.argtypes = [_PTR, _I64, _I64, _PTR, _I64, _F64, _PTR]
    lib.sgc_dense_walk.restype = _I64
    lib.sgc_dense_walk.argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _PTR, _I64,
                                   _PTR, _I64, _I64, _PTR, _PTR, _F64]
    return lib


def _deadline() -> float:
    """The compile's deadline as a CLOCK_MONOTONIC time (0: none), what `time.monotonic()` reads."""
    deadline = current_deadline()
    return 0.0 if deadline is None else max(deadline, time.monotonic() + 1e-6)


def _table(table: np.ndarray) -> np.ndarray | None:
    if table.ndim != 2 or table.shape[0] >= 2**31 - 1:
        return None
    return np.ascontiguousarray(table, dtype=np.int32)


def _result(status: int, out: np.ndarray, what: str) -> np.ndarray | None:
    if status >= 0:
        return out
    if status == _ERR_DEADLINE:
        check_time()  # raises: the compile is over its time budget
    log.warning("native %s refused its input (status %d); using numpy", what, status)
    return None


def moore_classes(table: np.ndarray, rounds: int) -> np.ndarray | None:
    """`token_index._moore_classes` in C: int32 labels by first occurrence, or None (use numpy)."""
    lib = library()
    t = _table(table)
    if lib is None or t is None:
        return None
    n, c = t.shape
    what = "the automaton's Moore classes"
    check_memory(n * _MOORE_BYTES_PER_STATE, what)  # before the C code counts the edges too
    out = np.empty(n, dtype=np.int32)
    needed = ctypes.c_int64(0)
    status = lib.sgc_moore_classes(t.ctypes.data, n, c, int(rounds), _deadline(),
                                   int(budgets.value("constraint_memory_bytes")), ctypes.byref(needed),
                                   out.ctypes.data)
    if status == _ERR_BUDGET:
        check_memory(int(needed.value), what)  # raises
    return _result(int(status), out, "Moore refinement")


def positional_classes(table: np.ndarray, level_cols: list[np.ndarray]) -> np.ndarray | None:
    """`token_index._positional_classes` in C: int32 labels by first occurrence, or None."""
    lib = library()
    t = _table(table)
    if lib is None or t is None:
        return None
    n, c = t.shape
    check_memory(n * 48, "the automaton's positional classes")
    cols = np.concatenate([np.asarray(x, dtype=np.int32) for x in level_cols]) if level_cols else np.zeros(0, np.int32)
    ptr = np.zeros(len(level_cols) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in level_cols], out=ptr[1:])
    out = np.empty(n, dtype=np.int32)
    status = lib.sgc_positional_classes(
        t.ctypes.data, n, c, cols.ctypes.data, ptr.ctypes.data, len(level_cols), _deadline(), out.ctypes.data
    )
    return _result(int(status), out, "positional refinement")


def _int64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


# The C walk recurses once per byte of a token: a vocabulary with longer tokens (no real one has
# them) is walked by numpy, so that no token can run the C stack out
MAX_WALK_DEPTH = 1024


def dense_walk(
    table: np.ndarray, node_cls: np.ndarray, trie: Any, start_nodes: np.ndarray, states: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """`token_index._dense_walk` in C, packed: (uint8[G, ceil(V/8)] rows of allowed-token bits,
    little-endian, one per state of `states`; int64[G] tokens per row), or None (use numpy).
    `trie`: a `token_index.TokenTrie` (not imported here: token_index imports this module)."""
    lib = library()
    t = _table(table)
    if lib is None or t is None or trie.depth > MAX_WALK_DEPTH:
        return None
    n, c = t.shape
    g, vocab = len(states), trie.vocab_size
    words = (vocab + 7) // 8
    check_memory(g * words, "the token index's dense walk")
    masks = np.zeros((g, words), dtype=np.uint8)
    counts = np.empty(g, dtype=np.int64)
    cls = np.ascontiguousarray(node_cls, dtype=np.int32)
    trie_arrays = [_int64(a) for a in (trie.child_lo, trie.child_hi, trie.end_ptr, trie.end_tokens)]
    starts, rows = _int64(start_nodes), _int64(states)  # (held here while the C code reads them)
    status = lib.sgc_dense_walk(
        t.ctypes.data, n, c, cls.ctypes.data, *(a.ctypes.data for a in trie_arrays), trie.num_nodes,
        trie.depth, starts.ctypes.data, len(starts), rows.ctypes.data, g, vocab,
        masks.ctypes.data, counts.ctypes.data, _deadline(),
    )
    if _result(int(status), masks, "dense trie walk") is None:
        return None
    return masks, counts


def trim_keep(table: np.ndarray, accepting: np.ndarray, initial: int) -> np.ndarray | None:
    """`automaton.trim`'s searches in C: bool[n], the states it keeps (all False when the initial
    state cannot accept), or None (use numpy, which says None for that case)."""
    lib = library()
    t = _table(table)
    if lib is None or t is None:
        return None
    n, c = t.shape
    check_memory(t.size * 4 + n * 40, "the automaton's trim")  # predecessor lists: at most n * c
    acc = np.ascontiguousarray(accepting, dtype=np.uint8)
    keep = np.empty(n, dtype=np.uint8)
    status = lib.sgc_trim(t.ctypes.data, n, c, acc.ctypes.data, int(initial), _deadline(), keep.ctypes.data)
    return None if _result(int(status), keep, "trim") is None else keep.view(bool)


_PRODUCT_MODES = {"and": 0, "or": 1, "minus": 2}


def product(
    ta: np.ndarray, tb: np.ndarray, start: int, mode: str, max_states: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """`automaton._product`'s breadth-first search in C: (rows int32[S, k], pair keys int64[S]),
    numbered as the numpy code numbers them, or None (use numpy). `ta` / `tb`: the two tables on
    the joint classes with a dead row 0 and targets shifted by one. Raises the error
    `limits.check_states` raises when the product has more than `max_states` states (None: the
    `constraint_states` budget), and `constraint_memory_bytes`' error before its rows would grow
    over that budget."""
    lib = library()
    if lib is None or ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
        return None
    a = np.ascontiguousarray(ta, dtype=np.int32)
    b = np.ascontiguousarray(tb, dtype=np.int32)
    k = a.shape[1]
    status, count = ctypes.c_int64(0), ctypes.c_int64(0)
    handle = lib.sgc_product(a.ctypes.data, len(a) - 1, b.ctypes.data, len(b) - 1, k, int(start),
                             _PRODUCT_MODES[mode], limit_of_states(max_states),
                             int(budgets.value("constraint_memory_bytes")), _deadline(),
                             ctypes.byref(status), ctypes.byref(count))
    what = "the product automaton's table"
    if not handle:
        if status.value == _ERR_STATES:
            check_states(int(count.value), max_states)
        if status.value == _ERR_BUDGET:
            check_memory(int(count.value), what)  # raises
        return _result(int(status.value), np.empty(0), "product construction")
    try:
        n = int(status.value)
        check_memory(n * k * 4, what)
        rows = np.empty((n, k), dtype=np.int32)
        keys = np.empty(n, dtype=np.int64)
        lib.sgc_product_copy(handle, rows.ctypes.data, keys.ctypes.data, k)
    finally:
        lib.sgc_product_free(handle)
    return rows, keys


def first_occurrence_labels(labels: np.ndarray) -> np.ndarray:
    """The same partition, labels renumbered in order of first occurrence (int32)."""
    if len(labels) == 0:
        return labels.astype(np.int32)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return rank[inverse.reshape(-1)]
