"""The whole-program optimizations other than chains (tests/test_chains.py) change no output: prefix
pins on or off under a small KV pool, and constraint tables compiled ahead of time or by the runtime at
the first request, each equal to -O0 (greedy, tiny model)."""

from __future__ import annotations

import pytest

import sgc
from compiler.driver import compile_program
from executor.program.graph_llm import make_run_defaults
from sgc.compiled import CompiledProgram

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}


@sgc.function
def record(s, text):
    s += "Text: " + text + "\nJSON:" + sgc.gen("rec", json_schema=SCHEMA, max_tokens=24)


@sgc.function
def essay(s, topic):
    s += "Write about " + topic + ". Cover these aspects, one line each, in plain words.\n"
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f"Aspect {i}:" + sgc.gen("aspect", max_tokens=6, stop="\n")
    s += "Summary:" + sgc.gen("summary", max_tokens=6)


def _program(runtime, fn, level: int, tables: bool = True) -> CompiledProgram:
    result = compile_program(fn, opt_level=level, tokenizer=runtime.engine.tokenizer if tables else None)
    return CompiledProgram(runtime.engine, result.module, result.fsms, chat_format=runtime.chat_format())


def test_constraint_tables_ahead_of_time_equal_compiled_at_first_use(tiny_model_dirs) -> None:
    rows = [{"text": "Ada is 36."}, {"text": "Bob, 7 years old."}]
    defaults = make_run_defaults(temperature=0)
    with sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu") as runtime:
        ahead = _program(runtime, record, 1)
        at_first_use = _program(runtime, record, 1, tables=False)
        assert ahead.fsms and not at_first_use.fsms  # the schema travels with the request instead
        o0 = _program(runtime, record, 0)
        texts = [[s.text() for s in p.run_batch("record", rows, defaults)] for p in (ahead, at_first_use, o0)]
        assert texts[0] == texts[1] == texts[2]


@pytest.mark.parametrize("pool", [pytest.param(None, marks=pytest.mark.slow), 160])
def test_prefix_pins_change_no_output(tiny_model_dirs, pool) -> None:
    rows = [{"topic": t} for t in ("rivers", "copper", "winter")]
    defaults = make_run_defaults(temperature=0, ignore_eos=True)
    kwargs = {} if pool is None else {"max_total_tokens": pool}
    with sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu", **kwargs) as runtime:
        pinned, unpinned = _program(runtime, essay, 1), _program(runtime, essay, 1)
        unpinned.executor.pin_budget = 0.0
        o0 = _program(runtime, essay, 0)
        texts = [[s.text() for s in p.run_batch("essay", rows, defaults)] for p in (pinned, unpinned, o0)]
        assert texts[0] == texts[1] == texts[2]
        runtime.engine.kv_manager.check_integrity(runtime.engine.scheduler.all_requests())
