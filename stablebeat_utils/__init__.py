"""stablebeat_utils — the package behind the StableBeaT course notebooks.

Each stage module is named like its notebook (``segment`` ↔ ``notebooks/01_segment.ipynb``).
Stages talk to each other only through the run folder (see :mod:`stablebeat_utils.runs`).
"""

__version__ = "0.1.0"

from .layout import STAGES  # noqa: E402,F401  (the stage folders, in order: layout.py spells them)
