"""A ReAct-style agent: thought, an action chosen by select, a host step that acts, an observation.

The loop has a fixed number of steps; `if s[...] == " finish"` branches on a select result, which
compiles to a switch (every outcome is traced), and the tool is a value host step (string methods on
the generated query run on the real text). The tool descriptions are a shared prefix of every run.
"""

import sgc

MAX_STEPS = 3
TOOLS = (
    "You are an agent that answers questions by using tools. Each step has a Thought, an Action and an "
    "Observation. Actions:\n"
    " search: look the query up in an encyclopedia and return the first sentence of the best article.\n"
    " lookup: find the next sentence that mentions the query in the current article.\n"
    " finish: give the final answer and stop.\n"
    "Write the query after the action on the same line.\n\n"
)


@sgc.function
def react_agent(s, question):
    s += TOOLS + "Question: " + question + "\n"
    for step in range(1, MAX_STEPS + 1):
        s += f"Thought {step}:" + sgc.gen(f"thought_{step}", stop="\n") + "\n"
        s += f"Action {step}:" + sgc.select(f"action_{step}", choices=[" search", " lookup", " finish"])
        if s[f"action_{step}"] == " finish":
            s += "\nAnswer:" + sgc.gen("answer", stop="\n")
            return
        s += " [" + sgc.gen(f"query_{step}", stop="]") + "]\n"
        s += f"Observation {step}: the article about " + s[f"query_{step}"].strip().lower() + " says nothing new.\n"
    s += "Answer:" + sgc.gen("answer", stop="\n")
