"""Template prompts (stage 04's fallback) read well for every template × every vocabulary word and
synonym: articles agree with the word after them, no word is doubled, no comma dangles."""

import random
import re

import pytest

from stablebeat_utils import prompts

LEX = prompts.load_lexicon()
WORDS = {f: sorted({w for t in LEX.tags[f] for w in LEX.wordings(t)}) for f in prompts.FAMILIES}
OTHERS = {"instruments": ["piano", "synth bells"], "moods": ["dark", "calm"], "genres": ["trap", "boom bap"]}
# the sound a word starts with, written out here independently of prompts._article
A_BEFORE = re.compile(r"(?:eu|uni|use|usu|uti|one\b|uk\b|ufo)")
AN_BEFORE = re.compile(r"(?:[aeiou]|8|11\b|18\b|r&b|rnb|hour|honest|heir)")


def problems(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"(?i)\b(an?)\s+([\w&'-]+)", text):
        art, word = m.group(1).lower(), m.group(2).casefold()
        wants_an = bool(AN_BEFORE.match(word)) and not A_BEFORE.match(word)
        if (art == "an") != wants_an:
            out.append(f"article: {m.group(0)!r}")
    d = re.search(r"(?i)\b([\w&'-]+)\s+\1\b", text)
    if d:
        out.append(f"doubled word: {d.group(0)!r}")
    if re.search(r",\s*[,.;]|\s[,.]|^[,.]|,$|\(\s*\)", text):
        out.append("dangling comma")
    if "  " in text or text != text.strip():
        out.append("spacing")
    return out


def metas():
    """Each vocabulary word and synonym, alone in its family, with one other tag per family, with
    three: with and without tempo and key."""
    for fam in prompts.FAMILIES:
        for w in WORDS[fam]:
            for shape in ("alone", "one", "three"):
                words = {
                    f: [] if shape == "alone" else list(OTHERS[f][: 1 if shape == "one" else 2])
                    for f in prompts.FAMILIES
                }
                words[fam] = [w] + (OTHERS[fam][:2] if shape == "three" else [])
                yield fam, w, shape, words


@pytest.mark.parametrize("tpl", prompts.TEMPLATES, ids=lambda t: t.__name__)
def test_every_template_and_vocabulary_word_reads_well(tpl):
    bad = []
    n = 0
    for fam, w, shape, words in metas():
        for tempo, key in ((109.0, "G"), (None, None)):
            meta = {f"{f}_tags": words[f] for f in prompts.FAMILIES}
            meta.update(tempo=tempo, key=key, scale="minor" if key else None)
            rng = random.Random(0)
            rng.randrange = lambda n, _i=prompts.TEMPLATES.index(tpl): _i  # this template
            text = prompts.template_prompt(meta, LEX, rng, wordings=words)
            n += 1
            bad += [(p, text) for p in problems(text)]
    assert n > 1000
    assert not bad, bad[:10]


def test_the_issues_example_and_the_checker_itself():
    parts = {"moods": "alluring", "genre": "trap", "instruments": "piano", "bpm": "", "key": ""}
    assert "evoking an alluring mood" in prompts._tpl_evoking(parts)
    # the checker catches what it must (else the test above would prove nothing)
    assert problems("A trap beat, evoking a alluring mood.")
    assert problems("An trap beat.")
    assert problems("A chill rap beat beat.")
    assert problems("A trap beat with piano, , at 90 BPM.")
    assert not problems("An 808-heavy trap beat, evoking a euphoric mood, at 90 BPM.")
