"""SGLang's `global_config`: the settings object programs read and write (`sgl.global_config`).

Only `default_backend` has an effect in sgc (it is `set_default_backend`/`get_default_backend`);
the other attributes are kept with SGLang's defaults so programs that set them keep running.
"""

from __future__ import annotations

from typing import Any

from compiler.lang import get_default_backend, set_default_backend


class GlobalConfig:
    """SGLang's global settings; see the module docstring for which ones sgc honours."""

    def __init__(self) -> None:
        self.verbosity = 0
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        self.enable_precache_with_tracing = True
        self.enable_parallel_encoding = True

    @property
    def default_backend(self) -> Any:
        return get_default_backend()

    @default_backend.setter
    def default_backend(self, backend: Any) -> None:
        set_default_backend(backend)


global_config = GlobalConfig()
