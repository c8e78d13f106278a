"""Stage 04 — one human-readable prompt per clip, written by a local LLM and checked against the facts.

The logic behind ``notebooks/04_prompts.ipynb`` (its second half, the look at the tag space, is
:mod:`stablebeat_utils.tag_space`).

For every ``ok`` clip of ``01_segment`` the clip's metadata (tags of ``02_tag``, confident tempo
and key of ``03_tempo_key``) becomes a prompt in the StableBeaT card's style::

    A melancholic and love-inspired rap with soul beat at 109 BPM in G minor, using plucked
    guitar, synth bells, and movie sample.

1. **Synonyms.** Each tag is worded as itself or one of its synonyms
   (``data/vocab/synonyms.yaml``, read with :func:`stablebeat_utils.tag.load_synonyms`), chosen by
   a random generator seeded with ``(seed, clip_id)``: the same run always gives the same words,
   different clips get different words.
2. **LLM.** A local instruct model (Llama 3.2 3B Instruct by default; any chat model id, e.g. the
   ungated ``Qwen/Qwen2.5-3B-Instruct``) writes the prompt from the worded metadata, in batches
   with left padding. Offline, ``"tiny:llm"`` is a 2-layer random-weight Llama: its output is
   gibberish, so every prompt takes the fallback path — which is what CI exercises.
3. **Validation.** An LLM's prompt is accepted only if :func:`validate` finds nothing wrong:
   it states the confident BPM and key/scale when they are known, and no other number or key; it
   names no instrument, mood or genre of the whole vocabulary (tags and synonyms) that the clip
   was not tagged with; it names no artist; it fits T5's 128-token window (counted with the T5
   tokenizer the model will use). A prompt that teaches the model "140 BPM" on a 109 BPM clip is
   worse than no prompt at all.
4. **Fallback.** A rejected (or missing) LLM prompt is replaced by a template prompt built from
   the same metadata (:func:`template_prompt`, several templates in the card's style). The row says
   which path produced it (``prompt_source``: ``"llm"`` or ``"template"``) and why the LLM's was
   rejected (``reject_reason``).

5. **The producer's own words first.** A facts file (read by 03, carried in its rows as
   ``tags_supplied``/``prompt_supplied``) may give a clip's tags and a whole prompt. A supplied prompt
   **wins**: it is the clip's prompt (``prompt_source`` = ``"supplied"``), the LLM is not asked, and
   what :func:`validate` would object to is kept in ``supplied_notes``. Supplied tags join the clip's
   tags (and so the prompt and ``metadata.json``) when the vocabulary knows them or a synonym of them
   (:func:`stablebeat_utils.clipfacts.place_supplied_tags`); the others are listed
   (``tags_unplaced``, the summary's ``tags_unplaced``). :func:`supplied_table` is the lesson's list.

Limits of the validator (deliberate, documented in the notebook): it knows the words of the
vocabulary and synonyms, not every instrument word of English ("tuba" passes); numbers written
as words ("one hundred") are not read; a lower-case "a minor" is read as an article, not a key;
the artist check is a small list plus a heuristic (capitalised words that are not vocabulary
words are refused), so it refuses some innocent words ("Auto-Tune") and can miss lower-case names.
Plural forms of a vocabulary phrase count as the phrase; a phrase contained in a tagged phrase is
allowed ("trap" on a "cloud trap" clip).

Missing inputs: a clip without a ``02_tag`` row (or whose row has an ``error``) or without a
``03_tempo_key`` row still gets a prompt: a template from what exists (``missing`` lists what
was absent), never an LLM prompt (the LLM would have nothing to describe and invent).

Outputs (``RUN_DIR/04_prompts/``): ``prompts.jsonl`` — the card's ``{"filepath", "start",
"duration", "prompt"}`` + ``clip_id``, ``prompt_source``, ``reject_reason``, ``llm_output``,
``t5_tokens``, ``missing``, ``tags_supplied``, ``tags_unplaced``, ``supplied_notes``; ``metadata.json`` — the card's per-clip dict keyed by the clip's file
name; then :func:`tag_space.run` adds its plots and ``tag_space.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import layout
from . import clipfacts, preflight_inference
from .clipfacts import FAMILIES, T5_MAX_TOKENS, Lexicon, clip_tags, gather, load_lexicon
from .runs import JsonlLog, Run, atomic_write_json, read_jsonl
from . import stage
from .stage import begin

STAGE = layout.PROMPTS
CARD_FAMILIES = ("instruments", "genres", "moods")  # the card's metadata order; any other family follows
CARD_KEYS = (
    *(f"{f}_tags" for f in CARD_FAMILIES + tuple(f for f in FAMILIES if f not in CARD_FAMILIES)),
    *("key", "scale", "tempo", "start", "duration"),
)
PROMPTS_FORMAT = 3  # bumped when the rows change meaning; older rows are redone (3: supplied tags/prompt)


class PromptsError(ValueError):
    """A parameter or input that cannot be used; raised before any clip is processed."""


# --------------------------------------------------------------------------------------------
# vocabulary, synonyms, artists
# --------------------------------------------------------------------------------------------


def clip_rng(seed: int, clip_id: str) -> random.Random:
    """A generator that depends only on (seed, clip_id): stable across runs, resumes and orders."""
    digest = hashlib.sha256(f"{seed}:{clip_id}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def choose_wordings(meta: dict, lexicon: Lexicon, rng: random.Random) -> dict[str, list[str]]:
    """For each family, the clip's tags worded as the tag or one of its synonyms (seeded)."""
    return {f: [rng.choice(lexicon.wordings(t)) for t in meta.get(f"{f}_tags") or []] for f in FAMILIES}


# --------------------------------------------------------------------------------------------
# keys and tempo in text
# --------------------------------------------------------------------------------------------

# one reader of tempo and key in text, shared with 07_evaluate: stablebeat_utils/clipfacts.py
PITCH = clipfacts.PITCH
pitch_class = clipfacts.pitch_class
find_keys = clipfacts.find_keys


# --------------------------------------------------------------------------------------------
# vocabulary mentions
# --------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    """Lower case, hyphens and slashes as spaces, one space between words (for phrase matching)."""
    return " ".join(re.sub(r"[-/_]", " ", text.casefold()).split())


class Matcher:
    """Finds vocabulary phrases (tags and synonyms, plural forms included) in a text."""

    def __init__(self, lexicon: Lexicon):
        self.lexicon = lexicon
        phrase_tags: dict[str, set[str]] = {}
        for tags in lexicon.tags.values():
            for t in tags:
                for w in lexicon.wordings(t):
                    phrase_tags.setdefault(_norm(w), set()).add(t)
        self.phrase_tags = phrase_tags
        phrases = sorted(phrase_tags, key=len, reverse=True)  # longest first: "cloud trap" before "trap"
        self._rx = re.compile(r"(?<![\w&])(" + "|".join(re.escape(p) for p in phrases) + r")(?:s|es)?(?![\w&])")
        self.words = {w for p in phrase_tags for w in re.findall(r"[\w&]+", p)}
        general = sorted({_norm(w) for w in lexicon.instrument_words} - set(phrase_tags), key=len, reverse=True)
        self._general_rx = (
            re.compile(r"(?<![\w&])(" + "|".join(re.escape(p) for p in general) + r")(?:s|es)?(?![\w&])")
            if general
            else None
        )
        self.words |= {w for p in general for w in re.findall(r"[\w&]+", p)}

    def find_general(self, masked: str) -> list[str]:
        """Instrument words of the general lexicon in a text whose vocabulary phrases are blanked."""
        return [m.group(1) for m in self._general_rx.finditer(masked)] if self._general_rx else []

    def find(self, text: str) -> tuple[list[tuple[str, set[str]]], str]:
        """(matched phrases with their tags, the normalised text with the matches blanked)."""
        norm = _norm(text)
        found = [(m.group(1), self.phrase_tags[m.group(1)]) for m in self._rx.finditer(norm)]
        return found, self._rx.sub(" § ", norm)

    def allowed(self, phrase: str, tags: set[str], clip_tags: Iterable[str]) -> bool:
        """A phrase is allowed if one of its tags is the clip's, or it lies inside a wording of one."""
        clip_tags = set(clip_tags)
        if tags & clip_tags:
            return True
        pat = re.compile(r"(?<![\w&])" + re.escape(phrase) + r"(?![\w&])")
        return any(pat.search(_norm(w)) for t in clip_tags for w in self.lexicon.wordings(t))


# --------------------------------------------------------------------------------------------
# the validator
# --------------------------------------------------------------------------------------------

_ALLOWED_CAPS = {
    "i",
    "bpm",
    "major",
    "minor",
    "key",
    "tempo",
    "beats",
    "per",
    "minute",
    "in",
    "at",
    "with",
    "b.p.m",
    "b.p.m.",
    "uk",
    "r&b",
    "rnb",
    "dj",
}


def count_t5_tokens(t5_tokenizer, text: str) -> int:
    """Tokens T5 sees (with its end-of-sequence token), as stable-audio-tools' T5Conditioner counts."""
    return len(t5_tokenizer(text)["input_ids"])


def _form_problems(text: str) -> list[str]:
    problems = []
    if "\n" in text:
        problems.append("more than one line")
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.8 * len(text):
        problems.append("mostly not words")
    return problems


def _vocabulary_problems(found, masked: str, tags: list[str], matcher: Matcher, lexicon: Lexicon) -> list[str]:
    """Whole vocabulary + synonyms, against the clip's tags."""
    problems = []
    for phrase, ptags in found:
        if not matcher.allowed(phrase, ptags, tags):
            fam = sorted({lexicon.family_of(t) or "?" for t in ptags})
            problems.append(f"names {'/'.join(f.rstrip('s') for f in fam)} {phrase!r} the clip was not tagged with")
    if tags and not any(matcher.allowed(p, t, tags) for p, t in found):
        problems.append("names none of the clip's tags")
    for word in matcher.find_general(masked):  # "sitar", "tuba": instruments beyond our tags
        if not matcher.allowed(word, set(), tags):
            problems.append(f"names instrument {word!r} the clip was not tagged with")
    return problems


def _tempo_problems(meta: dict, masked: str) -> list[str]:
    problems = []
    tempo = clipfacts.known_tempo(meta)
    stated = [v for v, _, _ in clipfacts.find_tempos(masked)]
    numbers = [v for v, _, _ in clipfacts.find_numbers(masked)]
    if tempo is None:
        for n in numbers:
            problems.append(f"states a number ({n:g}) although the clip's tempo is not known")
    else:
        ok = lambda v: abs(v - tempo) <= 0.5  # noqa: E731 — "109 BPM" for 109.4
        if not any(ok(v) for v in stated):
            problems.append(f"does not state the tempo ({tempo:g} BPM)")
        for n in numbers:
            if not ok(n):
                problems.append(f"states a number ({n:g}) other than the tempo ({tempo:g} BPM)")
    return problems


def _key_problems(meta: dict, text: str) -> list[str]:
    problems = []
    key = clipfacts.known_key(meta)
    claims = find_keys(text)
    if key is None:
        for _, _, said in claims:
            problems.append(f"names a key ({said.strip()!r}) although the clip's key is not known")
    else:
        pc, scale = key
        for cpc, cscale, said in claims:
            if (cpc is not None and cpc != pc) or (cscale is not None and cscale != scale):
                problems.append(f"names a key ({said.strip()!r}) other than the clip's ({meta.get('key')} {scale})")
        if not any(cpc == pc and cscale == scale for cpc, cscale, _ in claims):
            problems.append(f"does not state the key ({meta.get('key')} {scale})")
    return problems


def _name_problems(text: str, lexicon: Lexicon, matcher: Matcher) -> list[str]:
    """Artists: the list, then capitalised words that are not vocabulary words."""
    problems = []
    low = _norm(text)
    for name in lexicon.artists:
        if re.search(r"(?<![\w&])" + re.escape(_norm(name)) + r"(?![\w&])", low):
            problems.append(f"names an artist ({name})")
    key_spans = clipfacts.key_spans(text) + [span for _, _, span in clipfacts.find_tempos(text)]
    for sentence in re.split(r"(?<=[.!?:;])\s+", text):
        tokens = list(re.finditer(r"[A-Za-z][\w'’.&]*", sentence))
        for tok in tokens[1:]:
            w = tok.group(0).rstrip(".")
            if not w[:1].isupper():
                continue
            parts = [p for p in re.split(r"[-'’.]", w.casefold()) if p]
            if all(p in matcher.words or p in _ALLOWED_CAPS for p in parts):
                continue
            if re.fullmatch(r"[A-G](?:#|b)?m?", w):
                continue
            start = text.find(sentence) + tok.start()
            if any(a <= start < b for a, b in key_spans):
                continue
            problems.append(f"a capitalised word that may be a name ({w!r})")
    return problems


def validate(
    prompt: str,
    meta: dict,
    lexicon: Lexicon,
    matcher: Matcher | None = None,
    t5_tokenizer=None,
    max_tokens: int = T5_MAX_TOKENS,
) -> list[str]:
    """Everything wrong with ``prompt`` for this clip; an empty list means accepted.

    ``meta`` holds the clip's ``*_tags`` lists and the confident ``tempo``/``key``/``scale`` (None
    when not confident). See the module docstring for the rules and their limits.
    """
    matcher = matcher or Matcher(lexicon)
    text = (prompt or "").strip()
    words = re.findall(r"[A-Za-z]+", text)
    if len(words) < 4:
        return [f"not a sentence ({len(words)} word(s))"]
    found, masked = matcher.find(text)
    problems = _form_problems(text)
    problems += _vocabulary_problems(found, masked, clip_tags(meta), matcher, lexicon)
    problems += _tempo_problems(meta, masked)
    problems += _key_problems(meta, text)
    problems += _name_problems(text, lexicon, matcher)
    # -- length, as T5 counts it
    if t5_tokenizer is not None:
        n = count_t5_tokens(t5_tokenizer, text)
        if n > max_tokens:
            problems.append(f"too long for T5 ({n} > {max_tokens} tokens)")
    return list(dict.fromkeys(problems))


# What instruct models (Llama 3.x, Qwen 2.5) wrap around the prompt they were asked for; a corpus of
# real-style answers is in tests/data/llm_answers.yaml.
_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_REFUSAL_RE = re.compile(
    r"^(?:i\s+can(?:'|’)?t\b|i\s+cannot\b|i\s+can\s+not\b|i(?:'|’)m\s+sorry\b|i\s+am\s+sorry\b|sorry\b|"
    r"i\s+apologi[sz]e\b|as\s+an\s+ai\b|i(?:'|’)m\s+(?:not\s+able|unable)\b|i\s+am\s+(?:not\s+able|unable)\b|"
    r"i\s+won(?:'|’)t\b|i\s+will\s+not\b|unfortunately\b)",
    re.I,
)
_INTERJECTION_RE = re.compile(
    r"^(?:sure(?:\s+thing)?|certainly|of\s+course|absolutely|okay|ok|great|alright|all\s+right|no\s+problem|"
    r"(?:i(?:'|’)d|i\s+would|i(?:'|’)m|i\s+am)\s+(?:be\s+)?(?:happy|glad)\s+to\s+help(?:\s+with\s+that)?|"
    r"happy\s+to\s+help|here\s+you\s+go)\b[\s!.,:;—-]*",
    re.I,
)
# the words of a label or an introduction before a colon: "Here is a prompt for your beat:", "Option 2:"
_PREAMBLE_HEAD_RE = re.compile(
    r"\b(?:here|here(?:'|’)s|prompt|prompts|option|options|assistant|answer|output|"
    r"caption|description|version|suggestion|result|text)\b",
    re.I,
)
_LABEL_ONLY_RE = re.compile(
    r"^(?:(?:text|final|your|the|a)\s+)?(?:prompt|option|answer|output|result|caption|version)s?"
    r"(?:\s*#?\d+)?[.!]?$",
    re.I,
)
_LIST_MARK_RE = re.compile(r"^(?:[#>]+\s*|[-*•]\s+|\(?\d{1,2}[.)]\s+|\(?[a-c][.)]\s+)")
_COMMENTARY_RE = re.compile(
    r"^(?:this\s+(?:prompt|description|sentence|text|one|captures|highlights|conveys|version|keeps|includes|"
    r"uses|mentions|reflects|combines|emphasi[sz]es)|that\s+(?:prompt|captures)|the\s+prompt\b|i\s|i(?:'|’)|"
    r"note\b|explanation\b|let\s+me\s+know|feel\s+free|hope\s|tempo\s+and\s+key\s+(?:are|were)|\()",
    re.I,
)
_EMOJI_RE = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f]")


def _unwrap(line: str) -> str:
    """A line without markdown marks, list numbers and surrounding quotes."""
    prev = None
    while prev != line:
        prev = line
        line = _LIST_MARK_RE.sub("", line.strip())
        line = re.sub(r"(\*\*|__|\*|`)", "", line).strip()
        if len(line) >= 2 and line[0] in "\"“'‘" and line[-1] in "\"”'’":
            line = line[1:-1].strip()
    return line


def _drop_preamble(line: str) -> str:
    """ "Sure! Here is a prompt: X" → "X"; "Prompt 1: X" → "X"; "Here is a prompt for your beat:" → ""."""
    prev = None
    while prev != line:
        prev = line
        line = _INTERJECTION_RE.sub("", line).strip()
        head, colon, rest = line.partition(":")
        if colon and len(head) <= 120 and _PREAMBLE_HEAD_RE.search(head) and not re.search(r"\d\s*bpm", head, re.I):
            line = rest.strip()
        line = _unwrap(line)
    return line


def _drop_commentary(prompt: str) -> str:
    """The prompt without what follows it on its line: "…hi-hats. This prompt captures…" → "…hi-hats."."""
    prompt = re.sub(r"\s*\((?:about\s+|~)?\d+\s+words?\)", "", prompt)
    sentences = re.split(r"(?<=[.!?])\s+", prompt)
    keep = []
    for s in sentences:
        if keep and _COMMENTARY_RE.match(_unwrap(s)):
            break
        keep.append(s)
    return " ".join(keep).strip()


def clean_llm_answer(text: str) -> tuple[str, str | None]:
    """(the bare prompt in a model's answer, why there is none or None).

    Drops what instruct models wrap around it: reasoning in ``<think>`` tags, interjections and
    introductions ("Sure! Here is a prompt:", "Here is a prompt for your beat:" on its own line),
    labels ("Prompt:", "**Option 1:**"), markdown (bold, headings, bullets, numbered options —
    the first option is taken), quotes and backticks, emoji, and what follows the prompt (an
    explanation, "Let me know…", "(34 words)"). A refusal ("I can't…", "I'm sorry…", "As an AI…")
    gives no prompt. The result still goes through :func:`validate`.
    """
    text = _THINK_RE.sub("", text or "")
    text = _EMOJI_RE.sub("", text).strip()
    if not text:
        return "", "empty answer"
    lines = [ln for ln in (_unwrap(x) for x in text.splitlines()) if ln]
    if lines and (_REFUSAL_RE.match(lines[0]) or _REFUSAL_RE.match(_INTERJECTION_RE.sub("", lines[0]))):
        return "", "the model refused"
    for line in lines:
        cand = _drop_preamble(line)
        if not cand or cand.endswith(":") or _LABEL_ONLY_RE.match(cand):
            continue  # an introduction or a heading on its own line: the prompt is on the next one
        if _REFUSAL_RE.match(cand):
            return "", "the model refused"
        cand = " ".join(_drop_commentary(cand).split())
        return cand, (None if cand else "no prompt in the answer")
    return "", "no prompt in the answer"


def clean_llm_output(text: str) -> str:
    """The bare prompt of a model's answer ("" when there is none): :func:`clean_llm_answer`."""
    return clean_llm_answer(text)[0]


# --------------------------------------------------------------------------------------------
# templates (the card's style)
# --------------------------------------------------------------------------------------------


def join_words(items: Sequence[str], conj: str = "and") -> str:
    """["a"] → "a"; ["a", "b"] → "a and b"; ["a", "b", "c"] → "a, b, and c" (the card's comma)."""
    items = [i for i in items if i]
    if len(items) <= 2:
        return f" {conj} ".join(items)
    return ", ".join(items[:-1]) + f", {conj} " + items[-1]


def _article(word: str) -> str:
    """ "A" or "An" by the sound the phrase starts with: "an alluring", "an 808", "an R&B", "a UK drill",
    "a euphoric", "a one-shot"."""
    w = word.strip().casefold()
    if re.match(r"(?:eu|uni|use|usu|uti|one\b|once|uk\b|u\b|ufo|ukulele|uke\b)", w):
        return "A"
    if re.match(r"(?:hour|honest|honou?r|heir|8|11\b|18\b|r&b|rnb|mc\b|fm\b|mp3|sfx)", w):
        return "An"
    return "An" if re.match(r"[aeiou]", w) else "A"


def _tidy(text: str) -> str:
    """One space between words, no word twice in a row ("a dark dark trap beat", "chill rap beat beat")."""
    text = " ".join(text.split())
    return re.sub(r"(?i)\b([\w&'-]+)(?:\s+\1\b)+", r"\1", text)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _tpl_using(p):  # "A melancholic and love rap with soul beat at 109 BPM in G minor, using a, b, and c."
    head = " ".join(x for x in (p["moods"], p["genre"], "beat") if x)
    s = f"{_article(head)} {head}{p['bpm']}{p['key']}"
    return s + (f", using {p['instruments']}." if p["instruments"] else ".")


def _tpl_featuring(p):  # "A jazzy chillhop beat at 101 BPM featuring a, b, and c, with chill moods."
    head = " ".join(x for x in (p["genre"], "beat") if x)
    s = f"{_article(head)} {head}{p['bpm']}{p['key']}"
    if p["instruments"]:
        s += f" featuring {p['instruments']}"
    if p["moods"]:
        s += f", with {p['moods']} moods"
    return s + "."


def _tpl_with(p):  # "Melancholic trap beat at 105 BPM in A minor with a and b."
    head = " ".join(x for x in (p["moods"], p["genre"], "beat") if x)
    s = f"{_cap(head)}{p['bpm']}{p['key']}"
    return s + (f" with {p['instruments']}." if p["instruments"] else ".")


def _tpl_evoking(p):  # "A cloud trap beat with a and b, evoking a dark and moody mood, at 100 BPM."
    head = " ".join(x for x in (p["genre"], "beat") if x)
    s = f"{_article(head)} {head}"
    if p["instruments"]:
        s += f" with {p['instruments']}"
    if p["moods"]:
        s += f", evoking {_article(p['moods']).lower()} {p['moods']} mood"
    tail = f"{p['bpm']}{p['key']}"
    return s + ("," + tail if tail and (p["instruments"] or p["moods"]) else tail) + "."


def _tpl_instrumental(p):  # "A smooth neo-soul instrumental in D major at 90 BPM, built on a, b, and c."
    head = " ".join(x for x in (p["moods"], p["genre"], "instrumental") if x)
    s = f"{_article(head)} {head}{p['key']}{p['bpm']}"
    return s + (f", built on {p['instruments']}." if p["instruments"] else ".")


TEMPLATES = (_tpl_using, _tpl_featuring, _tpl_with, _tpl_evoking, _tpl_instrumental)


def _format_key(meta: dict) -> str:
    return f"{meta['key']} {meta['scale'].lower()}" if clipfacts.known_key(meta) else ""


def _format_tempo(meta: dict) -> str:
    t = clipfacts.known_tempo(meta)
    return f"{round(t)}" if t is not None else ""


def template_prompt(
    meta: dict,
    lexicon: Lexicon,
    rng: random.Random,
    t5_tokenizer=None,
    max_tokens: int = T5_MAX_TOKENS,
    wordings: dict | None = None,
) -> str:
    """A prompt from the clip's metadata in one of :data:`TEMPLATES` (chosen by ``rng``).

    Tags are worded with ``wordings`` (or a fresh :func:`choose_wordings`); instruments are dropped
    from the end until the prompt fits T5's window.
    """
    w = wordings or choose_wordings(meta, lexicon, rng)
    tpl = TEMPLATES[rng.randrange(len(TEMPLATES))]
    if not any(w.values()):  # nothing but tempo/key: "A beat at 109 BPM in G minor."
        tpl = _tpl_using
    tempo, key = _format_tempo(meta), _format_key(meta)
    instruments = list(w["instruments"])
    while True:
        parts = {
            "moods": join_words(w["moods"]),
            "genre": join_words(w["genres"]),
            "instruments": join_words(instruments),
            "bpm": f" at {tempo} BPM" if tempo else "",
            "key": f" in {key}" if key else "",
        }
        text = _tidy(tpl(parts))
        if t5_tokenizer is None or count_t5_tokens(t5_tokenizer, text) <= max_tokens or not instruments:
            return text
        instruments.pop()


# --------------------------------------------------------------------------------------------
# the LLM
# --------------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You write one-sentence text prompts for a music generation model, from a beat's metadata. "
    "Use only the facts given. If a tempo is given, state it exactly as 'N BPM'; if a key is given, "
    "state it exactly as given (e.g. 'G minor'); if either is missing, say nothing about it. Mention "
    "only the listed genres, moods and instruments, using the listed words; add no other instrument, "
    "genre, mood, number, key, artist or producer name. Answer with the prompt only, one sentence, "
    "under 40 words."
)
EXAMPLE_META = {
    "genres": ["rap with soul"],
    "moods": ["melancholic", "love"],
    "instruments": ["plucked guitar", "synth bells", "movie sample"],
    "tempo": "109",
    "key": "G minor",
}
EXAMPLE_PROMPT = (
    "A melancholic and love-inspired rap with soul beat at 109 BPM in G minor, using plucked "
    "guitar, synth bells, and movie sample."
)


def describe(words: dict[str, list[str]], tempo: str, key: str) -> str:
    lines = [f"{f}: {', '.join(words[f]) or '(none)'}" for f in ("genres", "moods", "instruments")]
    lines.append(f"tempo: {tempo + ' BPM' if tempo else '(not known: do not mention)'}")
    lines.append(f"key: {key or '(not known: do not mention)'}")
    return "\n".join(lines)


def chat_messages(words: dict[str, list[str]], tempo: str, key: str) -> list[dict]:
    """A system message, one worked example from the card, then the clip's metadata."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": describe(EXAMPLE_META, EXAMPLE_META["tempo"], EXAMPLE_META["key"])},
        {"role": "assistant", "content": EXAMPLE_PROMPT},
        {"role": "user", "content": describe(words, tempo, key)},
    ]


def generate_batch(
    tokenizer,
    model,
    conversations: list[list[dict]],
    generation_length: int,  # new tokens
    temperature: float,
    seed: int,
) -> list[str]:
    """One batched ``generate`` (left padding) over chat conversations; the decoded answers."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    gen: dict[str, Any] = {"max_new_tokens": generation_length, "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        gen.update(do_sample=True, temperature=temperature, top_p=0.9)
    else:
        gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**batch, **gen)
    new = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def card_metadata(meta: dict) -> dict:
    """Exactly the card's keys, in the card's order."""
    return {k: meta.get(k) for k in CARD_KEYS}


def _meta_hash(meta: dict, supplied_prompt: str | None = None) -> str:
    payload = card_metadata(meta) if supplied_prompt is None else [card_metadata(meta), supplied_prompt]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _rec_hash(rec: dict) -> str:
    """What a row was made from: the card's metadata (supplied tags placed) and a supplied prompt."""
    return _meta_hash(rec["meta"], (rec.get("supplied") or {}).get("prompt"))


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


def _validate_params(p: dict) -> None:
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    if p["n_clusters"] == 1:
        raise PromptsError(f"n_clusters={p['n_clusters']}: 0 (choose by silhouette) or at least 2")


def _fingerprint(p: dict, lexicon: Lexicon) -> str:
    keys = (
        "llm_model",
        "t5_model",
        "use_llm",
        "quantization",
        "batch_size",
        "generation_length",
        "temperature",
        "seed",
        "t5_max_length",
    )
    payload = {k: p[k] for k in keys}
    payload.update(
        format=PROMPTS_FORMAT,
        tags=lexicon.tags,
        synonyms=lexicon.synonyms,
        artists=lexicon.artists,
        instrument_words=lexicon.instrument_words,
        system=SYSTEM_PROMPT,
        example=EXAMPLE_PROMPT,
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_log(out: Path, fingerprint: str, records: list[dict]) -> JsonlLog:
    """Open prompts.jsonl keeping only rows made with these parameters from today's metadata."""
    want = {r["clip_id"]: _rec_hash(r) for r in records}
    rows = read_jsonl(out) if out.exists() else []
    keep = [r for r in rows if r.get("fingerprint") == fingerprint and want.get(r.get("clip_id")) == r.get("meta_hash")]
    if len(keep) != len(rows):
        from .runs import atomic_write_text

        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    return JsonlLog(out)


def _row(
    rec: dict,
    prompt: str,
    source: str,
    reason: str | None,
    llm_output: str | None,
    t5_tokens: int | None,
    fingerprint: str,
) -> dict:
    m = rec["meta"]
    sup = rec.get("supplied") or {}
    return {
        "filepath": rec["filepath"],
        "start": m.get("start"),
        "duration": m.get("duration"),
        "prompt": prompt,
        "clip_id": rec["clip_id"],
        "prompt_source": source,
        "reject_reason": reason,
        "llm_output": llm_output,
        "t5_tokens": t5_tokens,
        "missing": rec["missing"],
        "tags_supplied": sup.get("tags") or None,
        "tags_unplaced": sup.get("unplaced") or None,
        "supplied_notes": None,
        "meta_hash": _rec_hash(rec),
        "fingerprint": fingerprint,
    }


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _wordings(batch: list[dict], seed: int, lexicon: Lexicon) -> list[tuple[dict, random.Random, dict]]:
    """``(record, rng, words)`` per clip: its own random stream (from the seed and its id) and its words."""
    prepared = []
    for rec in batch:
        rng = clip_rng(seed, rec["clip_id"])
        words = choose_wordings(rec["meta"], lexicon, rng)
        prepared.append((rec, rng, words))
    return prepared


def _load_llm(llm_model: str, device: str, quantization: str):
    """``(tokenizer, model)`` of the chat LLM, loaded on the first batch that asks it."""
    from . import models

    return models.load_chat_llm(llm_model, device=device, quantization=quantization or None)


def _ask_llm(llm, asked: list[tuple], seed: int, generation_length: int, temperature: float) -> dict[str, str]:
    """One batched LLM call for the clips ``asked``: clip_id → the model's raw answer."""
    convs = [chat_messages(w, _format_tempo(r["meta"]), _format_key(r["meta"])) for r, _, w in asked]
    # the batch's seed depends on its first clip only: a resumed run redoes the same batches
    bseed = int.from_bytes(hashlib.sha256(f"{seed}:{asked[0][0]['clip_id']}".encode()).digest()[:4], "big")
    raw = generate_batch(*llm, convs, generation_length, temperature, bseed)
    return {r["clip_id"]: a for (r, _, _), a in zip(asked, raw)}


def _batch_rows(
    prepared: list[tuple],
    answers: dict[str, str],
    use_llm: bool,
    lexicon: Lexicon,
    matcher: Matcher,
    t5_tok,
    t5_max_length: int,
    fingerprint: str,
) -> list[dict]:
    """The rows of one batch: the LLM's answer where it passes :func:`validate`, else a template prompt."""
    rows = []
    for rec, rng, words in prepared:
        cid = rec["clip_id"]
        supplied = (rec.get("supplied") or {}).get("prompt")
        if supplied:  # the producer's own prompt wins; what the validator says of it is kept as notes
            row = _row(rec, supplied, "supplied", None, None, count_t5_tokens(t5_tok, supplied), fingerprint)
            notes = validate(supplied, rec["meta"], lexicon, matcher, t5_tok, t5_max_length)
            rows.append({**row, "supplied_notes": "; ".join(notes) or None})
            continue
        if cid in answers:
            cand, why = clean_llm_answer(answers[cid])
            problems = [why] if why else validate(cand, rec["meta"], lexicon, matcher, t5_tok, t5_max_length)
            if not problems:
                rows.append(_row(rec, cand, "llm", None, answers[cid], count_t5_tokens(t5_tok, cand), fingerprint))
                continue
            reason = "; ".join(problems)
        elif not use_llm:
            reason = "use_llm=False"
        else:
            reason = f"missing {', '.join(rec['missing'])}: LLM not asked"
        text = template_prompt(rec["meta"], lexicon, rng, t5_tok, t5_max_length, wordings=words)
        rows.append(_row(rec, text, "template", reason, answers.get(cid), count_t5_tokens(t5_tok, text), fingerprint))
    return rows


def _write_metadata(out_dir: Path, records: list[dict], log: JsonlLog) -> list[dict]:
    """Finalise prompts.jsonl, write metadata.json (the card's per-clip dict); the rows of today's clips."""
    wanted = {r["clip_id"] for r in records}
    rows = [r for r in log.finalize() if r["clip_id"] in wanted]
    by_id = {r["clip_id"]: r for r in records}
    metadata = {Path(r["filepath"]).name: card_metadata(by_id[r["clip_id"]]["meta"]) for r in rows}
    atomic_write_json(out_dir / layout.METADATA, metadata)
    return rows


def _llm_counts(rows: list[dict]) -> dict:
    """How the LLM did: asked, accepted, refused, unwrapped, and the commonest reasons for a template."""
    asked_n = sum(1 for r in rows if r["prompt_source"] == "llm" or (r["llm_output"] is not None))
    accepted = sum(1 for r in rows if r["prompt_source"] == "llm")
    reasons = Counter()
    for r in rows:
        if r["prompt_source"] == "template" and r["llm_output"] is not None:
            for part in (r["reject_reason"] or "").split("; "):
                reasons[re.sub(r"\(.*?\)|'.*?'", "(value)", part)] += 1
    return {
        "llm_asked": asked_n,
        "llm_accepted": accepted,
        "acceptance_rate": round(accepted / asked_n, 4) if asked_n else None,
        "llm_refused": sum(
            1
            for r in rows
            if r["prompt_source"] == "template"
            and r["llm_output"] is not None
            and r["reject_reason"] == "the model refused"
        ),
        "llm_unwrapped": sum(1 for r in rows if r["prompt_source"] == "llm" and r["prompt"] != r["llm_output"].strip()),
        "template": sum(1 for r in rows if r["prompt_source"] == "template"),
        "prompt_supplied": sum(1 for r in rows if r["prompt_source"] == "supplied"),
        "tags_supplied": sum(1 for r in rows if r.get("tags_supplied")),
        "tags_unplaced": sorted({t for r in rows for t in r.get("tags_unplaced") or []}),
        "missing_inputs": sum(1 for r in rows if r["missing"]),
        "top_reject_reasons": dict(reasons.most_common(5)),
    }


@stage.entry(STAGE, PromptsError)
def run(
    run_dir: str,
    profile: str,
    llm_model: str,
    t5_model: str,
    use_llm: bool,
    quantization: str,
    batch_size: int,
    generation_length: int,
    temperature: float,
    seed: int,
    device: str,
    t5_max_length: int,
    n_clusters: int,
    rare_tag_percent: float,
) -> dict:
    """Write ``04_prompts/prompts.jsonl`` + ``metadata.json``, then the tag-space analysis.

    Resumable: rows are appended one batch at a time and kept across runs when they were made with
    the same parameters from the same metadata; a killed run goes on where it stopped.
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    from tqdm.auto import tqdm

    from . import models, tag_space

    _validate_params(params)
    records = gather(run_)
    lexicon = load_lexicon()
    matcher = Matcher(lexicon)
    fingerprint = _fingerprint(params, lexicon)
    out_dir = run_.stage_dir(STAGE)
    out_path = out_dir / layout.PROMPT_ROWS
    t0 = time.perf_counter()

    log = _prepare_log(out_path, fingerprint, records)
    todo = [r for r in records if r["clip_id"] not in log]
    preflight_inference.check_prompts(  # before any model loads; a finished stage loads no LLM
        device,
        llm_model,
        quantization,
        batch_size,
        generation_length,
        t5_model,
        use_llm and bool(todo),
        error=PromptsError,
    )
    t5_tok, t5_enc = models.load_t5_encoder(t5_model, device=models.pick_device(device))
    device_used = models.pick_device(device)
    llm = None
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="prompts", unit="clip") as bar:
        for batch in _batches(todo, batch_size):
            prepared = _wordings(batch, seed, lexicon)
            asked = [p for p in prepared if use_llm and not p[0]["missing"] and not p[0]["supplied"]["prompt"]]
            answers: dict[str, str] = {}
            if asked:
                if llm is None:
                    llm = _load_llm(llm_model, device_used, quantization)
                answers = _ask_llm(llm, asked, seed, generation_length, temperature)
            rows = _batch_rows(prepared, answers, use_llm, lexicon, matcher, t5_tok, t5_max_length, fingerprint)
            log.append(*rows)  # one write per batch: a resumed run never splits a batch
            bar.update(len(batch))
    llm = None

    rows = _write_metadata(out_dir, records, log)
    counts = _llm_counts(rows)
    space = tag_space.run(
        run_dir,
        t5_model=t5_model,
        n_clusters=n_clusters,
        rare_tag_percent=rare_tag_percent,
        seed=seed,
        device=device,
        t5=(t5_tok, t5_enc),
        lexicon=lexicon,
    )
    summary = {
        "clips": len(rows),
        **counts,
        "llm_model": llm_model if use_llm else None,
        "t5_model": t5_model,
        "device": device_used,
        "seconds": round(time.perf_counter() - t0, 2),
        "prompts": run_.rel(out_path),
        "metadata": run_.rel(out_dir / layout.METADATA),
        "tag_space": space,
    }
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def supplied_table(rows: Sequence[dict]) -> list[dict]:
    """What the producer supplied (a facts file's ``tags``/``prompt``, carried by 03) and what 04 did
    with it, one row per clip that had any: the supplied tags, those without a family in the
    vocabulary (left out of the metadata), whether the prompt is the supplied one, and the
    validator's notes on a supplied prompt (it is used anyway: the producer's word wins)."""
    return [
        {
            "clip_id": r["clip_id"],
            "tags_supplied": ", ".join(r.get("tags_supplied") or []),
            "not in the vocabulary": ", ".join(r.get("tags_unplaced") or []),
            "prompt": "supplied" if r["prompt_source"] == "supplied" else r["prompt_source"],
            "notes": r.get("supplied_notes") or "",
        }
        for r in rows
        if r.get("tags_supplied") or r["prompt_source"] == "supplied"
    ]


def read_prompts(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN_DIR/04_prompts/prompts.jsonl`` (for the notebook and 05_train)."""
    return read_jsonl(Run(run_dir).path(STAGE, layout.PROMPT_ROWS))
