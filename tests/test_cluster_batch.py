"""Batch runs over engine replicas (issue 16): prefix keys and the affinity queue (fast, no Ray), then
on a local 2-CPU Ray cluster with tiny random-model replicas (slow): 2 replicas write exactly what the
single-process `sgc run` writes, a replica killed mid-run loses no row and duplicates none, a run
resumes from its output after a crash (torn last line included), and bad rows fail alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.parser.ir_reader import parse_module
from executor.cluster.affinity import AffinityQueue, first_prefix, instance_key, prefix_key
from executor.cluster.batch import _OrderedWriter, read_written
from tests.ray_cluster import ray_local  # noqa: F401  (the session's Ray cluster)


class Chat:
    def prefix(self, role: str) -> str:
        return f"<{role}>"

    def suffix(self, role: str) -> str:
        return f"</{role}>"


CHAT = Chat()

DOC_QA = parse_module("""
func @qa {
  %0 = arg name="doc"
  %1 = arg name="question"
  %2 = state_new
  %3 = role_begin %2 role="system"
  %4 = const value="Answer about the document."
  %5 = append %3, %4
  %6 = role_end %5 role="system"
  %7 = const value="Document: "
  %8 = append %6, %7
  %9 = append %8, %0
  %10 = const value=" Question: "
  %11 = append %9, %10
  %12 = append %11, %1
  %13 = gen %12 name="answer" max_tokens=4
  %14 = output %13
}
""")["qa"]

FORKED = parse_module("""
func @judge {
  %0 = arg name="essay"
  %1 = state_new
  %2 = const value="Essay: "
  %3 = append %1, %2
  %4 = append %3, %0
  %5 = const value=" Verdict"
  %6 = prefill %4, %5
  %7 = fork %6 n=2
  %8 = branch %7 index=0
  %9 = gen %8 name="a" max_tokens=2
  %10 = branch %7 index=1
  %11 = gen %10 name="b" max_tokens=2
  %12 = join %6, %9, %11
  %13 = output %12
}
""")["judge"]


# -- prefix keys (fast) -------------------------------------------------------------------------


def test_the_first_prefix_ends_after_the_first_argument_text():
    text = first_prefix(DOC_QA, {"doc": "D1", "question": "why?"}, CHAT)
    assert text == "<system>Answer about the document.</system>Document: D1"
    same_doc = instance_key(DOC_QA, {"doc": "D1", "question": "how?"}, CHAT)
    assert same_doc == instance_key(DOC_QA, {"doc": "D1", "question": "why?"}, CHAT)
    assert same_doc != instance_key(DOC_QA, {"doc": "D2", "question": "why?"}, CHAT)


def test_a_prefill_is_the_shared_prefix():
    assert first_prefix(FORKED, {"essay": "E"}, CHAT) == "Essay: E Verdict"


def test_a_row_that_cannot_be_walked_still_gets_a_key():
    key = instance_key(DOC_QA, {"question": "no doc"}, CHAT)  # fails at run time, with its own message
    assert isinstance(key, str) and key == instance_key(DOC_QA, {"question": "no doc"}, CHAT)
    assert instance_key(DOC_QA, {"doc": {"nested": [1, None]}, "question": "q"}, CHAT)  # str() of any value


# -- the affinity queue (fast) ------------------------------------------------------------------


def test_same_prefix_rows_go_to_the_replica_that_took_the_group():
    keys = {i: "A" if i % 2 == 0 else "B" for i in range(8)}
    q = AffinityQueue(keys, 2, steal_margin=100)
    first = q.take(0, 2)
    second = q.take(1, 2)
    assert [keys[i] for i in first] == ["A", "A"] and [keys[i] for i in second] == ["B", "B"]
    q.done(0, first, 0)
    q.done(1, second, 0)
    for _ in range(3):
        for replica, key in ((0, "A"), (1, "B")):
            rows = q.take(replica, 1)
            assert all(keys[i] == key for i in rows)
            q.done(replica, rows, 0)
    assert q.home_of("A") == 0 and q.home_of("B") == 1


def test_an_idle_replica_steals_from_a_loaded_one():
    keys = {i: "A" for i in range(10)}
    q = AffinityQueue(keys, 2, steal_margin=2)
    assert len(q.take(0, 2)) == 2  # replica 0 adopts A: load 2 in flight + 8 waiting
    stolen = q.take(1, 2)
    assert len(stolen) == 2 and q.home_of("A") == 0  # balanced by queue length; A keeps its home
    q.done(0, [0, 1], 0)
    q.done(1, stolen, 0)
    q2 = AffinityQueue({0: "A", 1: "A", 2: "A"}, 2, steal_margin=3)
    q2.take(0, 1)  # replica 0's load is 3 (1 in flight, 2 waiting): not more than 3 above replica 1's 0
    assert q2.take(1, 1) == [] and len(q2) == 2


def test_rows_of_a_dead_replica_wait_again_first_and_are_adopted():
    keys = {i: "A" if i < 4 else "B" for i in range(8)}
    q = AffinityQueue(keys, 2, steal_margin=100)
    lost = q.take(0, 3)
    assert lost == [0, 1, 2]
    q.mark_dead(0)
    q.requeue(0, lost)
    assert q.take(0, 4) == []  # a dead replica takes nothing
    assert q.take(1, 4) == [0, 1, 2, 3]  # the oldest rows first, A now homed on replica 1
    assert q.home_of("A") == 1


def test_the_lookahead_bounds_how_far_ahead_rows_run():
    q = AffinityQueue({i: f"k{i}" for i in range(100)}, 1, lookahead=10)
    taken = []
    for _ in range(20):
        taken += q.take(0, 1)
    assert taken == list(range(10))
    q.done(0, taken[:5], 5)  # rows 0-4 written: the horizon moves to 15
    assert q.take(0, 1) == [10]


# -- the output file (fast) --------------------------------------------------------------------


def test_the_writer_writes_in_order_and_each_row_once(tmp_path):
    out = tmp_path / "out.jsonl"
    seen = []
    with out.open("w") as f:
        w = _OrderedWriter(f, [0, 1, 2], lambda i, r: seen.append(i))
        assert w.add(2, {"index": 2}) and seen == []
        assert w.add(0, {"index": 0}) and seen == [0]
        assert not w.add(2, {"index": 2, "again": True})
        assert w.add(1, {"index": 1}) and w.complete
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"index": 0}, {"index": 1}, {"index": 2}]


def test_reading_written_rows_cuts_a_torn_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 0, "text": "a"}\n{"index": 1, "text": "b"}\n{"index": 2, "te')
    assert read_written(out) == {0, 1}
    assert out.read_text() == '{"index": 0, "text": "a"}\n{"index": 1, "text": "b"}\n'
    out.write_text('{"index": 0}\n{"index": 1}')  # complete, only the newline missing
    assert read_written(out) == {0, 1} and out.read_text().endswith("}\n")
    out.write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"out.jsonl:2: not a results line"):
        read_written(out)
    assert read_written(tmp_path / "missing.jsonl") == set()


def test_prefix_keys_are_short_and_stable():
    assert prefix_key("abc") == prefix_key("abc") != prefix_key("abd") and len(prefix_key("x" * 10_000)) == 16


# -- on Ray (slow) ------------------------------------------------------------------------------

PROGRAM = '''\
import sgc


@sgc.function
def qa(s, doc, question):
    s += sgc.system("You answer questions about documents.")
    s += sgc.user("Document: " + doc + "\\nQuestion: " + question)
    s += sgc.assistant(sgc.gen("answer", max_tokens=6))
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += " Rate " + str(i) + ": " + sgc.gen("r", regex=r"[1-5]", max_tokens=2)
    forks.join()
    s += " ok? " + sgc.select("ok", choices=["yes", "no"])
'''


def _rows(n: int) -> list[dict]:
    return [{"doc": f"document {i % 4} " * 6, "question": f"question {i}?"} for i in range(n)]


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory, tiny_model_dirs) -> Path:
    from sgc.cli import main

    root = tmp_path_factory.mktemp("cluster_batch")
    (root / "prog.py").write_text(PROGRAM)
    assert main(["compile", str(root / "prog.py"), "-o", str(root / "prog.sgc"),
                 "--model", str(tiny_model_dirs["llama"])]) == 0
    rows = _rows(16)
    lines = [json.dumps(r) for r in rows[:5]]
    lines += ["not json", json.dumps({"doc": "d", "question": "q", "nope": 1}), json.dumps({"question": "no doc"}),
              json.dumps(["a", "list"]), json.dumps({"doc": {"nested": [1, None]}, "question": "odd"})]
    lines += [json.dumps(r) for r in rows[5:]]
    (root / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _run_args(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(root / "prog.sgc"), "--function", "qa", "--args", str(root / "rows.jsonl"), "--out", str(out),
            "--model", str(model), "--device", "cpu", "--max-new-tokens", "8", *extra]


@pytest.fixture(scope="module")
def single_process(batch_dir, tiny_model_dirs) -> list[dict]:
    from sgc.cli import main

    out = batch_dir / "single.jsonl"
    assert main(_run_args(batch_dir, tiny_model_dirs["llama"], out)) == 1  # the bad rows fail
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_two_replicas_write_what_one_process_writes(ray_local, batch_dir, tiny_model_dirs, single_process, capsys):  # noqa: F811
    from sgc.cli import main

    out = batch_dir / "two.jsonl"
    assert main(_run_args(batch_dir, tiny_model_dirs["llama"], out, "--replicas", "2", "--no-progress")) == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == single_process  # row for row: texts, variables and the bad rows' errors
    assert [r["index"] for r in lines] == list(range(21))
    errors = {r["index"]: r["error"] for r in lines if "error" in r}
    assert sorted(errors) == [5, 6, 7, 8]  # the hostile rows fail alone; the odd value is just text
    assert "rows.jsonl:6: bad arguments line" in errors[5] and "unknown argument 'nope'" in errors[6]
    assert "missing argument 'doc'" in errors[7] and "not a JSON object" in errors[8]
    assert "the first is row 5" in capsys.readouterr().err


def _load_job(batch_dir: Path, model: Path):
    from executor.cluster.batch import BatchRow
    from sgc.batch_run import ArtifactJob, prefix_keys

    data = (batch_dir / "prog.sgc").read_bytes()
    rows = [BatchRow(i, r) for i, r in enumerate(_rows(24))]
    return ArtifactJob(data, "qa", max_new_tokens=8), rows, prefix_keys(data, "qa", rows, str(model))


def _expected(batch_dir: Path, model: Path, rows) -> list[dict]:
    """The single-process lines of `rows` (one engine, one run_batch)."""
    import sgc

    with sgc.Runtime(str(model), device="cpu") as runtime:
        program = sgc.load(batch_dir / "prog.sgc", backend=runtime)
        states = program.qa.run_batch([r.args for r in rows], max_new_tokens=8, temperature=0.0)
        from sgc.batch_run import result_record

        return [{"index": r.index, **result_record(s)} for r, s in zip(rows, states)]


class _KillOnFirstWait:
    """The `ray` module, except that the driver's first `wait` (its first chunks are in flight, none
    collected) kills `actor` and returns only once it is dead. Killing from a record callback was
    racy: a fast replica could finish every row it held before the kill took effect, and then no
    death was seen at all."""

    def __init__(self, ray_module, actor) -> None:
        self._ray, self._actor, self.killed = ray_module, actor, False

    def __getattr__(self, name: str):
        return getattr(self._ray, name)

    def wait(self, *args, **kwargs):
        if not self.killed:
            self.killed = True
            self._ray.kill(self._actor)
            _wait_until_dead(self._ray, self._actor)
        return self._ray.wait(*args, **kwargs)


def _wait_until_dead(ray_api, actor, timeout_s: float = 20.0) -> None:
    """Block until calls to `actor` fail (it has died), at most `timeout_s`."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray_api.get(actor.ping.remote(), timeout=2.0)
        except Exception:
            return
        time.sleep(0.02)
    raise AssertionError("the killed replica still answers")


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_and_repeats_no_row(ray_local, batch_dir, tiny_model_dirs):  # noqa: F811
    import functools

    from executor.cluster.batch import run_on_replicas
    from executor.cluster.replica import start_replicas
    from sgc.runtime import Runtime

    model = tiny_model_dirs["llama"]
    job, rows, keys = _load_job(batch_dir, model)
    actors = start_replicas(2, functools.partial(Runtime, str(model), device="cpu"))
    ray_api = _KillOnFirstWait(ray_local, actors[1])
    out = batch_dir / "killed.jsonl"
    try:
        summary = run_on_replicas(job, rows, out, actors, keys, chunk=2, max_in_flight=6, ray_api=ray_api)
    finally:
        for a in actors:
            ray_local.kill(a)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(24))  # every row exactly once, in order
    assert summary.replica_deaths == 1 and summary.rerun > 0 and summary.failed == 0
    assert lines == _expected(batch_dir, model, rows)


@pytest.mark.slow
def test_a_run_resumes_from_its_output(ray_local, batch_dir, tiny_model_dirs):  # noqa: F811
    import functools

    from executor.cluster.batch import run_on_replicas
    from executor.cluster.replica import start_replicas
    from sgc.runtime import Runtime

    model = tiny_model_dirs["llama"]
    job, rows, keys = _load_job(batch_dir, model)
    rows = rows[:10]
    expected = _expected(batch_dir, model, rows)
    out = batch_dir / "resumed.jsonl"
    full = [json.dumps(r, ensure_ascii=False) + "\n" for r in expected]
    out.write_text("".join(full[:4]) + full[4][: len(full[4]) // 2])  # the crash tore row 4's line
    actors = start_replicas(1, functools.partial(Runtime, str(model), device="cpu"))
    ran = []
    try:
        summary = run_on_replicas(job, rows, out, actors, keys, resume=True,
                                  on_record=lambda i, r: ran.append(i))
    finally:
        ray_local.kill(actors[0])
    assert summary.skipped == 4 and sorted(ran) == list(range(4, 10))
    assert out.read_text() == "".join(full)
    with pytest.raises(ValueError, match="has a line for row 5"):
        run_on_replicas(job, rows[:5], out, [], keys, resume=True)


@pytest.mark.slow
def test_the_single_process_run_resumes_too(batch_dir, tiny_model_dirs, single_process, capsys):
    from sgc.cli import main

    out = batch_dir / "single_resumed.jsonl"
    full = [json.dumps(r, ensure_ascii=False) + "\n" for r in single_process]
    out.write_text("".join(full[:12]) + full[12][:7])
    assert main(_run_args(batch_dir, tiny_model_dirs["llama"], out, "--resume")) == 0  # the bad rows were kept
    assert out.read_text() == "".join(full)
    assert "(12 already in" in capsys.readouterr().err
    out.write_text('{"index": 99}\n')
    assert main(_run_args(batch_dir, tiny_model_dirs["llama"], out, "--resume")) == 1
    assert "has a line for row 99 but --args has 21 row(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_run_on_ray_from_python_with_a_loaded_program(ray_local, batch_dir, tiny_model_dirs):  # noqa: F811
    import sgc
    from sgc.batch_run import run_on_ray

    model = tiny_model_dirs["llama"]
    _, rows, _ = _load_job(batch_dir, model)
    with sgc.Runtime(str(model), device="cpu") as runtime:
        program = sgc.load(batch_dir / "prog.sgc", backend=runtime)
        out = batch_dir / "python.jsonl"
        summary = run_on_ray(program, "qa", [r.args for r in rows[:3]], out, replicas=1, model=str(model),
                             max_new_tokens=8, progress=False)
    assert summary.written == 3 and summary.failed == 0 and ray_local.is_initialized()  # not its cluster to stop
    assert [json.loads(line) for line in out.read_text().splitlines()] == _expected(batch_dir, model, rows[:3])


@pytest.mark.slow
def test_the_cli_starts_and_stops_its_own_local_cluster(batch_dir, tiny_model_dirs, single_process):
    """`sgc run --replicas` in a fresh process: no --ray-address starts a loopback-only cluster."""
    import os
    import subprocess
    import sys

    out = batch_dir / "own_cluster.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "sgc.cli", *_run_args(batch_dir, tiny_model_dirs["llama"], out,
                                                                      "--replicas", "1", "--no-progress")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the bad rows
    assert "4 of 21 instance(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == single_process


# -- recovery without Ray (fast): a stand-in for ray's put / get / wait and actors that die ---------


class _ActorDied(Exception):
    pass


class _TaskFailed(Exception):
    pass


class _FakeRay:
    class exceptions:
        RayActorError = _ActorDied
        RayTaskError = _TaskFailed

    @staticmethod
    def put(value):
        return value

    @staticmethod
    def get(ref):
        return ref.value()

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]


class _Ref:
    def __init__(self, actor, rows):
        self.actor, self.rows = actor, rows

    def value(self):
        """Evaluated when collected: a poison row kills the actor, and a dead actor's calls all fail."""
        if any(i in self.actor.poison for i, _ in self.rows):
            self.actor.dead = True
        if self.actor.dead:
            raise _ActorDied(f"actor {self.actor.name} died")
        self.actor.ran.extend(i for i, _ in self.rows)
        return [(i, {"text": f"row {i} ({args['x']})"}) for i, args in self.rows]


class _Method:
    def __init__(self, fn):
        self.remote = fn


class _FakeActor:
    def __init__(self, name, poison=()):
        self.name, self.poison, self.dead, self.ran = name, set(poison), False, []
        self.prepare = _Method(lambda job: _Prepared(self))
        self.run_rows = _Method(lambda key, items: _Ref(self, items))


class _Prepared:
    def __init__(self, actor):
        self.actor = actor

    def value(self):
        if self.actor.dead:
            raise _ActorDied("dead before the run")
        return "job"


class _Job:
    key = "job"


def _fake_run(tmp_path, actors, n=12, **kwargs):
    from executor.cluster.batch import BatchRow, run_on_replicas

    rows = [BatchRow(i, {"x": i}) for i in range(n)]
    keys = {i: f"k{i % 3}" for i in range(n)}
    out = tmp_path / "fake.jsonl"
    summary = run_on_replicas(_Job(), rows, out, actors, keys, chunk=2, max_in_flight=4, ray_api=_FakeRay(), **kwargs)
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def test_a_dead_replicas_rows_run_elsewhere_exactly_once(tmp_path):
    a, b = _FakeActor("a"), _FakeActor("b", poison=[1])  # the call holding row 1 kills b, and b's other calls
    summary, lines = _fake_run(tmp_path, [a, b], max_attempts=3)
    assert [r["index"] for r in lines] == list(range(12))
    assert all(r["text"] == f"row {r['index']} ({r['index']})" for r in lines)  # row 1 too: it ran on a
    assert summary.replica_deaths == 1 and summary.rerun >= 1 and summary.failed == 0
    assert sorted(a.ran + b.ran) == list(range(12))  # every row ran to completion once


def test_a_row_that_kills_every_replica_it_meets_gets_an_error_line(tmp_path):
    actors = [_FakeActor(n, poison=[5]) for n in "abcd"]
    summary, lines = _fake_run(tmp_path, actors, max_attempts=3)
    assert [r["index"] for r in lines] == list(range(12))
    assert "died 3 times" in lines[5]["error"] and "not retried" in lines[5]["error"]
    assert summary.replica_deaths == 3 and not actors[3].dead  # the fourth replica never got it
    errors = [r for r in lines if "error" in r]
    assert all("died 3 times" in r["error"] for r in errors) and summary.failed == len(errors)


def test_when_no_replica_is_left_the_rest_get_error_lines(tmp_path):
    only = _FakeActor("a", poison=[4])
    summary, lines = _fake_run(tmp_path, [only])
    assert [r["index"] for r in lines] == list(range(12))
    errors = {r["index"]: r["error"] for r in lines if "error" in r}
    assert 4 in errors and all("no replica is left" in e for e in errors.values())
    assert sorted(set(range(12)) - set(errors)) == sorted(only.ran)  # the others ran before it died
    assert summary.replica_deaths == 1 and summary.failed == len(errors)
