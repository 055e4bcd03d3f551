"""JSON structure checked while decoding: the pushdown half of an unconstrained JSON value.

Nesting is not regular. The exact automaton of "any JSON value nested at most d deep" (two bracket
kinds, keys before colons) grows ~4x per level (depth 2: 1.5k states, 4: 25k, 6: 400k), so
`json_schema.any_value_node` stops at `any_depth` = 2. `compile_json_schema` instead compiles an
unconstrained value to a *superset* that only counts brackets (`SchemaCompiler.any_superset`):

    S_0 = scalars (string, number, true, false, null)
    S_k = scalars | [[{] ws ( I_k (ws "," ws I_k)* ws )? []}]      I_k = ("string" ws ":" ws)? S_(k-1)

linear in k (`SUPERSET_DEPTH` levels), and marks the `TokenFSM` `json_structure`. At decode time a
`StructureGuard` follows the output with a container stack and a phase for the innermost container
(`StructureScanner`), and after the FSM's mask clears the tokens that would break JSON structure: a
closer of the wrong kind or at the wrong phase, `:` outside an object's key phase, a non-string where
an object key must be, a `,` not after a value, a scalar glued to a string. Valid JSON always passes,
so the check is harmless in the exact parts of the automaton; the superset automaton plus the check
accept exactly the JSON values of bounded depth (the automaton guarantees scalars, balance and the
depth bound; the check, kinds and the object/array grammar).

Cost: per vocabulary, each token's *signature* for each start mode (outside a string, inside one,
right after a backslash): the structural events its bytes make (a string quote, a run of scalar
bytes, a run of whitespace, `[ { ] } , :`, and whether it ends after a backslash), string contents
dropped. SmolLM2's 49,152 tokens have a few hundred distinct signatures. Per step the guard looks up
(mode, phase, the top `depth` stack entries) in a per-vocabulary cache that holds what to clear (an id
array, or a keep-mask when most tokens go); on a miss it replays each distinct signature (a few
milliseconds) once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from .automaton import trim
from .dfa import DFA

# Nesting levels of the superset automaton of an unconstrained value (items and map values of one
# get one level less). States grow linearly (78 per level in compact JSON: 1,309 at 16, fewer than
# the exact automaton's 1.5k at depth 2); 16 covers the corpus's instances (3-9 deep inside
# unconstrained values) with room to spare.
SUPERSET_DEPTH = 16

# ---------------------------------------------------------------------------------------------
# Compile time: did the schema use the superset? (compile_json_schema opens `recording`)

_USED: ContextVar[list[bool] | None] = ContextVar("sgc_json_structure_used", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[bool]]:
    """Within this block, `note_superset` (called by `SchemaCompiler.any_superset`) sets the
    yielded list's only entry to True."""
    flag = [False]
    token = _USED.set(flag)
    try:
        yield flag
    finally:
        _USED.reset(token)


def note_superset() -> None:
    flag = _USED.get()
    if flag is not None:
        flag[0] = True


PLACEHOLDER = 0xFF  # never in UTF-8 text: stands for a nested container in the level templates


def placeholder_dfa() -> DFA:
    """The one-byte automaton of PLACEHOLDER."""
    symbol_class = np.zeros(256, dtype=np.int32)
    symbol_class[PLACEHOLDER] = 1
    return DFA(0, np.array([False, True]), np.array([[-1, 1], [-1, -1]], dtype=np.int32), symbol_class)


def nest_levels(top: DFA, level: DFA, depth: int) -> DFA:
    """The superset automaton of an unconstrained value nested at most `depth` deep.

    `top`: scalars | PLACEHOLDER; `level`: one container whose items are scalars | PLACEHOLDER
    (optionally after a key), both minimized. Level j (1..depth) is a copy of `level`; at a
    placeholder position, `[` / `{` enter level j-1 (level 1 has none), and level j-1's closer leads
    to the state after the placeholder in level j (the same state wherever the placeholder stood:
    "after an item"); the top's placeholder enters level `depth`, whose closer ends the value.
    States: |top| + depth * |level|, then trimmed."""
    opens = (0x5B, 0x7B)
    ub = top.transitions[:, top.symbol_class].astype(np.int64)
    tb = level.transitions[:, level.symbol_class].astype(np.int64)
    nu, nt = ub.shape[0], tb.shape[0]
    ends = np.flatnonzero(level.accepting)
    if len(ends) != 1 or (tb[ends[0]] >= 0).any():
        raise ValueError("container template: expected one accepting state without transitions")
    end = int(ends[0])
    holes = np.flatnonzero(tb[:, PLACEHOLDER] >= 0)
    after_item = np.unique(tb[holes, PLACEHOLDER])
    if len(after_item) != 1 or (tb[holes][:, list(opens)] >= 0).any():
        raise ValueError("container template: placeholders must lead to one state and not compete with brackets")
    entry = {b: int(tb[level.initial, b]) for b in opens}
    top_holes = np.flatnonzero(ub[:, PLACEHOLDER] >= 0)
    top_after = np.unique(ub[top_holes, PLACEHOLDER])
    if len(top_after) > 1:
        raise ValueError("top template: placeholders must lead to one state")
    out = np.full((nu + depth * nt, 256), -1, dtype=np.int64)
    out[:nu] = ub

    def base(j: int) -> int:
        return nu + (j - 1) * nt

    if depth >= 1:
        for b in opens:
            out[top_holes, b] = base(depth) + entry[b]
    for j in range(1, depth + 1):
        block = np.where(tb >= 0, tb + base(j), -1)
        block[tb == end] = int(top_after[0]) if j == depth else base(j + 1) + int(after_item[0])
        if j >= 2:
            for b in opens:
                block[holes, b] = base(j - 1) + entry[b]
        out[base(j) : base(j) + nt] = block
    out[:, PLACEHOLDER] = -1
    accepting = np.concatenate([top.accepting.astype(bool), np.zeros(depth * nt, dtype=bool)])
    columns, symbol_class = np.unique(out, axis=1, return_inverse=True)
    dfa = DFA(int(top.initial), accepting, np.ascontiguousarray(columns, dtype=np.int32),
              symbol_class.reshape(-1).astype(np.int32))
    return trim(dfa)


# ---------------------------------------------------------------------------------------------
# The scanner

OUT, STR, ESC = 0, 1, 2  # outside a string, inside one, right after a backslash inside one
# Phase of the innermost container (or of the root):
P_VALUE = 0  # a value must come (document start, after an array's `,`, after an object's `:`)
P_FIRST = 1  # right after `[` / `{`: a value or `]` / a key or `}`
P_KEY = 2  # after an object's `,`: a key
P_COLON = 3  # after (or inside) a key: `:`
P_AFTER = 4  # after a value (or inside a value string): `,` or the closer
P_SCALAR = 5  # inside a number / literal: more scalar bytes, whitespace, `,` or the closer
ROOT, ARR, OBJ = 0, 1, 2

# Signature events (bytes of the signature)
E_SCALAR, E_WS, E_QUOTE, E_ESC_END = ord("a"), ord(" "), ord('"'), ord("\\")
_LBRACK, _RBRACK, _LBRACE, _RBRACE, _COMMA, _COLON = (ord(c) for c in "[]{},:")
_WS_BYTES = frozenset(b" \t\n\r")
_STRUCT = frozenset(b'[]{},:"')
_SPECIAL = bytes(sorted(set(b'[]{},:"\\ \t\n\r')))
PHASE_NAMES = ("a value", "a value or a closer", "a key", "':'", "',' or a closer", "',' or a closer")


def _run(mode: int, phase: int, stack: list[int], events: bytes) -> tuple[int, int] | None:
    """Replay signature events from (mode, phase) on `stack` (mutated; stack[0] is ROOT or, for a
    cut snapshot, the deepest known container). Returns the new (mode, phase), or None if the events
    break JSON structure."""
    if mode == ESC:
        mode = STR  # the signature already consumed the escaped byte
    for ev in events:
        if mode != OUT:
            if ev == E_QUOTE:
                mode = OUT
            elif ev == E_ESC_END:
                mode = ESC
            continue
        top = stack[-1]
        if ev == E_WS:
            if phase == P_SCALAR:
                phase = P_AFTER
        elif ev == E_SCALAR:
            if phase == P_SCALAR:
                continue
            if phase == P_VALUE or (phase == P_FIRST and top == ARR):
                phase = P_SCALAR
            else:
                return None
        elif ev == E_QUOTE:
            if phase == P_VALUE or (phase == P_FIRST and top == ARR):
                phase = P_AFTER
            elif top == OBJ and (phase == P_FIRST or phase == P_KEY):
                phase = P_COLON
            else:
                return None
            mode = STR
        elif ev == _LBRACK or ev == _LBRACE:
            if phase == P_VALUE or (phase == P_FIRST and top == ARR):
                stack.append(ARR if ev == _LBRACK else OBJ)
                phase = P_FIRST
            else:
                return None
        elif ev == _RBRACK or ev == _RBRACE:
            if top != (ARR if ev == _RBRACK else OBJ) or phase not in (P_FIRST, P_AFTER, P_SCALAR) or len(stack) < 2:
                return None
            stack.pop()
            phase = P_AFTER
        elif ev == _COMMA:
            if top == ROOT or (phase != P_AFTER and phase != P_SCALAR):
                return None
            phase = P_VALUE if top == ARR else P_KEY
        elif ev == _COLON:
            if top != OBJ or phase != P_COLON:
                return None
            phase = P_VALUE
        else:  # pragma: no cover - signatures hold only the events above
            return None
    return mode, phase


def signature(data: bytes, mode: int) -> tuple[bytes, int]:
    """The structural events of `data` read from `mode` (runs of scalar bytes and of whitespace
    collapsed, string contents dropped, a trailing backslash kept) and the mode after it."""
    out = bytearray()
    last = -1
    for b in data:
        if mode == ESC:
            mode = STR
            continue
        if mode == STR:
            if b == 0x22:
                out.append(E_QUOTE)
                mode = OUT
                last = E_QUOTE
            elif b == 0x5C:
                mode = ESC
            continue
        if b == 0x22:
            ev = E_QUOTE
            mode = STR
        elif b in _STRUCT:
            ev = b
        elif b in _WS_BYTES:
            ev = E_WS
        else:
            ev = E_SCALAR
        if (ev == E_SCALAR or ev == E_WS) and ev == last:
            continue
        out.append(ev)
        last = ev
    if mode == ESC:
        out.append(E_ESC_END)
    return bytes(out), mode


def _max_pops(events: bytes, mode: int) -> int:
    """How many containers below the current top the events may close (their depth of reach)."""
    depth = reach = 0
    in_str = mode != OUT
    for ev in events:
        if ev == E_QUOTE:
            in_str = not in_str
        elif in_str:
            continue
        elif ev == _LBRACK or ev == _LBRACE:
            depth -= 1
        elif ev == _RBRACK or ev == _RBRACE:
            depth += 1
            reach = max(reach, depth)
    return reach


class StructureScanner:
    """Follows JSON text and says whether it is still a prefix of structurally valid JSON (scalar
    spellings are the automaton's business). `feed` returns False at the first byte that breaks it
    (`violation` says which); the state then stays where it was before that chunk."""

    __slots__ = ("mode", "phase", "stack", "violation", "fed")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mode = OUT
        self.phase = P_VALUE
        self.stack: list[int] = [ROOT]
        self.violation: str | None = None
        self.fed = 0

    def copy(self) -> StructureScanner:
        c = StructureScanner.__new__(StructureScanner)
        c.mode, c.phase, c.stack, c.violation, c.fed = self.mode, self.phase, list(self.stack), self.violation, self.fed
        return c

    @property
    def depth(self) -> int:
        return len(self.stack) - 1

    @property
    def complete(self) -> bool:
        """A whole JSON value has been read (only whitespace may follow)."""
        return self.mode == OUT and len(self.stack) == 1 and self.phase in (P_AFTER, P_SCALAR)

    def feed_events(self, events: bytes) -> bool:
        stack = list(self.stack)
        got = _run(self.mode, self.phase, stack, events)
        if got is None:
            return False
        self.mode, self.phase = got
        self.stack = stack
        return True

    def feed(self, data: bytes) -> bool:
        """Append output bytes; False (and `violation` set) if they break JSON structure."""
        events, _ = signature(data, self.mode)
        if self.feed_events(events):
            self.fed += len(data)
            return True
        self.violation = self._explain(data)
        return False

    def _explain(self, data: bytes) -> str:
        probe = self.copy()
        for i in range(len(data)):
            if not probe.feed_events(signature(data[i : i + 1], probe.mode)[0]):
                where = "an object" if probe.stack[-1] == OBJ else "an array" if probe.stack[-1] == ARR else "the document"
                return (f"byte {data[i:i + 1]!r} at offset {self.fed + i} of the output breaks JSON structure "
                        f"(in {where}, expecting {PHASE_NAMES[probe.phase]})")
        return "the text breaks JSON structure"  # pragma: no cover


def reference_ok(data: bytes) -> tuple[bool, StructureScanner]:
    """Byte-by-byte reference (one byte per step, no signatures, no caches): for the tests."""
    sc = StructureScanner()
    for i in range(len(data)):
        if not sc.feed_events(signature(data[i : i + 1], sc.mode)[0]):
            return False, sc
    return True, sc


def check_text(text: bytes | str) -> bool:
    """Whether a whole text is structurally one JSON value (what the runtime check lets through)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    sc = StructureScanner()
    return sc.feed(data) and sc.complete


# ---------------------------------------------------------------------------------------------
# Per vocabulary: signatures and the cache of what to clear

_TABLES: dict[tuple[str, int], StructureTables] = {}
_CACHE_ENTRIES = 4096
_KEEP_MASK_FROM = 2048  # clear lists longer than this are applied as a keep-mask (one AND)
_WARM_KEYS = 2048  # situations computed up front when there are at most this many
_SPARSE_FAST = 4096  # FSM rows of at most this many tokens are filtered entry by entry, not by an AND


class StructureTables:
    """Token signatures of one vocabulary, grouped, and the cache of the ids each situation clears."""

    def __init__(self, tokens: list[bytes]) -> None:
        self.tokens = tokens
        self.size = len(tokens)
        self.sigs: list[list[tuple[bytes, np.ndarray]]] = []  # per start mode: (signature, ids)
        self.token_sig: list[list[bytes]] = []  # per start mode: each token's signature
        reach = 0
        for mode in (OUT, STR, ESC):
            groups: dict[bytes, list[int]] = {}
            per_token: list[bytes] = []
            plain_out = b"a" if mode == OUT else b""
            for i, t in enumerate(tokens):
                if not t:
                    sig = b""
                elif mode != ESC and _plain(t):
                    sig = plain_out
                else:
                    sig = signature(t, mode)[0]
                per_token.append(sig)
                groups.setdefault(sig, []).append(i)
            self.sigs.append([(s, np.array(ids, dtype=np.int64)) for s, ids in groups.items()])
            self.token_sig.append(per_token)
            reach = max(reach, max((_max_pops(s, mode) for s in groups), default=0))
        self.depth = reach + 1  # stack entries a situation's key holds: every reachable one, plus the top after
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}
        self._torch: dict[tuple, Any] = {}
        self._shared: dict[bytes, tuple[np.ndarray, np.ndarray | None]] = {}  # equal clear sets, kept once
        self._warm()

    def _warm(self) -> None:
        """Fill the cache for every situation up front when there are few (SmolLM2: 3 stack entries,
        270 keys, 60 distinct clear sets, ~0.1 s once per vocabulary), so decoding never
        pays a miss."""
        stacks: list[tuple[int, ...]] = [(ROOT,)]
        frontier = [(ROOT,)]
        for _ in range(self.depth):
            frontier = [s + (k,) for s in frontier for k in (ARR, OBJ)]
            stacks += [s[-self.depth :] for s in frontier]
        stacks = sorted(set(stacks))
        if 3 * 6 * len(stacks) > _WARM_KEYS:
            return
        for mode in (OUT, STR, ESC):
            for phase in range(6):
                for top in stacks:
                    self._lookup((mode, phase, top))

    @classmethod
    def of(cls, fsm: Any) -> StructureTables:
        """The tables of an FSM's vocabulary (cached by its fingerprint and size, and on the FSM)."""
        mine = getattr(fsm, "_structure_tables", None)
        if mine is not None:
            return mine
        tokens = fsm._lists()[2]
        key = (fsm.fingerprint, len(tokens))
        hit = _TABLES.get(key)
        if hit is None or (hit.tokens is not tokens and hit.tokens != tokens):
            if len(_TABLES) >= 4:
                _TABLES.pop(next(iter(_TABLES)))
            hit = _TABLES[key] = cls(tokens)
        try:
            fsm._structure_tables = hit
        except AttributeError:  # pragma: no cover - an object that takes no attributes
            pass
        return hit

    def clear_ids(self, sc: StructureScanner) -> tuple[np.ndarray, np.ndarray | None]:
        """(sorted ids of the tokens that break structure from here, a keep-mask or None)."""
        key = (sc.mode, sc.phase, tuple(sc.stack[-self.depth :]))
        hit = self._cache.get(key)
        return hit if hit is not None else self._lookup(key)

    def _lookup(self, key: tuple) -> tuple[np.ndarray, np.ndarray | None]:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        mode, phase, top = key
        bad = [i for i, (sig, _) in enumerate(self.sigs[mode]) if _run(mode, phase, list(top), sig) is None]
        which = np.array([mode] + bad, dtype=np.int32).tobytes()
        hit = self._shared.get(which)
        if hit is None:
            groups = self.sigs[mode]
            ids = np.sort(np.concatenate([groups[i][1] for i in bad])) if bad else np.zeros(0, dtype=np.int64)
            keep = None
            if ids.size > _KEEP_MASK_FROM:
                keep = np.ones(self.size, dtype=bool)
                keep[ids] = False
            hit = self._shared[which] = (ids, keep)
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
            self._torch.clear()
            self._shared = {which: hit}
        self._cache[key] = hit
        return hit

    def torch_keep(self, sc: StructureScanner, device: Any) -> Any:
        import torch

        ids, keep = self.clear_ids(sc)
        key = (id(ids), str(device))  # per distinct clear set (the shared arrays live as long as the cache)
        got = self._torch.get(key)
        if got is None:
            if keep is None:
                keep = np.ones(self.size, dtype=bool)
                keep[ids] = False
            got = self._torch[key] = torch.from_numpy(keep.copy()).to(device)
        return got


def _plain(t: bytes) -> bool:
    """No byte of `t` is structural, whitespace or a backslash (most tokens)."""
    return len(t.translate(None, _SPECIAL)) == len(t)


class StructureGuard:
    """One output's structure check: a `StructureScanner` over it, and the mask filter."""

    def __init__(self, fsm: Any) -> None:
        self.fsm = fsm
        self.tables = StructureTables.of(fsm)
        self.scanner = StructureScanner()

    # -- the output ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Append output bytes; False if they break JSON structure (see `violation`)."""
        return self.scanner.feed(data)

    def feed_token(self, token: int) -> bool:
        """Append a sampled token (its precomputed signature); False if it breaks structure."""
        sc = self.scanner
        tables = self.tables
        if 0 <= token < tables.size:
            if sc.feed_events(tables.token_sig[sc.mode][token]):
                sc.fed += len(tables.tokens[token])
                return True
            sc.violation = sc._explain(tables.tokens[token])
            return False
        return True  # special tokens spell nothing

    def reset(self, data: bytes = b"") -> bool:
        self.scanner.reset()
        return self.scanner.feed(data) if data else True

    @property
    def violation(self) -> str | None:
        return self.scanner.violation

    @property
    def complete(self) -> bool:
        return self.scanner.complete

    def where(self) -> str:
        sc = self.scanner
        kind = {ROOT: "the document", ARR: "an array", OBJ: "an object"}[sc.stack[-1]]
        return f"in {kind} at depth {sc.depth}, expecting {PHASE_NAMES[sc.phase]}"

    # -- the mask -----------------------------------------------------------------------------
    def filter(self, mask: np.ndarray, state: int | None = None) -> bool:
        """Clear in `mask` (bool numpy, indexed by token id) every token that would break JSON
        structure from here. `state`: the FSM state whose mask it is; where its token row is a short
        list, only those tokens are looked at. Returns whether any token id was in the cleared set."""
        ids, keep = self.tables.clear_ids(self.scanner)
        if not ids.size:
            return False
        n = mask.shape[0]
        if state is not None and keep is not None:
            index = self.fsm.index
            row = int(index.state_row[state])
            if int(index.dense_id[row]) < 0:
                allowed = index.sparse_tokens[index.sparse_ptr[row] : index.sparse_ptr[row + 1]]
                if allowed.shape[0] <= _SPARSE_FAST:
                    if allowed.size and int(allowed[-1]) >= keep.shape[0]:
                        allowed = allowed[allowed < keep.shape[0]]
                    mask[allowed[~keep[allowed]]] = False
                    return True
        if keep is not None:
            if n == keep.shape[0]:
                np.logical_and(mask, keep, out=mask)
            else:
                m = min(n, keep.shape[0])
                np.logical_and(mask[:m], keep[:m], out=mask[:m])
        else:
            if ids[-1] >= n:
                ids = ids[ids < n]
            mask[ids] = False
        return True

    def filter_torch(self, row: Any) -> bool:
        """The same on a torch bool row on any device (a cached keep-mask per device)."""
        ids, _ = self.tables.clear_ids(self.scanner)
        if not ids.size:
            return False
        keep = self.tables.torch_keep(self.scanner, row.device)
        m = min(row.shape[0], keep.shape[0])
        row[:m].logical_and_(keep[:m])
        return True
