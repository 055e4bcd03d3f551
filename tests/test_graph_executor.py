"""The graph executor on hand-written IR and a tiny random model: text ops, LLM nodes, forks with
prefill pins, select methods, switches, host steps, errors, batching, streaming and stats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from compiler.ir import Join
from compiler.ir_interpreter import Interpreter
from compiler.lang_sampling import DTYPE_REGEXES
from compiler.lang_select import decide, prompt_ids, score_requests
from compiler.parser.ir_reader import parse_module
from compiler.prompt_state import PromptState, StateError
from executor.program.graph_executor import GraphExecutionError, GraphExecutor
from executor.runtime.engine import Engine
from executor.runtime.sampling import SamplingParams


@dataclass(frozen=True)
class Chat:
    """A minimal chat format (prefix/suffix per role): the least a format object needs."""

    default_system_prompt: str | None = None
    end_of_turn: str | None = "<|im_end|>"

    def prefix(self, role: str) -> str:
        return f"<|im_start|>{role}\n"

    def suffix(self, role: str) -> str:
        return "<|im_end|>\n"


CHAT = Chat()
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as e:
        yield e


def executor(engine, text: str, **kwargs) -> GraphExecutor:
    return GraphExecutor(engine, parse_module(text), kwargs.pop("chat_format", CHAT), **kwargs)


def direct_gen(engine, text: str, **params) -> str:
    params = {"temperature": 0.0, **params}
    return engine.generate(input_ids=prompt_ids(engine.tokenizer, text), sampling_params=params)["text"]


# -- straight-line programs -----------------------------------------------------------------------
CHAT_PROGRAM = """
func @main {
  %0 = arg name="topic"
  %1 = state_new
  %2 = role_begin %1 role="user"
  %3 = const value="Tell me about "
  %4 = append %2, %3
  %5 = append %4, %0
  %6 = role_end %5 role="user"
  %7 = role_begin %6 role="assistant"
  %8 = gen %7 name="answer" max_tokens=6  # chat.py:5
  %9 = role_end %8 role="assistant"
  %10 = output %9
}
"""


def test_straight_line_with_roles(engine):
    result = executor(engine, CHAT_PROGRAM).run({"topic": "owls"}, **GREEDY)
    state = result.state
    prompt = "<|im_start|>user\nTell me about owls<|im_end|>\n<|im_start|>assistant\n"
    answer = direct_gen(engine, prompt, max_new_tokens=6, stop=["<|im_end|>"])
    assert state["answer"] == answer
    assert state.text == prompt + answer + "<|im_end|>\n"
    assert state.messages == [{"role": "user", "content": "Tell me about owls"},
                              {"role": "assistant", "content": answer}]
    assert state.get_meta_info("answer")["completion_tokens"] <= 6


def test_default_system_prompt_is_inserted_before_the_first_user_message(engine):
    ex = executor(engine, CHAT_PROGRAM, chat_format=Chat(default_system_prompt="Be brief."))
    state = ex.run({"topic": "owls"}, **GREEDY).state
    assert state.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert state.messages[0] == {"role": "system", "content": "Be brief."}


def test_template_chat_format_is_accepted(engine):
    chat_template = pytest.importorskip("compiler.chat_template")
    fmt = chat_template.ChatFormat.from_tokenizer(engine.tokenizer)
    state = executor(engine, CHAT_PROGRAM, chat_format=fmt).run({"topic": "owls"}, **GREEDY).state
    expected = fmt.render([{"role": "user", "content": "Tell me about owls"}])
    assert state.text.startswith(expected + fmt.begin_text("assistant", 1))


def test_gen_stop_and_max_tokens(engine):
    text = "Count: one two three"
    free = direct_gen(engine, text, max_new_tokens=12, ignore_eos=True)
    assert len(free) > 6
    stop = free[3:6]
    program = f"""
func @main {{
  %0 = state_new
  %1 = const value={text!r}
  %2 = append %0, %1
  %3 = gen %2 name="a" max_tokens=12 stop=[{stop!r}] ignore_eos=true
  %4 = gen %3 name="b" max_tokens=3 ignore_eos=true
  %5 = output %4
}}""".replace("'", '"')
    state = executor(engine, program).run(**GREEDY).state
    assert state["a"] == direct_gen(engine, text, max_new_tokens=12, stop=[stop], ignore_eos=True)
    assert stop not in state["a"] and free.startswith(state["a"])
    assert state.get_meta_info("a")["finish_reason"]["type"] == "stop"
    assert state.get_meta_info("b")["completion_tokens"] == 3
    assert state["b"] == direct_gen(engine, text + state["a"], max_new_tokens=3, ignore_eos=True)
    assert state.text == text + state["a"] + state["b"]


def test_node_attributes_win_over_run_defaults(engine):
    program = """
func @main {
  %0 = state_new
  %1 = const value="Defaults:"
  %2 = append %0, %1
  %3 = gen %2 name="a" ignore_eos=true
  %4 = gen %3 name="b" max_tokens=2 ignore_eos=true
  %5 = output %4
}"""
    state = executor(engine, program).run(max_new_tokens=4, temperature=0.0).state
    assert state.get_meta_info("a")["completion_tokens"] == 4
    assert state.get_meta_info("b")["completion_tokens"] == 2


def test_dtype_int_and_host_step_parsing_it(engine):
    program = """
func @main {
  %0 = state_new
  %1 = const value="Number: "
  %2 = append %0, %1
  %3 = gen %2 name="n" max_tokens=6 dtype="int"
  %4 = getvar %3 name="n"
  %5 = host %4 func="t:parse" reason="int(s['n'])" line=4 returns="value"  # prog.py:4
  %6 = const value=" doubled is "
  %7 = append %3, %6
  %8 = host %7, %5 func="t:double" returns="state"
  %9 = output %8
}"""
    state = executor(engine, program, host_functions={
        "t:parse": int,
        "t:double": lambda s, n: s.appended(str(2 * n)).with_var("double", 2 * n),
    }).run(**GREEDY).state
    import re

    assert re.fullmatch(DTYPE_REGEXES["int"], state["n"])
    assert state["double"] == 2 * int(state["n"])
    assert state.text == f"Number: {state['n']} doubled is {2 * int(state['n'])}"


# -- forks ------------------------------------------------------------------------------------------
PREFIX = "Shared context for every branch: " + "alpha beta gamma delta " * 6 + "\n"


def fork_program(mode: str, optimized: bool) -> str:
    """Two branches each appending a question and generating; optimized: prefill + batch_gen."""
    head = f"""
func @main {{
  %0 = state_new
  %1 = const value="{PREFIX.replace(chr(10), chr(92) + 'n')}"
  %2 = append %0, %1"""
    if optimized:
        body = """
  %3 = prefill %2
  %4 = fork %3 n=2
  %5 = branch %4 index=0
  %6 = const value="First:"
  %7 = append %5, %6
  %8 = branch %4 index=1
  %9 = const value="Second:"
  %10 = append %8, %9
  %11 = batch_gen %7, %10 name="x" max_tokens=4 ignore_eos=true
  %12 = branch %11 index=0
  %13 = branch %11 index=1
  %14 = join %3, %12, %13 mode="MODE"
  %15 = output %14
}"""
    else:
        body = """
  %3 = fork %2 n=2
  %4 = branch %3 index=0
  %5 = const value="First:"
  %6 = append %4, %5
  %7 = gen %6 name="x" max_tokens=4 ignore_eos=true
  %8 = branch %3 index=1
  %9 = const value="Second:"
  %10 = append %8, %9
  %11 = gen %10 name="x" max_tokens=4 ignore_eos=true
  %12 = join %2, %7, %11 mode="MODE"
  %13 = output %12
}"""
    return head + body.replace("MODE", mode)


@pytest.mark.parametrize("mode", ["gather_variable", "concate_and_append"])
def test_fork_batch_gen_join_with_prefill(engine, mode):
    shared_before = engine.stats()["num_shared_prefix_tokens"]
    plain = executor(engine, fork_program(mode, optimized=False)).run(**GREEDY)
    assert engine.stats()["num_shared_prefix_tokens"] == shared_before  # separate gens: no declared group
    fused = executor(engine, fork_program(mode, optimized=True)).run(**GREEDY)
    # The batch_gen's branches decode as one prefix group (3 steps after the first token).
    assert engine.stats()["num_shared_prefix_tokens"] - shared_before >= 3 * 32
    expected = [direct_gen(engine, PREFIX + q, max_new_tokens=4, ignore_eos=True) for q in ("First:", "Second:")]
    for result in (plain, fused):
        assert result.state["x"] == expected
        if mode == "gather_variable":
            assert result.state.text == PREFIX
        else:
            assert result.state.text == PREFIX + "First:" + expected[0] + "Second:" + expected[1]
    stats = fused.stats["main"]
    assert stats[3]["num_requests"] == 1 and stats[3]["prompt_tokens"] == len(engine.encode(PREFIX))
    assert stats[11]["num_requests"] == 2
    prefix_tokens = len(engine.encode(PREFIX))
    assert stats[11]["cached_tokens"] >= 2 * (prefix_tokens - 1), stats[11]


def join_states(parent: PromptState, branches: list[PromptState], mode: str) -> PromptState:
    """The interpreter's `join` (the one place its meaning is written) on hand-made states."""
    return Interpreter(None).join(None, SimpleNamespace(op=Join(mode=mode)), parent, *branches)


def test_join_gathers_every_branch_variable_in_order():
    parent = PromptState("p").with_var("old", 1)
    b0 = parent.forked().appended("A").with_var("x", "a").with_var("only0", 0)
    b1 = parent.forked().appended("B").with_var("x", "b")
    b1 = b1.with_var("old", 2)
    gathered = join_states(parent.appended("!"), [b0, b1], "gather_variable")
    assert gathered.text == "p!" and gathered["x"] == ["a", "b"] and gathered["only0"] == [0, None]
    assert gathered["old"] == [1, 2]  # rebound in one branch: gathered, the other keeps its own value
    assert gathered.get_meta_info("x") == [None, None]
    concat = join_states(parent, [b0, b1], "concate_and_append")
    assert concat.text == "pAB" and concat["x"] == ["a", "b"]
    with pytest.raises(StateError, match="not bound"):
        parent["nope"]


# -- select -------------------------------------------------------------------------------------
def expected_choice(engine, text: str, choices: list[str], method: str) -> str:
    """An independent computation of the select rules on top of engine.score."""
    tok = engine.tokenizer
    prompt = tok.encode(text)
    conts = []
    for c in choices:
        full = tok.encode(text + c)
        conts.append(full[len(prompt):] if full[: len(prompt)] == prompt else tok.encode(c, add_special_tokens=False))
    lps = engine.score(prompt, conts)["logprobs"]
    means = [sum(x) / len(x) for x in lps]
    if method == "token_length_normalized":
        return choices[means.index(max(means))]
    if method == "unconditional_likelihood_normalized":
        scores = []
        for cont, lp in zip(conts, lps):
            bare = [0.0] + (engine.score(cont[:1], [cont[1:]])["logprobs"][0] if len(cont) > 1 else [])
            scores.append(sum(c - u for c, u in zip(lp, bare)) / len(lp))
        return choices[scores.index(max(scores))]
    alive = list(range(len(choices)))
    width = max(len(x) for x in lps)
    for j in range(width):
        col = {i: (lps[i][j] if j < len(lps[i]) else means[i]) for i in alive}
        alive = [i for i in alive if col[i] == max(col.values())]
        if len(alive) == 1:
            break
    return choices[alive[0]]


SELECT_TEXT = "The weather today is"
CHOICES = [" sunny and warm", " rainy", " cold", " a complete mystery to everyone"]


@pytest.mark.parametrize("op", ["select", "score"])
@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
def test_select_methods_match_direct_scoring(engine, method, op):
    program = f"""
func @main {{
  %0 = state_new
  %1 = const value="{SELECT_TEXT}"
  %2 = append %0, %1
  %3 = {op} %2 name="w" choices=["{'", "'.join(CHOICES)}"] method="{method}"
  %4 = output %3
}}"""
    state = executor(engine, program).run().state
    want = expected_choice(engine, SELECT_TEXT, CHOICES, method)
    assert state["w"] == want
    assert state.text == SELECT_TEXT + want
    meta = state.get_meta_info("w")
    assert meta["method"] == method and len(meta["normalized_prompt_logprobs"]) == len(CHOICES)
    assert meta["choices"] == CHOICES and meta["prompt_tokens"] == len(engine.encode(SELECT_TEXT))


def test_select_with_hoisted_prefix_equals_the_plain_select(engine):
    common = " it is"
    plain = f"""
func @main {{
  %0 = state_new
  %1 = const value="Today"
  %2 = append %0, %1
  %3 = select %2 name="w" choices=["{common} hot", "{common} cold"]
  %4 = output %3
}}"""
    hoisted = f"""
func @main {{
  %0 = state_new
  %1 = const value="Today{common}"
  %2 = append %0, %1
  %3 = select %2 name="w" choices=[" hot", " cold"] prefix="{common}"
  %4 = output %3
}}"""
    a = executor(engine, plain).run().state
    b = executor(engine, hoisted).run().state
    assert (a.text, a["w"]) == (b.text, b["w"])


def test_score_requests_and_decision_on_known_numbers(engine):
    tok = engine.tokenizer
    requests, conts = score_requests(tok, "Answer:", [" yes", " absolutely not"],
                                      "unconditional_likelihood_normalized")
    prompt = tok.encode("Answer:")
    assert requests[0].prompt == prompt and conts[0] == tok.encode("Answer: yes")[len(prompt):]
    assert len(conts[0]) == 1 and len(conts[1]) > 1  # one unconditional request, for the longer choice
    assert [(r.prompt, r.continuations) for r in requests[1:]] == [(conts[1][:1], [conts[1][1:]])]
    cond = [[-1.0], [-1.0] * len(conts[1])]
    index, meta = decide("unconditional_likelihood_normalized", conts,
                         [cond, [[-3.0] * (len(conts[1]) - 1)]])
    assert index == 1 and meta["unconditional_token_logprobs"] == [[None], [None] + [-3.0] * (len(conts[1]) - 1)]
    assert decide("greedy_token_selection", conts, [[[-1.0], [-1.0, -2.0]]])[0] == 0  # pads with its mean
    assert decide("greedy_token_selection", conts, [[[-1.0], [-1.0, -0.5]]])[0] == 1
    with pytest.raises(ValueError, match="non-empty prompt"):
        score_requests(tok, "", [" yes"], "token_length_normalized")


# -- switch ------------------------------------------------------------------------------------------
def test_switch_on_a_select_result_takes_that_region(engine):
    want = expected_choice(engine, SELECT_TEXT, [" sunny", " rainy"], "token_length_normalized")
    program = f"""
func @main {{
  %0 = state_new
  %1 = const value="{SELECT_TEXT}"
  %2 = append %0, %1
  %3 = select %2 name="w" choices=[" sunny", " rainy"]
  %4 = getvar %3 name="w"
  %20 = const value=" Take "
  %5 = switch %3, %4 {{
    case " sunny" {{
      %6 = state_in
      %7 = append %6, %20
      %8 = const value="sunglasses."
      %9 = append %7, %8
      %10 = output %9
    }}
    case " rainy" {{
      %11 = state_in
      %12 = append %11, %20
      %13 = const value="an umbrella."
      %14 = append %12, %13
      %15 = output %14
    }}
  }}
  %16 = output %5
}}"""
    result = executor(engine, program).run()
    item = "sunglasses." if want == " sunny" else "an umbrella."
    assert result.state.text == SELECT_TEXT + want + " Take " + item
    assert result.stats["main"][5]["num_runs"] == 1
    taken = (9, 14) if want == " sunny" else (14, 9)
    assert taken[0] in result.stats["main"] and taken[1] not in result.stats["main"]


def test_switch_without_a_matching_case_fails_naming_it(engine):
    program = """
func @main {
  %0 = arg name="v"
  %1 = state_new
  %2 = switch %1, %0 {  # prog.py:9
    case 1 {
      %3 = state_in
      %4 = output %3
    }
  }
  %5 = output %2
}"""
    ex = executor(engine, program)
    assert ex.run({"v": 1}).state.text == ""
    with pytest.raises(GraphExecutionError, match=r"%2 \(switch\) at prog.py:9: .*matches no case"):
        ex.run({"v": True})  # True is not 1


# -- errors ------------------------------------------------------------------------------------------
def test_failing_node_fails_only_its_instance(engine):
    program = """
func @main {
  %0 = arg name="x"
  %1 = state_new
  %2 = host %0 func="t:check" returns="value"  # prog.py:3
  %3 = append %1, %2
  %4 = gen %3 name="g" max_tokens=2
  %5 = output %4
}"""

    def check(x):
        if x == "bad":
            raise ValueError("bad input")
        return x

    ex = executor(engine, program, host_functions={"t:check": check})
    batch = ex.run_batch([{"x": "good one"}, {"x": "bad"}, {"x": "x" * 3000}, {"x": "fine"}], **GREEDY)
    assert batch[0].ok and batch[3].ok
    assert "@main: %2 (host) at prog.py:3: host function t:check raised ValueError: bad input" in str(batch[1].error)
    assert batch[1].error.node_id == 2 and batch[1].state is None
    assert "%4 (gen)" in str(batch[2].error) and "context" in str(batch[2].error)  # prompt too long
    assert len(batch.errors) == 2
    with pytest.raises(GraphExecutionError, match="bad input"):
        ex.run({"x": "bad"})


@pytest.mark.parametrize("program, message", [
    ("""
func @main {
  %0 = state_new
  %1 = host %0 func="t:missing" reason="eval" returns="state"  # p.py:2
  %2 = output %1
}""", r"%1 \(host\) at p.py:2: no allowed host function is registered for 't:missing'"),
    ("""
func @main {
  %0 = state_new
  %1 = getvar %0 name="nope"  # p.py:3
  %2 = append %0, %1
  %3 = output %2
}""", r"%1 \(getvar\) at p.py:3: variable 'nope' is not bound"),
    ("""
func @main {
  %0 = state_new
  %1 = role_begin %0 role="user"
  %2 = role_end %1 role="assistant"  # p.py:4
  %3 = output %2
}""", r"%2 \(role_end\) at p.py:4: role 'assistant' ends but the open role is 'user'"),
    ("""
func @main {
  %0 = arg name="a"
  %1 = state_new
  %2 = append %1, %0
  %3 = output %2
}""", r"%0 \(arg\): missing argument 'a'"),
])
def test_errors_name_the_node(engine, program, message):
    with pytest.raises(GraphExecutionError, match=message):
        executor(engine, program).run()


def test_error_inside_a_switch_region_names_the_path(engine):
    program = """
func @main {
  %0 = state_new
  %1 = const value="a"
  %2 = switch %0, %1 {  # main.py:7
    case "a" {
      %3 = state_in
      %4 = getvar %3 name="nope"  # lib.py:2
      %5 = append %3, %4
      %6 = output %5
    }
  }
  %7 = output %2
}"""
    with pytest.raises(GraphExecutionError, match=r"@main: %4 \(getvar\) at lib.py:2 \[in @main %2 case 0\]"):
        executor(engine, program, function="main").run()


def test_unknown_argument_is_an_error(engine):
    with pytest.raises(GraphExecutionError, match="unknown argument"):
        executor(engine, CHAT_PROGRAM).run({"topic": "x", "other": 1})


# -- batches ----------------------------------------------------------------------------------------
BATCH_PROGRAM = """
func @main {
  %0 = arg name="q"
  %1 = state_new
  %2 = role_begin %1 role="user"
  %3 = append %2, %0
  %4 = role_end %3 role="user"
  %5 = prefill %4
  %6 = fork %5 n=2
  %7 = branch %6 index=0
  %8 = const value="Pros:"
  %9 = append %7, %8
  %10 = branch %6 index=1
  %11 = const value="Cons:"
  %12 = append %10, %11
  %13 = batch_gen %9, %12 name="x" max_tokens=4
  %14 = branch %13 index=0
  %15 = branch %13 index=1
  %16 = join %5, %14, %15 mode="concate_and_append"
  %17 = select %16 name="verdict" choices=["good", "bad"]
  %18 = output %17
}"""


def test_run_batch_equals_running_each_alone(engine):
    ex = executor(engine, BATCH_PROGRAM)
    args = [{"q": f"Question {i} about {['owls', 'salt', 'trains', 'glass'][i % 4]}?"} for i in range(16)]
    batch = ex.run_batch(args, **GREEDY)
    assert not batch.errors
    alone = [ex.run(a, **GREEDY).state for a in args]
    assert [s.text for s in batch.states] == [s.text for s in alone]
    assert [(s["x"], s["verdict"]) for s in batch.states] == [(s["x"], s["verdict"]) for s in alone]
    assert batch.stats["main"][13]["num_runs"] == 16 and batch.stats["main"][13]["num_requests"] == 32


def test_streaming_text_iter(engine):
    ex = executor(engine, CHAT_PROGRAM)
    run = ex.start({"topic": "salt"}, **GREEDY)
    chunks = list(run.text_iter())
    state = run.result().state
    assert "".join(chunks) == state.text and len(chunks) > 4
    assert "".join(run.text_iter("answer")) == state["answer"]


# -- pins -------------------------------------------------------------------------------------------
def test_engine_pin_prefix_survives_eviction(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=160) as small:
        prefix = small.encode("Pinned prefix text that must stay cached for later: " * 2)
        small.generate(input_ids=prefix, sampling_params={"max_new_tokens": 1})
        pin = small.pin_prefix(prefix)
        pin.applied.wait(5)
        assert pin.num_tokens == len(prefix)
        pressure = [f"Unrelated filler number {i} " * 4 for i in range(6)]
        small.generate(pressure, {"max_new_tokens": 8, "ignore_eos": True, "temperature": 0})
        again = small.generate(input_ids=prefix + [5], sampling_params={"max_new_tokens": 1})
        assert again["meta_info"]["cached_tokens"] == len(prefix)
        small.unpin(pin)
        small.unpin(pin)  # idempotent
        small.generate(pressure, {"max_new_tokens": 8, "ignore_eos": True, "temperature": 0})
        after = small.generate(input_ids=prefix + [5], sampling_params={"max_new_tokens": 1})
        assert after["meta_info"]["cached_tokens"] < len(prefix)
        small.radix_cache.check_integrity()


PRESSURE_PROGRAM = """
func @main {
  %0 = arg name="p"
  %1 = state_new
  %2 = append %1, %0
  %3 = prefill %2
  %4 = host %3 func="t:pressure" returns="value"
  %5 = fork %3 n=2
  %6 = branch %5 index=0
  %7 = const value="Left:"
  %8 = append %6, %7
  %9 = branch %5 index=1
  %10 = const value="Right:"
  %11 = append %9, %10
  %12 = batch_gen %8, %11 name="x" max_tokens=3 ignore_eos=true
  %13 = branch %12 index=0
  %14 = branch %12 index=1
  %15 = join %3, %13, %14
  %16 = output %15
}"""


def test_prefill_pin_survives_pressure_from_a_tiny_kv_budget(tiny_model_dirs):
    """Between the prefill and the branches, a host step floods the KV pool with other requests."""
    prefix = "A prefix that the two branches of the fork both extend, long enough to matter.\n"
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=200) as small:
        def pressure(_state):
            small.generate([f"Filler request {i} with words " * 3 for i in range(8)],
                           {"max_new_tokens": 8, "ignore_eos": True, "temperature": 0})
            return 0

        n = len(small.encode(prefix))
        results = {}
        for budget in (0.5, 0.0):
            ex = GraphExecutor(small, parse_module(PRESSURE_PROGRAM), CHAT, {"t:pressure": pressure},
                               pin_budget=budget)
            results[budget] = ex.run({"p": prefix}, **GREEDY)
            pressure(None)  # the next run starts with the prefix evicted
        pinned, unpinned = results[0.5].stats["main"], results[0.0].stats["main"]
        assert pinned[3]["pinned_tokens"] == n and "pinned_tokens" not in unpinned[3]
        assert pinned[12]["cached_tokens"] >= 2 * (n - 1)
        # Without the pin the flood evicted the prefix: one branch recomputes it, the other reuses that.
        assert unpinned[12]["cached_tokens"] <= n < pinned[12]["cached_tokens"]
        assert results[0.5].state["x"] == results[0.0].state["x"]
        assert small.radix_cache.protected_size() == 0  # every pin was released
        small.radix_cache.check_integrity()


# -- stats ------------------------------------------------------------------------------------------
def test_per_node_stats(engine):
    batch = executor(engine, CHAT_PROGRAM).run_batch([{"topic": "a"}, {"topic": "b"}], **GREEDY)
    stats = batch.stats["main"]
    assert set(stats) == set(range(11))
    assert all(s["num_runs"] == 2 and s["time_s"] >= 0 for s in stats.values())
    gen = stats[8]
    assert gen["num_requests"] == 2
    assert gen["computed_tokens"] == gen["prompt_tokens"] - gen["cached_tokens"]
    assert gen["completion_tokens"] <= 12
    per_instance = batch[0].stats["main"][8]
    assert per_instance["num_requests"] == 1 and per_instance["time_s"] > 0
    assert math.isclose(batch[0].stats["main"][8]["time_s"] + batch[1].stats["main"][8]["time_s"], gen["time_s"])


def test_sampling_params_reach_the_engine(engine, monkeypatch):
    seen: list[SamplingParams] = []
    original = engine.group

    def spy_group(*args, **kwargs):
        group = original(*args, **kwargs)
        send = group.send

        def spy_send(request, *a, **k):
            seen.append(request.params)
            return send(request, *a, **k)

        group.send = spy_send
        return group

    monkeypatch.setattr(engine, "group", spy_group)
    program = """
func @main {
  %0 = state_new
  %1 = role_begin %0 role="assistant"
  %2 = gen %1 name="a" max_tokens=3 stop=["x"] top_k=5 temperature=0.5 regex="[ab]+"
  %3 = output %2
}"""
    executor(engine, program).run(temperature=0.0, top_p=0.9, stop="y")
    (params,) = seen
    assert (params.max_new_tokens, params.top_k, params.temperature, params.top_p) == (3, 5, 0.5, 0.9)
    assert params.stop == ["x", "<|im_end|>"] and params.regex == "[ab]+"
    assert params.stop_token_ids is None


# -- compiled == eager ------------------------------------------------------------------------------
EAGER_IR = """
func @qa {
  %0 = arg name="topic"
  %1 = state_new
  %2 = role_begin %1 role="user"
  %3 = const value="Tell me about "
  %4 = append %2, %3
  %5 = append %4, %0
  %6 = role_end %5 role="user"
  %7 = role_begin %6 role="assistant"
  %8 = gen %7 name="answer" max_tokens=6
  %9 = role_end %8 role="assistant"
  %10 = prefill %9
  %11 = fork %10 n=2
  %12 = branch %11 index=0
  %13 = const value="Pros:"
  %14 = append %12, %13
  %15 = branch %11 index=1
  %16 = const value="Cons:"
  %17 = append %15, %16
  %18 = batch_gen %14, %17 name="x" max_tokens=3 ignore_eos=true
  %19 = branch %18 index=0
  %20 = branch %18 index=1
  %21 = join %10, %19, %20
  %22 = score %21 name="v" choices=[" good", " rather bad"] method="METHOD"
  %23 = output %22
}"""


@pytest.mark.parametrize("method", ["token_length_normalized", "unconditional_likelihood_normalized"])
def test_compiled_equals_the_eager_interpreter(engine, method):
    """The same program run eagerly (compiler.interpreter) and as hand-written, optimized IR."""
    lang = pytest.importorskip("compiler.lang")
    pytest.importorskip("compiler.interpreter")

    @lang.function
    def qa(s, topic):
        s += lang.user("Tell me about " + topic)
        s += lang.assistant(lang.gen("answer", max_tokens=6))
        forks = s.fork(2)
        for f, q in zip(forks, ["Pros:", "Cons:"]):
            f += q + lang.gen("x", max_tokens=3, ignore_eos=True)
        forks.join()
        s += lang.select("v", choices=[" good", " rather bad"], choices_method=method)

    eager = qa.run(topic="owls", backend=engine, temperature=0.0)
    compiled = GraphExecutor(engine, parse_module(EAGER_IR.replace("METHOD", method))).run(
        {"topic": "owls"}, temperature=0.0).state
    assert compiled.text == eager.text()
    assert compiled.messages == eager.messages()
    for name in ("answer", "x", "v"):
        assert compiled[name] == eager[name]


def test_an_engine_shut_down_mid_run_fails_instances_instead_of_hanging(tiny_model_dirs):
    program = """
func @main {
  %0 = arg name="x"
  %1 = state_new
  %2 = append %1, %0
  %3 = gen %2 name="a" max_tokens=2
  %4 = host %3 func="t:stop" returns="state"
  %5 = gen %4 name="b" max_tokens=2  # p.py:5
  %6 = output %5
}"""
    small = Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu")

    def stop(state):
        small.shutdown()
        return state

    batch = GraphExecutor(small, parse_module(program), CHAT, {"t:stop": stop}).run_batch(
        [{"x": "One"}, {"x": "Two"}], **GREEDY)
    assert len(batch.errors) == 2
    assert all("%5 (gen) at p.py:5" in str(e) and "shut down" in str(e) for e in batch.errors)


def test_pure_host_functions_resolve_without_registration_but_nothing_else_does(engine):
    program = """
func @main {
  %0 = arg name="x"
  %1 = state_new
  %2 = host %0 func="builtins:str.upper" returns="value"
  %3 = const value="!"
  %4 = host %2, %3 func="compiler.parser.host_funcs:concat" returns="value"
  %5 = append %1, %4
  %6 = output %5
}"""
    assert executor(engine, program).run({"x": "hi"}).state.text == "HI!"
    unsafe = program.replace("builtins:str.upper", "os:getcwd").replace("%2 = host %0", "%2 = host %1")
    with pytest.raises(GraphExecutionError, match="no allowed host function is registered for 'os:getcwd'"):
        executor(engine, unsafe).run({"x": "hi"})


def test_a_function_that_runs_on_the_host_equals_its_eager_run(engine):
    lang = pytest.importorskip("compiler.lang")
    pytest.importorskip("compiler.interpreter")

    @lang.function
    def needs_host(s, topic):
        s += lang.user("Say a word about " + topic)
        s += lang.assistant(lang.gen("word", max_tokens=3))
        s += " (" + str(len(s["word"])) + " characters)"

    program = f"""
func @needs_host {{
  %0 = arg name="topic"
  %1 = state_new
  %2 = host %1, %0 func="{needs_host.ref}" reason="len of a generated value" args=["s", "topic"]
  %3 = output %2
}}"""
    eager = needs_host.run(topic="salt", backend=engine, temperature=0.0)
    with pytest.raises(GraphExecutionError, match="no allowed host function"):  # live functions need an opt-in
        GraphExecutor(engine, parse_module(program)).run({"topic": "salt"}, temperature=0.0)
    batch = GraphExecutor(engine, parse_module(program), live_functions=True).run_batch(
        [{"topic": "salt"}, {"topic": "glass"}], temperature=0.0)
    assert not batch.errors
    state = batch[0].state
    assert state.text == eager.text() and state["word"] == eager["word"]
    assert state.messages == eager.messages()
