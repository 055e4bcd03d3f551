"""Batch runs over engine replicas: rows in, one JSON line per row out, in input order, exactly once.

`run_on_replicas(job, rows, out_path, actors, keys)` runs every row of a batch on Ray replicas
(`replica.start_replicas`) and writes `{"index": i, ...}` lines to `out_path`:

- **the job** (`RowJob`) is what each replica runs: it is bound once per replica (`prepare`) and then
  runs lists of rows (`run_rows`), every row's outcome in the answer, its error included. sgc's
  compiled programs are one kind of job (`sgc/batch_run.py`); the driver knows nothing of programs;
- **routing**: rows are grouped by the prefix key of their first prompt (`keys`, from
  `affinity.instance_key` over the compiled graph) and pulled by replicas through an
  `affinity.AffinityQueue`: a group stays on the replica that took it first (its prefix is cached
  there), idle replicas steal from the most loaded; a call carries up to `chunk` rows of one group
  and each replica has at most `max_in_flight` rows in flight;
- **writing**: results are written in input order as they complete (an ordered buffer holds the
  ones that finish early; the queue never runs more than `lookahead` rows ahead of the oldest
  unwritten one), each line flushed, with a progress bar;
- **replica death**: a call whose actor died (`RayActorError`) puts its rows back at the front of
  their groups for the replicas left; a row that was on `max_attempts` dead replicas gets an error
  line instead (it may be what kills them); when no replica is left, the rows not run get error
  lines. A row's line is written once: the writer drops any second result for an index;
- **resume** (`resume=True`): the rows already in `out_path` are skipped and the rest appended; a
  torn last line (the previous run died while writing it) is cut off and its row run again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from executor.cluster.affinity import AffinityQueue

__all__ = ["BatchRow", "BatchSummary", "RowJob", "RowRunner", "read_written", "run_on_replicas"]

logger = logging.getLogger("sgc.cluster")


class RowRunner(Protocol):
    """A job bound to one replica's backend."""

    def run(self, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        """(index, arguments) -> (index, record) for every row; a failed row's record has "error"."""
        ...


class RowJob(Protocol):
    """What every replica runs (picklable; `key` names it on the replicas)."""

    key: str

    def bind(self, backend: Any) -> RowRunner: ...


@dataclass
class BatchRow:
    """One input row: its arguments, or the error that keeps it from running (a bad input line)."""

    index: int
    args: dict[str, Any] | None
    error: str | None = None


@dataclass
class BatchSummary:
    """What a batch run did."""

    total: int  # rows in the input
    skipped: int = 0  # already in the output (resume)
    written: int = 0  # lines written by this run
    failed: int = 0  # of them, error lines
    replica_deaths: int = 0
    rerun: int = 0  # rows put back after their replica died
    elapsed_s: float = 0.0
    rows_per_replica: dict[int, int] = field(default_factory=dict)
    first_error: tuple[int, str] | None = None


# -- the output file ------------------------------------------------------------------------------


def read_written(path: str | os.PathLike[str]) -> set[int]:
    """The row indices already in an output file, cutting off a torn last line (see the module
    docstring). Raises `ValueError` naming the line when a complete line is not a result line."""
    path = Path(path)
    if not path.exists():
        return set()
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a results file")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last line has no newline: the run died while writing it
        torn = data[end:]
        try:
            json.loads(torn)
            end = len(data)  # a complete line that only lacks its newline
            with path.open("ab") as f:
                f.write(b"\n")
        except ValueError:
            with path.open("r+b") as f:
                f.truncate(end)
            logger.warning("%s: cut off a torn last line (%d bytes); its row runs again", path, len(torn))
    written: set[int] = set()
    for number, line in enumerate(data[:end].split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not a results line ({exc}); is this the output of an "
                             "sgc run?") from None
        index = record.get("index") if isinstance(record, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{path}:{number}: a results line without a row index")
        written.add(index)
    return written


class _OrderedWriter:
    """Writes records in the given order of indices as they complete; holds the early ones."""

    def __init__(self, out: IO[str], order: Sequence[int], on_write: Callable[[int, dict], None]) -> None:
        self.out = out
        self.order = list(order)
        self.position = 0
        self.pending: dict[int, dict] = {}
        self.seen: set[int] = set()
        self.on_write = on_write

    @property
    def next_index(self) -> int:
        """The oldest row not yet written (past the end: one more than the last index)."""
        return self.order[self.position] if self.position < len(self.order) else (self.order[-1] + 1 if self.order else 0)

    def add(self, index: int, record: dict) -> bool:
        """Take a row's record; False (and ignored) if that row already has one."""
        if index in self.seen:
            return False
        self.seen.add(index)
        self.pending[index] = record
        while self.position < len(self.order) and self.order[self.position] in self.pending:
            i = self.order[self.position]
            rec = self.pending.pop(i)
            self.out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            self.out.flush()
            self.position += 1
            self.on_write(i, rec)
        return True

    @property
    def complete(self) -> bool:
        return self.position == len(self.order)


# -- the run ----------------------------------------------------------------------------------------


def run_on_replicas(job: RowJob, rows: Sequence[BatchRow], out_path: str | os.PathLike[str], actors: Sequence[Any],
                    keys: Mapping[int, str], *, chunk: int = 4, max_in_flight: int = 16, lookahead: int = 4096,
                    max_attempts: int = 3, resume: bool = False, progress: bool = False,
                    on_record: Callable[[int, dict], None] | None = None, ray_api: Any = None) -> BatchSummary:
    """Run `rows` with `job` on `actors` and write their lines to `out_path` (module docstring).

    `keys` maps the index of each runnable row to its prefix key (rows without one form a group
    each). `on_record(index, record)` is called after each line is written (tests, progress).
    `ray_api` stands in for the `ray` module (`put`, `get`, `wait`, `exceptions`; tests)."""
    if ray_api is None:
        import ray as ray_api

    if chunk < 1 or max_in_flight < 1:
        raise ValueError("chunk and max_in_flight must be at least 1")
    started = time.perf_counter()
    out_path = Path(out_path)
    written_before = read_written(out_path) if resume else set()
    too_far = sorted(i for i in written_before if i >= len(rows))
    if too_far:
        raise ValueError(f"{out_path}: has a line for row {too_far[0]}, but the input has {len(rows)} rows: "
                         "is it the output of another input?")
    todo = [row for row in rows if row.index not in written_before]
    summary = BatchSummary(total=len(rows), skipped=len(rows) - len(todo))
    bar = _progress_bar(len(rows), summary.skipped) if progress else None

    def wrote(index: int, record: dict) -> None:
        summary.written += 1
        if "error" in record:
            summary.failed += 1
            if summary.first_error is None:
                summary.first_error = (index, str(record["error"]))
        if bar is not None:
            bar.update(1)
        if on_record is not None:
            on_record(index, record)

    mode = "a" if resume else "w"
    with out_path.open(mode, encoding="utf-8") as out:
        writer = _OrderedWriter(out, [row.index for row in todo], wrote)
        runnable = {}
        for row in todo:
            if row.error is not None or row.args is None:
                writer.add(row.index, {"index": row.index, "error": row.error or "no arguments"})
            else:
                runnable[row.index] = row.args
        if runnable:
            _Dispatcher(ray_api, job, actors, runnable, keys, writer, summary, chunk=chunk, max_in_flight=max_in_flight,
                        lookahead=lookahead, max_attempts=max_attempts).run()
        assert writer.complete, "every row has its line"
    if bar is not None:
        bar.close()
    summary.elapsed_s = time.perf_counter() - started
    return summary


class _Dispatcher:
    """The driver loop: pull rows for free replicas, wait for any call, write, recover."""

    def __init__(self, ray: Any, job: RowJob, actors: Sequence[Any], runnable: dict[int, dict], keys: Mapping[int, str],
                 writer: _OrderedWriter, summary: BatchSummary, *, chunk: int, max_in_flight: int, lookahead: int,
                 max_attempts: int) -> None:
        self.ray = ray
        self.actors = list(actors)
        self.runnable = runnable
        self.writer = writer
        self.summary = summary
        self.chunk = chunk
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.queue = AffinityQueue({i: keys.get(i, f"row-{i}") for i in runnable}, len(self.actors),
                                   lookahead=lookahead)
        self.calls: dict[Any, tuple[int, list[int]]] = {}  # ObjectRef -> (replica, rows)
        self.attempts: dict[int, int] = {}
        self.job_key = self._prepare(job)

    def _prepare(self, job: RowJob) -> str:
        """Bind the job on every replica; a replica that is already dead is left out."""
        job_ref = self.ray.put(job)
        refs = [actor.prepare.remote(job_ref) for actor in self.actors]
        key = job.key
        for replica, ref in enumerate(refs):
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._lose(replica, exc)
            except self.ray.exceptions.RayTaskError as exc:  # the job cannot run there: the whole run cannot
                raise RuntimeError(f"replica {replica} could not prepare the job: {_cause(exc)}") from None
        return key

    def run(self) -> None:
        while not self.writer.complete:
            self._dispatch()
            if not self.calls:
                if not any(self.queue.alive):
                    self._fail_rest("no replica is left (every replica died)")
                    return
                if not len(self.queue):
                    return  # nothing waiting and nothing in flight: all rows were written
                time.sleep(0.01)  # rows wait beyond the lookahead of a row that is being rerun
                continue
            ready, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=1.0)
            for ref in ready:
                self._collect(ref)

    def _dispatch(self) -> None:
        for replica in range(len(self.actors)):
            while self.queue.alive[replica]:
                room = self.max_in_flight - self.queue.in_flight[replica]
                rows = self.queue.take(replica, min(self.chunk, room))
                if not rows:
                    break
                for i in rows:
                    self.attempts[i] = self.attempts.get(i, 0) + 1
                items = [(i, self.runnable[i]) for i in rows]
                ref = self.actors[replica].run_rows.remote(self.job_key, items)
                self.calls[ref] = (replica, rows)

    def _collect(self, ref: Any) -> None:
        replica, rows = self.calls.pop(ref)
        try:
            results = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._lose(replica, exc)
            self._rerun(replica, rows)
            return
        except Exception as exc:  # the job itself raised: those rows fail, the run goes on
            message = f"replica {replica} failed to run the row: {_cause(exc)}"
            self.queue.done(replica, rows, self.writer.next_index)
            for i in rows:
                self.writer.add(i, {"index": i, "error": message})
            return
        got = dict(results)
        self.summary.rows_per_replica[replica] = self.summary.rows_per_replica.get(replica, 0) + len(rows)
        for i in rows:
            record = got.get(i)
            if record is None:
                record = {"error": f"replica {replica} returned no result for the row"}
            self.writer.add(i, {"index": i, **record})
        self.queue.done(replica, rows, self.writer.next_index)

    def _lose(self, replica: int, exc: BaseException) -> None:
        if self.queue.alive[replica]:
            self.queue.mark_dead(replica)
            self.summary.replica_deaths += 1
            logger.warning("replica %d died (%s); its unfinished rows run elsewhere", replica, _cause(exc))

    def _rerun(self, replica: int, rows: list[int]) -> None:
        again = [i for i in rows if self.attempts.get(i, 0) < self.max_attempts]
        given_up = [i for i in rows if i not in again]
        if given_up:
            self.queue.done(replica, given_up, self.writer.next_index)
            for i in given_up:
                self.writer.add(i, {"index": i, "error": f"the replica running this row died {self.attempts[i]} "
                                                          "times (the row may be what kills it); not retried"})
        if again:
            self.summary.rerun += len(again)
            self.queue.requeue(replica, again)

    def _fail_rest(self, message: str) -> None:
        for i in sorted(self.runnable):
            if i not in self.writer.seen:
                self.writer.add(i, {"index": i, "error": message})


def _cause(exc: BaseException) -> str:
    """The last line of a Ray error (the original exception), short."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:500]


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sgc run", unit="row")
