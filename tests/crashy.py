"""A task function for tests that kills its own process on request (a stand-in for a decoder segfault)."""
import os
import signal


def square_or_die(x):
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x
