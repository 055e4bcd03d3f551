"""`sgc.load(path)`: a compiled `.sgc` artifact, ready to run on a `Runtime`.

```python
program = sgc.load("program.sgc")                       # the default model, or backend=sgc.Runtime(...)
state = program.qa.run(question="Why?", temperature=0)  # the same state API as Function.run
states = program.qa.run_batch([{"question": "A"}, {"question": "B"}])
```

Loading reads the artifact as data (`compiler.codegen.artifact.read_artifact`); nothing in it is
executed. If its constraint tables were compiled for another tokenizer than the backend's, they are
recompiled from the IR (or refused with `strict_tokenizer=True`). A function whose graph needs the
host (`needs_host`) runs only if its Python function is live in this process (imported), or with
`import_source=True`, which imports the artifact's `source.py`: that runs the program's code.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
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
        values, defaults = _split(dict(kwargs))
        return self.program.compiled.run(self.name, values, defaults, stream=stream)

    def run_batch(self, batch_kwargs: Sequence[dict[str, Any]], *, progress_bar: bool = False,
                  **options: Any) -> list[Any]:
        """Run many instances together; a failed one's state holds its error (`state.error()`)."""
        extra, defaults = _split(dict(options))
        if extra:
            raise TypeError(f"run_batch got unknown option(s) {sorted(extra)}")
        return self.program.compiled.run_batch(self.name, [dict(kw) for kw in batch_kwargs], defaults,
                                               progress_bar=progress_bar)


class LoadedProgram:
    """The functions of an artifact, as attributes (`program.qa`) and by name (`program["qa"]`)."""

    def __init__(self, artifact: Artifact, backend: Any, path: Path) -> None:
        from sgc.compiled import CompiledProgram

        self.artifact = artifact
        self.path = path
        self.backend = backend
        self.module = artifact.module
        self.manifest = artifact.manifest
        self.compiled = CompiledProgram(backend.engine, self.module, artifact.fsms, chat_format=backend.chat_format())
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
         import_source: bool = False) -> LoadedProgram:
    """Load a `.sgc` artifact onto `backend` (an `sgc.Runtime`; default: the default backend if it
    is one, else a `Runtime` of the default model). See the module docstring."""
    from compiler.driver import compile_constraint_tables
    from compiler.lang import get_default_backend
    from sgc.runtime import Runtime

    if backend is None:
        default = get_default_backend()
        backend = default if isinstance(default, Runtime) else Runtime()
    if not isinstance(backend, Runtime):
        raise TypeError(f"backend must be an sgc.Runtime, got {backend!r}")
    path = Path(path)
    artifact = read_artifact(path, tokenizer_fingerprint=backend.tokenizer_fingerprint(),
                             on_tokenizer_mismatch="error" if strict_tokenizer else "recompile")
    if artifact.fsms_stale:
        artifact.fsms = compile_constraint_tables(artifact.module, backend.engine.tokenizer)
        artifact.fsms_stale = False
    if import_source:
        _import_source(artifact, path)
    return LoadedProgram(artifact, backend, path)


def _import_source(artifact: Artifact, path: Path) -> None:
    """Import the artifact's source (under its original module name) so its host steps resolve."""
    from compiler.parser.tracer import load_program_file

    if not artifact.source:
        raise ArtifactError(f"{path}: the artifact has no source to import")
    name = Path(artifact.manifest.get("source_name") or "program.py").name
    folder = Path(tempfile.mkdtemp(prefix="sgc-source-"))
    file = folder / name
    file.write_text(artifact.source, encoding="utf-8")
    load_program_file(file)
