"""The prologue of every stage: ``run_, params = begin(STAGE, locals())`` opens each ``run()``.

One start for the seven stages (01_segment … 07_evaluate), before any work:

1. **validate** — every argument that is a notebook parameter is checked against the type of its
   demo value (:func:`params.check_call`: a wrong type is refused by name), and the run folder
   must be of this run format;
2. **open the run** — the :class:`runs.Run` of ``run_dir``;
3. **the record** — the parameters as the stage records them in ``RUN_DIR/<stage>/stage.json``
   (:meth:`runs.Run.mark_done`) and compares on the next run (:meth:`runs.Run.is_done`): plain
   values of the schema's types (a path as ``str``, an int given for a float as ``float``).

Each stage then checks what only it knows (ranges, choices) with its own error class. A notebook
records its parameters in ``RUN_DIR/run.json`` beforehand (:func:`lesson.settle`); the runner too.
"""

from __future__ import annotations

import os
from typing import Any

from .params import check_call, schema
from .runs import Run


def _plain(default: Any, value: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        return value
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, str) and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def begin(stage: str, args: dict) -> tuple[Run, dict[str, Any]]:
    """Validate a stage's ``run()`` arguments (``locals()`` at its first line), open its run folder,
    and return it with the parameters as recorded. Arguments that are no notebook parameter
    (``progress`` of 01) are neither checked nor recorded."""
    names = schema(stage)
    values = {k: v for k, v in args.items() if k in names}
    check_call(stage, values)
    recorded = {k: _plain(names[k], v) for k, v in values.items()}
    return Run(recorded["run_dir"]), recorded
