"""`Anthropic`: a remote-API backend, refused by sgc (see `sglang._refused.REMOTE_API`)."""

from sglang import Anthropic

__all__ = ["Anthropic"]
