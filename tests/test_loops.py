"""Loops at tempo (stablebeat_utils.loops): synthetic beats with a known tempo and known beat times."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from stablebeat_utils import loops

SR = 44100


def click_beat(bpm: float, seconds: float, offset: float = 0.3, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """A stereo beat at ``bpm``: a loud broadband kick on every bar's 1, a softer click on the others.

    Returns ``(audio, true beat times)``.
    """
    n = int(seconds * sr)
    y = np.zeros(n, np.float32)
    rng = np.random.default_rng(0)
    times = np.arange(offset, seconds - 0.06, 60.0 / bpm)
    hit = int(0.05 * sr)
    env = np.exp(-np.arange(hit) / (0.008 * sr)).astype(np.float32)
    for k, t in enumerate(times):
        i = int(round(t * sr))
        tone = (
            rng.standard_normal(hit).astype(np.float32)
            if k % 4 == 0
            else np.sin(2 * np.pi * 1000 * np.arange(hit) / sr)
        )
        y[i : i + hit] += (1.0 if k % 4 == 0 else 0.4) * env * tone.astype(np.float32)
    y += 0.01 * rng.standard_normal(n).astype(np.float32)
    return np.stack([y, 0.8 * y]) * 0.5, times


@pytest.fixture(scope="module")
def at_140():
    audio, times = click_beat(140, 15)
    return audio, times, loops.cut_loop(audio, SR, 140, bars=4)


def test_bar_length_and_grid(at_140):
    audio, times, loop = at_140
    assert loop.audio is not None, loop.reason
    bar = 4 * 60 / 140
    assert loop.bars == 4
    assert loop.audio.shape[1] == int(round(4 * bar * SR))  # 4 bars at 140, to the sample
    assert abs(loop.bar_count - 4) < loops.BAR_TOLERANCE
    # it starts on a real beat of the audio (the grid detected, snapped to the attack)
    assert np.min(np.abs(times - loop.start_s)) < 0.02, (loop.start_s, times[:8])
    assert not loop.grid.flagged and loop.grid.bpm == 140
    assert abs(loop.grid.detected_bpm - 140) / 140 < loops.TEMPO_TOLERANCE


@pytest.mark.parametrize("bpm", [90, 174])
def test_other_tempi_whole_bars(bpm):
    audio, times = click_beat(bpm, 16)
    loop = loops.cut_loop(audio, SR, bpm, bars=2)
    assert loop.bars == 2 and not loop.grid.flagged
    assert abs(loop.bar_count - 2) < loops.BAR_TOLERANCE
    assert np.min(np.abs(times - loop.start_s)) < 0.02


def test_seam_has_no_click(at_140, tmp_path):
    _, _, loop = at_140
    path = tmp_path / loops.loop_name("00-seed42", loop, ("F", "minor"))
    loops.write_loop(path, loop)
    info = sf.info(str(path))
    assert info.subtype == "PCM_24" and info.samplerate == SR
    back, _ = sf.read(str(path), always_2d=True)
    back = back.T
    jump = np.max(np.abs(back[:, 0] - back[:, -1]))
    assert jump <= np.max(np.abs(np.diff(back, axis=1)))  # measured on the file, not taken from the report
    assert loop.seam["click_free"]


def test_crossfade_removes_the_click():
    """A sine cut at a non-whole number of periods clicks; the crossfade takes the click away."""
    t = np.arange(SR) / SR
    audio = np.stack([np.sin(2 * np.pi * 97.3 * t)] * 2).astype(np.float32) * 0.5
    raw = loops.crossfade_seam(audio, 1000, 30000, 0)
    faded = loops.crossfade_seam(audio, 1000, 30000, 441)
    assert not loops.seam_report(raw)["click_free"]  # the test can fail: without the fade it does
    assert loops.seam_report(faded)["click_free"]
    assert np.array_equal(faded[:, :-441], raw[:, :-441])  # only the tail is touched


def test_wrong_prompted_tempo_is_flagged_never_named(at_140):
    audio, _, _ = at_140
    loop = loops.cut_loop(audio, SR, 120, bars=4)
    assert loop.grid.flagged and loop.grid.deviation > loops.TEMPO_TOLERANCE
    name = loops.loop_name("00-seed42", loop, ("F", "minor"))
    assert "bpm-unsure" in name and "120bpm" not in name and "140bpm" not in name
    assert loops.loop_row(loop)["bpm"] is None and loops.loop_row(loop)["tempo_flagged"]


def test_half_time_prompt_is_the_same_grid(at_140):
    audio, times, _ = at_140
    loop = loops.cut_loop(audio, SR, 70, bars=2)
    assert not loop.grid.flagged and loop.grid.bpm == 70
    assert abs(loop.bar_count - 2) < loops.BAR_TOLERANCE
    assert loop.audio.shape[1] == int(round(2 * 4 * 60 / 70 * SR))
    assert "70bpm" in loops.loop_name("x", loop)


def test_too_short_for_one_bar_gets_no_loop():
    audio, _ = click_beat(140, 1.5)
    loop = loops.cut_loop(audio, SR, 140, bars=4)
    assert loop.audio is None and "too short for one bar" in loop.reason and "1.71 s" in loop.reason
    with pytest.raises(loops.LoopError, match="no loop"):
        loops.write_loop("x.wav", loop)


def test_fewer_bars_when_the_clip_is_short():
    audio, _ = click_beat(140, 5.0)  # 2.9 bars after the first beat: 2 bars fit, 4 do not
    loop = loops.cut_loop(audio, SR, 140, bars=8)
    assert loop.bars == 2


def test_names_and_loudness(at_140):
    audio, _, loop = at_140
    assert loops.loop_name("00-seed42", loop, ("F", "minor")) == "00-seed42-loop-4bars-140bpm-Fm.wav"
    assert loops.loop_name("a", loop, ("C#", "major")) == "a-loop-4bars-140bpm-C#.wav"
    assert loops.loop_name("a", loop) == "a-loop-4bars-140bpm.wav"
    loud = loops.cut_loop(audio, SR, 140, bars=4, target_lufs=-20.0)
    from stablebeat_utils.audio import integrated_loudness

    assert abs(integrated_loudness(loud.audio, SR) - loud.loudness["loudness_lufs"]) < 0.1
    assert loud.loudness["loudness_lufs"] == pytest.approx(-20.0, abs=0.1) or loud.loudness["peak_limited"]
    with pytest.raises(loops.LoopError, match="one of 1, 2, 4, 8"):
        loops.cut_loop(audio, SR, 140, bars=3)


# -- 06's loop pass over generations.jsonl ------------------------------------------------------


def _fake_generations(run_dir, specs):
    """A 06 run folder whose generations are synthetic beats: ``specs`` = [(prompt, bpm, seconds)]."""
    from stablebeat_utils.audio import write_wav
    from stablebeat_utils.runs import Run

    run_ = Run(str(run_dir))
    rows = []
    for i, (prompt, bpm, seconds) in enumerate(specs):
        audio, _ = click_beat(bpm, seconds)
        path = run_.stage_dir("06_generate") / "audio" / "base" / f"{i:02d}-seed{42 + i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, audio, SR)
        rows.append(
            {"key": f"base-{i}-{42 + i}", "model": "base", "prompt_idx": i, "prompt": prompt, "path": run_.rel(path)}
        )
    return run_, rows


def test_make_loops_names_flags_and_reasons(tmp_path):
    from stablebeat_utils import generate as gen

    run_, rows = _fake_generations(
        tmp_path / "run",
        [
            ("A dark trap beat at 140 BPM in F minor.", 140, 12),
            ("A lo-fi beat at 100 BPM in C major.", 140, 12),  # the audio is at 140: flagged
            ("A drill beat at 140 BPM.", 140, 1.2),  # too short for a bar
        ],
    )
    summary = gen.make_loops(run_, rows, bars=4)
    assert summary["loops"] == 2 and summary["loops_flagged"] == 1 and summary["loops_none"] == 1
    table = gen.load_loops(str(run_.root))
    assert [r["key"] for r in table] == ["base-0-42", "base-1-43", "base-2-44"]
    assert table[0]["path"] == "06_generate/loops/base/00-seed42-loop-4bars-140bpm-Fm.wav"
    assert re.fullmatch(r"06_generate/loops/base/01-seed43-loop-[1248]bars-bpm-unsure-C\.wav", table[1]["path"])
    assert table[1]["tempo_flagged"] and "100 BPM" in table[1]["tempo_note"]
    assert table[2]["path"] is None and "too short for one bar" in table[2]["reason"]
    for r in table[:2]:
        assert sf.info(str(run_.root / r["path"])).subtype == "PCM_24" and r["click_free"]
    # re-run: nothing new, the same table; other loop settings in the same folder are refused
    before = (run_.root / "06_generate" / "loops.jsonl").read_bytes()
    gen.make_loops(run_, rows, bars=4)
    assert (run_.root / "06_generate" / "loops.jsonl").read_bytes() == before
    # a loop file gone missing is cut again on the next run (its row is not left pointing at nothing)
    lost = run_.root / table[0]["path"]
    lost_bytes = lost.read_bytes()
    lost.unlink()
    again = gen.make_loops(run_, rows, bars=4)
    assert again["loops"] == 2 and lost.is_file() and lost.read_bytes() == lost_bytes  # the same loop, to the byte
    assert [r["key"] for r in gen.load_loops(str(run_.root))] == ["base-0-42", "base-1-43", "base-2-44"]
    with pytest.raises(gen.GenerateError, match="other settings"):
        gen.make_loops(run_, rows, bars=2)


def test_loudness_table_and_where_files_are(tmp_path):
    from stablebeat_utils import audio, generate as gen

    run_, rows = _fake_generations(tmp_path / "run", [("A trap beat at 140 BPM in F minor.", 140, 8)])
    (run_.stage_dir("06_generate") / "generations.jsonl").write_text(
        "".join(__import__("json").dumps(r) + "\n" for r in rows)
    )
    gen.make_loops(run_, rows, bars=1, lufs=-20.0)
    table = gen.loudness_table(str(run_.root))
    assert [r["kind"] for r in table] == ["generation", "loop"]
    y, sr = audio.load(run_.root / table[0]["path"])
    assert table[0]["lufs"] == round(audio.integrated_loudness(y, sr), 1)
    assert table[1]["lufs"] == pytest.approx(-20.0, abs=0.15) or table[1]["peak_dbfs"] >= -1.05
    where = {r["folder"].rsplit("/", 1)[-1]: r for r in gen.where_files_are(str(run_.root))}
    assert where["06_generate"]["files"] == 4 and where["05_train"]["files"] == 0  # 1 wav, 1 loop, 2 jsonl


# -- the downbeat: loops start on bar 1, found in the audio ---------------------------------------


def test_bar_phase_from_known_cues():
    """Kick on 1 (and 3), snare on 2 and 4 (or 3 in half-time), chords changing on 1: phase 1 wins."""
    numbers = np.arange(32) % 4
    rng = np.random.default_rng(1)
    for downbeat in range(4):
        pos = (numbers - downbeat) % 4  # 0 = beat 1 of the bar
        kick = np.where(pos == 0, 10.0, np.where(pos == 2, 8.0, 1.0)) + rng.random(32)
        snare = np.where(pos % 2 == 1, 9.0, 1.0) + rng.random(32)
        harmony = np.where((pos == 0) & (np.arange(32) % 8 < 4), 0.3, 0.02)
        phase, scores = loops.bar_phase({"kick": kick, "snare": snare, "harmony": harmony}, numbers)
        assert phase == downbeat, scores
        # each cue decides a case alone: kicks on 1 and 2 alike (only the snare on 2 tells them apart) ...
        flat = np.ones(32)
        kick12 = np.where(pos < 2, 10.0, 1.0)
        snare24 = np.where(pos % 2 == 1, 9.0, 1.0)
        assert loops.bar_phase({"kick": kick12, "snare": snare24, "harmony": 0 * flat}, numbers)[0] == downbeat
        # ... kicks on 1 and 3 alike, snare on 2 and 4 (only the chord change on 1 tells 1 from 3)
        kick13 = np.where(pos % 2 == 0, 10.0, 1.0)
        change1 = np.where(pos == 0, 0.3, 0.02)
        assert loops.bar_phase({"kick": kick13, "snare": snare24, "harmony": change1}, numbers)[0] == downbeat
        # ... four on the floor, no snare, no chords: kick accents on 1
        kick1 = np.where(pos == 0, 10.0, 6.0)
        assert loops.bar_phase({"kick": kick1, "snare": flat, "harmony": 0 * flat}, numbers)[0] == downbeat
        # half-time: snare on 3 only, kick on 1 — still beat 1
        snare = np.where(pos == 2, 9.0, 1.0)
        kick = np.where(pos == 0, 10.0, 1.0)
        phase, _ = loops.bar_phase({"kick": kick, "snare": snare, "harmony": 0 * harmony}, numbers)
        assert phase == downbeat


def test_beat_numbers_count_by_time_not_by_index():
    beats = np.r_[0.0, 0.21, np.arange(0.5, 10, 0.5)]  # a spurious beat early in the grid
    numbers = loops.beat_numbers(beats, 120)
    assert list(numbers[2:10]) == list((np.arange(8) + numbers[2]) % 4)


@pytest.mark.parametrize(
    "style, bpm, offset",
    [("plain", 90, 1.3), ("trap", 140, 2.6), ("house", 124, 3.0), ("boombap", 88, 0.0)],
)
def test_loop_starts_on_a_true_downbeat(style, bpm, offset):
    """demo's beat maker starts bar 1 at 0 s: cut ``offset`` beats off, bar lines move to known times."""
    from stablebeat_utils import demo

    beat = 60.0 / bpm
    audio = demo.make_style_beat(style, bpm, "F", "minor", 14 + offset * beat, seed=5)
    audio = audio[:, int(round(offset * beat * SR)) :]
    bar_lines = np.arange(16) * 4 * beat - offset * beat
    loop = loops.cut_loop(audio, SR, bpm, bars=2)
    assert loop.audio is not None and not loop.grid.flagged, (loop.reason, loop.grid.note)  # the tempo is right
    assert np.min(np.abs(bar_lines - loop.start_s)) < min(0.05, beat / 8), (loop.start_s, bar_lines[:4])
    assert loop.bars == 2 and abs(loop.bar_count - 2) < loops.BAR_TOLERANCE
