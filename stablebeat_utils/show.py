"""Looking at results in a notebook: tables, plots, audio players.

Used by every notebook. With ``stablebeat_utils.playground`` the only module that imports IPython;
functions here return objects a notebook displays, and never compute stage results.
"""

from __future__ import annotations

import os
from pathlib import Path


def audio_player(path: str | os.PathLike, label: str | None = None):
    """An HTML5 audio player for a file (embedded, so executed notebooks keep it)."""
    from IPython.display import Audio, HTML, display

    if label:
        display(HTML(f"<b>{label}</b>"))
    return Audio(filename=str(Path(path)))


def table(rows, columns=None, max_rows: int = 20):
    """A pandas DataFrame of dict rows (optionally only ``columns``), for display."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df.head(max_rows) if max_rows else df
