"""stablebeat_utils.segment (notebook 01_segment): formats, bad inputs, duplicates, beat-aligned cuts,
loudness, determinism across worker counts, resumability under SIGKILL, the input left untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from audio_fixtures import write_av, write_sf  # noqa: E402

from stablebeat_utils import audio, segment  # noqa: E402
from stablebeat_utils.runs import read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SR = 22050  # the beats are rendered at 22.05 kHz: every clip goes through the resampler


def beat(bpm: float, seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """A quick beat (demo.make_beat is richer but ~10x slower): kick on every downbeat and beat 3,
    snare on 2 and 4, 8th hats, a chord tone per bar from ``seed``. Stereo float32, bar 0 at t=0."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros((2, n), np.float32)
    t = np.arange(int(0.3 * sr)) / sr
    kick = (np.sin(2 * np.pi * (50 + 80 * np.exp(-t / 0.03)) * t) * np.exp(-t / 0.1)).astype(np.float32)
    noise = rng.standard_normal(len(t)).astype(np.float32)
    snare = noise * np.exp(-t / 0.05).astype(np.float32) * 0.5
    hat = np.diff(noise, prepend=0) * np.exp(-t / 0.01).astype(np.float32) * 0.15
    step = 60.0 / bpm / 2
    for k in range(int(seconds / step) + 1):
        at = int(round(k * step * sr))
        for sig, on in ((kick, k % 8 in (0, 4)), (snare, k % 8 in (2, 6)), (hat, True)):
            if on and at < n:
                m = min(len(sig), n - at)
                out[:, at : at + m] += sig[:m] * (1.0 if k % 8 == 0 or sig is not kick else 0.7)
    bar = 8 * step
    tt = np.arange(n) / sr
    notes = rng.choice([220.0, 261.6, 293.7, 329.6, 392.0], size=int(seconds / bar) + 1)
    out += 0.08 * np.sin(2 * np.pi * notes[(tt / bar).astype(int)] * tt).astype(np.float32)
    return out * np.float32(0.8 / np.max(np.abs(out)))


def tree_state(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (
            p.is_dir(),
            st.st_mtime_ns,
            None if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest(),
        )
    return out


@pytest.fixture(scope="session")
def beats_dir(tmp_path_factory) -> Path:
    """A folder of good, duplicated and broken sources (~6 min of audio at low complexity)."""
    d = tmp_path_factory.mktemp("beats")
    a = beat(120, 50, 1)  # bars of exactly 2 s, the kick on every downbeat
    write_sf(d / "beat_a.wav", a, SR)
    (d / "sub").mkdir()
    shutil.copyfile(d / "beat_a.wav", d / "sub" / "copy_of_a.wav")  # byte-identical
    write_sf(d / "dup_a_48k.flac", audio.resample(a, SR, 48000), 48000)  # same audio, other container + rate
    write_sf(d / "beat_b.flac", beat(95, 46, 2)[:1], SR)  # mono
    write_sf(d / "beat_c.ogg", beat(140, 46, 3), SR)
    write_av(d / "beat_d.mp3", beat(100, 46, 4, sr=44100), 44100, "libmp3lame")
    write_av(d / "beat_e.m4a", beat(130, 46, 5, sr=44100), 44100, "aac")
    three = beat(110, 46, 6)
    write_sf(d / "beat_f.aiff", np.vstack([three, three[:1] * 0.5]), SR)  # 3 channels
    write_sf(d / "beat_g_other.wav", beat(120, 50, 7), SR)  # same tempo and length as a, not a duplicate
    # bad ones
    (d / "empty.wav").write_bytes(b"")
    good = (d / "beat_a.wav").read_bytes()
    (d / "truncated.wav").write_bytes(good[: len(good) // 2])
    (d / "random.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(30000))
    (d / "notes.mp3").write_text("this is a text file with an mp3 name\n" * 30)
    write_sf(d / "silent.wav", np.zeros((2, SR * 30), np.float32), SR)
    nan = beat(120, 30, 8)
    nan[0, 1000] = np.nan
    write_sf(d / "nan.wav", nan, SR, subtype="FLOAT")
    write_sf(d / "short.wav", beat(120, 12, 9), SR)
    (d / "a_folder.wav").mkdir()
    (d / ".wav").mkdir()
    (d / "._beat_a.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)  # AppleDouble
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    (d / "cover.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 100)
    return d


def _run(run_dir: Path, input_dir: Path, workers: int) -> dict:
    return segment.run(run_dir=run_dir, input_dir=input_dir, workers=workers, progress=False)


@pytest.fixture(scope="session")
def reference(beats_dir, tmp_path_factory) -> tuple[Path, dict, dict]:
    before = tree_state(beats_dir)
    run_dir = tmp_path_factory.mktemp("run_ref")
    summary = _run(run_dir, beats_dir, workers=2)
    assert tree_state(beats_dir) == before, "the input folder was modified"
    return run_dir, summary, {r["clip_id"]: r for r in read_jsonl(run_dir / "01_segment" / "segments.jsonl")}


def outputs(run_dir: Path) -> dict:
    stage = run_dir / "01_segment"
    files = {p.name: p.read_bytes() for p in sorted((stage / "clips").iterdir())}
    return {"segments.jsonl": (stage / "segments.jsonl").read_bytes(), **files}


def by_source(rows: dict) -> dict:
    out: dict = {}
    for r in rows.values():
        out.setdefault(r["source"], []).append(r)
    return out


def test_row_contract_and_clips(reference):
    run_dir, summary, rows = reference
    for r in rows.values():
        for k in ("clip_id", "source", "start", "duration", "path", "status", "reason"):
            assert k in r
        assert r["status"] in ("ok", "rejected")
        if r["status"] == "ok":
            info = sf.info(str(run_dir / r["path"]))
            assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
            assert info.duration == pytest.approx(r["duration"], abs=1e-3)
            assert 20.0 - 0.05 <= r["duration"] <= 35.0 + 0.05
            assert r["path"] == f"01_segment/clips/{r['clip_id']}.wav"
            assert r["reason"] == ""
            x, _ = sf.read(str(run_dir / r["path"]), dtype="float32")
            assert np.max(np.abs(x)) <= 10 ** (-1 / 20) + 1e-4  # the ceiling: nothing clips
            measured = audio.integrated_loudness(x.T, 44100)
            assert measured == pytest.approx(r["loudness_lufs"], abs=0.1)
            assert measured <= -14.0 + 0.1
            if not r["peak_limited"]:
                assert measured == pytest.approx(-14.0, abs=0.1)
        else:
            assert r["reason"] and r["path"] is None
    assert summary["clips"] == sum(r["status"] == "ok" for r in rows.values())
    # no stray files: exactly the ok clips
    assert sorted(p.name for p in (run_dir / "01_segment" / "clips").iterdir()) == sorted(
        Path(r["path"]).name for r in rows.values() if r["status"] == "ok"
    )


def test_formats_channels_and_rates_all_give_two_clips(reference):
    _, _, rows = reference
    src = by_source(rows)
    for name in (
        "beat_a.wav",
        "beat_b.flac",
        "beat_c.ogg",
        "beat_d.mp3",
        "beat_e.m4a",
        "beat_f.aiff",
        "beat_g_other.wav",
    ):
        got = src[name]
        assert [r["status"] for r in got] == ["ok", "ok"], (name, got)
        (s0, s1) = sorted(got, key=lambda r: r["index"])
        assert s0["start"] + s0["duration"] <= s1["start"] + 1e-3  # no overlap, different parts
    assert src["beat_b.flac"][0]["source_channels"] == 1
    assert src["beat_f.aiff"][0]["source_channels"] == 3
    assert src["beat_d.mp3"][0]["source_sr"] == 44100


def test_starts_on_bars(reference):
    _, _, rows = reference
    for r in by_source(rows)["beat_a.wav"]:  # 120 BPM: a bar every 2 s, starting at 0
        assert r["cut_on"] == "bar"
        for edge in (r["start"], r["start"] + r["duration"]):
            off = (edge + 1.0) % 2.0 - 1.0
            assert abs(off) < 0.05, (edge, r)


def test_bad_inputs_are_rejected_with_reasons(reference):
    _, _, rows = reference
    src = by_source(rows)
    expected = {
        "empty.wav": "empty file",
        "truncated.wav": "truncated",
        "random.wav": "not audio",
        "notes.mp3": "not audio",
        "silent.wav": "silent",
        "nan.wav": "NaN",
        "short.wav": "too short",
        "a_folder.wav": "is a folder",
        ".wav": "is a folder",
        "._beat_a.wav": "AppleDouble",
        "sub/copy_of_a.wav": "duplicate of beat_a.wav",
        "dup_a_48k.flac": "duplicate of beat_a.wav",
    }
    for name, words in expected.items():
        assert len(src[name]) == 1, name
        r = src[name][0]
        assert r["status"] == "rejected" and words in r["reason"], (name, r["reason"])
        assert r["clip_id"].endswith("-rejected")
    assert ".DS_Store" not in src and "cover.jpg" not in src


def test_deterministic_across_workers(reference, beats_dir, tmp_path):
    run_dir, _, _ = reference
    _run(tmp_path, beats_dir, workers=1)
    assert outputs(tmp_path) == outputs(run_dir)


def _kill_at(run_dir: Path, input_dir: Path, min_rows: int, delay: float = 0.0) -> None:
    code = (
        "import sys; from stablebeat_utils import segment; "
        "segment.run(run_dir=sys.argv[1], input_dir=sys.argv[2], workers=2, progress=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), str(input_dir)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seg = run_dir / "01_segment" / "segments.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            n = len(read_jsonl(seg)) if seg.exists() else 0
            if n >= min_rows:
                break
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the workers die with it
        proc.wait()


def test_resume_after_sigkill_gives_the_same_bytes(reference, beats_dir, tmp_path):
    ref_dir, _, ref_rows = reference
    n = len(ref_rows)
    for min_rows, delay in ((0, 3.0), (3, 0.0), (n // 2, 0.13)):
        _kill_at(tmp_path, beats_dir, min_rows, delay)
        assert not (tmp_path / "01_segment" / "stage.json").exists(), "killed too late to test anything"
    _run(tmp_path, beats_dir, workers=2)
    assert outputs(tmp_path) == outputs(ref_dir)


def test_rerun_is_skipped_and_changed_parameters_start_over(reference, beats_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    shutil.copytree(reference[0], run_dir)

    def must_not_work(*args, **kwargs):
        raise AssertionError("a finished 01_segment analysed its files again")

    with monkeypatch.context() as m:  # done: nothing recomputed
        m.setattr(segment, "_ordered_bounded", must_not_work)
        assert _run(run_dir, beats_dir, workers=2)["clips"] == reference[1]["clips"]
    summary = segment.run(run_dir=run_dir, input_dir=beats_dir, segments_per_track=1, workers=1, progress=False)
    rows = read_jsonl(run_dir / "01_segment" / "segments.jsonl")
    assert summary["clips"] == len([r for r in rows if r["status"] == "ok"])
    assert all(r["of"] == 1 for r in rows)


def test_short_track_gives_fewer_clips(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_sf(d / "medium.wav", beat(120, 34, 11), SR)
    summary = segment.run(run_dir=tmp_path / "run", input_dir=d, workers=1, progress=False)
    rows = read_jsonl(tmp_path / "run" / "01_segment" / "segments.jsonl")
    assert summary["clips"] == 1 and [r["status"] for r in rows] == ["ok"]


def test_bad_folders_and_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(segment.SegmentError, match="does not exist"):
        segment.run(run_dir=tmp_path / "run", input_dir=tmp_path / "nope", workers=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(segment.SegmentError, match="no audio"):
        segment.run(run_dir=tmp_path / "run", input_dir=tmp_path / "empty", workers=1)
    with pytest.raises(segment.SegmentError, match="min_seconds"):
        segment.run(run_dir=tmp_path / "run", input_dir=tmp_path / "empty", min_seconds=40, max_seconds=30)
    assert not (tmp_path / "run").exists()


def test_clip_ids_are_stable_and_safe():
    a = segment.clip_id_for("Dir/My Beat #1 (ft. Ø).WAV", 0)
    assert a == segment.clip_id_for("Dir/My Beat #1 (ft. Ø).WAV", 0)
    assert a.startswith("my_beat_1_ft-") and a.endswith("-00")  # Ø has no ASCII decomposition
    assert a != segment.clip_id_for("Other/My Beat #1 (ft. Ø).WAV", 0)
    assert segment.clip_id_for(".wav", None).startswith("track-")


def test_analyse_file_matches_the_stage(reference, beats_dir):
    _, _, rows = reference
    a = segment.analyse_file(beats_dir / "beat_a.wav")
    starts = sorted(r["start"] for r in by_source(rows)["beat_a.wav"])
    assert [s for s, _ in a.segments] == pytest.approx(starts, abs=1e-3)
    assert a.tempo == pytest.approx(120, rel=0.03) or a.tempo == pytest.approx(60, rel=0.03)
    assert len(a.onset) == len(a.frame_times) == len(a.rms_db)


def test_a_task_that_kills_its_worker_becomes_one_rejected_result():
    """A decoder segfault kills a worker and breaks the pool: the culprit is isolated, the rest kept."""
    import crashy

    tasks = [1, 2, "die", 3, ("done", 100), 4, 5, 6]
    got = list(
        segment._ordered_bounded(crashy.square_or_die, tasks, workers=2, window=4, on_crash=lambda t: f"crashed:{t}")
    )
    assert got == [1, 4, "crashed:die", 9, 100, 16, 25, 36]


def test_workers_compile_librosa_one_at_a_time():
    """numba's on-disk cache breaks when two processes compile the same function at once (seen in
    CI: every worker then died in beat_track). Each segment worker warms librosa's jitted code
    holding compat.jit_cache_lock(): while another process holds it, no worker gets past it."""
    import threading

    import crashy
    from stablebeat_utils import compat

    got: list = []
    lock = compat.jit_cache_lock()
    with lock:
        worker = threading.Thread(
            target=lambda: got.extend(
                segment._ordered_bounded(
                    crashy.square_or_die, [1, 2, 3], workers=2, window=4, initializer=segment._warm_worker
                )
            )
        )
        worker.start()
        worker.join(timeout=8)
        assert worker.is_alive() and got == []  # both workers wait for the lock
    worker.join(timeout=120)
    assert got == [1, 4, 9]  # released: they warm up (loading the cache) and work
    assert compat.jit_cache_lock().lock_file == lock.lock_file  # one lock per librosa install


def test_a_file_that_crashed_its_worker_is_tried_again_on_the_next_run(reference, beats_dir, tmp_path, capsys):
    """A worker killed under a file (out of memory, a broken library) is not a verdict on the file:
    the next run retries it and ends exactly where a run without the crash ends."""
    ref_dir, _, ref_rows = reference
    run_dir = tmp_path / "r"
    shutil.copytree(ref_dir, run_dir)
    seg = run_dir / "01_segment" / "segments.jsonl"
    victim = sorted({r["source"] for r in ref_rows.values() if r["status"] == "ok"})[0]
    rows = [r for r in read_jsonl(seg) if r["source"] != victim]
    for r in ref_rows.values():  # its clips are gone too, as after a crash
        if r["source"] == victim:
            (run_dir / r["path"]).unlink()
    crash_row = segment._crashed({"rel": victim})["rows"][0]
    seg.write_text("".join(json.dumps(r) + "\n" for r in rows + [crash_row]))  # the stage is still marked done
    summary = _run(run_dir, beats_dir, workers=2)
    assert summary["crashed"] == 0
    assert outputs(run_dir) == outputs(ref_dir)
    assert "every file crashed" not in capsys.readouterr().err


def test_flac_clips_decode_like_wav_and_a_changed_format_starts_over(reference, beats_dir, tmp_path, capsys):
    """clip_format=flac: the same rows (but .flac paths), every clip decodes to the WAV run's samples;
    switching the format on an existing run folder starts the stage over (never a mix of formats)."""
    run_dir = tmp_path / "r"
    shutil.copytree(reference[0], run_dir)
    summary = segment.run(run_dir=run_dir, input_dir=beats_dir, workers=2, clip_format="flac", progress=False)
    assert "starting this stage over" in capsys.readouterr().out
    rows = {r["clip_id"]: r for r in read_jsonl(run_dir / "01_segment" / "segments.jsonl")}
    assert summary["clips"] == reference[1]["clips"] and rows.keys() == reference[2].keys()
    clips = sorted(p.name for p in (run_dir / "01_segment" / "clips").iterdir())
    assert clips and all(n.endswith(".flac") for n in clips)
    for cid, row in rows.items():
        ref = reference[2][cid]
        assert {k: v for k, v in row.items() if k != "path"} == {k: v for k, v in ref.items() if k != "path"}
        if row["status"] != "ok":
            continue
        assert row["path"] == ref["path"][:-4] + ".flac"
        a, _ = audio.load(reference[0] / ref["path"])
        b, _ = audio.load(run_dir / row["path"])
        assert np.array_equal(a, b), cid
    with pytest.raises(segment.SegmentError, match="clip_format"):
        segment.run(run_dir=tmp_path / "x", input_dir=beats_dir, workers=1, clip_format="mp3", progress=False)


def test_a_run_folder_too_small_stops_before_any_clip_and_names_flac(beats_dir, tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    from stablebeat_utils import storage

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 90_000_000, 90_000_000))
    run_dir = tmp_path / "run"
    with pytest.raises(storage.StorageError) as err:
        segment.run(run_dir=run_dir, input_dir=beats_dir, workers=1, progress=False)
    msg = str(err.value)
    assert "STOP" in msg and "clip_format='flac'" in msg and "free" in msg
    assert not (run_dir / "01_segment" / "clips").exists()  # nothing written
    plan = json.loads((run_dir / "storage_plan.json").read_text())["01_segment"]
    assert plan["fits"] is False and plan["facts"]["sources"] >= 10
    assert "storage plan" in capsys.readouterr().out


def test_clip_dir_keeps_clips_outside_the_run_folder_and_rebuilds_them_bit_identical(
    reference, beats_dir, tmp_path, capsys
):
    """clip_dir (Colab: the VM's local disk): the same rows, the same clip bytes in this run's own
    subfolder of clip_dir, nothing under RUN_DIR/01_segment/clips; after the folder is wiped (a
    disconnect) a re-run rebuilds every clip bit-identical without touching the rows; a changed
    clip_dir moves the clips."""
    from stablebeat_utils import clipstore

    ref_dir, _, ref_rows = reference
    run_dir, local = tmp_path / "r", tmp_path / "local"
    summary = segment.run(run_dir=run_dir, input_dir=beats_dir, workers=2, clip_dir=str(local), progress=False)
    folder = clipstore.folder_for(str(local), run_dir)
    assert folder.parent == local and folder.name.startswith("r-")
    assert summary["clips_dir"] == str(folder) and summary["clips_rebuilt"] == 0
    seg = run_dir / "01_segment" / "segments.jsonl"
    assert seg.read_bytes() == (ref_dir / "01_segment" / "segments.jsonl").read_bytes()  # rows as ever
    assert not (run_dir / "01_segment" / "clips").exists()
    ref_clips = {k: v for k, v in outputs(ref_dir).items() if k != "segments.jsonl"}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == ref_clips
    ok = [r for r in ref_rows.values() if r["status"] == "ok"]
    assert all(segment.clip_path(run_dir, r) == folder / Path(r["path"]).name for r in ok)

    # a disconnect wipes the local disk: the re-run rebuilds every clip, the rows stay as they are
    shutil.rmtree(local)
    seg_state = seg.read_bytes()
    again = segment.run(run_dir=run_dir, input_dir=beats_dir, workers=2, clip_dir=str(local), progress=False)
    assert again["clips_rebuilt"] == len(ok) and f"{len(ok)} missing clip(s) rebuilt" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == ref_clips
    assert seg.read_bytes() == seg_state  # the rows are not redone
    (folder / Path(ok[0]["path"]).name).unlink()  # one clip gone: one rebuilt
    assert segment.run(run_dir=run_dir, input_dir=beats_dir, clip_dir=str(local), progress=False)["clips_rebuilt"] == 1
    assert segment.run(run_dir=run_dir, input_dir=beats_dir, clip_dir=str(local), progress=False)["clips_rebuilt"] == 0

    # back to the run folder: the clips move (none rebuilt), the old folder is gone
    moved = segment.run(run_dir=run_dir, input_dir=beats_dir, workers=2, progress=False)
    assert moved["clips_moved"] == len(ok) and moved["clips_rebuilt"] == 0 and not folder.exists()
    assert outputs(run_dir) == outputs(ref_dir)


def test_a_clip_that_cannot_be_rebuilt_as_recorded_stops_the_stage_by_name(tmp_path):
    """A source changed since its clips were cut: its clips are not rebuilt (they would not be the
    clips that 02-05 describe); the others are, and the stage stops naming the source."""
    src = tmp_path / "in"
    src.mkdir()
    write_sf(src / "one.wav", beat(120, 50, 1), SR)
    write_sf(src / "two.wav", beat(100, 46, 2), SR)
    run_dir, local = tmp_path / "r", tmp_path / "local"
    kw = dict(run_dir=run_dir, input_dir=src, workers=1, clip_dir=str(local), progress=False)
    segment.run(**kw)
    shutil.rmtree(local)
    write_sf(src / "two.wav", beat(100, 46, 3), SR)  # replaced by another beat
    with pytest.raises(segment.SegmentError, match=r"two\.wav: the source no longer gives the recorded clips"):
        segment.run(**kw)
    from stablebeat_utils import clipstore

    folder = clipstore.folder_for(str(local), run_dir)
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["one", "one"]  # one.wav's clips rebuilt
