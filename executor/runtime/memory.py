"""Token-level KV memory: the KV pool, the slot allocator and the request-to-token table.

The KV cache is paged at the granularity of one token. Every cached token owns one *slot*: an
index into per-layer K and V buffers of shape `[num_slots + 1, num_kv_heads, head_dim]`. Slot 0 is
reserved as a padding slot that is never handed out, so kernels can point padded positions at it
and write garbage there without corrupting real KV.

Three pieces, each with a pure check apart from the mutation (`can_allocate` / `allocate`):

- `KVPool` owns the device buffers and writes new tokens' K and V into given slots.
- `TokenSlotAllocator` hands out and takes back slot indices (CPU bookkeeping only).
- `ReqToTokenPool` is the per-request table mapping (request row, position) to a slot, which the
  attention kernels read to find a request's KV.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PADDING_SLOT = 0


class KVMemoryError(RuntimeError):
    """Misuse of the KV memory bookkeeping (a caller bug, not a capacity problem)."""


class OutOfSlotsError(KVMemoryError):
    """An allocation was attempted without checking `can_allocate` / `can_alloc` first."""


class InvalidFreeError(KVMemoryError):
    """Freeing a slot or row that is not currently allocated (double free, padding slot, out of range)."""


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token needs: K and V, over all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype.itemsize


def _as_slot_array(slots: torch.Tensor | Sequence[int]) -> np.ndarray:
    """Slot indices as a 1-D int64 numpy array (a zero-copy view of a CPU int64 tensor; read only)."""
    if isinstance(slots, torch.Tensor):
        if slots.dtype == torch.int64 and slots.device.type == "cpu" and slots.dim() == 1:
            return slots.numpy()  # the common case, kept to one cheap call
        if slots.dtype.is_floating_point or slots.dtype.is_complex or slots.dtype == torch.bool:
            raise KVMemoryError(f"slot indices must be an integer tensor, got {slots.dtype}")
        return slots.detach().reshape(-1).to(device="cpu", dtype=torch.int64).numpy()
    return np.asarray(list(slots), dtype=np.int64).reshape(-1)


class KVPool:
    """Per-layer K and V buffers indexed by token slot.

    Each buffer is `[num_slots + 1, num_kv_heads, head_dim]`; row 0 is the padding slot.
    """

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_slots < 1:
            raise ValueError(f"KVPool needs at least one slot, got num_slots={num_slots}")
        if num_layers < 1 or num_kv_heads < 1 or head_dim < 1:
            raise ValueError(
                f"bad KV shape: num_layers={num_layers}, num_kv_heads={num_kv_heads}, head_dim={head_dim}"
            )
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_slots + 1, num_kv_heads, head_dim)
        # Uninitialized: a slot is always written before it is read, and zero-filling a multi-GB
        # pool would cost seconds at start-up. Only the padding slot must hold finite values.
        self._k = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._v = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        for buf in self._k + self._v:
            buf[0].zero_()

    @classmethod
    def from_budget(
        cls,
        budget_bytes: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVPool:
        """The largest pool whose buffers (padding slot included) fit in `budget_bytes`."""
        per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        num_slots = budget_bytes // per_token - 1  # one row goes to the padding slot
        if num_slots < 1:
            raise ValueError(
                f"KV budget of {budget_bytes} bytes holds no token: one token needs {per_token} bytes "
                f"and the padding slot takes one more"
            )
        return cls(num_slots, num_layers, num_kv_heads, head_dim, dtype, device)

    @property
    def bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)

    @property
    def size_bytes(self) -> int:
        return (self.num_slots + 1) * self.bytes_per_token

    def k_buffer(self, layer: int) -> torch.Tensor:
        return self._k[layer]

    def v_buffer(self, layer: int) -> torch.Tensor:
        return self._v[layer]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K and V of new tokens: `k[i]`, `v[i]` (`[num_kv_heads, head_dim]`) go to `slots[i]`."""
        expected = (slots.numel(), self.num_kv_heads, self.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(
                f"KVPool.write: expected k and v of shape {expected}, got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        index = slots.reshape(-1).to(device=self.device, dtype=torch.int64)
        # index_copy_, not `buf[index] = k`: the same rows written, without advanced indexing's
        # general index_put machinery (several times slower on CPU for these small writes).
        self._k[layer].index_copy_(0, index, k.to(self.dtype))
        self._v[layer].index_copy_(0, index, v.to(self.dtype))


class TokenSlotAllocator:
    """Hands out KV slot indices `1..num_slots` (0 is the padding slot).

    Free slots live in a preallocated stack (`_free_stack[:num_free]`), so allocating and freeing n
    slots is O(n) vectorized work with no per-slot Python loop. A boolean map of free slots catches
    double frees and frees of slots that were never handed out. The bookkeeping is numpy, not torch:
    on these small index arrays a numpy op costs ~1 us against ~5 us for a torch op, and the
    allocator runs on every scheduler step.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"TokenSlotAllocator needs at least one slot, got num_slots={num_slots}")
        self.num_slots = num_slots
        self._free_stack = np.empty(num_slots, dtype=np.int64)
        self._is_free = np.zeros(num_slots + 1, dtype=bool)
        # Scratch for finding a repeated slot within one free() call; see free().
        self._position = np.zeros(num_slots + 1, dtype=np.int64)
        self._num_free = 0
        self.reset()

    def reset(self) -> None:
        """Mark every slot free (forgets all allocations)."""
        # Reversed so that the first allocations come out as 1, 2, 3, ...: easier to read in dumps.
        self._free_stack[:] = np.arange(self.num_slots, 0, -1, dtype=np.int64)
        self._is_free[:] = True
        self._is_free[PADDING_SLOT] = False
        self._num_free = self.num_slots

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self.num_slots - self._num_free

    def can_allocate(self, n: int) -> bool:
        return 0 <= n <= self._num_free

    def allocate(self, n: int) -> torch.Tensor:
        """Take `n` free slots; returns a fresh int64 CPU tensor. Check `can_allocate(n)` first."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of slots ({n})")
        if n > self._num_free:
            raise OutOfSlotsError(
                f"asked for {n} KV slots but only {self._num_free} of {self.num_slots} are free; "
                f"callers must check can_allocate() and evict or preempt first"
            )
        start = self._num_free - n
        slots = self._free_stack[start : self._num_free].copy()
        self._num_free = start
        self._is_free[slots] = False
        return torch.from_numpy(slots)

    def free(self, slots: torch.Tensor | Sequence[int]) -> None:
        """Give slots back. Raises `InvalidFreeError` (and changes nothing) on a bad slot."""
        arr = _as_slot_array(slots)
        n = arr.size
        if n == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 1 or hi > self.num_slots:
            bad = lo if lo < 1 else hi
            what = "the padding slot" if bad == PADDING_SLOT else "out of range"
            raise InvalidFreeError(f"cannot free slot {bad}: {what} (valid slots are 1..{self.num_slots})")
        already = self._is_free[arr]
        if already.any():
            raise InvalidFreeError(f"double free: slots {arr[already][:8].tolist()} are not allocated")
        if n > 1:
            # Write each slot's position into the scratch map; a slot listed twice keeps only one of
            # its positions, so some position reads back wrong. O(n), unlike sorting.
            positions = np.arange(n, dtype=np.int64)
            self._position[arr] = positions
            if (self._position[arr] != positions).any():
                raise InvalidFreeError(
                    f"double free: the same slot appears twice in one free() call ({n} slots)"
                )
        self._is_free[arr] = True
        self._free_stack[self._num_free : self._num_free + n] = arr
        self._num_free += n

    def is_free(self, slots: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Boolean tensor: which of `slots` are currently free (the padding slot is never free)."""
        return torch.from_numpy(self._is_free[_as_slot_array(slots)])


class ReqToTokenPool:
    """Table `[max_requests, max_context_len]` (int64) mapping (request row, position) to a KV slot."""

    def __init__(self, max_requests: int, max_context_len: int, device: torch.device | str = "cpu") -> None:
        if max_requests < 1 or max_context_len < 1:
            raise ValueError(
                f"ReqToTokenPool needs max_requests >= 1 and max_context_len >= 1, "
                f"got {max_requests} and {max_context_len}"
            )
        self.max_requests = max_requests
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros(
            (max_requests, max_context_len), dtype=torch.int64, device=self.device
        )
        self._free_rows = list(range(max_requests - 1, -1, -1))  # pop() hands out row 0 first
        self._row_in_use = [False] * max_requests

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    def can_alloc(self) -> bool:
        return bool(self._free_rows)

    def alloc(self) -> int:
        """Take a free row. Check `can_alloc()` first."""
        if not self._free_rows:
            raise OutOfSlotsError(f"all {self.max_requests} request rows are in use; check can_alloc() first")
        row = self._free_rows.pop()
        self._row_in_use[row] = True
        return row

    def free(self, row: int) -> None:
        if not 0 <= row < self.max_requests:
            raise InvalidFreeError(f"request row {row} out of range 0..{self.max_requests - 1}")
        if not self._row_in_use[row]:
            raise InvalidFreeError(f"double free: request row {row} is not allocated")
        self._row_in_use[row] = False
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Record that positions `start .. start + len(slots)` of request `row` live in `slots`."""
        end = start + slots.numel()
        if start < 0 or end > self.max_context_len:
            raise ValueError(
                f"positions {start}..{end} do not fit the request table's context length {self.max_context_len}"
            )
        self.req_to_token[row, start:end] = slots.to(device=self.device, dtype=torch.int64)

    def reset(self) -> None:
        self._free_rows = list(range(self.max_requests - 1, -1, -1))
        self._row_in_use = [False] * self.max_requests
