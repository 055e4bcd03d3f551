"""The model code at a git revision against the working tree's, in one process (issue 12).

    .venv/bin/python benchmarks/model_ab.py --base HEAD~1                 # decode 1/8/32/64 + prefill
    .venv/bin/python benchmarks/model_ab.py --base a3997f7 --threads 1 --rounds 15 --no-prefill

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
            sys.modules[f"_base_{name}"] = sys.modules.pop(name)  # keep the old modules alive, out of the way
    finally:
        sys.path.remove(str(scratch))
        sys.modules.update(current)
    return old


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose models/ is the baseline")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--rounds", type=int, default=9, help="round-robin rounds per timing")
    parser.add_argument("--batches", default="1,8,32,64", help="decode batch sizes, comma-separated")
    parser.add_argument("--no-prefill", action="store_true")
    args = parser.parse_args()
    batches = parse_batches(args.batches)
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)

    import models

    with tempfile.TemporaryDirectory() as scratch:
        old = import_models_at(args.base, Path(scratch))
        folder = models.resolve_model(args.model)
        base_model, config = old.load_model(folder, "cpu", torch.float32)
        new_model, _ = models.load_model(folder, "cpu", torch.float32)
    harnesses = {"base": StepHarness(base_model, config), "new": StepHarness(new_model, config)}
    print(f"# model_ab: base {args.base} vs working tree, {folder.name}, {torch.get_num_threads()} threads")
    print("\n| step | base ms | new ms | speedup | hidden bit-equal |\n|---|---|---|---|---|")
    cases = [(f"decode batch {b}", lambda h, b=b: h.decode_batch(b), args.rounds) for b in batches]
    if not args.no_prefill:
        cases.append((f"prefill {PREFILL[0]} x {PREFILL[1]}", lambda h: h.prefill_batch(), max(2, args.rounds // 3)))
    for name, make, rounds in cases:
        batch = {side: make(h) for side, h in harnesses.items()}
        batch["new"].input_ids.copy_(batch["base"].input_ids)
        with torch.inference_mode():
            equal = torch.equal(*(harnesses[s].runner.forward(batch[s]) for s in ("base", "new")))
        best = race({s: (lambda s=s, batch=batch: harnesses[s].step(batch[s])) for s in harnesses}, rounds)
        print(f"| {name} | {1000 * best['base']:.1f} | {1000 * best['new']:.1f} | "
              f"{best['base'] / best['new']:.2f}x | {'yes' if equal else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
