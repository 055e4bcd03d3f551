"""Branches on select results and on tests of generated text compile to switches."""

import sgc


@sgc.function
def triage(s, ticket):
    s += "Ticket: " + ticket + "\nKind: "
    s += sgc.select("kind", ["bug", "feature", "question"])
    if s["kind"] == "bug":
        s += "\nSeverity: " + sgc.select("severity", ["low", "high"])
        if s["severity"] == "high":
            s += "\nPage someone: " + sgc.gen("who", max_tokens=4)
    elif s["kind"] in ("feature",):
        s += "\nValue: " + sgc.gen("value", max_tokens=8)
    else:
        s += "\nAnswer: " + sgc.gen("answer", max_tokens=8)
    s += "\nDone: " + sgc.gen("done", max_tokens=4)
    if "yes" in s["done"]:
        s += " (confirmed)"
