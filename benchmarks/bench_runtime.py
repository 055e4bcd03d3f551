"""Runtime benchmarks on the default model: sgc's engine against HF transformers, in one run.

Workloads (synthetic, generated from a seed so every machine runs the same thing):
  batch     32 independent prompts x 64 new tokens (fixed length): our engine vs HF `generate`
            batched with left padding.
  fewshot   32 multiple-choice questions sharing an ~800-token 5-shot prefix, each scored over 4
            choices: our engine's `score` vs HF doing one forward pass per choice, and vs our
            engine with the radix cache disabled.

Usage:
  .venv/bin/python benchmarks/bench_runtime.py [--workloads batch fewshot] [--hf-questions 8]
      [--no-record]

Results are printed and appended to docs/performance.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.runtime.engine import Engine  # noqa: E402
from models import resolve_model  # noqa: E402

WORDS = ("river stone light paper market garden winter engine signal forest harbor copper silver "
         "valley thunder lantern orchard meadow canyon glacier compass ember willow falcon marble "
         "velvet prism quartz cedar saffron delta summit tide beacon mosaic atlas").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# -- workloads ------------------------------------------------------------------------------------
def batch_prompts(seed: int = 0, n: int = 32) -> list[str]:
    rng = random.Random(seed)
    return [f"Write a story about {sentence(rng, rng.randint(8, 80))}." for _ in range(n)]


def fewshot_questions(seed: int = 1, n: int = 32) -> tuple[str, list[tuple[str, list[str]]]]:
    """A shared 5-shot prefix (~800 tokens) and n (question, 4 choices) pairs."""
    rng = random.Random(seed)
    shots = []
    for _ in range(5):
        choices = [sentence(rng, rng.randint(2, 5)) for _ in range(4)]
        shots.append(f"Question: {sentence(rng, 110)}?\n"
                     + "".join(f"{'ABCD'[i]}. {c}\n" for i, c in enumerate(choices))
                     + f"Answer: {rng.choice(choices)}\n\n")
    prefix = "The following are multiple choice questions about general knowledge.\n\n" + "".join(shots)
    questions = []
    for _ in range(n):
        choices = [sentence(rng, rng.randint(2, 5)) for _ in range(4)]
        q = (f"Question: {sentence(rng, 24)}?\n"
             + "".join(f"{'ABCD'[i]}. {c}\n" for i, c in enumerate(choices)) + "Answer:")
        questions.append((q, [" " + c for c in choices]))
    return prefix, questions


# -- runners ----------------------------------------------------------------------------------------
def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_batch_sgc(engine: Engine, prompts: list[str], new_tokens: int) -> float:
    params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    engine.generate(prompts[:2], {**params, "max_new_tokens": 2})  # warm-up
    outs, seconds = timed(lambda: engine.generate(prompts, params))
    assert all(o["meta_info"]["completion_tokens"] == new_tokens for o in outs)
    return seconds


def run_batch_hf(hf, tokenizer, prompts: list[str], new_tokens: int) -> float:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hf.generate(**{k: v[:2] for k, v in enc.items()}, max_new_tokens=2, do_sample=False)  # warm-up
        out, seconds = timed(lambda: hf.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                 do_sample=False, pad_token_id=tokenizer.pad_token_id))
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return seconds


def score_sgc(engine: Engine, prefix: str, questions) -> tuple[list[int], float]:
    tok = engine.tokenizer

    def run():
        handles = []
        # All questions are submitted at once; the scheduler shares the prefix.
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(len(questions)) as pool:
            for q, choices in questions:
                conts = [tok.encode(c, add_special_tokens=False) for c in choices]
                handles.append(pool.submit(engine.score, tok.encode(prefix + q), conts))
            results = [h.result() for h in handles]
        return [max(range(4), key=lambda i: sum(r["logprobs"][i])) for r in results]

    return timed(run)


def score_hf(hf, tokenizer, prefix: str, questions) -> tuple[list[int], float]:
    def run():
        picks = []
        with torch.no_grad():
            for q, choices in questions:
                prompt_ids = tokenizer(prefix + q)["input_ids"]
                totals = []
                for c in choices:
                    cont = tokenizer(c, add_special_tokens=False)["input_ids"]
                    ids = torch.tensor([prompt_ids + cont])
                    logp = torch.log_softmax(hf(ids).logits[0].float(), dim=-1)
                    totals.append(sum(logp[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(cont)))
                picks.append(max(range(4), key=lambda i: totals[i]))
        return picks

    return timed(run)


# -- report -----------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU fp32"


def record(lines: list[str], command: str, title: str = "Runtime benchmark") -> None:
    path = ROOT / "docs" / "performance.md"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text("# Performance\n\nEvery figure below was measured by the command shown with it; ratios "
                        "compare systems run in the same process on the same machine.\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    block = [f"\n## {title}, {stamp} (commit {commit})\n", f"Machine: {machine()}  ",
             f"Command: `{command}`\n", *lines, ""]
    with path.open("a") as f:
        f.write("\n".join(block) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["batch", "fewshot"], choices=["batch", "fewshot"])
    parser.add_argument("--hf-questions", type=int, default=8,
                        help="questions HF scores (it is slow; its rate is per question) (default: %(default)s)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/performance.md")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(folder)
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    rows = ["| workload | system | time (s) | throughput | ratio |", "|---|---|---|---|---|"]

    if "batch" in args.workloads:
        prompts, new = batch_prompts(), 64
        with Engine(device="cpu") as engine:
            ours = run_batch_sgc(engine, prompts, new)
        theirs = run_batch_hf(hf, hf_tok, prompts, new)
        total = len(prompts) * new
        rows += [f"| (a) 32 prompts x 64 tokens | HF generate, batched + padding | {theirs:.2f} | {total / theirs:.1f} tok/s | 1.00x |",
                 f"| (a) 32 prompts x 64 tokens | sgc engine | {ours:.2f} | {total / ours:.1f} tok/s | {theirs / ours:.2f}x |"]
        print("\n".join(rows[-2:]), flush=True)

    if "fewshot" in args.workloads:
        prefix, questions = fewshot_questions()
        num_prefix = len(hf_tok(prefix)["input_ids"])
        with Engine(device="cpu") as engine:
            engine.generate("warm-up", {"max_new_tokens": 2})
            picks, ours = score_sgc(engine, prefix, questions)
        with Engine(device="cpu", disable_radix_cache=True) as engine:
            engine.generate("warm-up", {"max_new_tokens": 2})
            picks_nc, no_cache = score_sgc(engine, prefix, questions)
        hf_q = questions[: args.hf_questions]
        hf_picks, hf_time = score_hf(hf, hf_tok, prefix, hf_q)
        assert picks[: len(hf_q)] == hf_picks == picks_nc[: len(hf_q)], "answers differ between systems"
        n = len(questions)
        hf_rate = len(hf_q) / hf_time
        rows += [
            f"| (b) {n} MC questions, {num_prefix}-token shared 5-shot prefix, 4 choices | HF one forward per choice "
            f"({len(hf_q)} questions timed) | {hf_time:.2f} | {hf_rate:.2f} q/s | 1.00x |",
            f"| (b) same | sgc engine `score` | {ours:.2f} | {n / ours:.2f} q/s | {n / ours / hf_rate:.1f}x |",
            f"| (c) same | sgc engine `score`, radix cache disabled | {no_cache:.2f} | {n / no_cache:.2f} q/s | "
            f"{n / no_cache / hf_rate:.1f}x (b/c = {no_cache / ours:.1f}x) |",
        ]
        print("\n".join(rows[-3:]), flush=True)

    print("\n".join(rows))
    if not args.no_record:
        record(rows, "python benchmarks/bench_runtime.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
