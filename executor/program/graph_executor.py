"""The graph executor: runs IR graphs for many program instances at once on one `Engine`.

    executor = GraphExecutor(engine, module, host_functions={...})      # chat format: the model's
    result = executor.run({"essay": text}, function="grade_essay", temperature=0)   # one instance
    batch = executor.run_batch([{"essay": a}, {"essay": b}], progress_bar=True)    # many at once
    run = executor.start({"essay": text}); for chunk in run.text_iter(): ...        # streaming

**Dataflow.** Each instance runs its entry graph as a *frame* (one per region activation: the
body or a taken switch region). A node runs as soon as its operands (and every outer value its
nested regions read) are ready. What a node does is the IR interpreter's business
(`compiler.ir_interpreter.Interpreter`, the one place each op's meaning is written), run on the
executor's domain (`executor/program/graph_domain.py`): text ops on `PromptState`s, LLM ops as engine
requests, `host` through the caller's `HostPolicy` (`executor/program/graph_host.py`). A taken `switch`
region runs as a child frame that completes the switch with its output. Every node of a frame runs,
dead ones included (as an eager interpreter would), and a frame completes when all its nodes have.

**LLM nodes** become engine requests (the rules are shared with the eager interpreter:
`compiler.lang_sampling`, `compiler.lang_select`): `gen` one request, `batch_gen` one per branch,
`select`/`score` one scoring request over all choices (plus an unconditional one for
`unconditional_likelihood_normalized`), `prefill` a one-token request that leaves the state's KV
in the radix cache. The loop evaluates everything that is ready in all instances, then submits
all new requests together in prompt-token order (a depth-first walk of the prefix tree, so
requests sharing a prefix arrive together), then waits for the engine to finish one.

**Pins.** When a `prefill` finishes, its prompt is pinned in the radix cache (`Engine.pin_prefix`,
done on the engine thread before any other step can evict it) until every LLM node (or switch,
host step) that first extends the prefilled state has completed: a fork's branches always
find the prefix cached, however many other instances press on the KV pool. At most `pin_budget`
of the KV slots are pinned at once (a prefill that would exceed it is not pinned), so pins can
never starve the scheduler.

**Stats.** Every node records, per instance, `time_s` (text ops: evaluation; LLM nodes: submit to
completion; switch: dispatch only, `inclusive_time_s` includes the region), `num_runs`, and
for LLM nodes `num_requests`, `prompt_tokens`, `cached_tokens`, `computed_tokens`,
`completion_tokens` (and `pinned_tokens` for prefills), keyed `{function: {node_id: {...}}}`: the
format `compiler.codegen.dumps` takes. `BatchResult.stats` sums them over instances.

**Errors.** A failing node fails its instance with a `GraphExecutionError` naming the function,
node id, op, source loc and the switch path; the other instances go on. Errors are returned
(`InstanceResult.error`) or raised (`run`, `ProgramRun.result`), never swallowed, and the loop
cannot hang: it notices a dead engine thread and a stalled graph.

**Cancelling.** `ProgramRun.cancel()`, or a `Cancellation` passed as `cancel=` to `run` / `run_batch` /
`start` and flipped from another thread (an HTTP handler whose client left): the run's in-flight
requests (chained ones too) are aborted, its pins released, no further node runs, and every
unfinished instance ends with a `GraphExecutionError` starting "the run was cancelled"
(`CANCELLED`). Other runs on the engine are untouched. A host step already running finishes first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from compiler.ir import Graph, Module
from compiler.lang_sampling import RunDefaults
from compiler.prompt_state import PromptState
from executor.program.graph_host import HostPolicy
from executor.program.graph_llm import make_run_defaults
from executor.program.graph_plan import PlanCache
from executor.program.graph_results import BatchResult, GraphExecutionError, InstanceResult
from executor.program.graph_run import CANCELLED, Cancellation, Run, RunContext

__all__ = [
    "CANCELLED", "Cancellation", "BatchResult", "GraphExecutionError", "GraphExecutor", "InstanceResult", "ProgramRun",
    "PromptState", "RunDefaults",
]


class GraphExecutor:
    """Runs the graphs of `module` on `engine` (see the module docstring).

    `chat_format` renders role ops and gives a gen in an assistant role its end-of-turn stop: a
    `compiler.chat_template.ChatFormat` or any object with `prefix(role)`/`suffix(role)` (see
    `compiler/prompt_state.py`); None derives it from the engine's tokenizer on first use, as the
    eager interpreter does (`compiler.chat_template.get_chat_format`). Host steps call only what
    `executor/program/graph_host.py`'s `HostPolicy` allows: sgc's pure functions, plus `host_functions`
    (a Mapping of a step's `func` "module:qualname" to the callable, looked up with `.get`, or a
    module / modules whose functions the caller trusts), plus every live sgc `Function` of this
    process when `live_functions=True` (for graphs traced in-process, never for loaded data). A
    callable gets the operands' values (states as `PromptState`) positionally and must return a
    `PromptState` for `returns="state"`, a `str` for `returns="text"`, anything for `returns="value"`. `fsms` maps a gen's `fsm` id to a
    precompiled `TokenFSM` (from an artifact); without it the engine compiles the node's regex or
    schema on first use. `pin_budget` is the largest share of KV slots prefill pins may hold (0
    turns pinning off).
    """

    def __init__(self, engine: Any, module: Module | Graph, chat_format: Any | None = None,
                 host_functions: Any = None, *, function: str | None = None,
                 fsms: Mapping[str, Any] | None = None, pin_budget: float = 0.5,
                 live_functions: bool = False) -> None:
        if isinstance(module, Graph):
            module = module.module if module.module is not None else Module([module])
        module.verify()
        if function is not None and function not in module:
            raise ValueError(f"the module has no function @{function} (functions: "
                             f"{', '.join('@' + g.name for g in module)})")
        if not 0 <= pin_budget <= 1:
            raise ValueError(f"pin_budget must be in [0, 1], got {pin_budget}")
        self.engine = engine
        self.module = module
        self._chat_format = chat_format
        self.host_policy = HostPolicy.make(host_functions, live_functions=live_functions)
        self.function = function
        self.fsms = fsms
        self.pin_budget = pin_budget
        self.plans = PlanCache()

    # -- public API ------------------------------------------------------------------------------
    def run(self, arguments: Mapping[str, Any] | None = None, *, function: str | None = None,
            defaults: RunDefaults | None = None, cancel: Cancellation | None = None,
            **options: Any) -> InstanceResult:
        """Run one instance and return its result; raises its `GraphExecutionError` if it failed.

        Sampling defaults are `defaults` (a `compiler.lang_sampling.RunDefaults`) with `options`
        (SGLang's `run` keywords: `max_new_tokens`, `temperature`, `stop`, ...) applied on top.
        """
        batch = self.run_batch([arguments or {}], function=function, defaults=defaults, cancel=cancel, **options)
        result = batch[0]
        result.raise_for_error()
        return result

    def run_batch(self, batch_arguments: Sequence[Mapping[str, Any]], *, function: str | None = None,
                  progress_bar: bool = False, defaults: RunDefaults | None = None,
                  cancel: Cancellation | None = None, **options: Any) -> BatchResult:
        """Run many instances interleaved on the engine; failed instances carry their error.
        `cancel.cancel()` from another thread ends the unfinished ones (see the module docstring)."""
        run = Run(self._context(), self._entry(function), [dict(a) for a in batch_arguments],
                  make_run_defaults(defaults, **options), sinks=False, progress_bar=progress_bar)
        if cancel is not None:
            cancel.attach(run)
        return run.execute()

    def start(self, arguments: Mapping[str, Any] | None = None, *, function: str | None = None,
              defaults: RunDefaults | None = None, cancel: Cancellation | None = None,
              **options: Any) -> ProgramRun:
        """Start one instance in a background thread, streaming its text (`ProgramRun.text_iter`)."""
        run = Run(self._context(), self._entry(function), [dict(arguments or {})],
                  make_run_defaults(defaults, **options), sinks=True, progress_bar=False)
        if cancel is not None:
            cancel.attach(run)
        return ProgramRun(run)

    @property
    def chat_format(self) -> Any:
        """The chat format roles render with (derived from the engine's tokenizer if not given)."""
        if self._chat_format is None:
            from compiler.chat_template import get_chat_format

            folder = getattr(self.engine, "model_folder", None)
            model_name = getattr(folder, "name", "") or str(getattr(getattr(self.engine, "config", None),
                                                                       "model_path", ""))
            self._chat_format = get_chat_format(None, self.engine.tokenizer, model_name)
        return self._chat_format

    # -- helpers ----------------------------------------------------------------------------------
    def _entry(self, function: str | None) -> Graph:
        name = function or self.function
        if name is None:
            if len(self.module) != 1:
                raise ValueError("the module has several functions; pass function= "
                                 f"({', '.join('@' + g.name for g in self.module)})")
            name = next(iter(self.module)).name
        if name not in self.module:
            raise ValueError(f"the module has no function @{name} (functions: "
                             f"{', '.join('@' + g.name for g in self.module)})")
        return self.module[name]

    def _context(self) -> RunContext:
        return RunContext(self.engine, self.plans, self.host_policy, self.fsms, self.pin_budget,
                          lambda: self.chat_format)


class ProgramRun:
    """A streaming run of one instance (from `GraphExecutor.start`), executing in a thread."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._batch: BatchResult | None = None
        self._exception: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="sgc-graph-run", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._batch = self._run.execute()
        except BaseException as exc:  # surfaced by result(); the sink must still close
            self._exception = exc
        finally:
            for inst in self._run.instances:
                if inst.sink is not None:
                    inst.sink.close()

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield the instance's text as it is produced (only `var_name`'s gen output if given).

        The text is that of the function's main line (the state its output continues): appended
        text and generated text as it streams; text made inside fork branches appears when a
        `concate_and_append` join adds it. Raises the instance's error at the end if it failed.
        """
        sink = self._run.instances[0].sink
        assert sink is not None
        yield from sink.iterate(var_name)
        self.result()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """End the run from any thread: `result()` then raises its "the run was cancelled" error
        (unless it had already finished). Returns without waiting."""
        self._run.cancel(reason)

    def result(self, timeout: float | None = None) -> InstanceResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the program did not finish within {timeout} s")
        if self._exception is not None:
            raise self._exception
        assert self._batch is not None
        result = self._batch[0]
        result.raise_for_error()
        return result
