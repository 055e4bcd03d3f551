"""Plain batch generation, nothing shared: the control. One prompt, one gen of the run's length."""

import sgc


@sgc.function
def batch_generate(s, prompt):
    s += prompt
    s += sgc.gen("text")
