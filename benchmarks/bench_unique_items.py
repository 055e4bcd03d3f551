"""What the decode-time uniqueItems check costs per token (see compiler/constraints/unique_items.py).

    .venv/bin/python benchmarks/bench_unique_items.py

For a CloudFormation-style `Tags` array (objects with a Key and a Value) and an array of unique
strings, with 1 to 50 items, the text is tokenized with the default model's tokenizer and walked token
by token as the runtime does: `fill_mask` alone, then `fill_mask` followed by the uniqueness filter
(`UniqueGuard.filter`), and the scanner's `feed` of each token's bytes (done once per sampled token).
Times are medians of `--repeat` walks, in microseconds per token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from compiler.constraints import Vocabulary, compile_json_schema  # noqa: E402

TAGS = {
    "type": "object",
    "properties": {
        "Tags": {
            "type": "array",
            "uniqueItems": True,
            "items": {
                "type": "object",
                "properties": {"Key": {"type": "string", "minLength": 1, "maxLength": 128},
                               "Value": {"type": "string", "maxLength": 256}},
                "required": ["Key", "Value"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["Tags"],
    "additionalProperties": False,
}
NAMES = {"type": "array", "uniqueItems": True, "items": {"type": "string", "maxLength": 64}}
KEYS = ["Environment", "Owner", "Project", "CostCenter", "Team", "Application", "Name", "Stage"]


def instances(n: int) -> dict[str, object]:
    tags = [{"Key": f"{KEYS[i % len(KEYS)]}{i // len(KEYS) or ''}", "Value": f"value-{i}"} for i in range(n)]
    return {"tags": {"Tags": tags}, "names": [f"{KEYS[i % len(KEYS)].lower()}-{i}" for i in range(n)]}


def walk(fsm, ids: list[int], eos: int, guard_on: bool) -> tuple[list[float], list[float]]:
    mask = np.zeros(fsm.vocab_size, dtype=bool)
    guard = fsm.unique_guard() if guard_on else None
    s = fsm.initial_state
    masks, feeds = [], []
    for t in ids:
        t0 = time.perf_counter()
        fsm.fill_mask(s, mask, eos)
        if guard is not None:
            guard.filter(s, mask)
        masks.append(time.perf_counter() - t0)
        assert mask[t], "the walk left the constraint"
        s = fsm.next_state(s, t)
        if guard is not None:
            t0 = time.perf_counter()
            assert not guard.feed(fsm.token_text(t))
            feeds.append(time.perf_counter() - t0)
    return masks, feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--items", type=int, nargs="*", default=[1, 5, 20, 50])
    args = ap.parse_args()
    from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    vocab = Vocabulary.from_tokenizer(tokenizer, eos_token_id=SMOLLM2_EOS)
    fsms = {"tags": compile_json_schema(TAGS, vocab), "names": compile_json_schema(NAMES, vocab)}
    print("| schema | items | tokens | fill_mask (us/token) | fill_mask + filter (us/token) | feed (us/token) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.items:
        for name, value in instances(n).items():
            fsm = fsms[name]
            text = json.dumps(value, separators=(",", ":"))
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            assert fsm.accepts_text(text)
            plain, full, feed = [], [], []
            for _ in range(args.repeat):
                plain.append(statistics.fmean(walk(fsm, ids, SMOLLM2_EOS, False)[0]))
                m, f = walk(fsm, ids, SMOLLM2_EOS, True)
                full.append(statistics.fmean(m))
                feed.append(statistics.fmean(f))
            print(f"| {name} | {n} | {len(ids)} | {statistics.median(plain) * 1e6:.1f} | "
                  f"{statistics.median(full) * 1e6:.1f} | {statistics.median(feed) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
