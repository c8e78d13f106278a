"""Stage 03_tempo_key with the real TempoCNN graph (deeptemp-k16-3) and Essentia's KeyExtractor."""

import json
import shutil

import numpy as np
import pytest

from stablebeat_utils import audio, demo, tempo_key
from stablebeat_utils.runs import Run, read_jsonl

# (clip_id, bpm, key, scale, half_time, seed, melody): demo-style beats of 22 s with known truth, hats
# on 8th notes (the stage's convention: the tempo is counted on the hi-hat grid)
BEATS = [
    ("b072_Am", 72, "A", "minor", False, 102, True),
    ("b096_F", 96, "F", "major", False, 103, True),
    ("b110_Bb", 110, "Bb", "major", False, 107, False),
    ("b128_Dm", 128, "D", "minor", False, 104, False),
    ("b140_Cm_half", 140, "C", "minor", True, 101, True),
]
SECONDS = 22.0


def _write_run(root):
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    rows = []
    for cid, bpm, key, scale, half, seed, melody in BEATS:
        x = demo.make_beat(bpm, key, scale, SECONDS, seed, half_time=half, melody=melody, hat_div=2)
        audio.write_wav(clips / f"{cid}.wav", x, 44100)
        rows.append(
            {
                "clip_id": cid,
                "source": f"{cid}.ogg",
                "start": 0.0,
                "duration": SECONDS,
                "path": f"01_segment/clips/{cid}.wav",
                "status": "ok",
                "reason": None,
            }
        )
    (clips / "zz_bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)  # not decodable
    rows.append(
        {
            "clip_id": "zz_bad",
            "source": "bad.wav",
            "start": 0.0,
            "duration": SECONDS,
            "path": "01_segment/clips/zz_bad.wav",
            "status": "ok",
            "reason": None,
        }
    )
    rows.append(
        {
            "clip_id": "zz_rejected",
            "source": "short.wav",
            "start": None,
            "duration": None,
            "path": None,
            "status": "rejected",
            "reason": "shorter than 20 s",
        }
    )
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def clips_run(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("run"))


def _fresh(clips_run, tmp_path, name="run"):
    """A copy of the clip run folder without any 03 output."""
    dst = tmp_path / name
    shutil.copytree(clips_run / "01_segment", dst / "01_segment")
    return dst


@pytest.fixture(scope="module")
def analysed(clips_run, tempocnn_graph, tmp_path_factory):
    """The stage run once with no prior and once with bpm_range 70-160 (workers=1)."""
    out = {}
    for label, rng in (("plain", ""), ("prior", "70-160")):
        dst = tmp_path_factory.mktemp(label)
        shutil.copytree(clips_run / "01_segment", dst / "01_segment")
        summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), bpm_range=rng, workers=1)
        out[label] = (dst, summary, {r["clip_id"]: r for r in read_jsonl(summary["output"])})
    return out


def _within(est, ref, tol=0.04):
    return est is not None and abs(est - ref) <= tol * ref


def test_rows_have_the_contract_fields(analysed):
    dst, summary, rows = analysed["plain"]
    assert set(rows) == {b[0] for b in BEATS} | {"zz_bad"}  # rejected rows are not analysed
    for r in rows.values():
        assert list(r)[:9] == list(tempo_key.FIELDS)
    assert summary["clips"] == 6 and summary["errors"] == 1 and summary["analysed_now"] == 6
    record = Run(dst).stage_record("03_tempo_key")
    assert record["status"] == "done" and record["summary"]["clips"] == 6
    # the file is sorted by clip_id
    ids = [r["clip_id"] for r in read_jsonl(summary["output"])]
    assert ids == sorted(ids)


def test_bpm_accuracy_on_known_beats(analysed):
    """Every stated BPM is right within 4 % (the half-time beat included: 140, not 70); the network's
    own answer and the beat tracker's stay in the row beside it; with the 70-160 prior the same."""
    _, _, plain = analysed["plain"]
    _, _, prior = analysed["prior"]
    stated = 0
    for cid, bpm, _k, _s, half, _seed, _m in BEATS:
        r = plain[cid]
        how = r["tempo_method"]
        assert how in ("agree", "estimates disagree") or how.split(", ", 1)[0] in ("agree", "octave apart"), r
        assert how.rsplit(", ", 1)[-1] in (
            "agree",
            "estimates disagree",
            "fast: hats",
            "fast: hats and rolls",
            "slow: hats",
            "slow: swung 16th hats",
            "fast: snare on every slow beat",
            "slow: 16th hats above half-time tempi",
            "octave unresolved",
        ), r
        assert any(_within(r["tempo_cnn"], bpm * f) for f in (1, 0.5, 2)), (cid, r)
        assert r["tempo_alt"] is not None and len(r["tempo_grid"]) == 3
        if r["tempo"] is not None:
            stated += 1
            assert _within(r["tempo"], bpm), (cid, r)
        else:
            assert r["tempo_confidence"] < 0.7 and r["tempo_raw"] is not None  # the raw value stays
        p = prior[cid]
        if p["tempo"] is not None:
            assert _within(p["tempo"], bpm) and 70 <= p["tempo"] <= 160, (cid, p)
        assert p["tempo_cnn"] == r["tempo_cnn"]
    assert stated >= 4
    # the half-time beat is where TempoCNN alone says 70: the hats decide the octave
    half = plain["b140_Cm_half"]
    assert _within(half["tempo"], 140), half


def test_key_accuracy_on_known_beats(analysed):
    _, _, rows = analysed["plain"]
    right = sum((rows[cid]["key_raw"], rows[cid]["scale_raw"]) == (key, scale) for cid, _b, key, scale, *_ in BEATS)
    assert right >= 4, {cid: (rows[cid]["key_raw"], rows[cid]["scale_raw"]) for cid, *_ in BEATS}
    for cid, *_ in BEATS:
        assert 0.0 <= rows[cid]["key_confidence"] <= 1.0
        assert 0.0 <= rows[cid]["tempo_confidence"] <= 1.0 + 1e-6


def test_threshold_rule_and_confidence(analysed):
    for _, _, rows in analysed.values():
        for r in rows.values():
            if r["tempo_confidence"] is not None:
                assert r["tempo"] == (r["tempo_raw"] if r["tempo_confidence"] >= 0.7 else None)
            if r["key_confidence"] is not None:
                kept = r["key_confidence"] >= 0.7
                assert (r["key"], r["scale"]) == ((r["key_raw"], r["scale_raw"]) if kept else (None, None))


def test_changing_min_confidence_only_rethresholds(analysed, tempocnn_graph, tmp_path):
    src, _, rows = analysed["plain"]
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), min_confidence=0.95, workers=1)
    assert summary["analysed_now"] == 0  # no re-analysis: the rule is applied at finalize
    new = {r["clip_id"]: r for r in read_jsonl(summary["output"])}
    for cid, r in new.items():
        assert {k: r[k] for k in ("tempo_raw", "key_raw", "tempo_confidence")} == {
            k: rows[cid][k] for k in ("tempo_raw", "key_raw", "tempo_confidence")
        }
        if r["tempo_confidence"] is not None:
            assert (r["tempo"] is not None) == (r["tempo_confidence"] >= 0.95)
    assert summary["tempo_kept"] < 6


def test_bad_clip_gets_an_error_row(analysed):
    _, _, rows = analysed["plain"]
    bad = rows["zz_bad"]
    assert "zz_bad.wav" in bad["error"]
    assert all(bad[f] is None for f in tempo_key.FIELDS if f != "clip_id")
    assert all(rows[b[0]]["error"] is None for b in BEATS)


def test_resume_after_kill_gives_the_same_bytes(analysed, tempocnn_graph, tmp_path):
    src, _, _ = analysed["plain"]
    final = (src / "03_tempo_key" / "tempo_key.jsonl").read_bytes()
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    out = dst / "03_tempo_key" / "tempo_key.jsonl"
    lines = out.read_bytes().splitlines(keepends=True)
    # as a kill would leave it: two rows missing, the last one cut in the middle, unsorted
    out.write_bytes(lines[3] + lines[0] + lines[4] + lines[2][: len(lines[2]) // 2])
    (dst / "03_tempo_key" / "stage.json").unlink()
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), workers=1)
    assert summary["analysed_now"] == 3
    assert out.read_bytes() == final


def test_two_workers_give_the_same_file(clips_run, analysed, tempocnn_graph, tmp_path):
    dst = _fresh(clips_run, tmp_path)
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), workers=2)
    assert summary["analysed_now"] == 6
    assert (dst / "03_tempo_key" / "tempo_key.jsonl").read_bytes() == (
        analysed["plain"][0] / "03_tempo_key" / "tempo_key.jsonl"
    ).read_bytes()


def test_changed_analysis_settings_start_over(analysed, tempocnn_graph, tmp_path):
    src, _, _ = analysed["plain"]
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), key_profile="bgate", workers=1)
    assert summary["analysed_now"] == 6
    assert json.loads((dst / "03_tempo_key" / "analysis.json").read_text())["key_profile"] == "bgate"


def test_inputs_are_validated_before_work(clips_run, tempocnn_graph, tmp_path):
    dst = _fresh(clips_run, tmp_path)
    g = str(tempocnn_graph)
    with pytest.raises(tempo_key.TempoKeyError, match="segments.jsonl"):
        tempo_key.run(run_dir=str(tmp_path / "empty"), tempo_model=g)
    with pytest.raises(tempo_key.TempoKeyError, match="bpm_range"):
        tempo_key.run(run_dir=str(dst), tempo_model=g, bpm_range="100-150")  # not an octave
    with pytest.raises(tempo_key.TempoKeyError, match="bpm_range"):
        tempo_key.run(run_dir=str(dst), tempo_model=g, bpm_range="fast")
    with pytest.raises(tempo_key.TempoKeyError, match="key_profile"):
        tempo_key.run(run_dir=str(dst), tempo_model=g, key_profile="nope")
    with pytest.raises(tempo_key.TempoKeyError, match="min_confidence"):
        tempo_key.run(run_dir=str(dst), tempo_model=g, min_confidence=70)
    with pytest.raises(tempo_key.TempoKeyError, match="missing.pb"):
        tempo_key.run(run_dir=str(dst), tempo_model=str(tmp_path / "missing.pb"))
    assert not (dst / "03_tempo_key").exists()


def test_confidence_definition_and_octave_folding():
    p = np.zeros(256)
    p[140 - 30] = 0.5
    p[70 - 30] = 0.3
    p[100 - 30] = 0.2
    # TempoCNN alone (what 07 uses): the mass within ±4 % of the reported tempo
    assert tempo_key.tempo_estimate(140, p, None) == (140.0, pytest.approx(0.5), False)
    assert tempo_key.tempo_estimate(140, p, (80, 160)) == (140.0, pytest.approx(0.8), False)
    # the stage's confidence: the mass of the stated tempo and its octaves
    assert tempo_key.octave_mass(p, 140) == pytest.approx(0.8)
    assert tempo_key.octave_mass(p, 100) == pytest.approx(0.2)
    hats_at_140 = [0.8, 0.85, 0.9]  # grid scores at 35, 70 and 140 BPM (TempoCNN said 70)
    raw = {
        "clip_id": "c",
        "global_bpm": 70.0,
        "mean_probs": p,
        "beat_bpm": 140.2,
        "grid": hats_at_140,
        "rolls": [40, 12],  # trap rolls on the 8ths of 140
        "key": "C",
        "scale": "minor",
        "strength": 0.65,
        "error": None,
    }
    row = tempo_key.make_row(raw, None, 0.7)
    assert (row["tempo_raw"], row["tempo"], row["tempo_cnn"], row["tempo_alt"], row["tempo_method"]) == (
        140.0,
        140.0,
        70.0,
        140.2,
        "octave apart, fast: hats and rolls",
    )
    assert row["tempo_confidence"] == pytest.approx(0.8) and (row["key_raw"], row["key"]) == ("C", None)
    # a prior moves a reconciled tempo into its range by octaves
    row = tempo_key.make_row(raw, (60, 125), 0.7)
    assert (row["tempo"], row["tempo_folded"]) == (70.0, True)
    # the estimates cannot be reconciled: no confident tempo, the raw values stay
    row = tempo_key.make_row(dict(raw, beat_bpm=93.0), None, 0.7)
    assert (row["tempo"], row["tempo_raw"], row["tempo_confidence"], row["tempo_method"]) == (
        None,
        70.0,
        0.0,
        "estimates disagree",
    )


@pytest.mark.parametrize(
    "cnn,beat,grid,rolls,expected",
    [
        (140, 140.5, [0.8, 0.9, 0.0], (0, 0), (140, "agree")),  # both right, hats on 8ths of 140
        # half-time trap: both heard 70, the hats play 8ths of 140 and roll: 140
        (70, 70.3, [0.8, 0.85, 0.9], (40, 25), (140, "agree, fast: hats and rolls")),
        # boom-bap at 84, 16th hats swung: the 8ths of 168 are smeared (0.46), no rolls: 84
        (84, 84, [0.95, 0.69, 0.46], (0, 0), (84, "agree, slow: swung 16th hats")),
        # straight 16th hats at 80, no rolls = half-time 8ths at 160: the rhythm cannot tell
        (80, 80, [0.8, 0.9, 0.85], (30, 0), (None, "agree, octave unresolved")),
        (100, 100, [0.8, 0.85, 0.9], (0, 0), (100, "agree")),  # 16th hats at 100: 200 is above the cap
        (70, 140, [0.8, 0.85, 0.9], (30, 20), (140, "octave apart, fast: hats and rolls")),
        (72, 144, [0.74, 0.9, 0.44], (0, 0), (72, "octave apart, slow: swung 16th hats")),
        (55, 110, [0.1, 0.3, 0.8], (0, 0), (110, "octave apart, fast: hats")),  # 55 is no lo-fi tempo
        (80, 160, [0.1, 0.8, 0.02], (0, 0), (80, "octave apart, slow: hats")),  # lo-fi doubled by the tracker
        (160, 80, [0.8, 0.02, 0.0], (0, 0), (80, "octave apart, slow: hats")),  # TempoCNN doubled: hats at 80
        (80, 160, [0.05, 0.1, 0.05], (0, 0), (None, "octave apart, octave unresolved")),  # no hats to tell
        (90, 135, [0.8, 0.8, 0.0], (0, 0), (None, "estimates disagree")),  # 3:2 — not an octave
        (90, None, [0.8, 0.8, 0.0], (0, 0), (None, "estimates disagree")),
    ],
)
def test_reconcile_decides_the_octave_by_the_hats(cnn, beat, grid, rolls, expected):
    assert tempo_key.reconcile(cnn, beat, grid, rolls) == expected


@pytest.mark.parametrize(
    "cnn,beat,snare,expected",
    [
        # straight 8th hats at 144, no rolls, snare on 2 and 4 of 144 = on every beat of 72: 144
        (72, 144, [0.8, 0.9, 0.5], (144, "octave apart, fast: snare on every slow beat")),
        (144, 72, [0.5, 0.8, 0.9], (144, "octave apart, fast: snare on every slow beat")),  # TempoCNN fast
        (80, 80, [0.78, 0.8, 0.4], (160, "agree, fast: snare on every slow beat")),
        # boom-bap at 80 with straight 16ths (or half-time at 160): the snare every 2 slow beats: unresolved
        (80, 80, [0.55, 0.75, 0.5], (None, "agree, octave unresolved")),
        (80, 80, [0.72, 0.95, 0.5], (None, "agree, octave unresolved")),  # every 2 beats much stronger
        # the same at 90: 180 is above half-time trap's tempi, so straight 16ths of a boom-bap beat at 90
        (90, 90, [0.55, 0.75, 0.5], (90, "agree, slow: 16th hats above half-time tempi")),
    ],
)
def test_reconcile_reads_a_snare_on_every_slow_beat_as_fast(cnn, beat, snare, expected):
    """Straight hats, no rolls, slow reading in the lo-fi range: the mid band (claps, snares) repeating
    every beat of the slow reading as strongly as every two is a backbeat of the fast reading."""
    grid = [0.85, 0.9, 0.88] if cnn < 100 else [0.9, 0.88, 0.0]
    assert tempo_key.reconcile(cnn, beat, grid, (0, 0), snare) == expected


def test_pulse_mass_counts_octaves_and_triplet_levels():
    """Drill's triplet fills put TempoCNN's mass at 3/2 of the pulse: it counts for the tempo."""
    p = np.zeros(256)
    p[70 - 30], p[105 - 30], p[88 - 30], p[140 - 30] = 0.3, 0.35, 0.15, 0.2
    assert tempo_key.octave_mass(p, 140) == pytest.approx(0.5)
    assert tempo_key.pulse_mass(p, 140) == pytest.approx(0.85)  # 70, 140 and 105 = 3/4 of 140
    assert tempo_key.pulse_mass(p, 88) == pytest.approx(0.15)  # 88 has none of them as a level


@pytest.mark.parametrize(
    "key,alt,expected",
    [
        # edma's major, edmm's relative minor stronger: the minor
        (("C", "major", 0.84), ["A", "minor", 0.86], ("A", "minor", 0.86, "relative minor: edmm stronger")),
        # edma ahead by less than the margin: not stated (confidence 0), the raw key stays edma's
        (("C", "major", 0.86), ["A", "minor", 0.80], ("C", "major", 0.0, "relative unresolved")),
        (("C", "major", 0.92), ["A", "minor", 0.80], ("C", "major", 0.92, "profile")),  # clearly major
        (("C", "major", 0.85), ["E", "minor", 0.90], ("C", "major", 0.85, "profile")),  # not the relative
        (("A", "minor", 0.85), ["A", "minor", 0.90], ("A", "minor", 0.85, "profile")),  # edma said minor
        (("Eb", "major", 0.84), ["C", "minor", 0.86], ("C", "minor", 0.86, "relative minor: edmm stronger")),
        (("C", "major", 0.8), None, ("C", "major", 0.8, "profile")),  # another profile: no second opinion
    ],
)
def test_relative_keys_are_decided_or_not_stated(key, alt, expected):
    raw = {"key": key[0], "scale": key[1], "strength": key[2], "key_alt": alt}
    assert tempo_key.resolve_key(raw) == pytest.approx(expected)
    row = tempo_key.make_row({"clip_id": "c", "error": None, **raw}, None, 0.7)
    assert (row["key_raw"], row["scale_raw"], row["key_method"]) == (expected[0], expected[1], expected[3])
    assert (row["key"] is None) == (expected[2] < 0.7)


def test_roll_count_sees_trap_rolls_not_swung_16ths():
    """Bright onsets: 8th-note hats at 140 with a 32nd-note roll on the last beat of each bar → rolls;
    swung 16th hats at 70 (the same grid, 58 % swing) and straight 8ths at 140 → none."""
    hop_s = tempo_key.GRID_HOP / tempo_key.GRID_SR

    def env(times):
        e = np.zeros(int(12 / hop_s) + 4)
        e[np.round(np.asarray(times) / hop_s).astype(int)] = 1.0
        return e

    e8 = 30 / 140
    straight = np.arange(0, 11.5, e8)
    bars = [t for b in range(6) for t in (b * 8 * e8 + 6 * e8 + k * e8 / 4 for k in (1, 2, 3, 5, 6, 7))]
    assert tempo_key.roll_count(env(np.r_[straight, bars]), 140) >= 12
    assert tempo_key.roll_count(env(straight), 140) == 0
    swung = [t for i in range(26) for t in (i * 2 * e8, i * 2 * e8 + 1.16 * e8)]
    assert tempo_key.roll_count(env(swung), 140) == 0


def test_grid_score_on_a_known_click_grid():
    """Clicks of bright noise every 8th note of 140 BPM: the score is high at 140, low at 280."""
    sr = tempo_key.GRID_SR
    rng = np.random.default_rng(0)
    y = np.zeros(int(12 * sr), dtype=np.float32)
    click = (rng.standard_normal(200) * np.exp(-np.arange(200) / 30)).astype(np.float32)
    for t in np.arange(0, 11.5, 30 / 140):
        i = int(t * sr)
        y[i : i + 200] += click
    ac = tempo_key.onset_autocorrelation(np.diff(y, prepend=0).astype(np.float32))
    assert tempo_key.grid_score(ac, 140) > 0.7
    assert tempo_key.grid_score(ac, 70) > 0.7  # every 2nd click repeats too
    assert tempo_key.grid_score(ac, 280) < 0.2  # nothing halfway between the clicks
    assert tempo_key.grid_score(ac, 97) < 0.3  # an unrelated tempo


def test_model_download_is_verified_and_atomic(tempocnn_graph, tmp_path):
    """The real download code, fed from a file:// URL (no network here)."""
    url = tempocnn_graph.resolve().as_uri()
    target = tmp_path / "models" / "deeptemp-k16-3.pb"
    with pytest.raises(tempo_key.TempoKeyError, match="SHA-256"):
        tempo_key.download_tempo_model(target, url=url, sha256="0" * 64)
    assert not target.exists() and not list(target.parent.iterdir())  # nothing half-kept
    assert tempo_key.download_tempo_model(target, url=url) == target
    assert target.read_bytes() == tempocnn_graph.read_bytes()
    # tempo_model "" finds the verified file in model_cache_dir without touching the network
    assert tempo_key.resolve_tempo_model("", str(target.parent)) == target
    with pytest.raises(tempo_key.TempoKeyError, match="cannot download"):
        tempo_key.download_tempo_model(tmp_path / "x.pb", url=(tmp_path / "absent.pb").as_uri())


def test_model_mirror_is_copied_into_the_cache_and_verified(tempocnn_graph, tmp_path, monkeypatch):
    monkeypatch.setenv("STABLEBEAT_MODEL_MIRROR", str(tempocnn_graph.parent))
    got = tempo_key.resolve_tempo_model("", model_cache_dir=str(tmp_path / "cache"))
    assert got == tmp_path / "cache" / "deeptemp-k16-3.pb"
    assert got.read_bytes() == tempocnn_graph.read_bytes()


def test_a_clip_that_kills_its_worker_is_one_error_row_retried_next_run(
    clips_run, tempocnn_graph, tmp_path, monkeypatch
):
    import functools
    from pathlib import Path

    import crashy

    dst = _fresh(clips_run, tmp_path)
    seg = dst / "01_segment" / "segments.jsonl"
    rows = read_jsonl(seg)
    victim = next(r for r in rows if r.get("status") == "ok")
    new = str(Path(victim["path"]).with_name("die_" + Path(victim["path"]).name))
    (dst / victim["path"]).rename(dst / new)
    victim["path"] = new
    seg.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(
        tempo_key, "_iter_results", functools.partial(tempo_key._iter_results, analyse=crashy.analyse_or_die)
    )
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), workers=2)
    got = {r["clip_id"]: r for r in read_jsonl(summary["output"])}
    crashed = [cid for cid, r in got.items() if (r["error"] or "").endswith(tempo_key.CRASHED)]
    assert crashed == [victim["clip_id"]] and new in got[victim["clip_id"]]["error"]
    assert len(got) == summary["clips"] > 1 and sum(r["tempo"] is not None for r in got.values()) > 1  # went on
    monkeypatch.undo()  # the kill was the machine's (out of memory), not the file's: the next run succeeds
    again = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), workers=2)
    assert again["analysed_now"] == 1 and again["errors"] == summary["errors"] - 1  # no final verdict: retried
    assert read_jsonl(again["output"])[[*got].index(victim["clip_id"])]["error"] is None


def test_supplied_facts_win_are_marked_and_listed(analysed, tempocnn_graph, tmp_path):
    """Names and a facts file: a supplied value wins over the estimate and is marked; the estimate
    stays; unsure names, bad facts lines and unknown files are each named; nothing is re-analysed."""
    src, _, est = analysed["plain"]
    dst = tmp_path / "named"
    shutil.copytree(src, dst)
    seg = dst / "01_segment" / "segments.jsonl"
    names = {"b072_Am": "dusty 72bpm Am.wav", "b096_F": "Route 66 96.wav", "b128_Dm": "b128.wav"}
    rows = [dict(r, source=names.get(r["clip_id"], r["source"])) for r in read_jsonl(seg)]
    seg.write_text("".join(json.dumps(r) + "\n" for r in rows))
    facts = tmp_path / "facts.csv"
    facts.write_text(
        "file,bpm,key,tags\nb128.wav,64,F major,dark; drill\nb110_Bb.ogg,abc,,\nghost.wav,90,Am,\n"
        "b140_Cm_half.ogg,400,C minor,\n",
        encoding="utf-8",
    )
    summary = tempo_key.run(run_dir=str(dst), tempo_model=str(tempocnn_graph), workers=1, facts_file=str(facts))
    assert summary["analysed_now"] == 0  # facts are applied when the file is written
    rows = {r["clip_id"]: r for r in read_jsonl(summary["output"])}
    a = rows["b072_Am"]
    assert (a["tempo"], a["key"], a["scale"], a["tempo_source"], a["key_source"]) == (
        72.0,
        "A",
        "minor",
        "supplied",
        "supplied",
    )
    assert a["supplied_from"] == {"bpm": "file name", "key": "file name"}
    d = rows["b128_Dm"]  # the facts file says 64 F major: wins, the estimate (128, D minor) stays beside it
    assert (d["tempo"], d["key"], d["scale"], d["tags_supplied"]) == (64.0, "F", "major", ["dark", "drill"])
    assert d["tempo_estimated"] == est["b128_Dm"]["tempo"] and d["key_raw"] == est["b128_Dm"]["key_raw"]
    c = rows["b140_Cm_half"]  # BPM 400 refused, the key taken; the tempo stays the estimate
    assert (c["tempo_source"], c["tempo"], c["key_source"]) == ("estimated", est["b140_Cm_half"]["tempo"], "supplied")
    assert rows["b096_F"]["tempo_source"] in ("estimated", None) and rows["b096_F"]["tempo_supplied"] is None
    notes = "\n".join(summary["facts_notes"])
    for needle in (
        "Route 66 96.wav: name left alone",
        "line 3 (b110_Bb.ogg): bpm 'abc'",
        "'ghost.wav' matches no source",
        "line 5 (b140_Cm_half.ogg): bpm 400",
    ):
        assert needle in notes, notes
    table = {t["clip_id"]: t for t in tempo_key.supplied_vs_estimated(list(rows.values()))}
    assert table["b128_Dm"]["tempo"] == "octave: estimate doubled" and table["b128_Dm"]["key"] == "relative minor"
    assert "tempo 128" in table["b128_Dm"]["changed"] and "→ F major" in table["b128_Dm"]["changed"]
    assert summary["tempo_supplied"] == 2 and summary["key_supplied"] == 3
    assert json.loads(seg.read_text().splitlines()[0])["source"]  # inputs untouched: 01's rows as written


def test_disagreements_are_named():
    assert tempo_key.tempo_disagreement(72, 144) == "octave: estimate doubled"
    assert tempo_key.tempo_disagreement(140, 70.5) == "octave: estimate halved"
    assert tempo_key.tempo_disagreement(90, 91) == "agrees"
    assert tempo_key.tempo_disagreement(90, 135) == "3:2"
    assert tempo_key.tempo_disagreement(90, 100) == "off by +11 %"
    assert tempo_key.key_disagreement(("F#", "minor"), ("A", "major")) == "relative major"
    assert tempo_key.key_disagreement(("C", "major"), ("A", "minor")) == "relative minor"
    assert tempo_key.key_disagreement(("C", "major"), ("C", "minor")) == "parallel"
    assert tempo_key.key_disagreement(("C", "major"), ("G", "major")) == "a fifth away"
    assert tempo_key.key_disagreement(("C", "major"), ("D", "minor")) == "another key"


def test_every_listed_key_profile_runs_in_this_essentia():
    """KEY_PROFILES is what run() accepts: each name must configure Essentia's KeyExtractor and
    read a major and a minor triad (a profile Essentia rejects, or one that fails on minor keys
    like "weichai", must not be offered)."""
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    sr = 44100
    t = np.arange(2 * sr) / sr
    triads = {"major": (261.63, 329.63, 392.0), "minor": (220.0, 261.63, 329.63)}  # C major, A minor
    failed = []
    for profile in tempo_key.KEY_PROFILES:
        for name, freqs in triads.items():
            y = (0.2 * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)
            try:
                key, scale, strength = es.KeyExtractor(profileType=profile, sampleRate=float(sr))(y)
            except RuntimeError as exc:
                failed.append(f"{profile} on a {name} triad: {str(exc)[:120]}")
                continue
            assert key in demo.KEYS + ("A#", "C#", "D#", "F#", "G#") and scale in ("major", "minor")
            assert 0.0 < strength <= 1.0
    assert not failed, failed
