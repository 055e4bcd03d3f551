"""Multi-turn chat: every turn sends the whole conversation so far, so each turn reuses the last.

`questions` is a list argument: bind it (`multi_turn_chat.bind(questions=[...])`, what `sgc bench`
does) and the loop unrolls into one compiled turn per question; each turn's prompt extends the
previous turn's, which the radix cache keeps.
"""

import sgc


@sgc.function
def multi_turn_chat(s, questions):
    s += sgc.system("You are a helpful assistant. Keep every answer short.")
    for i, question in enumerate(questions):
        s += sgc.user(question)
        s += sgc.assistant(sgc.gen(f"answer_{i}"))
