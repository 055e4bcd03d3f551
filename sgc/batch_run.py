"""Batch runs of a compiled function on Ray replicas: what `sgc run --replicas N` does, from Python too.

```python
from sgc.batch_run import run_on_ray
summary = run_on_ray("program.sgc", "qa", [{"question": "Why?"}, ...], "results.jsonl", replicas=4,
                     ray_address=None)   # None: a new local cluster on 127.0.0.1; or "HOST:6379"
```

The program goes to every replica as its artifact's bytes (a `.py` program is compiled here first,
its source inside: its host steps run with `import_source`), each replica loads it once onto its
own engine with `sgc.load` (`ArtifactJob`) and runs rows through `LoadedFunction.run_batch`, so a
row's line is exactly what the single-process `sgc run` writes (`result_record`). Routing,
ordering, recovery and resume are `executor/cluster/batch.py`'s; the prefix key of each row comes
from the compiled graph here (`executor.cluster.affinity.instance_key`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.cluster.batch import BatchRow, BatchSummary

__all__ = ["ArtifactJob", "BatchRow", "BatchSummary", "artifact_bytes", "result_record", "run_on_ray"]


def result_record(state: Any) -> dict[str, Any]:
    """A finished instance's line (without its index): text and variables, or its error."""
    error = state.error()
    if error is not None:
        return {"error": str(error)}
    snap = state.snapshot()
    return {"text": snap["text"], "variables": snap["variables"]}


@dataclass(frozen=True)
class ArtifactJob:
    """`executor.cluster.batch.RowJob` for one function of an artifact (sent to every replica)."""

    artifact: bytes
    function: str
    strict_tokenizer: bool = False
    import_source: bool = False
    max_new_tokens: int = 128
    temperature: float = 0.0

    @property
    def key(self) -> str:
        h = hashlib.blake2b(self.artifact, digest_size=12)
        h.update(repr((self.function, self.strict_tokenizer, self.import_source, self.max_new_tokens,
                       self.temperature)).encode())
        return h.hexdigest()

    def bind(self, backend: Any) -> _BoundArtifact:
        from sgc.loader import load

        folder = Path(tempfile.mkdtemp(prefix="sgc-replica-"))
        path = folder / "program.sgc"
        path.write_bytes(self.artifact)
        program = load(path, backend=backend, strict_tokenizer=self.strict_tokenizer,
                       import_source=self.import_source)
        return _BoundArtifact(program[self.function], self.max_new_tokens, self.temperature)


class _BoundArtifact:
    """An `ArtifactJob` on one replica's `Runtime`."""

    def __init__(self, function: Any, max_new_tokens: int, temperature: float) -> None:
        self.function = function
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def run(self, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        try:
            states = self.function.run_batch([args for _, args in rows], max_new_tokens=self.max_new_tokens,
                                             temperature=self.temperature)
        except Exception as exc:  # the function is locked, or the batch could not start: every row says so
            return [(index, {"error": f"{type(exc).__name__}: {exc}"}) for index, _ in rows]
        return [(index, result_record(state)) for (index, _), state in zip(rows, states)]


def artifact_bytes(program: str | os.PathLike[str], function: str, model: str) -> tuple[bytes, bool]:
    """The artifact to ship: a `.sgc` file's bytes, or a `.py` program compiled here for `model`'s
    tokenizer (its source inside). Returns (bytes, whether the source must be imported to run)."""
    path = Path(program)
    if path.suffix != ".py":
        return path.read_bytes(), False
    from compiler.codegen.artifact import write_artifact
    from compiler.driver import compile_program_file
    from executor.runtime.tokenizer import Tokenizer
    from models import resolve_model

    tokenizer = Tokenizer(resolve_model(model))
    result = compile_program_file(path, functions=[function], tokenizer=tokenizer)
    with tempfile.TemporaryDirectory(prefix="sgc-compile-") as tmp:
        out = Path(tmp) / "program.sgc"
        write_artifact(out, result.module, result.fsms, source_text=path.read_text(encoding="utf-8"),
                       source_name=path.name, tokenizer_fingerprint=result.fingerprint,
                       extra={"opt_level": result.opt_level, "model": model})
        return out.read_bytes(), True


def prefix_keys(data: bytes, function: str, rows: Sequence[BatchRow], model: str) -> dict[int, str]:
    """Each runnable row's prefix key, from the compiled graph (executor/cluster/affinity.py)."""
    from compiler.chat_template import get_chat_format
    from executor.cluster.affinity import instance_key
    from executor.runtime.tokenizer import Tokenizer
    from models import resolve_model

    graph = _function_graph(data, function)
    folder = resolve_model(model)
    chat_format = get_chat_format(None, Tokenizer(folder), Path(folder).name)
    return {row.index: instance_key(graph, row.args, chat_format) for row in rows if row.args is not None}


def function_arguments(data: bytes, function: str) -> list[str]:
    """The argument names of `function` in an artifact (to check rows before anything starts)."""
    return [node.op.name for node in _function_graph(data, function).args]


def _function_graph(data: bytes, function: str) -> Any:
    """`function`'s graph in the artifact `data` (read as the loader reads a file: data only)."""
    from compiler.codegen.artifact import read_artifact

    with tempfile.TemporaryDirectory(prefix="sgc-artifact-") as tmp:
        path = Path(tmp) / "program.sgc"
        path.write_bytes(data)
        module = read_artifact(path).module
    if function not in module:
        raise ValueError(f"the program has no function {function!r} (functions: {', '.join(g.name for g in module)})")
    return module[function]


def run_on_ray(program: str | os.PathLike[str] | bytes | Any, function: str,
               rows: Sequence[Mapping[str, Any] | BatchRow], out_path: str | os.PathLike[str], *,
               replicas: int, ray_address: str | None = None, model: str = "smollm2-135m-instruct",
               device: str = "cpu", cores_per_replica: int = 1, gpus_per_replica: float = 0,
               max_new_tokens: int = 128, temperature: float = 0.0, strict_tokenizer: bool = False,
               import_source: bool = False, resume: bool = False, progress: bool = True,
               engine_kwargs: Mapping[str, Any] | None = None, **batch_options: Any) -> BatchSummary:
    """Run `function` of `program` (a `.sgc` file, a `.py` compiled here, an `sgc.load(...)` program,
    or an artifact's bytes from `artifact_bytes`) for every row on `replicas`
    Ray actors and write one line per row to `out_path` in input order (see the module docstring).

    `rows` are argument dicts or `BatchRow`s (a row with an error is written as that error). The
    replicas are started here and stopped at the end; the Ray cluster is joined at `ray_address`
    or started locally (and then shut down). `batch_options` go to
    `executor.cluster.batch.run_on_replicas` (`chunk`, `max_in_flight`, `on_record`, ...)."""
    from executor.cluster.batch import run_on_replicas
    from executor.cluster.ray_setup import connect
    from executor.cluster.replica import start_replicas
    from sgc.runtime import Runtime

    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    batch = [row if isinstance(row, BatchRow) else BatchRow(i, dict(row)) for i, row in enumerate(rows)]
    if any(row.index != i for i, row in enumerate(batch)):
        raise ValueError("rows must be numbered 0, 1, 2, ... in order")
    if isinstance(program, bytes):
        data, needs_source = program, False
    elif hasattr(program, "artifact") and hasattr(program, "path"):  # an sgc.load(...) program: its file
        data, needs_source = Path(program.path).read_bytes(), False
    else:
        data, needs_source = artifact_bytes(program, function, model)
    keys = prefix_keys(data, function, batch, model)
    job = ArtifactJob(data, function, strict_tokenizer=strict_tokenizer, import_source=import_source or needs_source,
                      max_new_tokens=max_new_tokens, temperature=temperature)
    factory = functools.partial(Runtime, model, device=device if gpus_per_replica else "cpu", **dict(engine_kwargs or {}))
    ray, started = connect(ray_address)
    actors: list[Any] = []
    try:
        actors = start_replicas(replicas, factory, num_cpus=cores_per_replica, num_gpus=gpus_per_replica)
        return run_on_replicas(job, batch, out_path, actors, keys, resume=resume, progress=progress, **batch_options)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if started:
            ray.shutdown()
