import sgc


@sgc.function
def program(s):
    s += "a" + sgc.gen("answer")
    s += helper(s["answer"])  # noqa: F821  # error: NameError: name 'helper' is not defined
