import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    for cand in (os.environ.get("STABLEBEAT_SHARED"), REPO.parent / "shared", REPO / "shared"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real recordings, the TempoCNN graph)."""
    path = _shared()
    if not path.is_dir():
        pytest.fail(f"{path} is missing: tests need ../shared (audio, models)")
    return path


@pytest.fixture(scope="session")
def tempocnn_graph(shared_dir) -> Path:
    return shared_dir / "models" / "tempocnn" / "deeptemp-k16-3.pb"


@pytest.fixture(scope="session")
def lex():
    """04's lexicon (vocabulary, synonyms, artists, instrument words): the validator's reference."""
    from stablebeat_utils import prompts

    return prompts.load_lexicon()


@pytest.fixture(scope="session")
def matcher(lex):
    from stablebeat_utils import prompts

    return prompts.Matcher(lex)
