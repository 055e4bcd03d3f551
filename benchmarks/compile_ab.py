"""Compile times of corpus schemas under two code trees, alternating schema by schema.

    git archive <base> | tar -x -C /tmp/base && ln -s $PWD/.venv /tmp/base/.venv
    .venv/bin/python benchmarks/compile_ab.py /tmp/base . names.txt --timeout 10 --out ab.json

One script starts a long-lived worker process per tree (`--worker ROOT`: it imports that tree's
compiler, warms the vocabulary once, then compiles the schemas named on stdin, compile only, under a
`constraint_seconds` budget) and feeds both the same schema in turn, alternating which goes first,
so that both see the same machine load (the development machine is shared). Prints one line per
schema and writes the rows as JSON (wall and CPU seconds); refusals count at the time they took.
`--warm NAMES` has each worker compile other schemas first, untimed: a fresh worker otherwise pays
the shared leaf automata and per-vocabulary tables in its first timed compiles, which a corpus
run has mostly built already.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(root: str, timeout: float, warm: list[str]) -> None:
    sys.path[:0] = [root, root + "/tests", root + "/benchmarks"]
    import bench_schemas as bench
    from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer

    from compiler.budgets import budget_overrides
    from compiler.constraints import ConstraintError, Vocabulary, compile_json_schema

    vocab = Vocabulary.from_tokenizer(load_smollm2_tokenizer(), eos_token_id=SMOLLM2_EOS)
    compile_json_schema({"type": "string"}, vocab)  # the vocabulary trie, once
    for doc in bench.load_corpus(warm, 0, 0) if warm else []:  # untimed: caches as a corpus run has them
        try:
            compile_json_schema(doc["schema"], vocab)
        except ConstraintError:
            pass
    print("ready", flush=True)
    for line in sys.stdin:
        doc = bench.load_corpus([line.strip()], 0, 0)[0]
        t, cpu = time.perf_counter(), time.process_time()
        try:
            with budget_overrides(constraint_seconds=timeout):
                fsm = compile_json_schema(doc["schema"], vocab)
            result, states = "ok", fsm.num_states
        except ConstraintError as e:
            result, states = "refused: " + str(e).splitlines()[0][:100], None
        row = {"name": doc["name"], "s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu,
               "result": result, "states": states}
        print(json.dumps(row), flush=True)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("base", nargs="?")
    ap.add_argument("new", nargs="?")
    ap.add_argument("names", nargs="?", type=Path, help="a file of schema names (whitespace separated)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument(
        "--warm", type=Path, help="a file of schema names each worker compiles first, untimed: the shared "
        "leaf automata, the token split and first-use tables are then built, as in a corpus run that "
        "compiled other schemas before (a fresh worker pays them in its first timed compiles)",
    )
    ap.add_argument("--out", type=Path, default=Path("compile_ab.json"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.timeout, args.warm.read_text().split() if args.warm else [])
        return
    procs = {}
    for tag, root in (("before", args.base), ("after", args.new)):
        cmd = [sys.executable, __file__, "--worker", str(Path(root).resolve()), "--timeout", str(args.timeout)]
        if args.warm:
            cmd += ["--warm", str(args.warm.resolve())]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            sys.exit(f"the {tag} worker did not start")
        procs[tag] = p
    rows = []
    for i, name in enumerate(args.names.read_text().split()):
        row: dict = {"name": name}
        for tag in ("before", "after") if i % 2 == 0 else ("after", "before"):
            procs[tag].stdin.write(name + "\n")
            procs[tag].stdin.flush()
            row[tag] = json.loads(procs[tag].stdout.readline())
        rows.append(row)
        print(name, *(f"{row[t]['s']:.2f} {row[t]['result'][:30]}" for t in ("before", "after")), flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    for tag in ("before", "after"):
        xs = [r[tag]["s"] for r in rows]
        ok = [r[tag]["s"] for r in rows if r[tag]["result"] == "ok"]
        line = f"{tag}: compiled {len(ok)}/{len(rows)}, all p50/p90 {statistics.median(xs):.2f}/{_pct(xs, 0.9):.2f} s"
        if ok:
            line += f", compiled ones p50/p90 {statistics.median(ok):.2f}/{_pct(ok, 0.9):.2f} s"
        print(line)
    # CPU seconds too: on a shared machine they move less with the other processes' load than
    # wall seconds do (memory bandwidth is still shared)
    for unit in ("s", "cpu_s"):
        ratios = [r["after"][unit] / r["before"][unit] for r in rows if min(r["after"][unit], r["before"][unit]) > 0]
        if ratios:
            geo = statistics.geometric_mean(ratios)
            under = {t: sum(r[t][unit] <= 0.5 for r in rows) for t in ("before", "after")}
            print(f"{unit}: after/before geometric mean {geo:.3f} over {len(ratios)} schemas; "
                  f"<= 0.5 s before {under['before']}, after {under['after']}")
    for p in procs.values():
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
