import sgc


@sgc.function
def program(s):
    s += "q"
    forks = s.fork(2)
    with s.user():
        forks[0] += sgc.gen("x")  # error: gen on a state that is not in a role, inside the user role block
    forks.join()
