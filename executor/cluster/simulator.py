"""A cluster simulator: replay a request trace against N simulated replicas, to predict what routing
does to cache hit rate and throughput at scales we cannot run here (8 to 256 replicas).

What is real and what is modelled:
- routing is the real policy code (`executor/cluster/router.py`), fed the same loads the HTTP router
  sees (requests in flight per replica);
- each replica's prefix cache is the real `RadixCache` over a real `TokenSlotAllocator` of
  `kv_capacity` slots: requests match their longest cached prefix (all but the last prompt token, as
  the engine does), lock it, take slots for the rest (evicting LRU leaves when short), cache the
  prompt after prefill and prompt + output when they finish;
- scheduling follows the engine's scheduler in outline: extend steps (admitted requests' uncached
  tokens, at most `max_prefill_tokens` a step, waiting requests ordered longest-cached-prefix first)
  take priority over decode steps (one token for every running request); a request whose uncached
  head another request admitted in the same step is computing is deferred a step (it then hits);
- time is a cost model fitted to step times measured on real hardware (`CostModel`): an extend step
  costs `prefill_base_s + prefill_per_token_s * tokens`, a decode step `decode_base_s +
  decode_per_seq_s * batch + decode_per_context_token_s * (the batch's context tokens)` (attention
  reads every row's whole context). Chunking, retraction, host contention and the network are not
  modelled: a request reserves its whole output's slots when it is admitted.

Everything is deterministic: same trace, same policy, same answer.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from executor.cluster.router import RoutingPolicy, make_policy
from executor.runtime.memory import TokenSlotAllocator
from executor.runtime.radix_cache import RadixCache, RadixNode

__all__ = ["CostModel", "SimResult", "SimReplica", "TraceRequest", "shared_prefix_trace", "simulate"]

DEFER_SHARED_PREFIX_TOKENS = 16  # the engine scheduler's default
_OUTPUT_TOKEN_BASE = 1 << 40  # synthetic output token ids: unique, never a vocabulary id


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when it arrives (s), its prompt's token ids, how many tokens it
    generates, and the key the router sees (the prompt text; default: the token ids)."""

    arrival: float
    prompt: tuple[int, ...]
    output_len: int
    key: Any = None

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a trace request needs a non-empty prompt")
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, not {self.output_len}")
        if self.arrival < 0:
            raise ValueError(f"arrival must be >= 0, not {self.arrival}")


@dataclass(frozen=True)
class CostModel:
    """Step time as a function of the step's work (seconds), fitted to measurements."""

    prefill_base_s: float
    prefill_per_token_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float = 0.0
    measured: str = ""  # how: machine, model, threads, command

    def extend_time(self, tokens: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * tokens

    def decode_time(self, batch: int, context_tokens: int = 0) -> float:
        return self.decode_base_s + self.decode_per_seq_s * batch + self.decode_per_context_token_s * context_tokens

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        data = json.loads(Path(path).read_text())
        try:
            return cls(**{k: data[k] for k in ("prefill_base_s", "prefill_per_token_s", "decode_base_s",
                                                "decode_per_seq_s")},
                       decode_per_context_token_s=data.get("decode_per_context_token_s", 0.0),
                       measured=data.get("measured", ""))
        except KeyError as exc:
            raise ValueError(f"{path}: the cost model has no {exc.args[0]!r}") from None


@dataclass
class _Req:
    index: int
    trace: TraceRequest
    cached: int = 0
    slots: torch.Tensor | None = None  # KV slots of prompt + output[:-1] (cache's, then own)
    own_from: int = 0  # slots[own_from:] are this request's own (not the tree's)
    node: RadixNode | None = None  # locked path end
    generated: int = 0
    admitted_at: float = 0.0
    done_at: float = 0.0


class SimReplica:
    """One simulated engine: a real radix cache over `kv_capacity` slots, a waiting queue, a batch."""

    def __init__(self, name: Hashable, kv_capacity: int, max_running: int = 256,
                 max_prefill_tokens: int = 8192) -> None:
        self.name = name
        self.allocator = TokenSlotAllocator(kv_capacity)
        self.cache = RadixCache()
        self.max_running = max_running
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: list[_Req] = []
        self.running: list[_Req] = []
        self.busy = False
        self.prompt_tokens = self.cached_tokens = self.output_tokens = self.requests = 0
        self.busy_s = 0.0
        self.extend_steps = self.decode_steps = 0

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- memory -----------------------------------------------------------------------------------
    def _take(self, n: int) -> torch.Tensor | None:
        if not self.allocator.can_allocate(n):
            self.allocator.free(self.cache.evict(n - self.allocator.num_free))
        return self.allocator.allocate(n) if self.allocator.can_allocate(n) else None

    def _cache(self, req: _Req, tokens: list[int]) -> None:
        """KVManager.cache_progress: hand `tokens`' KV to the tree, keep using the tree's slots."""
        assert req.slots is not None
        n = len(tokens)
        already = self.cache.insert(tokens, req.slots[:n])
        if already > req.own_from:  # someone cached these meanwhile: ours are duplicates
            self.allocator.free(req.slots[req.own_from:already].clone())
        match = self.cache.match_prefix(tokens)
        req.slots[:n] = match.slots
        self.cache.lock(match.last_node)
        if req.node is not None:
            self.cache.unlock(req.node)
        req.node = match.last_node
        req.own_from = max(req.own_from, n)

    # -- steps ------------------------------------------------------------------------------------
    def step(self, now: float, cost: CostModel) -> tuple[float, list[_Req]]:
        """Run one step from `now`; returns (its duration, the requests it finished)."""
        admitted = self._admit(now)
        if admitted:
            tokens = 0
            for req in admitted:
                tokens += len(req.trace.prompt) - req.cached
                self._cache(req, list(req.trace.prompt))
            self.running.extend(admitted)
            self.extend_steps += 1
            return cost.extend_time(tokens), []
        if not self.running:
            return 0.0, []
        context = sum(len(r.trace.prompt) + r.generated for r in self.running)
        duration = cost.decode_time(len(self.running), context)
        self.decode_steps += 1
        finished = []
        for req in self.running:
            req.generated += 1
            if req.generated >= req.trace.output_len:
                finished.append(req)
        for req in finished:
            self._finish(req)
        self.running = [r for r in self.running if r.generated < r.trace.output_len]
        return duration, finished

    def _admit(self, now: float) -> list[_Req]:
        if not self.waiting:
            return []

        def cached_len(r: _Req) -> int:
            return self.cache.cached_prefix_len(r.trace.prompt[:-1])

        order = sorted(self.waiting, key=lambda r: (-cached_len(r), r.index))  # lpm; ties: arrival
        budget = self.max_prefill_tokens
        chosen: list[_Req] = []
        for req in order:
            if len(self.running) + len(chosen) >= self.max_running or (budget <= 0 and chosen):
                break
            prompt = req.trace.prompt
            cached = cached_len(req)
            head = prompt[: cached + DEFER_SHARED_PREFIX_TOKENS]
            if len(head) == cached + DEFER_SHARED_PREFIX_TOKENS and any(
                    c.trace.prompt[: len(head)] == head for c in chosen):
                continue  # another admitted request computes this prefix now: wait and hit
            match = self.cache.match_prefix(list(prompt[:-1]))
            self.cache.lock(match.last_node)
            need = len(prompt) + req.trace.output_len - 1 - match.num_cached_tokens
            own = self._take(need)
            if own is None:
                self.cache.unlock(match.last_node)
                if not self.running and not chosen and self.allocator.num_free + self.cache.evictable_size() < need:
                    raise ValueError(f"replica {self.name}: a request needs {need} KV slots, more than its "
                                     f"capacity {self.allocator.num_slots} can ever give")
                break
            req.node, req.cached = match.last_node, match.num_cached_tokens
            req.slots = torch.cat([match.slots, own])
            req.own_from = req.cached
            req.admitted_at = now
            chosen.append(req)
            budget -= len(prompt) - req.cached
        for req in chosen:
            self.waiting.remove(req)
            self.requests += 1
            self.prompt_tokens += len(req.trace.prompt)
            self.cached_tokens += req.cached
        return chosen

    def _finish(self, req: _Req) -> None:
        assert req.slots is not None
        out = req.trace.output_len
        outputs = [_OUTPUT_TOKEN_BASE + req.index * 1_000_003 + i for i in range(out - 1)]
        self._cache(req, list(req.trace.prompt) + outputs)
        if req.node is not None:
            self.cache.unlock(req.node)
        req.node = None
        self.output_tokens += out


@dataclass
class SimResult:
    """What a simulated run predicts."""

    policy: str
    replicas: int
    requests: int
    makespan_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    per_replica_requests: list[int] = field(default_factory=list)
    mean_latency_s: float = 0.0
    decisions: dict[str, int] = field(default_factory=dict)
    extend_steps: int = 0
    decode_steps: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s else 0.0

    @property
    def req_per_s(self) -> float:
        return self.requests / self.makespan_s if self.makespan_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "hit_rate": self.hit_rate, "output_tok_per_s": self.output_tok_per_s,
                "req_per_s": self.req_per_s}


def simulate(trace: Sequence[TraceRequest], replicas: int, policy: RoutingPolicy | str, cost: CostModel, *,
             kv_capacity: int, max_running: int = 256, max_prefill_tokens: int = 8192) -> SimResult:
    """Replay `trace` (sorted by arrival) on `replicas` simulated replicas routed by `policy`."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, not {replicas}")
    if isinstance(policy, str):
        policy = make_policy(policy)
    reps = [SimReplica(i, kv_capacity, max_running, max_prefill_tokens) for i in range(replicas)]
    order = sorted(range(len(trace)), key=lambda i: (trace[i].arrival, i))
    seq = itertools.count()
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind 0=arrival 1=step end, index)
    for i in order:
        heapq.heappush(events, (trace[i].arrival, next(seq), 0, i))
    decisions: dict[str, int] = {}
    latencies: list[float] = []
    end = 0.0

    def start_step(rep: SimReplica, now: float) -> None:
        duration, finished = rep.step(now, cost)
        if duration <= 0 and not finished:
            rep.busy = False
            return
        rep.busy = True
        rep.busy_s += duration
        for req in finished:
            req.done_at = now + duration
            latencies.append(req.done_at - req.trace.arrival)
        heapq.heappush(events, (now + duration, next(seq), 1, rep.name))

    while events:
        now, _, kind, index = heapq.heappop(events)
        end = max(end, now)
        if kind == 0:
            req = trace[index]
            key = req.key if req.key is not None else req.prompt
            decision = policy.choose(key, {r.name: r.load for r in reps})
            policy.record(key, decision.replica)
            decisions[decision.reason] = decisions.get(decision.reason, 0) + 1
            rep = reps[decision.replica]
            rep.waiting.append(_Req(index, req))
            if not rep.busy:
                start_step(rep, now)
        else:
            start_step(reps[index], now)
    unfinished = sum(r.load for r in reps)
    assert not unfinished, f"{unfinished} requests never finished"
    first = min((t.arrival for t in trace), default=0.0)
    return SimResult(
        policy=policy.name, replicas=replicas, requests=len(trace), makespan_s=end - first,
        prompt_tokens=sum(r.prompt_tokens for r in reps), cached_tokens=sum(r.cached_tokens for r in reps),
        output_tokens=sum(r.output_tokens for r in reps), per_replica_requests=[r.requests for r in reps],
        mean_latency_s=sum(latencies) / len(latencies) if latencies else 0.0, decisions=decisions,
        extend_steps=sum(r.extend_steps for r in reps), decode_steps=sum(r.decode_steps for r in reps))


def shared_prefix_trace(num_prefixes: int, requests: int, prefix_tokens: int, suffix_tokens: int, output_len: int,
                        *, rate: float = float("inf"), seed: int = 0, vocab: int = 32000) -> list[TraceRequest]:
    """The shared-prefix workload: `requests` prompts, each one of `num_prefixes` long prefixes (drawn
    at random) plus its own suffix; Poisson arrivals at `rate` per second (inf: all at t=0)."""
    rng = random.Random(seed)
    prefixes = [tuple(rng.randrange(vocab) for _ in range(prefix_tokens)) for _ in range(num_prefixes)]
    trace, t = [], 0.0
    for _ in range(requests):
        prompt = rng.choice(prefixes) + tuple(rng.randrange(vocab) for _ in range(suffix_tokens))
        trace.append(TraceRequest(t, prompt, output_len))
        if rate != float("inf"):
            t += rng.expovariate(rate)
    return trace
