"""The tokenizer the runtime uses: a thin layer over `tokenizers.Tokenizer`.

Loading through the `tokenizers` library directly (not transformers' AutoTokenizer) keeps engine
start-up fast. It reads the files our model cache writes: tokenizer.json for the vocabulary,
tokenizer_config.json for special tokens and the chat template, generation_config.json for the
end-of-sequence ids the model was trained to emit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _token_content(value: object) -> str | None:
    """tokenizer_config stores special tokens as strings or as {"content": ...} dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode/decode text and know the model's special tokens."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no tokenizer.json (is this a model folder?)")
        self._tok = _HFTokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        model_config = _read_json(folder / "config.json")
        self.chat_template: str | None = config.get("chat_template")
        self.bos_token: str | None = _token_content(config.get("bos_token"))
        self.eos_token: str | None = _token_content(config.get("eos_token"))
        self.bos_token_id: int | None = self.token_to_id(self.bos_token) if self.bos_token else None
        eos_ids: set[int] = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if isinstance(source, int):
                eos_ids.add(source)
            elif isinstance(source, list):
                eos_ids.update(int(x) for x in source)
        if self.eos_token and self.token_to_id(self.eos_token) is not None:
            eos_ids.add(self.token_to_id(self.eos_token))
        self.eos_token_ids: frozenset[int] = frozenset(eos_ids)
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids as HF transformers' tokenizer(text) gives them (BOS added if the model wants it)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def backend(self) -> _HFTokenizer:
        """The underlying `tokenizers.Tokenizer` (the constraint compiler walks its vocabulary)."""
        return self._tok

    def fingerprint(self) -> str:
        """A stable hash of the vocabulary: compiled constraint tables are keyed by it."""
        vocab = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()[:16]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's own template (sandboxed Jinja2, bounded in time and size:
        `compiler.chat_template.sandboxed_environment`); a bad template is a `ChatTemplateError`."""
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat template")
        from jinja2.exceptions import TemplateError

        from compiler.chat_template import ChatTemplateError, render_bounded, sandboxed_environment

        try:
            template = sandboxed_environment().from_string(self.chat_template)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None
        return render_bounded(template, messages=messages, add_generation_prompt=add_generation_prompt,
                              bos_token=self.bos_token or "", eos_token=self.eos_token or "")
