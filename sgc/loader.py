"""`sgc.load(path)`: a compiled `.sgc` artifact, ready to run on a `Runtime`.

```python
program = sgc.load("program.sgc")                       # the default model, or backend=sgc.Runtime(...)
state = program.qa.run(question="Why?", temperature=0)  # the same state API as Function.run
states = program.qa.run_batch([{"question": "A"}, {"question": "B"}])
```

Loading reads the artifact as data (`compiler.codegen.artifact.read_artifact`, bounded by the
budgets of `compiler.budgets`); nothing in it is executed, and running it calls only code you allowed.
Its host steps may call sgc's pure functions (`executor.program.graph_host.PURE_FUNCTIONS`) and nothing else
unless you opt in, as `torch.load(weights_only=True)` is safe unless told otherwise:

- `host_functions=my_program` (a module, modules, or a mapping of "module:qualname" to callables):
  steps of a function that needs the host (`needs_host`) call the functions of that module;
- `import_source=True` imports the artifact's `source.py` and trusts it: that runs the program's code.

An artifact that names anything else is refused at load with an `ArtifactError` naming the node and
the function. Constraint tables are checked against the backend's vocabulary; tables compiled for
another tokenizer are recompiled from the IR within the constraint budgets (or refused with
`strict_tokenizer=True`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compiler.codegen.artifact import Artifact, ArtifactError, read_artifact
from compiler.lang_sampling import RunDefaults

__all__ = ["LoadedFunction", "LoadedProgram", "load"]

_SAMPLING = frozenset(f.name for f in dataclasses.fields(RunDefaults))


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], RunDefaults]:
    """Program arguments and the run defaults built from the sampling keywords among `kwargs`."""
    sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING}
    return kwargs, RunDefaults.make(**sampling)


class LoadedFunction:
    """One compiled function of a loaded program: `run(**args)`, `run_batch([args, ...])`."""

    def __init__(self, program: LoadedProgram, name: str) -> None:
        self.program = program
        self.name = name
        self.graph = program.module[name]
        self.arg_names = [node.op.name for node in self.graph.args]

    def __repr__(self) -> str:
        return f"<sgc.LoadedFunction {self.name}({', '.join(self.arg_names)})>"

    def run(self, *, stream: bool = False, **kwargs: Any) -> Any:
        """Run one instance; returns its state (`text()`, `state[name]`, ...); raises if it failed."""
        return self.run_arguments(kwargs, stream=stream)

    def run_arguments(self, arguments: Mapping[str, Any], *, stream: bool = False, cancel: Any = None,
                      **options: Any) -> Any:
        """`run` with the program's arguments in a dict, so that none of them can clash with a keyword
        of this call; `cancel`: an `executor.program.graph_run.Cancellation` another thread may flip
        (the server's program routes cancel a run whose client left)."""
        self._check_unlocked()
        values, defaults = _split({**arguments, **options})
        return self.program.compiled.run(self.name, values, defaults, stream=stream, cancel=cancel)

    def _check_unlocked(self) -> None:
        why = self.program.locked.get(self.name)
        if why is not None:
            raise ArtifactError(f"{self.program.path}: {why}")

    def run_batch(self, batch_kwargs: Sequence[dict[str, Any]], *, progress_bar: bool = False,
                  cancel: Any = None, **options: Any) -> list[Any]:
        """Run many instances together; a failed one's state holds its error (`state.error()`)."""
        self._check_unlocked()
        extra, defaults = _split(dict(options))
        if extra:
            raise TypeError(f"run_batch got unknown option(s) {sorted(extra)}")
        return self.program.compiled.run_batch(self.name, [dict(kw) for kw in batch_kwargs], defaults,
                                               progress_bar=progress_bar, cancel=cancel)


class LoadedProgram:
    """The functions of an artifact, as attributes (`program.qa`) and by name (`program["qa"]`)."""

    def __init__(self, artifact: Artifact, backend: Any, path: Path, host_policy: Any = None,
                 locked: dict[str, str] | None = None) -> None:
        from sgc.compiled import CompiledProgram

        self.artifact = artifact
        self.path = path
        self.backend = backend
        self.module = artifact.module
        self.manifest = artifact.manifest
        self.compiled = CompiledProgram(backend.engine, self.module, artifact.fsms, chat_format=backend.chat_format(),
                                        host_functions=host_policy)
        self.locked = dict(locked or {})  # function -> why it may not run (host steps nobody opted into)
        self.functions = {g.name: LoadedFunction(self, g.name) for g in self.module}

    def __getattr__(self, name: str) -> LoadedFunction:
        functions = self.__dict__.get("functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError(f"the program has no function {name!r} (functions: {', '.join(functions) or 'none'})")

    def __getitem__(self, name: str) -> LoadedFunction:
        return getattr(self, name)

    def __iter__(self):
        return iter(self.functions.values())

    def __repr__(self) -> str:
        return f"<sgc.LoadedProgram {self.path.name}: {', '.join(self.functions)}>"


def load(path: str | os.PathLike[str], *, backend: Any = None, strict_tokenizer: bool = False,
         import_source: bool = False, host_functions: Any = None) -> LoadedProgram:
    """Load a `.sgc` artifact onto `backend` (an `sgc.Runtime`; default: the default backend if it
    is one, else a `Runtime` of the default model). See the module docstring for `host_functions`
    and `import_source`."""
    from compiler.constraints import ConstraintError
    from compiler.driver import compile_constraint_tables
    from compiler.lang import get_default_backend
    from executor.program.graph_host import HostPolicy
    from sgc.runtime import Runtime

    if backend is None:
        default = get_default_backend()
        backend = default if isinstance(default, Runtime) else Runtime()
    if not isinstance(backend, Runtime):
        raise TypeError(f"backend must be an sgc.Runtime, got {backend!r}")
    path = Path(path)
    artifact = read_artifact(path, tokenizer_fingerprint=backend.tokenizer_fingerprint(),
                             on_tokenizer_mismatch="error" if strict_tokenizer else "recompile")
    policy = HostPolicy.make(host_functions)
    if import_source:  # the caller trusts the artifact's program: its module, under either name
        module = _import_source(artifact, path)
        policy = dataclasses.replace(policy, modules=policy.modules | {module.__name__, _program_module(artifact)})
    locked = _lock_host_functions(artifact, policy, path)
    vocab_size = backend.engine.tokenizer.vocab_size
    if artifact.fsms_stale:
        try:
            artifact.fsms = compile_constraint_tables(artifact.module, backend.engine.tokenizer)
        except ConstraintError as exc:
            raise ArtifactError(f"{path}: recompiling its constraints for this model's tokenizer failed: {exc}") from None
        artifact.fsms_stale = False
    for ident, fsm in artifact.fsms.items():
        try:
            fsm.check(vocab_size)
        except ValueError as exc:
            raise ArtifactError(f"{path}: constraint table {ident} does not fit this model's vocabulary: {exc}") from None
    return LoadedProgram(artifact, backend, path, policy, locked)


def _lock_host_functions(artifact: Artifact, policy: Any, path: Path) -> dict[str, str]:
    """Refuse host steps that name anything but sgc's pure functions or the artifact's own program;
    those that name its program without an opt-in lock their function (returned: name -> why)."""
    from executor.program.graph_host import describe_refusal

    own = _program_module(artifact)
    locked: dict[str, str] = {}
    for function, node in policy.refused(artifact.module):
        why = describe_refusal(function, node)
        if not own or node.op.func.partition(":")[0] != own:
            raise ArtifactError(f"{path}: {why}")
        locked.setdefault(function, why)
    return locked


_MODULE_NAME = re.compile(r"[^0-9A-Za-z_]")


def _program_module(artifact: Artifact) -> str:
    """The module name the artifact's program had when it was compiled (from its source file name)."""
    return _MODULE_NAME.sub("_", Path(str(artifact.manifest.get("source_name") or "")).stem)


def _import_source(artifact: Artifact, path: Path) -> Any:
    """Import the artifact's source (under its original module name) so its host steps resolve."""
    from compiler.parser.tracer import load_program_file

    if not artifact.source:
        raise ArtifactError(f"{path}: the artifact has no source to import")
    name = Path(artifact.manifest.get("source_name") or "program.py").name
    if not name.endswith(".py") or not name[:-3].replace("_", "a").isalnum():
        name = "program.py"
    folder = Path(tempfile.mkdtemp(prefix="sgc-source-"))
    file = folder / name
    file.write_text(artifact.source, encoding="utf-8")
    return load_program_file(file)
