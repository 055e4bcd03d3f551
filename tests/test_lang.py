"""The language and its eager interpreter: SGLang's semantics, on a fake engine (exact requests) and on a
tiny random model (end to end)."""

from __future__ import annotations

import re
import time

import pytest
from test_lang_support import FakeEngine

import sgc
from compiler.chat_template import FORMATS, ChatFormat, ChatTemplateError
from compiler.errors import CompileError, ProgramError
from compiler.lang_sampling import (
    DTYPE_REGEXES,
    RunDefaults,
    choice_token_ids,
    choices_method,
    greedy_token_selection,
    sampling_params,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from executor.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(default_model_dir) -> Tokenizer:
    return Tokenizer(default_model_dir)


@pytest.fixture
def fake(tokenizer) -> FakeEngine:
    return FakeEngine(tokenizer)


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    runtime = sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


# -- chat roles --------------------------------------------------------------------------------------


def test_chat_format_is_derived_from_the_models_template(tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(tokenizer)
    assert fmt.roles["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert fmt.roles["assistant"] == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert fmt.default_system_prompt.startswith("You are a helpful AI assistant named SmolLM")
    assert fmt.end_of_turn == "<|im_end|>" and fmt.end_of_turn_token_id == 2
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert fmt.render(messages) == tokenizer.apply_chat_template(messages, add_generation_prompt=False)


def test_chat_formats_of_other_templates() -> None:
    llama3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
              " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}")
    fmt = ChatFormat.from_template(llama3, bos_token="<|begin_of_text|>")
    assert fmt.start == "<|begin_of_text|>" and fmt.default_system_prompt is None
    assert fmt.roles["user"] == FORMATS["llama-3"].roles["user"] and fmt.end_of_turn == "<|eot_id|>"
    assert ChatFormat.from_template(llama3, bos_token="<|begin_of_text|>", tokenizer_adds_bos=True).start == ""
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
              "[INST] {{ m['content'] }} [/INST]{% endfor %}")
    with pytest.raises(ChatTemplateError, match="raised: no system"):
        ChatFormat.from_template(strict)

    class Tok:
        chat_template, bos_token, eos_token, bos_token_id = strict, None, None, None

        def encode(self, text, add_special_tokens=True):
            return [1]

    assert ChatFormat.from_tokenizer(Tok()).name == "llama-2"  # sniffed from the template
    Tok.chat_template = None
    assert ChatFormat.from_tokenizer(Tok(), "Qwen2-0.5B").name == "chatml"
    assert ChatFormat.from_tokenizer(Tok(), "mystery").name == "default"


def test_roles_render_with_the_chat_template(fake, tokenizer) -> None:
    @sgc.function
    def chat(s):
        s += sgc.system("Be brief.")
        s += sgc.user("Hi")
        with s.assistant():
            s += sgc.gen("a", max_tokens=4)
        s += sgc.user_begin() + "More" + sgc.user_end()

    state = chat.run(backend=fake)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == state["a"]
    assert state.text() == tokenizer.apply_chat_template(messages, add_generation_prompt=False)


def test_default_system_prompt_goes_before_the_first_role(fake, tokenizer) -> None:
    @sgc.function
    def chat(s):
        s += sgc.user("Hi")

    state = chat.run(backend=fake)
    assert state.text() == tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert state.messages()[0]["role"] == "system" and len(state.messages()) == 2


def test_end_of_turn_is_a_stop_only_inside_assistant_roles(fake) -> None:
    @sgc.function
    def chat(s):
        s += "x" + sgc.gen("plain", stop="\n")
        s += sgc.assistant(sgc.gen("turn", stop="\n"))

    chat.run(backend=fake)
    plain, turn = (r["sampling_params"] for r in fake.requests)
    assert plain["stop"] == ["\n"] and "stop_token_ids" not in plain
    assert turn["stop"] == ["\n", "<|im_end|>"] and turn["stop_token_ids"] == [2]


# -- sampling parameters -----------------------------------------------------------------------------


def test_run_defaults_are_overridden_by_each_gens_own(fake) -> None:
    @sgc.function
    def prog(s):
        s += "a" + sgc.gen("x")
        s += sgc.gen("y", max_tokens=3, temperature=0.0, stop=["!"], top_k=5)

    prog.run(backend=fake, max_new_tokens=7, temperature=0.5, top_p=0.9, stop="?")
    x, y = (r["sampling_params"] for r in fake.requests)
    assert x == {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.0,
                 "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": False, "stop": ["?"]}
    assert y["max_new_tokens"] == 3 and y["temperature"] == 0.0 and y["stop"] == ["!"] and y["top_k"] == 5
    assert y["top_p"] == 0.9


def test_sampling_defaults_match_sglang() -> None:
    params = sampling_params({}, RunDefaults())
    assert params["max_new_tokens"] == 128 and params["temperature"] == 1.0 and params["top_k"] == -1


@pytest.mark.parametrize("dtype, regex", [(int, DTYPE_REGEXES["int"]), ("float", DTYPE_REGEXES["float"]),
                                          (bool, DTYPE_REGEXES["bool"]), (str, DTYPE_REGEXES["str"])])
def test_dtype_becomes_a_regex(fake, dtype, regex) -> None:
    @sgc.function
    def prog(s):
        s += "n=" + sgc.gen("n", dtype=dtype)

    prog.run(backend=fake)
    assert fake.requests[0]["sampling_params"]["regex"] == regex


def test_gen_int_gen_string_and_constraints(fake) -> None:
    @sgc.function
    def prog(s):
        s += "n=" + sgc.gen_int("n") + sgc.gen_string("t") + sgc.gen("j", json_schema={"type": "object"})

    prog.run(backend=fake)
    regexes = [r["sampling_params"].get("regex") for r in fake.requests]
    assert regexes[:2] == [DTYPE_REGEXES["int"], DTYPE_REGEXES["str"]]
    assert fake.requests[2]["sampling_params"]["json_schema"] == '{"type": "object"}'


def test_bad_gen_parameters_name_the_line(fake) -> None:
    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: gen: top_p must be in \(0, 1\]"):
        sgc.gen("x", top_p=2)
    with pytest.raises(CompileError, match="dtype must be int"):
        sgc.gen("x", dtype=list)
    with pytest.raises(CompileError, match="distinct"):
        sgc.select("x", ["a", "a"])


# -- select ------------------------------------------------------------------------------------------


def test_choice_tokens_follow_the_joint_tokenization(tokenizer) -> None:
    prompt = "Answer:"
    ids = tokenizer.encode(prompt)
    assert choice_token_ids(tokenizer, prompt, ids, " yes") == tokenizer.encode("Answer: yes")[len(ids):]
    # "Answer: " + "yes" merges across the boundary: the choice is tokenized on its own.
    prompt = "Answer: "
    ids = tokenizer.encode(prompt)
    joint = tokenizer.encode(prompt + "yes")
    assert joint[: len(ids)] != ids
    assert choice_token_ids(tokenizer, prompt, ids, "yes") == tokenizer.encode("yes", add_special_tokens=False)


def test_choice_methods() -> None:
    logprobs = [[-1.0, -5.0], [-2.0], [-1.0, -0.5, -0.5]]
    assert token_length_normalized(logprobs).index == 2  # means: -3, -2, -0.67
    assert greedy_token_selection(logprobs).index == 2  # position 0 ties 0 and 2; position 1: -5 < -0.5
    uncond = [[None, -5.0], [None], [None, -0.1, -0.1]]
    decision = unconditional_likelihood_normalized(logprobs, uncond)
    assert decision.index == 0 and decision.meta_info["normalized_unconditional_prompt_logprobs"][0] == -0.5


def test_select_scores_choices_and_picks_by_method(tokenizer) -> None:
    def score_fn(prompt, conts):
        return [[-0.1] * len(c) if tokenizer.decode(c).strip() == "banana split" else [-0.5] * len(c)
                for c in conts]

    engine = FakeEngine(tokenizer, score_fn=score_fn)

    @sgc.function
    def prog(s, method):
        s += "Pick:" + sgc.select("x", [" apple", " banana split"], choices_method=method)

    for method in ("token_length_normalized", sgc.greedy_token_selection, sgc.unconditional_likelihood_normalized):
        state = prog.run(backend=engine, method=method)
        assert state["x"] == " banana split" and state.text() == "Pick: banana split"
        assert state.get_meta_info("x")["method"] == choices_method(method).name
    prompt, conts = engine.score_calls[0]
    assert prompt == tokenizer.encode("Pick:") and len(conts) == 2
    # The unconditional method also scores each multi-token choice on its own first token.
    assert engine.score_calls[3] == (conts[1][:1], [conts[1][1:]]) and len(engine.score_calls) == 4


def test_gen_with_choices_is_a_select(fake) -> None:
    @sgc.function
    def prog(s):
        s += "Q" + sgc.gen("x", choices=["a", "b"])

    state = prog.run(backend=fake)
    assert state["x"] in ("a", "b") and not fake.requests and len(fake.score_calls) == 1


# -- fork and join -----------------------------------------------------------------------------------


def test_fork_copies_and_join_gathers_lists(fake) -> None:
    @sgc.function
    def prog(s):
        s += "Base." + sgc.gen("before")
        forks = s.fork(3)
        for i, f in enumerate(forks):
            assert f.text() == s.text() and f["before"] == s["before"]
            f += f" B{i}" + sgc.gen("x")
            if i == 1:
                f.set_var("only", i)
        forks.join()

    state = prog.run(backend=fake)
    assert isinstance(state["x"], list) and len(state["x"]) == 3 and len(set(state["x"])) == 3
    assert state["only"] == [None, 1, None]  # bound in one branch: nothing is dropped
    assert isinstance(state["before"], str)  # bound before the fork: untouched
    assert state.text() == "Base." + state["before"]  # gather mode keeps the parent's text
    assert [m["completion_tokens"] for m in state.get_meta_info("x")] == [2, 2, 2]


def test_join_concate_and_append(fake) -> None:
    @sgc.function
    def prog(s):
        s += "P:"
        forks = s.fork(2)
        forks[0] += " one" + sgc.gen("x")
        forks[1] += " two"
        s += " mid"
        forks.join("concate_and_append")

    state = prog.run(backend=fake)
    assert state.text() == "P: mid one" + state["x"][0] + " two"
    assert state["x"][1] is None


def test_forked_state_after_join_is_an_error(fake) -> None:
    @sgc.function
    def prog(s):
        s += "x"
        forks = s.fork(2)
        forks.join()
        forks[0] += "late"

    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: this forked state was joined at .*test_lang\.py:\d+"):
        prog.run(backend=fake)


# -- variables, scopes, calls ------------------------------------------------------------------------


def test_var_scope_set_var_and_meta_info(fake) -> None:
    @sgc.function
    def prog(s):
        s += "Q:"
        with s.var_scope("span"):
            s += " a" + sgc.gen("g")
        s.set_var("k", {"n": 1})

    state = prog.run(backend=fake)
    assert state["span"] == " a" + state["g"] and state["k"] == {"n": 1} and state.get_var("k") == {"n": 1}
    assert state.get_meta_info("g")["finish_reason"] == {"type": "stop"}


def test_nested_function_call_continues_the_state(fake) -> None:
    @sgc.function
    def inner(s, topic):
        s += f"About {topic}:" + sgc.gen("about")

    @sgc.function
    def outer(s):
        s += "Start. "
        inner(s, topic="cats")
        inner(s, "dogs")

    state = outer.run(backend=fake)
    assert state.text().startswith("Start. About cats:") and "About dogs:" in state.text()


# -- running -----------------------------------------------------------------------------------------


def test_run_batch_keeps_order_and_reports_errors_per_instance(fake) -> None:
    @sgc.function
    def prog(s, q):
        if q == "bad":
            raise ValueError("bad input")
        s += q + sgc.gen("a")

    states = prog.run_batch([{"q": "one"}, {"q": "bad"}, {"q": "three"}], backend=fake, num_threads=2,
                            progress_bar=True)
    assert states[0].text().startswith("one") and states[2].text().startswith("three")
    assert isinstance(states[1].error(), ProgramError) and states[0].error() is None
    with pytest.raises(ProgramError, match="instance 1 of prog failed: ValueError: bad input"):
        states[1]["a"]
    lazy = prog.run_batch([{"q": "x"}], backend=fake, generator_style=True)
    assert [s.text()[:1] for s in lazy] == ["x"]


def test_stream_and_text_iter(fake) -> None:
    @sgc.function
    def prog(s):
        s += "Hello" + sgc.gen("a") + "!"

    state = prog.run(backend=fake, stream=True)
    chunks = list(state.text_iter())
    assert "".join(chunks) == state.text() and len(chunks) >= 3
    assert "".join(state.text_iter("a")) == state["a"]


def test_program_errors_name_the_users_line(fake) -> None:
    @sgc.function
    def nested(s):
        with s.user():
            s += sgc.assistant("x")

    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: nested roles: assistant begins while the user"):
        nested.run(backend=fake)

    @sgc.function
    def other_role(s):
        forks = s.fork(1)
        with s.user():
            forks[0] += sgc.gen("x")

    with pytest.raises(CompileError, match="gen on a state that is not in a role, inside the user role block"):
        other_role.run(backend=fake)

    @sgc.function
    def prog(s, q):
        s += q

    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: prog\(\) got an unknown argument 'z'"):
        prog.run(backend=fake, q="a", z=1)
    def no_state(state):
        pass

    with pytest.raises(CompileError, match="the first parameter must be the state `s`"):
        sgc.function(no_state)
    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: @function cannot decorate a lambda"):
        sgc.function(lambda s: None)
    with pytest.raises(ProgramError, match="no backend"):
        prog.run(q="a")


def test_set_default_backend_and_runtime_are_lazy(fake) -> None:
    runtime = sgc.Runtime("not-a-model")
    assert not runtime.started and "not started" in repr(runtime)
    sgc.set_default_backend(fake)
    try:
        @sgc.function
        def prog(s):
            s += "a" + sgc.gen("x")

        assert prog.run()["x"]
    finally:
        sgc.set_default_backend(None)


# -- end to end on a tiny model ----------------------------------------------------------------------


def test_tiny_model_end_to_end(tiny) -> None:
    @sgc.function
    def prog(s, q):
        s += sgc.system("Be brief.")
        s += sgc.user(q)
        s += sgc.assistant(sgc.gen("a", max_tokens=6))
        forks = s.fork(2)
        for f in forks:
            f += "n=" + sgc.gen("n", dtype=int, max_tokens=4)
        forks.join()
        s += "ok? " + sgc.select("ok", ["yes", "no"])

    state = prog.run(q="Hi", temperature=0, backend=tiny)
    again = prog.run(q="Hi", temperature=0, backend=tiny)
    assert state.text() == again.text()  # greedy is deterministic
    assert all(re.fullmatch(DTYPE_REGEXES["int"], n) for n in state["n"])
    assert state["ok"] in ("yes", "no") and state.text().endswith(state["ok"])
    tok = tiny.engine.tokenizer
    assert state.text().startswith(tok.apply_chat_template(state.messages(), add_generation_prompt=False))
    started = time.perf_counter()
    streamed = prog.run(q="Hi", temperature=0, backend=tiny, stream=True)
    assert "".join(streamed.text_iter()) == state.text()
    assert time.perf_counter() - started < 60


def test_fork_group_iadd_and_copy(fake) -> None:
    @sgc.function
    def prog(s):
        s += "Q:"
        forks = s.fork(3)
        forks += " all"
        forks += [" a", " b", " c"]
        forks += lambda i: f" #{i}" + sgc.gen("x")
        forks.join("concate_and_append")
        twin = s.copy()
        twin += " twin"
        s.set_var("twin_text", twin.text())

    state = prog.run(backend=fake)
    x = state["x"]
    assert state.text() == f"Q: all a #0{x[0]} all b #1{x[1]} all c #2{x[2]}"
    assert state["twin_text"] == state.text() + " twin"


@pytest.mark.parametrize("what", ["state", "forks"])
def test_adding_a_state_to_a_state_is_an_error_eager_and_traced(fake, what) -> None:
    """The shared `s += item` dispatch (lang_state.StateBase._exec) refuses states and fork groups."""
    @sgc.function
    def adds_state(s):
        s += "x"
        other = s.fork(2) if what == "forks" else s
        s += other

    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: cannot add a state to a state"):
        adds_state.run(backend=fake)
    with pytest.raises(CompileError, match=r"test_lang\.py:\d+: cannot add a state to a state"):
        sgc.compile_function(adds_state)
