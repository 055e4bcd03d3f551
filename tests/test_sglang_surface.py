"""SGLang 0.5.x's public frontend through `import sglang as sgl` (sgc's shim).

(a) Every name SGLang exports is in the shim and either works or raises its documented one-line
error; docs/language.md's table lists every name. (b) SGLang-style programs that use every
supported name run unchanged, compiled (an sgc Runtime) and eager, with identical text and
variables (greedy, on the tiny random model).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import sgc
import sgc.compiled
import sglang as sgl
import sglang.lang.api
import sglang.lang.backend.base_backend
from compiler.errors import CompileError
from sglang.lang.choices import ChoicesSamplingMethod
from sglang.lang.interpreter import ProgramState, ProgramStateGroup
from sglang.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

# `__all__` of SGLang 0.5.x's python/sglang/__init__.py, in its order.
SGLANG_EXPORTS = (
    "Engine", "Runtime", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen",
    "gen_int", "gen_string", "get_server_info", "image", "select", "set_default_backend", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end", "video", "RuntimeEndpoint",
    "greedy_token_selection", "token_length_normalized", "unconditional_likelihood_normalized", "Anthropic",
    "LiteLLM", "OpenAI", "VertexAI", "global_config", "__version__",
)
# The public names of other SGLang modules that programs use.
MODULE_NAMES = {
    "sglang.lang.ir": ("REGEX_INT", "REGEX_FLOAT", "REGEX_BOOL", "REGEX_STR", "SglFunction", "SglExpr",
                       "SglExprList", "SglGen", "SglSelect", "SglConstantText", "SglRoleBegin", "SglRoleEnd",
                       "SglImage", "SglVideo"),
    "sglang.lang.choices": ("ChoicesSamplingMethod", "ChoicesDecision", "TokenLengthNormalized",
                            "GreedyTokenSelection", "UnconditionalLikelihoodNormalized", "token_length_normalized",
                            "greedy_token_selection", "unconditional_likelihood_normalized"),
    "sglang.lang.interpreter": ("ProgramState", "ProgramStateGroup"),
    "sglang.lang.api": ("function", "gen", "select", "flush_cache", "get_server_info", "separate_reasoning"),
    "sglang.global_config": ("global_config", "GlobalConfig"),
    "sglang.lang.backend.runtime_endpoint": ("RuntimeEndpoint", "Runtime"),
    "sglang.lang.backend.openai": ("OpenAI",),
    "sglang.lang.backend.anthropic": ("Anthropic",),
    "sglang.lang.backend.vertexai": ("VertexAI",),
    "sglang.lang.backend.litellm": ("LiteLLM",),
    "sglang.lang.backend.base_backend": ("BaseBackend",),
}
# The methods of SGLang's ProgramState / ProgramStateGroup / SglFunction that programs call.
STATE_METHODS = ("system", "user", "assistant", "var_scope", "fork", "copy", "text", "messages", "sync", "error",
                 "text_iter", "text_async_iter", "get_var", "set_var", "get_meta_info", "__iadd__",
                 "__getitem__", "__setitem__", "__contains__")
GROUP_METHODS = ("join", "__getitem__", "__setitem__", "__iadd__", "states", "src_state")
FUNCTION_METHODS = ("bind", "run", "run_batch", "trace", "cache", "compile", "__call__")

# Refused names: how to call them, and what their one-line error says.
REMOTE = "not on remote APIs"
REFUSED = {
    "image": (lambda: sgl.image("cat.png"), "text-only models"),
    "video": (lambda: sgl.video("cat.mp4", 4), "text-only models"),
    "OpenAI": (lambda: sgl.OpenAI("gpt-4o-mini"), REMOTE),
    "Anthropic": (lambda: sgl.Anthropic("claude-3-haiku"), REMOTE),
    "VertexAI": (lambda: sgl.VertexAI("gemini-pro"), REMOTE),
    "LiteLLM": (lambda: sgl.LiteLLM("gpt-4o-mini"), REMOTE),
}


def _works(name: str) -> None:
    """A model-free check that `sgl.<name>` behaves as SGLang's does."""
    if name in ("Engine", "Runtime", "RuntimeEndpoint"):
        assert getattr(sgl, name) is getattr(sgc, name)
    elif name == "function":
        assert isinstance(sgl.function(lambda_free_program), sgc.Function)
    elif name in ("gen", "gen_int", "gen_string"):
        expr = getattr(sgl, name)("x", max_tokens=4)
        assert isinstance(expr, sgl.lang.ir.SglGen) and expr.name == "x"
    elif name == "select":
        assert isinstance(sgl.select("x", choices=["a", "b"]), sgl.lang.ir.SglSelect)
    elif name in ("system", "user", "assistant"):
        assert isinstance(getattr(sgl, name)("hi"), sgl.lang.ir.SglExprList)
    elif name.endswith("_begin"):
        assert isinstance(getattr(sgl, name)(), sgl.lang.ir.SglRoleBegin)
    elif name.endswith("_end"):
        assert isinstance(getattr(sgl, name)(), sgl.lang.ir.SglRoleEnd)
    elif name.endswith(("_normalized", "_selection")):
        assert isinstance(getattr(sgl, name), ChoicesSamplingMethod)
    elif name == "set_default_backend":
        marker = object()
        before = sgl.global_config.default_backend
        sgl.set_default_backend(marker)
        try:
            assert sgl.global_config.default_backend is marker and sgc.get_default_backend() is marker
        finally:
            sgl.set_default_backend(before)
    elif name in ("flush_cache", "get_server_info"):
        before = sgc.get_default_backend()
        sgl.set_default_backend(None)
        try:  # without a backend, as SGLang: False / None
            assert getattr(sgl, name)() in (False, None)
        finally:
            sgl.set_default_backend(before)
    elif name == "global_config":
        assert sgl.global_config.verbosity == 0 and hasattr(sgl.global_config, "enable_precache_with_tracing")
    elif name == "__version__":
        assert sgl.__version__.startswith("0.5.")
    else:
        raise AssertionError(f"no check for {name}")


def lambda_free_program(s, x):
    s += x


@pytest.mark.parametrize("name", SGLANG_EXPORTS)
def test_every_sglang_export_works_or_is_refused(name: str) -> None:
    assert name in sgl.__all__ and hasattr(sgl, name)
    if name in REFUSED:
        call, why = REFUSED[name]
        with pytest.raises(NotImplementedError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"sgl.{name} is not supported by sgc: ")
        assert why in message
    else:
        _works(name)


def test_module_names_and_methods_exist() -> None:
    import importlib

    for module, names in MODULE_NAMES.items():
        mod = importlib.import_module(module)
        for name in names:
            assert hasattr(mod, name), f"{module}.{name}"
    for cls in (ProgramState, sgc.compiled.CompiledState):
        missing = [m for m in STATE_METHODS if not hasattr(cls, m)]
        assert cls is sgc.compiled.CompiledState or not missing, missing
    assert not [m for m in GROUP_METHODS if not hasattr(ProgramStateGroup, m)]
    assert not [m for m in FUNCTION_METHODS if not hasattr(sgc.Function, m)]
    for name in ("text", "messages", "sync", "error", "text_iter", "text_async_iter", "get_var", "set_var",
                 "get_meta_info", "__getitem__", "__setitem__", "__contains__"):
        assert hasattr(sgc.compiled.CompiledState, name), name


def test_sglang_constants_and_refusals() -> None:
    assert REGEX_INT == r"[-+]?[0-9]+[ \n]*" and REGEX_FLOAT == r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
    assert REGEX_BOOL == "(True|False)" and REGEX_STR == r"\"[\w\d\s]*\""
    assert sgl.lang.ir.SglFunction is sgc.Function
    with pytest.raises(AttributeError, match="SGLang's own interpreter"):
        sgl.lang.ir.SglFork  # noqa: B018
    for call in (lambda: sgl.lang.ir.SglImage("x.png"), lambda: sgl.lang.api.separate_reasoning(sgl.gen("r")),
                 lambda: sgl.lang.backend.base_backend.BaseBackend()):
        with pytest.raises(NotImplementedError, match="is not supported by sgc: "):
            call()
    with pytest.raises(CompileError, match="stop_regex"):
        sgl.gen("x", stop_regex=r"\d")

    class MyMethod(ChoicesSamplingMethod):
        name = "mine"

    with pytest.raises(CompileError, match="custom choices_method"):
        sgl.select("x", choices=["a", "b"], choices_method=MyMethod())


def test_docs_table_lists_every_name() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    table = doc[doc.index("## 6."):]
    for name in SGLANG_EXPORTS:
        assert re.search(rf"`sgl\.{re.escape(name)}[`(]", table), name
    for module, names in MODULE_NAMES.items():
        for name in names:
            assert f"{name}" in table, f"{module}.{name}"
    for name in STATE_METHODS + GROUP_METHODS + FUNCTION_METHODS:
        assert name.strip("_") in table, name


# -- (b) programs that use every supported name, compiled and eager ------------------------------------


@sgl.function
def chat_roles(s, question):
    s += sgl.system("You are terse.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=4))
    s += sgl.user_begin() + "And a number?" + sgl.user_end()
    s += sgl.assistant_begin() + sgl.gen_int("number", max_tokens=3) + sgl.assistant_end()
    with s.user():
        s += "A word in quotes?"
    with s.assistant():
        s += sgl.gen_string("word", max_tokens=4)


@sgl.function
def system_blocks(s):
    s += sgl.system_begin() + "Rules." + sgl.system_end()
    s += sgl.user("Yes or no?")
    s += sgl.assistant(sgl.select("yn", choices=["yes", "no"]))


@sgl.function
def choices_and_regexes(s, item):
    s += "Item: " + item + "\n"
    s += "Kind: " + sgl.select("kind", choices=["fruit", "tool"], choices_method=sgl.token_length_normalized)
    s += "\nSize: " + sgl.select("size", ["big", "small"], choices_method=sgl.greedy_token_selection)
    s += "\nColor: " + sgl.gen("color", choices=["red", "green"],
                               choices_method=sgl.unconditional_likelihood_normalized)
    s += "\nCount: " + sgl.gen("count", regex=REGEX_INT, max_tokens=3)
    s += "\nWeight: " + sgl.gen("weight", regex=REGEX_FLOAT, max_tokens=4)
    s += "\nFresh: " + sgl.gen("fresh", regex=REGEX_BOOL, max_tokens=2)
    s += "\nName: " + sgl.gen("name", regex=REGEX_STR, max_tokens=4)


@sgl.function
def forks_and_vars(s, topic):
    s += "Topic: " + topic + "\n"
    forks = s.fork(2, position_ids_offset=None)
    forks += lambda i: f"Idea {i}:" + sgl.gen("idea", max_tokens=3, stop="\n")
    forks.join()
    s += "Best: " + forks[1]["idea"] + "\n"  # a branch's variable, read after the join
    s["first"] = forks[0]["idea"]  # state[k] = v is set_var
    s.set_var("label", "ideas")
    s += "Label: " + s.get_var("label") + "\n"
    with s.var_scope("tail"):
        s += "Tail:" + sgl.gen("t", max_tokens=2)
    with s.copy() as side:  # SGLang's copy: a context manager that joins back
        side += " Side:" + sgl.gen("aside", max_tokens=2)
    twin = s.copy()
    twin += "twin"
    more = s.fork(2)
    for f in more:
        f += sgl.gen("extra", max_tokens=2)
    more.join("concate_and_append")
    if "label" in s:
        s += "!"


PROGRAMS = [
    (chat_roles, {"question": "Hi?"}),
    (system_blocks, {}),
    (choices_and_regexes, {"item": "apple"}),
    (forks_and_vars, {"topic": "tea"}),
]


@pytest.fixture(scope="module")
def tiny_runtime(tiny_model_dirs):
    runtime = sgl.Runtime(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


def _same(compiled, eager) -> None:
    assert compiled.text() == eager.text()
    assert compiled.messages() == eager.messages()
    assert compiled.snapshot()["variables"] == eager.snapshot()["variables"]


@pytest.mark.parametrize(("fn", "args"), PROGRAMS, ids=[fn.name for fn, _ in PROGRAMS])
def test_sglang_program_compiled_equals_eager(tiny_runtime, fn, args) -> None:
    _, breaks = fn.compile()
    assert not breaks, sgc.explain(breaks)  # every construct compiles
    eager = fn.run(**args, backend=tiny_runtime, temperature=0, max_new_tokens=4, eager=True)
    compiled = fn.run(**args, backend=tiny_runtime, temperature=0, max_new_tokens=4)
    assert isinstance(eager, ProgramState) and type(compiled).__name__ == "CompiledState"
    _same(compiled, eager)


def test_state_methods_after_a_run(tiny_runtime) -> None:
    sgl.set_default_backend(tiny_runtime)
    try:
        for eager in (True, False):
            state = forks_and_vars.run(topic="owls", temperature=0, max_new_tokens=4, eager=eager)
            state.sync()
            assert state.error() is None
            assert state["first"] == state.get_var("idea")[0] and "idea" in state
            assert isinstance(state.get_meta_info("t"), dict) and len(state.get_meta_info("idea")) == 2
            assert "".join(state.text_iter()) == state.text()
            assert "".join(state.text_iter("t")) == state["t"]

            async def collect(st=state):
                return [piece async for piece in st.text_async_iter()]

            assert "".join(asyncio.run(collect())) == state.text()
            state["note"] = 1  # set_var on a finished state
            assert state["note"] == 1
    finally:
        sgl.set_default_backend(None)


def test_run_batch_stream_trace_and_server_calls(tiny_runtime) -> None:
    rows = [("Hi?",), {"question": "Bye?"}]  # SGLang also takes rows of positional values
    kwargs = dict(backend=tiny_runtime, temperature=0, max_new_tokens=4, progress_bar=True, num_threads=2)
    compiled = chat_roles.run_batch(rows, **kwargs)
    eager = chat_roles.run_batch(rows, eager=True, **kwargs)
    for c, e in zip(compiled, eager):
        _same(c, e)
    assert chat_roles.run_batch([], backend=tiny_runtime) == []
    streamed = forks_and_vars.run(topic="tea", backend=tiny_runtime, temperature=0, max_new_tokens=4, stream=True)
    assert "".join(streamed.text_iter()) == forks_and_vars.run(
        topic="tea", backend=tiny_runtime, temperature=0, max_new_tokens=4, eager=True).text()
    module = forks_and_vars.trace(topic="tea")  # sgc's trace: the IR, arguments bound
    assert module["forks_and_vars"] is not None and forks_and_vars.cache() is None
    assert tiny_runtime.engine.stats()["num_cached_kv_tokens"] > 0
    assert sgl.flush_cache(tiny_runtime) is True
    assert tiny_runtime.engine.stats()["num_cached_kv_tokens"] == 0
    info = sgl.get_server_info(tiny_runtime)
    assert info["version"] == sgc.__version__ and info["started"] and info["model_path"]
