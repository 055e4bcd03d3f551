"""Python that needs generated text: value host steps stay compiled; int() sends the function to the host."""

import sgc


@sgc.function
def cleanup(s, text):
    s += "Rewrite: " + text + "\n" + sgc.gen("draft", max_tokens=16)
    s += "\nUpper: " + s["draft"].strip().upper()
    if s["draft"].startswith(" Yes"):
        s += " (positive)"


@sgc.function
def count_items(s, topic):
    s += "How many " + topic + "? " + sgc.gen("n", dtype=int, max_tokens=2)
    for i in range(int(s["n"])):
        s += f"\n{i + 1}. " + sgc.gen(f"item{i}", max_tokens=8, stop="\n")
    s += "\n" + str(len(s["n"]))


@sgc.function
def unbound_list(s, aspects):
    for aspect in aspects:
        s += aspect + ": " + sgc.gen("x", max_tokens=2)
