import sgc


@sgc.function
def program(s):
    s += sgc.user_begin() + "hi"
    s += sgc.assistant_end()  # error: assistant role ends but the open role is user
