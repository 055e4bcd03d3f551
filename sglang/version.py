"""The SGLang frontend version the shim follows (0.5.x), marked as sgc's."""

__version__ = "0.5.0+sgc"
