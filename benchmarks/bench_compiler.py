"""Compiler benchmarks on the default model: sgc programs compiled (all passes) vs -O0 vs naive HF.

Workloads (synthetic, generated from a seed so every machine runs the same thing; greedy):
  fanout    `benchmarks/programs/fork_fanout.py`: 8 essays of ~400 tokens; each program appends its
            essay, forks 4 branches, each appends an aspect instruction and gens 24 tokens (fixed
            length, ignore_eos), joins. sgc compiled (`run_batch`, opt level 1) vs sgc -O0 vs HF
            transformers with one `generate` per gen call (32 calls on each branch's full text).
  select    `benchmarks/programs/fewshot_select.py`: the 32 questions of bench_runtime's
            `fewshot_questions()` (~800-token shared 5-shot prefix, 4 choices each), one
            `sgc.select` per program. sgc compiled (prefix and choices bound: one compiled program per
            question, the 32 run concurrently), sgc -O0 (same), sgc `run_batch` with `choices` as an
            argument (a graph break: runs on the host), vs HF with one forward per choice (timed on a
            subset; rates are per question). Answers are compared across systems.

Usage:
  .venv/bin/python benchmarks/bench_compiler.py [--workloads fanout select] [--hf-questions 8]
      [--hf-essays 8] [--no-record]

Each sgc system runs on a fresh `sgc.Runtime` (no radix-cache carry-over between systems); the
warm-up (which compiles) is outside the timed region.

Results are printed and appended to docs/performance.md (with bench_runtime's `record`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runtime import fewshot_questions, record, sentence, timed  # noqa: E402

import sgc  # noqa: E402
from benchmarks.programs.fewshot_select import fewshot_select  # noqa: E402
from benchmarks.programs.fork_fanout import ASPECTS, TOKENS, fork_fanout  # noqa: E402
from models import resolve_model  # noqa: E402

MODEL = "smollm2-135m-instruct"


def essays(seed: int = 2, n: int = 8, tokens: int = 400, tokenizer=None) -> list[str]:
    """n essays of ~`tokens` tokens each (sentences of random words until the length is reached)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts: list[str] = []
        while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
            parts.append(sentence(rng, rng.randint(8, 16)).capitalize() + ".")
        out.append(" ".join(parts))
    return out


# -- fork fan-out ---------------------------------------------------------------------------------
def fanout_sgc(runtime, texts: list[str], opt_level: int):
    kw = {"backend": runtime, "temperature": 0, "opt_level": opt_level}
    fork_fanout.run_batch([{"essay": texts[0]}], **kw)  # warm-up + compile (cached per opt level)
    states, seconds = timed(lambda: fork_fanout.run_batch([{"essay": t} for t in texts], **kw))
    for st in states:
        if st.error() is not None:
            raise st.error()
    return [list(st["comment"]) for st in states], seconds


def fanout_hf(hf, tok, texts: list[str]):
    def run():
        outs = []
        with torch.no_grad():
            for essay in texts:
                base = "Read the following essay.\n\n" + essay + "\n\n"
                comments = []
                for aspect in ASPECTS:
                    enc = tok(base + f"Comment on the {aspect} of the essay in one sentence:", return_tensors="pt")
                    out = hf.generate(**enc, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
                    assert out.shape[1] - enc["input_ids"].shape[1] == TOKENS
                    comments.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
                outs.append(comments)
        return outs

    with torch.no_grad():
        hf.generate(**tok("warm-up", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    return timed(run)


# -- few-shot select ------------------------------------------------------------------------------
def select_sgc_bound(runtime, prefix: str, questions, opt_level: int):
    """One compiled program per question (prefix + choices bound), the 32 submitted concurrently."""
    programs = [fewshot_select.bind(prefix=prefix, choices=choices) for _, choices in questions]
    for p in programs:  # compile outside the timed region (cached per bound arguments)
        runtime.compile(p, opt_level)
    programs[0].run(question=questions[0][0], backend=runtime, temperature=0, opt_level=opt_level)  # warm-up

    def run():
        with cf.ThreadPoolExecutor(len(questions)) as pool:
            futs = [pool.submit(p.run, question=q, backend=runtime, temperature=0, opt_level=opt_level)
                    for p, (q, _) in zip(programs, questions)]
            return [f.result() for f in futs]

    states, seconds = timed(run)
    return [choices.index(st["answer"]) for st, (_, choices) in zip(states, questions)], seconds


def select_sgc_batch(runtime, prefix: str, questions):
    """`run_batch` with the choices as an argument (a graph break: the host runs the function)."""
    fn = fewshot_select.bind(prefix=prefix)
    kw = {"backend": runtime, "temperature": 0}
    fn.run_batch([{"question": questions[0][0], "choices": questions[0][1]}], **kw)  # warm-up
    states, seconds = timed(lambda: fn.run_batch([{"question": q, "choices": c} for q, c in questions], **kw))
    for st in states:
        if st.error() is not None:
            raise st.error()
    return [c.index(st["answer"]) for st, (_, c) in zip(states, questions)], seconds


def select_hf(hf, tok, prefix: str, questions):
    """One forward per choice; mean token logprob (sgc.select's default, token_length_normalized)."""
    def run():
        picks = []
        with torch.no_grad():
            for q, choices in questions:
                prompt_ids = tok(prefix + q)["input_ids"]
                means = []
                for c in choices:
                    cont = tok(c, add_special_tokens=False)["input_ids"]
                    logp = torch.log_softmax(hf(torch.tensor([prompt_ids + cont])).logits[0].float(), dim=-1)
                    means.append(sum(logp[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(cont)) / len(cont))
                picks.append(max(range(len(choices)), key=lambda i: means[i]))
        return picks

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["fanout", "select"], choices=["fanout", "select"])
    parser.add_argument("--hf-questions", type=int, default=8,
                        help="questions HF scores (it is slow; its rate is per question) (default: %(default)s)")
    parser.add_argument("--hf-essays", type=int, default=8,
                        help="essays HF runs in the fan-out (its rate is per program) (default: %(default)s)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/performance.md")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [
            "| workload | system | time (s) | throughput | ratio vs HF | ratio vs -O0 |", "|---|---|---|---|---|---|"]
    notes: list[str] = []

    if "fanout" in args.workloads:
        texts = essays(tokenizer=tok)
        ntok = sum(len(tok(t)["input_ids"]) for t in texts) // len(texts)
        n, gen_tokens = len(texts), len(texts) * len(ASPECTS) * TOKENS
        # A fresh runtime per system: a shared one would hand the second system a warm radix cache.
        with sgc.Runtime(MODEL, device="cpu") as rt:
            c_out, c_time = fanout_sgc(rt, texts, 1)
        with sgc.Runtime(MODEL, device="cpu") as rt:
            o_out, o_time = fanout_sgc(rt, texts, 0)
        h_texts = texts[: args.hf_essays]
        h_out, h_time = fanout_hf(hf, tok, h_texts)
        h_rate = len(h_texts) / h_time
        label = f"(a) fork fan-out: {n} essays (~{ntok} tok) x {len(ASPECTS)} branches x {TOKENS} tok"
        rows += [f"| {label} | HF generate, one call per gen ({len(h_texts)} essays timed, "
                 f"{len(h_texts) * len(ASPECTS)} calls) | {h_time:.2f} | "
                 f"{h_rate:.3f} prog/s, {h_rate * len(ASPECTS) * TOKENS:.1f} tok/s | 1.00x | |",
                 f"| (a) same | sgc -O0 (`run_batch`) | {o_time:.2f} | {n / o_time:.2f} prog/s, "
                 f"{gen_tokens / o_time:.1f} tok/s | {n / o_time / h_rate:.2f}x | 1.00x |",
                 f"| (a) same | sgc compiled (`run_batch`, all passes) | {c_time:.2f} | {n / c_time:.2f} prog/s, "
                 f"{gen_tokens / c_time:.1f} tok/s | {n / c_time / h_rate:.2f}x | {o_time / c_time:.2f}x |"]
        same_co = sum(a == b for x, y in zip(c_out, o_out) for a, b in zip(x, y))
        same_ch = sum(a == b for x, y in zip(c_out, h_out) for a, b in zip(x, y))
        notes.append(f"(a) identical comments: compiled vs -O0 {same_co}/{gen_tokens // TOKENS}, "
                     f"compiled vs HF {same_ch}/{len(h_texts) * len(ASPECTS)}.")
        print("\n".join(rows[-3:]), "\n" + notes[-1], flush=True)

    if "select" in args.workloads:
        prefix, questions = fewshot_questions()
        num_prefix = len(tok(prefix)["input_ids"])
        n = len(questions)
        with sgc.Runtime(MODEL, device="cpu") as rt:
            c_picks, c_time = select_sgc_bound(rt, prefix, questions, 1)
        with sgc.Runtime(MODEL, device="cpu") as rt:
            o_picks, o_time = select_sgc_bound(rt, prefix, questions, 0)
        with sgc.Runtime(MODEL, device="cpu") as rt:
            b_picks, b_time = select_sgc_batch(rt, prefix, questions)
        hf_q = questions[: args.hf_questions]
        h_picks, h_time = select_hf(hf, tok, prefix, hf_q)
        hf_rate = len(hf_q) / h_time
        label = f"(b) few-shot select: {n} questions, {num_prefix}-token shared 5-shot prefix, 4 choices"
        rows += [f"| {label} | HF one forward per choice ({len(hf_q)} questions timed) | {h_time:.2f} | "
                 f"{hf_rate:.2f} q/s | 1.00x | |",
                 f"| (b) same | sgc -O0 (choices bound, 32 programs concurrently) | {o_time:.2f} | {n / o_time:.2f} q/s | "
                 f"{n / o_time / hf_rate:.1f}x | 1.00x |",
                 f"| (b) same | sgc compiled (choices bound, 32 programs concurrently) | {c_time:.2f} | "
                 f"{n / c_time:.2f} q/s | {n / c_time / hf_rate:.1f}x | {o_time / c_time:.2f}x |",
                 f"| (b) same | sgc `run_batch`, choices as argument (graph break: host) | {b_time:.2f} | "
                 f"{n / b_time:.2f} q/s | {n / b_time / hf_rate:.1f}x | |"]
        mism = [i for i in range(n) if not (c_picks[i] == o_picks[i] == b_picks[i])]
        mism_hf = [i for i in range(len(hf_q)) if h_picks[i] != c_picks[i]]
        notes.append(f"(b) answer mismatches: among sgc systems {len(mism)}/{n} {mism}; "
                     f"HF vs compiled {len(mism_hf)}/{len(hf_q)} {mism_hf}.")
        print("\n".join(rows[-4:]), "\n" + notes[-1], flush=True)

    rows += ["", *notes]
    print("\n".join(rows))
    if not args.no_record:
        record(rows, "python benchmarks/bench_compiler.py " + " ".join(sys.argv[1:]), title="Compiler benchmark")


if __name__ == "__main__":
    main()
