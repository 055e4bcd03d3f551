import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from executor.runtime.sampling import (
    Sampler,
    SamplingBatch,
    SamplingParams,
    compute_logprobs,
    make_generator,
)
from tests.tiers import examples

# -- SamplingParams ---------------------------------------------------------------------------------


def test_defaults_match_sglang():
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == \
        (128, 0, 1.0, 1.0, -1, 0.0)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.stop is None and p.stop_token_ids is None and p.seed is None
    assert p.skip_special_tokens and not p.ignore_eos and not p.no_stop_trim
    assert not p.is_greedy and p.stop_strings == ()
    p.validate()


@pytest.mark.parametrize("kwargs, name", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"),
    ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.1}, "min_p"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"stop": 5}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"stop": ["ok", None]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stop": ["a", ""]}, "stop"),
    ({"stop_token_ids": 3}, "stop_token_ids"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": ["2"]}, "stop_token_ids"),
    ({"seed": "x"}, "seed"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": 1e9}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_k": True}, "top_k"),
    ({"top_k": 2**40}, "top_k"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"repetition_penalty": math.inf}, "repetition_penalty"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"stop": ["s"] * 300}, "stop"),
    ({"stop_token_ids": [False]}, "stop_token_ids"),
    ({"ignore_eos": 1}, "ignore_eos"),
])
def test_validation_names_parameter_and_value(kwargs, name):
    with pytest.raises(ValueError) as err:
        SamplingParams.from_dict(kwargs)
    message = str(err.value)
    assert name in message
    assert repr(kwargs[name]) in message


def test_type_errors_are_both_value_and_type_errors():
    from executor.runtime.sampling import RequestError, RequestTypeError

    with pytest.raises(RequestTypeError) as err:
        SamplingParams.from_dict({"temperature": "hot"})
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    with pytest.raises(RequestTypeError, match="must be a dict"):
        SamplingParams.from_dict(["temperature", 0])
    with pytest.raises(RequestError) as err:
        SamplingParams.from_dict({"temperature": -1})
    assert not isinstance(err.value, TypeError)


def test_extreme_but_valid_values_are_accepted():
    SamplingParams.from_dict({"seed": 2**64 - 1, "top_k": 2**31 - 1, "temperature": 1e4,
                              "repetition_penalty": 2.0, "stop": ["s"] * 256}).validate()
    assert SamplingParams(temperature=1e-9).is_greedy  # dividing by it would overflow float32


def test_from_dict_rejects_unknown_keys_listing_known():
    with pytest.raises(ValueError, match="unknown sampling parameter 'temprature'") as err:
        SamplingParams.from_dict({"temprature": 0.5})
    assert "temperature" in str(err.value) and "max_new_tokens" in str(err.value)


def test_from_dict_alias_and_none():
    assert SamplingParams.from_dict(None) == SamplingParams()
    p = SamplingParams.from_dict({"sampling_seed": 7, "stop": "x", "temperature": 0})
    assert p.seed == 7 and p.stop_strings == ("x",) and p.is_greedy
    assert SamplingParams(stop=["a", "b"]).stop_strings == ("a", "b")
    assert SamplingParams(top_k=1).is_greedy
    with pytest.raises(ValueError, match="twice"):
        SamplingParams.from_dict({"seed": 1, "sampling_seed": 2})


# -- Sampler ----------------------------------------------------------------------------------------

sampler = Sampler()


def batch(params, output_ids=None, **kw):
    return SamplingBatch(params=params, output_ids=output_ids or [[] for _ in params], **kw)


def test_greedy_is_argmax():
    logits = torch.randn(6, 50, generator=make_generator(0))
    params = [SamplingParams(temperature=0)] * 6
    assert torch.equal(sampler.sample(logits, batch(params)), logits.argmax(1))


def test_top_k_1_equals_greedy_and_tiny_top_p_is_argmax():
    logits = torch.randn(5, 40, generator=make_generator(1))
    for p in (SamplingParams(top_k=1, temperature=1.5), SamplingParams(top_p=1e-6, temperature=2.0)):
        gens = [make_generator(i) for i in range(5)]
        out = sampler.sample(logits, batch([p] * 5, generators=gens))
        assert torch.equal(out, logits.argmax(1))


def test_mixed_greedy_and_random_rows():
    logits = torch.randn(4, 30, generator=make_generator(2))
    params = [SamplingParams(temperature=0), SamplingParams(seed=1), SamplingParams(top_k=1),
              SamplingParams(top_p=1e-9)]
    out = sampler.sample(logits, batch(params, generators=[None, make_generator(1), None, None]))
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax() and out[3] == logits[3].argmax()
    assert 0 <= out[1] < 30


def test_min_p_keeps_only_tokens_near_the_top():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = SamplingParams(min_p=0.5)  # keeps probs >= 0.25: tokens 0 and 1
    gen = make_generator(3)
    seen = {int(sampler.sample(logits, batch([p], generators=[gen]))) for _ in range(200)}
    assert seen == {0, 1}


def test_top_k_and_top_p_restrict_support():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.3, 0.2]]))
    gen = make_generator(4)
    seen_k = {int(sampler.sample(logits, batch([SamplingParams(top_k=2)], generators=[gen])))
              for _ in range(200)}
    assert seen_k == {1, 2}
    # top_p=0.75: 0.4 + 0.3 = 0.7 < 0.75, so the third (0.2) is needed too.
    seen_p = {int(sampler.sample(logits, batch([SamplingParams(top_p=0.75)], generators=[gen])))
              for _ in range(300)}
    assert seen_p == {1, 2, 3}


def test_frequency_and_presence_penalties_change_argmax():
    logits = torch.tensor([[2.0, 1.8, 0.0]])
    greedy = dict(temperature=0)
    assert sampler.sample(logits, batch([SamplingParams(**greedy)], [[0]])) == 0
    out = sampler.sample(logits, batch([SamplingParams(frequency_penalty=0.3, **greedy)], [[0]]))
    assert out == 1
    # frequency scales with the count; presence does not.
    out = sampler.sample(logits, batch([SamplingParams(frequency_penalty=0.15, **greedy)], [[0, 0]]))
    assert out == 1
    out = sampler.sample(logits, batch([SamplingParams(presence_penalty=0.15, **greedy)], [[0, 0]]))
    assert out == 0
    out = sampler.sample(logits, batch([SamplingParams(presence_penalty=0.25, **greedy)], [[0]]))
    assert out == 1
    # Negative penalties encourage repeats.
    out = sampler.sample(logits, batch([SamplingParams(frequency_penalty=-1.0, **greedy)], [[2]]))
    assert out == 0  # 0.0 + 1.0 = 1.0 < 2.0
    out = sampler.sample(logits, batch([SamplingParams(frequency_penalty=-1.0, **greedy)], [[2, 2, 2]]))
    assert out == 2


def test_repetition_penalty_hf_style_includes_prompt():
    logits = torch.tensor([[2.0, 1.5, -1.0, -1.2]])
    p = SamplingParams(repetition_penalty=1.5, temperature=0)
    # Seen positive logit divided: 2.0 / 1.5 = 1.33 < 1.5.
    assert sampler.sample(logits, batch([p], [[]], prompt_ids=[[0]])) == 1
    assert sampler.sample(logits, batch([p], [[0]])) == 1
    # Only the prompt token of this row counts; the other row is untouched.
    two = torch.cat([logits, logits])
    out = sampler.sample(two, batch([p, SamplingParams(temperature=0)], [[], []], prompt_ids=[[0], [0]]))
    assert out.tolist() == [1, 0]
    # Seen negative logit multiplied: -1.0 * 1.5 = -1.5 < -1.2.
    neg = torch.tensor([[-1.0, -1.2]])
    assert sampler.sample(neg, batch([p], [[0]])) == 1
    assert torch.equal(logits, torch.tensor([[2.0, 1.5, -1.0, -1.2]]))  # input untouched


def test_min_new_tokens_blocks_eos_and_stop_ids():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0]])
    p = SamplingParams(temperature=0, min_new_tokens=2, stop_token_ids=[1])
    eos = [frozenset({0})]
    assert sampler.sample(logits, batch([p], [[3]], eos_ids=eos)) == 2
    assert sampler.sample(logits, batch([p], [[3, 3]], eos_ids=eos)) == 0
    # A constraint that allows only EOS wins over min_new_tokens.
    allowed = torch.tensor([[True, False, False, False]])
    assert sampler.sample(logits, batch([p], [[3]], eos_ids=eos), allowed=allowed) == 0


def test_allowed_mask_restricts_choice():
    logits = torch.tensor([[5.0, 4.0, 3.0], [1.0, 2.0, 3.0]])
    allowed = torch.tensor([[False, True, True], [True, False, False]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0)]
    out = sampler.sample(logits, batch(params, generators=[None, make_generator(0)]), allowed=allowed)
    assert out.tolist() == [1, 0]


def run_steps(params, gens, position, batch_size, steps=20, seed=0, vocab=64, scale=1.0):
    """Tokens drawn for the row at `position` over `steps` forwards, other rows being random noise."""
    g = make_generator(seed)
    others = [SamplingParams(temperature=0), SamplingParams(top_p=0.5, seed=3),
              SamplingParams(top_k=5, min_p=0.1), SamplingParams(temperature=0.7)]
    tokens = []
    logits_seq = torch.randn(steps, vocab, generator=g) * scale
    for step in range(steps):
        rows = [others[i % len(others)] for i in range(batch_size)]
        row_gens = [make_generator(100 + i) if i % 2 else None for i in range(batch_size)]
        rows[position] = params
        row_gens[position] = gens
        logits = torch.randn(batch_size, vocab) * 4
        logits[position] = logits_seq[step]
        out = sampler.sample(logits, batch(rows, generators=row_gens))
        tokens.append(int(out[position]))
    return tokens


@pytest.mark.parametrize("params", [SamplingParams(seed=42), SamplingParams(seed=42, top_p=0.9, top_k=20),
                                    SamplingParams(seed=42, temperature=1.7, min_p=0.05)])
def test_seeded_sampling_reproducible_and_batch_independent(params):
    alone = run_steps(params, make_generator(42), 0, 1)
    again = run_steps(params, make_generator(42), 0, 1)
    in_batch = run_steps(params, make_generator(42), 3, 7)
    assert alone == again == in_batch
    assert len(set(alone)) > 1  # really sampling
    assert run_steps(params, make_generator(43), 0, 1) != alone


def test_batch_independent_when_top_p_needs_many_candidates():
    # A flat row needs the whole vocabulary to reach top_p while peaked neighbours stop at 256.
    params = SamplingParams(seed=5, top_p=0.95)
    kw = dict(vocab=3000, scale=0.1, steps=8)
    alone = run_steps(params, make_generator(5), 0, 1, **kw)
    assert alone == run_steps(params, make_generator(5), 2, 5, **kw)
    assert max(alone) > 256


def test_distribution_matches_softmax_with_temperature():
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    temperature = 0.7
    expected = torch.softmax(logits / temperature, dim=0)
    n = 2000
    gens = [make_generator(1000 + i) for i in range(n)]
    params = [SamplingParams(temperature=temperature)] * n
    out = sampler.sample(logits.expand(n, 4), batch(params, generators=gens))
    freq = torch.bincount(out, minlength=4).float() / n
    for f, e in zip(freq.tolist(), expected.tolist(), strict=True):
        assert abs(f - e) < 4 * math.sqrt(e * (1 - e) / n) + 1e-3, (freq, expected)


def test_distribution_with_global_rng_and_top_k():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, 0.0])
    n = 2000
    out = sampler.sample(logits.expand(n, 4), batch([SamplingParams(top_k=2)] * n))
    assert set(out.tolist()) == {0, 1}
    expected = math.exp(2) / (math.exp(2) + math.exp(1))
    assert abs((out == 0).float().mean().item() - expected) < 0.04


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        sampler.sample(torch.zeros(2, 5), batch([SamplingParams()]))
    with pytest.raises(ValueError):
        SamplingBatch(params=[SamplingParams()], output_ids=[[], []])


# -- logprobs ---------------------------------------------------------------------------------------


def test_compute_logprobs_uses_raw_logits():
    logits = torch.randn(3, 10, generator=make_generator(5))
    ids = torch.tensor([1, 4, 9])
    chosen, top_ids, top_lp = compute_logprobs(logits, ids, top_k=3)
    ref = torch.log_softmax(logits, dim=1)
    assert torch.allclose(chosen, ref[torch.arange(3), ids])
    assert top_ids.shape == (3, 3) and torch.equal(top_ids[:, 0], logits.argmax(1))
    assert torch.allclose(top_lp, ref.gather(1, top_ids))
    assert (top_lp[:, :-1] >= top_lp[:, 1:]).all()
    chosen2, none_ids, none_lp = compute_logprobs(logits, ids, top_k=0)
    assert none_ids is None and none_lp is None and torch.equal(chosen, chosen2)


def test_masked_tokens_are_never_sampled():
    logits = torch.zeros(500, 6)
    allowed = torch.tensor([[False, True, False, True, False, False]]).expand(500, 6)
    params = [SamplingParams(), SamplingParams(top_p=0.99)] * 250
    gens = [make_generator(i) for i in range(500)]
    out = sampler.sample(logits, batch(params, generators=gens), allowed=allowed)
    assert set(out.tolist()) == {1, 3}


def test_top_p_cutoff_beyond_first_candidate_block():
    vocab, decay, top_p = 5000, 0.0005, 0.5
    logits = -decay * torch.arange(vocab, dtype=torch.float32)
    probs = torch.softmax(logits, 0).double()
    # Last kept rank: mass before it is still <= top_p.
    cutoff = int(((probs.cumsum(0) - probs) <= top_p).nonzero().max())
    assert 1000 < cutoff < 2048
    n = 2000
    out = sampler.sample(logits.expand(n, vocab), batch([SamplingParams(top_p=top_p)] * n,
                                                        generators=[make_generator(i) for i in range(n)]))
    assert int(out.max()) <= cutoff and int(out.max()) > 0.95 * cutoff
    kept = probs[:cutoff + 1] / probs[:cutoff + 1].sum()
    assert abs((out < 500).double().mean().item() - kept[:500].sum().item()) < 0.04


def test_inverse_cdf_across_blocks():
    vocab = 1000
    logits = torch.full((vocab,), -1e9)
    tokens = [3, 300, 700, 999]
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits[tokens] = weights.log()
    n = 2000
    out = sampler.sample(logits.expand(n, vocab), batch([SamplingParams(min_p=0.01)] * n,
                                                        generators=[make_generator(i) for i in range(n)]))
    assert set(out.tolist()) == set(tokens)
    for t, w in zip(tokens, weights.tolist(), strict=True):
        assert abs((out == t).float().mean().item() - w) < 4 * math.sqrt(w * (1 - w) / n)


def test_input_logits_are_never_modified():
    logits = torch.randn(3, 20, generator=make_generator(9))
    before = logits.clone()
    params = [SamplingParams(temperature=0.5), SamplingParams(temperature=0.5, min_p=0.2),
              SamplingParams(temperature=2.0, top_p=0.8)]
    sampler.sample(logits, batch(params, generators=[make_generator(i) for i in range(3)]))
    sampler.sample(logits, batch(params[:1] * 3, generators=[make_generator(i) for i in range(3)]))
    assert torch.equal(logits, before)
    half = logits.to(torch.bfloat16)
    assert sampler.sample(half, batch([SamplingParams(temperature=0)] * 3)).tolist() == \
        half.float().argmax(1).tolist()


def test_non_contiguous_logits_with_penalties():
    logits = torch.randn(8, 3, generator=make_generator(11)).t()  # [3, 8], transposed strides
    before = logits.clone()
    p = SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.1)
    out = sampler.sample(logits, batch([p] * 3, [[0, 1], [2], []]))
    assert torch.equal(logits, before)
    expected = before.clone()
    for row, seen in enumerate([[0, 1], [2], []]):
        for t in set(seen):
            v = expected[row, t] - 0.1 * seen.count(t)
            expected[row, t] = v / 2.0 if v > 0 else v * 2.0
    assert out.tolist() == expected.argmax(1).tolist()


@settings(max_examples=examples(150), deadline=None)
@given(logits=st.lists(st.floats(-8, 8, width=32), min_size=2, max_size=12),
       temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]), top_k=st.sampled_from([-1, 1, 2, 5]),
       top_p=st.sampled_from([1.0, 0.9, 0.5, 0.1]), min_p=st.sampled_from([0.0, 0.05, 0.5]),
       seed=st.integers(0, 2**31))
def test_property_samples_stay_in_reference_support(logits, temperature, top_k, top_p, min_p, seed):
    x = torch.tensor([logits])
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    p.validate()
    if p.is_greedy:
        support = {int(x.argmax())}
    else:
        probs = torch.softmax(x[0] / temperature, 0)
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs
        threshold = sorted_probs[0] * min_p
        # Stay away from the exact boundaries, where float rounding decides.
        assume(all(abs(b - top_p) > 1e-4 for b in before.tolist()))
        assume(all(abs(q - threshold) > 1e-6 for q in sorted_probs.tolist()))
        assume(len(set(sorted_probs.tolist())) == len(logits))  # ties make top_k ambiguous
        keep = (before <= top_p) & (sorted_probs >= threshold)
        if top_k > 0:
            keep[top_k:] = False
        support = set(order[keep].tolist())
    gen = make_generator(seed)
    drawn = {int(sampler.sample(x, batch([p], generators=[gen]))) for _ in range(10)}
    assert drawn <= support
