"""Skeleton of thought: write an outline, expand every point in parallel, join, then summarize.

The number of points is fixed (parsing the outline's text would need the host), so the fork
compiles: the expansions share the outline as their prefix (hoisted, prefilled once) and run as one
batched gen; the summary reads the joined expansions.
"""

import sgc

NUM_POINTS = 3


@sgc.function
def skeleton_of_thought(s, question):
    s += sgc.system("You are a helpful assistant. Answer concisely.")
    s += sgc.user(f"Give a skeleton of {NUM_POINTS} short points to answer: " + question)
    s += sgc.assistant(sgc.gen("skeleton"))
    points = s.fork(NUM_POINTS)
    for i, p in enumerate(points):
        p += sgc.user(f"Expand point {i + 1} of your skeleton in two sentences.")
        p += sgc.assistant(sgc.gen("point"))
    points.join("concate_and_append")
    s += sgc.user("Summarize the answer in one sentence.")
    s += sgc.assistant(sgc.gen("summary"))
