"""A nested @function call continues the caller's state: it is inlined."""

import sgc


@sgc.function
def ask(s, question):
    s += sgc.user(question)
    s += sgc.assistant(sgc.gen("reply", max_tokens=16))


@sgc.function
def interview(s, name):
    s += sgc.system("Interview " + name + ".")
    ask(s, "Where are you from?")
    ask(s, question=f"What do you do, {name}?")
