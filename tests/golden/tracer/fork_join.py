"""Fork and join in both modes, a nested fork, and reading joined variables."""

import sgc


@sgc.function
def brainstorm(s, subject):
    s += "Ideas about " + subject + ":\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"{i + 1}. " + sgc.gen("idea", max_tokens=12, stop="\n")
        inner = f.fork(2)
        for g in inner:
            g += " pro: " + sgc.gen("pro", max_tokens=4)
        inner.join()
    forks.join()
    s += "Summary:" + sgc.gen("summary", max_tokens=16)
    more = s.fork(2)
    more[0] += " A" + sgc.gen("tail", max_tokens=3)
    more[1] += " B" + sgc.gen("tail", max_tokens=3)
    more.join("concate_and_append")
