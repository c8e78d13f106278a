"""A task function for tests that kills its own process on request (a stand-in for a decoder segfault)."""

import os
import signal


def square_or_die(x):
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def measure_or_die(path, with_tempo=True):
    """07_evaluate's per-clip measure, except that a file named ``*die*`` kills the worker process."""
    if "die" in os.path.basename(str(path)):
        os._exit(139)  # what a segfaulting decoder looks like from the pool
    from stablebeat_utils import evaluate

    return evaluate.measure_clip(path, with_tempo)


def analyse_or_die(job):
    """03_tempo_key's per-clip analysis, except that a clip whose file is named ``*die*`` kills the worker."""
    if "die" in os.path.basename(str(job[2])):
        os._exit(139)
    from stablebeat_utils import tempo_key

    return tempo_key.analyse_clip(*job)
