"""Fork fan-out: one essay, 4 aspect branches, each generating a fixed-length comment, then join."""

import sgc

ASPECTS = ("clarity", "structure", "evidence", "style")
TOKENS = 24  # every branch generates exactly this many tokens (ignore_eos)


@sgc.function
def fork_fanout(s, essay):
    s += "Read the following essay.\n\n" + essay + "\n\n"
    forks = s.fork(len(ASPECTS))
    for f, aspect in zip(forks, ASPECTS):
        f += f"Comment on the {aspect} of the essay in one sentence:"
        f += sgc.gen("comment", max_tokens=TOKENS, ignore_eos=True)
    forks.join()
