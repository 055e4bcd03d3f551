"""Sampling parameters, the batched sampler, and logprobs.

The engine calls `Sampler.sample` once per forward with float32 logits `[B, V]` for the B requests that
need a next token. The order of operations per row is:

1. penalties on the raw logits: frequency/presence (on counts of the request's output tokens) and the
   HF-style repetition penalty (on every token seen: prompt and output);
2. masks: the constrained-decoding mask (`allowed`) and, until `min_new_tokens` is reached, EOS and
   `stop_token_ids`;
3. greedy rows (`temperature == 0` or `top_k == 1`) take an exact argmax: no randomness, so they equal HF
   transformers' greedy search;
4. other rows: temperature, softmax, then top_k, top_p and min_p, all judged on the same probabilities
   (min_p relative to the top probability, top_p on the mass sorted high to low, as SGLang does), then
   one draw by inverse CDF with a uniform number taken from the request's own generator. The uniform is
   the only thing that depends on the generator, and each step of a row's computation depends on that
   row alone, so a seeded request samples the same tokens whatever else is in the batch.

Rows are processed together; Python loops only touch per-row scalars and the token lists for penalties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# The parameters themselves are plain data, shared with clients that never sample (no torch there).
from executor.runtime.sampling_params import (
    GREEDY_TEMPERATURE,
    RequestError,
    RequestTypeError,
    SamplingParams,
)

__all__ = ["GREEDY_TEMPERATURE", "RequestError", "RequestTypeError", "SamplingParams", "SamplingBatch", "Sampler",
           "compute_logprobs", "make_generator"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The per-request generator the sampler draws from; seeded requests are reproducible."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@dataclass(frozen=True)
class SamplingBatch:
    """Per-row inputs to `Sampler.sample`, all sequences of length B in the logits' row order.

    `output_ids`: the tokens generated so far (frequency/presence penalties, min_new_tokens).
    `prompt_ids`: the prompt tokens, counted by the repetition penalty with the output (as HF does);
    None means none known. `generators`: the request's generator, or None to use torch's global one.
    `eos_ids`: the model's EOS ids per row (masked until min_new_tokens is reached).
    """

    params: Sequence[SamplingParams]
    output_ids: Sequence[Sequence[int]]
    generators: Sequence[torch.Generator | None] | None = None
    eos_ids: Sequence[frozenset[int]] | None = None
    prompt_ids: Sequence[Sequence[int] | None] | None = None
    num_rows: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.params)
        object.__setattr__(self, "num_rows", n)
        for name in ("output_ids", "generators", "eos_ids", "prompt_ids"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"SamplingBatch.{name} has {len(value)} rows, params has {n}")


class Sampler:
    """Picks one token per row from logits; see the module docstring for the order of operations."""

    def sample(self, logits: torch.Tensor, batch: SamplingBatch,
               allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Return the chosen token ids `[B]` (int64, on the logits' device).

        `allowed` is an optional bool mask `[B, V]` from constrained decoding (True = may be sampled).
        `logits` is not modified.
        """
        if logits.dim() != 2 or logits.shape[0] != batch.num_rows:
            raise ValueError(f"logits of shape {tuple(logits.shape)} do not match a batch of "
                             f"{batch.num_rows} rows")
        params = batch.params
        num_rows, vocab = logits.shape
        device = logits.device
        # `copied`: whether `logits` is our own buffer yet (then we may write to it).
        copied = logits.dtype != torch.float32 or not logits.is_contiguous()
        logits = logits.float().contiguous()

        if any(p.has_penalties for p in params):
            logits = logits.clone()
            copied = True
            self._apply_penalties(logits, batch)

        masked = self._min_tokens_mask(batch, num_rows, vocab, device)
        if allowed is not None or masked is not None:
            if not copied:
                logits = logits.clone()
                copied = True
            keep = allowed if allowed is not None else torch.ones_like(logits, dtype=torch.bool)
            if masked is not None:
                keep = keep & ~masked
                # Constraints can leave EOS as the only choice (an accepting FSM state); then the
                # constraint wins over min_new_tokens rather than the row having nothing to pick.
                empty = ~keep.any(dim=1)
                if empty.any():
                    keep[empty] = allowed[empty] if allowed is not None else True
            logits.masked_fill_(~keep, float("-inf"))

        greedy = [p.is_greedy for p in params]
        if all(greedy):
            return _greedy(logits)
        out = torch.empty(num_rows, dtype=torch.long, device=device)
        greedy_rows = [i for i, g in enumerate(greedy) if g]
        random_rows = [i for i, g in enumerate(greedy) if not g]
        if greedy_rows:
            idx = torch.tensor(greedy_rows, device=device)
            out.index_copy_(0, idx, _greedy(logits.index_select(0, idx)))
        # Rows that cut by rank (top_k/top_p) draw from the sorted distribution, the others in vocabulary
        # order; the groups stay apart so a row's draw never depends on what else is in the batch.
        for by_rank in (False, True):
            rows = [i for i in random_rows if params[i].cuts_by_rank == by_rank]
            if not rows:
                continue
            idx = torch.tensor(rows, device=device)
            sub = [params[i] for i in rows]
            gens = [batch.generators[i] if batch.generators is not None else None for i in rows]
            # In place where we own the tensor: on CPU a fresh [B, V] buffer costs more than the math.
            if len(rows) < num_rows:
                work = logits.index_select(0, idx)
            else:
                work = logits if copied else logits.clone()
            temps = [p.temperature for p in sub]
            if any(t != 1 for t in temps):
                work.div_(_column(temps, device))
            probs = torch.softmax(work, dim=1)
            uniforms = _uniforms(gens, device)
            if by_rank:
                out.index_copy_(0, idx, _sample_ranked(probs, sub, uniforms))
            else:
                min_p = _column([p.min_p for p in sub], device)
                if (min_p > 0).any():
                    probs.masked_fill_(probs < probs.amax(dim=1, keepdim=True) * min_p, 0.0)
                out.index_copy_(0, idx, _inverse_cdf(probs, uniforms))
        return out

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
        """In place, touching only the (row, token) entries seen: O(tokens), not O(B x V).

        Counts are rebuilt from the token lists each step, so the sampler keeps no per-request state.
        """
        device = logits.device
        vocab = logits.shape[1]
        flat = logits.view(-1)  # a key row * vocab + token is then a flat index
        rows, toks, freq, pres = [], [], [], []
        rep_rows, rep_toks, rep = [], [], []
        for i, p in enumerate(batch.params):
            if not p.has_penalties:
                continue
            out_ids = list(batch.output_ids[i])
            if p.frequency_penalty != 0 or p.presence_penalty != 0:
                rows += [i] * len(out_ids)
                toks += out_ids
                freq += [p.frequency_penalty] * len(out_ids)
                pres += [p.presence_penalty] * len(out_ids)
            if p.repetition_penalty != 1:
                seen = out_ids
                if batch.prompt_ids is not None and batch.prompt_ids[i] is not None:
                    seen = list(batch.prompt_ids[i]) + out_ids
                rep_rows += [i] * len(seen)
                rep_toks += seen
                rep += [p.repetition_penalty] * len(seen)
        if toks:
            keys = torch.tensor(rows, device=device) * vocab + torch.tensor(toks, device=device)
            unique, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
            # Every occurrence of a key carries the same row's penalties; take any one of them.
            first = torch.empty_like(unique).scatter_(0, inverse, torch.arange(len(keys), device=device))
            freq_t = torch.tensor(freq, device=device).index_select(0, first)
            pres_t = torch.tensor(pres, device=device).index_select(0, first)
            flat.index_add_(0, unique, -(counts.float() * freq_t + pres_t))
        if rep_toks:
            keys = torch.tensor(rep_rows, device=device) * vocab + torch.tensor(rep_toks, device=device)
            unique, inverse = torch.unique(keys, return_inverse=True)
            first = torch.empty_like(unique).scatter_(0, inverse, torch.arange(len(keys), device=device))
            rep_t = torch.tensor(rep, device=device).index_select(0, first)
            values = flat.index_select(0, unique)
            # HF: divide positive logits by the penalty, multiply negative ones.
            flat.index_copy_(0, unique, torch.where(values > 0, values / rep_t, values * rep_t))

    @staticmethod
    def _min_tokens_mask(batch: SamplingBatch, num_rows: int, vocab: int,
                         device: torch.device) -> torch.Tensor | None:
        rows, toks = [], []
        for i, p in enumerate(batch.params):
            if p.min_new_tokens <= 0 or len(batch.output_ids[i]) >= p.min_new_tokens:
                continue
            banned = set(p.stop_token_ids or ())
            if batch.eos_ids is not None:
                banned |= batch.eos_ids[i]
            banned = {t for t in banned if t < vocab}
            rows.extend([i] * len(banned))
            toks.extend(banned)
        if not toks:
            return None
        mask = torch.zeros(num_rows, vocab, dtype=torch.bool, device=device)
        mask[torch.tensor(rows, device=device), torch.tensor(toks, device=device)] = True
        return mask


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    """The first highest-scoring token of each row: `argmax`'s answer (ties: the first index).
    On CPU numpy's vectorized argmax does it: ~10x faster than torch's over [256, 49152] float32
    logits on this AVX2 machine (2.5 ms against 35 ms: most of a null-model step, bench_host)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.numpy().argmax(axis=1))
    return logits.argmax(dim=1)


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def _uniforms(generators: Sequence[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One uniform in [0, 1) per row, `[n, 1]` float64; a seeded row's comes from its own generator.

    No `.item()`: on CUDA that would synchronize once per row.
    """
    parts: list[torch.Tensor] = []
    missing = [i for i, g in enumerate(generators) if g is None]
    shared = torch.rand(len(missing), dtype=torch.float64, device=device) if missing else None
    j = 0
    for gen in generators:
        if gen is None:
            assert shared is not None
            parts.append(shared[j:j + 1])
            j += 1
        else:
            parts.append(torch.rand(1, generator=gen, device=gen.device, dtype=torch.float64).to(device))
    return torch.cat(parts).unsqueeze(1)


# Candidate counts tried in turn for top_k/top_p rows. A full sort of a 50k vocabulary costs ~50x a
# top-256 on CPU, and top_p of a real LM distribution is nearly always reached within 256 tokens. The
# schedule is fixed, so which k a row ends at depends on that row alone.
_RANK_SCHEDULE = (256, 4096)


def _sample_ranked(probs: torch.Tensor, params: Sequence[SamplingParams],
                   uniforms: torch.Tensor) -> torch.Tensor:
    """top_k, top_p and min_p judged on the same sorted probabilities, then one draw per row."""
    device = probs.device
    n, vocab = probs.shape
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device).unsqueeze(1)
    top_p = _column([p.top_p for p in params], device)
    min_p = _column([p.min_p for p in params], device)
    out = torch.empty(n, dtype=torch.long, device=device)
    pending = torch.arange(n, device=device)  # rows not drawn yet; `candidates` etc. are their slices
    candidates, row_k, row_p, row_min = probs, top_k, top_p, min_p
    for k in (*(k for k in _RANK_SCHEDULE if k < vocab), vocab):
        sorted_probs, sorted_ids = candidates.topk(k, dim=1, sorted=True)
        cumulative = sorted_probs.cumsum(dim=1)
        ranks = torch.arange(k, device=device).unsqueeze(0)
        threshold = sorted_probs[:, :1] * row_min
        # top_p keeps the smallest prefix whose mass reaches top_p (the first token always stays).
        cut = (ranks >= row_k) | ((cumulative - sorted_probs) > row_p) | (sorted_probs < threshold)
        # The cut is final when every token past the k candidates would be cut too.
        done = ((row_k <= k) | (cumulative[:, -1:] > row_p) | (sorted_probs[:, -1:] < threshold)).squeeze(1)
        if k == vocab:
            done = torch.ones_like(done)
        rows = done.nonzero().squeeze(1)
        if not rows.numel():
            continue
        # (index_select rather than [] indexing: the latter is ~100x slower on CPU in torch 2.13.)
        weights = sorted_probs.index_select(0, rows).masked_fill_(cut.index_select(0, rows), 0.0)
        targets = pending.index_select(0, rows)
        picks = _inverse_cdf(weights, uniforms.index_select(0, targets))
        chosen = sorted_ids.index_select(0, rows).gather(1, picks.unsqueeze(1)).squeeze(1)
        out.index_copy_(0, targets, chosen)
        if len(rows) == len(pending):
            break
        left = (~done).nonzero().squeeze(1)
        pending = pending.index_select(0, left)
        candidates, row_k, row_p, row_min = (x.index_select(0, left)
                                             for x in (candidates, row_k, row_p, row_min))
    return out


_CDF_BLOCK = 256


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of non-negative `weights` `[n, m]` (need not sum to 1).

    Two levels: float32 sums of blocks of 256 (exact enough), a float64 CDF over the blocks, then a
    float64 CDF inside the chosen block. A float64 cumsum over the whole vocabulary costs ~7x more on
    CPU, and a float32 one loses the tail of the distribution to rounding.
    """
    n, m = weights.shape
    pad = (-m) % _CDF_BLOCK
    if pad:
        weights = torch.nn.functional.pad(weights, (0, pad))
    blocks = weights.view(n, -1, _CDF_BLOCK)
    block_sums = blocks.sum(dim=2).double()
    block_cdf = block_sums.cumsum(dim=1)
    target = uniforms * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, target, right=True)
    block = torch.minimum(block, _last_positive(block_sums))
    before = block_cdf.gather(1, block) - block_sums.gather(1, block)
    inner = blocks.gather(1, block.view(n, 1, 1).expand(n, 1, _CDF_BLOCK)).squeeze(1).double()
    index = torch.searchsorted(inner.cumsum(dim=1), target - before, right=True)
    # Rounding can put the target at the very top of a CDF; take the last token with weight then.
    index = torch.minimum(index, _last_positive(inner))
    return (block * _CDF_BLOCK + index).squeeze(1)


def _last_positive(weights: torch.Tensor) -> torch.Tensor:
    """`[n, 1]` index of each row's last positive entry (0 when none)."""
    positive = weights > 0
    last = (weights.shape[1] - 1) - positive.flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    return torch.where(positive.any(dim=1, keepdim=True), last, torch.zeros_like(last))


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_k: int = 0,
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probabilities of `token_ids` `[N]` under `logits` `[N, V]`, plus the top_k alternatives.

    These are log_softmax of the RAW model logits: they describe the model's distribution, not the
    sampling-adjusted one (no penalties, temperature, top_k/top_p/min_p or constraint masks), so they are
    comparable across requests with different sampling settings. Returns `(chosen [N], top_ids [N, k],
    top_logprobs [N, k])`, the last two None when `top_k <= 0`.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, token_ids.long().view(-1, 1).to(logprobs.device)).squeeze(1)
    if top_k <= 0:
        return chosen, None, None
    top_logprobs, top_ids = logprobs.topk(min(top_k, logprobs.shape[1]), dim=1)
    return chosen, top_ids, top_logprobs
