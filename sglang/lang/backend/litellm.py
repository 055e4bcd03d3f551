"""`LiteLLM`: a remote-API backend, refused by sgc (see `sglang._refused.REMOTE_API`)."""

from sglang import LiteLLM

__all__ = ["LiteLLM"]
