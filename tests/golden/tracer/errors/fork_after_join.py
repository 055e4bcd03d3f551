import sgc


@sgc.function
def program(s):
    forks = s.fork(2)
    for f in forks:
        f += sgc.gen("x")
    forks.join()
    forks[1] += "late"  # error: this forked state was joined at
