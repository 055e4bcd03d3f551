"""Chained generations (gen -> known text -> gen inside one running request): the runtime's chains
give exactly the prompt and output of sending the second gen on the whole text, compiled programs
with chains give exactly the -O0 and eager text, and every way a chain can end early is safe."""

from __future__ import annotations

import random

import pytest

import sgc
from executor.program import graph_chain, graph_run
from executor.program.graph_llm import make_run_defaults
from executor.runtime.engine import Engine
from executor.runtime.engine_chain import ChainTokenizer
from executor.runtime.runtime_client import ChainedGen, GenerateRequest, RequestError
from executor.runtime.tokenizer import Tokenizer

TURN = "<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"max_new_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def runtime(tiny_model_dirs):
    with sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu") as rt:
        yield rt


@pytest.fixture(scope="module")
def engine(runtime) -> Engine:
    return runtime.engine


@sgc.function
def chat(s, q1, q2, q3):
    s += sgc.system("You are terse.")
    s += sgc.user(q1)
    s += sgc.assistant(sgc.gen("a1", max_tokens=6))
    s += sgc.user(q2)
    s += sgc.assistant(sgc.gen("a2", max_tokens=5, stop="."))
    s += sgc.user(q3)
    s += sgc.assistant(sgc.gen("a3", max_tokens=4))


@sgc.function
def form(s, name):
    s += "Name: " + name + "\nJob:" + sgc.gen("job", max_tokens=5, stop="\n")
    s += "\nCity:" + sgc.gen("city", max_tokens=5, stop="\n") + "\nAge:" + sgc.gen("age", regex=r"[1-9][0-9]")


def test_a_chained_request_equals_the_second_request_sent_on_the_whole_text(engine) -> None:
    tok = engine.tokenizer
    forced1, forced2 = TURN.format(q="And a fruit?"), TURN.format(q="A tree?")
    first = engine.send(GenerateRequest(tok.encode(PROMPT), GREEDY, then=ChainedGen(
        PROMPT, forced1, GREEDY, then=ChainedGen("", forced2, dict(GREEDY, max_new_tokens=3)))))
    second, third = first.chained, first.chained.chained
    out1, out2, out3 = first.result(), second.result(), third.result()
    assert third.chained is None
    # The reference: each gen sent by a client on the whole text so far.
    text2 = PROMPT + out1["text"] + forced1
    ref2 = engine.generate(text2, GREEDY)
    text3 = text2 + ref2["text"] + forced2
    ref3 = engine.generate(text3, dict(GREEDY, max_new_tokens=3))
    assert second.req.input_ids == tok.encode(text2) and third.req.input_ids == tok.encode(text3)
    assert (out2["text"], out2["output_ids"]) == (ref2["text"], ref2["output_ids"])
    assert (out3["text"], out3["output_ids"]) == (ref3["text"], ref3["output_ids"])
    # The sequence was kept: the second prompt's shared tokens came from the first request's KV.
    assert out2["meta_info"]["cached_tokens"] >= len(tok.encode(PROMPT))
    engine.kv_manager.check_integrity(engine.scheduler.all_requests())


def test_an_aborted_request_ends_its_chain(engine) -> None:
    ids = engine.tokenizer.encode(PROMPT)

    def chained_request(max_new_tokens: int = 6) -> GenerateRequest:
        return GenerateRequest(ids, {"max_new_tokens": max_new_tokens, "ignore_eos": True},
                               then=ChainedGen(PROMPT, "\nnext:", GREEDY, then=ChainedGen("", "\nlast:", GREEDY)))

    # Aborted before the engine took it: every link finishes aborted, with no output.
    with engine.group() as group:
        first = group.send(chained_request())
        first.abort()
    for handle in (first, first.chained, first.chained.chained):
        out = handle.result(timeout=60)
        assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []
    # The chained request aborted while its predecessor runs: the predecessor finishes, the chain ends.
    first = engine.send(chained_request())
    first.chained.abort()
    assert first.result(timeout=60)["meta_info"]["finish_reason"]["type"] == "length"
    assert first.chained.result(timeout=60)["meta_info"]["finish_reason"]["type"] == "abort"
    assert first.chained.chained.result(timeout=60)["meta_info"]["finish_reason"]["type"] == "abort"
    # Aborted while running (or finished just before: then its chain ran).
    first = engine.send(chained_request(max_new_tokens=500))
    first.abort()
    if first.result(timeout=60)["meta_info"]["finish_reason"]["type"] == "abort":
        assert first.chained.result(timeout=60)["meta_info"]["finish_reason"]["type"] == "abort"
    first.chained.chained.result(timeout=60)
    engine.kv_manager.check_integrity(engine.scheduler.all_requests())


def test_bad_chains_are_refused_at_send(engine) -> None:
    ids = engine.tokenizer.encode(PROMPT)
    with pytest.raises(RequestError, match="then must be a ChainedGen"):
        engine.send(GenerateRequest(ids, GREEDY, then="more text"))  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="forced_text must be a string"):
        engine.send(GenerateRequest(ids, GREEDY, then=ChainedGen(PROMPT, None)))  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="max_new_tokens"):
        engine.send(GenerateRequest(ids, GREEDY, then=ChainedGen(PROMPT, "x", {"max_new_tokens": -1})))
    assert engine.info().chains


def test_the_tail_tokenization_equals_tokenizing_the_whole_text(default_model_dir) -> None:
    """Generated text that merges with the prompt's tail or the forced text, odd whitespace, specials."""
    tok = Tokenizer(default_model_dir)
    chains = ChainTokenizer(tok)
    assert chains.tail_safe
    rng = random.Random(0)
    pieces = ["<|im_start|>", "<|im_end|>", "\n", " ", "  ", "ab", "cd", "é", "user", "assistant\n", ":", "x y"]
    for _ in range(300):
        prompt = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        generated = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        forced = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        ids = tok.encode(prompt)
        if not ids:
            continue
        assert chains.prompt_ids(ids, prompt, generated, forced) == tok.encode(prompt + generated + forced)
    assert chains.num_tail > 0


def _run(runtime, fn, args, level):
    defaults = make_run_defaults(temperature=0, max_new_tokens=8)
    return runtime.run_function(fn, args, defaults, opt_level=level)


@pytest.mark.parametrize(("fn", "args"), [(chat, {"q1": "Hi.", "q2": "Why?", "q3": "Ok"}),
                                          (form, {"name": "Ada"})])
def test_compiled_with_chains_equals_o0_and_eager(runtime, fn, args) -> None:
    scheduler = runtime.engine.scheduler
    before = scheduler.num_chained
    o0 = _run(runtime, fn, args, 0)
    assert scheduler.num_chained == before
    compiled = _run(runtime, fn, args, 1)
    assert scheduler.num_chained >= before + 2  # every hop of the program ran inside one request
    eager = fn.run(backend=runtime, eager=True, temperature=0, max_new_tokens=8, **args)
    for other in (o0, eager):
        assert compiled.text() == other.text()
        assert compiled.messages() == other.messages()
        assert compiled.snapshot()["variables"] == other.snapshot()["variables"]
    runtime.engine.kv_manager.check_integrity(scheduler.all_requests())


def test_a_chain_the_executor_cannot_adopt_is_aborted_and_the_gen_sent(runtime, monkeypatch) -> None:
    """If the runtime was told the wrong forced text, the loop finds the state's text differs, aborts
    the chained request and sends the gen itself: the output is still -O0's."""
    real = graph_chain.plan_chain

    def wrong(*a, **k):
        planned = real(*a, **k)
        if planned is None:
            return None
        then, link = planned
        bad = ChainedGen(then.prompt_text, then.forced_text + " WRONG", then.params, then.options, then.constraint,
                         then.follow_up, then.then)
        return bad, graph_chain.ChainLink(link.node, link.forced_text + " WRONG", link.then)

    args = {"q1": "Hello.", "q2": "Why not?", "q3": "Fine"}
    expected = _run(runtime, chat, args, 0).text()
    before = runtime.engine.scheduler.num_chained
    monkeypatch.setattr(graph_run, "plan_chain", wrong)
    assert _run(runtime, chat, args, 1).text() == expected
    assert runtime.engine.scheduler.num_chained >= before + 1
    runtime.engine.kv_manager.check_integrity(runtime.engine.scheduler.all_requests())


def test_the_http_client_refuses_chains() -> None:
    pytest.importorskip("httpx")
    from sgc.serve.client import HTTPRuntimeClient

    client = HTTPRuntimeClient.__new__(HTTPRuntimeClient)
    client._closed = False
    with pytest.raises(RequestError, match="chained"):
        client._prepare(GenerateRequest([1, 2], GREEDY, then=ChainedGen("x", "y")), None)


@pytest.mark.slow
def test_many_chained_programs_under_kv_pressure_equal_o0(tiny_model_dirs) -> None:
    """A pool too small for every conversation at once: chained requests are retracted and resumed
    like any other, and the batch's texts are still -O0's."""
    rows = [{"q1": f"Hi {i}.", "q2": "Why?" * (i % 3 + 1), "q3": "Ok"} for i in range(6)]
    defaults = make_run_defaults(temperature=0, max_new_tokens=8, ignore_eos=True)
    with sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=300) as runtime:
        o0 = runtime.run_function_batch(chat, rows, defaults, opt_level=0)
        before = runtime.engine.scheduler.num_chained
        compiled = runtime.run_function_batch(chat, rows, defaults, opt_level=1)
        assert runtime.engine.scheduler.num_chained > before
        assert runtime.engine.scheduler.num_retractions > 0  # the pool really was too small
        assert [s.text() for s in compiled] == [s.text() for s in o0]
        runtime.engine.kv_manager.check_integrity(runtime.engine.scheduler.all_requests())
