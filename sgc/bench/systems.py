"""The systems a workload runs on: sgc (all optimizations, or one switched off) and HF transformers.

sgc systems compile the workload's program on a fresh `sgc.Runtime` per repetition (an empty radix
cache every time), warm up on an input of another seed (compiling, running the kernels, never
warming the cache for the timed inputs), then time `run_batch` (or, for per-instance bound
arguments, every bound program run concurrently).

HF naive runs the same program with sgc's eager interpreter on `HFBackend`: every `gen` is one
`model.generate` on the whole prompt, every select one forward per choice, one program after another,
no KV reused. That is the "naive pipeline" the paper compares against; because it is the same
program, the prompts are the same text. HF batched is a hand-written batch where a workload allows one.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
from pathlib import Path
from typing import Any

import torch

from sgc.bench.metrics import PeakMemory, RunMetrics, timer
from sgc.bench.workloads import SYSTEMS, Size, System, Workload, applicable, load_program

__all__ = ["SYSTEMS", "HFBackend", "HFModel", "System", "applicable", "run_hf_batched", "run_hf_naive",
           "run_sgc"]

WARMUP_SEED_OFFSET = 7919  # warm-up inputs come from another seed: they share nothing with the timed ones


def _run_options(workload: Workload, size: Size) -> dict[str, Any]:
    return {"temperature": 0, "max_new_tokens": size.gen_tokens, "ignore_eos": workload.ignore_eos}


def _check(states: list[Any]) -> None:
    for st in states:
        if st.error() is not None:
            raise st.error()


def run_sgc(workload: Workload, system: System, inputs: list[dict[str, Any]], size: Size, *, model: str,
            device: str, seed: int) -> RunMetrics:
    """One timed run of an sgc system on a fresh runtime (warm-up outside the timed region)."""
    import sgc

    fn = load_program(workload)
    warm = workload.make_inputs(random.Random(seed + WARMUP_SEED_OFFSET), Size(1, size.gen_tokens, 1, size.scale))
    options = _run_options(workload, size)
    with sgc.Runtime(model, device=device, disable_passes=system.disable_passes,
                     **dict(system.engine_kwargs)) as runtime:
        if workload.bind:
            run = _bound_runner(fn, runtime, workload.bind, inputs, warm[0], options)
        else:
            fn.run_batch(warm, backend=runtime, **options)
            run = lambda: fn.run_batch(inputs, backend=runtime, **options)  # noqa: E731
        engine = runtime.engine
        before = engine.stats()
        with PeakMemory(device if device != "auto" else str(engine.device)) as peak:
            start = timer()
            states = run()
            wall = timer() - start
        _check(states)
        after = engine.stats()
    delta = {key: after[key] - before[key] for key in before if isinstance(before[key], int)}
    return RunMetrics(wall_s=wall, num_programs=len(inputs), gen_tokens=delta["num_generated_tokens"],
                      prompt_tokens=delta["num_prompt_tokens"], cached_tokens=delta["num_cached_prompt_tokens"],
                      forward_passes=delta["num_forward_passes"], peak_mem_bytes=peak.bytes,
                      jump_forward_tokens=delta["num_jump_forward_tokens"])


def _bound_runner(fn: Any, runtime: Any, bind: tuple[str, ...], inputs: list[dict[str, Any]],
                  warm: dict[str, Any], options: dict[str, Any]) -> Any:
    """Programs whose `bind` arguments are bound per instance: compiled up front, run concurrently."""
    def split(row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        program = fn.bind(**{k: row[k] for k in bind})
        runtime.compile(program)  # outside the timed region (cached per bound arguments)
        return program, {k: v for k, v in row.items() if k not in bind}

    program, args = split(warm)
    program.run(backend=runtime, **args, **options)
    jobs = [split(row) for row in inputs]

    def run() -> list[Any]:
        with cf.ThreadPoolExecutor(max(1, min(len(jobs), 64))) as pool:
            futures = [pool.submit(p.run, backend=runtime, **a, **options) for p, a in jobs]
            return [f.result() for f in futures]

    return run


# -- HF transformers ----------------------------------------------------------------------------------


class HFModel:
    """An HF transformers model of the same folder (fp32 on CPU), with a forward-pass counter."""

    def __init__(self, folder: Path, device: str) -> None:
        from transformers import AutoModelForCausalLM

        from executor.runtime.tokenizer import Tokenizer

        self.folder = folder
        self.device = torch.device("cuda" if device.startswith("cuda") or (
            device == "auto" and torch.cuda.is_available()) else "cpu")
        dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        self.tokenizer = Tokenizer(folder)
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.tokenizer.eos_token_ids) if self.tokenizer.eos_token_ids else 0
        self.num_forward_passes = 0
        self.model.register_forward_pre_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.num_forward_passes += 1

    def new_counters(self) -> dict[str, int]:
        return {"prompt_tokens": 0, "gen_tokens": 0}


class _StopOnText:
    """Stop a one-row generate when the decoded new text contains a stop string (then trimmed)."""

    def __init__(self, tokenizer: Any, start: int, stops: list[str]) -> None:
        self.tokenizer, self.start, self.stops = tokenizer, start, stops

    def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.start:].tolist())
        return any(s in text for s in self.stops)


class _FSMLogits:
    """Constrained decoding for HF generate with sgc's token FSM (masks only: no jump-forward),
    through the runtime's `ConstraintCursor`, so decode-time checks (uniqueItems) apply too."""

    def __init__(self, fsm: Any, start: int, eos_ids: set[int]) -> None:
        from executor.runtime.constrained import ConstraintCursor

        eos = frozenset({min(eos_ids)}) if eos_ids else frozenset()
        self.cursor = ConstraintCursor(fsm, eos)
        self.seen = start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for tok in input_ids[0, self.seen:].tolist():
            self.cursor.advance(tok)
        self.seen = input_ids.shape[1]
        mask = torch.zeros(scores.shape[-1], dtype=torch.bool)
        self.cursor.fill_mask(mask)
        return scores.masked_fill(~mask.to(scores.device), float("-inf"))


class HFBackend:
    """An Engine-like backend over HF transformers for the eager interpreter (`generate`, `score`)."""

    def __init__(self, hf: HFModel) -> None:
        from executor.runtime.constrained import ConstraintCache

        self.hf = hf
        self.tokenizer = hf.tokenizer
        self.model_folder = hf.folder
        self.constraints = ConstraintCache(hf.tokenizer)
        self.counters = hf.new_counters()

    @torch.no_grad()
    def generate(self, prompt: Any = None, sampling_params: dict | None = None, input_ids: Any = None,
                 **_: Any) -> dict:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        p = dict(sampling_params or {})
        ids = list(input_ids) if input_ids is not None else self.tokenizer.encode(prompt)
        n = len(ids)
        max_new = int(p.get("max_new_tokens", 128))
        eos = set() if p.get("ignore_eos") else set(self.tokenizer.eos_token_ids)
        eos |= set(p.get("stop_token_ids") or ())
        stops = [p["stop"]] if isinstance(p.get("stop"), str) else list(p.get("stop") or [])
        processors = LogitsProcessorList()
        fsm = None
        if p.get("regex") is not None or p.get("json_schema") is not None:
            fsm = self.constraints.get(p.get("regex"), p.get("json_schema"))
            processors.append(_FSMLogits(fsm, n, set(self.tokenizer.eos_token_ids)))
            eos |= set(self.tokenizer.eos_token_ids)
        criteria = StoppingCriteriaList([_StopOnText(self.tokenizer, n, stops)] if stops else [])
        greedy = not p.get("temperature")
        out = self.hf.model.generate(
            torch.tensor([ids], device=self.hf.device), attention_mask=torch.ones(1, n, dtype=torch.long,
                                                                                  device=self.hf.device),
            max_new_tokens=max_new, do_sample=not greedy, temperature=None if greedy else p["temperature"],
            top_p=None if greedy else p.get("top_p", 1.0), top_k=None,
            eos_token_id=sorted(eos) if eos else None, pad_token_id=self.hf.pad_id,
            logits_processor=processors, stopping_criteria=criteria)
        new = out[0, n:].tolist()
        finish = {"type": "length", "length": len(new)}
        if new and new[-1] in eos:
            finish = {"type": "stop", "matched": new[-1]}
            new = new[:-1]
        text = self.tokenizer.decode(new)
        for s in stops:
            if s in text:
                text, finish = text[: text.index(s)], {"type": "stop", "matched": s}
        self.counters["prompt_tokens"] += n
        self.counters["gen_tokens"] += len(out[0]) - n
        return {"text": text, "output_ids": new,
                "meta_info": {"prompt_tokens": n, "completion_tokens": len(new), "cached_tokens": 0,
                              "finish_reason": finish}}

    @torch.no_grad()
    def score(self, prompt: Any, continuations: list[list[int]]) -> dict:
        """One forward per continuation on the whole prompt (no KV shared between them)."""
        ids = list(prompt) if not isinstance(prompt, str) else self.tokenizer.encode(prompt)
        out = []
        for cont in continuations:
            full = torch.tensor([ids + list(cont)], device=self.hf.device)
            logp = torch.log_softmax(self.hf.model(full).logits[0].float(), dim=-1)
            out.append([logp[len(ids) + j - 1, t].item() for j, t in enumerate(cont)])
            self.counters["prompt_tokens"] += len(ids) + len(cont)
        return {"logprobs": out, "meta_info": {"prompt_tokens": len(ids), "cached_tokens": 0}}


def run_hf_naive(workload: Workload, hf: HFModel, inputs: list[dict[str, Any]], size: Size, *, seed: int,
                 device: str) -> RunMetrics:
    """The program on HFBackend, one instance after another, over the first `num_hf_programs` inputs."""
    fn = load_program(workload)
    backend = HFBackend(hf)
    options = _run_options(workload, size)
    warm = workload.make_inputs(random.Random(seed + WARMUP_SEED_OFFSET), Size(1, size.gen_tokens, 1, size.scale))
    fn.run(**warm[0], backend=backend, eager=True, **options)
    timed_inputs = inputs[: max(1, size.num_hf_programs)]
    backend.counters = hf.new_counters()
    passes = hf.num_forward_passes
    with PeakMemory(device) as peak:
        start = timer()
        for row in timed_inputs:
            fn.run(**row, backend=backend, eager=True, **options)
        wall = timer() - start
    return RunMetrics(wall_s=wall, num_programs=len(timed_inputs), gen_tokens=backend.counters["gen_tokens"],
                      prompt_tokens=backend.counters["prompt_tokens"], cached_tokens=0,
                      forward_passes=hf.num_forward_passes - passes, peak_mem_bytes=peak.bytes)


# -- HF batched: hand-written batches per workload kind --------------------------------------------------


def _fork_prompts(workload: Workload, row: dict[str, Any]) -> list[str]:
    """The branch prompts of one fork fan-out program, as the program builds them (its ASPECTS)."""
    aspects = load_program(workload).func.__globals__["ASPECTS"]
    base = "Read the following essay.\n\n" + row["essay"] + "\n\n"
    return [base + f"Comment on the {a} of the essay in one sentence:" for a in aspects]


@torch.no_grad()
def _batched_generate(hf: HFModel, prompts: list[str], max_new: int, ignore_eos: bool) -> tuple[int, int]:
    """One left-padded `generate` over `prompts`; returns (prompt tokens, generated tokens)."""
    encoded = [hf.tokenizer.encode(p) for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[hf.pad_id] * (width - len(e)) + e for e in encoded], device=hf.device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=hf.device)
    out = hf.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                            min_new_tokens=max_new if ignore_eos else None, do_sample=False,
                            pad_token_id=hf.pad_id, temperature=None, top_p=None, top_k=None)
    return sum(len(e) for e in encoded), (out.shape[1] - width) * len(prompts)


@torch.no_grad()
def _batched_score(hf: HFModel, prompt: str, choices: list[str]) -> int:
    """The choices of one question as one right-padded forward; returns the prompt tokens."""
    ids = hf.tokenizer.encode(prompt)
    rows = [ids + hf.tokenizer.encode(c, add_special_tokens=False) for c in choices]
    width = max(len(r) for r in rows)
    batch = torch.tensor([r + [hf.pad_id] * (width - len(r)) for r in rows], device=hf.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=hf.device)
    torch.log_softmax(hf.model(input_ids=batch, attention_mask=mask).logits.float(), dim=-1)
    return sum(len(r) for r in rows)


def _score_item(workload: Workload, row: dict[str, Any]) -> tuple[str, list[str]]:
    if workload.name == "hellaswag":
        return row["prefix"] + row["context"], list(row["endings"])
    return row["prefix"] + row["question"] + "\nAnswer:", [" A", " B", " C", " D"]


def run_hf_batched(workload: Workload, hf: HFModel, inputs: list[dict[str, Any]], size: Size, *, seed: int,
                   device: str) -> RunMetrics:
    """HF with batching where the workload allows: all prompts in one generate ("generate"), each
    program's branches in one generate ("fork"), each question's choices in one forward ("score")."""
    kind = workload.hf_batched
    warm = workload.make_inputs(random.Random(seed + WARMUP_SEED_OFFSET), Size(1, size.gen_tokens, 1, size.scale))

    def run(rows: list[dict[str, Any]]) -> tuple[int, int]:
        prompt_tokens = gen_tokens = 0
        if kind == "generate":
            prompt_tokens, gen_tokens = _batched_generate(hf, [r["prompt"] for r in rows], size.gen_tokens,
                                                          workload.ignore_eos)
        elif kind == "fork":
            for r in rows:
                p, g = _batched_generate(hf, _fork_prompts(workload, r), size.gen_tokens, workload.ignore_eos)
                prompt_tokens, gen_tokens = prompt_tokens + p, gen_tokens + g
        elif kind == "score":
            for r in rows:
                prompt_tokens += _batched_score(hf, *_score_item(workload, r))
        else:
            raise ValueError(f"workload {workload.name}: no batched HF form {kind!r}")
        return prompt_tokens, gen_tokens

    run(warm)
    # One batch over every program ("generate") is timed whole; per-program batches on a subset, as naive HF.
    timed_inputs = inputs if kind == "generate" else inputs[: max(1, size.num_hf_programs)]
    passes = hf.num_forward_passes
    with PeakMemory(device) as peak:
        start = timer()
        prompt_tokens, gen_tokens = run(timed_inputs)
        wall = timer() - start
    return RunMetrics(wall_s=wall, num_programs=len(timed_inputs), gen_tokens=gen_tokens, prompt_tokens=prompt_tokens,
                      cached_tokens=0, forward_passes=hf.num_forward_passes - passes, peak_mem_bytes=peak.bytes)
