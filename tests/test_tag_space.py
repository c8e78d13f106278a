"""04_prompts' look at the tag space: clustering, naming, under-represented tags, and the files it writes."""

from collections import Counter

import numpy as np
import pytest

from stablebeat_utils import prompts, tag_space
from stablebeat_utils.runs import read_json

from test_prompts import make_run


def test_silhouette_finds_well_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3] * 10
    emb = np.concatenate([c + rng.normal(0, 0.3, (10, 6)) for c in centres])
    labels, k, sil, by_k = tag_space.cluster(emb, 0, seed=0)
    assert k == 3 and sil > 0.8 and set(by_k) == set(range(2, 9))
    assert len(set(labels[:10])) == len(set(labels[10:20])) == len(set(labels[20:])) == 1
    labels4, k4, _, by4 = tag_space.cluster(emb, 4, seed=0)
    assert k4 == 4 and list(by4) == [4]
    with pytest.raises(ValueError, match="n_clusters=40"):
        tag_space.cluster(emb, 40)


def test_clusters_are_named_by_their_most_central_members():
    emb = np.array([[1, 0.36], [1, 0.0], [1, -0.36], [0, 1], [0.1, 1], [-0.3, 1]])
    named = tag_space.name_clusters(emb, np.array([0, 0, 0, 1, 1, 1]), ["a", "b", "c", "x", "y", "z"], top=2)
    assert named[0]["members"][0] == "b" and named[0]["size"] == 3  # "b" lies nearest the centre
    assert named[1]["name"].count("/") == 1


def test_under_represented_table():
    freq = {"moods": Counter({"dark": 9, "sad": 1}), "genres": Counter({"trap": 10})}
    vocab = {"moods": ["dark", "sad", "epic"], "genres": ["trap", "boom bap"]}
    rows = tag_space.under_represented(freq, vocab, 10, percent=20)
    assert [(r["family"], r["tag"], r["clips"], r["never_chosen"]) for r in rows] == [
        ("genres", "boom bap", 0, True),
        ("moods", "epic", 0, True),
        ("moods", "sad", 1, False),
    ]
    assert rows[-1]["percent"] == 10.0


def test_run_writes_plots_and_json(tmp_path):
    root = make_run(tmp_path)
    summary = prompts.run(str(root), generation_length=8, use_llm=False)["tag_space"]
    out = root / "04_prompts"
    for name in ("tag_frequency", "bpm_key", "prompt_lengths", "tag_map"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    data = read_json(out / "tag_space.json")
    lex = prompts.load_lexicon()
    n_tags = sum(len(v) for v in lex.tags.values())
    assert data["n_tags"] == n_tags and len(data["points"]) == n_tags
    assert 2 <= data["n_clusters"] <= 8 and -1 <= data["silhouette"] <= 1
    assert data["silhouette"] == max(data["silhouette_by_k"].values())
    assert sum(c["size"] for c in data["clusters"]) == n_tags
    assert data["frequency"]["instruments"]["synth bells"] == 1 and data["keys"] == {"G minor": 1, "F# minor": 1}
    assert data["tempo"]["confident"] == 2
    # 4 ok clips: one clip = 25 %, so with 5 % only never-chosen tags are rare
    assert all(r["never_chosen"] for r in data["under_represented"])
    assert len(data["under_represented"]) == n_tags - 15 == summary["under_represented"]
    # a second call reuses the clusters (same vocabulary and model) and gives the same file
    before = (out / "tag_space.json").read_bytes()
    again = tag_space.run(str(root))
    assert (out / "tag_space.json").read_bytes() == before and again == summary
