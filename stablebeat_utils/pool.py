"""The one crash-isolating worker pool, shared by the stages (01_segment, 07_evaluate).

:func:`ordered_bounded` is ``map(fn, tasks)`` over worker processes that keeps results in task
order, keeps memory flat (a bounded window of tasks in flight) and survives a task that kills
its worker process (a decoder segfault, ``os._exit``, the OOM killer): that task becomes
``on_crash(task)`` — one error row — and the batch goes on.

Workers start with ``forkserver`` on Linux (``spawn`` elsewhere): libtensorflow (TempoCNN) and
torch threads do not survive a plain ``fork``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Iterator


def ordered_bounded(
    fn, tasks: Iterable[Any], workers: int, window: int, on_crash=None, initializer=None, initargs: tuple = ()
) -> Iterator[Any]:
    """``map(fn, tasks)`` in order, in ``workers`` processes, at most ``window`` tasks in flight.

    ``Pool.imap`` would read the whole task list ahead and keep every finished result that waits
    for a slow earlier one; this keeps memory flat. A task given as ``("done", x)`` is passed
    through without a worker.

    A task that kills its worker process (a decoder segfault on a corrupt file) breaks the whole
    pool, and the pool cannot say which task did it. Then every task that was in flight is run
    again alone, in a pool of one: the one that kills its worker again yields ``on_crash(task)``
    (a rejected row), the others their normal result, and a fresh pool takes the rest.
    """
    from concurrent.futures.process import BrokenProcessPool

    if workers <= 1:
        for t in tasks:
            yield t[1] if isinstance(t, tuple) else fn(t)
        return
    ctx = mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
    it = iter(tasks)
    pending: deque = deque()
    exhausted = False
    while True:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs
        ) as pool:
            broken = False

            def submit(t):
                nonlocal broken
                if broken:
                    return None
                try:
                    return pool.submit(fn, t)
                except BrokenProcessPool:  # the pool broke before this task got in
                    broken = True
                    return None

            while not broken:
                while not exhausted and len(pending) < window and not broken:
                    try:
                        t = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    if isinstance(t, tuple):
                        pending.append(("value", t[1], None))
                    else:
                        pending.append(("future", t, submit(t)))
                if not pending:
                    return
                kind, t, fut = pending[0]
                if kind == "value":
                    pending.popleft()
                    yield t
                    continue
                if fut is None:
                    break  # never submitted: the pool is broken
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    break
                pending.popleft()
                yield result
        if not broken:
            return
        # isolate: each task that was in flight, alone, in order
        while pending:
            kind, t, _ = pending.popleft()
            if kind == "value":
                yield t
                continue
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=initializer, initargs=initargs) as solo:
                try:
                    yield solo.submit(fn, t).result()
                except BrokenProcessPool:
                    if on_crash is None:
                        raise
                    yield on_crash(t)
