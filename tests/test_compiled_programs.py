"""Compiled == eager: every program run with every pass, at -O0, and with the eager interpreter (the
oracle) gives exactly the same text, messages and variables (greedy). The fast tier runs them on a
tiny random model; the same tests on the real default model are the `slow` twin."""

from __future__ import annotations

import json

import pytest

import sgc

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}


@sgc.function
def few_shot_qa(s, question):
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: What is the capital of Italy?\nA: Rome\n"
    s += "Q: " + question + "\nA:" + sgc.gen("answer", max_tokens=8, stop="\n")


@sgc.function
def multi_turn(s, q1, q2):
    s += sgc.system("You are a terse assistant.")
    s += sgc.user(q1)
    s += sgc.assistant(sgc.gen("a1", max_tokens=10))
    s += sgc.user(q2)
    s += sgc.assistant(sgc.gen("a2", max_tokens=10))


@sgc.function
def role_blocks(s, topic):
    s += sgc.user_begin()
    s += "One word about " + topic
    s += sgc.user_end()
    s += sgc.assistant_begin()
    with s.var_scope("word"):
        s += sgc.gen(max_tokens=6)
    s += sgc.assistant_end()


@sgc.function
def select_greedy(s, food):
    s += "Is " + food + " healthy? Answer: " + sgc.select(
        "v", choices=["yes", "no", "maybe"], choices_method=sgc.greedy_token_selection)


@sgc.function
def select_normalized(s, food):
    s += "Is " + food + " tasty? Answer: " + sgc.select(
        "v", choices=[" very much", " not at all"], choices_method=sgc.token_length_normalized)


@sgc.function
def select_unconditional(s, food):
    s += "The texture of " + food + " is" + sgc.select(
        "v", choices=[" soft", " crunchy"], choices_method=sgc.unconditional_likelihood_normalized)


@sgc.function
def fork_gather(s, topic):
    s += "Topic: " + topic + "\n"
    forks = s.fork(2)
    for f, aspect in zip(forks, ["Pros", "Cons"]):
        f += aspect + ":" + sgc.gen("point", max_tokens=8, stop="\n")
    forks.join()
    s += "Done."


@sgc.function
def fork_concat(s, topic):
    s += "Two facts about " + topic + ".\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Fact {i + 1}:" + sgc.gen("fact", max_tokens=8, stop="\n") + "\n"
    forks.join("concate_and_append")
    s += "Summary:" + sgc.gen("summary", max_tokens=8, stop="\n")


@sgc.function
def greet(s, name):
    s += "Hello " + name + "! " + sgc.gen("greeting", max_tokens=6, stop="\n")


@sgc.function
def nested_calls(s, a, b):
    greet(s, a)
    s += "\n"
    greet(s, name=b)
    s += "\nBoth greeted."


@sgc.function
def switch_on_select(s, animal):
    s += "Is a " + animal + " a mammal? " + sgc.select("kind", choices=["yes", "no"])
    if s["kind"] == "yes":
        s += "\nIt feeds milk:" + sgc.gen("detail", max_tokens=6, stop="\n")
    else:
        s += "\nIt lays eggs:" + sgc.gen("detail", max_tokens=6, stop="\n")


@sgc.function
def loop_over_list(s, items):
    s += "Describe each item in two words.\n"
    for item in items:
        s += item + ":" + sgc.gen("desc_" + item, max_tokens=5, stop="\n") + "\n"


@sgc.function
def tool_use(s, city):
    s += "How many letters are in the word " + city + "? Number: "
    s += sgc.gen("count", regex=r"[0-9]{1,2}", max_tokens=4)
    doubled = int(s["count"]) * 2  # a host step: int() of generated text
    s += f"\nTwice that is {doubled}. Comment:" + sgc.gen("comment", max_tokens=6, stop="\n")


@sgc.function
def react(s, question):
    s += "Question: " + question + "\n"
    for step in range(2):
        s += f"Thought {step}:" + sgc.gen(f"thought_{step}", max_tokens=6, stop="\n") + "\n"
        s += "Action: " + sgc.select(f"action_{step}", choices=["search", "finish"])
        if s[f"action_{step}"] == "finish":
            s += "\nAnswer:" + sgc.gen("answer", max_tokens=6, stop="\n")
            break
        s += "\nObservation:" + sgc.gen(f"obs_{step}", max_tokens=6, stop="\n") + "\n"


@sgc.function
def regex_gen(s, person):
    s += person + " was born in the year " + sgc.gen("year", regex=r"(19|20)[0-9]{2}", max_tokens=6)
    s += ". Phone: " + sgc.gen("phone", regex=r"[0-9]{3}-[0-9]{4}", max_tokens=10)


@sgc.function
def json_gen(s, person):
    s += "A JSON record for " + person + ": "
    s += sgc.gen("record", json_schema=json.dumps(SCHEMA), max_tokens=24)


@sgc.function
def int_gen(s, thing):
    s += "How many legs does a " + thing + " have? " + sgc.gen_int("legs", max_tokens=4)


CASES = [
    (few_shot_qa, {"question": "What is the capital of Spain?"}),
    (multi_turn, {"q1": "Name a color.", "q2": "Name another."}),
    (role_blocks, {"topic": "rain"}),
    (select_greedy, {"food": "broccoli"}),
    (select_normalized, {"food": "cake"}),
    (select_unconditional, {"food": "bread"}),
    (fork_gather, {"topic": "bicycles"}),
    (fork_concat, {"topic": "the moon"}),
    (nested_calls, {"a": "Ann", "b": "Bob"}),
    (switch_on_select, {"animal": "dog"}),
    (switch_on_select, {"animal": "snake"}),
    (loop_over_list.bind(items=["apple", "stone"]), {}),
    (loop_over_list, {"items": ["tree", "cloud"]}),  # unbound list: the function runs on the host
    (tool_use, {"city": "Paris"}),
    (react, {"question": "Where is the Eiffel tower?"}),
    (regex_gen, {"person": "Ada"}),
    (json_gen, {"person": "Bob"}),
    (int_gen, {"thing": "spider"}),
]
IDS = [f"{fn.name}-{i}" for i, (fn, _) in enumerate(CASES)]


@pytest.fixture(scope="module", params=["tiny", pytest.param("default", marks=pytest.mark.slow)])
def runtime(request, tiny_model_dirs):
    """A runtime on the tiny random model (fast) or on the real default model (the slow twin)."""
    if request.param == "tiny":
        rt = sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu")
    else:
        rt = sgc.Runtime(str(request.getfixturevalue("default_model_dir")), device="cpu")
    yield rt
    rt.shutdown()


def _same(a, b) -> None:
    assert a.text() == b.text()
    assert a.messages() == b.messages()
    assert a.snapshot()["variables"] == b.snapshot()["variables"]


@pytest.mark.parametrize(("fn", "args"), CASES, ids=IDS)
def test_compiled_equals_eager(runtime, fn, args) -> None:
    eager = fn.run(**args, backend=runtime, temperature=0, eager=True)
    compiled = fn.run(**args, backend=runtime, temperature=0)
    unoptimized = fn.run(**args, backend=runtime, temperature=0, opt_level=0)
    assert type(compiled).__name__ == "CompiledState"
    _same(compiled, eager)
    _same(unoptimized, eager)


def test_compiled_programs_are_cached_per_opt_level(runtime) -> None:
    first = runtime.compile(few_shot_qa)
    assert runtime.compile(few_shot_qa) is first
    assert runtime.compile(few_shot_qa, opt_level=0) is not first
    assert runtime.compile(loop_over_list.bind(items=["a"])) is not runtime.compile(loop_over_list.bind(items=["b"]))


def test_host_function_graph_needs_host(runtime) -> None:
    assert runtime.compile(tool_use).module["tool_use"].meta.get("needs_host")


def test_streaming_text_iter(runtime) -> None:
    eager = fork_concat.run(topic="owls", backend=runtime, temperature=0, eager=True)
    streamed = fork_concat.run(topic="owls", backend=runtime, temperature=0, stream=True)
    assert "".join(streamed.text_iter()) == eager.text()
    _same(streamed, eager)


def test_run_batch_equals_eager(runtime) -> None:
    rows = [{"animal": "cat"}, {"animal": "lizard"}, {"animal": "whale"}]
    compiled = switch_on_select.run_batch(rows, backend=runtime, temperature=0)
    eager = switch_on_select.run_batch(rows, backend=runtime, temperature=0, eager=True)
    for c, e in zip(compiled, eager):
        _same(c, e)


def test_opt_level_from_environment(runtime, monkeypatch) -> None:
    monkeypatch.setenv("SGC_OPT_LEVEL", "0")
    assert runtime.compile(select_greedy).module is runtime.compile(select_greedy, opt_level=0).module


# -- every program in tests and examples: eager == compiled on the tiny model ------------------------


def _every_program() -> list:
    """(id, function, arguments) of every program the tests and examples define, one instance each:
    this file's CASES, the tracer's golden programs, the SGLang-surface programs and the benchmark
    programs (`benchmarks/programs/`, the examples) with their tiny inputs."""
    import random

    from test_sglang_surface import PROGRAMS as SURFACE
    from test_tracer import CASES as TRACER_CASES
    from test_tracer import GOLDEN

    from compiler.parser.tracer import load_program_file
    from sgc.bench.workloads import WORKLOADS, Size, load_program

    programs = [(f"compiled_programs/{fn.name}-{i}", fn, args, {}) for i, (fn, args) in enumerate(CASES)]
    for stem, cases in sorted(TRACER_CASES.items()):
        module = load_program_file(GOLDEN / f"{stem}.py")
        bind = getattr(module, "BIND", {})
        for i, (name, args) in enumerate(cases[:3]):
            fn = getattr(module, name)
            programs.append((f"golden/{stem}/{name}-{i}", fn.bind(**bind[name]) if name in bind else fn, args, {}))
    programs += [(f"sglang_surface/{fn.name}", fn, args, {}) for fn, args in SURFACE]
    for workload in WORKLOADS.values():
        row = workload.make_inputs(random.Random(0), Size(1, 4, 1, workload.tiny.scale))[0]
        fn = load_program(workload)
        if workload.bind:
            fn = fn.bind(**{k: row[k] for k in workload.bind})
            row = {k: v for k, v in row.items() if k not in workload.bind}
        programs.append((f"benchmarks/{workload.program_file}", fn, row, {"ignore_eos": workload.ignore_eos}))
    return programs


EVERY_PROGRAM = _every_program()


@pytest.fixture(scope="module")
def tiny_runtime(tiny_model_dirs):
    rt = sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=8192)
    yield rt
    rt.shutdown()


@pytest.mark.slow  # 43 programs x 2 runs (~15 s); test_compiled_equals_eager covers CASES in the fast tier
@pytest.mark.parametrize(("fn", "args", "options"), [p[1:] for p in EVERY_PROGRAM], ids=[p[0] for p in EVERY_PROGRAM])
def test_every_program_eager_equals_compiled(tiny_runtime, fn, args, options) -> None:
    """Greedy, few tokens: the eager interpreter and the compiled graph give the same text, messages
    and variables for every program in the tests and the examples."""
    run = dict(backend=tiny_runtime, temperature=0, max_new_tokens=4, **options)
    try:
        eager = fn.run(**args, eager=True, **run)
    except Exception as exc:  # the random model can drive a program into an error: both must hit it
        with pytest.raises(Exception) as compiled_error:
            fn.run(**args, **run).text()
        assert _messages(exc)[-1] in " ".join(_messages(compiled_error.value))
        return
    compiled = fn.run(**args, **run)
    assert type(compiled).__name__ == "CompiledState"
    _same(compiled, eager)


def _messages(exc: BaseException | None) -> list[str]:
    """The messages of an exception and its causes, outermost first."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out
