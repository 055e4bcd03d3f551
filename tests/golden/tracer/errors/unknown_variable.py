import sgc


@sgc.function
def program(s):
    s += "a" + sgc.gen("answer")
    s += s["answr"]  # error: variable 'answr' is not set on this state (set: 'answer')
