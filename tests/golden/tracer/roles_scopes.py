"""Roles in both forms, begin/end primitives, var_scope and set_var."""

import sgc


@sgc.function
def chat(s, topic):
    s += sgc.system("You are terse.")
    with s.user():
        s += "Write about " + topic
    s += sgc.assistant(sgc.gen("draft", max_tokens=32))
    s += sgc.user_begin() + "Shorter." + sgc.user_end()
    with s.assistant():
        with s.var_scope("short"):
            s += "Short: " + sgc.gen("core", max_tokens=8)
    s.set_var("topic_copy", s["short"])
    s.set_var("round", 2)
