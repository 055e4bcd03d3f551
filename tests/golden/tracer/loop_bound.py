"""Loops over constants, and over a list argument bound at compile time (unrolled)."""

import sgc

BIND = {"grade_essay": {"aspects": ["Clarity", "Evidence"]}}


@sgc.function
def grade_essay(s, essay, aspects):
    s += sgc.system("You are a strict grader.")
    s += sgc.user("Evaluate this essay:\n" + essay)
    forks = s.fork(len(aspects))
    for f, aspect in zip(forks, aspects):
        f += sgc.assistant(f"{aspect}: " + sgc.gen("score", regex=r"[1-5]") + "\n" +
                           sgc.gen("why", max_tokens=48, stop="\n"))
    forks.join()
    for round_ in range(2):
        s += f"Round {round_}: " + sgc.gen("note", max_tokens=4) + "\n"
    s += sgc.gen("verdict", choices=["accept", "revise", "reject"])
