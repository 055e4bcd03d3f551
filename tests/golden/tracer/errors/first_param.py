import sgc


@sgc.function
def program(state, q):  # error: the first parameter must be the state `s`
    state += q
