"""Clip facts in text: the one reader of tempo and key in a prompt.

Used by stage 04 (:func:`stablebeat_utils.prompts.validate`: does an LLM's prompt state the clip's
tempo and key, and no other?) and by stage 07 (:func:`stablebeat_utils.evaluate.parse_bpm` /
``parse_key``: what tempo and key did a prompt ask for?). One parser, so that every spelling the
validator accepts is read by 07 to the same value (there is a test of exactly that).

**Tempo** (:func:`find_tempos`, :func:`parse_bpm`): a number followed by a tempo unit — ``bpm``,
``BPM``, ``b.p.m.``, ``b p m``, ``beats per minute``, ``beats a minute``, ``beats/minute``,
``beats-per-minute`` (``"109-BPM"`` too) — or after the word *tempo* (``"tempo: 92"``, ``"a tempo
of 92"``, ``"tempo around 92"``). The number is digits (``109``, ``142.5``, ``142,5``) or English
words (``"one hundred and forty"``, ``"a hundred ten"``, ``"ninety-five"``, and the spoken
``"one forty"`` / ``"one-twenty"`` directly before a unit). :func:`parse_bpm` returns the first
stated tempo between 30 and 300.

**Numbers** (:func:`find_numbers`): every number a text states — digits anywhere (``"808"`` and
``"16"`` included), and number *words* when they are 20 or more (``"ninety"``, ``"a hundred and
ten"``) or state a tempo (``"seventy BPM"``). Small number words ("one", "two", "a dozen") are
ordinary English ("one-shot", "two-step") and are not read unless they state a tempo.

**Keys** (:func:`find_keys`, :func:`parse_key`): a note, an optional accidental, and a scale
word. Rules, from the least to the most ambiguous spelling:

1. Upper-case note ``A``–``G`` + accidental (``#``, ``♯``, ``b``, ``♭``, ``-sharp``, ``sharp``,
   ``-flat``, ``flat``) + ``major``/``minor``/``maj``/``min`` in any case, or the shorthand
   ``m``: ``"G minor"``, ``"F# minor"``, ``"A-flat major"``, ``"Bb MAJOR"``, ``"Gm"``, ``"F#m"``.
   ``"Cmaj7"`` is a chord, not a key.
2. Lower-case note ``b``–``g`` + accidental + the full word ``major``/``minor``: ``"in g
   minor"``, ``"f sharp minor"``. (``"gm"`` and ``"g min"`` are not read: too short to be sure.)
3. A lower-case ``a`` (and a capital ``A`` that opens a sentence) is usually the article: ``"a
   minor chord progression"``, ``"A minor-key beat"``. It is read as the note A only where the
   words around it leave no other reading: after *in*, *to*, *into*, *of* or *key* / *key:*
   (``"in a minor"``, ``"resolving to a minor"``, ``"key of a major"``) **and** not followed by a
   word that a scale word qualifies (``key``, ``scale``, ``mode``, ``chord``, ``progression``,
   ``feel``…, see :data:`QUALIFIED_NOUNS`). So ``"in a minor key"`` is a minor scale with no
   note (rule 5) and ``"in a minor, with 808s"`` is A minor.
4. ``"key of G"`` names a note without a scale.
5. ``"minor key"``, ``"major scale"``, ``"minor tonality"`` name a scale without a note.

Claims are ``(pitch class or None, "major"/"minor" or None, matched text)``. :func:`parse_key`
returns the first full key as ``(tonic, mode)`` in Essentia's spelling (``C C# D Eb E F F# G Ab
A Bb B``).
"""

from __future__ import annotations

import re

PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PC_NAME = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ACC = {"#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1}
BPM_RANGE = (30.0, 300.0)

# words a scale word can qualify: "a minor key", "a major chord" — then "a" is the article
QUALIFIED_NOUNS = ("key", "keys", "scale", "scales", "mode", "modes", "tonality", "chord", "chords", "progression",
                   "progressions", "third", "thirds", "seventh", "sevenths", "triad", "triads", "feel", "vibe",
                   "sound", "tone", "tones", "twist", "influence", "hit", "label", "role", "part", "league",
                   "change", "changes", "melody", "melodies", "riff", "riffs", "flavor", "flavour", "mood",
                   "character", "quality", "sixth", "ninth", "pentatonic", "blues", "harmony", "harmonies")

# ------------------------------------------------------------------------------------------------
# numbers in words

_UNITS = {w: i for i, w in enumerate(("zero one two three four five six seven eight nine ten eleven twelve "
                                       "thirteen fourteen fifteen sixteen seventeen eighteen nineteen").split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_U = "|".join(sorted(_UNITS, key=len, reverse=True))
_T = "|".join(_TENS)
_SEP = r"[\s-]+"
_BELOW_100 = rf"(?:(?:{_T})(?:{_SEP}(?:{_U}))?|(?:{_U}))"
# "one hundred and forty", "a hundred ten", "hundred and five", "ninety-five", "seventeen"
_WORD_NUMBER = rf"(?:(?:(?:{_U}|a){_SEP})?hundred(?:{_SEP}(?:and{_SEP})?{_BELOW_100})?|{_BELOW_100})"
# the spoken "one forty" / "one-twenty-five" (only directly before a tempo unit)
_SPOKEN = rf"(?:one|two){_SEP}(?:(?:{_T})(?:{_SEP}(?:{_U}))?|(?:ten|eleven|twelve|thirteen|fourteen|fifteen|"\
          rf"sixteen|seventeen|eighteen|nineteen))"


def words_to_number(phrase: str) -> float | None:
    """``"one hundred and forty"`` → 140; ``"ninety-five"`` → 95; ``"one forty"`` → 140; else None."""
    words = [w for w in re.split(r"[\s-]+", phrase.casefold().strip()) if w and w != "and"]
    if not words:
        return None
    if "hundred" in words:
        i = words.index("hundred")
        head = words[:i]
        if len(head) > 1 or (head and head[0] != "a" and head[0] not in _UNITS):
            return None
        total = 100 * (1 if not head or head[0] == "a" else _UNITS[head[0]])
        rest = words[i + 1:]
    elif len(words) >= 2 and words[0] in ("one", "two") and (words[1] in _TENS or 10 <= _UNITS.get(words[1], 0)):
        total, rest = 100 * _UNITS[words[0]], words[1:]  # "one forty"
    else:
        total, rest = 0, words
    value = 0
    for j, w in enumerate(rest):
        if w in _TENS and j == 0:
            value += _TENS[w]
        elif w in _UNITS and (j == 0 or (j == 1 and rest[0] in _TENS and _UNITS[w] < 10)):
            value += _UNITS[w]
        else:
            return None
    return float(total + value)


# ------------------------------------------------------------------------------------------------
# tempo

_UNIT = r"(?:bpms?|b\.\s?p\.\s?m\.?|b\s?p\s?m\b|beats?[\s-]+(?:per|a)[\s-]+min(?:ute)?|beats?\s?(?:/\s?|\s)min(?:ute)?)"
_DIGITS = r"\d+(?:[.,]\d+)?"
_TEMPO_RE = re.compile(
    rf"(?<![\w.])(?P<num>{_DIGITS}|{_SPOKEN}|{_WORD_NUMBER})\s*-?\s*{_UNIT}(?![\w])"
    rf"|\btempo\s*(?:of|is|at|:|=|around|about)?\s*(?:about\s|around\s|roughly\s|~\s?)?"
    rf"(?P<num2>{_DIGITS}|{_WORD_NUMBER})(?![\w])",
    re.I)
_DIGIT_RE = re.compile(rf"(?<![\w.])({_DIGITS})")
_WORDNUM_RE = re.compile(rf"(?<![\w-])({_WORD_NUMBER})(?![\w-])", re.I)


def _value(s: str) -> float | None:
    s = s.strip()
    if re.fullmatch(_DIGITS, s):
        return float(s.replace(",", "."))
    return words_to_number(s)


def _tempo_matches(text: str):
    for m in _TEMPO_RE.finditer(text or ""):
        g = "num" if m.group("num") is not None else "num2"
        v = _value(m.group(g))
        if v is not None:
            yield v, m, m.span(g)


def find_tempos(text: str) -> list[tuple[float, str, tuple[int, int]]]:
    """Every tempo ``text`` states: ``(bpm, matched text, (start, end))``, in order."""
    return [(v, m.group(0), m.span()) for v, m, _ in _tempo_matches(text)]


def parse_bpm(text: str) -> float | None:
    """The first tempo ``text`` states within 30–300 BPM, or None."""
    for v, _, _ in find_tempos(text):
        if BPM_RANGE[0] <= v <= BPM_RANGE[1]:
            return v
    return None


def find_numbers(text: str) -> list[tuple[float, str, tuple[int, int]]]:
    """Every number ``text`` states (see the module docstring): ``(value, as written, span)``."""
    text = text or ""
    out = [(v, text[a:b], (a, b)) for v, _, (a, b) in _tempo_matches(text)]
    covered = [span for _, _, span in out]

    def free(a: int) -> bool:
        return not any(x <= a < y for x, y in covered)

    out += [(float(m.group(1).replace(",", ".")), m.group(1), m.span(1)) for m in _DIGIT_RE.finditer(text)
            if free(m.start(1))]
    for m in _WORDNUM_RE.finditer(text):
        v = words_to_number(m.group(1))
        if v is not None and v >= 20 and free(m.start(1)):
            out.append((v, m.group(1), m.span(1)))
    return sorted(out, key=lambda t: t[2])


# ------------------------------------------------------------------------------------------------
# keys

_ACC_RX = r"(?:\s?[#♯♭b](?![a-ln-z]))|(?:[\s-]+(?:sharp|flat)(?![a-z]))|(?:-[#♯♭b](?![a-ln-z]))"
_KEY_UPPER_RE = re.compile(
    rf"(?<![\w#♯♭])([A-G])({_ACC_RX})?(?:[\s-]*((?i:major|minor|maj|min))(?![\w])|(m)(?![\w#]))")
_KEY_LOWER_RE = re.compile(rf"(?<![\w#♯♭'’])([a-g])({_ACC_RX})?[\s-]+((?i:major|minor))(?![\w])")
_KEY_OF_RE = re.compile(rf"\bkey\s+of\s+([A-Ga-g])({_ACC_RX})?(?![\w#♯])(?![\s-]*(?:major|minor|maj|min)\b)", re.I)
_SCALE_ONLY_RE = re.compile(r"\b(major|minor)[\s-]+(?:key|scale|tonality|mode)s?\b", re.I)
_A_CONTEXT_RE = re.compile(r"(?:\b(?:in|to|into|of|key)\s*:?\s*)$", re.I)
_QUALIFIED_RE = re.compile(r"^[\s-]*(?:" + "|".join(QUALIFIED_NOUNS) + r")\b", re.I)


def pitch_class(note: str, accidental: str | None = None) -> int:
    """``("F", "#")`` → 6; ``("A", "-flat")`` → 8; ``("b", None)`` → 11."""
    acc = (accidental or "").strip(" -")
    acc = acc.lower() if len(acc) > 1 else acc  # "Sharp"/"FLAT" as words; "b" is the flat sign
    return (PITCH[note.upper()] + _ACC.get(acc, 0)) % 12


def _sentence_start(text: str, pos: int) -> bool:
    return re.search(r"(?:^|[.!?:;\n]\s*|[\"“(]\s*)$", text[:pos]) is not None


def _article_a(text: str, m: re.Match) -> bool:
    """True when the "a"/"A" of a match is (or may be) the article: rule 3 of the module docstring."""
    if m.group(1) not in ("a", "A") or m.group(2):
        return False
    if m.group(1) == "A" and not _sentence_start(text, m.start()):
        return False  # a capital A inside a sentence is the note
    if m.group(1) == "A" and m.group(4):
        return False  # "Am" at a sentence start
    before = text[:m.start()]
    after = text[m.end():]
    return not (_A_CONTEXT_RE.search(before) and not _QUALIFIED_RE.match(after))


def find_keys(text: str) -> list[tuple[int | None, str | None, str]]:
    """Every key claim in ``text``: (pitch class or None, "major"/"minor" or None, matched text)."""
    text = text or ""
    found: list[tuple[int, tuple[int | None, str | None, str]]] = []
    spans: list[tuple[int, int]] = []
    for rx in (_KEY_UPPER_RE, _KEY_LOWER_RE):
        for m in rx.finditer(text):
            if any(a <= m.start() < b for a, b in spans):
                continue
            if _article_a(text, m):
                continue
            word = (m.group(3) or "").lower()
            scale = "minor" if (rx is _KEY_UPPER_RE and m.group(4)) or word.startswith("min") else "major"
            found.append((m.start(), (pitch_class(m.group(1), m.group(2)), scale, m.group(0))))
            spans.append(m.span())
    for m in _KEY_OF_RE.finditer(text):
        if not any(a <= m.start(1) < b for a, b in spans):
            found.append((m.start(), (pitch_class(m.group(1), m.group(2)), None, m.group(0))))
            spans.append(m.span())
    for m in _SCALE_ONLY_RE.finditer(text):
        if not any(a <= m.start() < b for a, b in spans):
            found.append((m.start(), (None, m.group(1).lower(), m.group(0))))
    return [c for _, c in sorted(found, key=lambda t: t[0])]


def key_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` names full keys (for checks that must skip them, e.g. capitalised words)."""
    out = []
    for rx in (_KEY_UPPER_RE, _KEY_LOWER_RE):
        out += [m.span() for m in rx.finditer(text or "") if not _article_a(text, m)]
    return out


def parse_key(text: str) -> tuple[str, str] | None:
    """The first full key ``text`` names, as ``(tonic, "major"|"minor")`` in Essentia's spelling."""
    for pc, scale, _ in find_keys(text):
        if pc is not None and scale is not None:
            return PC_NAME[pc], scale
    return None


def parse_key_name(key: str | None) -> int | None:
    """Essentia's key spelling (``"G"``, ``"F#"``, ``"Eb"``) → pitch class 0–11; None if unreadable."""
    if not key:
        return None
    m = re.fullmatch(r"\s*([A-Ga-g])\s*([#♯b♭]|sharp|flat)?\s*", str(key))
    return pitch_class(m.group(1), m.group(2)) if m else None
