"""`TokenFSM`: a compiled constraint, the object the runtime drives, as plain arrays.

It bundles the byte-level DFA (states, accepting flags, transitions), the token index (allowed tokens
per state) and the vocabulary's token bytes (so `next_state` can walk a token's bytes without the
tokenizer). `to_arrays()` gives a dict of numpy arrays that `np.savez` stores and
`np.load(allow_pickle=False)` reads back; `from_arrays` checks every bound before trusting them.

Run-time protocol: start in `initial_state`; before each step `fill_mask(state, mask)`; after
sampling token t, `state = next_state(state, t)`; EOS is allowed exactly when `is_accepting(state)`
(pass `eos_token_id` to `fill_mask` to have it set). `jump_forward(state)` gives the text the
constraint forces from here and the state after it (see `jump_forward`).

`unique_paths` (JSON schemas only): the instance paths of arrays whose items must be distinct but
have too many values for the automaton (see `unique_items`). The DFA accepts those arrays with
repeats; `unique_guard()` gives the per-output check that clears, after `fill_mask`, the tokens that
would repeat an item, and `accepts_text` applies both to a whole text.

`json_structure` (JSON schemas with unconstrained values): the DFA accepts a bracket-counting
superset of JSON there (see `json_structure`); `structure_guard()` gives the per-output check that
clears, after `fill_mask`, the tokens that would break JSON structure, and `accepts_text` applies it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .automaton import DFA
from .errors import ConstraintError
from .json_structure import StructureGuard
from .json_structure import check_text as structure_check_text
from .jump_forward import forced_bytes, jump_forward, mid_character
from .token_index import TokenIndex, build_token_index
from .token_live import producible_bytes, prune_dead_ends
from .unique_items import Path, UniqueGuard, check_text, paths_from_json, paths_to_json, validate_paths
from .vocabulary import Vocabulary

# 2: token rows shared between states (`state_row`); 1 is still read. 3: format 2 plus
# `unique_paths`, written only when there are some (so readers that predate it refuse the table
# instead of dropping the uniqueness check). 4: `json_structure` set (the decode-time structure
# check), with or without `unique_paths`; written only when set, for the same reason.
FORMAT_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)
_LIST_TABLE_MAX = 1 << 20  # transition tables up to this many entries are walked as Python lists


class TokenFSM:
    """A token-level finite-state machine over one vocabulary (see the module docstring)."""

    def __init__(
        self,
        dfa: DFA,
        index: TokenIndex,
        vocab_bytes: np.ndarray,
        vocab_offsets: np.ndarray,
        fingerprint: str,
        eos_token_id: int | None = None,
        forced: np.ndarray | None = None,
        unique_paths: tuple[Path, ...] = (),
        json_structure: bool = False,
    ) -> None:
        self._init_fields(
            dfa, index, vocab_bytes, vocab_offsets, fingerprint, eos_token_id,
            forced_bytes(dfa) if forced is None else forced, unique_paths, json_structure,
        )
        self._derive()

    def _init_fields(
        self,
        dfa: DFA,
        index: TokenIndex,
        vocab_bytes: np.ndarray,
        vocab_offsets: np.ndarray,
        fingerprint: str,
        eos_token_id: int | None,
        forced: np.ndarray,
        unique_paths: tuple[Path, ...] = (),
        json_structure: bool = False,
    ) -> None:
        self.dfa = dfa
        self.index = index
        self.vocab_bytes = vocab_bytes
        self.vocab_offsets = vocab_offsets
        self.fingerprint = fingerprint
        self.eos_token_id = eos_token_id
        self.forced = forced
        self.unique_paths = tuple(tuple(p) for p in unique_paths)
        self.json_structure = bool(json_structure)
        self._table: Any = None
        self._symbol_class: list[int] | None = None
        self._tokens: list[bytes] | None = None
        self._dense_rows: dict[int, np.ndarray] = {}
        self._torch_cache: dict[tuple, Any] = {}
        self._unique_derived: Any = None  # UniqueGuard's per-FSM tables, built on first use

    def _derive(self) -> None:
        """Arrays computed from the validated ones (never stored, so never tampered with)."""
        self.mid_char = mid_character(self.dfa)

    @classmethod
    def build(cls, dfa: DFA, vocab: Vocabulary, unique_paths: tuple[Path, ...] = (),
              json_structure: bool = False) -> TokenFSM:
        dfa = DFA(
            int(dfa.initial),
            dfa.accepting.astype(bool, copy=False),
            np.ascontiguousarray(dfa.transitions, dtype=np.int32),
            dfa.symbol_class.astype(np.int32, copy=False),
            dfa.periods,
        )
        flat, offsets = vocab.arrays
        dfa = prune_dead_ends(dfa, producible_bytes(flat))
        return cls(dfa, build_token_index(dfa, vocab), flat, offsets, vocab.fingerprint, vocab.eos_token_id,
                   unique_paths=unique_paths, json_structure=json_structure)

    # -- queries ----------------------------------------------------------------------------
    @property
    def initial_state(self) -> int:
        return self.dfa.initial

    @property
    def num_states(self) -> int:
        return self.dfa.num_states

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    def is_accepting(self, state: int) -> bool:
        return state >= 0 and bool(self.dfa.accepting[state])

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Sorted int32 ids of the tokens allowed in `state` (never special tokens, never EOS)."""
        return self.index.allowed(state)

    def _lists(self) -> tuple[Any, list[int], list[bytes]]:
        """The table as something `table[s][c]` indexes fast: nested Python lists when small (the
        fastest walk), else the numpy table itself (a 1.5M-state table as lists would be ~1 GB)."""
        if self._table is None:
            t = self.dfa.transitions
            self._table = t.tolist() if t.size <= _LIST_TABLE_MAX else t
            self._symbol_class = self.dfa.symbol_class.tolist()
            data, offs = self.vocab_bytes.tobytes(), self.vocab_offsets.tolist()
            self._tokens = [data[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        return self._table, self._symbol_class, self._tokens  # type: ignore[return-value]

    def walk_bytes(self, state: int, data: bytes) -> int:
        """The state after `data` (-1 once dead)."""
        table, symbol_class, _ = self._lists()
        s = state
        for b in data:
            if s < 0:
                return -1
            s = int(table[s][symbol_class[b]])
        return s

    def next_state(self, state: int, token: int) -> int:
        """The state after `token`, or -1 if the token is not allowed (special tokens never are)."""
        table, symbol_class, tokens = self._lists()
        if not 0 <= state < self.num_states or not 0 <= token < len(tokens):
            return -1
        data = tokens[token]
        if not data:
            return -1
        s = state
        for b in data:
            s = int(table[s][symbol_class[b]])
            if s < 0:
                return -1
        return s

    def jump_forward(self, state: int) -> tuple[str, int]:
        """The text forced from `state` (whole characters only) and the state after it."""
        data, end = jump_forward(self.dfa, self.forced, self.mid_char, state)
        return data.decode("utf-8"), end

    def forced_string(self, state: int) -> str:
        return self.jump_forward(state)[0]

    def token_text(self, token: int) -> bytes:
        """The bytes token `token` spells (b"" for special tokens)."""
        return self._lists()[2][token]

    # -- uniqueItems checked while decoding ----------------------------------------------------
    def unique_guard(self) -> UniqueGuard | None:
        """A fresh check for one output (feed it every token's bytes; `filter` after `fill_mask`),
        or None when this constraint has no unique arrays to watch."""
        return UniqueGuard(self) if self.unique_paths else None

    def structure_guard(self) -> StructureGuard | None:
        """A fresh JSON structure check for one output (feed it every token; `filter` after
        `fill_mask`), or None when the automaton is exact (no decode-checked values)."""
        return StructureGuard(self) if self.json_structure else None

    def accepts_text(self, text: bytes | str) -> bool:
        """Whether the constraint accepts the whole text: the DFA accepts it, no array at a
        unique path repeats an item, and (with `json_structure`) it is structurally JSON: the same
        checks the runtime applies token by token."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        return (self.is_accepting(self.walk_bytes(self.initial_state, data))
                and (not self.unique_paths or check_text(data, self.unique_paths))
                and (not self.json_structure or structure_check_text(data)))

    # -- masks ------------------------------------------------------------------------------
    def _dense_row(self, dense: int) -> np.ndarray:
        row = self._dense_rows.get(dense)
        if row is None:
            row = np.unpackbits(self.index.dense_masks[dense], count=self.vocab_size, bitorder="little").view(
                bool
            )
            self._dense_rows[dense] = row
        return row

    def _row(self, state: int) -> int:
        return int(self.index.state_row[state])

    def fill_mask(self, state: int, mask: Any, eos_token_id: int | None = None) -> None:
        """Write the allowed-token mask of `state` into `mask` (a bool numpy array or torch tensor of
        at least `vocab_size` entries; entries past the vocabulary, e.g. padded logits, become False).
        With `eos_token_id`, EOS is allowed iff the state is accepting."""
        if isinstance(mask, np.ndarray):
            self._fill_numpy(state, mask)
        else:
            self._fill_torch(state, mask)
        if eos_token_id is not None and self.is_accepting(state):
            mask[eos_token_id] = True

    def _fill_numpy(self, state: int, mask: np.ndarray) -> None:
        v = self.vocab_size
        row = self._row(state)
        dense = int(self.index.dense_id[row])
        if dense >= 0:
            if mask.shape[0] == v:
                np.copyto(mask, self._dense_row(dense))
            else:
                mask[:v] = self._dense_row(dense)
                mask[v:] = False
        else:
            mask.fill(False)
            ptr = self.index.sparse_ptr
            mask[self.index.sparse_tokens[ptr[row] : ptr[row + 1]]] = True

    def _fill_torch(self, state: int, mask: Any) -> None:
        if mask.device.type == "cpu" and mask.is_contiguous():
            # torch's own CPU bool copy is ~100x slower than numpy's memcpy on a shared view
            self._fill_numpy(state, mask.numpy())
            return
        import torch

        v = self.vocab_size
        row_id = self._row(state)
        dense = int(self.index.dense_id[row_id])
        device = mask.device
        if dense >= 0:
            key = ("dense", dense, device)
            row = self._torch_cache.get(key)
            if row is None:
                row = torch.from_numpy(self._dense_row(dense).copy()).to(device)
                self._torch_cache[key] = row
            if mask.shape[0] == v:
                mask.copy_(row)
            else:
                mask[:v].copy_(row)
                mask[v:].fill_(False)
        else:
            key = ("sparse", row_id, device)
            ids = self._torch_cache.get(key)
            if ids is None:
                ptr = self.index.sparse_ptr
                ids = torch.from_numpy(
                    self.index.sparse_tokens[ptr[row_id] : ptr[row_id + 1]].astype(np.int64)
                ).to(device)
                self._torch_cache[key] = ids
            mask.fill_(False)
            mask.index_fill_(0, ids, True)

    # -- plain arrays -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        eos = -1 if self.eos_token_id is None else int(self.eos_token_id)
        extra = {}
        if self.unique_paths:
            text = paths_to_json(self.unique_paths).encode("ascii")
            extra["unique_paths"] = np.frombuffer(text, dtype=np.uint8).copy()
        if self.json_structure:
            extra["json_structure"] = np.array([1], dtype=np.uint8)
        version = 4 if self.json_structure else 3 if self.unique_paths else 2
        return {
            "format_version": np.array([version], dtype=np.int32),
            "initial": np.array([self.dfa.initial], dtype=np.int32),
            "accepting": self.dfa.accepting.astype(bool, copy=False),
            "transitions": self.dfa.transitions.astype(np.int32, copy=False),
            "symbol_class": self.dfa.symbol_class.astype(np.int32, copy=False),
            "forced_byte": self.forced.astype(np.int16, copy=False),
            "vocab_size": np.array([self.vocab_size], dtype=np.int64),
            "state_row": self.index.state_row.astype(np.int32, copy=False),
            "dense_id": self.index.dense_id.astype(np.int32, copy=False),
            "dense_masks": self.index.dense_masks.astype(np.uint8, copy=False),
            "sparse_ptr": self.index.sparse_ptr.astype(np.int64, copy=False),
            "sparse_tokens": self.index.sparse_tokens.astype(np.int32, copy=False),
            "vocab_bytes": self.vocab_bytes.astype(np.uint8, copy=False),
            "vocab_offsets": self.vocab_offsets.astype(np.int64, copy=False),
            "fingerprint": np.frombuffer(self.fingerprint.encode("ascii"), dtype=np.uint8).copy(),
            "eos_token_id": np.array([eos], dtype=np.int64),
            **extra,
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> TokenFSM:
        """Rebuild from `to_arrays()` output (a dict or an `np.load` result). Every array is
        validated (`check`) first: a tampered table is a `ConstraintError` here, never a crash or a
        wrong mask at decode time."""

        def get(name: str) -> np.ndarray:
            try:
                return np.asarray(arrays[name])
            except KeyError:
                raise ConstraintError(f"token FSM arrays lack {name!r}") from None

        version = get("format_version")
        if version.shape != (1,) or version.dtype.kind not in "iu" or int(version[0]) not in _READABLE_VERSIONS:
            raise ConstraintError(f"corrupt token FSM arrays: format_version: unknown version {version.tolist()}")
        _check_dtypes({name: get(name) for name in _DTYPES if name not in _OPTIONAL}, "corrupt token FSM arrays")
        transitions = get("transitions")
        if int(version[0]) == 1:  # one row per state
            state_row = np.arange(transitions.shape[0] if transitions.ndim == 2 else 0, dtype=np.int32)
        else:
            state_row = get("state_row")
        fingerprint = get("fingerprint").tobytes().decode("ascii", errors="replace")
        eos = get("eos_token_id")
        eos_id = int(eos[0]) if eos.shape == (1,) else -2
        initial = get("initial")
        if initial.shape != (1,):
            raise ConstraintError(f"corrupt token FSM arrays: initial: shape {initial.shape}, expected (1,)")
        vocab_size = get("vocab_size")
        if vocab_size.shape != (1,) or int(vocab_size[0]) < 0:
            raise ConstraintError(f"corrupt token FSM arrays: vocab_size: {vocab_size.tolist()}")
        dfa = DFA(int(initial[0]), get("accepting"), transitions, get("symbol_class"))
        index = TokenIndex(
            int(vocab_size[0]), state_row, get("dense_id"), get("dense_masks"), get("sparse_ptr"),
            get("sparse_tokens"),
        )
        unique_paths: tuple[Path, ...] = ()
        v = int(version[0])
        if v == 3 or (v == 4 and _has(arrays, "unique_paths")):
            unique_paths = _load_unique_paths(get("unique_paths"))
        elif _has(arrays, "unique_paths"):
            raise ConstraintError(f"corrupt token FSM arrays: unique_paths: present in a format {v} "
                                  "table (only formats 3 and 4 have them)")
        if v == 4:
            _load_structure_flag(get("json_structure"))
        elif _has(arrays, "json_structure"):
            raise ConstraintError(f"corrupt token FSM arrays: json_structure: present in a format {v} "
                                  "table (only format 4 has it)")
        fsm = cls.__new__(cls)
        fsm._init_fields(dfa, index, get("vocab_bytes"), get("vocab_offsets"), fingerprint,
                         None if eos_id == -1 else eos_id, get("forced_byte"), unique_paths, v == 4)
        try:
            fsm.check()
        except ValueError as e:
            raise ConstraintError(f"corrupt token FSM arrays: {e}") from None
        fsm._derive()
        return fsm

    def check(self, vocab_size: int | None = None) -> None:
        """Validate every array (dtype, shape, ranges of state and token ids, monotone offsets, the
        initial state, forced bytes); raise `ValueError` naming the array and the problem.

        `vocab_size`: the model's vocabulary (logit rows) the masks will be applied to; the table
        must not be wider. Called by `from_arrays`; call it again where a table meets a model.
        """
        fields = {
            "accepting": self.dfa.accepting,
            "transitions": self.dfa.transitions,
            "symbol_class": self.dfa.symbol_class,
            "forced_byte": self.forced,
            "state_row": self.index.state_row,
            "dense_id": self.index.dense_id,
            "dense_masks": self.index.dense_masks,
            "sparse_ptr": self.index.sparse_ptr,
            "sparse_tokens": self.index.sparse_tokens,
            "vocab_bytes": self.vocab_bytes,
            "vocab_offsets": self.vocab_offsets,
        }
        _check_dtypes(fields, "token FSM")
        _check_structure(self, vocab_size)
        try:
            validate_paths(self.unique_paths)
        except ValueError as e:
            _fail("unique_paths", str(e))
    @property
    def nbytes(self) -> int:
        """Bytes of the arrays specific to this constraint (the vocabulary's bytes not counted)."""
        return int(
            self.dfa.transitions.nbytes + self.dfa.accepting.nbytes + self.forced.nbytes + self.index.nbytes
        )

    def __repr__(self) -> str:
        return (
            f"TokenFSM(states={self.num_states}, classes={self.dfa.num_classes}, vocab={self.vocab_size}, "
            f"dense_masks={self.index.dense_masks.shape[0]}, sparse_entries={self.index.sparse_tokens.shape[0]}"
            + (f", unique_paths={len(self.unique_paths)}" if self.unique_paths else "")
            + (", json_structure=True)" if self.json_structure else ")")
        )


# ---------------------------------------------------------------------------------------------
# Validation of the arrays (artifacts are untrusted input)

_DTYPES: dict[str, np.dtype] = {
    "format_version": np.dtype(np.int32),
    "initial": np.dtype(np.int32),
    "accepting": np.dtype(bool),
    "transitions": np.dtype(np.int32),
    "symbol_class": np.dtype(np.int32),
    "forced_byte": np.dtype(np.int16),
    "vocab_size": np.dtype(np.int64),
    "state_row": np.dtype(np.int32),
    "dense_id": np.dtype(np.int32),
    "dense_masks": np.dtype(np.uint8),
    "sparse_ptr": np.dtype(np.int64),
    "sparse_tokens": np.dtype(np.int32),
    "vocab_bytes": np.dtype(np.uint8),
    "vocab_offsets": np.dtype(np.int64),
    "fingerprint": np.dtype(np.uint8),
    "eos_token_id": np.dtype(np.int64),
    "unique_paths": np.dtype(np.uint8),
    "json_structure": np.dtype(np.uint8),
}
_OPTIONAL = frozenset({"state_row", "unique_paths", "json_structure"})  # by format version


def _has(arrays: Any, name: str) -> bool:
    try:
        return name in arrays
    except TypeError:
        return False


def _load_unique_paths(arr: np.ndarray) -> tuple[Path, ...]:
    _check_dtypes({"unique_paths": arr}, "corrupt token FSM arrays")
    if arr.ndim != 1:
        raise ConstraintError(f"corrupt token FSM arrays: unique_paths: shape {arr.shape}, expected 1-D")
    try:
        return paths_from_json(arr.tobytes().decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConstraintError(f"corrupt token FSM arrays: unique_paths: {e}") from None


def _load_structure_flag(arr: np.ndarray) -> None:
    """Format 4's flag: exactly one byte, 1 (a table is format 4 only when the check is on)."""
    _check_dtypes({"json_structure": arr}, "corrupt token FSM arrays")
    if arr.shape != (1,) or int(arr[0]) != 1:
        raise ConstraintError(f"corrupt token FSM arrays: json_structure: {arr.tolist()}, expected [1] "
                              "(format 4 tables always have the check on)")


def _check_dtypes(arrays: dict[str, np.ndarray], where: str) -> None:
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise ConstraintError(f"{where}: {name}: not an array ({type(arr).__name__})")
        want = _DTYPES[name]
        if arr.dtype != want:
            raise ConstraintError(f"{where}: {name}: dtype {arr.dtype}, expected {want}")


def _fail(name: str, problem: str) -> None:
    raise ConstraintError(f"{name}: {problem}")


def _in_range(name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    """All of `arr` within [lo, hi) (empty arrays pass)."""
    if arr.size and (int(arr.min()) < lo or int(arr.max()) >= hi):
        _fail(name, f"values {int(arr.min())}..{int(arr.max())} outside {lo}..{hi - 1}")


def _check_structure(fsm: TokenFSM, vocab_size: int | None) -> None:
    dfa, index = fsm.dfa, fsm.index
    t = dfa.transitions
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        _fail("transitions", f"shape {t.shape}, expected (states >= 1, classes >= 1)")
    num_states, num_classes = t.shape
    _in_range("transitions", t, -1, num_states)
    if dfa.accepting.shape != (num_states,):
        _fail("accepting", f"shape {dfa.accepting.shape}, expected ({num_states},)")
    if not 0 <= dfa.initial < num_states:
        _fail("initial", f"state {dfa.initial} outside 0..{num_states - 1}")
    if dfa.symbol_class.shape != (256,):
        _fail("symbol_class", f"shape {dfa.symbol_class.shape}, expected (256,)")
    _in_range("symbol_class", dfa.symbol_class, 0, num_classes)
    _check_forced(fsm.forced, dfa)
    v = index.vocab_size
    if vocab_size is not None and v > vocab_size:
        _fail("vocab_size", f"the table covers {v} tokens, the model has {vocab_size}")
    if fsm.eos_token_id is not None and not 0 <= fsm.eos_token_id < max(v, vocab_size or 0):
        _fail("eos_token_id", f"{fsm.eos_token_id} outside the vocabulary")
    if index.state_row.shape != (num_states,):
        _fail("state_row", f"shape {index.state_row.shape}, expected ({num_states},)")
    num_rows = index.dense_id.shape[0] if index.dense_id.ndim == 1 else -1
    if num_rows < 1:
        _fail("dense_id", f"shape {index.dense_id.shape}, expected (rows >= 1,)")
    _in_range("state_row", index.state_row, 0, num_rows)
    words = (v + 7) // 8
    if index.dense_masks.ndim != 2 or index.dense_masks.shape[1] != words:
        _fail("dense_masks", f"shape {index.dense_masks.shape}, expected (masks, {words})")
    _in_range("dense_id", index.dense_id, -1, index.dense_masks.shape[0])
    ptr = index.sparse_ptr
    if ptr.shape != (num_rows + 1,):
        _fail("sparse_ptr", f"shape {ptr.shape}, expected ({num_rows + 1},)")
    if ptr[0] != 0 or (np.diff(ptr) < 0).any() or int(ptr[-1]) != index.sparse_tokens.shape[0]:
        _fail("sparse_ptr", "not monotone from 0 to the number of sparse tokens")
    if index.sparse_tokens.ndim != 1:
        _fail("sparse_tokens", f"shape {index.sparse_tokens.shape}, expected 1-D")
    _in_range("sparse_tokens", index.sparse_tokens, 0, v)
    offsets = fsm.vocab_offsets
    if offsets.shape != (v + 1,):
        _fail("vocab_offsets", f"shape {offsets.shape}, expected ({v + 1},)")
    if fsm.vocab_bytes.ndim != 1:
        _fail("vocab_bytes", f"shape {fsm.vocab_bytes.shape}, expected 1-D")
    if offsets[0] != 0 or (np.diff(offsets) < 0).any() or int(offsets[-1]) != fsm.vocab_bytes.shape[0]:
        _fail("vocab_offsets", "not monotone from 0 to the number of vocabulary bytes")
    fp = fsm.fingerprint
    if len(fp) != 64 or any(ch not in "0123456789abcdef" for ch in fp):
        _fail("fingerprint", "not a sha256 hex digest")


def _check_forced(forced: np.ndarray, dfa: DFA) -> None:
    """Forced bytes must be what the DFA forces, and a chain of them must end: `jump_forward`
    follows them, so a tampered cycle would loop forever."""
    n = dfa.num_states
    if forced.shape != (n,):
        _fail("forced_byte", f"shape {forced.shape}, expected ({n},)")
    _in_range("forced_byte", forced, -1, 256)
    if not np.array_equal(forced, forced_bytes(dfa)):
        _fail("forced_byte", "differs from the bytes the transitions force")
    # the forced-successor function, with n as the absorbing "chain ended"
    is_forced = forced >= 0
    succ = np.full(n + 1, n, dtype=np.int64)
    fs = np.flatnonzero(is_forced)
    succ[fs] = dfa.transitions[fs, dfa.symbol_class[forced[fs]]]
    succ[succ < 0] = n
    steps = 1
    while steps <= n:  # pointer doubling: after 2^k >= n steps every acyclic chain has ended
        succ = succ[succ]
        steps *= 2
    if (succ[:n] != n).any():
        _fail("forced_byte", "forced bytes form a cycle")
