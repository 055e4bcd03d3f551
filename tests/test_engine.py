"""Engine behaviour: batching, prefix reuse, memory pressure, score, streaming, and bad input."""

from __future__ import annotations

import time

import pytest

from executor.runtime.engine import Engine, EngineError
from executor.runtime.runtime_client import GenerateRequest
from executor.runtime.sampling import SamplingParams

GREEDY = {"temperature": 0, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        yield engine


def prompts(n: int) -> list[str]:
    topics = ["rivers", "stars", "bread", "trains", "owls", "glass", "music", "salt"]
    return [f"Question {i}: tell me about {topics[i % len(topics)]} number {i * 7}." for i in range(n)]


# -- outputs do not depend on scheduling ----------------------------------------------------------
def test_batch_equals_one_by_one(tiny):
    ps = prompts(6)
    batched = [o["output_ids"] for o in tiny.generate(ps, GREEDY)]
    single = [tiny.generate(p, GREEDY)["output_ids"] for p in ps]
    assert batched == single


@pytest.mark.parametrize("options", [
    {"chunk_size": 5, "max_prefill_tokens": 16},
    {"disable_radix_cache": True},
    {"schedule_policy": "fcfs"},
])
def test_scheduler_options_keep_outputs(tiny, tiny_model_dirs, options):
    ps = prompts(5)
    expected = [o["output_ids"] for o in tiny.generate(ps, GREEDY)]
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", **options) as other:
        assert [o["output_ids"] for o in other.generate(ps, GREEDY)] == expected


def test_tiny_kv_budget_retracts_and_completes(tiny_model_dirs):
    """64 concurrent requests with KV room for about 8: all finish with the unlimited outputs."""
    ps = prompts(64)
    params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as big:
        expected = [o["output_ids"] for o in big.generate(ps, params)]
        max_prompt = max(len(big.encode(p)) for p in ps)
    room_for_8 = 8 * (max_prompt + 16)
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=room_for_8) as small:
        got = [o["output_ids"] for o in small.generate(ps, params)]
        assert small.stats()["num_retractions"] > 0, "the budget was meant to force retraction"
    assert got == expected


def test_prefix_cache_reuse_is_reported(tiny):
    shared = "A long shared system prompt about many things. " * 8
    first = tiny.generate(shared + "First question?", GREEDY)
    second = tiny.generate(shared + "Second question?", GREEDY)
    assert first["meta_info"]["cached_tokens"] < 10
    assert second["meta_info"]["cached_tokens"] >= len(tiny.encode(shared)) - 2


def test_concurrent_requests_with_shared_prefix_compute_it_once(tiny):
    shared = "Fork branches share this context: " + "alpha beta gamma delta " * 10
    outs = tiny.generate([shared + f" branch {i}" for i in range(4)], GREEDY)
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    assert cached[0] >= 0 and all(c > 30 for c in cached[1:]), cached


# -- sampling options ---------------------------------------------------------------------------------
def test_stop_string_is_trimmed_and_never_streamed(tiny):
    full = tiny.generate("Stop test:", {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True})
    text = full["text"]
    assert len(text) > 6
    stop = text[3:6]
    out = tiny.generate("Stop test:", {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True, "stop": stop})
    assert out["text"] == text[: text.index(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    chunks = list(tiny.generate("Stop test:", {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True,
                                               "stop": stop}, stream=True))
    streamed = "".join(c["text"] for c in chunks)
    assert streamed == out["text"] and stop not in streamed
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "stop"


def test_stop_token_ids_and_length(tiny):
    free = tiny.generate("Count:", {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True})
    target = free["output_ids"][4]
    out = tiny.generate("Count:", {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True,
                                   "stop_token_ids": [target]})
    first = free["output_ids"].index(target)
    assert out["output_ids"] == free["output_ids"][: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": target}
    assert free["meta_info"]["finish_reason"] == {"type": "length", "length": 10}


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny):
    params = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 12, "seed": 42, "ignore_eos": True}
    a = tiny.generate("Seeded:", params)["output_ids"]
    b = tiny.generate(["Seeded:", "Another prompt", "Third"], params)[0]["output_ids"]
    assert a == b


def test_output_logprobs_and_top_logprobs(tiny):
    out = tiny.generate("Logprobs:", GREEDY, return_logprob=True, top_logprobs_num=3)
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == len(out["output_ids"])
    for (lp, tok, _), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert top[0][1] == tok and abs(top[0][0] - lp) < 1e-6  # greedy picks the top token
        assert top[0][0] >= top[1][0] >= top[2][0]


def test_score_equals_prompt_logprobs_of_each_continuation(tiny):
    prompt = tiny.encode("Which is heavier, a feather or a stone? Answer:")
    conts = [tiny.tokenizer.encode(c, add_special_tokens=False) for c in [" a stone", " a feather", " x"]]
    scored = tiny.score(prompt, conts)["logprobs"]
    for cont, lps in zip(conts, scored):
        ref = tiny.generate(input_ids=prompt + cont, sampling_params={"max_new_tokens": 1},
                            return_logprob=True, logprob_start_len=len(prompt))
        expected = [lp for lp, _, _ in ref["meta_info"]["input_token_logprobs"]]
        assert len(lps) == len(cont) == len(expected)
        assert max(abs(a - b) for a, b in zip(lps, expected)) < 1e-4


def test_score_works_without_radix_cache(tiny_model_dirs, tiny):
    prompt = tiny.encode("Score me:")
    conts = [[100, 200, 300], [5], [400, 500]]
    expected = tiny.score(prompt, conts)["logprobs"]
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", disable_radix_cache=True) as e:
        got = e.score(prompt, conts)["logprobs"]
    for a, b in zip(got, expected):
        assert a == pytest.approx(b, abs=1e-5)


# -- bad input: clear errors, never a hang ---------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "hi", "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"prompt": "hi", "sampling_params": {"top_p": 0}}, "top_p"),
    ({"prompt": "hi", "sampling_params": {"top_p": 1.5}}, "top_p"),
    ({"prompt": "hi", "sampling_params": {"stop": 5}}, "stop"),
    ({"prompt": "hi", "sampling_params": {"stop": ["ok", 3]}}, "stop"),
    ({"prompt": "hi", "sampling_params": {"temprature": 0.5}}, "temprature"),
    ({"input_ids": []}, "input_ids"),
    ({"prompt": "hi", "input_ids": [1, 2]}, "exactly one"),
])
def test_bad_requests_raise_clear_errors(tiny, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny.generate(**kwargs)


def test_prompt_longer_than_context(tiny):
    with pytest.raises(ValueError, match="context"):
        tiny.generate(input_ids=[5] * 600, sampling_params={"max_new_tokens": 4})


def test_unknown_model_and_missing_path():
    with pytest.raises((ValueError, FileNotFoundError), match="no-such-model"):
        Engine(model_path="no-such-model")
    with pytest.raises((ValueError, FileNotFoundError), match="missing_dir"):
        Engine(model_path="/tmp/definitely/missing_dir")


def test_step_failure_fails_requests_and_engine_recovers(tiny_model_dirs, monkeypatch):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        def broken(batch):
            raise RuntimeError("injected fault")

        monkeypatch.setattr(engine.runner, "forward", broken)
        with pytest.raises(EngineError, match="injected fault"):
            engine.generate("hello", GREEDY)
        # The runtime (runner included) was rebuilt after the failure; the engine serves again.
        assert engine.generate("hello", GREEDY)["meta_info"]["completion_tokens"] > 0


def test_generate_after_shutdown_is_an_error(tiny_model_dirs):
    engine = Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu")
    engine.shutdown()
    with pytest.raises(EngineError, match="shut down"):
        engine.generate("hello", GREEDY)


def test_chat_turns_reuse_the_conversation_so_far(tiny):
    """Turn 2's prompt is turn 1's prompt + answer + a new message: all of turn 1 is cached."""
    turn1 = tiny.encode("<|im_start|>user\nHello there, how are you today?<|im_end|>\n<|im_start|>assistant\n")
    out1 = tiny.generate(input_ids=turn1, sampling_params={"temperature": 0, "max_new_tokens": 10,
                                                           "ignore_eos": True})
    turn2 = turn1 + out1["output_ids"] + tiny.encode("<|im_end|>\n<|im_start|>user\nAnd tomorrow?")
    out2 = tiny.generate(input_ids=turn2, sampling_params=GREEDY)
    # Every token of turn 1 whose KV was computed (all but the last sampled one) is reused.
    assert out2["meta_info"]["cached_tokens"] == len(turn1) + len(out1["output_ids"]) - 1


def test_requests_arriving_mid_decode_join_the_running_batch(tiny):
    """Staggered arrivals (prefill mixed into decode passes) give the same greedy outputs."""
    ps = prompts(6)
    # Long enough that a request is still decoding when the next arrives 2 ms later (the tiny
    # model's step is well under a millisecond: with 16 tokens and 20 ms gaps each request could
    # finish alone, which made this test depend on the machine's speed).
    params = {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True}
    expected = [tiny.generate(p, params)["output_ids"] for p in ps]
    before = tiny.stats()["num_forward_passes"]
    handles = []
    for p in ps:
        handles.append(tiny.send(GenerateRequest(tiny.encode(p), SamplingParams.from_dict(params))))
        time.sleep(0.002)
    assert [h.result()["output_ids"] for h in handles] == expected
    passes = tiny.stats()["num_forward_passes"] - before
    assert passes < 6 * 64, passes  # requests shared passes instead of running one after another


def test_bad_constraints_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        tiny.generate("hi", {"json_schema": "{not json", "max_new_tokens": 4})
    with pytest.raises(ValueError, match="regex position"):
        tiny.generate("hi", {"regex": "(", "max_new_tokens": 4})


def test_constraint_compiled_for_another_tokenizer_is_refused(tiny):
    from compiler.constraints import Vocabulary, compile_regex

    toy = Vocabulary.from_strings(["a", "b", "ab"])
    fsm = compile_regex("ab", toy)
    with pytest.raises(ValueError, match="different tokenizer"):
        tiny.send(GenerateRequest(tiny.encode("hi"), SamplingParams.from_dict({"max_new_tokens": 4}), constraint=fsm))


def _grouped_outputs(engine, prompts: list[str], group: str | None) -> tuple[list[list[int]], int]:
    before = engine.stats()["num_shared_prefix_tokens"]
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    handles = [engine.send(GenerateRequest(engine.encode(p), params, prefix_group=group)) for p in prompts]
    outs = [h.result()["output_ids"] for h in handles]
    return outs, engine.stats()["num_shared_prefix_tokens"] - before


SHARED_PREFIX = "A long shared context that every branch of the fork reads before its own question. " * 3


@pytest.mark.parametrize("radix_cache", [True, False])
def test_prefix_group_decodes_the_same_tokens(tiny_model_dirs, radix_cache):
    """Branches declared as one prefix group decode exactly as undeclared ones; with the radix cache
    their prefix slots are shared and read once per group, without it nothing is shared."""
    prompts = [SHARED_PREFIX + q for q in ("First?", "Second one?", "Third!", "4")]
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", disable_radix_cache=not radix_cache) as engine:
        plain, saved_plain = _grouped_outputs(engine, prompts, None)
        grouped, saved = _grouped_outputs(engine, prompts, "fork-1")
        wrong_hint, saved_wrong = _grouped_outputs(engine, ["Nothing in common " * 4, "at all " * 9], "fork-2")
        alone = [engine.generate(input_ids=engine.encode(p), sampling_params={"max_new_tokens": 8,
                 "temperature": 0.0, "ignore_eos": True})["output_ids"] for p in ["Nothing in common " * 4, "at all " * 9]]
    assert grouped == plain
    assert wrong_hint == alone and saved_wrong == 0 and saved_plain == 0
    if radix_cache:
        assert saved >= 3 * 32 * 7  # 3 branches x >= 32 prefix tokens x 7 decode steps not re-read
    else:
        assert saved == 0


def test_stats_count_prompt_cached_and_generated_tokens(tiny):
    before = tiny.stats()
    prompt = "Counting tokens for the benchmark harness."
    outs = [tiny.generate(prompt, {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}) for _ in range(2)]
    tiny.score(prompt, [" yes", " no"])
    after = tiny.stats()
    delta = {k: after[k] - before[k] for k in ("num_finished_requests", "num_prompt_tokens",
                                                "num_cached_prompt_tokens", "num_generated_tokens")}
    n = outs[0]["meta_info"]["prompt_tokens"]
    conts = len(tiny.encode(" yes")) + len(tiny.encode(" no"))
    assert delta["num_finished_requests"] == 3
    assert delta["num_generated_tokens"] == 10
    assert delta["num_prompt_tokens"] == 2 * n + n + conts
    assert delta["num_cached_prompt_tokens"] == sum(o["meta_info"]["cached_tokens"] for o in outs) + n - 1
