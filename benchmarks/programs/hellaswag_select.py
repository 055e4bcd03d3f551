"""HellaSwag-like select: a shared few-shot prefix, a context, pick the likeliest of 4 long endings.

The endings differ per question, so `endings` is an argument: bound (`hellaswag_select.bind(
endings=...)`) the select compiles; unbound it is a graph break and the function runs on the host.
`sgc bench` binds it per question. The select scores the 4 endings over one shared prompt KV.
"""

import sgc


@sgc.function
def hellaswag_select(s, prefix, context, endings):
    s += prefix + context
    s += sgc.select("ending", choices=endings)
