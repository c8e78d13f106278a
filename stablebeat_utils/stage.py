"""The entry of every stage: ``@stage.entry(STAGE, Error)`` on its ``run()``, then
``run_, params = begin(STAGE, locals())`` as its first line.

One start for the seven stages (01_segment … 07_evaluate), before any work:

1. **the settings** (:func:`entry`) — ``run(settings)`` with a settings object of
   :mod:`stablebeat_utils.settings` (``TrainSettings(...)``), or ``run(**values)`` / ``run(run_dir, …)``
   as the notebooks and tests call it: what is not given comes from the profile named in ``profile``
   (``demo`` when none) over the settings' defaults. Names, types (:func:`params.check_call`: a
   wrong type is refused by name), choices and bounds (:func:`settings.check`, raising the stage's
   own error class) are checked here, once; the body receives every setting as a named argument;
2. **validate the run folder** — it must be of this run format; **open the run** (:class:`runs.Run`);
3. **the record** — the parameters as the stage records them in ``RUN_DIR/<stage>/stage.json``
   (:meth:`runs.Run.mark_done`) and compares on the next run (:meth:`runs.Run.is_done`): plain
   values of the settings' types (a path as ``str``, an int given for a float as ``float``).

Each stage then checks what only it knows (settings that depend on each other, files) with its own
error class. A notebook records its parameters in ``RUN_DIR/run.json`` beforehand
(:func:`lesson.settle`); the runner too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable

from . import settings as settings_mod
from .params import ParameterError, check_call, profile_resolved
from .runs import Run


def _plain(kind: type, value: Any) -> Any:
    if value is None or kind is bool:
        return value
    if kind is float:
        return float(value)
    if kind is int:
        return int(value)
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def begin(stage: str, args: dict) -> tuple[Run, dict[str, Any]]:
    """Validate a stage's ``run()`` arguments (``locals()`` at its first line), open its run folder,
    and return it with the parameters as recorded. Arguments that are no setting
    (``progress`` of 01) are neither checked nor recorded."""
    names = settings_mod.spec(stage)
    values = {k: v for k, v in args.items() if k in names}
    check_call(stage, values)
    recorded = {k: _plain(names[k].type, v) for k, v in values.items()}
    return Run(recorded["run_dir"]), recorded


def settings_for(stage: str, given: Any = None, overrides: dict | None = None, error: type = ParameterError):
    """The settings object ``run()`` works with: ``given`` (a settings object, or None = the profile in
    ``overrides["profile"]``, else demo, over the defaults) with ``overrides`` over it; checked."""
    cls = settings_mod.of(stage)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(settings_mod.spec(stage)))
    if unknown:
        raise ParameterError(
            f"{stage} has no setting(s) {', '.join(unknown)}; its settings are: {', '.join(settings_mod.spec(stage))}"
        )
    check_call(stage, {k: v for k, v in overrides.items() if k != "run_dir"})
    if given is None:
        base = profile_resolved(stage, overrides.get("profile") or "demo")
        base.pop("profile")
        out = cls(**{**base, **overrides})
    elif isinstance(given, cls):
        out = dataclasses.replace(given, **overrides)
    else:
        raise ParameterError(f"{stage}: settings must be a {cls.__name__}, got {type(given).__name__}")
    settings_mod.check(stage, dataclasses.asdict(out), error)
    return out


def entry(stage: str, error: type[Exception]) -> Callable:
    """Decorate a stage's ``run(<every setting>, *, <hooks>)``: the callers' ``run(settings)``,
    ``run(run_dir, name=value, …)`` or ``run(**values)`` become one checked settings object whose fields
    the body receives by name (see the module's docstring). The body's names must be the settings'."""
    names = list(settings_mod.spec(stage))

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        mine = [n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        hooks = {n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
        if set(mine) != set(names):
            raise TypeError(
                f"{fn.__module__}.run's parameters differ from {settings_mod.of(stage).__name__}: "
                f"missing {sorted(set(names) - set(mine))}, not settings {sorted(set(mine) - set(names))}"
            )

        @functools.wraps(fn)
        def run(settings=None, /, **kwargs):
            if isinstance(settings, (str, os.PathLike)):  # run("runs/x", …): the run folder first, as before
                settings, kwargs = None, {"run_dir": settings, **kwargs}
            extra = {k: kwargs.pop(k) for k in list(kwargs) if k in hooks}
            s = settings_for(stage, settings, kwargs, error)
            return fn(**{n: getattr(s, n) for n in mine}, **extra)

        run.settings_class = settings_mod.of(stage)
        return run

    return decorate
