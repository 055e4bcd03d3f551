"""Hostile requests against the runtime: one bad request never hurts another.

Every parameter is checked on entry (a `RequestError`, a ValueError, naming the request, the
parameter and its value; `RequestTypeError` is also a TypeError); an error raised by one request's
own work inside a step (sampling, logprobs, constraint mask/advance/jump-forward, detokenizing)
fails that request alone, returns its KV, and the others finish exactly as they would alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import TokenFSM
from executor.runtime.constrained import ConstraintCursor
from executor.runtime.detokenizer import IncrementalDetokenizer
from executor.runtime.engine import Engine, EngineError, RequestError
from executor.runtime.request import LogprobOptions
from executor.runtime.runtime_client import GenerateRequest, ScoreRequest
from executor.runtime.sampling import SamplingParams
from tests.hostile import bounded
from tests.tiers import examples

GOOD = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}
REGEX = "[a-z ]{1,30}"


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        yield engine


def good_prompts(n: int) -> list[str]:
    topics = ["rivers", "stars", "bread", "trains", "owls", "glass", "music", "salt"]
    return [f"Item {i}: a few words about {topics[i % len(topics)]}, number {i * 11}." for i in range(n)]


@pytest.fixture(scope="module")
def alone(tiny) -> dict[str, list[int]]:
    """Each good prompt's greedy output, run alone."""
    return {p: tiny.generate(p, GOOD)["output_ids"] for p in good_prompts(6)}


def submit_together(engine: Engine, requests: list[tuple[str, dict, dict]]) -> list:
    """Send (prompt, sampling params, GenerateRequest fields) as one group: one step takes them all."""
    with engine.group() as group:
        return [group.send(GenerateRequest(engine.encode(p), params, **fields)) for p, params, fields in requests]


def assert_kv_clean(engine: Engine) -> None:
    """Nothing is in flight: every KV slot is free or cached (unlocked), every request row is free."""
    assert not engine.scheduler.has_work()
    cache = engine.radix_cache
    cache.check_integrity()
    assert cache.protected_size() == 0, "a failed request left its cached prefix locked"
    assert engine.allocator.num_free + cache.total_size() == engine.allocator.num_slots, "KV slots leaked"
    pool = engine.req_to_token
    assert pool.num_free == pool.max_requests, "a request row leaked"


def run_beside_good(engine: Engine, alone: dict[str, list[int]], bad: tuple[str, dict, dict],
                    cause: str) -> None:
    """Six good requests and one bad one in the same batch: the bad one fails naming itself and
    `cause`, the good ones give their solo outputs, KV is clean and the engine serves the next one."""
    prompts = list(alone)
    handles = submit_together(engine, [(p, GOOD, {}) for p in prompts[:3]] + [bad]
                              + [(p, GOOD, {}) for p in prompts[3:]])
    bad_handle = handles.pop(3)
    with pytest.raises(EngineError, match=cause) as err:
        bad_handle.result(timeout=30)
    assert bad_handle.req.rid in str(err.value)
    assert [h.result(timeout=30)["output_ids"] for h in handles] == list(alone.values())
    assert_kv_clean(engine)
    assert engine.generate(prompts[0], GOOD)["output_ids"] == alone[prompts[0]]


# -- rejected on entry ------------------------------------------------------------------------------
BAD_SAMPLING = [
    ({"temperature": math.inf}, ValueError, "temperature"),
    ({"temperature": math.nan}, ValueError, "temperature"),
    ({"temperature": -0.5}, ValueError, "temperature"),
    ({"temperature": 1e9}, ValueError, "temperature"),
    ({"temperature": 10**400}, ValueError, "temperature"),
    ({"temperature": "0.7"}, TypeError, "temperature"),
    ({"temperature": True}, TypeError, "temperature"),
    ({"top_p": math.nan}, ValueError, "top_p"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"top_p": None}, TypeError, "top_p"),
    ({"top_k": 0}, ValueError, "top_k"),
    ({"top_k": -7}, ValueError, "top_k"),
    ({"top_k": 2**80}, ValueError, "top_k"),
    ({"top_k": 5.0}, TypeError, "top_k"),
    ({"top_k": True}, TypeError, "top_k"),
    ({"min_p": math.nan}, ValueError, "min_p"),
    ({"min_p": 1.5}, ValueError, "min_p"),
    ({"frequency_penalty": math.inf}, ValueError, "frequency_penalty"),
    ({"presence_penalty": math.nan}, ValueError, "presence_penalty"),
    ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty"),
    ({"repetition_penalty": math.inf}, ValueError, "repetition_penalty"),
    ({"repetition_penalty": 1e-300}, ValueError, "repetition_penalty"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": True}, TypeError, "max_new_tokens"),
    ({"max_new_tokens": 8.0}, TypeError, "max_new_tokens"),
    ({"max_new_tokens": 2**80}, ValueError, "max_new_tokens.*context"),
    ({"max_new_tokens": 100_000}, ValueError, "max_new_tokens.*context"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, ValueError, "min_new_tokens"),
    ({"min_new_tokens": "1"}, TypeError, "min_new_tokens"),
    ({"seed": 2**80}, ValueError, "seed"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": True}, TypeError, "seed"),
    ({"stop": 5}, TypeError, "stop"),
    ({"stop": [""]}, ValueError, "stop"),
    ({"stop": ["x"] * 1000}, ValueError, "at most 256 stop strings"),
    ({"stop": ["y" * 5000]}, ValueError, "at most 1024 characters"),
    ({"stop": [b"bytes"]}, TypeError, "stop"),
    ({"stop_token_ids": [-1]}, ValueError, "stop_token_ids"),
    ({"stop_token_ids": [10**9]}, ValueError, "stop_token_ids.*outside the vocabulary"),
    ({"stop_token_ids": [True]}, TypeError, "stop_token_ids"),
    ({"stop_token_ids": "3"}, TypeError, "stop_token_ids"),
    ({"stop_token_ids": list(range(5000))}, ValueError, "stop_token_ids"),
    ({"regex": 5}, TypeError, "regex"),
    ({"json_schema": 5}, TypeError, "json_schema"),
    ({"regex": "a", "json_schema": "{}"}, ValueError, "json_schema"),
    ({"ignore_eos": "yes"}, TypeError, "ignore_eos"),
    ({"skip_special_tokens": 1}, TypeError, "skip_special_tokens"),
    ({"temprature": 0.5}, ValueError, "unknown sampling parameter 'temprature'"),
    ({"_ALIASES": {}}, ValueError, "unknown sampling parameter '_ALIASES'"),
    ({"ebnf": "root ::= x"}, ValueError, "ebnf"),
]


@pytest.mark.parametrize("params,error,message", BAD_SAMPLING, ids=[str(p)[:40] for p, _, _ in BAD_SAMPLING])
def test_bad_sampling_parameter_is_refused_on_entry(tiny, params, error, message):
    before = tiny.stats()["num_finished_requests"]
    with bounded(seconds=5, mem_mb=200), pytest.raises(error, match=message) as err:
        tiny.generate("hello", {"max_new_tokens": 4, **params})
    assert isinstance(err.value, RequestError)
    assert "request req-" in str(err.value)  # names the request
    name = message.split(".*")[0]
    if name in SamplingParams.field_names() and name in params and not isinstance(params[name], list):
        assert repr(params[name]) in str(err.value)  # and the bad value
    assert tiny.stats()["num_finished_requests"] == before


@pytest.mark.parametrize("kwargs,error,message", [
    ({"return_logprob": True, "top_logprobs_num": -1}, ValueError, "top_logprobs_num=-1"),
    ({"return_logprob": True, "top_logprobs_num": 10**6}, ValueError, "top_logprobs_num"),
    ({"return_logprob": True, "top_logprobs_num": 2.0}, TypeError, "top_logprobs_num"),
    ({"return_logprob": True, "top_logprobs_num": True}, TypeError, "top_logprobs_num"),
    ({"return_logprob": True, "logprob_start_len": -2}, ValueError, "logprob_start_len"),
    ({"return_logprob": True, "logprob_start_len": 10**6}, ValueError, "logprob_start_len"),
    ({"return_logprob": True, "logprob_start_len": "0"}, TypeError, "logprob_start_len"),
    ({"return_logprob": "yes"}, TypeError, "return_logprob"),
    ({"stream": 1}, TypeError, "stream"),
])
def test_bad_logprob_options_are_refused_on_entry(tiny, kwargs, error, message):
    with bounded(seconds=5, mem_mb=200), pytest.raises(error, match=message):
        tiny.generate("hello", {"max_new_tokens": 4}, **kwargs)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"input_ids": [5] * 600}, ValueError, "context"),  # the tiny models' context is 512
    ({"prompt": "word " * 700}, ValueError, "context"),
    ({"input_ids": [1, 2, 10**9]}, ValueError, "outside the vocabulary"),
    ({"input_ids": [1, -3]}, ValueError, "outside the vocabulary"),
    ({"input_ids": [True, False]}, ValueError, "input_ids"),
    ({"input_ids": [1.0, 2.0]}, ValueError, "input_ids"),
    ({"input_ids": ["ab"]}, TypeError, "token ids"),
    ({"prompt": 5}, TypeError, "prompt"),
    ({"prompt": ["ok", 3]}, TypeError, "prompt"),
    ({"prompt": "hi", "sampling_params": 5}, TypeError, "sampling params"),
    ({"prompt": "hi", "sampling_params": "temperature=0"}, TypeError, "dict"),
    ({"prompt": ["a", "b"], "sampling_params": [{}, {"top_p": 2}]}, ValueError, "top_p=2"),
])
def test_bad_prompts_are_refused_on_entry(tiny, kwargs, error, message):
    before = tiny.stats()["num_finished_requests"]
    with bounded(seconds=5, mem_mb=200), pytest.raises(error, match=message):
        tiny.generate(**kwargs)
    # A batch with one bad request queues none of them.
    assert tiny.stats()["num_finished_requests"] == before


@pytest.mark.parametrize("kwargs,error,message", [
    ({"params": 5}, TypeError, "SamplingParams or a dict"),
    ({"params": SamplingParams(temperature=math.inf)}, ValueError, "temperature=inf"),
    ({"options": LogprobOptions(top_logprobs_num=-1)}, ValueError, "top_logprobs_num=-1"),
    ({"options": {"return_logprob": True}}, TypeError, "LogprobOptions"),
    ({"constraint": "[a-z]+"}, TypeError, "TokenFSM"),
    ({"listener": 5}, TypeError, "listener"),
    ({"prefix_group": 5}, TypeError, "prefix_group"),
    ({"stream": "no"}, TypeError, "stream"),
])
def test_bad_request_fields_are_refused(tiny, kwargs, error, message):
    fields = {"params": SamplingParams(max_new_tokens=4), **kwargs}
    listener = fields.pop("listener", None)
    with bounded(seconds=5, mem_mb=200), pytest.raises(error, match=message):
        tiny.send(GenerateRequest(tiny.encode("hello"), **fields), listener)


@pytest.mark.parametrize("continuations,error,message", [
    ([], ValueError, "at least one continuation"),
    ("abc", TypeError, "continuations"),
    ([[True, 2]], TypeError, "continuation 0"),
    ([[5], [10**9]], ValueError, "continuation 1 has a token outside"),
    ([[5], []], ValueError, "continuation 1 is empty"),
    ([[5] * 600], ValueError, "context"),
    ([[5]] * 5000, ValueError, "at most 4096 continuations"),
])
def test_bad_score_requests_are_refused(tiny, continuations, error, message):
    with bounded(seconds=5, mem_mb=200), pytest.raises(error, match=message):
        tiny.score(tiny.encode("Pick one:"), continuations)


# -- property: random parameter dicts are refused on entry or run to the end --------------------------
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 20), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2), st.text(max_size=4),
    st.lists(st.integers(-2, 60_000), max_size=3), st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.binary(max_size=3),
)
_KEYS = st.sampled_from([*SamplingParams.field_names(), "sampling_seed", "temprature", "", "ebnf", "__class__"])


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_random_sampling_params_are_refused_or_complete(tiny, extra):
    params = {"max_new_tokens": 6, **extra}
    with bounded(seconds=15, mem_mb=300):
        try:
            out = tiny.generate("Random parameters:", params)
        except (ValueError, TypeError) as exc:
            assert isinstance(exc, RequestError), repr(exc)
            return
        assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")


def test_random_parameters_leave_the_engine_clean(tiny):
    """Runs after the property test (same module engine): nothing leaked across its examples."""
    with bounded(seconds=5, mem_mb=200):
        assert tiny.generate("still fine", GOOD)["meta_info"]["completion_tokens"] == 10
        assert_kv_clean(tiny)


# -- one request's failure inside a step --------------------------------------------------------------
def test_sampling_failure_fails_only_its_request(tiny, alone, monkeypatch):
    sampler = tiny.scheduler.sampler
    real = sampler.sample

    def sample(logits, batch, allowed=None):
        if any(p.seed == 4242 for p in batch.params):
            raise RuntimeError("injected sampling fault")
        return real(logits, batch, allowed)

    monkeypatch.setattr(sampler, "sample", sample)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad sampler", {**GOOD, "seed": 4242}, {}), "injected sampling fault")


def test_detokenizer_failure_mid_output_fails_only_its_request(tiny, alone, monkeypatch):
    real = IncrementalDetokenizer.add

    def add(self, token_id):
        if "<<boom>>" in self._stops and len(self._ids) >= 4:  # after a few good tokens
            raise UnicodeError("injected detokenizer fault")
        real(self, token_id)

    monkeypatch.setattr(IncrementalDetokenizer, "add", add)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad detok", {**GOOD, "stop": ["<<boom>>"]}, {}), "injected detokenizer fault")


def test_logprob_failure_fails_only_its_request(tiny, alone, monkeypatch):
    import executor.runtime.scheduler as scheduler_module

    real = scheduler_module.compute_logprobs

    def compute(logits, token_ids, top_k=0):
        if top_k == 7:
            raise IndexError("injected logprob fault")
        return real(logits, token_ids, top_k)

    monkeypatch.setattr(scheduler_module, "compute_logprobs", compute)
    options = LogprobOptions(return_logprob=True, top_logprobs_num=7)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad logprobs", GOOD, {"options": options}), "injected logprob fault")


def test_constraint_mask_failure_fails_only_its_request(tiny, alone, monkeypatch):
    fsm = tiny.constraints.get(REGEX, None)
    real = ConstraintCursor.fill_mask

    def fill_mask(self, row):
        if len(self.history) >= 2:
            raise MemoryError("injected mask fault")
        real(self, row)

    monkeypatch.setattr(ConstraintCursor, "fill_mask", fill_mask)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad mask", {**GOOD, "ignore_eos": False}, {"constraint": fsm}),
                        "injected mask fault")


def _tampered(fsm: TokenFSM, monkeypatch, **arrays: np.ndarray) -> TokenFSM:
    """A copy of `fsm` with some DFA / token-index arrays replaced, its entry check bypassed."""
    dfa_fields = {f.name for f in dataclasses.fields(fsm.dfa)}
    dfa = dataclasses.replace(fsm.dfa, **{k: v for k, v in arrays.items() if k in dfa_fields})
    index = dataclasses.replace(fsm.index, **{k: v for k, v in arrays.items() if k not in dfa_fields})
    bad = TokenFSM(dfa, index, fsm.vocab_bytes, fsm.vocab_offsets, fsm.fingerprint, fsm.eos_token_id, fsm.forced)
    monkeypatch.setattr(bad, "check", lambda *args, **kwargs: None, raising=False)
    return bad


def test_tampered_mask_table_fails_only_its_request(tiny, alone, monkeypatch):
    fsm = tiny.constraints.get(REGEX, None)
    bad = _tampered(fsm, monkeypatch, dense_id=np.full_like(fsm.index.dense_id, 10**6))
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("tampered", GOOD, {"constraint": bad}), "IndexError")


def test_tampered_transitions_fail_only_their_request(tiny, alone, monkeypatch):
    fsm = tiny.constraints.get(REGEX, None)
    bad = _tampered(fsm, monkeypatch, transitions=np.full_like(fsm.dfa.transitions, 10**6))
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("tampered", GOOD, {"constraint": bad}), "IndexError")


def test_a_table_with_a_dead_end_fails_its_request_instead_of_ending_invalid(tiny, alone, monkeypatch):
    """A state that allows no token: sampling it would argmax to token 0 (a stop token may end the
    output as "stop", invalid); the request fails with the dead end named instead."""
    fsm = tiny.constraints.get(REGEX, None)
    bad = _tampered(fsm, monkeypatch, dense_id=np.full_like(fsm.index.dense_id, -1),
                    sparse_ptr=np.zeros_like(fsm.index.sparse_ptr))
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("dead end", {**GOOD, "stop_token_ids": [0]}, {"constraint": bad}),
                        "allows no token")


def test_jump_forward_failure_at_admission_fails_only_its_request(tiny, alone, monkeypatch):
    fsm = tiny.constraints.get('\\{"name": "[a-z]{1,8}"\\}', None)  # forces `{"name": "` at once

    def broken(state):
        raise ValueError("injected jump-forward fault")

    monkeypatch.setattr(fsm, "jump_forward", broken)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad jump", GOOD, {"constraint": fsm}), "injected jump-forward fault")


def test_score_failure_fails_only_its_request(tiny, alone, monkeypatch):
    """A score request fails in one continuation's logprobs: its siblings and parent KV go back,
    generate requests beside it are untouched, and a later score works."""
    import executor.runtime.scheduler as scheduler_module

    real = scheduler_module.compute_logprobs
    prompt = tiny.encode("Which one? Answer:")
    conts = [[100, 200, 300], [101, 201], [5], [400, 500, 600, 700]]
    expected = tiny.score(prompt, conts)["logprobs"]

    def compute(logits, token_ids, top_k=0):
        if token_ids.tolist() == [201, 99]:  # the second continuation's tokens after its first
            raise RuntimeError("injected score fault")
        return real(logits, token_ids, top_k)

    monkeypatch.setattr(scheduler_module, "compute_logprobs", compute)
    with bounded(seconds=20, mem_mb=300):
        prompts = list(alone)
        with tiny.group() as group:
            handles = [group.send(GenerateRequest(tiny.encode(p), GOOD)) for p in prompts]
            bad = group.send(ScoreRequest(prompt, [[100, 200, 300], [101, 201, 99], [5], [400, 500, 600, 700]]))
        with pytest.raises(EngineError, match="injected score fault"):
            bad.result(timeout=30)
        assert [h.result(timeout=30)["output_ids"] for h in handles] == list(alone.values())
        assert_kv_clean(tiny)
        monkeypatch.undo()
        got = tiny.score(prompt, conts)["logprobs"]
        assert [[round(x, 4) for x in c] for c in got] == [[round(x, 4) for x in c] for c in expected]


def test_streamed_publish_failure_fails_only_its_request(tiny, alone, monkeypatch):
    real = IncrementalDetokenizer.pop_delta

    def pop_delta(self):
        if "<<boom>>" in self._stops and len(self._ids) >= 3:
            raise RuntimeError("injected publish fault")
        return real(self)

    monkeypatch.setattr(IncrementalDetokenizer, "pop_delta", pop_delta)
    with bounded(seconds=20, mem_mb=300):
        run_beside_good(tiny, alone, ("bad stream", {**GOOD, "stop": ["<<boom>>"]}, {"stream": True}),
                        "injected publish fault")


def test_forward_failure_fails_the_batch_and_the_engine_keeps_serving(tiny_model_dirs, monkeypatch):
    with bounded(seconds=20, mem_mb=400), Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        monkeypatch.setattr(engine.runner, "forward", lambda batch: (_ for _ in ()).throw(RuntimeError("gpu fell off")))
        handles = [engine.send(GenerateRequest(engine.encode(p), GOOD)) for p in good_prompts(3)]
        for h in handles:
            with pytest.raises(EngineError, match="gpu fell off"):
                h.result(timeout=30)
        assert engine._thread.is_alive()
        assert engine.generate("after", GOOD)["meta_info"]["completion_tokens"] == 10
        assert_kv_clean(engine)


def test_engine_thread_survives_a_failed_rebuild(tiny_model_dirs, monkeypatch):
    """If even the rebuild after a failed step raises, requests are refused (never hang) until a
    rebuild works again."""
    with bounded(seconds=20, mem_mb=400), Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        def no_memory(dtype):
            raise MemoryError("no memory for the KV pool")

        monkeypatch.setattr(engine.runner, "forward", lambda batch: (_ for _ in ()).throw(RuntimeError("gpu fell off")))
        monkeypatch.setattr(engine, "_build_runtime", no_memory)
        with pytest.raises(EngineError, match="gpu fell off"):
            engine.generate("first", GOOD)
        with pytest.raises(EngineError, match="could not be rebuilt.*no memory"):
            engine.generate("second", GOOD)
        monkeypatch.delattr(engine, "_build_runtime")  # back to the class's (a fresh runner, too)
        assert engine.generate("third", GOOD)["meta_info"]["completion_tokens"] == 10
        assert engine._thread.is_alive()
        assert_kv_clean(engine)


def test_tampered_constraint_tables_are_refused_on_entry(tiny):
    fsm = tiny.constraints.get(REGEX, None)
    if not hasattr(TokenFSM, "check"):
        pytest.skip("TokenFSM.check has not landed yet")
    bad = TokenFSM(dataclasses.replace(fsm.dfa, transitions=np.full_like(fsm.dfa.transitions, 10**6)),
                   fsm.index, fsm.vocab_bytes, fsm.vocab_offsets, fsm.fingerprint, fsm.eos_token_id, fsm.forced)
    with bounded(seconds=5, mem_mb=200), pytest.raises(ValueError, match="constraint.*transitions"):
        tiny.send(GenerateRequest(tiny.encode("hi"), GOOD, constraint=bad))


# -- the real model under mixed load --------------------------------------------------------------------
@pytest.mark.slow
def test_mixed_load_on_the_default_model(default_model_dir, monkeypatch):
    """64 concurrent requests, 8 of them hostile (4 refused on entry, 4 failing inside the steps):
    the 56 good ones give exactly their solo outputs, and the engine serves the next request."""
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    topics = ["the sea", "a mountain", "bread", "a train", "an owl", "glass", "music", "salt"]
    prompts = [f"Write one sentence about {topics[i % 8]} (variation {i})." for i in range(56)]
    options = {"device": "cpu", "dtype": "float32", "max_total_tokens": 16384}
    with bounded(seconds=120, mem_mb=3000):
        with Engine(model_path=str(default_model_dir), **options) as solo:
            expected = [solo.generate(p, params)["output_ids"] for p in prompts]
        with Engine(model_path=str(default_model_dir), **options) as engine:
            fsm = engine.constraints.get(REGEX, None)
            bad_masks = _tampered(fsm, monkeypatch, dense_id=np.full_like(fsm.index.dense_id, 10**6))
            bad_transitions = TokenFSM(
                dataclasses.replace(fsm.dfa, transitions=np.full_like(fsm.dfa.transitions, 10**6)),
                fsm.index, fsm.vocab_bytes, fsm.vocab_offsets, fsm.fingerprint, fsm.eos_token_id, fsm.forced)
            if not hasattr(TokenFSM, "check"):  # until the entry check lands it fails inside a step
                monkeypatch.setattr(bad_transitions, "check", lambda *a, **k: None, raising=False)
            sampler, real_sample = engine.scheduler.sampler, engine.scheduler.sampler.sample

            def sample(logits, batch, allowed=None):
                if any(p.seed == 4242 for p in batch.params):
                    raise RuntimeError("injected sampling fault")
                return real_sample(logits, batch, allowed)

            real_add = IncrementalDetokenizer.add

            def add(self, token_id):
                if "<<boom>>" in self._stops and len(self._ids) >= 3:
                    raise UnicodeError("injected detokenizer fault")
                real_add(self, token_id)

            monkeypatch.setattr(sampler, "sample", sample)
            monkeypatch.setattr(IncrementalDetokenizer, "add", add)
            refused_on_entry = [
                ("x", {"temperature": math.inf}, {}),
                ("x", {"top_k": 0}, {}),
                ("x", {"max_new_tokens": 8, "stop": 5}, {}),
                ("word " * 9000, params, {}),  # longer than the model's context
            ]
            failing_in_step = [
                ("masks", params, {"constraint": bad_masks}),
                ("sampler", {**params, "seed": 4242}, {}),
                ("detokenizer", {**params, "stop": ["<<boom>>"]}, {}),
            ]
            transitions = ("transitions", params, {"constraint": bad_transitions})
            (refused_on_entry if hasattr(TokenFSM, "check") else failing_in_step).append(transitions)
            refused, failing, handles = 0, [], []
            with engine.group() as group:  # one step takes them all
                for i, prompt in enumerate(prompts):
                    handles.append(group.send(GenerateRequest(engine.encode(prompt), params)))
                    if i % 7 == 3 and refused_on_entry:
                        text, bad_params, fields = refused_on_entry.pop()
                        with pytest.raises(RequestError):
                            group.send(GenerateRequest(engine.encode(text), bad_params, **fields))
                        refused += 1
                    elif i % 7 == 5 and failing_in_step:
                        text, bad_params, fields = failing_in_step.pop()
                        failing.append(group.send(GenerateRequest(engine.encode(text), bad_params, **fields)))
            assert refused + len(failing) == 8
            for h in failing:
                with pytest.raises(EngineError, match=h.req.rid):
                    h.result(timeout=60)
            assert [h.result(timeout=60)["output_ids"] for h in handles] == expected
            assert_kv_clean(engine)
            monkeypatch.undo()
            assert engine.generate(prompts[0], params)["output_ids"] == expected[0]
