"""`sglang.lang.api`: where newer SGLang versions keep the frontend API (the same as `sglang.api`)."""

from sglang.api import *  # noqa: F403
from sglang.api import __all__, __getattr__  # noqa: F401
