"""Batch runs on Ray replicas vs one process (issue 16): the same rows, the same compiled program.

    .venv/bin/python benchmarks/bench_batch_replicas.py --rows 32 --docs 8 --replicas 2

Rows ask questions about `--docs` distinct long documents (each shared by rows/docs rows, in
shuffled order). Timed: one process (`sgc.load(...).qa.run_batch`, torch on all cores), then
`--replicas` Ray replicas (one core each) with prefix-affinity routing, then the same replicas with
every row its own group (no affinity), interleaved `--repeats` times (medians). Each time is the run
only (engines loaded, caches flushed); engine and cluster start-up are reported apart. Also the CPU
seconds the engines' processes used (the driver's own, for one process): the work done, which a
busy shared machine disturbs much less than wall time. Outputs of all three must be identical (greedy).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROGRAM = '''\
import sgc


@sgc.function
def qa(s, doc, question):
    s += sgc.system("You are a careful reader. Answer in one short sentence.")
    s += sgc.user("Document:\\n" + doc + "\\n\\nQuestion: " + question)
    s += sgc.assistant(sgc.gen("answer", max_tokens=16, stop="\\n"))
'''

TOPICS = ["compilers", "owls", "tidal energy", "medieval trade", "volcanoes", "jazz harmony", "glaciers", "bread"]


def make_rows(num_rows: int, num_docs: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for d in range(num_docs):
        topic = TOPICS[d % len(TOPICS)]
        sentences = [f"Fact {k} about {topic}: it has property number {rng.randint(1, 999)} and relates to "
                     f"{rng.choice(TOPICS)} in way {rng.randint(1, 99)}." for k in range(14)]
        docs.append(" ".join(sentences))
    rows = [{"doc": docs[i % num_docs], "question": f"What is fact {i % 14} about?"} for i in range(num_rows)]
    rng.shuffle(rows)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats, medians reported")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args()

    import sgc
    from executor.cluster.batch import BatchRow, run_on_replicas
    from executor.cluster.ray_setup import connect
    from executor.cluster.replica import start_replicas
    from sgc.batch_run import ArtifactJob, artifact_bytes, prefix_keys, result_record
    from sgc.runtime import Runtime

    tmp = Path(tempfile.mkdtemp(prefix="sgc-bench-batch-"))
    (tmp / "qa.py").write_text(PROGRAM)
    data, _ = artifact_bytes(tmp / "qa.py", "qa", args.model)
    (tmp / "qa.sgc").write_bytes(data)
    rows = make_rows(args.rows, args.docs)
    batch = [BatchRow(i, r) for i, r in enumerate(rows)]
    out: dict = {"rows": args.rows, "docs": args.docs, "replicas": args.replicas}

    t0 = time.perf_counter()
    runtime = Runtime(args.model, device="cpu")
    program = sgc.load(tmp / "qa.sgc", backend=runtime)
    program.qa.run_batch(rows[:1], max_new_tokens=16, temperature=0.0)  # warm-up
    out["single_start_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray, started = connect(None)
    job = ArtifactJob(data, "qa", max_new_tokens=16)
    actors = start_replicas(args.replicas, functools.partial(Runtime, args.model, device="cpu"))
    out["cluster_start_s"] = time.perf_counter() - t0
    affinity_keys = prefix_keys(data, "qa", batch, args.model)
    times: dict[str, list[float]] = {"single": [], "affinity": [], "no_affinity": []}
    cpu: dict[str, list[float]] = {"single": [], "affinity": [], "no_affinity": []}  # CPU seconds of the engines
    try:
        for repeat in range(args.repeats):  # interleaved, so a change of the machine's load hits all three
            runtime.engine.flush_cache()
            before = runtime.engine.stats()
            t0, cpu0 = time.perf_counter(), time.process_time()
            states = program.qa.run_batch(rows, max_new_tokens=16, temperature=0.0)
            times["single"].append(time.perf_counter() - t0)
            cpu["single"].append(time.process_time() - cpu0)
            out["single_cache_hit"] = _hit(before, runtime.engine.stats())
            single = [{"index": i, **result_record(s)} for i, s in enumerate(states)]
            for name, keys in (("affinity", affinity_keys), ("no_affinity", {i: f"row-{i}" for i in range(len(rows))})):
                ray.get([a.flush_cache.remote() for a in actors])
                before = ray.get([a.stats.remote() for a in actors])
                cpu0 = sum(p["cpu_s"] for p in ray.get([a.ping.remote() for a in actors]))
                path = tmp / f"{name}.jsonl"
                summary = run_on_replicas(job, batch, path, actors, keys)
                cpu[name].append(sum(p["cpu_s"] for p in ray.get([a.ping.remote() for a in actors])) - cpu0)
                after = ray.get([a.stats.remote() for a in actors])
                times[name].append(summary.elapsed_s)
                out[f"{name}_cache_hit"] = _hit(_sum(before), _sum(after))
                out[f"{name}_rows_per_replica"] = summary.rows_per_replica
                lines = [json.loads(line) for line in path.read_text().splitlines()]
                out[f"{name}_equal_to_single"] = lines == single
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.1f} s ({cpu[k][-1]:.1f} CPU s)"
                                                   for k, v in times.items()), file=sys.stderr)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
        runtime.shutdown()
    for name, values in times.items():
        out[f"{name}_run_s"] = values
        out[f"{name}_median_s"] = statistics.median(values)
        out[f"{name}_cpu_s"] = cpu[name]
        out[f"{name}_median_cpu_s"] = statistics.median(cpu[name])
    for name in ("affinity", "no_affinity"):
        out[f"{name}_speedup"] = out["single_median_s"] / out[f"{name}_median_s"]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _sum(stats: list[dict]) -> dict:
    return {k: sum(s.get(k, 0) for s in stats) for k in ("num_prompt_tokens", "num_cached_prompt_tokens")}


def _hit(before: dict, after: dict) -> float:
    prompt = after["num_prompt_tokens"] - before["num_prompt_tokens"]
    cached = after["num_cached_prompt_tokens"] - before["num_cached_prompt_tokens"]
    return cached / prompt if prompt else 0.0


if __name__ == "__main__":
    sys.exit(main())
