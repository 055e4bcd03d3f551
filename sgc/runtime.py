"""`sgc.Runtime`: a handle on an LLM runtime that starts it on first use (SGLang's `sgl.Runtime`).

`sgc.set_default_backend(sgc.Runtime(model_path=...))` is cheap: the `Engine` (model load, KV pool,
scheduler thread) is created the first time a program runs on it.

`Runtime` owns "compile + execute": `Function.run`/`run_batch` delegate to `run_function` /
`run_function_batch`, which compile the function on first use (`compiler.driver`: trace, passes at
`opt_level` or `$SGC_OPT_LEVEL`, compile-constraints for this model's tokenizer) and run the module
with the graph executor (`sgc.compiled`). Compiled modules are cached per (function, bound
arguments, opt level, tokenizer fingerprint).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["Runtime"]


class Runtime:
    """A lazily started `executor.runtime.engine.Engine`.

    `model_path` and `engine_kwargs` go to the engine (`device`, `max_total_tokens`, ...).
    `disable_passes` leaves those compiler passes out of every compile on this runtime (ablations:
    `Runtime(disable_passes=["hoist-prefix"])`; `compiler.passes.manager.DEFAULT_PIPELINE` names them).
    `chat_template` overrides the chat format roles render with: a name from
    `compiler.chat_template.FORMATS` (`"chatml"`, `"llama-3"`, ...) or a `ChatFormat`; by default the
    model's own template is used.
    """

    # Whether compiling a program here compiles its constraint tables for the runtime's tokenizer
    # (a remote runtime, `RuntimeEndpoint`, gets regexes and schemas instead).
    compiles_constraints = True

    def __init__(self, model_path: str = "smollm2-135m-instruct", *, chat_template: Any = None,
                 disable_passes: Iterable[str] = (), **engine_kwargs: Any) -> None:
        from compiler.passes.manager import default_pipeline

        default_pipeline(disable=disable_passes)  # an unknown name fails here, not at the first run
        self.model_path = model_path
        self.chat_template = chat_template
        self.disable_passes = tuple(sorted(set(disable_passes)))
        self.engine_kwargs = engine_kwargs
        self._engine: Any = None
        self._lock = threading.Lock()
        self._compiled: dict[tuple[Any, ...], Any] = {}
        self._compile_lock = threading.Lock()

    @property
    def engine(self) -> Any:
        """The engine, started on first access."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from executor.runtime.engine import Engine

                    self._engine = Engine(model_path=self.model_path, **self.engine_kwargs)
        return self._engine

    @property
    def started(self) -> bool:
        return self._engine is not None

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompt: Any = None, sampling_params: Any = None, **kwargs: Any) -> Any:
        return self.engine.generate(prompt, sampling_params, **kwargs)

    # -- compile + execute -------------------------------------------------------------------------
    def chat_format(self) -> Any:
        """The chat format roles render with (the same one the eager interpreter uses)."""
        from compiler.interpreter import resolve_backend

        return resolve_backend(self).chat_format

    def tokenizer_fingerprint(self) -> str:
        from compiler.driver import tokenizer_fingerprint

        return tokenizer_fingerprint(self.engine.tokenizer)

    def compile(self, function: Any, opt_level: int | None = None) -> Any:
        """The `sgc.compiled.CompiledProgram` of `function` on this runtime (cached)."""
        from compiler.driver import compile_program, resolve_opt_level
        from sgc.compiled import CompiledProgram

        level = resolve_opt_level(opt_level)
        tokenizer = self.engine.tokenizer
        key = (function.func, _freeze(function.bind_arguments), level, self.tokenizer_fingerprint())
        with self._compile_lock:
            program = self._compiled.get(key)
            if program is None:
                result = compile_program(function, opt_level=level,
                                         tokenizer=tokenizer if self.compiles_constraints else None,
                                         disable_passes=self.disable_passes)
                # traced here from the caller's own code: its host steps may call its live functions
                program = CompiledProgram(self.engine, result.module, result.fsms,
                                          chat_format=self.chat_format(), breaks=result.breaks,
                                          live_functions=True)
                self._compiled[key] = program
        return program

    def run_function(self, function: Any, values: dict[str, Any], defaults: Any, *, stream: bool = False,
                     opt_level: int | None = None) -> Any:
        """Run one instance of `function` compiled (see the module docstring)."""
        return self.compile(function, opt_level).run(function.name, values, defaults, stream=stream)

    def run_function_batch(self, function: Any, batch: list[dict[str, Any]], defaults: Any, *,
                           progress_bar: bool = False, generator_style: bool = False,
                           opt_level: int | None = None) -> Any:
        states = self.compile(function, opt_level).run_batch(function.name, batch, defaults,
                                                             progress_bar=progress_bar)
        return iter(states) if generator_style else states

    # -- SGLang's server calls (`sgl.flush_cache()`, `sgl.get_server_info()`) ----------------------
    def flush_cache(self) -> bool:
        """Drop the cached prefixes no running request holds; True once done (nothing to do if not started)."""
        return True if self._engine is None else self._engine.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        """What SGLang's server info says that sgc has: the version, the model and the engine's settings."""
        return server_info(self._engine, self.model_path)

    def shutdown(self) -> None:
        with self._lock:
            self._compiled.clear()
            if self._engine is not None:
                self._engine.shutdown()
                self._engine = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "started" if self.started else "not started"
        return f"Runtime(model_path={self.model_path!r}, {state})"


def _freeze(value: Any) -> Any:
    """A hashable key for bound argument values (lists, dicts, ...)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def server_info(engine: Any, model_path: str | None = None) -> dict[str, Any]:
    """`get_server_info()`: sgc's version, the model, whether the engine runs, and its config."""
    import dataclasses

    from compiler.version import __version__

    info: dict[str, Any] = {"version": __version__, "model_path": model_path, "started": engine is not None}
    config = getattr(engine, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        info.update(dataclasses.asdict(config))
        info["num_kv_slots"] = getattr(engine, "num_kv_slots", None)
    return info
