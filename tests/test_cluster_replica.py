"""An engine replica as a Ray actor and `ReplicaClient`, the runtime client interface over it (issue 16),
on a local 2-CPU Ray cluster with a tiny random model: the program executor gets the same results
through the proxy as from an in-process engine (forks with prefill pins, constrained gens, selects,
streaming), the interface's calls work across the actor, bad requests fail alone, and a killed
replica fails what was in flight instead of hanging."""

from __future__ import annotations

import functools

import pytest

from tests.ray_cluster import ray_local  # noqa: F401  (the session's Ray cluster)

pytestmark = pytest.mark.slow

PROGRAM = '''\
import sgc


@sgc.function
def judge(s, essay):
    s += sgc.system("You grade essays.")
    s += sgc.user("Essay: " + essay)
    s += sgc.assistant(sgc.gen("summary", max_tokens=6))
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += " Score " + str(i) + ": " + sgc.gen("score", regex=r"[1-5]", max_tokens=2)
    forks.join()
    s += " Verdict: " + sgc.select("verdict", choices=["accept", "reject"])
'''

ESSAYS = [{"essay": "Compilers turn programs into programs."}, {"essay": "Owls hunt at night."},
          {"essay": "Compilers turn programs into programs."}]


@pytest.fixture(scope="module")
def model(tiny_model_dirs):
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def replica(ray_local, model):  # noqa: F811
    from executor.cluster.replica import start_replicas
    from executor.runtime.engine import Engine

    (actor,) = start_replicas(1, functools.partial(Engine, model_path=str(model), device="cpu"))
    yield actor
    ray_local.kill(actor)


@pytest.fixture(scope="module")
def client(replica):
    from executor.cluster.remote_client import ReplicaClient

    c = ReplicaClient(replica)
    yield c
    c.close()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, model):
    from compiler.driver import compile_program_file
    from executor.runtime.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("replica") / "judge.py"
    path.write_text(PROGRAM)
    return compile_program_file(path, tokenizer=Tokenizer(model))


def _run(engine, compiled, **kwargs):
    from executor.program.graph_executor import GraphExecutor

    executor = GraphExecutor(engine, compiled.module, fsms=compiled.fsms)
    return executor.run_batch(ESSAYS, function="judge", temperature=0.0, **kwargs)


def test_a_graph_runs_the_same_through_the_proxy(client, compiled, model):
    from executor.runtime.engine import Engine

    with Engine(model_path=str(model), device="cpu") as local:
        expected = _run(local, compiled)
    got = _run(client, compiled)
    assert [r.error for r in got] == [None, None, None]
    for a, b in zip(expected, got):
        assert a.state.text == b.state.text and dict(a.state.variables) == dict(b.state.variables)
    stats = got.stats["judge"]
    assert sum(s.get("cached_tokens", 0) for s in stats.values()) > 0  # the fork's prefix was reused remotely


def test_streaming_through_the_proxy(client, compiled):
    from executor.program.graph_executor import GraphExecutor

    run = GraphExecutor(client, compiled.module, fsms=compiled.fsms).start(ESSAYS[1], function="judge",
                                                                           temperature=0.0)
    pieces = list(run.text_iter())
    assert "".join(pieces) == run.result().state.text and len(pieces) > 3


def test_the_interface_calls_cross_the_actor(client):
    from executor.runtime.runtime_client import EngineError, GenerateRequest, RequestError, ScoreRequest

    ids = client.tokenizer.encode("The quick brown fox")
    assert client.info().vocab_size > 0 and client.is_alive()
    handle = client.send(GenerateRequest(ids, {"max_new_tokens": 5, "temperature": 0.0}, stream=True))
    chunks = list(handle.stream())
    out = handle.result(timeout=60)
    assert "".join(c["text"] for c in chunks) == out["text"] and out["meta_info"]["id"] == handle.rid
    scored = client.send(ScoreRequest(ids, [client.tokenizer.encode(" jumps", add_special_tokens=False)])).result(60)
    assert len(scored["logprobs"]) == 1 and scored["logprobs"][0][0] < 0
    with pytest.raises(RequestError, match="temperature"):
        client.send(GenerateRequest(ids, {"temperature": -1}))
    too_long = client.send(GenerateRequest(list(range(5)) * 10_000, {"max_new_tokens": 2}))
    with pytest.raises(EngineError, match="prompt has 50000 tokens but the model's context is 512"):
        too_long.result(timeout=60)  # refused on the replica: that request's error, nothing else
    long = client.send(GenerateRequest(ids, {"max_new_tokens": 400, "temperature": 0.0, "ignore_eos": True}))
    long.abort()
    aborted = long.result(timeout=60)["meta_info"]
    assert aborted["finish_reason"]["type"] == "abort" and aborted["completion_tokens"] < 400
    pin = client.pin_prefix(ids)
    client.unpin(pin)
    assert pin.released.wait(30)
    assert client.stats()["num_forward_passes"] > 0
    assert client.flush_cache() is True


def test_a_killed_replica_fails_what_is_in_flight(ray_local, model):  # noqa: F811
    from executor.cluster.remote_client import ReplicaClient
    from executor.cluster.replica import start_replicas
    from executor.runtime.engine import Engine
    from executor.runtime.runtime_client import EngineError, GenerateRequest

    (actor,) = start_replicas(1, functools.partial(Engine, model_path=str(model), device="cpu"))
    client = ReplicaClient(actor)
    ids = client.tokenizer.encode("Hello")
    handle = client.send(GenerateRequest(ids, {"max_new_tokens": 500, "temperature": 0.0, "ignore_eos": True}))
    ray_local.kill(actor)
    with pytest.raises(EngineError, match="replica"):
        handle.result(timeout=60)
    assert not client.is_alive()
    with pytest.raises(EngineError):
        client.send(GenerateRequest(ids, {"max_new_tokens": 2}))


def test_the_test_cluster_is_on_the_loopback_address(ray_local, replica):  # noqa: F811
    nodes = ray_local.nodes()
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray_local.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray_local.get(replica.ping.remote())["torch_threads"] == 1  # one core, one torch thread
