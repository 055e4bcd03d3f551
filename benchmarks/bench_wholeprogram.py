"""Whole-program optimizations (issue 12, item 3), each against -O0 and the eager interpreter, in one process.

Sections (`--sections`, default all):

- `hops`: what one gen -> text -> gen hop costs: the time from the end of one gen to the first token
  of the next, in a single multi-turn chat, compiled (chains), compiled without chain-gens, -O0 and
  eager; with the null model (host cost only) and the real model.
- `workloads`: wall time of the chat, agent and JSON workloads of `sgc bench` (their programs and
  inputs) for the same four systems, best of `--reps`, and whether every system gave the same text.
- `pinning`: the fork fan-out workload with the KV pool at 100% and 25% of its working set, with the
  executor's prefix pins (pin budget 0.5) and without (0): cache hit rate and wall time.
- `constraints`: first-request latency of the JSON-schema program with its token FSM compiled ahead
  of time (in the artifact) vs compiled by the runtime at first use.

    .venv/bin/python benchmarks/bench_wholeprogram.py --out bench_results/wholeprogram.json

Timings on a shared machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sgc  # noqa: E402
from compiler.driver import compile_program  # noqa: E402
from executor.program.graph_llm import make_run_defaults  # noqa: E402
from sgc.bench.workloads import Size, get_workloads, load_program  # noqa: E402
from sgc.compiled import CompiledProgram  # noqa: E402

SYSTEMS = ("compiled", "no-chains", "O0", "eager")


# -- running one system ----------------------------------------------------------------------------------
def compiled_program(rt: Any, fn: Any, system: str) -> CompiledProgram:
    """`fn` compiled for `system` on the runtime's engine (what `Runtime.compile` does, with the ablation)."""
    level = 0 if system == "O0" else 1
    disable = {"chain-gens"} if system == "no-chains" else set()
    result = compile_program(fn, opt_level=level, tokenizer=rt.engine.tokenizer, disable_passes=disable)
    return CompiledProgram(rt.engine, result.module, result.fsms, chat_format=rt.chat_format(),
                           breaks=result.breaks, live_functions=True)


def prepare(rt: Any, workload: Any, system: str, rows: list[dict[str, Any]], options: dict[str, Any]) -> Any:
    """A callable running every row (compilation outside it); returns the final texts in row order."""
    fn = load_program(workload)
    defaults = make_run_defaults(**options)
    if system == "eager":
        def run_eager() -> list[str]:
            with cf.ThreadPoolExecutor(max(1, min(len(rows), 64))) as pool:
                futures = [pool.submit(fn.run, backend=rt, eager=True, **row, **options) for row in rows]
                return [f.result().text() for f in futures]
        return run_eager
    if workload.bind:
        jobs = []
        for row in rows:
            program = fn.bind(**{k: row[k] for k in workload.bind})
            compiled = compiled_program(rt, program, system)
            jobs.append((compiled, {k: v for k, v in row.items() if k not in workload.bind}))

        def run_bound() -> list[str]:
            with cf.ThreadPoolExecutor(max(1, min(len(jobs), 64))) as pool:
                futures = [pool.submit(c.run, fn.name, a, defaults) for c, a in jobs]
                return [f.result().text() for f in futures]
        return run_bound
    compiled = compiled_program(rt, fn, system)
    return lambda: [s.text() for s in compiled.run_batch(fn.name, rows, defaults)]


def timed(rt: Any, run: Any) -> tuple[float, list[str], dict[str, int]]:
    """Wall seconds, the texts, and the engine's counter deltas plus `cpu_ms`: this process's CPU time
    (all threads), less sensitive than wall time to other processes on a shared machine."""
    rt.engine.flush_cache()
    before = rt.engine.stats()
    cpu = time.process_time()
    start = time.perf_counter()
    texts = run()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    after = rt.engine.stats()
    delta = {k: after[k] - before[k] for k in before if isinstance(before[k], int)}
    delta["cpu_ms"] = int(cpu * 1e3)
    return wall, texts, delta


class RequestLog:
    """Every finished engine request, in publish order (a hook on the engine loop, for hop timings)."""

    def __init__(self, engine: Any) -> None:
        self.requests: list[Any] = []
        loop = engine._loop
        publish = loop._publish

        def hook(handle: Any) -> None:
            publish(handle)
            if handle.req.finished and handle.req.first_token_at is not None:
                self.requests.append(handle.req)

        loop._publish = hook

    def hops_ms(self) -> list[float]:
        """End of one gen to the first token of the next (one program at a time)."""
        reqs = sorted(self.requests, key=lambda r: r.first_token_at)
        return [(b.first_token_at - a.finished_at) * 1e3 for a, b in zip(reqs, reqs[1:])]


# -- sections ----------------------------------------------------------------------------------------------
def bench_runtime_hops(model: str, null_model: bool, conversations: int, turns: int, tokens: int,
                       reps: int) -> dict[str, Any]:
    """The runtime's side of a hop, without the graph executor: `conversations` chats of `turns` gens
    at once, each next gen sent by a client thread on the whole text (tokenized, follow_up answered)
    or chained (`ChainedGen`). Hop: end of one gen to the first token of the next."""
    import queue

    from executor.runtime.runtime_client import ChainedGen, GenerateRequest

    forced = "<|im_end|>\n<|im_start|>user\nAnd then what happened next?<|im_end|>\n<|im_start|>assistant\n"
    prompts = [f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell story {i}.<|im_end|>\n"
               "<|im_start|>assistant\n" for i in range(conversations)]
    params = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
    out: dict[str, Any] = {"null_model": null_model, "conversations": conversations, "turns": turns,
                           "tokens": tokens}
    with sgc.Runtime(model, null_model=null_model) as rt:
        engine, tok = rt.engine, rt.engine.tokenizer
        prompt_ids = [tok.encode(p) for p in prompts]

        def client() -> list[Any]:
            events: queue.Queue = queue.Queue()
            handles = []
            texts = list(prompts)
            with engine.group() as group:
                for i, p in enumerate(prompts):
                    handles.append(group.send(GenerateRequest(tok.encode(p), params, follow_up=True),
                                              lambda d, f, i=i: f and events.put(i)))
            reqs = [h.req for h in handles]
            left = {i: turns - 1 for i in range(conversations)}
            pending = conversations
            while pending:
                i = events.get()
                h = handles[i]
                texts[i] = texts[i] + h.result()["text"]
                if left[i] == 0:
                    pending -= 1
                    with engine.group(after=[h]):
                        pass
                    continue
                left[i] -= 1
                texts[i] += forced
                with engine.group(after=[h]) as group:
                    handles[i] = group.send(GenerateRequest(tok.encode(texts[i]), params, follow_up=True),
                                            lambda d, f, i=i: f and events.put(i))
                reqs.append(handles[i].req)
            return reqs

        def chained() -> list[Any]:
            handles = []
            for p in prompts:
                then = None
                for _ in range(turns - 1):
                    then = ChainedGen("", forced, params, then=then)
                handles.append(GenerateRequest(tok.encode(p), params, then=None if then is None else
                                               ChainedGen(p, then.forced_text, params, then=then.then)))
            with engine.group() as group:
                sent = [group.send(r) for r in handles]
            reqs = []
            for h in sent:
                while h is not None:
                    h.result()
                    reqs.append(h.req)
                    h = h.chained
            return reqs

        for label, fn in (("client", client), ("chained", chained)):
            fn()  # warm-up
            hops, walls = [], []
            for _ in range(reps):
                engine.flush_cache()
                start = time.perf_counter()
                reqs = fn()
                walls.append(time.perf_counter() - start)
                # A conversation's gens all start with its first prompt's tokens.
                by_conv: dict[int, list[Any]] = {}
                for r in reqs:
                    key = next(k for k, ids in enumerate(prompt_ids) if r.input_ids[:len(ids)] == ids)
                    by_conv.setdefault(key, []).append(r)
                for rs in by_conv.values():
                    rs.sort(key=lambda r: r.first_token_at)
                    hops.extend((b.first_token_at - a.finished_at) * 1e3 for a, b in zip(rs, rs[1:]))
            out[label] = {"wall_s": min(walls), "hop_ms_median": statistics.median(hops),
                          "hop_ms_p90": sorted(hops)[int(0.9 * (len(hops) - 1))]}
        out["chained_vs_client_wall"] = out["client"]["wall_s"] / out["chained"]["wall_s"]
    return out


def bench_hops(model: str, reps: int, null_model: bool, turns: int, tokens: int) -> dict[str, Any]:
    workload = get_workloads(["chat"])[0]
    rows = workload.make_inputs(random.Random(7), Size(1, tokens, 1, turns))
    options = {"temperature": 0, "max_new_tokens": tokens, "ignore_eos": True}
    out: dict[str, Any] = {"null_model": null_model, "turns": turns, "tokens": tokens, "systems": {}}
    with sgc.Runtime(model, null_model=null_model) as rt:
        log = RequestLog(rt.engine)
        runs = {s: prepare(rt, workload, s, rows, options) for s in SYSTEMS}
        for s in SYSTEMS:  # warm-up
            runs[s]()
        walls: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        hops: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        texts: dict[str, list[str]] = {}
        for _ in range(reps):
            for s in SYSTEMS:
                log.requests.clear()
                wall, texts[s], _ = timed(rt, runs[s])
                walls[s].append(wall)
                hops[s].extend(log.hops_ms())
        for s in SYSTEMS:
            out["systems"][s] = {"wall_s": min(walls[s]), "hop_ms_median": statistics.median(hops[s]),
                                 "hop_ms_max": max(hops[s]), "same_text_as_O0": texts[s] == texts["O0"]}
    return out


def bench_workloads(model: str, reps: int, names: list[str], mode: str, null_model: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"null_model": null_model}
    with sgc.Runtime(model, null_model=null_model) as rt:
        for workload in get_workloads(names):
            size = workload.size(mode)
            rows = workload.make_inputs(random.Random(0), size)
            options = {"temperature": 0, "max_new_tokens": size.gen_tokens, "ignore_eos": workload.ignore_eos}
            runs = {s: prepare(rt, workload, s, rows, options) for s in SYSTEMS}
            warm = workload.make_inputs(random.Random(1), Size(1, size.gen_tokens, 1, size.scale))
            for s in SYSTEMS:
                prepare(rt, workload, s, warm, options)()
            walls: dict[str, list[float]] = {s: [] for s in SYSTEMS}
            cpus: dict[str, list[float]] = {s: [] for s in SYSTEMS}
            texts: dict[str, list[str]] = {}
            stats: dict[str, dict[str, int]] = {}
            for rep in range(reps):
                order = SYSTEMS if rep % 2 == 0 else tuple(reversed(SYSTEMS))
                for s in order:
                    wall, texts[s], stats[s] = timed(rt, runs[s])
                    walls[s].append(wall)
                    cpus[s].append(stats[s]["cpu_ms"] / 1e3)
            best = {s: min(w) for s, w in walls.items()}
            best_cpu = {s: min(c) for s, c in cpus.items()}
            out[workload.name] = {
                "programs": len(rows), "gen_tokens": size.gen_tokens,
                "wall_s": best,
                "compiled_vs_O0": best["O0"] / best["compiled"],
                "compiled_vs_eager": best["eager"] / best["compiled"],
                "chains_vs_no_chains": best["no-chains"] / best["compiled"],
                "cpu_s": best_cpu,
                "cpu_compiled_vs_O0": best_cpu["O0"] / best_cpu["compiled"],
                "cpu_compiled_vs_eager": best_cpu["eager"] / best_cpu["compiled"],
                "forward_passes": {s: stats[s].get("num_forward_passes") for s in SYSTEMS},
                "same_text": {s: texts[s] == texts["O0"] for s in SYSTEMS},
            }
            print(json.dumps({workload.name: out[workload.name]}), flush=True)
    return out


def bench_pinning(model: str, reps: int, mode: str) -> dict[str, Any]:
    workload = get_workloads(["fanout"])[0]
    size = workload.size(mode)
    rows = workload.make_inputs(random.Random(0), size)
    options = {"temperature": 0, "max_new_tokens": size.gen_tokens, "ignore_eos": workload.ignore_eos}
    with sgc.Runtime(model) as rt:  # the working set: every KV slot the run computes, nothing evicted
        run = prepare(rt, workload, "compiled", rows, options)
        run()
        _, _, stats = timed(rt, run)
    working_set = stats["num_prompt_tokens"] - stats["num_cached_prompt_tokens"] + stats["num_generated_tokens"]
    out: dict[str, Any] = {"working_set_tokens": working_set, "pools": {}}
    for share in (1.0, 0.25):
        slots = max(int(working_set * share), 256)
        entry: dict[str, Any] = {"kv_slots": slots}
        with sgc.Runtime(model, max_total_tokens=slots) as rt:
            fn = load_program(workload)
            defaults = make_run_defaults(**options)
            programs = {budget: compiled_program(rt, fn, "compiled") for budget in (0.5, 0.0)}
            for budget, program in programs.items():
                program.executor.pin_budget = budget
            for program in programs.values():
                program.run_batch(fn.name, rows[:1], defaults)  # warm-up
            for budget, program in programs.items():
                walls, rates = [], []
                for _ in range(reps):
                    wall, _, st = timed(rt, lambda p=program, f=fn, d=defaults: [s.text() for s in p.run_batch(f.name, rows, d)])
                    walls.append(wall)
                    rates.append(st["num_cached_prompt_tokens"] / max(st["num_prompt_tokens"], 1))
                entry[f"pins_{budget}"] = {"wall_s": min(walls), "cache_hit_rate": max(rates),
                                           "retractions": st.get("num_retractions")}
        out["pools"][f"{int(share * 100)}%"] = entry
        print(json.dumps({f"{int(share * 100)}%": entry}), flush=True)
    return out


def bench_constraints(model: str, reps: int) -> dict[str, Any]:
    workload = get_workloads(["json"])[0]
    fn = load_program(workload)
    row = workload.make_inputs(random.Random(0), Size(1, 96, 1))[0]
    options = {"temperature": 0, "max_new_tokens": 48}  # the latency is the constraint's compile + a short gen
    defaults = make_run_defaults(**options)
    out: dict[str, Any] = {}
    for label, ahead in (("tables_ahead_of_time", True), ("compiled_at_first_request", False)):
        firsts, compiles = [], []
        for _ in range(reps):
            with sgc.Runtime(model) as rt:
                rt.engine.generate("warm", {"max_new_tokens": 1})
                start = time.perf_counter()
                result = compile_program(fn, opt_level=1, tokenizer=rt.engine.tokenizer if ahead else None)
                compiles.append(time.perf_counter() - start)
                program = CompiledProgram(rt.engine, result.module, result.fsms, chat_format=rt.chat_format())
                start = time.perf_counter()
                text = program.run(fn.name, row, defaults).text()
                firsts.append(time.perf_counter() - start)
                start = time.perf_counter()
                program.run(fn.name, row, defaults)
                second = time.perf_counter() - start
        out[label] = {"compile_s": min(compiles), "first_request_s": min(firsts), "second_request_s": second,
                      "text_tail": text[-60:]}
        print(json.dumps({label: out[label]}), flush=True)
    out["first_request_speedup"] = (out["compiled_at_first_request"]["first_request_s"]
                                    / out["tables_ahead_of_time"]["first_request_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sections", default="hops,workloads,pinning,constraints")
    parser.add_argument("--workloads", default="chat,agent,json")
    parser.add_argument("--size", default="quick", choices=("quick", "full", "tiny"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--null-model", action="store_true",
                        help="workloads on the null model too (host cost only: what a fast accelerator leaves)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    results: dict[str, Any] = {"model": args.model, "size": args.size, "reps": args.reps}
    if "runtime-hops" in sections:
        for null in (True, False):
            for conversations in ((1, 32) if null else (1, 8)):
                key = f"runtime_hops_{'null' if null else 'real'}_{conversations}"
                results[key] = bench_runtime_hops(args.model, null, conversations, 4, 16, args.reps)
                print(json.dumps({key: results[key]}), flush=True)
    if "hops" in sections:
        results["hops_null_model"] = bench_hops(args.model, args.reps, True, 4, 16)
        print(json.dumps(results["hops_null_model"]), flush=True)
        results["hops_real_model"] = bench_hops(args.model, args.reps, False, 4, 16)
        print(json.dumps(results["hops_real_model"]), flush=True)
    if "workloads" in sections:
        if args.null_model:
            results["workloads_null_model"] = bench_workloads(args.model, args.reps, args.workloads.split(","),
                                                              args.size, null_model=True)
        results["workloads"] = bench_workloads(args.model, args.reps, args.workloads.split(","), args.size)
    if "pinning" in sections:
        results["pinning"] = bench_pinning(args.model, args.reps, args.size)
    if "constraints" in sections:
        results["constraints"] = bench_constraints(args.model, args.reps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
