"""Compiled programs on a runtime: the glue between `compiler.driver` and `executor.program.graph_executor`.

`CompiledProgram` holds one optimized module, its token FSMs and a `GraphExecutor` on an engine;
`CompiledState` gives an executor result the eager interpreter's state API (`text()`, `messages()`,
`state[name]`, `set_var`, `get_meta_info`, `error()`, `text_iter`, `snapshot()`), so `Function.run` returns
the same kind of object whether it ran compiled or eagerly. The executor is imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from compiler.errors import ProgramError

__all__ = ["CompiledProgram", "CompiledState"]


class CompiledState:
    """One instance's result: a finished state, an error, or a streaming run (`ProgramRun`)."""

    def __init__(self, state: Any = None, error: BaseException | None = None, run: Any = None) -> None:
        self._state = state
        self._error = error
        self._run = run

    def _resolve(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            try:
                self._state = run.result().state
            except BaseException as exc:  # held like the eager interpreter holds it
                self._error = exc

    def _get(self) -> Any:
        self._resolve()
        if self._error is not None:
            raise self._error
        return self._state

    def text(self) -> str:
        return self._get().text

    def messages(self) -> list[dict[str, str]]:
        return self._get().messages

    def __getitem__(self, name: str) -> Any:
        state = self._get()
        if name not in state:
            raise KeyError(f"variable {name!r} is not set (set: {', '.join(map(repr, state.variables)) or 'none'})")
        return state[name]

    def get_var(self, name: str) -> Any:
        return self[name]

    def set_var(self, name: str, value: Any) -> None:
        """Bind a variable on the finished state (as SGLang's `state[name] = value` after a run)."""
        self._state = self._get().with_var(name, value)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._get()

    def get_meta_info(self, name: str) -> Any:
        return self._get().get_meta_info(name)

    def error(self) -> BaseException | None:
        self._resolve()
        return self._error

    def sync(self) -> None:
        self._get()

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Cancel a streaming run from any thread (its error then says it was cancelled); a finished
        state has nothing to cancel. For `run` / `run_batch`, pass a `Cancellation` as `cancel=`."""
        run = self._run
        if run is not None:
            run.cancel(reason)

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        if self._run is not None:
            run = self._run
            yield from run.text_iter(var_name)
            return
        state = self._get()
        yield state.text if var_name is None else str(state.variables.get(var_name, ""))

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False) -> Any:
        """`text_iter` for asyncio code (SGLang's)."""
        from compiler.lang_state import async_pieces

        async for piece in async_pieces(self, var_name, return_meta_data):
            yield piece

    def snapshot(self) -> dict[str, Any]:
        state = self._get()
        return {"text": state.text, "messages": state.messages, "variables": dict(state.variables),
                "meta_info": dict(state.meta_info), "role": state.open_role}

    def __repr__(self) -> str:
        self._resolve()
        if self._error is not None:
            return f"CompiledState(error={self._error!r})"
        return f"CompiledState({self._state!r})"


class CompiledProgram:
    """A compiled module on an engine: run its functions one at a time, in batches or streaming."""

    def __init__(self, engine: Any, module: Any, fsms: Mapping[str, Any] | None = None, *,
                 chat_format: Any = None, breaks: Sequence[Any] = (), host_functions: Any = None,
                 live_functions: bool = False) -> None:
        """`host_functions` / `live_functions`: what host steps may call (`executor.program.graph_host.HostPolicy`)."""
        from executor.program.graph_executor import GraphExecutor

        self.module = module
        self.fsms = dict(fsms or {})
        self.breaks = list(breaks)
        self.executor = GraphExecutor(engine, module, chat_format, host_functions, fsms=self.fsms,
                                      live_functions=live_functions)

    def arguments(self, function: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values the graph takes (bound arguments are constants in it)."""
        names = {node.op.name for node in self.module[function].args}
        return {k: v for k, v in values.items() if k in names}

    def run(self, function: str, values: Mapping[str, Any], defaults: Any, *, stream: bool = False,
            cancel: Any = None) -> CompiledState:
        """`cancel`: an `executor.program.graph_run.Cancellation` another thread may flip."""
        args = self.arguments(function, values)
        if stream:
            return CompiledState(run=self.executor.start(args, function=function, defaults=defaults, cancel=cancel))
        result = self.executor.run_batch([args], function=function, defaults=defaults, cancel=cancel)[0]
        if result.error is not None:
            raise result.error
        return CompiledState(result.state)

    def run_batch(self, function: str, batch: Sequence[Mapping[str, Any]], defaults: Any, *,
                  progress_bar: bool = False, cancel: Any = None) -> list[CompiledState]:
        args = [self.arguments(function, values) for values in batch]
        results = self.executor.run_batch(args, function=function, defaults=defaults, progress_bar=progress_bar,
                                          cancel=cancel)
        states = []
        for index, result in enumerate(results):
            if result.error is None:
                states.append(CompiledState(result.state))
            else:
                cause = result.error
                where = f"@{cause.function}: %{cause.node_id} ({cause.opname})" + (f" at {cause.loc}" if cause.loc else "")
                error = ProgramError(f"{where}: {cause.reason}", index)
                error.__cause__ = result.error
                states.append(CompiledState(error=error))
        return states
