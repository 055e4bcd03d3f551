"""Few-shot select: a shared few-shot prefix, one question, pick one of its choices by likelihood.

Bind `prefix` (`fewshot_select.bind(prefix=...)`) so it is a constant of the graph. The choices must
be bound too for the select to compile: a `choices` argument is a graph break (the function then runs
on the host, in the eager interpreter).
"""

import sgc


@sgc.function
def fewshot_select(s, prefix, question, choices):
    s += prefix + question
    s += sgc.select("answer", choices=choices)


@sgc.function
def fewshot_letter(s, prefix, question):
    """MMLU's form: the 5-shot prefix, the question with lettered options, pick the answer's letter.

    The choices are constants, so this compiles as it is (one program for every question) and runs
    with `run_batch`; `prefix` is an argument, shared by every instance through the radix cache.
    """
    s += prefix + question + "\nAnswer:"
    s += sgc.select("answer", choices=[" A", " B", " C", " D"])
