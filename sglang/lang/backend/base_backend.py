"""`BaseBackend`: refused; sgc programs run on `sgc.Runtime` or `sgc.Engine`, not custom backends."""

from sglang._refused import refused_class

__all__ = ["BaseBackend"]

BaseBackend = refused_class(
    "BaseBackend", "custom backends are not supported: programs run on sgc's runtime "
    "(sgl.Runtime(model_path=...) or sgl.Engine)", "sglang.lang.backend.base_backend")
