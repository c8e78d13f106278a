"""Clip facts: what the course knows about a clip, and the one reader of tempo and key in text.

Imported by the stages (02 reads its vocabulary here, 04 its lexicon and each clip's metadata,
07 its tempo/key parser); it imports only :mod:`runs`. Four parts:

- the vocabulary (:func:`load_vocab`, :func:`load_synonyms`: ``data/vocab``), the three tag
  :data:`FAMILIES` and 04's :class:`Lexicon` (:func:`load_lexicon`: tags, synonyms, artists, the
  general instrument words);
- a clip's facts as the run folder holds them (:func:`gather`: 01's segment + 02's tags + 03's tempo
  and key) and whether its tempo and key are known (:func:`known_tempo`, :func:`known_key`);
- the parser of tempo and key in text, below.


Used by stage 04 (:func:`stablebeat_utils.prompts.validate`: does an LLM's prompt state the clip's
tempo and key, and no other?) and by stage 07 (:func:`stablebeat_utils.evaluate_metrics.parse_bpm` /
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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import layout
from .runs import Run, iter_jsonl

PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PC_NAME = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ACC = {"#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1}
BPM_RANGE = (30.0, 300.0)

# words a scale word can qualify: "a minor key", "a major chord" — then "a" is the article
QUALIFIED_NOUNS = (
    "key",
    "keys",
    "scale",
    "scales",
    "mode",
    "modes",
    "tonality",
    "chord",
    "chords",
    "progression",
    "progressions",
    "third",
    "thirds",
    "seventh",
    "sevenths",
    "triad",
    "triads",
    "feel",
    "vibe",
    "sound",
    "tone",
    "tones",
    "twist",
    "influence",
    "hit",
    "label",
    "role",
    "part",
    "league",
    "change",
    "changes",
    "melody",
    "melodies",
    "riff",
    "riffs",
    "flavor",
    "flavour",
    "mood",
    "character",
    "quality",
    "sixth",
    "ninth",
    "pentatonic",
    "blues",
    "harmony",
    "harmonies",
)

# ------------------------------------------------------------------------------------------------
# numbers in words

_UNITS = {
    w: i
    for i, w in enumerate(
        (
            "zero one two three four five six seven eight nine ten eleven twelve "
            "thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
        ).split()
    )
}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_U = "|".join(sorted(_UNITS, key=len, reverse=True))
_T = "|".join(_TENS)
_SEP = r"[\s-]+"
_BELOW_100 = rf"(?:(?:{_T})(?:{_SEP}(?:{_U}))?|(?:{_U}))"
# "one hundred and forty", "a hundred ten", "hundred and five", "ninety-five", "seventeen"
_WORD_NUMBER = rf"(?:(?:(?:{_U}|a){_SEP})?hundred(?:{_SEP}(?:and{_SEP})?{_BELOW_100})?|{_BELOW_100})"
# the spoken "one forty" / "one-twenty-five" (only directly before a tempo unit)
_SPOKEN = (
    rf"(?:one|two){_SEP}(?:(?:{_T})(?:{_SEP}(?:{_U}))?|(?:ten|eleven|twelve|thirteen|fourteen|fifteen|"
    rf"sixteen|seventeen|eighteen|nineteen))"
)


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
        rest = words[i + 1 :]
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
    re.I,
)
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

    out += [
        (float(m.group(1).replace(",", ".")), m.group(1), m.span(1))
        for m in _DIGIT_RE.finditer(text)
        if free(m.start(1))
    ]
    for m in _WORDNUM_RE.finditer(text):
        v = words_to_number(m.group(1))
        if v is not None and v >= 20 and free(m.start(1)):
            out.append((v, m.group(1), m.span(1)))
    return sorted(out, key=lambda t: t[2])


# ------------------------------------------------------------------------------------------------
# keys

_ACC_RX = r"(?:\s?[#♯♭b](?![a-ln-z]))|(?:[\s-]+(?:sharp|flat)(?![a-z]))|(?:-[#♯♭b](?![a-ln-z]))"
_KEY_UPPER_RE = re.compile(rf"(?<![\w#♯♭])([A-G])({_ACC_RX})?(?:[\s-]*((?i:major|minor|maj|min))(?![\w])|(m)(?![\w#]))")
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
    before = text[: m.start()]
    after = text[m.end() :]
    return not (_A_CONTEXT_RE.search(before) and not _QUALIFIED_RE.match(after))


def _full_keys(text: str) -> list[tuple[re.Match, int, str, bool]]:
    """Every full key (rules 1–3): (match, pitch class, scale, written out), in finding order;
    *written out*: the scale is a word ("minor", "maj"), not the shorthand "m"."""
    out: list[tuple[re.Match, int, str, bool]] = []
    for rx in (_KEY_UPPER_RE, _KEY_LOWER_RE):
        for m in rx.finditer(text):
            if any(o.start() <= m.start() < o.end() for o, *_ in out) or _article_a(text, m):
                continue
            word = (m.group(3) or "").lower()
            scale = "minor" if (rx is _KEY_UPPER_RE and m.group(4)) or word.startswith("min") else "major"
            out.append((m, pitch_class(m.group(1), m.group(2)), scale, bool(word)))
    return out


def find_keys(text: str) -> list[tuple[int | None, str | None, str]]:
    """Every key claim in ``text``: (pitch class or None, "major"/"minor" or None, matched text)."""
    text = text or ""
    found: list[tuple[int, tuple[int | None, str | None, str]]] = []
    spans: list[tuple[int, int]] = []
    for m, pc, scale, _ in _full_keys(text):
        found.append((m.start(), (pc, scale, m.group(0))))
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


# --------------------------------------------------------------------------------------------
# the vocabulary (02's tags, 04's words) and a clip's facts as the run folder holds them
# --------------------------------------------------------------------------------------------

FAMILIES = ("instruments", "moods", "genres")
DATA_DIR = Path(__file__).parent / "data"
VOCAB_DIR = DATA_DIR / "vocab"
ARTISTS_FILE = VOCAB_DIR / "artists.yaml"
INSTRUMENT_LEXICON_FILE = VOCAB_DIR / "instrument_lexicon.yaml"
MAX_SYNONYMS = 4
T5_MAX_TOKENS = 128  # stable-audio-tools' T5Conditioner max_length for SAO 1.0


class ClipFactsError(ValueError):
    """A vocabulary, lexicon or run-folder input that cannot be read; the message names the file."""


class VocabError(ClipFactsError):
    """A malformed vocabulary or synonyms file; the message names the file and the entry."""


@dataclass(frozen=True)
class Entry:
    """One vocabulary entry: ``tag`` goes into prompts, ``text`` into CLAP's text tower."""

    tag: str
    text: str


def _vocab_dir(vocab_dir: str | Path = "") -> Path:
    path = Path(vocab_dir).expanduser() if str(vocab_dir) else VOCAB_DIR
    if not path.is_dir():
        raise VocabError(
            f"vocab_dir {str(path)!r} is not a folder (it should hold {', '.join(f + '.yaml' for f in FAMILIES)})"
        )
    return path


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise VocabError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise VocabError(f"{path}: not valid YAML ({exc})") from exc


def _clean_text(value: Any, path: Path, where: str, field: str) -> str:
    if not isinstance(value, str):
        hint = ' (quote it in the YAML file, e.g. "808")' if isinstance(value, (int, float)) else ""
        raise VocabError(f"{path}: {where}: `{field}` must be text, got {type(value).__name__} {value!r}{hint}")
    text = " ".join(value.split())
    if not text:
        raise VocabError(f"{path}: {where}: `{field}` is empty")
    return text


def load_family(path: str | Path, family: str | None = None) -> list[Entry]:
    """Read and validate one vocabulary file (``family:`` + ``entries:`` of ``{tag, text}``)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise VocabError(f"{path}: expected a mapping with an `entries:` list of {{tag, text}} items")
    declared = data.get("family")
    if family is not None and declared is not None and declared != family:
        raise VocabError(f"{path}: declares family {declared!r} but is read as {family!r}")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data["entries"], start=1):
        where = f"entry {i}"
        if isinstance(item, str):  # a bare tag is allowed: its text is the tag itself
            item = {"tag": item}
        if not isinstance(item, dict):
            raise VocabError(f"{path}: {where}: expected {{tag: ..., text: ...}}, got {item!r}")
        unknown = sorted(set(item) - {"tag", "text"})
        if unknown:
            raise VocabError(
                f"{path}: {where} ({item.get('tag')!r}): unknown field(s) {', '.join(unknown)} (allowed: tag, text)"
            )
        if "tag" not in item:
            raise VocabError(f"{path}: {where}: missing `tag`")
        tag = _clean_text(item["tag"], path, where, "tag")
        where = f"entry {i} ({tag!r})"
        text = _clean_text(item["text"], path, where, "text") if item.get("text") is not None else tag
        key = tag.casefold()
        if key in seen:
            raise VocabError(f"{path}: {where}: duplicate of entry {seen[key]} (tags are compared ignoring case)")
        seen[key] = i
        entries.append(Entry(tag, text))
    if not entries:
        raise VocabError(f"{path}: `entries:` is empty")
    return entries


def load_vocab(vocab_dir: str | Path = "") -> dict[str, list[Entry]]:
    """The three families from ``vocab_dir`` ("" = the bundled ``data/vocab``), validated.

    A tag may appear in only one family (the prompts stage must know what a tag is).
    """
    root = _vocab_dir(vocab_dir)
    vocab = {family: load_family(root / f"{family}.yaml", family) for family in FAMILIES}
    owner: dict[str, str] = {}
    for family, entries in vocab.items():
        for e in entries:
            other = owner.setdefault(e.tag.casefold(), family)
            if other != family:
                raise VocabError(
                    f"{root / (family + '.yaml')}: tag {e.tag!r} is also in {other}.yaml — "
                    "a tag may belong to one family only"
                )
    return vocab


def load_synonyms(vocab_dir: str | Path = "", vocab: dict[str, list[Entry]] | None = None) -> dict[str, list[str]]:
    """``synonyms.yaml`` of ``vocab_dir``: tag → 1–4 synonyms (used by 04_prompts), validated.

    Every key must be a tag of the vocabulary; a synonym may not repeat its tag or another synonym.
    """
    root = _vocab_dir(vocab_dir)
    vocab = vocab if vocab is not None else load_vocab(root)
    tags = {e.tag: e.tag for entries in vocab.values() for e in entries}
    folded = {t.casefold(): t for t in tags}
    path = root / "synonyms.yaml"
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise VocabError(f"{path}: expected a mapping of tag: [synonym, ...]")
    out: dict[str, list[str]] = {}
    for raw_tag, syns in data.items():
        tag = _clean_text(raw_tag, path, f"key {raw_tag!r}", "tag")
        if tag.casefold() not in folded:
            raise VocabError(f"{path}: {tag!r} is not a tag of {', '.join(f + '.yaml' for f in FAMILIES)}")
        tag = folded[tag.casefold()]
        where = f"{tag!r}"
        if isinstance(syns, str):
            syns = [syns]
        if not isinstance(syns, list) or not 1 <= len(syns) <= MAX_SYNONYMS:
            raise VocabError(f"{path}: {where}: expected a list of 1 to {MAX_SYNONYMS} synonyms, got {syns!r}")
        clean: list[str] = []
        for s in syns:
            s = _clean_text(s, path, where, "synonym")
            if s.casefold() == tag.casefold() or s.casefold() in (c.casefold() for c in clean):
                raise VocabError(f"{path}: {where}: synonym {s!r} repeats the tag or another synonym")
            if s.casefold() in folded:
                raise VocabError(
                    f"{path}: {where}: synonym {s!r} is itself a tag — two tags that mean the same "
                    "thing should be one entry"
                )
            clean.append(s)
        if tag in out:
            raise VocabError(f"{path}: {where}: listed twice")
        out[tag] = clean
    return out


@dataclass
class Lexicon:
    """Everything the prompts stage knows about words: tags per family, synonyms, artist names."""

    tags: dict[str, list[str]]  # family -> tags
    synonyms: dict[str, list[str]]  # tag -> synonyms
    artists: list[str] = field(default_factory=list)
    instrument_words: list[str] = field(default_factory=list)  # the general lexicon, beyond our tags

    def family_of(self, tag: str) -> str | None:
        for fam, tags in self.tags.items():
            if tag in tags:
                return fam
        return None

    def wordings(self, tag: str) -> list[str]:
        """The tag itself, then its synonyms."""
        return [tag] + list(self.synonyms.get(tag, []))


def _yaml_entry(path: Path, key: str, what: str) -> Any:
    """``key`` of the YAML mapping in ``path`` (None when the file is no mapping)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClipFactsError(f"{path}: cannot read {what} ({exc})") from exc
    return data.get(key) if isinstance(data, dict) else None


def load_artists(path: str | Path = ARTISTS_FILE) -> list[str]:
    path = Path(path)
    names = _yaml_entry(path, "artists", "the artist list")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ClipFactsError(
            f"{path}: expected `artists:` followed by a list of names (quote names YAML would read as numbers)"
        )
    return [" ".join(n.split()) for n in names]


def load_instrument_lexicon(path: str | Path = INSTRUMENT_LEXICON_FILE) -> list[str]:
    """The general instrument words (``data/vocab/instrument_lexicon.yaml``), lower case, unique."""
    path = Path(path)
    words = _yaml_entry(path, "words", "the instrument lexicon")
    if not isinstance(words, list) or not words:
        raise ClipFactsError(f"{path}: expected `words:` followed by a list of instrument words")
    bad = [w for w in words if not isinstance(w, (str, int)) or not str(w).strip()]
    if bad:
        raise ClipFactsError(f"{path}: entries that are not words: {bad[:5]}")
    return list(dict.fromkeys(" ".join(str(w).casefold().split()) for w in words))


def load_lexicon(vocab_dir: str | Path = "") -> Lexicon:
    """The vocabulary and synonyms of ``02_tag`` (same files, same validation), the artist list and
    the general instrument lexicon."""
    vocab = load_vocab(vocab_dir)
    synonyms = load_synonyms(vocab_dir, vocab)
    return Lexicon(
        tags={f: [e.tag for e in vocab[f]] for f in FAMILIES},
        synonyms=synonyms,
        artists=load_artists(),
        instrument_words=load_instrument_lexicon(),
    )


def known_tempo(meta: dict) -> float | None:
    t = meta.get("tempo")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 else None


def known_key(meta: dict) -> tuple[int, str] | None:
    pc = parse_key_name(meta.get("key"))
    scale = (meta.get("scale") or "").lower()
    return (pc, scale) if pc is not None and scale in ("major", "minor") else None


def clip_tags(meta: dict) -> list[str]:
    return [t for f in FAMILIES for t in meta.get(f"{f}_tags") or []]


def _by_id(rows: Iterable[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        if isinstance(r, dict) and r.get("clip_id") is not None:
            out.setdefault(str(r["clip_id"]), r)
    return out


def gather(run: Run, lexicon: Lexicon | None = None) -> list[dict]:
    """One record per ``ok`` clip: its segment fields + the card's metadata + what was missing.

    A producer's supplied tags and prompt (03's ``tags_supplied``/``prompt_supplied``, from a facts
    file) ride along in ``record["supplied"]``; supplied tags the vocabulary knows join the clip's
    tags in ``meta`` (:func:`place_supplied_tags`; ``lexicon`` is loaded when needed and not given).
    """
    seg_path = run.path(layout.SEGMENT, layout.SEGMENTS)
    if not seg_path.is_file():
        raise ClipFactsError(f"{seg_path}: missing — run notebook 01_segment first")
    # Only the fields a record needs are kept: 02's rows carry every tag's score (~15 KB each as
    # Python objects, ~600 MiB at 40,000 clips), of which a prompt uses the chosen tags.
    tag_fields = {"clip_id", "error", *(f"{f}_tags" for f in FAMILIES)}
    tk_fields = {"clip_id", "error", "tempo", "key", "scale", "tags_supplied", "prompt_supplied"}
    try:
        tags = _by_id(_only(r, tag_fields) for r in iter_jsonl(run.path(layout.TAG, layout.TAGS)))
        tk = _by_id(_only(r, tk_fields) for r in iter_jsonl(run.path(layout.TEMPO_KEY, layout.TEMPO_KEYS)))
        records = [_record(seg, tags, tk) for seg in iter_jsonl(seg_path) if _usable(seg)]
    except ValueError as exc:
        raise ClipFactsError(f"{run.root}: a JSONL input is not valid JSON ({exc})") from exc
    records.sort(key=lambda r: r["clip_id"])
    if any(r["supplied"]["tags"] for r in records):
        lexicon = lexicon or load_lexicon()
        for r in records:
            place_supplied_tags(r, lexicon)
    return records


def _tag_index(lexicon: Lexicon) -> dict[str, tuple[str, str]]:
    """Normalised wording (tag or synonym) → (family, tag); general instrument words → instruments."""
    norm = lambda w: " ".join(re.sub(r"[-/_]", " ", str(w).casefold()).split())  # noqa: E731
    index = {norm(w): ("instruments", w) for w in lexicon.instrument_words}
    for fam in FAMILIES:
        for tag in lexicon.tags[fam]:
            for w in lexicon.wordings(tag):
                index[norm(w)] = (fam, tag)
    return index


def place_supplied_tags(record: dict, lexicon: Lexicon) -> dict:
    """Add the record's supplied tags to its ``meta`` tags, in place: a vocabulary tag or one of its
    synonyms joins its family as the tag ("lofi" → genre "lo-fi"), a general instrument word joins
    the instruments; any other word has no family in the card's metadata and is listed in
    ``supplied["unplaced"]`` (it can go into a supplied prompt). ``supplied["placed"]`` lists the
    ``(family, tag)`` pairs added or already there."""
    sup = record["supplied"]
    index = _tag_index(lexicon)
    placed, unplaced = [], []
    for t in sup["tags"]:
        hit = index.get(" ".join(re.sub(r"[-/_]", " ", t.casefold()).split()))
        if hit is None:
            unplaced.append(t)
            continue
        fam, tag = hit
        tags = record["meta"][f"{fam}_tags"]
        if tag not in tags:
            tags.append(tag)
        placed.append([fam, tag])
    sup.update(placed=placed, unplaced=unplaced)
    return record


def _only(row: dict, fields: set[str]) -> dict:
    return {k: v for k, v in row.items() if k in fields} if isinstance(row, dict) else row


def _usable(seg: dict) -> bool:
    return seg.get("status") == "ok" and bool(seg.get("clip_id")) and bool(seg.get("path"))


def _record(seg: dict, tags: dict[str, dict], tk: dict[str, dict]) -> dict:
    cid = str(seg["clip_id"])
    missing = []
    t = tags.get(cid)
    if t is None or t.get("error"):
        missing.append("tags" if t is None else "tags (02_tag error)")
        t = {}
    k = tk.get(cid)
    if k is None or (k.get("error") and k.get("tempo") is None and k.get("key") is None):
        missing.append("tempo_key" if k is None else "tempo_key (03_tempo_key error)")
        k = k or {}
    meta = {f"{f}_tags": [str(x) for x in (t.get(f"{f}_tags") or [])] for f in FAMILIES}
    meta.update(key=k.get("key"), scale=k.get("scale"), tempo=k.get("tempo"))
    if known_key(meta) is None:
        meta.update(key=None, scale=None)
    meta.update(start=seg.get("start"), duration=seg.get("duration"))
    sup_tags = k.get("tags_supplied") if isinstance(k.get("tags_supplied"), list) else []
    prompt = k.get("prompt_supplied")
    supplied = {
        "tags": [str(t).strip() for t in sup_tags if str(t).strip()],
        "prompt": " ".join(prompt.split()) if isinstance(prompt, str) and prompt.strip() else None,
        "placed": [],
        "unplaced": [],
    }
    return {"clip_id": cid, "filepath": seg["path"], "meta": meta, "missing": missing, "supplied": supplied}


# ------------------------------------------------------------------------------------------------
# facts a producer supplies: BPM and key in a file name, or in a sidecar file (stage 03 reads both)

NAME_BPM_RANGE = (60.0, 200.0)  # a bare number in a file name is read as a tempo only in this range
_NAME_TOKEN_RE = re.compile(r"[^\s\-_\[\](){},;+&]+")
_BARE_NUMBER_RE = re.compile(r"(?<![\w.,#])(\d{2,3}(?:\.\d)?)(?![\w#%]|[.,]\d)")
_DATE_RE = re.compile(r"\d{1,4}[-./]\d{1,2}[-./]\d{1,4}")
# a number right after these words is a version, a take, a track…; right before these, a quantity
_NOT_TEMPO_BEFORE = re.compile(
    r"(?:\b(?:v|ver|version|take|tk|mix|part|pt|no|nr|track|trk|vol|volume|ep|episode|room|ch|chapter|"
    r"bar|bars|day|days|session|demo|draft|beat|idea|loop|sample|batch|pack|round|level|x)|#)\s*[.:]?\s*$",
    re.I,
)
_NOT_TEMPO_AFTER = re.compile(
    r"^\s*(?:k|khz|hz|kbps|kb|bit|bits|ms|s|sec|secs|min|mins|db|bars?|x|st|nd|rd|th|%|degrees?|"
    r"days?|hours?|years?)\b",
    re.I,
)
_TEMPO_RANGE_BEFORE = re.compile(r"(?<![\w#.])(?:[3-9]\d|[12]\d\d)\s*(?:-|–|to|/)\s*$", re.I)
_NOT_KEY_BEFORE = re.compile(
    r"\b(?:side|plan|part|take|version|ver|mix|track|option|type|vol|variant|alt|vitamin)\s*$", re.I
)
_NAME_BPM_FIRST_RE = re.compile(r"(?<![\w])bpm\s*[:=\-]?\s*(\d{2,3}(?:\.\d)?)(?![\w.])", re.I)
# a key written tight in a file name: "Ebmin", "f#m", "cmaj", "Abm" (whole token; "Cmaj7" is a chord)
_NAME_KEY_RE = re.compile(r"([A-Ga-g])([#♯♭b]|-?sharp|-?flat)?(major|minor|maj|min|m)?", re.I)
_TRACK_NUMBER_RE = re.compile(r"^\s*\d{1,3}\s*(?:[-.)]|_\s|\s-)")


@dataclass(frozen=True)
class NameFacts:
    """What a file name states: tempo, key and scale (None where it states none, or nothing sure),
    and ``refused``: what looked like a fact but was left alone, with the reason."""

    bpm: float | None = None
    key: str | None = None
    scale: str | None = None
    refused: tuple[str, ...] = ()


def _name_text(name: str) -> str:
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"\.(?=[A-Za-z0-9]{0,4}[A-Za-z])[A-Za-z0-9]{2,5}$", "", base)  # the extension
    return re.sub(r"[_()\[\]{}]", " ", base)


def _explicit_tempos(text: str) -> list[tuple[float, tuple[int, int]]]:
    """Tempi stated with a unit: "145bpm", "140 BPM", "BPM 92"; ranges ("140-150 bpm") excluded."""
    found = [(v, span) for v, _, span in find_tempos(text) if not _TEMPO_RANGE_BEFORE.search(text[: span[0]])]
    found += [(float(m.group(1)), m.span()) for m in _NAME_BPM_FIRST_RE.finditer(text)]
    return found


def _bare_tempos(text: str) -> list[tuple[float, tuple[int, int]]]:
    """Bare numbers that may be a tempo: 60–200, not in a date, not a version/take/track number,
    not a quantity ("44 kHz", "16 bars"), not a leading track number ("03 - ", "84. ")."""
    dates = [m.span() for m in _DATE_RE.finditer(text)]
    out = []
    for m in _BARE_NUMBER_RE.finditer(text):
        a, b = m.span(1)
        v = float(m.group(1))
        if any(x <= a < y for x, y in dates) or not NAME_BPM_RANGE[0] <= v <= NAME_BPM_RANGE[1]:
            continue
        if _NOT_TEMPO_BEFORE.search(text[:a]) or _NOT_TEMPO_AFTER.match(text[b:]):
            continue
        if a == len(text) - len(text.lstrip()) and _TRACK_NUMBER_RE.match(text):
            continue
        out.append((v, (a, b)))
    return out


def _name_tempo(text: str) -> tuple[float | None, tuple[int, int] | None, list[str]]:
    explicit = _explicit_tempos(text)
    in_range = [(v, s) for v, s in explicit if BPM_RANGE[0] <= v <= BPM_RANGE[1]]
    refused = [
        f"tempo {v:g} is outside {BPM_RANGE[0]:g}–{BPM_RANGE[1]:g} BPM" for v, _ in explicit if (v, _) not in in_range
    ]
    if re.search(r"(?<![\w#.])(?:[3-9]\d|[12]\d\d)\s*(?:-|–|to|/)\s*\d+(?:\.\d)?\s*-?\s*bpm", text, re.I):
        refused.append("a tempo range, not one tempo")
    values = sorted({v for v, _ in in_range})
    if len(values) > 1:
        return None, None, refused + [f"several tempi: {', '.join(f'{v:g}' for v in values)}"]
    if values:
        return values[0], in_range[0][1], refused
    if refused:
        return None, None, refused
    bare = _bare_tempos(text)
    values = sorted({v for v, _ in bare})
    if len(values) > 1:
        return None, None, [f"several numbers could be the tempo: {', '.join(f'{v:g}' for v in values)}"]
    return (values[0], bare[0][1], []) if values else (None, None, [])


def _tokens(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in _NAME_TOKEN_RE.finditer(text)]


def _key_token(tok: str) -> tuple[int, str, bool] | None:
    """A whole token that is a key: (pitch class, scale, strong). Strong: the scale is written
    ("min", "maj", "minor", "major"); weak: shorthand "Cm"/"f#m" or a bare note "A"/"Bb" (major)."""
    m = _NAME_KEY_RE.fullmatch(tok)
    if not m or (m.group(1).islower() and not m.group(2) and not m.group(3)):
        return None  # a lone lower-case letter is no key
    word = (m.group(3) or "").lower()
    if m.group(3) and word != "m" and m.group(3) != word and m.group(3) != m.group(3).capitalize():
        return None  # "MAJ"-like shouting is fine, "mAj" is not a key
    if m.group(3) == "M":
        return None  # capital M: major or minor? left alone
    if m.group(1).islower() and word == "m" and not m.group(2):
        return None  # "am", "em", "dm": English words and initials first
    scale = "minor" if word.startswith("min") or word == "m" else "major"
    return pitch_class(m.group(1), m.group(2)), scale, word not in ("", "m")


def _name_keys(text: str, bpm_span: tuple[int, int] | None, explicit_bpm: bool) -> tuple[list, list, list[str]]:
    """(strong keys, weak keys in a facts position, refused) of a file name's text; keys are
    ``(pitch class, scale)``. Weak keys count only next to the tempo ("84-Cm", "145bpm A") or, for the
    shorthand "Cm", as the name's last word; a bare note only next to a tempo with its unit."""
    toks = _tokens(text)
    where = {i for i, (_, a, b) in enumerate(toks) if bpm_span and a < bpm_span[1] and b > bpm_span[0]}
    near = {j for i in where for j in (i - 1, i + 1)}

    def index(pos: int) -> int:
        return next((i for i, (_, a, b) in enumerate(toks) if a <= pos < b), -1)

    strong, weak, refused, covered = [], [], [], set()
    # "key " in front: a name's "A minor …" is the key A minor unless a noun follows ("A minor thing")
    for m, pc, scale, written in _full_keys("key " + text):
        covered |= {index(p - 4) for p in range(m.start(), m.end())}
        (strong if written else weak).append(((pc, scale), index(m.start() - 4), "m"))
    for i, (tok, _, _) in enumerate(toks):
        k = _key_token(tok) if i not in covered and i not in where else None
        if k is not None:
            (strong if k[2] else weak).append(((k[0], k[1]), i, "m" if k[1] == "minor" else "note"))
    kept, rivals = [], []  # rivals: shorthand keys out of place, still enough to make a name unsure
    for key, i, kind in weak:
        ok = i in near if kind == "note" else (i in near or i == len(toks) - 1)
        if (kind == "note" and not explicit_bpm) or _NOT_KEY_BEFORE.search(text[: toks[i][1]]):
            ok = False
        if ok:
            kept.append(key)
        else:
            rivals += [key] if kind == "m" else []
            refused.append(f"{toks[i][0]!r} may be a word, not a key (not next to the tempo)")
    return [k for k, *_ in strong], kept, rivals, refused


def facts_from_name(name: str) -> NameFacts:
    """The BPM and key a producer wrote into a file name, or nothing where the name is not sure.

    ``"night drive 145bpm A.wav"`` → 145, A major; ``"Velvet_72BPM_Ebmin.wav"`` → 72, Eb minor;
    ``"cold_heart - B minor - 140 BPM.wav"``; ``"drill thing [78] Fmaj.wav"``; ``"late-84-Cm.wav"``.
    A tempo is a number with a unit (``bpm``/``BPM``, before or after), else the one bare number in
    60–200 that is no date, version, take, track number or quantity (``"44k"``, ``"24 bit"``). A key
    is a note with an accidental (``#``, ``♯``, ``sharp``, ``b``, ``♭``, ``flat``) and a scale
    (``m``, ``min``, ``minor``, ``maj``, ``major``); a bare note (``"A"``) is major, read only next to
    a tempo with its unit. Two different tempi or keys → none of them, and the reason in ``refused``.
    """
    text = _name_text(name)
    bpm, span, refused = _name_tempo(text)
    explicit = bool(span) and any(s == span for _, s in _explicit_tempos(text))
    strong, weak, rivals, key_refused = _name_keys(text, span, explicit)
    refused = refused + key_refused
    keys = sorted(set(strong)) or sorted(set(weak))
    if len(set(keys) | set(rivals)) > 1:
        names = ", ".join(f"{PC_NAME[pc]} {sc}" for pc, sc in sorted(set(keys) | set(rivals)))
        return NameFacts(bpm, None, None, tuple(refused + [f"several keys: {names}"]))
    key, scale = (PC_NAME[keys[0][0]], keys[0][1]) if keys else (None, None)
    return NameFacts(bpm, key, scale, tuple(refused))


FACTS_COLUMNS = ("file", "bpm", "key", "scale", "tags", "prompt")
_FILE_COLUMNS = ("file", "filename", "file_name", "name", "source", "path")


def parse_key_value(value: str) -> tuple[str, str] | None:
    """A key as a producer writes it in a key column: ``"F# minor"``, ``"F#m"``, ``"Ebmin"``,
    ``"Bb"`` (a bare note is major), ``"a minor"``, ``"C sharp major"`` → ``(tonic, scale)``; else None."""
    text = " ".join(str(value).split())
    m = re.fullmatch(r"([A-Ga-g])\s*([#♯♭b]|[\s-]?sharp|[\s-]?flat)?[\s-]*(major|minor|maj|min|m)?", text, re.I)
    if m and m.group(3) != "M":
        word = (m.group(3) or "").lower()
        return PC_NAME[pitch_class(m.group(1), m.group(2))], "minor" if word in ("m", "min", "minor") else "major"
    found = parse_key("key " + text)
    return found if found else None


def _facts_records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) of a CSV (a header with ``file``) or JSON (a list of objects with ``file``,
    or one object ``{file: {bpm, key, …}}``) facts file."""
    import csv

    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = [{"file": k, **(v if isinstance(v, dict) else {"_value": v})} for k, v in data.items()]
        if not isinstance(data, list):
            raise ClipFactsError(f"{path}: a JSON facts file is a list of objects or an object of objects")
        return [(f"entry {i + 1}", r if isinstance(r, dict) else {"_value": r}) for i, r in enumerate(data)]
    rows = list(csv.DictReader(text.splitlines()))
    return [
        (f"line {i + 2}", {str(k).strip().lower(): v for k, v in r.items() if k is not None})
        for i, r in enumerate(rows)
    ]


def _facts_record(rec: dict) -> tuple[str | None, dict, list[str]]:
    """(file, facts, problems) of one record; the file None when it names none."""
    rec = {str(k).strip().lower(): v for k, v in rec.items()}
    file = next((str(rec[c]).strip() for c in _FILE_COLUMNS if str(rec.get(c) or "").strip()), None)
    facts: dict = {}
    problems = []
    bpm = str(rec.get("bpm") or "").strip()
    if bpm:
        try:
            value = float(bpm.lower().replace("bpm", "").replace(",", ".").strip())
        except ValueError:
            problems.append(f"bpm {bpm!r} is not a number")
        else:
            if BPM_RANGE[0] <= value <= BPM_RANGE[1]:
                facts["bpm"] = value
            else:
                problems.append(f"bpm {bpm} is outside {BPM_RANGE[0]:g}–{BPM_RANGE[1]:g}")
    key = " ".join(str(rec.get(c) or "").strip() for c in ("key", "scale")).strip()
    if key:
        parsed = parse_key_value(key)
        if parsed is None:
            problems.append(f"key {key!r} is not a key (write e.g. 'F# minor', 'F#m', 'Eb major')")
        else:
            facts["key"], facts["scale"] = parsed
    tags = rec.get("tags")
    if isinstance(tags, str) and tags.strip():
        facts["tags"] = [t.strip() for t in re.split(r"[;|,]", tags) if t.strip()]
    elif isinstance(tags, list) and tags:
        facts["tags"] = [str(t).strip() for t in tags if str(t).strip()]
    if str(rec.get("prompt") or "").strip():
        facts["prompt"] = " ".join(str(rec["prompt"]).split())
    return file, facts, problems


def read_facts_file(path: str | Path) -> tuple[dict[str, dict], list[str]]:
    """A producer's sidecar of facts: file → ``{bpm, key, scale, tags, prompt}`` (only what it
    states), and one problem line per entry that could not be used whole (a missing file name, a BPM
    that is no number or outside 30–300, a key that is no key, the same file twice). A bad entry
    never stops the others. CSV: a header row with ``file`` (or ``filename``/``name``/``source``)
    and any of ``bpm, key, scale, tags, prompt``; JSON: a list of such objects or
    ``{"file name": {"bpm": …, "key": …}}``."""
    path = Path(path).expanduser()
    try:
        records = _facts_records(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ClipFactsError(f"{path}: cannot read the facts file ({type(exc).__name__}: {exc})") from exc
    facts: dict[str, dict] = {}
    problems = []
    for where, rec in records:
        file, found, bad = _facts_record(rec)
        if file is None:
            problems.append(f"{path.name} {where}: no file name (a 'file' column): ignored")
            continue
        if file in facts:
            problems.append(f"{path.name} {where}: {file!r} again: the first entry is used")
            continue
        problems += [f"{path.name} {where} ({file}): {p}: ignored" for p in bad]
        facts[file] = found
    return facts, problems
