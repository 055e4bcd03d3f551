"""Constrained-decoding benchmarks: sgc's constraint compiler and engine against outlines-core,
xgrammar and outlines + HF transformers, on the default model (SmolLM2-135M-Instruct, 49,152 tokens).

Part 1, the compiler (no model weights needed):
  compile   JSON schema -> token-level tables over the full vocabulary, per schema, for sgc
            (`compile_json_schema`), outlines-core (`build_regex_from_schema` + `Index`) and xgrammar
            (a fresh `GrammarCompiler(cache_enabled=False)` per compile). Every system gets its own
            tokenizer object built from the same model folder; the vocabulary conversion each needs
            once per tokenizer is timed on its own row. sgc's compile is timed cold: its leaf-DFA
            cache and functools caches are cleared before every compile (the vocabulary trie, built
            once per vocabulary, is part of the vocabulary row). Compact JSON for every system
            (no whitespace between tokens), which is what sgc's engine uses.
  memory    size of the compiled tables: sgc `TokenFSM.nbytes`, xgrammar
            `CompiledGrammar.memory_size_bytes`; outlines-core exposes no size, its serialized
            `Index` size is shown instead.
  mask      a valid document per schema (hand-written, checked with jsonschema; for the person
            schema also the 16 outputs of the decoding workload, as generated) is walked token by
            token; each step times filling the allowed-token mask (sgc: `fill_mask` into a torch
            bool row of vocab size, EOS included; xgrammar: `fill_next_token_bitmask`; outlines-core:
            `Guide.write_mask_into` an int32 bitmask) and, separately, advancing the state
            (`next_state` / `accept_token` / `Guide.advance`). Median microseconds over all steps of
            several passes.
  load      sgc: `np.load(allow_pickle=False)` of the `np.savez` of `to_arrays()` + `from_arrays`;
            xgrammar: `CompiledGrammar.deserialize_json`; outlines-core: `Index.from_binary`
            (pickle). Median of several loads from a warm page cache.

Part 2, the JSON decoding workload: 16 chat-templated requests (one person each, the data in the
prompt), the 6-property nested person schema, up to 128 new tokens, greedy:
  (a) sgc engine, jump-forward on     (b) sgc engine, jump-forward off      (all 16 submitted at once)
  (a1), (b1) the same, one request at a time (isolates jump-forward from batching; --no-sgc-sequential)
  (c) outlines (`outlines.Generator`, outlines-core backend) + a transformers model of the same folder,
      one request at a time, and (d) the same with `Generator.batch` (HF left-padded batch).
Forward passes (sgc: `engine.stats()` deltas; HF: a forward pre-hook on the model), wall time, the
process's CPU time (all threads: with one intra-op thread it is what the work cost, however much
other processes on a shared machine stretch the wall time), tokens. Every sgc output must validate against the schema (the run fails otherwise); outlines
outputs are validated and counted. Each sgc repetition uses a fresh engine (an empty radix cache),
warmed up (schema compiled, kernels run) on an unrelated prompt; outlines builds its index once,
outside the timing, and is warmed up the same way. Systems are interleaved within each repetition;
times are medians over repetitions.

torch runs with --threads (default 1) intra-op threads for every system: on a shared 2-core machine
2 OpenMP threads made HF timings swing by 10x between identical runs.

Usage:
  .venv/bin/python benchmarks/bench_constraints.py [--repeats 3] [--threads 1] [--no-record]
  .venv/bin/python benchmarks/bench_constraints.py --quick      (development: 4 requests, 1 repeat,
                                                                 never recorded)
Results are printed and, unless --no-record or --quick, appended to docs/performance.md with the
machine and the command.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from constraint_schemas import PERSON, SCHEMAS  # noqa: E402

from compiler.constraints import TokenFSM, Vocabulary, compile_json_schema  # noqa: E402
from models import resolve_model  # noqa: E402

MODEL = "smollm2-135m-instruct"
COMPILE_SCHEMAS = ["person", "tree", "formats", "bounded_numbers", "strings", "one_of_discriminated"]

# One valid compact document per schema (checked with jsonschema at start-up).
DOCS: dict[str, object] = {
    "person": {"name": "Ada Lovelace", "age": 36, "email": "ada.lovelace@example.com", "phone": "+441234567890",
               "address": {"street": "12 St James's Square", "city": "London", "zip": "10001"},
               "tags": ["math", "poetry", "engines"]},
    "tree": {"value": 3, "children": [{"value": -2}, {"value": 5, "children": [{"value": 0, "children": []}]}]},
    "formats": {"d": "2024-02-29", "t": "13:45:30Z", "dt": "2024-02-29T13:45:30+01:00",
                "u": "123e4567-e89b-12d3-a456-426614174000", "e": "jane.doe@example.org",
                "uri": "https://example.org/a/b?c=d", "ip": "192.168.0.1"},
    "bounded_numbers": {"i": -42, "n": 6.5, "m": 98, "big": 123456790},
    "strings": {"code": "AB-123", "word": "xxabyy", "short": "hey", "free": "anything \"quoted\" \u00e9 at all"},
    "one_of_discriminated": {"kind": "square", "side": 4},
}

PEOPLE = [("Alice Martin", 34, "nurse", "Lyon"), ("Bob Chen", 51, "pilot", "Denver"),
          ("Carla Gomez", 28, "architect", "Madrid"), ("Dmitri Ivanov", 45, "chef", "Riga"),
          ("Emma Schulz", 39, "teacher", "Berlin"), ("Farid Haddad", 62, "baker", "Beirut"),
          ("Grace Okafor", 31, "engineer", "Lagos"), ("Hiro Tanaka", 27, "designer", "Osaka"),
          ("Ines Silva", 48, "lawyer", "Porto"), ("Jonas Berg", 55, "farmer", "Bergen"),
          ("Kira Novak", 23, "student", "Prague"), ("Liam Walsh", 36, "plumber", "Dublin"),
          ("Maya Patel", 42, "doctor", "Leicester"), ("Nils Larsen", 67, "fisherman", "Tromso"),
          ("Olga Petrova", 30, "pianist", "Kazan"), ("Pablo Ruiz", 44, "mechanic", "Seville")]


def person_request(i: int) -> str:
    """The user message of request i (the chat template is applied by each system)."""
    name, age, job, city = PEOPLE[i % len(PEOPLE)]
    first, last = name.lower().split()
    return (f"{name} is a {age}-year-old {job} who lives at {12 + 7 * i} Oak Street, {city}, postal code "
            f"{10000 + 1373 * i}. Contact: {first}.{last}@example.com, +1555{2000000 + 98765 * i}.\n"
            f"Write this person's record as JSON.")


def compact(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def median(xs) -> float:
    return float(statistics.median(xs))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def timed_cpu(fn):
    """(result, wall seconds, CPU seconds of this process, all threads): CPU time is what the work
    cost even when other processes on the machine stretch the wall time."""
    cpu = time.process_time()
    result, wall = timed(fn)
    return result, wall, time.process_time() - cpu


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")
    return text if len(text) <= 90 else text[:87] + "..."


# -- part 1: the compilers ------------------------------------------------------------------------
def clear_sgc_compiler_caches() -> None:
    """Forget what earlier compiles left behind, so each compile is timed cold: the JSON-schema leaf
    DFA cache and every functools cache in compiler.constraints, except the process-wide Unicode
    class table (`_unicode_shorthand`, a constant computed once per process)."""
    import compiler.constraints as pkg

    for name, module in list(sys.modules.items()):
        if not name.startswith(pkg.__name__ + ".") or module is None:
            continue
        for attr, value in vars(module).items():
            if attr == "_unicode_shorthand":
                continue
            if isinstance(value, dict) and attr.endswith("_CACHE") and attr != "_VOCAB_CACHE":
                value.clear()
            elif hasattr(value, "cache_clear") and getattr(value, "__module__", None) == name:
                value.cache_clear()


class Systems:
    """The three compilers' vocabularies, built once from the same model folder."""

    def __init__(self, folder: Path, repeats: int):
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        from compiler.constraints.token_index import vocabulary_trie

        self.folder = folder
        self.hf_tok = AutoTokenizer.from_pretrained(folder)
        self.vocab_size = len(self.hf_tok)
        self.eos = self.hf_tok.eos_token_id
        self.prep: dict[str, float | str] = {}

        # sgc: tokenizers.Tokenizer -> Vocabulary (bytes per token) -> byte trie.
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

        def sgc_vocab():
            v = Vocabulary.from_tokenizer(tok)
            vocabulary_trie(v)
            return v

        times = []
        for _ in range(repeats):
            self.sgc_vocab, t = timed(sgc_vocab)
            times.append(t)
        self.prep["sgc"] = median(times)

        # outlines-core: its Vocabulary built the way outlines' own backend builds it.
        try:
            from outlines.backends.outlines_core import OutlinesCoreBackend
            from outlines.models.transformers import TransformerTokenizer

            oc_tok = AutoTokenizer.from_pretrained(folder)
            tt = TransformerTokenizer(oc_tok)

            def oc_vocab():
                return OutlinesCoreBackend.create_outlines_core_vocabulary(
                    oc_tok.get_vocab(), oc_tok.eos_token_id, oc_tok.eos_token, tt.convert_token_to_string)

            times = []
            for _ in range(repeats):
                self.oc_vocab, t = timed(oc_vocab)
                times.append(t)
            self.prep["outlines-core"] = median(times)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            self.oc_vocab = None
            self.prep["outlines-core"] = short_error(exc)

        try:
            import xgrammar as xgr

            xgr_tok = AutoTokenizer.from_pretrained(folder)
            times = []
            for _ in range(repeats):
                self.xgr_info, t = timed(lambda: xgr.TokenizerInfo.from_huggingface(xgr_tok, vocab_size=self.vocab_size))
                times.append(t)
            self.prep["xgrammar"] = median(times)
        except Exception as exc:  # noqa: BLE001
            self.xgr_info = None
            self.prep["xgrammar"] = short_error(exc)

    # -- compile (one timed compile per call; the caller interleaves systems) -------------------
    def compile_sgc(self, schema: dict):
        clear_sgc_compiler_caches()
        gc.collect()
        return timed(lambda: compile_json_schema(schema, self.sgc_vocab))

    def compile_oc(self, schema: dict):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        text = json.dumps(schema)
        gc.collect()
        return timed(lambda: outlines_core.Index(build_regex_from_schema(text, ""), self.oc_vocab))

    def compile_xgr(self, schema: dict):
        import xgrammar as xgr

        gc.collect()

        def one():
            compiler = xgr.GrammarCompiler(self.xgr_info, cache_enabled=False)
            return compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))

        return timed(one)

    # -- per-token walks: one pass over the documents, (mask ns, advance ns) per step -------------
    def rejected(self, system: str, tok: int) -> AssertionError:
        return AssertionError(f"{system} rejects token {tok} ({self.hf_tok.decode([tok])!r}) of this valid document")

    def walk_sgc(self, fsm: TokenFSM, docs: list[list[int]]) -> tuple[list[int], list[int]]:
        mask = torch.zeros(fsm.vocab_size, dtype=torch.bool)
        fills, steps = [], []
        clock = time.perf_counter_ns
        for tokens in docs:
            state = fsm.initial_state
            for tok in tokens:
                t0 = clock()
                fsm.fill_mask(state, mask, self.eos)
                t1 = clock()
                if not mask[tok]:
                    raise self.rejected("sgc", tok)
                t2 = clock()
                state = fsm.next_state(state, tok)
                t3 = clock()
                fills.append(t1 - t0)
                steps.append(t3 - t2)
            t0 = clock()
            fsm.fill_mask(state, mask, self.eos)
            fills.append(clock() - t0)
            if not mask[self.eos]:
                raise AssertionError("sgc does not allow EOS after a complete document")
        return fills, steps

    def walk_xgr(self, grammar, docs: list[list[int]]) -> tuple[list[int], list[int]]:
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        words = bitmask.numpy()
        fills, steps = [], []
        clock = time.perf_counter_ns

        def allowed(tok: int) -> bool:
            return bool((int(words[0, tok >> 5]) >> (tok & 31)) & 1)

        for tokens in docs:
            matcher = xgr.GrammarMatcher(grammar)
            for tok in tokens:
                t0 = clock()
                matcher.fill_next_token_bitmask(bitmask)
                t1 = clock()
                if not allowed(tok):
                    raise self.rejected("xgrammar", tok)
                t2 = clock()
                ok = matcher.accept_token(tok)
                t3 = clock()
                if not ok:
                    raise self.rejected("xgrammar", tok)
                fills.append(t1 - t0)
                steps.append(t3 - t2)
            t0 = clock()
            matcher.fill_next_token_bitmask(bitmask)
            fills.append(clock() - t0)
            if not allowed(self.eos):
                raise AssertionError("xgrammar does not allow EOS after a complete document")
        return fills, steps

    def walk_oc(self, index, docs: list[list[int]]) -> tuple[list[int], list[int]]:
        import outlines_core

        words = torch.zeros((1, (self.vocab_size + 31) // 32), dtype=torch.int32)
        view = words.numpy()
        ptr, numel = words.data_ptr(), words.numel()
        fills, steps = [], []
        clock = time.perf_counter_ns

        def allowed(tok: int) -> bool:
            return bool((int(view[0, tok >> 5]) >> (tok & 31)) & 1)

        for tokens in docs:
            guide = outlines_core.Guide(index)
            for tok in tokens:
                t0 = clock()
                guide.write_mask_into(ptr, numel, 4)
                t1 = clock()
                if not allowed(tok):
                    raise self.rejected("outlines-core", tok)
                t2 = clock()
                guide.advance(tok, return_tokens=False)
                t3 = clock()
                fills.append(t1 - t0)
                steps.append(t3 - t2)
            t0 = clock()
            guide.write_mask_into(ptr, numel, 4)
            fills.append(clock() - t0)
            if not guide.is_finished():
                raise AssertionError("outlines-core is not in a final state after a complete document")
        return fills, steps


def load_sgc(fsm: TokenFSM, repeats: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fsm.npz"
        np.savez(path, **fsm.to_arrays())
        times = []
        for _ in range(repeats):
            def load():
                with np.load(path, allow_pickle=False) as arrays:
                    return TokenFSM.from_arrays(arrays)

            loaded, t = timed(load)
            times.append(t)
        size = path.stat().st_size
    state = fsm.initial_state
    assert np.array_equal(loaded.allowed_tokens(state), fsm.allowed_tokens(state)), "reloaded FSM differs"
    return median(times) * 1e3, size


def load_xgr(grammar, info, repeats: int) -> tuple[float, int]:
    import xgrammar as xgr

    text = grammar.serialize_json()
    times = [timed(lambda: xgr.CompiledGrammar.deserialize_json(text, info))[1] for _ in range(repeats)]
    return median(times) * 1e3, len(text.encode())


def load_oc(index, repeats: int) -> tuple[float, int]:
    blob = pickle.dumps(index)
    times = [timed(lambda: pickle.loads(blob))[1] for _ in range(repeats)]
    return median(times) * 1e3, len(blob)


def run_compile_part(systems: Systems, args, engine_docs: list[list[int]]) -> tuple[list[str], list[str], dict]:
    import jsonschema

    tok = systems.hf_tok
    crep, passes, lrep = (2, 2, 3) if args.quick else (args.compile_repeats, args.mask_passes, args.load_repeats)
    compile_rows = ["| schema | sgc FSM states | sgc compile (s) | outlines-core compile (s) | xgrammar compile (s) "
                    "| sgc tables | outlines-core tables | xgrammar tables |", "|---|---|---|---|---|---|---|---|"]

    def cell(v):
        return v if isinstance(v, str) else f"{v:.3f}"

    compile_rows.append(f"| vocabulary conversion (once per tokenizer) | - | {cell(systems.prep['sgc'])} | "
                        f"{cell(systems.prep['outlines-core'])} | {cell(systems.prep['xgrammar'])} | - | - | - |")
    mask_rows = ["| document | tokens | sgc mask (us/tok) | sgc advance (us/tok) | outlines-core mask | "
                 "outlines-core advance | xgrammar mask | xgrammar accept | sgc artifact load (ms, file) "
                 "| outlines-core Index load (ms) | xgrammar deserialize (ms) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    compilers = {"sgc": systems.compile_sgc,
                 "oc": systems.compile_oc if systems.oc_vocab is not None else None,
                 "xgr": systems.compile_xgr if systems.xgr_info is not None else None}
    walkers = {"sgc": systems.walk_sgc, "oc": systems.walk_oc, "xgr": systems.walk_xgr}
    results: dict = {}
    for name in COMPILE_SCHEMAS:
        schema = SCHEMAS[name]
        doc = compact(DOCS[name])
        jsonschema.validate(json.loads(doc), schema)
        doc_tokens = [tok.encode(doc, add_special_tokens=False)]
        sets = [(f"{name}: hand-written", doc_tokens)]
        if name == "person" and engine_docs:
            sets.append((f"person: the {len(engine_docs)} outputs of (b) below, as generated", engine_docs))

        # compile, systems interleaved within each repetition
        compiled: dict = {}
        times: dict[str, list[float] | str] = {k: ([] if f is not None else "not run") for k, f in compilers.items()}
        for _ in range(crep):
            for key, fn in compilers.items():
                if not isinstance(times[key], list):
                    continue
                try:
                    compiled[key], t = fn(schema)
                    times[key].append(t)
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    times[key] = short_error(exc)
                    compiled.pop(key, None)
        res = {k: (median(v) if isinstance(v, list) else v) for k, v in times.items()}
        fsm = compiled["sgc"]
        oc_index, xgr_grammar = compiled.get("oc"), compiled.get("xgr")
        res.update(states=fsm.num_states, sgc_nbytes=fsm.nbytes)
        oc_mem = f"n/a (serialized {fmt_bytes(len(pickle.dumps(oc_index)))})" if oc_index is not None else "-"
        xgr_mem = fmt_bytes(int(xgr_grammar.memory_size_bytes)) if xgr_grammar is not None else "-"
        compile_rows.append(f"| {name} | {fsm.num_states} | {cell(res['sgc'])} | {cell(res['oc'])} | "
                            f"{cell(res['xgr'])} | {fmt_bytes(fsm.nbytes)} | {oc_mem} | {xgr_mem} |")
        print(compile_rows[-1], flush=True)

        load_ms, npz_size = load_sgc(fsm, lrep)
        res["sgc_load_ms"] = load_ms
        oc_load = f"{load_oc(oc_index, lrep)[0]:.2f}" if oc_index is not None else "-"
        xgr_load = f"{load_xgr(xgr_grammar, systems.xgr_info, lrep)[0]:.2f}" if xgr_grammar is not None else "-"

        # per-token walks, systems interleaved within each pass; median over passes of each pass's median
        objects = {"sgc": fsm, "oc": oc_index, "xgr": xgr_grammar}
        for i, (label, docs) in enumerate(sets):
            per_pass: dict[str, list | str | None] = {k: ([] if objects[k] is not None else None) for k in objects}
            for _ in range(passes):
                for key, walk in walkers.items():
                    if not isinstance(per_pass[key], list):
                        continue
                    try:
                        fills, steps = walk(objects[key], docs)
                        per_pass[key].append((median(fills), median(steps)))
                    except AssertionError as exc:
                        per_pass[key] = short_error(exc)
            mask = {}
            for key, v in per_pass.items():
                mask[key] = v if not isinstance(v, list) else (median([a for a, _ in v]) / 1e3,
                                                                 median([b for _, b in v]) / 1e3)
            res.setdefault("mask", {})[label] = mask

            def pair(m):
                if m is None:
                    return "- | -"
                if isinstance(m, str):
                    return f"{m} | -"
                return f"{m[0]:.2f} | {m[1]:.2f}"

            loads = f"{load_ms:.1f} ({fmt_bytes(npz_size)}) | {oc_load} | {xgr_load}" if i == 0 else "| |"
            mask_rows.append(f"| {label} | {sum(map(len, docs))} | {pair(mask['sgc'])} | {pair(mask['oc'])} | "
                             f"{pair(mask['xgr'])} | {loads} |")
            print(mask_rows[-1], flush=True)
        results[name] = res
    return compile_rows, mask_rows, results


# -- part 2: the decoding workload -------------------------------------------------------------------
def validate(text: str) -> str | None:
    """None if `text` is a JSON document valid for the person schema, else why not."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), PERSON)
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        return short_error(exc)
    return None


def run_sgc(jump_forward: bool, messages: list[str], max_new: int, sequential: bool = False) -> dict:
    from executor.runtime.engine import Engine

    with Engine(MODEL, device="cpu", disable_jump_forward=not jump_forward, kv_cache_gb=1.0) as engine:
        params = {"max_new_tokens": max_new, "temperature": 0, "json_schema": PERSON}
        engine.generate("warm-up", {**params, "max_new_tokens": 4})  # compiles the schema, runs kernels
        prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": m}]) for m in messages]
        before = engine.stats()
        if sequential:
            outs, seconds, cpu = timed_cpu(lambda: [engine.generate(p, params) for p in prompts])
        else:
            outs, seconds, cpu = timed_cpu(lambda: engine.generate(prompts, params))
        after = engine.stats()
        eos_ids = set(engine.tokenizer.eos_token_ids)
        prompt_ids = [engine.encode(p) for p in prompts]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "forward_passes": after["num_forward_passes"] - before["num_forward_passes"],
        "jump_tokens": after["num_jump_forward_tokens"] - before["num_jump_forward_tokens"],
        "extend_steps": after["num_extend_steps"] - before["num_extend_steps"],
        "decode_steps": after["num_decode_steps"] - before["num_decode_steps"],
        "tokens": sum(o["meta_info"]["completion_tokens"] for o in outs),
        "texts": [o["text"] for o in outs],
        "output_ids": [[t for t in o["output_ids"] if t not in eos_ids] for o in outs],
        "finish": [o["meta_info"]["finish_reason"]["type"] for o in outs],
        "prompt_ids": prompt_ids,
    }


class OutlinesHF:
    """outlines' Transformers model over an HF model of the same folder, outlines-core backend."""

    def __init__(self, folder: Path):
        import outlines
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = outlines.from_transformers(self.hf, self.tok)
        self.calls = 0
        self.hf.register_forward_pre_hook(self._count)
        output_type = outlines.types.JsonSchema(PERSON, whitespace_pattern="")
        self.generator, self.build_seconds = timed(lambda: outlines.Generator(self.model, output_type))
        self.generator("warm-up", max_new_tokens=4, do_sample=False)
        self.generator.batch(["warm-up", "warm up again"], max_new_tokens=4, do_sample=False)

    def _count(self, module, args):
        self.calls += 1

    def prompt_ids(self, message: str) -> list[int]:
        text = self.model.type_adapter.format_input(message)
        return self.tok(text)["input_ids"]

    def run(self, messages: list[str], max_new: int, batched: bool) -> dict:
        calls = self.calls
        kwargs = {"max_new_tokens": max_new, "do_sample": False}
        with torch.no_grad():
            if batched:
                texts, seconds, cpu = timed_cpu(lambda: self.generator.batch(messages, **kwargs))
                tokens = None  # finished rows keep producing padding: per-row counts are not observable
            else:
                per_request = []

                def one(m):
                    start = self.calls
                    text = self.generator(m, **kwargs)
                    per_request.append(self.calls - start)
                    return text

                texts, seconds, cpu = timed_cpu(lambda: [one(m) for m in messages])
                # One pass per generated token; a pass that produced EOS adds no output token.
                tokens = sum(p if p >= max_new else p - 1 for p in per_request)
        return {"seconds": seconds, "cpu_seconds": cpu, "forward_passes": self.calls - calls, "tokens": tokens,
                "texts": list(texts)}


def run_workload(args, folder: Path) -> tuple[list[str], list[str], dict]:
    n = 4 if args.quick else args.requests
    repeats = 1 if args.quick else args.repeats
    messages = [person_request(i) for i in range(n)]
    modes = ["on", "off"] + (["seq_on", "seq_off"] if args.sgc_sequential else [])
    outlines_modes = {"both": ["sequential", "batched"], "sequential": ["sequential"], "batched": ["batched"],
                      "skip": []}[args.outlines]
    runs: dict[str, list[dict]] = {f"jf_{m}": [] for m in modes}
    runs.update({m: [] for m in outlines_modes})
    ohf, outlines_error = None, None
    if outlines_modes:
        try:
            ohf = OutlinesHF(folder)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            outlines_error = short_error(exc)
            print(f"outlines + HF could not run: {outlines_error}", flush=True)
    for rep in range(repeats):
        for mode in modes:
            r = run_sgc(mode.endswith("on"), messages, args.max_new_tokens, sequential=mode.startswith("seq"))
            runs[f"jf_{mode}"].append(r)
            print(f"[rep {rep}] sgc jump-forward {mode}: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU), "
                  f"{r['forward_passes']} passes, "
                  f"{r['tokens']} tokens", flush=True)
        if ohf is not None:
            for mode in outlines_modes:
                try:
                    r = ohf.run(messages, args.max_new_tokens, batched=mode == "batched")
                except Exception as exc:  # noqa: BLE001
                    outlines_error = short_error(exc)
                    print(f"outlines {mode} failed: {outlines_error}", flush=True)
                    ohf = None
                    break
                runs[mode].append(r)
                print(f"[rep {rep}] outlines+HF {mode}: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU), "
                      f"{r['forward_passes']} passes, "
                      f"{r['tokens']} tokens", flush=True)

    # -- validity and determinism --------------------------------------------------------------
    invalid: list[str] = []
    notes: list[str] = []
    for key in [f"jf_{m}" for m in modes]:
        for rep, r in enumerate(runs[key]):
            for i, text in enumerate(r["texts"]):
                why = validate(text)
                if why is not None:
                    invalid.append(f"sgc {key} rep {rep} request {i} ({r['finish'][i]}): {why}: {text!r}")
        first = runs[key][0]
        for r in runs[key][1:]:
            if r["texts"] != first["texts"] or r["forward_passes"] != first["forward_passes"]:
                notes.append(f"sgc {key}: repetitions differ in outputs or forward passes "
                             f"({[x['forward_passes'] for x in runs[key]]})")
                break
    on, off = runs["jf_on"][0], runs["jf_off"][0]
    same_on_off = sum(a == b for a, b in zip(on["texts"], off["texts"]))
    notes.append(f"jump-forward on: {on['jump_tokens']} of {on['tokens']} output tokens were forced text appended "
                 f"without sampling ({on['tokens'] - on['jump_tokens']} sampled, vs {off['tokens']} with it off); "
                 f"passes: {on['extend_steps']} extend + {on['decode_steps']} decode (off: {off['extend_steps']} + "
                 f"{off['decode_steps']}); a batch pass costs about the same whichever request needs it, so in one "
                 f"batch of {n} the pass count follows the slowest request, not the total")
    notes.append(f"{same_on_off}/{n} outputs identical with jump-forward on and off (jump-forward re-tokenizes "
                 f"forced text canonically, so the model sees other tokens and later greedy choices can differ)")
    if ohf is not None or any(runs.get(m) for m in outlines_modes):
        ref = ohf.prompt_ids if ohf is not None else None
        if ref is not None:
            same_prompts = sum(ref(m) == ids for m, ids in zip(messages, off["prompt_ids"]))
            notes.append(f"{same_prompts}/{n} prompts tokenize identically in sgc and outlines+HF")
    if runs.get("jf_seq_off"):
        same = sum(a == b for a, b in zip(runs["jf_seq_off"][0]["texts"], off["texts"]))
        notes.append(f"sgc one request at a time vs batched, jump-forward off: {same}/{n} outputs identical")
    for mode in outlines_modes:
        if runs.get(mode):
            texts = runs[mode][0]["texts"]
            same = sum(a == b for a, b in zip(texts, off["texts"]))
            notes.append(f"outlines+HF {mode}: {same}/{n} outputs identical to sgc with jump-forward off")
            for i, text in enumerate(texts):
                why = validate(text)
                if why is not None:
                    mark = "same as sgc (b)" if text == off["texts"][i] else "differs from sgc (b)"
                    notes.append(f"outlines+HF {mode} request {i} is invalid ({mark}): {why}; output "
                                 f"`{text[:100].replace('`', '')}{'...' if len(text) > 100 else ''}`")

    # -- table ----------------------------------------------------------------------------------
    rows = [f"| system | requests in flight | forward passes | wall s (median of {repeats}) | CPU s (median) "
            "| wall ms / pass | tokens | tokens / wall s | valid outputs |", "|---|---|---|---|---|---|---|---|---|"]
    summary: dict = {"n": n, "repeats": repeats}

    def add(label: str, batching: str, key: str, token_note: str = ""):
        rs = runs.get(key) or []
        if not rs:
            return None
        secs = median([r["seconds"] for r in rs])
        cpu = median([r["cpu_seconds"] for r in rs])
        passes = median([r["forward_passes"] for r in rs])
        toks = rs[0]["tokens"]
        if toks is None:  # outlines batched: the same texts as one at a time give the same tokens
            seq = runs.get("sequential") or []
            toks = seq[0]["tokens"] if seq and seq[0]["texts"] == rs[0]["texts"] else None
            if toks is None:
                toks = sum(len(ohf_tok.encode(t, add_special_tokens=False)) for t in rs[0]["texts"])
                token_note = "~"
        valid = sum(validate(t) is None for t in rs[0]["texts"])
        rows.append(f"| {label} | {batching} | {passes:.0f} | {secs:.2f} | {cpu:.2f} | {1e3 * secs / passes:.0f} "
                    f"| {token_note}{toks} | {toks / secs:.1f} | {valid}/{n} |")
        summary[key] = {"seconds": secs, "cpu": cpu, "passes": passes, "tokens": toks, "valid": valid,
                        "all_seconds": [r["seconds"] for r in rs], "all_cpu": [r["cpu_seconds"] for r in rs]}
        return summary[key]

    ohf_tok = ohf.tok if ohf is not None else None
    a = add("(a) sgc engine, jump-forward on", f"{n} (one batch)", "jf_on")
    b = add("(b) sgc engine, jump-forward off", f"{n} (one batch)", "jf_off")
    a1 = add("(a1) sgc engine, jump-forward on", "1 (one request at a time)", "jf_seq_on")
    b1 = add("(b1) sgc engine, jump-forward off", "1 (one request at a time)", "jf_seq_off")
    c = add("(c) outlines + HF transformers", "1 (one request at a time)", "sequential")
    d = add("(d) outlines + HF transformers, `Generator.batch`", f"{n} (left-padded HF batch)", "batched")
    if outlines_error is not None:
        rows.append(f"| outlines + HF transformers | - | - | - | - | - | could not run: {outlines_error} |")
    ratios = []

    def speedup(slow: dict, fast: dict) -> tuple[float, float]:
        return slow["seconds"] / fast["seconds"], slow["cpu"] / fast["cpu"]

    if a and b:
        red = 1 - a["passes"] / b["passes"]
        summary["jf_pass_reduction"], summary["jf_speedup"] = red, speedup(b, a)
        ratios.append(f"jump-forward, one batch (b -> a): {red:.0%} fewer forward passes (target >= 30%); speedup "
                      f"{summary['jf_speedup'][0]:.2f}x wall, {summary['jf_speedup'][1]:.2f}x CPU (target >= 1.5x)")
    if a1 and b1:
        red = 1 - a1["passes"] / b1["passes"]
        summary["jf_seq_pass_reduction"], summary["jf_seq_speedup"] = red, speedup(b1, a1)
        ratios.append(f"jump-forward, one request at a time (b1 -> a1): {red:.0%} fewer forward passes; speedup "
                      f"{summary['jf_seq_speedup'][0]:.2f}x wall, {summary['jf_seq_speedup'][1]:.2f}x CPU")
    if b1 and c:
        w, u = speedup(c, b1)
        ratios.append(f"same work, one request at a time, no jump-forward: sgc (b1) vs outlines+HF (c): {w:.2f}x wall, "
                      f"{u:.2f}x CPU (the engine's per-pass cost against HF's)")
    if a and c:
        summary["vs_outlines_seq"] = speedup(c, a)
        ratios.append(f"sgc (a) vs outlines+HF one at a time (c): {summary['vs_outlines_seq'][0]:.2f}x wall, "
                      f"{summary['vs_outlines_seq'][1]:.2f}x CPU (target >= 3x)")
    if a and d:
        summary["vs_outlines_batch"] = speedup(d, a)
        ratios.append(f"sgc (a) vs outlines+HF batched (d): {summary['vs_outlines_batch'][0]:.2f}x wall, "
                      f"{summary['vs_outlines_batch'][1]:.2f}x CPU")
    if ohf is not None:
        notes.append(f"outlines Generator construction (its index compile, outside the timing): {ohf.build_seconds:.2f} s")
    notes.append("HF forward passes are counted by a forward pre-hook on the model; outlines' tokens are its "
                 "generated tokens (one pass each, less the pass that produced EOS)")
    summary["invalid"] = invalid
    summary["engine_docs"] = runs["jf_off"][0]["output_ids"]
    return rows, ratios + notes, summary


# -- report -------------------------------------------------------------------------------------------
def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores (shared), torch {torch.__version__} with {threads} intra-op thread(s), "
            f"CPU fp32")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("outlines", "outlines_core", "xgrammar", "transformers"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} absent")
    return ", ".join(out)


def record(lines: list[str], command: str, threads: int) -> None:
    path = ROOT / "docs" / "performance.md"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text("# Performance\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    block = [f"\n## Constrained decoding benchmark, {stamp} (commit {commit}, uncommitted changes possible)\n",
             f"Machine: {machine(threads)}  ", f"Baselines: {versions()}  ", f"Command: `{command}`\n", *lines, ""]
    with path.open("a") as f:
        f.write("\n".join(block) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["compile", "workload"], choices=["compile", "workload"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="workload repetitions (default: %(default)s)")
    parser.add_argument("--compile-repeats", type=int, default=5)
    parser.add_argument("--mask-passes", type=int, default=5)
    parser.add_argument("--load-repeats", type=int, default=9)
    parser.add_argument("--outlines", default="both", choices=["both", "sequential", "batched", "skip"],
                        help="which outlines + HF baselines to run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--no-sgc-sequential", dest="sgc_sequential", action="store_false",
                        help="skip sgc one request at a time (rows a1, b1)")
    parser.add_argument("--quick", action="store_true", help="development run: small, never recorded")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/performance.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = resolve_model(MODEL)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()

    workload_rows, workload_notes, summary = [], [], {}
    if "workload" in args.parts:
        workload_rows, workload_notes, summary = run_workload(args, folder)
    compile_rows, mask_rows, compiled = [], [], {}
    if "compile" in args.parts:
        systems = Systems(folder, 2 if args.quick else 3)
        compile_rows, mask_rows, compiled = run_compile_part(systems, args, summary.get("engine_docs", []))

    lines: list[str] = []
    if compile_rows:
        person = compiled["person"]
        person_masks = person["mask"]
        sgc_mask = max(m["sgc"][0] for m in person_masks.values())
        lines += ["Compile: JSON schema -> token tables over the 49,152-token vocabulary (compact JSON; seconds, "
                  "median; sgc cold, caches cleared; xgrammar a fresh compiler per compile, its default "
                  "max_threads=8 on this machine's cores; sgc and outlines-core single-threaded).\n",
                  *compile_rows, "",
                  "Per token, walking valid documents (median microseconds over every step; sgc fills a torch bool "
                  "row of vocab size, the others an int32 bitmask) and loading compiled tables:\n", *mask_rows, ""]
        targets = [
            ("sgc compile, person schema", "<= 0.25 s", f"{person['sgc']:.3f} s", person["sgc"] <= 0.25),
            ("sgc mask per token, person schema (worst of the rows above)", "<= 20 us", f"{sgc_mask:.2f} us", sgc_mask <= 20),
            ("sgc artifact load, person schema", "<= 50 ms", f"{person['sgc_load_ms']:.1f} ms", person["sgc_load_ms"] <= 50),
        ]
    else:
        targets = []
    if workload_rows:
        lines += [f"JSON decoding workload: {summary['n']} chat-templated requests, the person schema, up to "
                  f"{args.max_new_tokens} new tokens, greedy:\n", *workload_rows, "",
                  *[f"- {x}" for x in workload_notes], ""]

        def both(x: tuple[float, float], goal: float) -> tuple[str, str]:
            return (f"{x[0]:.2f}x wall, {x[1]:.2f}x CPU",
                    f"wall: {'yes' if x[0] >= goal else 'no'}, CPU: {'yes' if x[1] >= goal else 'no'}")

        if "jf_pass_reduction" in summary:
            targets.append(("jump-forward, one batch (b -> a): fewer forward passes", ">= 30%",
                            f"{summary['jf_pass_reduction']:.0%}", summary["jf_pass_reduction"] >= 0.30))
            targets.append(("jump-forward, one batch (b -> a): speedup", ">= 1.5x", *both(summary["jf_speedup"], 1.5)))
        if "jf_seq_pass_reduction" in summary:
            targets.append(("jump-forward, one request at a time (b1 -> a1): fewer forward passes", ">= 30%",
                            f"{summary['jf_seq_pass_reduction']:.0%}", summary["jf_seq_pass_reduction"] >= 0.30))
            targets.append(("jump-forward, one request at a time (b1 -> a1): speedup", ">= 1.5x",
                            *both(summary["jf_seq_speedup"], 1.5)))
        if "vs_outlines_seq" in summary:
            targets.append(("sgc (a) vs outlines+HF one request at a time (c)", ">= 3x",
                            *both(summary["vs_outlines_seq"], 3)))
        if "vs_outlines_batch" in summary:
            targets.append(("sgc (a) vs outlines+HF batched (d)", ">= 3x", *both(summary["vs_outlines_batch"], 3)))
    if targets:
        lines += ["Targets:\n", "| target | goal | measured | met |", "|---|---|---|---|",
                  *[f"| {name} | {goal} | {value} | {ok if isinstance(ok, str) else ('yes' if ok else 'no')} |"
                    for name, goal, value, ok in targets], ""]
    lines.append(f"Run took {time.perf_counter() - started:.0f} s; 1-minute load average {load_start:.1f} at the "
                 f"start, {os.getloadavg()[0]:.1f} at the end (other work shares this machine).")
    print("\n" + "\n".join(lines))

    invalid = summary.get("invalid", [])
    if invalid:
        print("\nINVALID sgc outputs (run not recorded):\n" + "\n".join(invalid), file=sys.stderr)
        raise SystemExit(1)
    if args.quick or args.no_record:
        return
    record(lines, " ".join(["python benchmarks/bench_constraints.py", *sys.argv[1:]]), args.threads)


if __name__ == "__main__":
    main()
