import sgc


@sgc.function
def program(s):
    with s.user():
        s += "a"
        s += sgc.assistant("b")  # error: nested roles: assistant begins while the user role is open
