"""Optimization passes over the graph IR (one pass per module; see docs/passes.md).

`PassManager` runs a pipeline (`DEFAULT_PIPELINE`, or none at `-O0`) with optional verification and
IR dumps; `available_passes()` lists the registered passes for the CLI.
"""

from compiler.passes.base import PASSES, Pass, UnknownPassError, available_passes, get_pass, register
from compiler.passes.dce import DeadCodeElimination
from compiler.passes.fold_constants import FoldConstants
from compiler.passes.fuse_fork_gens import FuseForkGens
from compiler.passes.hoist_prefix import HoistPrefix
from compiler.passes.lower_select import LowerSelect
from compiler.passes.manager import (
    CONSTRAINT_PASS_NAME,
    DEFAULT_PIPELINE,
    PassManager,
    PassVerificationError,
    default_pipeline,
)

__all__ = [
    "CONSTRAINT_PASS_NAME", "DEFAULT_PIPELINE", "PASSES", "DeadCodeElimination", "FoldConstants",
    "FuseForkGens", "HoistPrefix", "LowerSelect", "Pass", "PassManager", "PassVerificationError",
    "UnknownPassError", "available_passes", "default_pipeline", "get_pass", "register",
]
