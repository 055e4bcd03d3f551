"""Straight-line code: text, arguments, f-strings over arguments, gens with parameters and constraints."""

import sgc


@sgc.function
def qa(s, question, context="none"):
    s += "Context: " + context + "\n"
    s += f"Question: {question}\nAnswer:"
    s += sgc.gen("answer", max_tokens=16, stop=["\n", "."], temperature=0.0)
    s += "\nConfidence: " + sgc.gen("confidence", dtype=int, max_tokens=3)
    s += "\nJSON: " + sgc.gen("data", json_schema={"type": "object"}, max_tokens=32)
    s += sgc.gen(max_tokens=4)
    s += 3
