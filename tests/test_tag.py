"""Tests of stablebeat_utils.tag (notebook 02_tag): vocabularies, windowing, selection, the stage."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from stablebeat_utils import clipfacts, tag
from stablebeat_utils.audio import load, write_wav
from stablebeat_utils.runs import read_jsonl

SR = 44100


# --------------------------------------------------------------------------------------------
# vocabularies


def test_bundled_vocab_sizes_and_card_tags():
    vocab = tag.load_vocab()
    sizes = {f: len(vocab[f]) for f in tag.FAMILIES}
    assert sizes["instruments"] >= 40 and sizes["moods"] >= 30 and sizes["genres"] >= 30, sizes
    tags = {f: {e.tag for e in vocab[f]} for f in tag.FAMILIES}
    # tags of the StableBeaT card (its metadata example and prompts)
    assert {
        "synth bells",
        "plucked bass",
        "deep sub",
        "808",
        "vocal chop",
        "vocal pad",
        "Rhodes",
        "nylon guitar",
        "electric guitar",
        "movie sample",
        "hi-hats",
        "snare",
        "piano",
        "strings",
        "flute",
        "choir",
        "brass",
        "plucked guitar",
    } <= tags["instruments"]
    assert {
        "melancholic",
        "dark",
        "chill",
        "nostalgic",
        "romantic",
        "aggressive",
        "dreamy",
        "trap melancholic",
        "love",
    } <= tags["moods"]
    assert {
        "cloud trap",
        "lo-fi jazz rap",
        "jazzy chillhop",
        "neo-soul",
        "boom bap",
        "drill",
        "g-funk",
        "industrial hip-hop",
        "rap with soul",
        "phonk",
    } <= tags["genres"]
    for f in tag.FAMILIES:
        for e in vocab[f]:
            assert isinstance(e.tag, str) and e.tag.strip() == e.tag and e.text.strip()
    assert len(tag.vocab_hash(vocab)) == 16


def test_bundled_synonyms_are_valid():
    vocab = tag.load_vocab()
    syn = clipfacts.load_synonyms(vocab=vocab)
    all_tags = {e.tag for f in tag.FAMILIES for e in vocab[f]}
    assert len(syn) >= 40
    assert set(syn) <= all_tags
    for t, words in syn.items():
        assert 1 <= len(words) <= 4
        assert t.casefold() not in {w.casefold() for w in words}


@pytest.fixture
def vocab_copy(tmp_path) -> Path:
    dest = tmp_path / "vocab"
    shutil.copytree(clipfacts.VOCAB_DIR, dest)
    return dest


def _rewrite_entries(path: Path, entries: list) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    data["entries"] = entries
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"tag": "piano"}, {"tag": "Piano", "text": "x"}], "entry 2 ('Piano'): duplicate of entry 1"),
        ([{"tag": "piano"}, {"text": "a beat"}], "entry 2: missing `tag`"),
        ([{"tag": 808}], "must be text, got int 808 (quote it"),
        ([{"tag": "piano", "txt": "typo"}], "unknown field(s) txt"),
        ([{"tag": "   "}], "`tag` is empty"),
        ([], "`entries:` is empty"),
    ],
)
def test_malformed_vocab_names_file_and_entry(vocab_copy, entries, message):
    path = vocab_copy / "instruments.yaml"
    _rewrite_entries(path, entries)
    with pytest.raises(clipfacts.VocabError) as err:
        tag.load_vocab(vocab_copy)
    assert str(path) in str(err.value) and message in str(err.value)


def test_vocab_rejects_a_tag_in_two_families_and_bad_yaml(vocab_copy):
    _rewrite_entries(vocab_copy / "genres.yaml", [{"tag": "trap"}, {"tag": "dark"}])
    with pytest.raises(clipfacts.VocabError, match=r"genres\.yaml: tag 'dark' is also in moods\.yaml"):
        tag.load_vocab(vocab_copy)
    (vocab_copy / "moods.yaml").write_text("entries: [unclosed\n")
    with pytest.raises(clipfacts.VocabError, match=r"moods\.yaml: not valid YAML"):
        tag.load_vocab(vocab_copy)
    with pytest.raises(clipfacts.VocabError, match="is not a folder"):
        tag.load_vocab(vocab_copy / "nope")


@pytest.mark.parametrize(
    "text, message",
    [
        ("not a tag: [x]\n", "'not a tag' is not a tag of"),
        ("piano: [a, b, c, d, e]\n", "expected a list of 1 to 4 synonyms"),
        ("piano: [piano keys, Piano Keys]\n", "repeats the tag or another synonym"),
        ("piano: [Piano]\n", "repeats the tag or another synonym"),
        ("sad: [melancholic]\n", "synonym 'melancholic' is itself a tag"),
    ],
)
def test_malformed_synonyms(vocab_copy, text, message):
    (vocab_copy / "synonyms.yaml").write_text(text)
    with pytest.raises(clipfacts.VocabError) as err:
        clipfacts.load_synonyms(vocab_copy)
    assert "synonyms.yaml" in str(err.value) and message in str(err.value)


# --------------------------------------------------------------------------------------------
# windows, pooling, selection


def test_window_bounds():
    sr = 48000
    assert tag.window_bounds(25 * sr, sr, 10.0) == [(0, 480000), (480000, 960000), (960000, 1200000)]
    assert len(tag.window_bounds(24 * sr, sr, 10.0)) == 2  # a 4 s tail (< half a window) is dropped
    assert len(tag.window_bounds(35 * sr, sr, 10.0)) == 4  # a 5 s tail (= half) is kept
    assert tag.window_bounds(10 * sr, sr, 10.0) == [(0, 480000)]
    assert tag.window_bounds(3 * sr, sr, 10.0) == [(0, 3 * sr)]  # shorter than a window: one, padded by CLAP
    assert tag.window_bounds(0, sr, 10.0) == []
    assert len(tag.window_bounds(25 * sr, sr, 5.0)) == 5


def test_pool_windows_is_a_unit_weighted_mean_direction():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 16)).astype(np.float32) * np.array([[1.0], [5.0], [0.2]], np.float32)
    pooled = tag.pool_windows(emb, [10.0, 10.0, 5.0])
    assert pooled.shape == (16,) and abs(np.linalg.norm(pooled) - 1) < 1e-6
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # window norms must not matter
    expected = unit[0] * 0.4 + unit[1] * 0.4 + unit[2] * 0.2
    np.testing.assert_allclose(pooled, expected / np.linalg.norm(expected), atol=1e-6)
    np.testing.assert_allclose(tag.pool_windows(emb[:1] * 7), unit[0], atol=1e-6)
    with pytest.raises(ValueError):
        tag.pool_windows(emb, [1.0, 2.0])


def test_cosine_scores():
    text = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]], np.float32)
    np.testing.assert_allclose(tag.cosine_scores(np.array([2.0, 0.0]), text), [1, 0, -1, np.sqrt(0.5)], atol=1e-6)


def test_select_tags_top_k_floor_margin_and_ties():
    scores = {"piano": 0.41, "808": 0.38, "flute": 0.12, "choir": 0.05, "snare": 0.38}
    assert tag.select_tags(scores, 3, -1.0, 2.0) == ["piano", "808", "snare"]  # tie: by name
    assert tag.select_tags(scores, 10, 0.1, 2.0) == ["piano", "808", "snare", "flute"]
    assert tag.select_tags(scores, 10, -1.0, 0.05) == ["piano", "808", "snare"]
    assert tag.select_tags(scores, 1, 0.5, 2.0) == []
    assert tag.select_tags(scores, 0, -1.0, 2.0) == []
    assert tag.select_tags({}, 3, -1.0, 2.0) == []


# --------------------------------------------------------------------------------------------
# the stage on a tiny run with the tiny CLAP


def _make_run(root: Path, shared_dir: Path) -> Path:
    """A run folder as 01_segment leaves it: two ok clips, one unreadable clip, one rejected file."""
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    real, sr = load(shared_dir / "audio" / "Kevin_MacLeod_-_Vibe_Ace.ogg", sr=SR)
    write_wav(clips / "vibe_0.wav", real[:, 20 * SR : 45 * SR], SR)  # 25 s of a real recording → 3 windows
    t = np.arange(int(12.5 * SR)) / SR  # 12.5 s synthetic: a 2.5 s tail is dropped → 1 window
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    write_wav(clips / "synth_0.wav", np.stack([tone, tone[::-1]]), SR)
    (clips / "broken_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows = [
        {
            "clip_id": "vibe_0",
            "source": "vibe.ogg",
            "start": 20.0,
            "duration": 25.0,
            "path": "01_segment/clips/vibe_0.wav",
            "status": "ok",
            "reason": None,
        },
        {
            "clip_id": "synth_0",
            "source": "synth.wav",
            "start": 0.0,
            "duration": 12.5,
            "path": "01_segment/clips/synth_0.wav",
            "status": "ok",
            "reason": None,
        },
        {
            "clip_id": "broken_0",
            "source": "broken.wav",
            "start": 0.0,
            "duration": 30.0,
            "path": "01_segment/clips/broken_0.wav",
            "status": "ok",
            "reason": None,
        },
        {
            "clip_id": "short_0",
            "source": "short.wav",
            "start": None,
            "duration": None,
            "path": None,
            "status": "rejected",
            "reason": "shorter than 20 s",
        },
    ]
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


P = dict(
    clap_model="tiny:clap",
    backend="transformers",
    batch_size=2,
    top_k_instruments=3,
    top_k_moods=2,
    top_k_genres=1,
    min_similarity=-1.0,
    max_margin=2.0,
    window_seconds=10.0,
    device="cpu",
)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, shared_dir):
    root = _make_run(tmp_path_factory.mktemp("run_a"), shared_dir)
    segments_before = (root / "01_segment" / "segments.jsonl").read_bytes()
    summary = tag.run(run_dir=str(root), **P)
    assert (root / "01_segment" / "segments.jsonl").read_bytes() == segments_before  # inputs untouched
    return root, summary


def test_stage_rows_scores_and_summary(tagged):
    root, summary = tagged
    rows = read_jsonl(root / "02_tag" / "tags.jsonl")
    assert [r["clip_id"] for r in rows] == ["broken_0", "synth_0", "vibe_0"]  # sorted, rejected row skipped
    assert summary["clips"] == 3 and summary["tagged"] == 2 and summary["errors"] == 1
    assert summary["text_embeddings"] == "computed" and summary["device"] == "cpu"
    vocab = tag.load_vocab()
    by_id = {r["clip_id"]: r for r in rows}
    assert by_id["vibe_0"]["n_windows"] == 3 and by_id["synth_0"]["n_windows"] == 1
    for cid in ("vibe_0", "synth_0"):
        r = by_id[cid]
        assert r["model"] == "tiny:clap" and r["backend"] == "transformers" and "error" not in r
        for f in tag.FAMILIES:
            assert list(r["scores"][f]) == [e.tag for e in vocab[f]]  # every tag scored
            assert all(-1.0 <= s <= 1.0 for s in r["scores"][f].values())
            assert len(r[f"{f}_tags"]) == P[f"top_k_{f}"]
            best = sorted(r["scores"][f].items(), key=lambda kv: (-kv[1], kv[0]))[: P[f"top_k_{f}"]]
            assert r[f"{f}_tags"] == [t for t, _ in best]
    # the two clips differ, so their scores do
    assert by_id["vibe_0"]["scores"] != by_id["synth_0"]["scores"]
    broken = by_id["broken_0"]
    assert "broken_0.wav" in broken["error"] and "scores" not in broken
    record = json.loads((root / "02_tag" / "stage.json").read_text())
    assert record["status"] == "done" and record["params"]["clap_model"] == "tiny:clap"


def test_audio_embedding_is_the_pooled_unit_vector(tagged):
    """Scores equal cosine(pooled window embeddings, text embeddings) computed by hand."""
    root, _ = tagged
    clap = tag.make_backend("transformers", "tiny:clap", "cpu")
    audio, _ = load(root / "01_segment" / "clips" / "vibe_0.wav", sr=clap.sampling_rate, mono=True)
    windows = [audio[0][a:b] for a, b in tag.window_bounds(audio.shape[1], clap.sampling_rate, 10.0)]
    emb = clap.embed_audio(windows)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    pooled = tag.pool_windows(emb, [len(w) for w in windows])
    vocab = tag.load_vocab()
    text = clap.embed_text([e.text for e in vocab["moods"]])
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    row = next(r for r in read_jsonl(root / "02_tag" / "tags.jsonl") if r["clip_id"] == "vibe_0")
    np.testing.assert_allclose(list(row["scores"]["moods"].values()), text @ pooled, atol=1e-5)


def test_deterministic_and_resumable_after_a_kill(tagged, tmp_path, shared_dir):
    root, _ = tagged
    reference = (root / "02_tag" / "tags.jsonl").read_bytes()
    other = _make_run(tmp_path / "run_b", shared_dir)
    tag.run(run_dir=str(other), **P)
    out = other / "02_tag" / "tags.jsonl"
    assert out.read_bytes() == reference  # a second, independent run: the same bytes
    cache = sorted((other / "02_tag" / "text_embeddings").glob("*.npz"))
    assert len(cache) == 1
    cache_mtime = cache[0].stat().st_mtime_ns
    # a kill in the middle of writing: the last row cut in half, another never written
    lines = reference.split(b"\n")
    out.write_bytes(lines[0] + b"\n" + lines[1][: len(lines[1]) // 2])
    summary = tag.run(run_dir=str(other), **P)
    assert out.read_bytes() == reference
    assert summary["computed"] >= 1 and summary["text_embeddings"] == "cached"
    assert cache[0].stat().st_mtime_ns == cache_mtime  # the cached text embeddings were reused
    # nothing left to do: no model is loaded, the file stays the same
    summary = tag.run(run_dir=str(other), **P)
    assert summary["computed"] == 0 and summary["text_embeddings"] is None and out.read_bytes() == reference


def test_new_thresholds_reselect_from_stored_scores(tagged, tmp_path):
    root, _ = tagged
    run_dir = tmp_path / "copy"
    shutil.copytree(root, run_dir)
    summary = tag.run(run_dir=str(run_dir), **{**P, "top_k_instruments": 5, "top_k_genres": 0})
    assert summary["computed"] == 0  # only the selection changed: no model needed
    for r in read_jsonl(run_dir / "02_tag" / "tags.jsonl"):
        if "error" not in r:
            assert len(r["instruments_tags"]) == 5 and r["genres_tags"] == []


def test_text_cache_is_keyed_by_vocab(tmp_path):
    clap = tag.make_backend("transformers", "tiny:clap", "cpu")
    vocab = tag.load_vocab()
    cache_dir = tmp_path / "cache"
    first, cached = tag.text_embeddings(clap, vocab, cache_dir)
    assert not cached
    again, cached = tag.text_embeddings(clap, vocab, cache_dir)
    assert cached and all(np.array_equal(first[f], again[f]) for f in tag.FAMILIES)
    smaller = {**vocab, "moods": vocab["moods"][:5]}
    emb, cached = tag.text_embeddings(clap, smaller, cache_dir)
    assert not cached and emb["moods"].shape[0] == 5
    assert len(list(cache_dir.glob("*.npz"))) == 2


# --------------------------------------------------------------------------------------------
# parameters, inputs and the laion_clap backend


def test_bad_parameters_and_missing_input_fail_before_work(tmp_path):
    with pytest.raises(tag.TagError, match="backend 'clip' is unknown"):
        tag.run(run_dir=str(tmp_path), **{**P, "backend": "clip"})
    with pytest.raises(tag.TagError, match="top_k_moods"):
        tag.run(run_dir=str(tmp_path), **{**P, "top_k_moods": -1})
    with pytest.raises(tag.TagError, match=r"01_segment/segments\.jsonl: not found"):
        tag.run(run_dir=str(tmp_path), **P)
    assert not (tmp_path / "02_tag" / "tags.jsonl").exists()


def test_window_longer_than_clap_is_refused(tagged, tmp_path):
    root, _ = tagged
    run_dir = tmp_path / "copy"
    shutil.copytree(root / "01_segment", run_dir / "01_segment")
    with pytest.raises(tag.TagError, match=r"window_seconds=12\.0 is longer than this CLAP's input \(10 s\)"):
        tag.run(run_dir=str(run_dir), **{**P, "window_seconds": 12.0})


def test_laion_clap_backend_is_lazy_and_explains_when_missing(monkeypatch):
    """Only the selection and error path are tested: laion-clap is not installed here (it hangs offline)."""
    assert "laion_clap" not in sys.modules  # the default path never imports it
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # makes `import laion_clap` raise ImportError
    with pytest.raises(tag.TagError, match=r"needs the `laion-clap` package.*backend='transformers'"):
        tag.make_backend("laion_clap", "laion/larger_clap_music", "cpu")
    with pytest.raises(tag.TagError, match="no 'tiny:clap' for it"):
        tag.make_backend("laion_clap", "tiny:clap", "cpu")


def test_tag_frequencies_counts_tagged_clips_only():
    rows = [
        {"clip_id": "a", "instruments_tags": ["piano", "808"], "moods_tags": ["dark"], "genres_tags": ["trap"]},
        {"clip_id": "b", "instruments_tags": ["808"], "moods_tags": [], "genres_tags": ["drill"]},
        {"clip_id": "c", "error": "unreadable"},
    ]
    freq = tag.tag_frequencies(rows)
    assert freq == {
        "instruments": [("808", 2), ("piano", 1)],
        "moods": [("dark", 1)],
        "genres": [("drill", 1), ("trap", 1)],
    }
