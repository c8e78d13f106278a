"""stablebeat_utils — the package behind the StableBeaT course notebooks.

Each stage module is named like its notebook (``segment`` ↔ ``notebooks/01_segment.ipynb``).
Stages talk to each other only through the run folder (see :mod:`stablebeat_utils.runs`).
"""

__version__ = "0.1.0"

STAGES = (
    "01_segment",
    "02_tag",
    "03_tempo_key",
    "04_prompts",
    "05_train",
    "05b_focus",
    "06_generate",
    "07_evaluate",
)
