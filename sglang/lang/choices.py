"""`sglang.lang.choices`: the three ways a select picks a choice (sgc's implementations).

`ChoicesSamplingMethod` is the base of the three methods, so `isinstance` checks work; a program's
own subclass is refused when it is used (a compiled select names one of the three methods).
`ChoicesDecision` is sgc's: it holds the chosen `index` and the method's `meta_info`.
"""

from compiler.lang_sampling import (
    ChoicesDecision,
    GreedyTokenSelection,
    TokenLengthNormalized,
    UnconditionalLikelihoodNormalized,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from compiler.lang_sampling import ChoicesMethod as ChoicesSamplingMethod

__all__ = [
    "ChoicesDecision", "ChoicesSamplingMethod", "GreedyTokenSelection", "TokenLengthNormalized",
    "UnconditionalLikelihoodNormalized", "greedy_token_selection", "token_length_normalized",
    "unconditional_likelihood_normalized",
]
