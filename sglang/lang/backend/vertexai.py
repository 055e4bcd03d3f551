"""`VertexAI`: a remote-API backend, refused by sgc (see `sglang._refused.REMOTE_API`)."""

from sglang import VertexAI

__all__ = ["VertexAI"]
