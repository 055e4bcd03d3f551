"""`sglang.lang.global_config`: the same settings object as `sglang.global_config`."""

from sglang.global_config import GlobalConfig, global_config

__all__ = ["GlobalConfig", "global_config"]
