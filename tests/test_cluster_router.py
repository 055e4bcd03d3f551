"""The routing policies (executor/cluster/router.py) and the router's approximate radix tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.cluster.router import (
    CacheAwarePolicy,
    LeastLoadedPolicy,
    RoundRobinPolicy,
    make_policy,
)
from executor.cluster.router_tree import ApproxRadixTree
from tests.tiers import examples

PREFIXES = [f"System prompt number {i}: " + "you are a careful assistant. " * 20 for i in range(8)]


def _route(policy, key, loads):
    decision = policy.choose(key, loads)
    policy.record(key, decision.replica)
    return decision


def test_same_prefix_goes_to_the_same_replica():
    policy = CacheAwarePolicy(cache_threshold=0.5)
    loads = {"a": 0, "b": 0, "c": 0}
    first = {}
    for round_ in range(5):
        for i, prefix in enumerate(PREFIXES):
            d = _route(policy, prefix + f"question {round_}-{i}?", loads)
            if round_ == 0:
                first[i] = d.replica
                assert d.reason == "cache_miss"
            else:
                assert d.replica == first[i]
                assert d.reason == "cache_hit" and d.matched >= len(prefix)
    # New prefixes were spread: every replica got some.
    assert set(first.values()) == {"a", "b", "c"}


def test_short_match_below_threshold_is_a_miss():
    policy = CacheAwarePolicy(cache_threshold=0.9)
    loads = {"a": 0, "b": 0}
    _route(policy, "hello world, this is one prompt", loads)
    d = policy.choose("hello world, and now something quite different and long", loads)
    assert d.reason == "cache_miss" and d.replica == "b"  # b has seen less


def test_falls_back_to_least_loaded_under_imbalance():
    policy = CacheAwarePolicy(balance_abs_threshold=4, balance_rel_threshold=1.5)
    _route(policy, PREFIXES[0] + "q", {"a": 0, "b": 0})
    # a saw the prefix, but it has 10 in flight and b has 1: imbalanced (10-1 > 4 and 10 > 1.5*1).
    d = policy.choose(PREFIXES[0] + "q2", {"a": 10, "b": 1})
    assert (d.replica, d.reason) == ("b", "imbalance")
    # Within the thresholds, affinity wins even though a is busier.
    d = policy.choose(PREFIXES[0] + "q3", {"a": 4, "b": 1})
    assert (d.replica, d.reason) == ("a", "cache_hit")
    # The relative threshold also has to be crossed: 40 vs 30 is not imbalanced.
    d = policy.choose(PREFIXES[0] + "q4", {"a": 40, "b": 30})
    assert (d.replica, d.reason) == ("a", "cache_hit")


def test_dead_replica_is_not_chosen_and_forgotten():
    policy = CacheAwarePolicy()
    d = _route(policy, PREFIXES[1] + "x", {"a": 0, "b": 0})
    assert d.replica == "a"
    d = policy.choose(PREFIXES[1] + "y", {"b": 0})  # a is down: not offered
    assert d.replica == "b"
    policy.remove_replica("a")
    assert policy.tree.size("a") == 0
    policy.tree.check_integrity()


def test_round_robin_and_least_loaded():
    rr = RoundRobinPolicy()
    assert [rr.choose("k", {"a": 0, "b": 9, "c": 0}).replica for _ in range(4)] == ["a", "b", "c", "a"]
    assert rr.choose("k", {"a": 0, "c": 0}).replica in {"a", "c"}
    ll = LeastLoadedPolicy()
    assert ll.choose("k", {"a": 3, "b": 1, "c": 2}).replica == "b"
    assert ll.choose("k", {"a": 1, "b": 1}).replica == "a"  # ties: first seen


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="no replica"):
        RoundRobinPolicy().choose("k", {})
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="cache_threshold"):
        CacheAwarePolicy(cache_threshold=1.5)
    with pytest.raises(ValueError, match="balance_rel_threshold"):
        CacheAwarePolicy(balance_rel_threshold=0.5)
    with pytest.raises(ValueError, match="max_size_per_replica"):
        ApproxRadixTree(0)


def test_tree_stays_bounded_and_evicts_lru():
    tree = ApproxRadixTree(max_size_per_replica=1000)
    for i in range(200):
        tree.insert(f"prompt {i:04d} " + "z" * 50, "a")
        tree.insert(PREFIXES[0] + f"{i}", "b")  # b keeps touching one long prefix
        assert tree.size("a") <= 1000 and tree.size("b") <= 1000
    tree.check_integrity()
    assert tree.total_size() <= 2000
    # a's most recent prompts stayed, its oldest went.
    assert tree.match("prompt 0199 " + "z" * 50).get("a") == len("prompt 0199 " + "z" * 50)
    assert "a" not in tree.match("prompt 0000 " + "z" * 50) or tree.match("prompt 0000 zz")["a"] < 12
    # b's shared prefix survived its own eviction of old suffixes (it was used last).
    assert tree.match(PREFIXES[0])["b"] == len(PREFIXES[0])


def test_tree_over_token_ids():
    tree = ApproxRadixTree()
    tree.insert((1, 2, 3, 4, 5), "a")
    tree.insert((1, 2, 3, 9), "b")
    assert tree.match((1, 2, 3, 4, 7)) == {"a": 4, "b": 3}
    assert tree.match((8,)) == {}
    tree.check_integrity()


def _lcp(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


OPS = st.lists(st.tuples(st.text(alphabet="abc", max_size=12), st.sampled_from("xyz")), max_size=60)


@settings(max_examples=examples(150, 20), deadline=None)
@given(OPS, st.lists(st.text(alphabet="abcd", max_size=14), max_size=10))
def test_tree_property_matches_brute_force(ops, probes):
    """Unbounded: each replica's match is the longest common prefix with any key it was given."""
    tree = ApproxRadixTree()
    seen: dict[str, list[str]] = {}
    for key, replica in ops:
        tree.insert(key, replica)
        if key:
            seen.setdefault(replica, []).append(key)
    tree.check_integrity()
    for probe in probes + [k for k, _ in ops]:
        expected = {r: max(_lcp(probe, k) for k in keys) for r, keys in seen.items()}
        assert tree.match(probe) == {r: n for r, n in expected.items() if n > 0}


@settings(max_examples=examples(150, 20), deadline=None)
@given(OPS, st.integers(1, 20))
def test_tree_property_bounded(ops, bound):
    """Bounded: no replica ever holds more than the bound, and its latest key (if it fits) is kept."""
    tree = ApproxRadixTree(max_size_per_replica=bound)
    last: dict[str, str] = {}
    for key, replica in ops:
        tree.insert(key, replica)
        tree.check_integrity()
        assert tree.size(replica) <= bound
        if key:
            last[replica] = key
        if key and len(key) <= bound:
            assert tree.match(key).get(replica) == len(key)
    for replica in list(last):
        tree.remove_replica(replica)
        tree.check_integrity()
    assert tree.num_nodes() == 0
