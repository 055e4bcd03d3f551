"""Attention kernels over the paged KV cache.

`extend_attention` and `decode_attention` dispatch to Triton kernels on CUDA (when they exist) and
to the pure-torch references on CPU. Callers never choose; tests compare the two directly.
"""

from executor.kernels.attention_ref import decode_attention_ref, extend_attention_ref

extend_attention = extend_attention_ref
decode_attention = decode_attention_ref

__all__ = ["decode_attention", "decode_attention_ref", "extend_attention", "extend_attention_ref"]
