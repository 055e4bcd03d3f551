"""Tree of thought: a problem forked into approaches, each approach forked again into refinements.

Every level's branches start with the same text, so hoist-prefix prefills it once and
fuse-fork-gens turns each level's gens into one batched request. The output length is the run's
`max_new_tokens` (run with `ignore_eos=True` for fixed-length thoughts).
"""

import sgc

APPROACHES = ("a direct argument", "a worked example", "a counter-argument")
REFINEMENTS = 2


@sgc.function
def tree_of_thought(s, problem):
    s += "Think about the following problem step by step.\n\nProblem: " + problem + "\n\n"
    approaches = s.fork(len(APPROACHES))
    for f, approach in zip(approaches, APPROACHES):
        f += f"Consider the problem through {approach}. Thought:"
        f += sgc.gen("thought")
        refinements = f.fork(REFINEMENTS)
        for i, r in enumerate(refinements):
            r += f"\nRefine that thought, version {i + 1}:"
            r += sgc.gen("refined")
        refinements.join()
    approaches.join()
