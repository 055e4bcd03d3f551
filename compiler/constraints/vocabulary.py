"""A tokenizer's vocabulary as bytes: what every token id spells, and which ids are special.

The token index works on bytes, so each token must be turned back into the exact bytes it adds to
the text:

* byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): token strings are bytes spelled through GPT-2's
  byte-to-unicode table (printable bytes stand for themselves, the rest are shifted to U+0100+);
* SentencePiece (Llama 2, Mistral, TinyLlama): `▁` is a space and `<0xNN>` is the raw byte NN;
* plain: the token string's UTF-8 bytes.

Special tokens (and ids no token uses) have no bytes: the index never allows them. Added tokens that
are not special are matched on raw text, so their bytes are their content's UTF-8.

`fingerprint` (sha256 over the kind, every token's bytes and the special ids) keys compiled indexes:
an index is only valid for the vocabulary it was built for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from .errors import ConstraintError

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
PLAIN = "plain"
KINDS = (BYTE_LEVEL, SENTENCEPIECE, PLAIN)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 to U+0100 upwards."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def byte_level_decode(token: str) -> bytes | None:
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in token)
    except KeyError:
        return None


def sentencepiece_decode(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("\u2581", " ").encode("utf-8")


class Vocabulary:
    """Token id -> bytes (None for special/unused ids), plus the special ids and EOS."""

    def __init__(
        self,
        token_bytes: Sequence[bytes | None],
        kind: str = PLAIN,
        special_ids: Sequence[int] = (),
        eos_token_id: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown vocabulary kind {kind!r}")
        special = set(int(i) for i in special_ids)
        self.kind = kind
        self.token_bytes: tuple[bytes | None, ...] = tuple(
            None if (i in special or b is None or len(b) == 0) else bytes(b)
            for i, b in enumerate(token_bytes)
        )
        self.special_ids = np.array(sorted(special), dtype=np.int64)
        self.eos_token_id = eos_token_id
        self.tokenizer = tokenizer

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def __len__(self) -> int:
        return len(self.token_bytes)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"sgc-vocabulary-v1:{self.kind}:{self.size}:".encode())
        for b in self.token_bytes:
            if b is None:
                h.update(b"\xff")
            else:
                h.update(len(b).to_bytes(4, "little"))
                h.update(b)
        h.update(b"special:" + ",".join(map(str, self.special_ids.tolist())).encode())
        return h.hexdigest()

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat uint8 bytes of all tokens, int64 offsets[size + 1]); special tokens are empty."""
        lengths = np.fromiter(
            (0 if b is None else len(b) for b in self.token_bytes), dtype=np.int64, count=self.size
        )
        offsets = np.zeros(self.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.frombuffer(b"".join(b for b in self.token_bytes if b is not None), dtype=np.uint8)
        return flat, offsets

    def token_text(self, token_id: int) -> bytes:
        b = self.token_bytes[token_id]
        return b"" if b is None else b

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.token_text(i) for i in ids)

    def encode(self, text: str) -> list[int]:
        """The tokenizer's own encoding of `text` (no special tokens added)."""
        if self.tokenizer is None:
            raise ConstraintError("this vocabulary was built without a tokenizer; it cannot encode")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_strings(
        cls,
        tokens: Sequence[str | None],
        kind: str = PLAIN,
        special_ids: Sequence[int] = (),
        eos_token_id: int | None = None,
    ) -> Vocabulary:
        """From token strings as the tokenizer spells them (byte-level, SentencePiece or plain)."""
        decoded: list[bytes | None] = []
        for t in tokens:
            if t is None:
                decoded.append(None)
            elif kind == BYTE_LEVEL:
                decoded.append(byte_level_decode(t))
            elif kind == SENTENCEPIECE:
                decoded.append(sentencepiece_decode(t))
            else:
                decoded.append(t.encode("utf-8"))
        return cls(decoded, kind, special_ids, eos_token_id)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, eos_token_id: int | None = None) -> Vocabulary:
        """From a `tokenizers.Tokenizer` or a transformers fast tokenizer."""
        hf = tokenizer
        if hasattr(tokenizer, "backend_tokenizer"):
            if eos_token_id is None:
                eos_token_id = getattr(tokenizer, "eos_token_id", None)
            tokenizer = tokenizer.backend_tokenizer
        spec = json.loads(tokenizer.to_str())
        kind = _detect_kind(spec)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1 if vocab else 0
        added = tokenizer.get_added_tokens_decoder()
        special = {i for i, tok in added.items() if tok.special}
        added_plain = {i: tok.content for i, tok in added.items() if not tok.special}
        strings: list[str | None] = [None] * size
        for text, i in vocab.items():
            strings[i] = text
        decoded: list[bytes | None] = []
        for i, t in enumerate(strings):
            if t is None or i in special:
                decoded.append(None)
            elif i in added_plain:
                decoded.append(added_plain[i].encode("utf-8"))
            elif kind == BYTE_LEVEL:
                decoded.append(byte_level_decode(t))
            elif kind == SENTENCEPIECE:
                decoded.append(sentencepiece_decode(t))
            else:
                decoded.append(t.encode("utf-8"))
        if eos_token_id is None:
            for name in ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>"):
                if name in vocab and vocab[name] in special:
                    eos_token_id = vocab[name]
                    break
        del hf
        return cls(decoded, kind, sorted(special), eos_token_id, tokenizer=tokenizer)


def _detect_kind(spec: dict) -> str:
    model = spec.get("model") or {}
    if model.get("type") == "WordPiece":
        raise ConstraintError("WordPiece vocabularies are not supported")
    found: list[str] = []

    def visit(part: Any) -> None:
        if isinstance(part, dict):
            found.append(str(part.get("type")))
            if part.get("type") == "Replace":
                pat = part.get("pattern", {})
                if isinstance(pat, dict) and pat.get("String") == "\u2581":
                    found.append("Metaspace")
            for v in part.values():
                if isinstance(v, (dict, list)):
                    visit(v)
        elif isinstance(part, list):
            for v in part:
                visit(v)

    visit(spec.get("decoder"))
    if "ByteLevel" in found:
        return BYTE_LEVEL
    if "ByteFallback" in found or "Metaspace" in found:
        return SENTENCEPIECE
    visit(spec.get("pre_tokenizer"))
    if "ByteLevel" in found:
        return BYTE_LEVEL
    if "Metaspace" in found:
        return SENTENCEPIECE
    return PLAIN
