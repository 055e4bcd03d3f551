"""The cluster simulator (executor/cluster/simulator.py): deterministic, faithful to the real radix cache
and the real engine's prefix reuse at one replica, and routing shows up in its predictions."""

from __future__ import annotations

import pytest
import torch

from executor.cluster.router import CacheAwarePolicy
from executor.cluster.simulator import CostModel, TraceRequest, shared_prefix_trace, simulate
from executor.runtime.radix_cache import RadixCache

COST = CostModel(prefill_base_s=0.01, prefill_per_token_s=0.001, decode_base_s=0.02, decode_per_seq_s=0.001)


def _direct_hits(trace: list[TraceRequest]) -> int:
    """One request at a time on one real RadixCache, as the engine reuses prefixes: match all but the
    last prompt token, cache prompt + output (the output's ids are the simulator's synthetic ones)."""
    cache, hits, slot = RadixCache(), 0, 1
    for i, req in enumerate(trace):
        hits += cache.match_prefix(list(req.prompt[:-1])).num_cached_tokens
        tokens = list(req.prompt) + [(1 << 40) + i * 1_000_003 + k for k in range(req.output_len - 1)]
        cache.insert(tokens, torch.arange(slot, slot + len(tokens)))
        slot += len(tokens)
    return hits


def _sequential(trace: list[TraceRequest], gap: float = 1000.0) -> list[TraceRequest]:
    return [TraceRequest(i * gap, r.prompt, r.output_len) for i, r in enumerate(trace)]


def test_one_replica_matches_the_real_radix_cache():
    trace = _sequential(shared_prefix_trace(4, 40, prefix_tokens=64, suffix_tokens=8, output_len=5, seed=3))
    result = simulate(trace, 1, "round_robin", COST, kv_capacity=1 << 16)
    assert result.cached_tokens == _direct_hits(trace) > 0
    assert result.prompt_tokens == sum(len(r.prompt) for r in trace)
    assert result.output_tokens == 40 * 5


def test_deterministic_and_affinity_beats_round_robin():
    trace = shared_prefix_trace(8, 128, prefix_tokens=128, suffix_tokens=16, output_len=8, seed=1)
    runs = {p: simulate(trace, 4, p, COST, kv_capacity=600) for p in ("round_robin", "least_loaded", "cache_aware")}
    again = simulate(trace, 4, "cache_aware", COST, kv_capacity=600)
    assert again.as_dict() == runs["cache_aware"].as_dict()
    rr, ca = runs["round_robin"], runs["cache_aware"]
    assert ca.hit_rate > rr.hit_rate + 0.05
    assert ca.makespan_s < rr.makespan_s
    assert sum(ca.per_replica_requests) == sum(rr.per_replica_requests) == 128
    assert rr.per_replica_requests == [32] * 4


def test_imbalance_spreads_load_in_the_simulator():
    """One hot prefix: pure affinity would put everything on one replica; the balance thresholds
    spread it (all arrive at once)."""
    trace = shared_prefix_trace(1, 200, prefix_tokens=64, suffix_tokens=8, output_len=4, seed=2)
    policy = CacheAwarePolicy(balance_abs_threshold=8, balance_rel_threshold=1.5)
    result = simulate(trace, 4, policy, COST, kv_capacity=1 << 14)
    assert result.decisions.get("imbalance", 0) > 0
    assert min(result.per_replica_requests) > 0


@pytest.mark.slow
def test_the_engine_agrees_at_one_replica(tiny_model_dirs):
    """The simulator's cached-token count at one replica equals the real engine's, request by request,
    on a shared-prefix trace (greedy tiny model; prompts never extend an earlier output)."""
    from executor.runtime.engine import Engine

    trace = _sequential(shared_prefix_trace(3, 12, prefix_tokens=40, suffix_tokens=6, output_len=3, seed=5,
                                            vocab=2000))
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=8192) as engine:
        real = 0
        for req in trace:
            out = engine.generate(input_ids=list(req.prompt),
                                  sampling_params={"max_new_tokens": req.output_len, "temperature": 0,
                                                   "ignore_eos": True})
            real += out["meta_info"]["cached_tokens"]
    predicted = simulate(trace, 1, "round_robin", COST, kv_capacity=8192).cached_tokens
    assert predicted == real > 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="non-empty prompt"):
        TraceRequest(0.0, (), 3)
    with pytest.raises(ValueError, match="output_len"):
        TraceRequest(0.0, (1,), 0)
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        simulate([TraceRequest(0.0, (1, 2), 1)], 0, "round_robin", COST, kv_capacity=10)
    with pytest.raises(ValueError, match="more than its capacity"):
        simulate([TraceRequest(0.0, tuple(range(50)), 1)], 1, "round_robin", COST, kv_capacity=10)
    with pytest.raises(ValueError, match="unknown routing policy"):
        simulate([TraceRequest(0.0, (1, 2), 1)], 1, "nope", COST, kv_capacity=10)


def test_cost_model_file_is_checked(tmp_path):
    path = tmp_path / "cost.json"
    path.write_text('{"prefill_base_s": 0.1}')
    with pytest.raises(ValueError, match="no 'prefill_per_token_s'"):
        CostModel.load(path)


@pytest.mark.slow
def test_bench_cluster_simulate_runs(tmp_path):
    """benchmarks/bench_cluster.py's simulate step on a small trace, with the stored cost model."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cluster.py"
    spec = importlib.util.spec_from_file_location("bench_cluster", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cluster.json"
    assert bench.main(["simulate", "--scales", "2,4", "--requests-per-replica", "6", "--prefix-tokens", "64", "--requests", "12",
                       "--kv-capacity", "512", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())["simulated"]
    assert [(r["scale"], r["policy"]) for r in rows] == [(s, p) for s in (2, 4) for p in bench.POLICIES]
    assert all(0 <= r["hit_rate"] <= 1 and r["output_tok_per_s"] > 0 for r in rows)
