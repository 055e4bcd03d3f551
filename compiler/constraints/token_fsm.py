"""`TokenFSM`: a compiled constraint, the object the runtime drives, as plain arrays.

It bundles the byte-level DFA (states, accepting flags, transitions), the token index (allowed tokens
per state) and the vocabulary's token bytes (so `next_state` can walk a token's bytes without the
tokenizer). `to_arrays()` gives a dict of numpy arrays that `np.savez` stores and
`np.load(allow_pickle=False)` reads back; `from_arrays` checks every bound before trusting them.

Run-time protocol: start in `initial_state`; before each step `fill_mask(state, mask)`; after
sampling token t, `state = next_state(state, t)`; EOS is allowed exactly when `is_accepting(state)`
(pass `eos_token_id` to `fill_mask` to have it set). `jump_forward(state)` gives the text the
constraint forces from here and the state after it (see `jump_forward`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .automaton import DFA
from .errors import ConstraintError
from .jump_forward import forced_bytes, jump_forward, mid_character
from .token_index import TokenIndex, build_token_index
from .vocabulary import Vocabulary

FORMAT_VERSION = 1


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
    ) -> None:
        self.dfa = dfa
        self.index = index
        self.vocab_bytes = vocab_bytes
        self.vocab_offsets = vocab_offsets
        self.fingerprint = fingerprint
        self.eos_token_id = eos_token_id
        self.forced = forced_bytes(dfa) if forced is None else forced
        self.mid_char = mid_character(dfa)
        self._table: list[list[int]] | None = None
        self._symbol_class: list[int] | None = None
        self._tokens: list[bytes] | None = None
        self._dense_rows: dict[int, np.ndarray] = {}
        self._torch_cache: dict[tuple, Any] = {}

    @classmethod
    def build(cls, dfa: DFA, vocab: Vocabulary) -> TokenFSM:
        flat, offsets = vocab.arrays
        return cls(dfa, build_token_index(dfa, vocab), flat, offsets, vocab.fingerprint, vocab.eos_token_id)

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

    def _lists(self) -> tuple[list[list[int]], list[int], list[bytes]]:
        if self._table is None:
            self._table = self.dfa.transitions.tolist()
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
            s = table[s][symbol_class[b]]
        return s

    def next_state(self, state: int, token: int) -> int:
        """The state after `token`, or -1 if the token is not allowed (special tokens never are)."""
        table, symbol_class, tokens = self._lists()
        if state < 0 or not 0 <= token < len(tokens):
            return -1
        data = tokens[token]
        if not data:
            return -1
        s = state
        for b in data:
            s = table[s][symbol_class[b]]
            if s < 0:
                return -1
        return s

    def jump_forward(self, state: int) -> tuple[str, int]:
        """The text forced from `state` (whole characters only) and the state after it."""
        data, end = jump_forward(self.dfa, self.forced, self.mid_char, state)
        return data.decode("utf-8"), end

    def forced_string(self, state: int) -> str:
        return self.jump_forward(state)[0]

    # -- masks ------------------------------------------------------------------------------
    def _dense_row(self, dense: int) -> np.ndarray:
        row = self._dense_rows.get(dense)
        if row is None:
            row = np.unpackbits(self.index.dense_masks[dense], count=self.vocab_size, bitorder="little").view(
                bool
            )
            self._dense_rows[dense] = row
        return row

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
        dense = int(self.index.dense_id[state])
        if dense >= 0:
            if mask.shape[0] == v:
                np.copyto(mask, self._dense_row(dense))
            else:
                mask[:v] = self._dense_row(dense)
                mask[v:] = False
        else:
            mask.fill(False)
            ptr = self.index.sparse_ptr
            mask[self.index.sparse_tokens[ptr[state] : ptr[state + 1]]] = True

    def _fill_torch(self, state: int, mask: Any) -> None:
        if mask.device.type == "cpu" and mask.is_contiguous():
            # torch's own CPU bool copy is ~100x slower than numpy's memcpy on a shared view
            self._fill_numpy(state, mask.numpy())
            return
        import torch

        v = self.vocab_size
        dense = int(self.index.dense_id[state])
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
            key = ("sparse", state, device)
            ids = self._torch_cache.get(key)
            if ids is None:
                ptr = self.index.sparse_ptr
                ids = torch.from_numpy(
                    self.index.sparse_tokens[ptr[state] : ptr[state + 1]].astype(np.int64)
                ).to(device)
                self._torch_cache[key] = ids
            mask.fill_(False)
            mask.index_fill_(0, ids, True)

    # -- plain arrays -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        eos = -1 if self.eos_token_id is None else int(self.eos_token_id)
        return {
            "format_version": np.array([FORMAT_VERSION], dtype=np.int32),
            "initial": np.array([self.dfa.initial], dtype=np.int32),
            "accepting": self.dfa.accepting.astype(bool),
            "transitions": self.dfa.transitions.astype(np.int32),
            "symbol_class": self.dfa.symbol_class.astype(np.int32),
            "forced_byte": self.forced.astype(np.int16),
            "vocab_size": np.array([self.vocab_size], dtype=np.int64),
            "dense_id": self.index.dense_id.astype(np.int32),
            "dense_masks": self.index.dense_masks.astype(np.uint8),
            "sparse_ptr": self.index.sparse_ptr.astype(np.int64),
            "sparse_tokens": self.index.sparse_tokens.astype(np.int32),
            "vocab_bytes": self.vocab_bytes.astype(np.uint8),
            "vocab_offsets": self.vocab_offsets.astype(np.int64),
            "fingerprint": np.frombuffer(self.fingerprint.encode("ascii"), dtype=np.uint8).copy(),
            "eos_token_id": np.array([eos], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> TokenFSM:
        """Rebuild from `to_arrays()` output (a dict or an `np.load` result), checking every bound."""

        def get(name: str) -> np.ndarray:
            try:
                return np.asarray(arrays[name])
            except KeyError:
                raise ConstraintError(f"token FSM arrays lack {name!r}") from None

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ConstraintError(f"corrupt token FSM arrays: {what}")

        version = get("format_version")
        check(
            version.shape == (1,) and int(version[0]) == FORMAT_VERSION, f"format version {version.tolist()}"
        )
        transitions = get("transitions").astype(np.int32)
        check(transitions.ndim == 2, "transitions must be 2-D")
        num_states, num_classes = transitions.shape
        check(
            num_states == 0
            or (transitions.min(initial=-1) >= -1 and transitions.max(initial=-1) < num_states),
            "transition out of range",
        )
        accepting = get("accepting").astype(bool)
        check(accepting.shape == (num_states,), "accepting shape")
        initial = int(get("initial")[0])
        check(num_states == 0 or 0 <= initial < num_states, "initial state out of range")
        symbol_class = get("symbol_class").astype(np.int32)
        check(
            symbol_class.shape == (256,)
            and symbol_class.min() >= 0
            and symbol_class.max() < max(num_classes, 1),
            "symbol classes",
        )
        forced = get("forced_byte").astype(np.int16)
        check(
            forced.shape == (num_states,) and forced.min(initial=-1) >= -1 and forced.max(initial=-1) < 256,
            "forced bytes",
        )
        vocab_size = int(get("vocab_size")[0])
        check(vocab_size >= 0, "vocab size")
        dense_id = get("dense_id").astype(np.int32)
        dense_masks = get("dense_masks").astype(np.uint8)
        check(dense_masks.ndim == 2 and dense_masks.shape[1] == (vocab_size + 7) // 8, "dense mask shape")
        check(
            dense_id.shape == (num_states,)
            and dense_id.min(initial=-1) >= -1
            and dense_id.max(initial=-1) < dense_masks.shape[0],
            "dense ids",
        )
        sparse_ptr = get("sparse_ptr").astype(np.int64)
        sparse_tokens = get("sparse_tokens").astype(np.int32)
        check(
            sparse_ptr.shape == (num_states + 1,) and sparse_ptr[0] == 0 and (np.diff(sparse_ptr) >= 0).all(),
            "sparse pointers",
        )
        check(int(sparse_ptr[-1]) == sparse_tokens.shape[0], "sparse pointer end")
        check(
            sparse_tokens.size == 0 or (sparse_tokens.min() >= 0 and sparse_tokens.max() < vocab_size),
            "sparse token ids",
        )
        vocab_bytes = get("vocab_bytes").astype(np.uint8)
        vocab_offsets = get("vocab_offsets").astype(np.int64)
        check(vocab_offsets.shape == (vocab_size + 1,) and vocab_offsets[0] == 0, "vocab offsets")
        check(
            (np.diff(vocab_offsets) >= 0).all() and int(vocab_offsets[-1]) == vocab_bytes.shape[0],
            "vocab offsets",
        )
        fingerprint = get("fingerprint").astype(np.uint8).tobytes().decode("ascii", errors="replace")
        eos = int(get("eos_token_id")[0])
        dfa = DFA(initial, accepting, transitions, symbol_class)
        index = TokenIndex(vocab_size, dense_id, dense_masks, sparse_ptr, sparse_tokens)
        return cls(dfa, index, vocab_bytes, vocab_offsets, fingerprint, None if eos < 0 else eos, forced)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays specific to this constraint (the vocabulary's bytes not counted)."""
        return int(
            self.dfa.transitions.nbytes + self.dfa.accepting.nbytes + self.forced.nbytes + self.index.nbytes
        )

    def __repr__(self) -> str:
        return (
            f"TokenFSM(states={self.num_states}, classes={self.dfa.num_classes}, vocab={self.vocab_size}, "
            f"dense_masks={self.index.dense_masks.shape[0]}, sparse_entries={self.index.sparse_tokens.shape[0]})"
        )
