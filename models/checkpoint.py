"""Safetensors files read as zero-copy views of one memory map, and written in a chosen order.

Start-up time is dominated not by reading the file (it is usually in the page cache) but by
faulting in fresh memory to copy it into. So the reader maps each file once, copy-on-write, and
hands out tensors that are views of that map: a parameter can simply become such a view. The
writer keeps the caller's tensor order, which lets our converter put the shards of each fused
parameter (q, k, v; gate, up) next to each other so they too map as one tensor without a copy.
Files we write are ordinary safetensors that HF transformers reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_DATA_ALIGNMENT = 64  # the header is padded so the data starts cache-line aligned


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, as copy-on-write views of one memory map (writes never reach the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len} > file size)")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    data_start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = (data_start + offset for offset in info["data_offsets"])
        shape = [int(d) for d in info["shape"]]
        itemsize = dtype.itemsize
        if end > size or end - begin != itemsize * _numel(shape):
            raise ValueError(f"{path}: tensor {name!r} has offsets that do not match its shape or the file")
        if begin % itemsize == 0:
            tensors[name] = torch.empty(0, dtype=dtype).set_(storage, begin // itemsize, shape)
        else:  # misaligned for its dtype (legal but rare): copy the bytes out
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, begin, [end - begin])
            tensors[name] = raw.clone().view(dtype).reshape(shape)
    return tensors


def write_safetensors(
    tensors: Sequence[tuple[str, torch.Tensor]], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write the tensors in the given order (safetensors' own writer sorts them by name)."""
    entries: dict[str, object] = {"__metadata__": metadata or {}}
    offset = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % _DATA_ALIGNMENT)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for _, tensor in tensors:
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
