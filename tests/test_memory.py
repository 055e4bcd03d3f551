"""Tests of the token-level KV memory: the slot allocator, the request table and the KV pool."""

from __future__ import annotations

import pytest
import torch

from executor.runtime.memory import (
    PADDING_SLOT,
    InvalidFreeError,
    KVPool,
    OutOfSlotsError,
    ReqToTokenPool,
    TokenSlotAllocator,
    kv_bytes_per_token,
)

# ---------------------------------------------------------------------------- allocator


def test_allocator_hands_out_every_slot_once_and_never_padding() -> None:
    alloc = TokenSlotAllocator(10)
    assert alloc.num_free == 10
    a = alloc.allocate(4)
    b = alloc.allocate(6)
    assert a.dtype == torch.int64
    got = torch.cat([a, b]).tolist()
    assert sorted(got) == list(range(1, 11))
    assert PADDING_SLOT not in got
    assert alloc.num_free == 0 and alloc.num_used == 10


def test_allocator_check_is_pure_and_allocate_raises_when_short() -> None:
    alloc = TokenSlotAllocator(3)
    assert alloc.can_allocate(3) and alloc.can_allocate(0)
    assert not alloc.can_allocate(4)
    assert alloc.num_free == 3  # can_allocate changed nothing
    with pytest.raises(OutOfSlotsError, match="can_allocate"):
        alloc.allocate(4)
    assert alloc.num_free == 3
    assert alloc.allocate(0).numel() == 0


def test_allocator_free_returns_slots_for_reuse() -> None:
    alloc = TokenSlotAllocator(4)
    slots = alloc.allocate(4)
    alloc.free(slots[1:3])
    assert alloc.num_free == 2
    again = alloc.allocate(2)
    assert sorted(again.tolist()) == sorted(slots[1:3].tolist())
    assert alloc.is_free(slots).tolist() == [False] * 4


def test_allocator_accepts_lists_and_other_int_dtypes() -> None:
    alloc = TokenSlotAllocator(5)
    slots = alloc.allocate(3)
    alloc.free(slots[:1].tolist())
    alloc.free(slots[1:].to(torch.int32))
    assert alloc.num_free == 5


def test_double_free_raises_and_changes_nothing() -> None:
    alloc = TokenSlotAllocator(5)
    slots = alloc.allocate(3)
    alloc.free(slots[:1])
    with pytest.raises(InvalidFreeError, match="double free"):
        alloc.free(slots)  # slots[0] is already free
    assert alloc.num_free == 3
    assert alloc.is_free(slots[1:]).tolist() == [False, False]


def test_free_of_never_allocated_slot_raises() -> None:
    alloc = TokenSlotAllocator(5)
    with pytest.raises(InvalidFreeError, match="double free"):
        alloc.free([2])


def test_duplicate_within_one_free_call_raises() -> None:
    alloc = TokenSlotAllocator(5)
    slots = alloc.allocate(2)
    with pytest.raises(InvalidFreeError, match="twice"):
        alloc.free(torch.stack([slots[0], slots[0]]))
    assert alloc.num_free == 3


@pytest.mark.parametrize("bad", [PADDING_SLOT, -1, 6])
def test_free_of_padding_or_out_of_range_raises(bad: int) -> None:
    alloc = TokenSlotAllocator(5)
    alloc.allocate(5)
    with pytest.raises(InvalidFreeError):
        alloc.free([bad])
    assert alloc.num_free == 0


def test_allocator_rejects_float_slots() -> None:
    alloc = TokenSlotAllocator(5)
    alloc.allocate(2)
    with pytest.raises(RuntimeError, match="integer"):
        alloc.free(torch.tensor([1.0]))


def test_allocator_reset() -> None:
    alloc = TokenSlotAllocator(4)
    alloc.allocate(3)
    alloc.reset()
    assert alloc.num_free == 4
    assert sorted(alloc.allocate(4).tolist()) == [1, 2, 3, 4]


def test_allocator_many_cycles_stay_consistent() -> None:
    gen = torch.Generator().manual_seed(0)
    alloc = TokenSlotAllocator(64)
    held: list[torch.Tensor] = []
    for _ in range(200):
        n = int(torch.randint(0, 10, (1,), generator=gen))
        if alloc.can_allocate(n):
            held.append(alloc.allocate(n))
        if held and int(torch.randint(0, 2, (1,), generator=gen)):
            alloc.free(held.pop(int(torch.randint(0, len(held), (1,), generator=gen))))
        in_use = torch.cat(held) if held else torch.empty(0, dtype=torch.int64)
        assert in_use.unique().numel() == in_use.numel()
        assert alloc.num_free + in_use.numel() == 64
        assert not bool(alloc.is_free(in_use).any())


# ---------------------------------------------------------------------------- request table


def test_req_to_token_pool_alloc_free() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context_len=8)
    assert pool.req_to_token.shape == (2, 8) and pool.req_to_token.dtype == torch.int64
    assert pool.can_alloc() and pool.num_free == 2
    r0, r1 = pool.alloc(), pool.alloc()
    assert {r0, r1} == {0, 1}
    assert not pool.can_alloc()
    with pytest.raises(OutOfSlotsError):
        pool.alloc()
    pool.free(r0)
    assert pool.num_free == 1 and pool.alloc() == r0


def test_req_to_token_pool_double_free_and_range() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context_len=8)
    row = pool.alloc()
    pool.free(row)
    with pytest.raises(InvalidFreeError, match="double free"):
        pool.free(row)
    with pytest.raises(InvalidFreeError, match="out of range"):
        pool.free(5)


def test_req_to_token_pool_write() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context_len=8)
    row = pool.alloc()
    pool.write(row, 0, torch.tensor([5, 6, 7]))
    pool.write(row, 3, torch.tensor([9]))
    assert pool.req_to_token[row, :4].tolist() == [5, 6, 7, 9]
    with pytest.raises(ValueError, match="context length"):
        pool.write(row, 6, torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------------------- KV pool


def test_kv_bytes_per_token() -> None:
    # K and V, 30 layers, 3 KV heads of 64 dims, bf16: SmolLM2-135M's shape.
    assert kv_bytes_per_token(30, 3, 64, torch.bfloat16) == 2 * 30 * 3 * 64 * 2
    assert kv_bytes_per_token(2, 1, 8, torch.float32) == 128


def test_from_budget_sizing_fits_budget_with_padding_slot() -> None:
    per_token = kv_bytes_per_token(2, 2, 4, torch.float32)  # 128 bytes
    pool = KVPool.from_budget(per_token * 10 + 50, num_layers=2, num_kv_heads=2, head_dim=4)
    assert pool.num_slots == 9  # 10 rows fit; one is the padding slot
    assert pool.size_bytes <= per_token * 10 + 50
    actual = sum(pool.k_buffer(i).nbytes + pool.v_buffer(i).nbytes for i in range(2))
    assert actual == pool.size_bytes
    assert pool.k_buffer(0).shape == (10, 2, 4)
    assert pool.v_buffer(1).dtype == torch.float32


def test_from_budget_too_small_raises() -> None:
    per_token = kv_bytes_per_token(1, 1, 4, torch.float16)
    with pytest.raises(ValueError, match="holds no token"):
        KVPool.from_budget(per_token * 2 - 1, 1, 1, 4, torch.float16)


def test_kv_pool_write_per_layer() -> None:
    pool = KVPool(num_slots=6, num_layers=2, num_kv_heads=2, head_dim=3)
    for layer in range(2):  # buffers may start uninitialized, but the padding slot is zero
        assert not pool.k_buffer(layer)[PADDING_SLOT].any() and not pool.v_buffer(layer)[PADDING_SLOT].any()
    k = torch.randn(2, 2, 3)
    v = torch.randn(2, 2, 3)
    slots = torch.tensor([4, 2])
    pool.write(1, slots, k, v)
    pool.write(0, slots, k + 1, v + 1)  # other layers have their own buffers
    assert torch.equal(pool.k_buffer(1)[slots], k)
    assert torch.equal(pool.v_buffer(1)[slots], v)
    assert torch.equal(pool.k_buffer(0)[slots], k + 1)
    assert not pool.k_buffer(1)[PADDING_SLOT].any()


def test_kv_pool_write_casts_and_checks_shape() -> None:
    pool = KVPool(num_slots=4, num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.bfloat16)
    pool.write(0, torch.tensor([1]), torch.ones(1, 1, 2), torch.ones(1, 1, 2))
    assert pool.k_buffer(0).dtype == torch.bfloat16 and pool.k_buffer(0)[1].sum().item() == 2
    with pytest.raises(ValueError, match="shape"):
        pool.write(0, torch.tensor([1, 2]), torch.ones(1, 1, 2), torch.ones(1, 1, 2))
