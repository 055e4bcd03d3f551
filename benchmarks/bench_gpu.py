"""GPU decode benchmark: sgc's engine against HF transformers' generate, and against the roofline.

1. Copy bandwidth: a 1 GiB device-to-device copy, counted as bytes read plus bytes written. Decode
   of a small model is memory bound, so this is the roofline's speed limit.
2. Decode throughput at batch 1/16/64/256 with ~1k tokens of context per request (random token
   ids, all prompts the same length so HF needs no padding), greedy, bf16. Each system runs the
   same prompts twice with two output lengths; the difference in time over the difference in
   tokens is the decode rate, free of prefill time.
3. Roofline per batch size: one decode step must read every weight once and the KV of every
   request's context; tokens/s = batch * bandwidth / those bytes. Both systems are reported as a
   fraction of it.

Usage (needs a CUDA GPU; nothing here runs on CPU):
  .venv/bin/python benchmarks/bench_gpu.py [--batch-sizes 1 16 64 256] [--context 1024]
      [--new-tokens 32 160] [--model smollm2-135m-instruct] [--no-hf] [--no-record]

Results are printed and appended to docs/performance.md with the GPU and the command.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.runtime.engine import Engine  # noqa: E402
from executor.runtime.memory import kv_bytes_per_token  # noqa: E402
from models import resolve_model  # noqa: E402


def copy_bandwidth(num_bytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    del src, dst
    torch.cuda.empty_cache()
    return 2 * num_bytes / seconds


def random_prompts(batch: int, context: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    # Skip the low ids, where the special tokens live.
    return torch.randint(1000, vocab, (batch, context), generator=gen).tolist()


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_rate(run, batch: int, short: int, long: int, repeats: int = 2) -> float:
    """Decode tokens/s: (long - short) extra tokens per request over the extra time."""
    best_short = min(timed(lambda: run(short)) for _ in range(repeats))
    best_long = min(timed(lambda: run(long)) for _ in range(repeats))
    return batch * (long - short) / (best_long - best_short)


def sgc_decode_rate(engine: Engine, prompts: list[list[int]], short: int, long: int) -> float:
    def run(new_tokens: int) -> None:
        params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        assert all(o["meta_info"]["completion_tokens"] == new_tokens for o in outs)

    run(2)  # warm-up
    return decode_rate(run, len(prompts), short, long)


def hf_decode_rate(hf, prompts: list[list[int]], short: int, long: int) -> float:
    ids = torch.tensor(prompts, device="cuda")
    mask = torch.ones_like(ids)

    def run(new_tokens: int) -> None:
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + new_tokens

    run(2)
    return decode_rate(run, len(prompts), short, long)


def roofline(batch: int, mean_context: float, weight_bytes: int, kv_per_token: int, bandwidth: float) -> float:
    """Decode tokens/s if a step took only the time to read the weights and the batch's KV."""
    step_bytes = weight_bytes + batch * mean_context * kv_per_token
    return batch * bandwidth / step_bytes


def record(lines: list[str], command: str, device: str) -> None:
    path = ROOT / "docs" / "performance.md"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text("# Performance\n\nEvery figure below was measured by the command shown with it; ratios "
                        "compare systems run in the same process on the same machine.\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    block = [f"\n## GPU decode benchmark, {stamp} (commit {commit})\n", f"Machine: {device}  ",
             f"Command: `{command}`\n", *lines, ""]
    with path.open("a") as f:
        f.write("\n".join(block) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per request (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, nargs=2, default=[32, 160], metavar=("SHORT", "LONG"),
                        help="the two output lengths whose difference is timed (default: %(default)s)")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/performance.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    short, long = args.new_tokens
    props = torch.cuda.get_device_properties(0)
    device = f"{props.name}, {props.total_memory / (1 << 30):.0f} GiB, torch {torch.__version__}, bf16"

    bandwidth = copy_bandwidth()
    print(f"{device}\ncopy bandwidth (read + write): {bandwidth / 1e9:.0f} GB/s", flush=True)

    folder = resolve_model(args.model)
    max_batch = max(args.batch_sizes)
    engine = Engine(model_path=str(folder), device="cuda", disable_radix_cache=True,
                    max_running_requests=max(max_batch, 1))
    cfg = engine.model_config
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    kv_per_token = kv_bytes_per_token(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, torch.bfloat16)
    mean_context = args.context + 1 + (short + long) / 2
    results = {}
    for batch in args.batch_sizes:
        prompts = random_prompts(batch, args.context, cfg.vocab_size, seed=batch)
        rate = sgc_decode_rate(engine, prompts, short, long)
        results[batch] = {"sgc": rate, "roof": roofline(batch, mean_context, weight_bytes, kv_per_token, bandwidth)}
        print(f"batch {batch}: sgc {rate:.0f} tok/s", flush=True)
    engine.shutdown()
    del engine
    gc.collect()  # the engine's KV pool must be gone before HF allocates its cache
    torch.cuda.empty_cache()

    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
        for batch in args.batch_sizes:
            prompts = random_prompts(batch, args.context, cfg.vocab_size, seed=batch)
            results[batch]["hf"] = hf_decode_rate(hf, prompts, short, long)
            print(f"batch {batch}: HF {results[batch]['hf']:.0f} tok/s", flush=True)

    rows = [f"Copy bandwidth {bandwidth / 1e9:.0f} GB/s; weights {weight_bytes / 1e6:.0f} MB; KV "
            f"{kv_per_token / 1024:.1f} KiB/token; context {args.context} + {short}..{long} new tokens.\n",
            "| batch | sgc tok/s | sgc ms/step | roofline tok/s | sgc % of roofline | HF tok/s | HF % of roofline "
            "| sgc / HF |", "|---|---|---|---|---|---|---|---|"]
    for batch, r in results.items():
        hf = r.get("hf")
        hf_cols = (f"{hf:.0f} | {100 * hf / r['roof']:.1f}% | {r['sgc'] / hf:.2f}x" if hf else "- | - | -")
        rows.append(f"| {batch} | {r['sgc']:.0f} | {1000 * batch / r['sgc']:.2f} | {r['roof']:.0f} | "
                    f"{100 * r['sgc'] / r['roof']:.1f}% | {hf_cols} |")
    print("\n".join(rows))
    if not args.no_record:
        record(rows, "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:]), device)


if __name__ == "__main__":
    main()
