"""The scheduling loop: which requests run in the next forward pass, and what happens after it.

Each `step()` runs one forward pass. Prefill comes first: waiting requests are admitted in policy
order (longest cached prefix first) until the token budget, the running-request limit or KV
memory runs out; a long prompt is split into chunks. Otherwise every running request decodes one
token (continuous batching: requests join and leave between steps). When decode cannot get KV
memory even after evicting cache, the newest requests are retracted: their KV is released (kept
in the radix cache when possible) and they wait to be prefilled again with their output so far,
so no request is ever lost or changed.

One request's failure never hurts another. Everything a step does for one request alone (prompt
logprobs, the constraint mask, sampling, output logprobs, detokenizing, the constraint's advance and
jump-forward, the stop checks) runs under a guard: if it raises, that request is aborted with the
error (`Request.error`), its KV goes back to the pool (not into the cache: its tokens are not
trusted) and the other requests carry on in the same step. Batched work (sampling, logprobs) that
raises is redone one row at a time to find the culprit. Only the forward pass itself fails a step.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import torch

from executor.kernels.attention_shared_ref import SharedPrefix
from executor.runtime.constrained import ConstraintCache, ConstraintDeadEnd, apply_jump, plan_jump_forward
from executor.runtime.engine_chain import ChainTokenizer, common_prefix_len
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.kv_manager import KVManager
from executor.runtime.model_runner import ModelRunner
from executor.runtime.request import Request, RequestKind
from executor.runtime.sampling import Sampler, SamplingBatch, compute_logprobs
from executor.runtime.schedule_policy import order_waiting

logger = logging.getLogger("sgc.scheduler")


@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # new tokens per extend pass, all requests together
    chunk_size: int = 2048  # at most this many new tokens of one request per pass
    context_len: int = 8192
    policy: str = "lpm"
    # A waiting request that shares at least this many uncached tokens with a request being
    # prefilled waits one step, then reuses that request's KV instead of computing it again
    # (cache-aware scheduling: the "lpm" policy only; "fcfs" is the cache-oblivious baseline).
    defer_shared_prefix_tokens: int = 16
    # Running requests decode inside an extend pass (as one-token extends) instead of waiting for
    # the next pass: fewer forward passes when prefills and jump-forward extends arrive mid-decode.
    mix_decode_into_extend: bool = True
    # Append text a constraint forces in one extend pass instead of decoding it token by token.
    enable_jump_forward: bool = True
    # Decode requests of one prefix_group read their common prefix's KV once (the CPU attention).
    shared_prefix_decode: bool = True
    # Groups sharing fewer tokens than this decode as usual (too little to gain).
    min_shared_prefix_tokens: int = 32


@dataclass
class _Extend:
    req: Request
    start: int  # first position computed in this pass
    length: int  # tokens computed in this pass


class Scheduler:
    def __init__(self, runner: ModelRunner, kv: KVManager, config: SchedulerConfig, device: torch.device):
        self.runner = runner
        self.kv = kv
        self.config = config
        self.device = device
        self.sampler = Sampler()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # decoding
        self.parked: list[Request] = []  # score prompts waiting for their continuations
        self.num_retractions = 0
        self.num_decode_steps = 0
        self.num_extend_steps = 0
        self.num_jump_forward_tokens = 0
        self.num_shared_prefix_tokens = 0  # prefix KV reads saved by shared-prefix decode
        self._finished_early: list[Request] = []  # finished in add(), reported by the next step()
        self._failed: list[Request] = []  # aborted by their own error, reported by the next step()
        self.constraints: ConstraintCache | None = None  # set by the engine; jump-forward needs it
        self.chain_tokens: ChainTokenizer | None = None  # set by the engine; chained requests need it
        self.num_chained = 0  # chained requests started on their predecessor's sequence
        self.num_chain_kept_tokens = 0  # KV positions they kept (not recomputed, not re-matched)

    # -- queue ---------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        if req.constraint is not None and not req.output_ids:
            # Text the constraint forces at the start (`{"name":"`) is prefilled with the prompt.
            try:
                self._try_jump_forward(req)
            except Exception as exc:
                self.fail_request(req, exc)
                return
        if req.finished:  # the constraint forced the whole output
            self._finished_early.append(req)
        else:
            self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._finished_early or self._failed)

    def all_requests(self) -> list[Request]:
        return list(self.waiting) + self.running + self.parked

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Run one forward pass. Returns the requests that produced output or finished, and those
        that failed (their `error` is set)."""
        advanced = self._step()
        if self._failed:
            failed, self._failed = self._failed, []
            advanced = [r for r in advanced if r.error is None] + failed
        return advanced

    def _step(self) -> list[Request]:
        if self._finished_early:
            early, self._finished_early = self._finished_early, []
            return early
        extends = self._schedule_extend()
        if extends:
            self.num_extend_steps += 1
            if self.config.mix_decode_into_extend:
                extends += self._decode_as_extends()
            return self._run_extend(extends)
        if self.running:
            self.num_decode_steps += 1
            return self._run_decode()
        if self.waiting:
            # Nothing runs and the head request cannot be admitted: memory can never suffice.
            req = self.waiting.popleft()
            self._abort(req, "the KV cache is too small for this request's prompt")
            return [req]
        return []

    # -- extend (prefill) ------------------------------------------------------------------------
    def _max_cached(self, req: Request) -> int:
        """How much of the prompt may come from cache: one token must always be computed (its
        logits give the next token), and prompt logprobs need the positions they start at."""
        limit = req.seq_len - 1
        opts = req.logprobs
        if opts.return_logprob and opts.logprob_start_len >= 0 and not req.output_ids:
            limit = min(limit, max(opts.logprob_start_len - 1, 0))
        return limit

    def _schedule_extend(self) -> list[_Extend]:
        if not self.waiting:
            return []
        cfg = self.config
        # The ordering's cached lengths, kept for the deferral check (one radix walk per request
        # per step instead of two); stale once an eviction in this step dropped cached tokens.
        measured: dict[int, int] = {}

        def cached_len(r: Request) -> int:
            measured[id(r)] = n = self.kv.cached_len(r.fill_ids[: self._max_cached(r)])
            return n

        ordered = order_waiting(self.waiting, cfg.policy, cached_len)
        evictions = self.kv.num_evictions
        budget = cfg.max_prefill_tokens
        num_running = len(self.running)
        chosen: list[_Extend] = []
        in_progress = [r for r in ordered if r.req_row is not None]
        for req in ordered:
            if budget <= 0:
                break
            fresh = req.req_row is None
            if fresh:
                if num_running + len(chosen) >= cfg.max_running_requests:
                    break
                if not self.kv.can_begin():
                    break
                known = measured.get(id(req)) if self.kv.num_evictions == evictions else None
                if cfg.policy == "lpm" and self._should_defer(req, chosen, in_progress, known):
                    continue
                self.kv.begin(req, self._max_cached(req))
                if not req.admitted_once:
                    req.num_cached_tokens = req.num_kv
                    req.admitted_once = True
            length = min(req.seq_len - req.num_kv, budget, cfg.chunk_size)
            if not self.kv.reserve(length):
                if fresh:
                    self.kv.release(req)
                break
            start = req.num_kv
            self.kv.allocate(req, length)
            chosen.append(_Extend(req, start, length))
            budget -= length
        for ext in chosen:
            self.waiting.remove(ext.req)
        return chosen

    def _decode_as_extends(self) -> list[_Extend]:
        """Every running request's next token as a one-token extend (if memory allows)."""
        if not self.running or not self.kv.reserve(len(self.running)):
            return []
        extends = []
        for req in self.running:
            start = req.num_kv
            self.kv.allocate(req, 1)
            extends.append(_Extend(req, start, 1))
        return extends

    def _should_defer(self, req: Request, chosen: list[_Extend], in_progress: list[Request],
                      cached: int | None = None) -> bool:
        """True if a request being prefilled is about to compute the same uncached tokens
        (`cached`: its cached length if measured since the cache last lost tokens)."""
        if self.kv.cache is None:
            return False
        if cached is None:
            cached = self.kv.cached_len(req.fill_ids[: self._max_cached(req)])
        others = [e.req for e in chosen] + in_progress
        n = cached + self.config.defer_shared_prefix_tokens
        head = req.fill_ids[:n]
        if len(head) < n:
            return False
        # Slice equality runs in C; waiting x admitted pairs can be many thousands per step.
        return any(o is not req and o.fill_ids[:n] == head for o in others)

    def _run_extend(self, extends: list[_Extend]) -> list[Request]:
        input_ids: list[int] = []
        positions: list[int] = []
        for ext in extends:
            input_ids.extend(ext.req.fill_ids[ext.start : ext.start + ext.length])
            positions.extend(range(ext.start, ext.start + ext.length))
        table = self.kv.table
        out_cache_loc = torch.cat([table[e.req.req_row, e.start : e.start + e.length] for e in extends])
        batch = ForwardBatch(
            mode=ForwardMode.EXTEND,
            input_ids=torch.tensor(input_ids, dtype=torch.long, device=self.device),
            positions=torch.tensor(positions, dtype=torch.long, device=self.device),
            out_cache_loc=out_cache_loc,
            req_rows=torch.tensor([e.req.req_row for e in extends], dtype=torch.long, device=self.device),
            prefix_lens=torch.tensor([e.start for e in extends], dtype=torch.long, device=self.device),
            extend_lens=torch.tensor([e.length for e in extends], dtype=torch.long, device=self.device),
        )
        hidden = self.runner.forward(batch)

        # Pick the hidden rows whose logits are needed: sampling rows and logprob rows.
        row_offset = 0
        needed: list[int] = []
        plans: list[tuple[_Extend, list[int], int | None]] = []  # (ext, logprob positions, sample row)
        for ext in extends:
            req = ext.req
            req.num_kv = ext.start + ext.length
            done = req.num_kv >= req.seq_len
            lp_positions = self._logprob_positions(req, ext)
            for p in lp_positions:
                needed.append(row_offset + p - ext.start)
            sample_row = None
            if done and req.kind is not RequestKind.SCORE_CHILD:
                sample_row = len(needed)
                needed.append(row_offset + ext.length - 1)
            plans.append((ext, lp_positions, sample_row))
            row_offset += ext.length
        logits = self.runner.logits(hidden[needed]) if needed else None

        to_sample: list[tuple[Request, int]] = []
        cursor = 0
        for ext, lp_positions, sample_row in plans:
            req = ext.req
            rows = logits[cursor : cursor + len(lp_positions)] if lp_positions else None
            cursor += len(lp_positions) + (sample_row is not None)
            if _owner(req).error is not None:  # its score request failed earlier in this step
                self.kv.release(req, keep_in_cache=False)
                continue
            try:
                if self._after_extend(req, lp_positions, rows, sample_row, logits):
                    to_sample.append((req, sample_row))
            except Exception as exc:
                self.fail_request(req, exc)
        advanced: list[Request] = []
        if to_sample:
            rows = torch.tensor([row for _, row in to_sample], dtype=torch.long)
            advanced.extend(self._sample_and_append([r for r, _ in to_sample], logits[rows]))
        return advanced + [r for r in self._drain_finished_parents()]

    def _after_extend(self, req: Request, lp_positions: list[int], lp_logits: torch.Tensor | None,
                      sample_row: int | None, logits: torch.Tensor | None) -> bool:
        """One request's bookkeeping after its extend; True if it samples a token now."""
        if lp_positions:
            self._record_prompt_logprobs(req, lp_positions, lp_logits)
        if req.num_kv < req.seq_len:  # more chunks to go
            self.kv.cache_progress(req)
            self.waiting.appendleft(req)
            return False
        if req.kind is RequestKind.SCORE_CHILD:
            self._finish_child(req)
            return False
        self.kv.cache_progress(req)
        if req.kind is RequestKind.SCORE:
            self._spawn_children(req, logits[sample_row])
            return False
        return True

    def _logprob_positions(self, req: Request, ext: _Extend) -> list[int]:
        """Positions in this pass whose logits give a logprob the request asked for."""
        if req.kind is RequestKind.SCORE_CHILD:
            return list(range(ext.start, ext.start + ext.length))
        opts = req.logprobs
        if not opts.return_logprob or opts.logprob_start_len < 0 or req.output_ids:
            return []
        # Position p predicts token p + 1; prompt logprobs cover tokens logprob_start_len .. end.
        first = max(opts.logprob_start_len, 1) - 1
        last = len(req.input_ids) - 2
        lo, hi = max(first, ext.start), min(last, ext.start + ext.length - 1)
        return list(range(lo, hi + 1))

    def _record_prompt_logprobs(self, req: Request, positions: list[int], logits: torch.Tensor) -> None:
        fill = req.fill_ids
        if req.kind is RequestKind.SCORE_CHILD:
            # Position p predicts continuation token p - len(prompt) + 1 (the last one is not an input).
            prompt_len = len(req.parent.input_ids)
            cont = req.parent.continuations[req.child_index]
            targets = torch.tensor([cont[p - prompt_len + 1] for p in positions], dtype=torch.long)
            chosen, _, _ = compute_logprobs(logits, targets, 0)
            req.continuation_logprobs[0].extend(chosen.tolist())
            return
        targets = torch.tensor([fill[p + 1] for p in positions], dtype=torch.long)
        if not req.input_token_logprobs and req.logprobs.logprob_start_len == 0:
            req.input_token_logprobs.append((None, fill[0], None))
            if req.logprobs.top_logprobs_num:
                req.input_top_logprobs.append(None)
        top_k = req.logprobs.top_logprobs_num
        chosen, top_ids, top_lps = compute_logprobs(logits, targets, top_k)
        for i, lp in enumerate(chosen.tolist()):
            req.input_token_logprobs.append((lp, int(targets[i]), None))
            if top_k:
                req.input_top_logprobs.append(list(zip(top_lps[i].tolist(), top_ids[i].tolist(), [None] * top_k)))

    # -- score requests ---------------------------------------------------------------------------
    def _spawn_children(self, parent: Request, last_logits: torch.Tensor) -> None:
        """The prompt is prefilled: score each continuation's first token from its last logits,
        and queue one extend-only child per continuation longer than one token."""
        first_tokens = torch.tensor([c[0] for c in parent.continuations], dtype=torch.long)
        log_probs = torch.log_softmax(last_logits.float(), dim=-1)[first_tokens].tolist()
        parent.continuation_logprobs = [[lp] for lp in log_probs]
        children = []
        try:
            for i, cont in enumerate(parent.continuations):
                if len(cont) < 2:
                    continue
                child = Request(
                    rid=f"{parent.rid}/{i}", input_ids=parent.input_ids + cont[:-1], params=parent.params,
                    kind=RequestKind.SCORE_CHILD, parent=parent, child_index=i, arrival=parent.arrival,
                )
                child.continuation_logprobs = [[]]
                self.kv.begin_borrowed(child, parent, len(parent.input_ids))
                children.append(child)
        except Exception:
            for child in children:  # not queued yet: nobody else would return their rows
                self.kv.release(child, keep_in_cache=False)
            raise
        parent.num_children_pending = len(children)
        self.parked.append(parent)
        for child in reversed(children):
            self.waiting.appendleft(child)

    def _finish_child(self, child: Request) -> None:
        parent = child.parent
        parent.continuation_logprobs[child.child_index].extend(child.continuation_logprobs[0])
        self.kv.release(child)
        parent.num_children_pending -= 1

    def _drain_finished_parents(self) -> list[Request]:
        done = [p for p in self.parked if p.num_children_pending == 0]
        for parent in done:
            self.parked.remove(parent)
            parent.finish_reason = {"type": "score"}
            self.kv.release(parent)
        return done

    # -- decode -------------------------------------------------------------------------------------
    def _run_decode(self) -> list[Request]:
        aborted = self._make_room_for_decode()
        reqs = self.running
        if not reqs:
            return aborted
        rows = torch.tensor([r.req_row for r in reqs], dtype=torch.long, device=self.device)
        positions = torch.tensor([r.num_kv for r in reqs], dtype=torch.long, device=self.device)
        slots = self.kv.allocate_decode(rows, positions)
        batch = ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.long, device=self.device),
            positions=positions,
            out_cache_loc=slots,
            req_rows=rows,
            seq_lens=positions + 1,
            shared_prefix=self._shared_prefix(reqs, rows, positions + 1) if self.config.shared_prefix_decode else None,
        )
        hidden = self.runner.forward(batch)
        for r in reqs:
            r.num_kv += 1
        logits = self.runner.logits(hidden)
        return self._sample_and_append(list(reqs), logits) + aborted

    def _shared_prefix(self, reqs: list[Request], rows: torch.Tensor, seq_lens: torch.Tensor) -> SharedPrefix | None:
        """The groups of this decode batch that really share a prefix: same prefix_group, and the
        same KV slots for the first P positions (checked here, so the hint is never trusted)."""
        declared: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            if req.prefix_group is not None:
                declared.setdefault(req.prefix_group, []).append(i)
        table = self.kv.table
        members: list[list[int]] = []
        prefix_lens: list[int] = []
        for group in declared.values():
            if len(group) < 2:
                continue
            idx = torch.tensor(group, device=rows.device)
            span = int(seq_lens[idx].min()) - 1  # each request's newest slot is its own
            slots = table[rows[idx], :span]
            same = (slots == slots[0]).all(dim=0)
            shared = span if bool(same.all()) else int(torch.argmin(same.to(torch.int8)))
            if shared >= self.config.min_shared_prefix_tokens:
                members.append(group)
                prefix_lens.append(shared)
                self.num_shared_prefix_tokens += shared * (len(group) - 1)
        if not members:
            return None
        width = max(len(m) for m in members)
        padded = [m + [-1] * (width - len(m)) for m in members]
        return SharedPrefix(torch.tensor(padded, dtype=torch.long, device=rows.device),
                            torch.tensor(prefix_lens, dtype=torch.long, device=rows.device))

    def _make_room_for_decode(self) -> list[Request]:
        """Every running request needs one slot; retract the newest requests until they fit."""
        while self.running and not self.kv.reserve(len(self.running)):
            victim = max(self.running, key=lambda r: (r.arrival, len(r.output_ids)))
            self.running.remove(victim)
            if not self.running:
                # Alone and still no room: its sequence is longer than the whole KV pool.
                self._abort(victim, "the KV cache is too small to continue this request")
                return [victim]
            self.kv.release(victim)
            victim.num_retractions += 1
            self.num_retractions += 1
            self.waiting.appendleft(victim)
            logger.info("retracted %s (KV memory full); it will resume from its output so far", victim.rid)
        return []

    # -- sampling and finishing ---------------------------------------------------------------------
    def _sample_and_append(self, reqs: list[Request], logits: torch.Tensor) -> list[Request]:
        """Sample one token per request and append it; returns the requests still healthy.

        Which requests are running is looked up once (a set), and the ones that finished leave
        `running` in one pass at the end: a scan of the list per request made a step O(B^2)."""
        allowed = self._constraint_masks(reqs, logits)
        tokens = self._sample(reqs, logits, allowed)
        lp_info = self._output_logprobs(reqs, logits, tokens)
        running = {id(r) for r in self.running}
        leaving: set[int] = set()
        try:
            for i, (req, token) in enumerate(zip(reqs, tokens)):
                if req.error is not None:
                    continue
                try:
                    if self._append_token(req, token, lp_info.get(i), id(req) in running):
                        leaving.add(id(req))
                except Exception as exc:
                    self.fail_request(req, exc)
        finally:
            if leaving:
                self.running[:] = [r for r in self.running if id(r) not in leaving]
        return [r for r in reqs if r.error is None]

    def _constraint_masks(self, reqs: list[Request], logits: torch.Tensor) -> torch.Tensor | None:
        """The allowed-token mask of every constrained row (None when no row is constrained)."""
        if all(r.constraint is None for r in reqs):
            return None
        allowed = torch.ones(logits.shape, dtype=torch.bool)
        for i, r in enumerate(reqs):
            if r.constraint is not None:
                try:
                    r.constraint.fill_mask(allowed[i])
                except Exception as exc:
                    allowed[i] = True  # the row is sampled with the others and then ignored
                    self.fail_request(r, exc)
        return allowed.to(logits.device)

    def _sample(self, reqs: list[Request], logits: torch.Tensor, allowed: torch.Tensor | None) -> list[int | None]:
        """One token per row, batched; if the batch raises, row by row so only the culprit fails
        (None for a failed row). Greedy rows give the same tokens either way."""
        try:
            return self.sampler.sample(logits, _sampling_batch(reqs), allowed).tolist()
        except Exception:
            logger.warning("batched sampling raised; sampling the %d rows one at a time", len(reqs), exc_info=True)
        tokens: list[int | None] = []
        for i, req in enumerate(reqs):
            token = None
            if req.error is None:
                try:
                    row_mask = None if allowed is None else allowed[i : i + 1]
                    token = int(self.sampler.sample(logits[i : i + 1], _sampling_batch([req]), row_mask)[0])
                except Exception as exc:
                    self.fail_request(req, exc)
            tokens.append(token)
        return tokens

    def _output_logprobs(self, reqs: list[Request], logits: torch.Tensor,
                         tokens: list[int | None]) -> dict[int, tuple]:
        """Row index -> (chosen logprob, top ids, top logprobs) for the rows that asked; batched,
        row by row if the batch raises."""
        want = [i for i, r in enumerate(reqs) if r.logprobs.return_logprob and r.error is None]
        if not want:
            return {}

        def compute(rows: list[int]) -> dict[int, tuple]:
            idx = torch.tensor(rows, dtype=torch.long)
            targets = torch.tensor([tokens[i] for i in rows], dtype=torch.long)
            top_k = max(reqs[i].logprobs.top_logprobs_num for i in rows)
            chosen, top_ids, top_lps = compute_logprobs(logits[idx], targets, top_k)
            columns = [t.tolist() if t is not None else [None] * len(rows) for t in (chosen, top_ids, top_lps)]
            return dict(zip(rows, zip(*columns)))

        try:
            return compute(want)
        except Exception:
            logger.warning("batched logprobs raised; computing the %d rows one at a time", len(want), exc_info=True)
        info: dict[int, tuple] = {}
        for i in want:
            try:
                info.update(compute([i]))
            except Exception as exc:
                self.fail_request(reqs[i], exc)
        return info

    def _append_token(self, req: Request, token: int, lp: tuple | None, in_running: bool) -> bool:
        """Everything that follows one request's new token: results, detokenizer, constraint, stop.

        `in_running`: whether `req` was in `running` before this token. True when it finished and
        must leave `running` (the caller removes it, with the step's others)."""
        req.output_ids.append(token)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if lp is not None:
            chosen, top_ids, top_lps = lp
            req.output_token_logprobs.append((chosen, token, None))
            k = req.logprobs.top_logprobs_num
            if k:
                req.output_top_logprobs.append(list(zip(top_lps[:k], top_ids[:k], [None] * k)))
        if req.detokenizer is not None:
            req.detokenizer.add(token)
        if req.constraint is not None:
            req.constraint.advance(token)
        self._check_finished(req, token)
        if not req.finished and req.constraint is not None and self._try_jump_forward(req):
            return False  # it left `running` (if it was there) itself
        if req.finished:
            req.finished_at = time.perf_counter()
            if not self._start_chain(req):
                self.kv.release(req)
            return in_running
        if not in_running:
            self.running.append(req)
        return False

    # -- chained requests (runtime_client "Chains", engine_chain) --------------------------------------
    def _start_chain(self, req: Request) -> bool:
        """Run the request chained after `req` (which just finished normally) on its sequence: the
        new prompt is tokenized from the texts (only its tail), the KV of the tokens both share is
        handed over, the rest truncated, and the request goes first in the queue so the forced text
        is prefilled in the next step alongside the decodes. False when there is no chain to start
        (the engine loop then ends it) or it cannot start (too long, a tokenizer error)."""
        chain = req.chain
        if (chain is None or req.error is not None or req.req_row is None or self.chain_tokens is None
                or req.finish_reason.get("type") == "abort"):
            return False
        nxt = chain.request
        try:
            detok = req.detokenizer
            detok.finish()
            ids = self.chain_tokens.prompt_ids(req.input_ids, chain.prompt_text, detok.text, chain.forced_text)
        except Exception:
            logger.warning("request %s: could not tokenize its chained prompt", req.rid, exc_info=True)
            return False
        if not ids or len(ids) >= self.config.context_len:
            return False
        nxt.input_ids = ids
        nxt.arrival = req.arrival
        if nxt.chain is not None:  # the next link's prompt text is this one's, as the runtime saw it
            nxt.chain.prompt_text = chain.prompt_text + detok.text + chain.forced_text
        # The shared tokens' KV stays; at least one token must be computed (its logits sample).
        keep = min(common_prefix_len(req.fill_ids[: req.num_kv], ids), len(ids) - 1)
        if keep < max(req.num_tree_owned, req.num_borrowed):
            # Cache-owned KV cannot be truncated: hand it to the cache and let the chained request
            # match it there (still no client round trip).
            self.kv.release(req)
        else:
            nxt.req_row, nxt.num_kv, nxt.num_tree_owned, nxt.last_node = (
                req.req_row, req.num_kv, req.num_tree_owned, req.last_node)
            req.req_row, req.last_node = None, None
            req.num_kv = req.num_tree_owned = 0
            self.kv.truncate(nxt, keep)
            nxt.admitted_once = True
            nxt.num_cached_tokens = keep
            self.num_chain_kept_tokens += keep
        req.chained_into = nxt
        self.num_chained += 1
        self._queue_chained(nxt)
        return True

    def _queue_chained(self, nxt: Request) -> None:
        """Queue a started chained request first (after any forced start of its constraint)."""
        jumped = False
        if nxt.constraint is not None:
            try:
                jumped = self._try_jump_forward(nxt)
            except Exception as exc:
                self.fail_request(nxt, exc)
                return
        if nxt.finished:  # the constraint forced the whole output
            self.kv.release(nxt)
            self._finished_early.append(nxt)
        elif not (jumped and nxt.req_row is not None):  # a jump with a row queued it already
            self.waiting.appendleft(nxt)

    def fail_request(self, req: Request, exc: BaseException, report: bool = True) -> None:
        """Abort a request whose own work raised `exc`: take it (and a score request's other
        continuations) out of every queue and return its KV. The KV goes back to the pool rather
        than into the radix cache, since the failure may have left its tokens and KV out of step.
        With `report`, the next `step()` returns it (its `error` set) so the engine fails its handle.
        """
        owner = _owner(req)
        if owner.error is not None:
            return
        logger.warning("request %s failed; aborting it alone: %r", owner.rid, exc)
        owner.error = exc
        owner.finish_reason = {"type": "abort", "message": f"request {owner.rid} failed: {exc!r}"}
        family = [owner]
        if owner.kind is RequestKind.SCORE:
            family += [r for r in self.waiting if r.parent is owner]
            if req is not owner:
                family.append(req)
        for r in family:
            for queue in (self.waiting, self.running, self.parked):
                if r in queue:
                    queue.remove(r)
        # Children first: they borrow their parent's prompt slots.
        for r in reversed(family):
            self.kv.release(r, keep_in_cache=False)
        if report:
            self._failed.append(owner)

    def abort_request(self, req: Request, message: str) -> bool:
        """Stop a request its client no longer wants (between steps): out of every queue, finished
        with an "abort" reason. Unlike a failed request its KV is sound, so what it computed stays
        in the radix cache. A score request takes its waiting continuations with it. False if it has
        already finished (it is reported by the next step as usual)."""
        if req.finished:
            return False
        req.finish_reason = {"type": "abort", "message": message}
        family = [req] + [r for r in self.waiting if r.parent is req]
        for r in family:
            for queue in (self.waiting, self.running, self.parked):
                if r in queue:
                    queue.remove(r)
        for r in reversed(family):  # children first: they borrow their parent's prompt slots
            self.kv.release(r)
        return True

    def _try_jump_forward(self, req: Request) -> bool:
        """Append the text the constraint forces now; True if the request left the decode batch."""
        if not self.config.enable_jump_forward or self.constraints is None:
            return False
        fixed_outputs = max(req.num_tree_owned - len(req.input_ids), 0)
        plan = plan_jump_forward(req.constraint, req.output_ids, self.constraints.tokenizer,
                                 self.constraints.prefix_index, fixed_outputs)
        if plan is None:
            return False
        keep = len(req.output_ids) - plan.num_replaced
        room = req.params.max_new_tokens - keep
        if len(plan.new_tokens) > room:
            return False  # the forced text would not fit: let decoding run into the length limit
        # KV of replaced tokens (all request-owned: see fixed_outputs) goes back to the pool.
        self.kv.truncate(req, len(req.input_ids) + keep)
        req.output_ids = req.output_ids[:keep] + plan.new_tokens
        apply_jump(req.constraint, plan)
        if req.logprobs.return_logprob:
            del req.output_token_logprobs[keep:]
            req.output_token_logprobs.extend((None, t, None) for t in plan.new_tokens)
        if req.detokenizer is not None:
            req.detokenizer = req.detokenizer.rebuilt(req.output_ids)
        self.num_jump_forward_tokens += len(plan.new_tokens) - plan.num_replaced
        if req in self.running:
            self.running.remove(req)
        if req.constraint.complete:  # the forced text ended the output: nothing left to compute
            req.finish_reason = {"type": "stop", "matched": None}
            return False
        if req.req_row is not None:
            self.waiting.appendleft(req)  # extend the new tokens next pass, then sample
        return True

    def _check_finished(self, req: Request, token: int) -> None:
        params = req.params
        num_out = len(req.output_ids)
        if req.constraint is not None and req.constraint.state < 0 and token not in req.constraint.eos_ids:
            # checked first: a stop token the mask did not allow must not end an invalid output as "stop"
            raise ConstraintDeadEnd(f"token {token} left the constraint's language")
        if token in req.stop_token_ids and num_out >= params.min_new_tokens:
            req.finish_reason = {"type": "stop", "matched": token}
        elif req.constraint is not None and (token in req.constraint.eos_ids or req.constraint.complete):
            # The constraint is satisfied (EOS is only allowed in accepting states) or allows nothing more.
            req.finish_reason = {"type": "stop", "matched": token if token in req.constraint.eos_ids else None}
        elif req.detokenizer is not None and req.detokenizer.stopped:
            req.finish_reason = {"type": "stop", "matched": req.detokenizer.matched_stop}
        elif num_out >= params.max_new_tokens:
            req.finish_reason = {"type": "length", "length": num_out}
        elif len(req.input_ids) + num_out >= self.config.context_len:  # seq_len, without the call
            req.finish_reason = {"type": "length", "length": num_out}

    def _abort(self, req: Request, message: str) -> None:
        """Finish a request the runtime cannot serve (no error of its own: see `fail_request`)."""
        req.finish_reason = {"type": "abort", "message": f"request {req.rid}: {message}"}
        if req in self.running:
            self.running.remove(req)
        if req.parent is None:
            self.kv.release(req)


def _owner(req: Request) -> Request:
    """The request that answers for `req`: a score continuation's parent, else itself."""
    return req.parent if req.kind is RequestKind.SCORE_CHILD else req


def _sampling_batch(reqs: list[Request]) -> SamplingBatch:
    return SamplingBatch(
        params=[r.params for r in reqs],
        output_ids=[r.output_ids for r in reqs],
        generators=[r.generator for r in reqs],
        eos_ids=[r.stop_token_ids for r in reqs],
        prompt_ids=[r.input_ids for r in reqs],
    )
