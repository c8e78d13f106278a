"""Stage 04_prompts and what real instruct models answer: a corpus of Llama 3.x / Qwen 2.5-style
answers (tests/data/llm_answers.yaml) is cleaned to the bare prompt or rejected, and no preamble
ever reaches prompts.jsonl."""

import json
import re
from pathlib import Path

import pytest
import yaml

from stablebeat_utils import clipfacts, prompts
from stablebeat_utils.runs import read_jsonl

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "llm_answers.yaml").read_text(encoding="utf-8"))
ANSWERS = CORPUS["answers"]
METAS = CORPUS["metas"]
# what must never be in a prompt: the wrapping the cleaner removes
WRAPPING = re.compile(
    r"(?i)\bhere(?:'s| is| are)\b|^\s*(?:sure|certainly|of course|absolutely|okay)\b|prompt\s*\d*:|"
    r"\*\*|`|^[\"“'>#-]|[\"”]$|\n|\bthis prompt\b|let me know|explanation|<think>|\bI\b"
)


def test_corpus_is_large_and_varied():
    assert len(ANSWERS) >= 40
    assert sum(a["expected"] == "reject" for a in ANSWERS) >= 5
    assert sum("\n" in a["answer"] for a in ANSWERS) >= 10
    assert sum(a.get("valid") is False for a in ANSWERS) >= 3


@pytest.mark.parametrize("i", range(len(ANSWERS)), ids=lambda i: f"{i:02d}")
def test_each_answer_is_cleaned_to_the_bare_prompt_or_rejected(i, lex, matcher):
    a = ANSWERS[i]
    got, why = prompts.clean_llm_answer(a["answer"])
    if a["expected"] == "reject":
        assert got == "" and why, (a["answer"], got)
        return
    assert (got, why) == (a["expected"], None), a["answer"]
    assert not WRAPPING.search(got), got
    problems = prompts.validate(got, METAS[a["meta"]], lex, matcher)
    assert (problems == []) == a.get("valid", True), problems


def test_the_issues_examples():
    # the preamble used to pass unchanged, and the own-line preamble was cut to "for your beat:"
    assert (
        prompts.clean_llm_output("Sure! Here is a prompt: Dark drill at 142 BPM in F# minor with 808s and hi-hats.")
        == "Dark drill at 142 BPM in F# minor with 808s and hi-hats."
    )
    assert (
        prompts.clean_llm_output("Here is a prompt for your beat:\nDark drill at 142 BPM in F# minor.")
        == "Dark drill at 142 BPM in F# minor."
    )


def test_validator_refuses_instruments_beyond_our_vocabulary(lex, matcher):
    meta = METAS["drill"]
    for word in ("sitar", "tuba", "banjo", "bagpipes", "steel drums"):
        problems = prompts.validate(
            f"Dark drill at 142 BPM in F# minor with 808s, hi-hats and {word}.", meta, lex, matcher
        )
        assert any("names instrument" in p and word.rstrip("s") in p for p in problems), (word, problems)
    # a lexicon word inside a wording of the clip's own tag is fine ("guitar" on a plucked-guitar clip)
    card = METAS["card"]
    assert (
        prompts.validate(
            "A melancholic rap with soul beat at 109 BPM in G minor with guitar and synth bells.", card, lex, matcher
        )
        == []
    )
    assert len(lex.instrument_words) >= 250


def test_lexicon_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "lex.yaml"
    bad.write_text("words: nope\n")
    with pytest.raises(clipfacts.ClipFactsError, match="lex.yaml"):
        clipfacts.load_instrument_lexicon(bad)


def _corpus_run(root: Path) -> dict[str, dict]:
    """A run folder with one clip per corpus answer (its tags and tempo/key from the answer's meta)."""
    segs, tags, tks, by_id = [], [], [], {}
    for i, a in enumerate(ANSWERS):
        cid = f"clip_{i:02d}"
        m = METAS[a["meta"]]
        segs.append(
            {
                "clip_id": cid,
                "source": f"{cid}.wav",
                "start": 0.0,
                "duration": 25.0,
                "path": f"01_segment/clips/{cid}.wav",
                "status": "ok",
                "reason": None,
            }
        )
        tags.append({"clip_id": cid, **{f"{f}_tags": m[f"{f}_tags"] for f in prompts.FAMILIES}, "scores": {}})
        tks.append(
            {
                "clip_id": cid,
                "tempo_raw": m["tempo"],
                "tempo_confidence": 0.9,
                "key_raw": m["key"],
                "scale_raw": m["scale"],
                "key_confidence": 0.9,
                "tempo": m["tempo"],
                "key": m["key"],
                "scale": m["scale"],
            }
        )
        by_id[cid] = a
    for name, rows in (
        ("01_segment/segments.jsonl", segs),
        ("02_tag/tags.jsonl", tags),
        ("03_tempo_key/tempo_key.jsonl", tks),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return by_id


def test_no_preamble_reaches_prompts_jsonl(tmp_path, monkeypatch):
    """The stage end to end, the model's answers replaced by the corpus (the tiny LLM still loads)."""
    by_id = _corpus_run(tmp_path)
    asked = []

    def corpus_answers(tokenizer, model, conversations, *args, **kwargs):
        out = []
        for conv in conversations:
            # which clip: the stage asks in clip order; the metadata in the last message names its facts
            cid = sorted(by_id)[len(asked)]
            asked.append(cid)
            assert METAS[by_id[cid]["meta"]]["key"] in conv[-1]["content"]
            out.append(by_id[cid]["answer"])
        return out

    monkeypatch.setattr(prompts, "generate_batch", corpus_answers)
    summary = prompts.run(str(tmp_path), batch_size=8, generation_length=12, n_clusters=3)
    rows = {r["clip_id"]: r for r in read_jsonl(tmp_path / "04_prompts" / "prompts.jsonl")}
    assert len(asked) == len(ANSWERS) == len(rows)
    good = 0
    for cid, a in by_id.items():
        r = rows[cid]
        assert r["llm_output"] == a["answer"]
        assert not WRAPPING.search(r["prompt"]), (cid, r["prompt"])
        if a["expected"] != "reject" and a.get("valid", True):
            assert (r["prompt_source"], r["prompt"]) == ("llm", a["expected"]), r
            good += 1
        else:
            assert r["prompt_source"] == "template" and r["reject_reason"], r
    assert summary["llm_asked"] == len(ANSWERS) and summary["llm_accepted"] == good
    assert summary["acceptance_rate"] == round(good / len(ANSWERS), 4)
    assert summary["llm_refused"] >= 4 and summary["llm_unwrapped"] >= 30
    record = json.loads((tmp_path / "04_prompts" / "stage.json").read_text())
    assert record["summary"]["acceptance_rate"] == summary["acceptance_rate"]
