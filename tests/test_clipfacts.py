"""stablebeat_utils.clipfacts: one reader of tempo and key, the same for 04's validator and 07."""

import pytest

from stablebeat_utils import clipfacts, evaluate, prompts

META = {
    "instruments_tags": ["synth bells"],
    "genres_tags": ["rap with soul"],
    "moods_tags": ["trap melancholic"],
    "key": "G",
    "scale": "minor",
    "tempo": 109.0,
}

TEMPO_SPELLINGS = [
    "109 BPM",
    "109bpm",
    "109 bpm",
    "109-BPM",
    "109 b.p.m.",
    "109 B.P.M.",
    "109 beats per minute",
    "109 beats a minute",
    "109 beats-per-minute",
    "109 beats/minute",
    "a tempo of 109",
    "tempo: 109",
    "109.0 BPM",
    "one hundred and nine BPM",
    "one hundred nine beats per minute",
    "a hundred and nine b.p.m.",
    "one-oh-nine BPM",
]
KEY_SPELLINGS = ["G minor", "Gm", "G-minor", "G min", "G Minor", "G MINOR", "g minor", "in g minor"]


@pytest.mark.parametrize("bpm", TEMPO_SPELLINGS)
def test_every_tempo_spelling_the_validator_accepts_07_reads_the_same(lex, matcher, bpm):
    prompt = f"A melancholic rap with soul beat at {bpm} in G minor with synth bells."
    accepted = prompts.validate(prompt, META, lex, matcher) == []
    read = evaluate.parse_bpm(prompt)
    if accepted:
        assert read == 109.0, (prompt, read)
    else:  # what the validator refuses, 07 does not read as the tempo either
        assert read != 109.0, (prompt, read)
    # the common spellings must be accepted (else this test would prove nothing)
    if bpm != "one-oh-nine BPM":
        assert accepted, prompts.validate(prompt, META, lex, matcher)


@pytest.mark.parametrize("key", KEY_SPELLINGS + ["A minor", "in a minor", "A-flat major", "F# minor", "Eb major"])
def test_every_key_spelling_the_validator_accepts_07_reads_the_same(lex, matcher, key):
    prompt = f"A melancholic rap with soul beat at 109 BPM in {key} with synth bells.".replace("in in ", "in ")
    accepted = prompts.validate(prompt, META, lex, matcher) == []
    read = evaluate.parse_key(prompt)
    assert accepted == (read == ("G", "minor")), (prompt, accepted, read)
    if key in KEY_SPELLINGS:
        assert accepted


@pytest.mark.parametrize(
    "text, key",
    [
        ("in g minor", ("G", "minor")),
        ("F# minor", ("F#", "minor")),
        ("A-flat major", ("Ab", "major")),
        ("A flat major", ("Ab", "major")),
        ("f sharp minor", ("F#", "minor")),
        ("Ebm", ("Eb", "minor")),
        ("E♭ major", ("Eb", "major")),
        ("in Db major", ("C#", "major")),
        ("Bb MAJOR", ("Bb", "major")),
        ("resolving to a minor.", ("A", "minor")),
        ("a beat in a minor, with 808s", ("A", "minor")),
        ("key of a major", ("A", "major")),
        ("A minor chord progression drives it", None),  # sentence-initial article
        ("a minor chord progression", None),
        ("in a minor key", None),  # a minor scale, no note
        ("He added a major twist", None),
        ("Cmaj7 chords", None),
        ("minor chord progressions on piano", None),
    ],
)
def test_key_rules(text, key):
    assert clipfacts.parse_key(text) == key


def test_scale_and_note_only_claims():
    assert clipfacts.find_keys("in a minor key") == [(None, "minor", "minor key")]
    assert clipfacts.find_keys("in the key of G") == [(7, None, "key of G")]


@pytest.mark.parametrize(
    "text, bpm",
    [
        ("one hundred and forty BPM", 140.0),
        ("a hundred ten beats per minute", 110.0),
        ("ninety-five bpm", 95.0),
        ("one forty bpm", 140.0),
        ("one-twenty BPM", 120.0),
        ("a tempo of ninety", 90.0),
        ("seventy b.p.m.", 70.0),
        ("at 142,5 bpm", 142.5),
        ("a beat with 808 and 16 hats", None),
        ("2000 BPM nonsense", None),
        ("one shot samples", None),
    ],
)
def test_tempo_in_digits_and_words(text, bpm):
    assert clipfacts.parse_bpm(text) == bpm


def test_numbers_in_words_are_read_but_small_words_are_english():
    assert [v for v, _, _ in clipfacts.find_numbers("ninety-five hats, one shot and a two-step, 808s")] == [95.0, 808.0]
    assert [v for v, _, _ in clipfacts.find_numbers("one forty bpm")] == [140.0]
    assert clipfacts.words_to_number("one hundred and forty") == 140.0
    assert clipfacts.words_to_number("hundred and five") == 105.0
    assert clipfacts.words_to_number("forty forty") is None


def test_validator_reads_numbers_in_words(lex, matcher):
    problems = prompts.validate(
        "A melancholic rap with soul beat at one hundred and forty BPM in G minor with synth bells.", META, lex, matcher
    )
    assert any("number (140)" in p for p in problems), problems
    assert (
        prompts.validate(
            "A melancholic rap with soul beat at one hundred and nine BPM in G minor with synth bells.",
            META,
            lex,
            matcher,
        )
        == []
    )


# ------------------------------------------------------------------------------------------------
# facts a producer wrote into a file name: (name, bpm, key, scale); None = deliberately not read.
# The last element, when present, is a word the refusal reason must hold (the name is listed).
NAME_CORPUS = [
    # the five patterns
    ("night drive 145bpm A.wav", 145, "A", "major"),
    ("Velvet_72BPM_Ebmin.wav", 72, "Eb", "minor"),
    ("cold_heart - B minor - 140 BPM.wav", 140, "B", "minor"),
    ("drill thing [78] Fmaj.wav", 78, "F", "major"),
    ("late-84-Cm.wav", 84, "C", "minor"),
    # accidentals and scale spellings
    ("midnight 92bpm F#m.wav", 92, "F#", "minor"),
    ("midnight 92bpm F♯m.wav", 92, "F#", "minor"),
    ("midnight - F sharp minor - 92 BPM.wav", 92, "F#", "minor"),
    ("rain_Abmaj_100bpm.wav", 100, "Ab", "major"),
    ("rain - A♭ major - 100bpm.flac", 100, "Ab", "major"),
    ("rain - A flat major - 100 bpm.mp3", 100, "Ab", "major"),
    ("gold 128 BPM C#min.wav", 128, "C#", "minor"),
    ("gold_128_Dbmin.wav", 128, "C#", "minor"),
    ("stars_140_Gbm.wav", 140, "F#", "minor"),
    ("stars 140bpm G minor.wav", 140, "G", "minor"),
    ("stars 140bpm G Minor.wav", 140, "G", "minor"),
    ("stars 140bpm Gmin.wav", 140, "G", "minor"),
    ("stars 140bpm E major.wav", 140, "E", "major"),
    ("stars 140bpm Emaj.wav", 140, "E", "major"),
    ("stars 140bpm Bb.wav", 140, "Bb", "major"),
    ("stars BPM140 Bbm.wav", 140, "Bb", "minor"),
    ("stars_bpm_140_cmin.wav", 140, "C", "minor"),
    ("stars 140bpm ebm.wav", 140, "Eb", "minor"),
    ("stars 140bpm f#min.wav", 140, "F#", "minor"),
    ("soul loop 86 BPM D minor.aiff", 86, "D", "minor"),
    ("A minor 90bpm.wav", 90, "A", "minor"),
    ("trap 150bpm (A minor).wav", 150, "A", "minor"),
    ("92.5bpm Em.wav", 92.5, "E", "minor"),
    # other numbers in titles: years, dates, versions, track numbers, sample rates, 808s
    ("03 - summer 2019 92 F#m.wav", 92, "F#", "minor"),
    ("03 - Velvet - 72 BPM - Ebm.wav", 72, "Eb", "minor"),
    ("12. sunset 90bpm Am.wav", 90, "A", "minor"),
    ("beat v2 88 Gm.wav", 88, "G", "minor"),
    ("beat_v3_final_150bpm.wav", 150, None, None),
    ("808 mafia type beat 140bpm Cm.wav", 140, "C", "minor"),
    ("808 heavy 144 Fm.wav", 144, "F", "minor"),
    ("lofi 44k 24bit 80bpm Dm.wav", 80, "D", "minor"),
    ("lofi 48 kHz 80 Dm.wav", 80, "D", "minor"),
    ("loop 2019-05-12 85 Am.wav", 85, "A", "minor"),
    ("loop 12.05.19 85bpm.wav", 85, None, None),
    ("sketch 2021 take 3 96bpm.wav", 96, None, None),
    ("memories (prod. kay) 160 BPM.wav", 160, None, None),
    ("16 bars 95bpm Cmaj.wav", 95, "C", "major"),
    ("Room 101 90bpm Em.wav", 90, "E", "minor"),
    ("boom bap 93 - G minor.wav", 93, "G", "minor"),
    ("house_124_Fmin_v2.wav", 124, "F", "minor"),
    ("drill_142bpm_C#m_final.wav", 142, "C#", "minor"),
    ("vol 2 - dusty 78.wav", 78, None, None),
    ("hook idea #7 - 132bpm.wav", 132, None, None),
    # deliberately refused: names that are not sure
    ("Route 66 90.wav", None, None, None, "several numbers"),
    ("100 degrees 85.wav", 85, None, None),  # a quantity ("100 degrees") is no tempo
    ("140-150bpm Gm.wav", None, "G", "minor", "range"),
    ("beat 140bpm 70bpm.wav", None, None, None, "several tempi"),
    ("crazy 900bpm.wav", None, None, None, "outside"),
    ("Am I wrong 90bpm.wav", 90, None, None, "may be a word"),
    ("Plan B 90.wav", 90, None, None, "may be a word"),
    ("Side A 92bpm extended.wav", 92, None, None, "may be a word"),
    ("Cm Fm 120bpm.wav", 120, None, None, "several keys"),
    ("switch Am to C major 100bpm.wav", 100, None, None, "several keys"),
    ("my beat.wav", None, None, None),
    ("beat 2019.wav", None, None, None),
    ("summer 2019 v2.wav", None, None, None),
    ("03 - intro.wav", None, None, None),
    ("84 - late night.wav", None, None, None),
    ("1999 party.wav", None, None, None),
    ("3am thoughts.wav", None, None, None),
    ("i am here.wav", None, None, None),
    ("emotions.wav", None, None, None),
    ("Cmaj7 chords loop.wav", None, None, None),
    ("44100 test.wav", None, None, None),
    ("take 72.wav", None, None, None),
    ("50 cent type beat.wav", None, None, None),
]


@pytest.mark.parametrize("case", NAME_CORPUS, ids=[c[0] for c in NAME_CORPUS])
def test_facts_from_name_reads_or_refuses_each_name(case):
    name, bpm, key, scale = case[:4]
    got = clipfacts.facts_from_name(name)
    assert (got.bpm, got.key, got.scale) == (bpm, key, scale), got
    if len(case) > 4:
        assert any(case[4] in r for r in got.refused), got.refused  # listed, with its reason


def test_name_corpus_is_large_and_mixed():
    assert len(NAME_CORPUS) >= 60
    assert sum(c[1] is None or len(c) > 4 for c in NAME_CORPUS) >= 15  # refusals are part of it


def test_sidecar_names_each_bad_line_and_goes_on(tmp_path):
    f = tmp_path / "facts.csv"
    f.write_text(
        "file,bpm,key,tags,prompt\n"
        "a.wav,92,F#m,dusty; jazzy,\n"
        "b.wav,fast,Cm,,\n"
        "c.wav,400,,,\n"
        ",90,Am,,\n"
        "d.wav,140 BPM,H major,,a dark drill beat\n"
        "a.wav,93,,,\n",
        encoding="utf-8",
    )
    facts, problems = clipfacts.read_facts_file(f)
    assert facts["a.wav"] == {"bpm": 92.0, "key": "F#", "scale": "minor", "tags": ["dusty", "jazzy"]}
    assert facts["b.wav"] == {"key": "C", "scale": "minor"}
    assert facts["c.wav"] == {}
    assert facts["d.wav"] == {"bpm": 140.0, "prompt": "a dark drill beat"}
    text = "\n".join(problems)
    for needle in (
        "line 3 (b.wav): bpm 'fast'",
        "line 4 (c.wav): bpm 400 is outside",
        "line 5: no file name",
        "line 6 (d.wav): key 'H major'",
        "line 7: 'a.wav' again",
    ):
        assert needle in text, text
    j = tmp_path / "facts.json"
    j.write_text('{"a.wav": {"bpm": 85, "key": "Bb major"}, "b.wav": {"bpm": "x"}}', encoding="utf-8")
    facts, problems = clipfacts.read_facts_file(j)
    assert facts["a.wav"] == {"bpm": 85.0, "key": "Bb", "scale": "major"} and "entry 2 (b.wav)" in problems[0]
