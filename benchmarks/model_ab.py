"""The model code at a git revision against the working tree's (or another revision's), in one process.

    .venv/bin/python benchmarks/model_ab.py --base HEAD~1                 # decode 1/8/32/64 + prefill
    .venv/bin/python benchmarks/model_ab.py --base a3997f7 --new HEAD --threads 1 --cpu-time --no-prefill

On a machine shared with other work, two benchmark runs minutes apart are not comparable. Here
both versions of `models/` are loaded side by side (the old one from `git archive` into a temporary
folder, imported under its own module objects), run by the same `ModelRunner` on the same batches,
timed in alternation (minimum over rounds, `bench_step.race`), and their hidden states compared
bit for bit: a speedup that changed the model's numbers is reported as such.
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench_step import PREFILL, StepHarness, parse_batches, race  # noqa: E402  (benchmarks/)


def import_models_at(revision: str, scratch: Path) -> ModuleType:
    """The `models` package as it was at `revision`, imported without disturbing the current one."""
    try:
        archive = subprocess.run(["git", "archive", revision, "models"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--base {revision!r}: git archive failed: {err.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
    current = {name: mod for name, mod in sys.modules.items() if name == "models" or name.startswith("models.")}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(scratch))
    try:
        old = importlib.import_module("models")
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            sys.modules[f"_ab_{scratch.name}_{name}"] = sys.modules.pop(name)  # alive, out of the way
    finally:
        sys.path.remove(str(scratch))
        sys.modules.update(current)
    return old


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose models/ is the baseline")
    parser.add_argument("--new", default=None,
                        help="git revision whose models/ is compared (default: the working tree's)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--rounds", type=int, default=9, help="round-robin rounds per timing")
    parser.add_argument("--batches", default="1,8,32,64", help="decode batch sizes, comma-separated")
    parser.add_argument("--no-prefill", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the thread's CPU time, not wall time (needs --threads 1; robust to load)")
    args = parser.parse_args()
    batches = parse_batches(args.batches)
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    if args.cpu_time and args.threads != 1:
        raise SystemExit("--cpu-time measures the calling thread only: use it with --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter

    import models

    with tempfile.TemporaryDirectory() as base_dir, tempfile.TemporaryDirectory() as new_dir:
        old = import_models_at(args.base, Path(base_dir))
        new = models if args.new is None else import_models_at(args.new, Path(new_dir))
        folder = models.resolve_model(args.model)
        base_model, config = old.load_model(folder, "cpu", torch.float32)
        new_model, _ = new.load_model(folder, "cpu", torch.float32)
        # Each model packs its projections with its own cpu_pack (the runner keeps current packs).
        old.cpu_pack.pack_linears(base_model)
        new.cpu_pack.pack_linears(new_model)
    harnesses = {"base": StepHarness(base_model, config), "new": StepHarness(new_model, config)}
    print(f"# model_ab: base {args.base} vs {args.new or 'the working tree'}, {folder.name}, "
          f"{torch.get_num_threads()} threads, {'thread CPU' if args.cpu_time else 'wall'} time")
    print("\n| step | base ms | new ms | speedup | hidden bit-equal |\n|---|---|---|---|---|")
    cases = [(f"decode batch {b}", lambda h, b=b: h.decode_batch(b), args.rounds) for b in batches]
    if not args.no_prefill:
        cases.append((f"prefill {PREFILL[0]} x {PREFILL[1]}", lambda h: h.prefill_batch(), max(2, args.rounds // 3)))
    for name, make, rounds in cases:
        batch = {side: make(h) for side, h in harnesses.items()}
        batch["new"].input_ids.copy_(batch["base"].input_ids)
        with torch.inference_mode():
            equal = torch.equal(*(harnesses[s].runner.forward(batch[s]) for s in ("base", "new")))
        best = race({s: (lambda s=s, batch=batch: harnesses[s].step(batch[s])) for s in harnesses}, rounds, clock)
        print(f"| {name} | {1000 * best['base']:.1f} | {1000 * best['new']:.1f} | "
              f"{best['base'] / best['new']:.2f}x | {'yes' if equal else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
