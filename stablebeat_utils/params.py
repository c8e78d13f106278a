"""Parameters and profiles: the stages' settings resolved and validated before any work.

Used by every stage (:func:`check_call`, through :mod:`stablebeat_utils.stage`), by the notebooks
through :func:`stablebeat_utils.lesson.settle` and by the runner.

What a stage's settings are — name, type, default (the card's recipe), choices, bounds, help — is
:mod:`stablebeat_utils.settings`, once. A profile is a small YAML file of what differs from those
defaults (``data/profiles/<name>.yaml``, or any path): top-level keys apply to every notebook that
has that setting, ``stages: {NN_stage: {...}}`` to one; a key no stage (or not that stage) has is an
error. ``demo`` is the default profile: its values are the notebooks' ``parameters`` cells and what a
stage's ``run()`` uses when called with no profile (:func:`schema`).
Precedence, lowest first: defaults < profile < ``-f params.yaml`` < ``-p NAME VALUE``.

When a learner opens a notebook on its own and sets ``profile = "colab_a100"`` in the form,
:func:`settled_values` gives every parameter still at its demo value the profile's value; parameters
the learner changed are kept. Under the runner the values arrive already resolved
(``_resolved_by_runner``) and are only validated.
"""

from __future__ import annotations

import copy
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import STAGES, settings
from .runs import Run

PROFILES_DIR = Path(__file__).parent / "data" / "profiles"
SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|credentials?)$", re.I)


class ParameterError(ValueError):
    """A parameter, profile or stage name that cannot be used; raised before any work starts."""


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: a profile is a mapping of parameter names to values")
    return data


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> dict:
    """A profile by name (bundled) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _read_yaml(path)
    bundled = PROFILES_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ParameterError(
            f"unknown profile {name_or_path!r}: choose one of {', '.join(list_profiles())} "
            "or give the path of a .yaml file"
        )
    return _read_yaml(bundled)


def canonical_stage(name: str) -> str:
    """'01', '01_segment', 'segment' → '01_segment' ('05b', '5b', 'focus' → '05b_focus'); else ParameterError."""
    for stage in STAGES:
        num, short = stage.split("_", 1)
        if name in (stage, num, short, num.lstrip("0") or "0"):
            return stage
    raise ParameterError(f"unknown stage {name!r}: the stages are {', '.join(STAGES)}")


def defaults(stage: str) -> dict[str, Any]:
    """``stage``'s settings at their defaults (the card's recipe)."""
    return settings.defaults(canonical_stage(stage))


def schema(stage: str) -> dict[str, Any]:
    """``stage``'s settings with the default profile's values (demo): the notebooks' ``parameters`` cells,
    and what ``run()`` uses for what it is not given."""
    return profile_resolved(stage, "demo")


def profile_resolved(stage: str, profile: str) -> dict[str, Any]:
    """``stage``'s settings: the defaults with ``profile``'s values over them (a bundled one is read once)."""
    stage = canonical_stage(stage)
    if profile in list_profiles():
        return copy.deepcopy(_bundled_resolved(stage, profile))
    return _overlaid(stage, load_profile(profile), profile)


def every_stage(profile: str) -> dict[str, dict[str, Any]]:
    """``{stage: its settings}`` under ``profile`` (the defaults with the profile over them)."""
    return {stage: profile_resolved(stage, profile) for stage in STAGES}


@lru_cache(maxsize=64)
def _bundled_resolved(stage: str, profile: str) -> dict[str, Any]:
    return _overlaid(stage, load_profile(profile), profile)


def _overlaid(stage: str, overlay: dict, profile: str) -> dict[str, Any]:
    values = defaults(stage)
    for k, v in profile_values(overlay, stage).items():
        values[k] = coerce(stage, k, v)
    values["profile"] = profile
    return values


def profile_values(profile: dict, stage: str) -> dict[str, Any]:
    """What ``profile`` sets for ``stage``'s settings; a key no stage has (at the top level) or that
    ``stage`` does not have (under ``stages: {stage: …}``) is an error naming it."""
    stage = canonical_stage(stage)
    names = settings.spec(stage)
    flat = {k: v for k, v in profile.items() if k not in ("stages", "common", "requires")}
    flat.update(profile.get("common") or {})
    unknown = sorted(set(flat) - all_parameter_names())
    if unknown:
        raise ParameterError(f"profile sets unknown parameter(s): {', '.join(unknown)} (no stage has them)")
    stages = profile.get("stages") or {}
    odd = sorted(set(stages) - set(STAGES))
    if odd:
        raise ParameterError(f"profile names unknown stage(s): {', '.join(odd)}; the stages are {', '.join(STAGES)}")
    out = {k: v for k, v in flat.items() if k in names}
    per_stage = stages.get(stage) or {}
    unknown = sorted(set(per_stage) - set(names))
    if unknown:
        raise ParameterError(
            f"profile sets unknown parameter(s) for {stage}: {', '.join(unknown)}; its settings are: {', '.join(names)}"
        )
    out.update(per_stage)
    return out


def all_parameter_names() -> set[str]:
    return {n for s in STAGES for n in settings.spec(s)}


def refuse_secret(name: str) -> None:
    if SECRET_NAME.search(name):
        raise ParameterError(
            f"{name!r} looks like a secret: secrets come from the environment (HF_TOKEN) or "
            "Colab's secrets, never from parameters (papermill writes parameters into notebooks)"
        )


def coerce(stage: str, name: str, value: Any) -> Any:
    """``value`` checked (and gently converted) against the type of ``name``'s demo value."""
    names = settings.spec(canonical_stage(stage))
    refuse_secret(name)
    if name not in names:
        raise ParameterError(f"{stage} has no parameter {name!r}; its parameters are: {', '.join(sorted(names))}")
    default = names[name].default
    if value is None:
        return value
    kind = names[name].type
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind in (list, dict):
        if isinstance(value, kind):
            return value
    raise ParameterError(
        f"{stage}: parameter {name!r} must be {kind.__name__} (like its default "
        f"{default!r}), got {type(value).__name__} {value!r}"
    )


def check_call(stage: str, args: dict) -> None:
    """Refuse, before any work, a stage's ``run()`` called directly with a wrong type or an
    incompatible run folder (the notebooks go through :func:`settled_values`, which already checks).

    Added by the reliability suite (tests/test_reliability.py): ``tempo_key.run(workers="two")``
    raised a bare ``ValueError: invalid literal for int()`` and ``prompts.run(batch_size="8")`` a
    ``TypeError``, naming no parameter; ``tag``/``tempo_key``/``prompts``/``evaluate`` wrote into a
    run folder of another run format. Types are checked strictly (no conversion): a path
    parameter may be a ``str`` or an ``os.PathLike``; an int is accepted for a float.
    """
    names = settings.spec(canonical_stage(stage))
    for name, value in args.items():
        if name not in names or value is None:
            continue
        kind = names[name].type
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is str:
            ok = isinstance(value, (str, os.PathLike))
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ParameterError(
                f"{stage}: parameter {name!r} must be {kind.__name__} (like its default "
                f"{names[name].default!r}), got {type(value).__name__} {value!r}"
            )
    if args.get("run_dir") is not None:
        Run(args["run_dir"]).check_compatible()


def resolve(
    stage: str, profile: str = "demo", files: list[dict] | None = None, overrides: dict | None = None
) -> dict[str, Any]:
    """Final values for ``stage``: defaults < profile < files < overrides, validated (types, choices, bounds)."""
    stage = canonical_stage(stage)
    values = profile_resolved(stage, profile)
    layers = []
    for f in files or []:
        layers.append({k: v for k, v in profile_values(f, stage).items()})
    layers.append({k: v for k, v in (overrides or {}).items() if k in values})
    for layer in layers:
        for k, v in layer.items():
            values[k] = coerce(stage, k, v)
    values["profile"] = profile if "profile" in values else values.get("profile")
    settings.check(stage, values, ParameterError)
    return values


def settled_values(stage: str, namespace: dict) -> dict[str, Any]:
    """A notebook's parameters (``namespace``: its globals) with the profile applied to every one still
    at its demo value, validated. Under the runner (``_resolved_by_runner``) only validated.
    Recording and Colab preparation are the lesson's (:func:`stablebeat_utils.lesson.settle`)."""
    stage = canonical_stage(stage)
    names = schema(stage)
    values = {n: namespace.get(n, names[n]) for n in names}
    if not namespace.get("_resolved_by_runner"):
        profile = values.get("profile", "demo")
        if profile != "demo":
            for k, v in profile_resolved(stage, profile).items():
                if k != "profile" and values.get(k) == names[k]:
                    values[k] = v
    values = {k: coerce(stage, k, v) for k, v in values.items()}
    settings.check(stage, values, ParameterError)
    return values
