"""Stage 04_prompts: the validator (good and lying prompts), synonyms, templates, and the stage end to end."""

import hashlib
import json
import random
from pathlib import Path

import pytest

from stablebeat_utils import clipfacts, models, prompts
from stablebeat_utils.runs import read_json, read_jsonl

CARD = {
    "instruments_tags": ["plucked guitar", "synth bells", "movie sample"],
    "genres_tags": ["rap with soul"],
    "moods_tags": ["trap melancholic", "love"],
    "key": "G",
    "scale": "minor",
    "tempo": 109.0,
}
GOOD = (
    "A melancholic and love-inspired rap with soul beat at 109 BPM in G minor, using plucked guitar, "
    "synth bells, and movie sample."
)
FAST = dict(generation_length=12, n_clusters=3)  # one KMeans fit: tag_space is tested in test_tag_space.py


@pytest.fixture(scope="module")
def t5_tok():
    return models.load_t5_encoder("tiny:t5")[0]


def check(prompt, lex, matcher, meta=CARD, tok=None):
    return prompts.validate(prompt, meta, lex, matcher, tok)


# -- the validator ---------------------------------------------------------------------------


def test_card_prompt_is_accepted(lex, matcher, t5_tok):
    assert check(GOOD, lex, matcher, tok=t5_tok) == []


@pytest.mark.parametrize(
    "bpm",
    ["109 BPM", "109bpm", "109 bpm", "109-BPM", "109 b.p.m.", "109 beats per minute", "a tempo of 109", "109.0 BPM"],
)
def test_bpm_spellings(lex, matcher, bpm):
    assert check(f"A melancholic rap with soul beat at {bpm} in G minor with synth bells.", lex, matcher) == []


@pytest.mark.parametrize("key", ["G minor", "Gm", "G-minor", "G min", "G Minor"])
def test_key_spellings(lex, matcher, key):
    assert check(f"A melancholic rap with soul beat at 109 BPM in {key} with synth bells.", lex, matcher) == []


@pytest.mark.parametrize("key", ["F# minor", "F sharp minor", "Gb minor", "F#m", "F-sharp minor"])
def test_enharmonic_and_sharp_spellings(lex, matcher, key):
    meta = dict(CARD, key="F#")
    assert check(f"A melancholic rap with soul beat at 109 BPM in {key} with synth bells.", lex, matcher, meta) == []


@pytest.mark.parametrize(
    "prompt, problem",
    [
        ("A melancholic rap with soul beat at 140 BPM in G minor with synth bells.", "does not state the tempo"),
        ("A melancholic rap with soul beat at 109 BPM, 140 BPM later, in G minor with synth bells.", "number (140)"),
        ("A melancholic rap with soul beat at 109 BPM in G minor with synth bells, 2 minutes long.", "number (2)"),
        ("A melancholic rap with soul beat at 109 BPM in A minor with synth bells.", "key ('A minor')"),
        ("A melancholic rap with soul beat at 109 BPM in G major with synth bells.", "key ('G major')"),
        (
            "A melancholic rap with soul beat at 109 BPM in G minor, then Eb major, with synth bells.",
            "key ('Eb major')",
        ),
        ("A melancholic rap with soul beat at 109 BPM with synth bells.", "does not state the key"),
        ("A melancholic rap with soul beat at 109 BPM in G minor with synth bells and hi-hats.", "'hi hats'"),
        ("A melancholic rap with soul beat at 109 BPM in G minor with synth bells and an 808.", "'808'"),
        ("An aggressive rap with soul beat at 109 BPM in G minor with synth bells.", "mood 'aggressive'"),
        ("A melancholic boom bap beat at 109 BPM in G minor with synth bells.", "genre 'boom bap'"),
        (
            "A melancholic rap with soul beat at 109 BPM in G minor with synth bells, like Metro Boomin.",
            "artist (Metro Boomin)",
        ),
        (
            "A melancholic rap with soul beat at 109 BPM in G minor with synth bells, in the style of Kaytranada.",
            "may be a name ('Kaytranada')",
        ),
        ("Beat.", "not a sentence"),
        ("A nice instrumental piece for a video, really.", "names none of the clip's tags"),
    ],
)
def test_lying_prompts_are_rejected(lex, matcher, prompt, problem):
    problems = check(prompt, lex, matcher)
    assert any(problem in p for p in problems), problems


def test_synonyms_and_contained_phrases_are_accepted(lex, matcher):
    # "bell synths" is a synonym of synth bells, "romance" of love, "film sample" of movie sample,
    # "soulful rap" of rap with soul; "melancholic" lies inside the tag "trap melancholic".
    p = "A melancholic soulful rap at 109 BPM in G minor with bell synths, film sample and a hint of romance."
    assert check(p, lex, matcher) == []
    cloud = {
        "instruments_tags": ["808"],
        "genres_tags": ["cloud trap"],
        "moods_tags": ["dark"],
        "key": None,
        "scale": None,
        "tempo": None,
    }
    assert check("A dark, gloomy trap beat with booming 808s, cloud rap style.", lex, matcher, cloud) == []


def test_unknown_tempo_and_key_allow_no_numbers_or_keys(lex, matcher):
    meta = dict(CARD, tempo=None, key=None, scale=None)
    assert check("A melancholic rap with soul beat with synth bells and movie sample.", lex, matcher, meta) == []
    assert any(
        "tempo is not known" in p for p in check("A melancholic rap with soul beat at 109 BPM.", lex, matcher, meta)
    )
    assert any(
        "key is not known" in p
        for p in check("A melancholic rap with soul beat in Gm with synth bells.", lex, matcher, meta)
    )
    assert any(
        "key is not known" in p
        for p in check("A melancholic rap with soul beat in a minor key, synth bells.", lex, matcher, meta)
    )


def test_too_long_for_t5(lex, matcher, t5_tok):
    long = GOOD[:-1] + ", " + ", ".join(["with synth bells and movie sample again"] * 30) + "."
    n = prompts.count_t5_tokens(t5_tok, long)
    assert n > 128
    assert any(f"too long for T5 ({n} > 128" in p for p in check(long, lex, matcher, tok=t5_tok))


def test_clean_llm_output():
    assert prompts.clean_llm_output('\n Prompt: "A dark trap beat."\nSecond line') == "A dark trap beat."
    assert prompts.clean_llm_output("") == ""


# -- synonyms and templates ------------------------------------------------------------------


def test_synonyms_are_deterministic_per_seed_and_clip(lex):
    w = lambda seed, cid: prompts.choose_wordings(CARD, lex, prompts.clip_rng(seed, cid))  # noqa: E731
    assert w(0, "a") == w(0, "a")
    variants = {json.dumps(w(s, "a")) for s in range(20)}
    assert len(variants) > 3  # the wording really varies between seeds
    for fam in prompts.FAMILIES:
        for tag, word in zip(CARD[f"{fam}_tags"], w(0, "a")[fam]):
            assert word in lex.wordings(tag)


def _random_meta(rng, lex):
    meta = {f"{f}_tags": rng.sample(lex.tags[f], rng.randint(0, 3)) for f in prompts.FAMILIES}
    key = rng.choice([None, "C", "C#", "Eb", "F#", "Ab", "Bb", "B"])
    meta.update(
        key=key, scale=rng.choice(["major", "minor"]) if key else None, tempo=rng.choice([None, 70.0, 109.4, 142.0])
    )
    return meta


def test_templates_state_only_the_facts(lex, matcher, t5_tok):
    """Every template prompt passes the validator the LLM must pass (200 random clips)."""
    rng = random.Random(0)
    seen = set()
    for i in range(200):
        meta = _random_meta(rng, lex)
        text = prompts.template_prompt(meta, lex, prompts.clip_rng(0, str(i)), t5_tok)
        seen.add(text.split(" ")[0])
        if not prompts.clip_tags(meta) and meta["tempo"] is None and meta["key"] is None:
            assert text == "A beat."
            continue
        assert prompts.validate(text, meta, lex, matcher, t5_tok) == [], (meta, text)
    assert len(seen) >= 2  # several templates are used


def test_card_style_template(lex):
    texts = {prompts.template_prompt(CARD, lex, random.Random(s)) for s in range(40)}
    assert any(
        t.endswith("beat at 109 BPM in G minor, using plucked guitar, synth bells, and movie sample.") for t in texts
    )


# -- the stage -------------------------------------------------------------------------------

SEGMENTS = [
    {
        "clip_id": "a_00",
        "source": "a.wav",
        "start": 63.0,
        "duration": 26.0,
        "path": "01_segment/clips/a_00.wav",
        "status": "ok",
        "reason": None,
        "source_duration": 180.0,
    },
    {
        "clip_id": "a_01",
        "source": "a.wav",
        "start": 120.0,
        "duration": 30.0,
        "path": "01_segment/clips/a_01.wav",
        "status": "ok",
        "reason": None,
    },
    {
        "clip_id": "b_00",
        "source": "b.wav",
        "start": 0.0,
        "duration": 22.0,
        "path": "01_segment/clips/b_00.wav",
        "status": "ok",
        "reason": None,
    },
    {
        "clip_id": "c_00",
        "source": "c.wav",
        "start": 5.0,
        "duration": 20.0,
        "path": "01_segment/clips/c_00.wav",
        "status": "ok",
        "reason": None,
    },
    {
        "clip_id": "d",
        "source": "d.wav",
        "start": None,
        "duration": None,
        "path": None,
        "status": "rejected",
        "reason": "d.wav: 4.0 s is shorter than a segment",
    },
]
TAGS = [
    {"clip_id": "a_00", **{k: CARD[k] for k in ("instruments_tags", "moods_tags", "genres_tags")}, "scores": {}},
    {
        "clip_id": "a_01",
        "instruments_tags": ["808", "hi-hats"],
        "moods_tags": ["dark"],
        "genres_tags": ["cloud trap"],
        "scores": {},
    },
    {
        "clip_id": "b_00",
        "instruments_tags": ["Rhodes", "live bass"],
        "moods_tags": ["smooth", "romantic"],
        "genres_tags": ["neo-soul"],
        "scores": {},
    },
    {"clip_id": "c_00", "error": "01_segment/clips/c_00.wav: cannot decode"},
]
TEMPO_KEY = [
    {
        "clip_id": "a_00",
        "tempo_raw": 109.0,
        "tempo_confidence": 0.9,
        "key_raw": "G",
        "scale_raw": "minor",
        "key_confidence": 0.8,
        "tempo": 109.0,
        "key": "G",
        "scale": "minor",
    },
    {
        "clip_id": "a_01",
        "tempo_raw": 140.0,
        "tempo_confidence": 0.5,
        "key_raw": "F#",
        "scale_raw": "minor",
        "key_confidence": 0.75,
        "tempo": None,
        "key": "F#",
        "scale": "minor",
    },
    {
        "clip_id": "b_00",
        "tempo_raw": 90.0,
        "tempo_confidence": 0.95,
        "key_raw": "D",
        "scale_raw": "major",
        "key_confidence": 0.4,
        "tempo": 90.0,
        "key": None,
        "scale": None,
    },
]


def make_run(root: Path) -> Path:
    for name, rows in (
        ("01_segment/segments.jsonl", SEGMENTS),
        ("02_tag/tags.jsonl", TAGS),
        ("03_tempo_key/tempo_key.jsonl", TEMPO_KEY),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _digest(root: Path, names) -> dict:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


INPUTS = ("01_segment/segments.jsonl", "02_tag/tags.jsonl", "03_tempo_key/tempo_key.jsonl")
OUTPUTS = ("04_prompts/prompts.jsonl", "04_prompts/metadata.json")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("run"))
    before = _digest(root, INPUTS)
    summary = prompts.run(str(root), batch_size=2, **FAST)
    return root, summary, before


def test_outputs_in_the_cards_formats(done_run):
    root, summary, _ = done_run
    rows = read_jsonl(root / "04_prompts/prompts.jsonl")
    assert [r["clip_id"] for r in rows] == ["a_00", "a_01", "b_00", "c_00"]  # ok clips only, sorted
    for r in rows:
        assert {"filepath", "start", "duration", "prompt", "clip_id", "prompt_source", "reject_reason"} <= set(r)
        seg = next(s for s in SEGMENTS if s["clip_id"] == r["clip_id"])
        assert (r["filepath"], r["start"], r["duration"]) == (seg["path"], seg["start"], seg["duration"])
    meta = read_json(root / "04_prompts/metadata.json")
    assert list(meta) == ["a_00.wav", "a_01.wav", "b_00.wav", "c_00.wav"]
    assert meta["a_00.wav"] == {**{k: CARD[k] for k in prompts.CARD_KEYS if k in CARD}, "start": 63.0, "duration": 26.0}
    assert list(meta["a_00.wav"]) == list(prompts.CARD_KEYS)
    assert (meta["a_01.wav"]["tempo"], meta["a_01.wav"]["key"]) == (None, "F#")  # unconfident tempo stays null
    assert meta["c_00.wav"]["instruments_tags"] == []


def test_tiny_llm_falls_back_to_templates_with_reasons(done_run, lex, matcher):
    root, summary, _ = done_run
    rows = {r["clip_id"]: r for r in read_jsonl(root / "04_prompts/prompts.jsonl")}
    assert summary["llm_asked"] == 3 and summary["llm_accepted"] == 0 and summary["acceptance_rate"] == 0.0
    for cid in ("a_00", "a_01", "b_00"):
        r = rows[cid]
        assert r["prompt_source"] == "template" and r["llm_output"] is not None and r["reject_reason"]
        assert r["reject_reason"] == "; ".join(
            prompts.validate(
                prompts.clean_llm_output(r["llm_output"]),
                {**TAGS_BY_ID[cid], **TK_BY_ID[cid]},
                lex,
                matcher,
                models.load_t5_encoder("tiny:t5")[0],
            )
        )
    assert "109 BPM" in rows["a_00"]["prompt"] and "G minor" in rows["a_00"]["prompt"]
    assert "F# minor" in rows["a_01"]["prompt"] and "BPM" not in rows["a_01"]["prompt"]
    assert "90 BPM" in rows["b_00"]["prompt"] and "major" not in rows["b_00"]["prompt"]
    # a clip whose tags failed and has no tempo/key row: a template from what exists, LLM not asked
    c = rows["c_00"]
    assert c["prompt"] == "A beat." and c["llm_output"] is None and c["missing"] == ["tags (02_tag error)", "tempo_key"]


TAGS_BY_ID = {t["clip_id"]: {f"{f}_tags": t.get(f"{f}_tags", []) for f in prompts.FAMILIES} for t in TAGS}
TK_BY_ID = {t["clip_id"]: {k: t[k] for k in ("tempo", "key", "scale")} for t in TEMPO_KEY}


def test_inputs_untouched_and_rerun_identical(done_run):
    root, summary, before = done_run
    assert _digest(root, INPUTS) == before
    out = _digest(root, OUTPUTS)
    again = prompts.run(str(root), batch_size=2, **FAST)
    assert _digest(root, OUTPUTS) == out
    assert again["acceptance_rate"] == summary["acceptance_rate"]
    assert read_json(root / "04_prompts/stage.json")["status"] == "done"


def test_killed_run_resumes_to_the_same_result(done_run, tmp_path):
    root, _, _ = done_run
    other = make_run(tmp_path)
    prompts.run(str(other), batch_size=2, **FAST)
    # simulate a kill after the first batch, in the middle of writing the second
    path = other / "04_prompts/prompts.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[2][:30])
    (other / "04_prompts/metadata.json").unlink()
    prompts.run(str(other), batch_size=2, **FAST)
    assert path.read_bytes() == (root / "04_prompts/prompts.jsonl").read_bytes()
    assert (other / "04_prompts/metadata.json").read_bytes() == (root / "04_prompts/metadata.json").read_bytes()


def test_changed_tags_redo_only_that_clip(tmp_path):
    root = make_run(tmp_path)
    prompts.run(str(root), use_llm=False, **FAST)
    first = {r["clip_id"]: r for r in read_jsonl(root / "04_prompts/prompts.jsonl")}
    tags = [dict(t) for t in TAGS]
    tags[1]["instruments_tags"] = ["flute"]
    (root / "02_tag/tags.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tags))
    summary = prompts.run(str(root), use_llm=False, **FAST)
    second = {r["clip_id"]: r for r in read_jsonl(root / "04_prompts/prompts.jsonl")}
    assert summary["acceptance_rate"] is None and summary["llm_asked"] == 0
    assert second["a_00"] == first["a_00"]
    assert "flute" in second["a_01"]["prompt"] and second["a_01"]["reject_reason"] == "use_llm=False"
    assert read_json(root / "04_prompts/metadata.json")["a_01.wav"]["instruments_tags"] == ["flute"]


def test_missing_input_and_bad_parameters_fail_early(tmp_path):
    with pytest.raises(clipfacts.ClipFactsError, match="segments.jsonl: missing"):
        prompts.run(str(tmp_path))
    make_run(tmp_path)
    with pytest.raises(prompts.PromptsError, match="batch_size"):
        prompts.run(str(tmp_path), batch_size=0)
    with pytest.raises(prompts.PromptsError, match="quantization"):
        prompts.run(str(tmp_path), quantization="3bit")
    assert not (tmp_path / "04_prompts" / "prompts.jsonl").exists()


def test_supplied_prompt_wins_and_supplied_tags_join(tmp_path, lex):
    """A facts file's prompt (carried by 03) is the clip's prompt, marked supplied, the LLM not asked;
    its tags join the clip's tags by the vocabulary (a synonym as its tag, a general instrument word
    as an instrument), unknown ones are listed; changing the supplied prompt redoes that clip only."""
    root = make_run(tmp_path)
    tk = [dict(r) for r in TEMPO_KEY]
    own = "A smooth neo-soul beat at 92 BPM with Rhodes and live bass."  # the producer's tempo, not 03's
    tk[0]["tags_supplied"] = ["Boom-Bap", "sorrowful", "sitar", "night drive"]
    tk[2]["prompt_supplied"] = own
    (root / "03_tempo_key/tempo_key.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tk))
    summary = prompts.run(str(root), batch_size=2, **FAST)  # the tiny LLM is asked for the others
    rows = {r["clip_id"]: r for r in read_jsonl(root / "04_prompts/prompts.jsonl")}
    assert rows["b_00"]["prompt"] == own and rows["b_00"]["prompt_source"] == "supplied"
    assert rows["b_00"]["llm_output"] is None and rows["b_00"]["reject_reason"] is None
    assert "does not state the tempo (90 BPM)" in rows["b_00"]["supplied_notes"]  # noted, still used
    assert rows["a_01"]["llm_output"] is not None  # the LLM was asked for clips without a supplied prompt
    meta = read_json(root / "04_prompts/metadata.json")["a_00.wav"]
    assert meta["genres_tags"] == ["rap with soul", "boom bap"]
    assert meta["moods_tags"] == ["trap melancholic", "love", "sad"]
    assert meta["instruments_tags"] == ["plucked guitar", "synth bells", "movie sample", "sitar"]
    assert rows["a_00"]["tags_unplaced"] == ["night drive"] and rows["a_00"]["tags_supplied"][0] == "Boom-Bap"
    assert any(w in rows["a_00"]["prompt"].casefold() for w in lex.wordings("boom bap"))  # written from them
    assert summary["prompt_supplied"] == 1 and summary["tags_supplied"] == 1
    assert summary["tags_unplaced"] == ["night drive"]
    table = {r["clip_id"]: r for r in prompts.supplied_table(list(rows.values()))}
    assert set(table) == {"a_00", "b_00"} and table["b_00"]["prompt"] == "supplied"
    assert table["a_00"]["not in the vocabulary"] == "night drive"

    tk[2]["prompt_supplied"] = "A smooth neo-soul beat at 90 BPM with Rhodes and live bass."
    (root / "03_tempo_key/tempo_key.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tk))
    prompts.run(str(root), batch_size=2, **FAST)
    again = {r["clip_id"]: r for r in read_jsonl(root / "04_prompts/prompts.jsonl")}
    assert again["b_00"]["prompt"] == tk[2]["prompt_supplied"] and again["b_00"]["supplied_notes"] is None
    assert {c: again[c] for c in ("a_00", "a_01", "c_00")} == {c: rows[c] for c in ("a_00", "a_01", "c_00")}
