"""The scheduler alone, over a fake model runner (no weights, no model): admission, chunking,
ordering, retraction, abort.

The fake model really reads its KV: every forward stores each new token at its KV slot, and the
"hidden state" of position p is a hash of the tokens stored at the slots the request table gives
for positions 0..p. A request whose slots were freed, overwritten, shared by mistake or pointed at
the wrong cache entry gets different tokens than the reference, so every test that compares outputs
also checks the KV bookkeeping; `KVManager.check_integrity` runs after every step.
"""

from __future__ import annotations

import pytest
import torch

from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.kv_manager import KVManager
from executor.runtime.request import Request, RequestKind
from executor.runtime.sampling_params import SamplingParams
from executor.runtime.scheduler import Scheduler, SchedulerConfig

VOCAB = 97
CPU = torch.device("cpu")


def next_token(context: list[int]) -> int:
    """The fake model: the next token after `context` (depends on every token and its position)."""
    return (sum((i + 1) * t for i, t in enumerate(context)) * 31 + len(context)) % VOCAB


def reference(prompt: list[int], n: int) -> list[int]:
    tokens, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(tokens))
        tokens.append(out[-1])
    return out


class FakeRunner:
    """Stands in for `ModelRunner`: `forward` returns one "hidden" value per new token (the token the
    fake model predicts after it), `logits` turns them into one-hot logits."""

    def __init__(self, kv: KVManager) -> None:
        self.kv = kv
        self.stored = torch.full((kv.allocator.num_slots + 1,), -1, dtype=torch.long)
        self.num_forward_passes = 0
        self.batches: list[ForwardBatch] = []

    def _predict(self, row: int, length: int) -> float:
        context = self.stored[self.kv.table[row, :length]]
        assert bool((context >= 0).all()), "read a KV slot no forward pass wrote"
        return float(next_token(context.tolist()))

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        self.num_forward_passes += 1
        self.batches.append(batch)
        self.stored[batch.out_cache_loc] = batch.input_ids
        hidden = []
        if batch.mode is ForwardMode.EXTEND:
            for row, start, length in zip(batch.req_rows.tolist(), batch.prefix_lens.tolist(),
                                          batch.extend_lens.tolist()):
                hidden += [self._predict(row, p + 1) for p in range(start, start + length)]
        else:
            hidden = [self._predict(row, n) for row, n in zip(batch.req_rows.tolist(), batch.seq_lens.tolist())]
        return torch.tensor(hidden).unsqueeze(1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], VOCAB)
        logits[torch.arange(hidden.shape[0]), hidden[:, 0].long()] = 10.0
        return logits


def make(num_slots: int = 1024, *, rows: int = 32, cache: bool = True, **config) -> Scheduler:
    kv = KVManager.build(num_slots, rows, 256, CPU, enable_cache=cache)
    config = {"max_running_requests": 16, "max_prefill_tokens": 256, "chunk_size": 128, "context_len": 256,
              "shared_prefix_decode": False, **config}
    return Scheduler(FakeRunner(kv), kv, SchedulerConfig(**config), CPU)


def gen(rid: str, prompt: list[int], n: int = 6) -> Request:
    return Request(rid=rid, input_ids=list(prompt), params=SamplingParams(max_new_tokens=n, temperature=0.0))


def add(sched: Scheduler, *reqs: Request) -> None:
    for req in reqs:
        req.arrival = getattr(sched, "_test_arrivals", 0)
        sched._test_arrivals = req.arrival + 1  # type: ignore[attr-defined]
        sched.add(req)


def step(sched: Scheduler) -> list[Request]:
    out = sched.step()
    sched.kv.check_integrity(sched.all_requests())
    return out


def run(sched: Scheduler, *reqs: Request, max_steps: int = 2000) -> list[str]:
    """Add the requests and step until idle; the rids in the order they finished."""
    add(sched, *reqs)
    finished = []
    for _ in range(max_steps):
        if not sched.has_work():
            break
        finished += [r.rid for r in step(sched) if r.finished]
    assert not sched.has_work(), "the scheduler did not finish"
    assert sched.kv.allocator.num_free + sched.kv.num_cached_tokens == sched.kv.allocator.num_slots
    assert sched.kv.cache is None or sched.kv.cache.protected_size() == 0
    return finished


def prompts(n: int, shared: int = 24, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, VOCAB, (shared,), generator=g).tolist()
    return [system + torch.randint(0, VOCAB, (4 + 3 * i,), generator=g).tolist() for i in range(n)]


def extend_rows(batch: ForwardBatch) -> list[int]:
    return batch.req_rows.tolist()


# -- outputs never depend on scheduling -----------------------------------------------------------
@pytest.mark.parametrize("config", [
    {},
    {"chunk_size": 5, "max_prefill_tokens": 16},
    {"cache": False},
    {"policy": "fcfs"},
    {"max_running_requests": 2},
    {"mix_decode_into_extend": False},
    {"num_slots": 120},  # retraction
])
def test_outputs_equal_the_reference(config):
    sched = make(**config)
    reqs = [gen(f"r{i}", p, n=8 + i) for i, p in enumerate(prompts(8))]
    run(sched, *reqs)
    for req, p in zip(reqs, prompts(8)):
        assert req.output_ids == reference(p, len(req.output_ids)) and len(req.output_ids) == req.params.max_new_tokens
        assert req.finish_reason == {"type": "length", "length": req.params.max_new_tokens}


# -- admission ------------------------------------------------------------------------------------
def test_admission_stops_at_max_running_requests():
    sched = make(max_running_requests=3)
    run(sched, *[gen(f"r{i}", p) for i, p in enumerate(prompts(6, shared=0))])
    runner = sched.runner
    assert len(extend_rows(runner.batches[0])) == 3
    assert all(len(set(b.req_rows.tolist())) <= 3 for b in runner.batches)


def test_admission_stops_at_the_token_budget_and_chunks_the_last_prompt():
    sched = make(max_prefill_tokens=20, mix_decode_into_extend=False)
    reqs = [gen(f"r{i}", list(range(10 * i, 10 * i + 8))) for i in range(5)]
    run(sched, *reqs)
    extends = [b for b in sched.runner.batches if b.mode is ForwardMode.EXTEND]
    assert all(b.num_tokens <= 20 for b in extends)
    assert extends[0].extend_lens.tolist() == [8, 8, 4]  # the third prompt is split
    assert extends[1].extend_lens.tolist()[0] == 4  # ... and finished first in the next extend


def test_a_long_prompt_is_prefilled_in_chunks():
    sched = make(chunk_size=5, mix_decode_into_extend=False)
    req = gen("long", list(range(12)), n=3)
    run(sched, req)
    extends = [b.extend_lens.tolist() for b in sched.runner.batches if b.mode is ForwardMode.EXTEND]
    assert extends == [[5], [5], [2]]
    assert req.output_ids == reference(list(range(12)), 3)


def test_a_request_that_cannot_fit_the_pool_is_aborted_alone():
    sched = make(num_slots=40)
    ok, too_big = gen("ok", list(range(10)), n=4), gen("big", list(range(60)), n=4)
    run(sched, too_big, ok)
    assert too_big.finish_reason["type"] == "abort" and "too small" in too_big.finish_reason["message"]
    assert ok.output_ids == reference(list(range(10)), 4)


# -- ordering -------------------------------------------------------------------------------------
def _warm(sched: Scheduler, prompt: list[int]) -> None:
    run(sched, gen("warm", prompt, n=1))


@pytest.mark.parametrize(("policy", "first"), [("lpm", "shares"), ("fcfs", "other")])
def test_policy_order_with_a_cached_prefix(policy, first):
    sched = make(policy=policy, max_running_requests=1)
    cached = list(range(40))
    _warm(sched, cached)
    other, shares = gen("other", [90 - i for i in range(30)]), gen("shares", cached + [1, 2, 3])
    assert run(sched, other, shares)[0] == first
    assert shares.num_cached_tokens == 40  # fcfs orders by arrival but still reuses the cache


def test_lpm_ties_go_depth_first_in_token_order():
    sched = make(max_running_requests=1, cache=False)
    reqs = [gen("c", [5, 1, 1]), gen("b", [1, 9, 9]), gen("a", [1, 9, 2]), gen("d", [7])]
    assert run(sched, *reqs) == ["a", "b", "c", "d"]


def test_lpm_defers_a_request_that_shares_uncached_tokens_with_one_being_prefilled():
    shared = list(range(50))
    lpm, fcfs = make(), make(policy="fcfs")
    for sched in (lpm, fcfs):
        a, b = gen("a", shared + [1, 2]), gen("b", shared + [3, 4])
        run(sched, a, b)
        assert a.output_ids == reference(a.input_ids, 6) and b.output_ids == reference(b.input_ids, 6)
        if sched is lpm:
            assert b.num_cached_tokens >= 50  # waited one step and reused a's KV
        else:
            assert a.num_cached_tokens == b.num_cached_tokens == 0  # both computed it


# -- retraction -----------------------------------------------------------------------------------
def test_retraction_takes_the_newest_request_and_changes_no_output():
    sched = make(num_slots=60, max_running_requests=8)
    reqs = [gen(f"r{i}", list(range(7 * i, 7 * i + 10)), n=12) for i in range(4)]
    run(sched, *reqs)
    assert sched.num_retractions > 0
    assert reqs[0].num_retractions == 0 and reqs[-1].num_retractions > 0
    for req in reqs:
        assert req.output_ids == reference(req.input_ids, 12)


# -- abort ----------------------------------------------------------------------------------------
def test_abort_a_running_and_a_waiting_request():
    sched = make(max_running_requests=1)
    running, waiting = gen("running", list(range(20)), n=50), gen("waiting", list(range(30, 50)), n=5)
    add(sched, running, waiting)
    step(sched)
    step(sched)
    assert running in sched.running and waiting in sched.waiting
    assert sched.abort_request(running, "stop")
    assert running.finish_reason == {"type": "abort", "message": "stop"} and running.req_row is None
    assert sched.kv.cached_len(running.fill_ids) >= 20  # what it computed stays cached
    assert sched.abort_request(waiting, "stop") and waiting not in sched.waiting
    assert not sched.abort_request(waiting, "again")  # finished: nothing to do
    sched.kv.check_integrity(sched.all_requests())
    assert not sched.has_work()


def test_abort_a_score_request_with_continuations_pending():
    sched = make()
    parent = Request(rid="s", input_ids=list(range(30)), params=SamplingParams(max_new_tokens=1),
                     kind=RequestKind.SCORE)
    parent.continuations = [[1, 2, 3], [4, 5], [6]]
    add(sched, parent)
    step(sched)  # prefills the prompt, queues the continuations
    assert parent in sched.parked and any(r.parent is parent for r in sched.waiting)
    assert sched.abort_request(parent, "stop")
    assert not sched.has_work() and parent.req_row is None
    sched.kv.check_integrity()
    assert sched.kv.cache.protected_size() == 0


def test_score_continuations_get_the_reference_logprobs():
    sched = make()
    parent = Request(rid="s", input_ids=list(range(30)), params=SamplingParams(max_new_tokens=1),
                     kind=RequestKind.SCORE)
    prompt = list(range(30))
    likely = reference(prompt, 3)
    parent.continuations = [[1, 2, 3], likely, likely[:2] + [likely[2] + 1], [likely[0]]]
    run(sched, parent)
    # One-hot logits: the fake model's own next token has logprob ~0, every other one ~-10.
    for cont, lps in zip(parent.continuations, parent.continuation_logprobs, strict=True):
        assert len(lps) == len(cont)
        for j, lp in enumerate(lps):
            expected = next_token(prompt + cont[:j])
            assert (lp > -1) == (cont[j] == expected), (cont, j, lp)
    assert parent.finish_reason == {"type": "score"}
