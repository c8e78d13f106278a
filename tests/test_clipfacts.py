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
