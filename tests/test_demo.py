"""The bundled demo dataset (stablebeat_utils.demo): synthetic beats with known truth + real recordings."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from stablebeat_utils import demo
from stablebeat_utils.runs import read_jsonl


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """STABLEBEAT_HOME in a fresh folder; the demo dataset written there once (default location)."""
    home = tmp_path_factory.mktemp("sbhome")
    old = os.environ.get("STABLEBEAT_HOME")
    os.environ["STABLEBEAT_HOME"] = str(home)
    try:
        path = demo.ensure_demo_dataset()
        yield home, path
    finally:
        if old is None:
            os.environ.pop("STABLEBEAT_HOME", None)
        else:
            os.environ["STABLEBEAT_HOME"] = old


def test_make_beat_is_deterministic_and_well_formed():
    a = demo.make_beat(140, "C", "minor", 6.0, seed=3, half_time=True)
    b = demo.make_beat(140, "C", "minor", 6.0, seed=3, half_time=True)
    c = demo.make_beat(140, "C", "minor", 6.0, seed=4, half_time=True)
    assert a.dtype == np.float32 and a.shape == (2, 6 * 44100)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.85 < np.max(np.abs(a)) <= 0.8901  # normalized to -1 dBFS, never clipping
    assert np.all(np.isfinite(a))
    # stereo, not a duplicated mono
    assert not np.allclose(a[0], a[1])


def test_make_beat_rejects_bad_arguments():
    with pytest.raises(ValueError, match="key 'H'"):
        demo.make_beat(120, "H", "minor", 2, 0)
    with pytest.raises(ValueError, match="scale 'dorian'"):
        demo.make_beat(120, "C", "dorian", 2, 0)


def test_half_time_moves_the_backbeat():
    """The clap sits on beats 2 and 4, or on beat 3 with half_time: energy in the 1-6 kHz band."""
    from scipy.signal import butter, sosfilt

    sr = 44100
    sos = butter(4, [1500, 5000], btype="band", fs=sr, output="sos")
    beat = 60 / 100
    for half, loud, quiet in ((False, (1, 3), (2,)), (True, (2,), (1, 3))):
        x = demo.make_beat(100, "A", "minor", 4 * beat * 2, seed=1, half_time=half, melody=False)
        band = np.abs(sosfilt(sos, x[0]))

        def energy(k):  # the first 60 ms after beat k of the first bar
            s = int(k * beat * sr)
            return band[s : s + int(0.06 * sr)].mean()

        assert min(energy(k) for k in loud) > 2 * max(energy(k) for k in quiet)


def test_dataset_contents_truth_and_budget(demo_home):
    home, path = demo_home
    assert path == home / "demo-beats" / demo.DEMO_VERSION
    names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    synth = [f"{s.name}.ogg" for s in demo.DEMO_SPECS]
    real = ["Karissa_Hobbs_-_Lets_Go_Fishin", "Kevin_MacLeod_-_Vibe_Ace", "admiralbob77_-_Choice_-_Drum-bass"]
    for n in synth + [f"{r}.ogg" for r in real] + [f"{r}.txt" for r in real] + ["truth.jsonl", "ATTRIBUTION.md"]:
        assert n in names, n
    assert not [n for n in names if n.startswith(".") or ".tmp" in n]  # no temp files left behind
    # truth: one row per synthetic file, the spec's values
    truth = read_jsonl(path / "truth.jsonl")
    assert [t["source"] for t in truth] == synth
    for t, s in zip(truth, demo.DEMO_SPECS):
        assert t == {
            "source": f"{s.name}.ogg",
            "bpm": float(s.bpm),
            "key": s.key,
            "scale": s.scale,
            "half_time": s.half_time,
            "swing": s.swing,
            "synthetic": True,
        }
    # variety the brief asks for
    assert {t["scale"] for t in truth} == {"major", "minor"}
    assert any(t["half_time"] for t in truth) and not all(t["half_time"] for t in truth)
    assert min(t["bpm"] for t in truth) >= 70 and max(t["bpm"] for t in truth) <= 160
    assert len({t["key"] for t in truth}) >= 6
    # durations, sample rate, no clipping after Vorbis
    for s in demo.DEMO_SPECS:
        info = sf.info(str(path / f"{s.name}.ogg"))
        assert info.samplerate == 44100 and info.channels == 2 and info.format == "OGG"
        assert 50 <= info.duration <= 80 and abs(info.duration - s.seconds) < 0.01
        x, _ = sf.read(str(path / f"{s.name}.ogg"), dtype="float32")
        assert np.max(np.abs(x)) < 0.99
    # the real recordings are byte copies with their attribution
    for r in real:
        assert (path / f"{r}.ogg").read_bytes() == (demo.PACKAGE_AUDIO / f"{r}.ogg").read_bytes()
        assert "creativecommons.org" in (path / f"{r}.txt").read_text()
    # size budget: a few MB
    synth_bytes = sum((path / n).stat().st_size for n in synth)
    total = sum(p.stat().st_size for p in path.iterdir())
    assert synth_bytes < 7e6, synth_bytes
    assert total < 12e6, total


def test_dataset_is_idempotent_and_deterministic(demo_home, monkeypatch):
    _, path = demo_home
    target = path / "demo_beat_02.ogg"
    before, _ = sf.read(str(target), dtype="float32")
    mtime = target.stat().st_mtime_ns

    def must_not_render(*args, **kwargs):
        raise AssertionError("a complete demo dataset was rendered again")

    with monkeypatch.context() as m:
        m.setattr(demo, "render", must_not_render)
        m.setattr(demo, "_write_ogg", must_not_render)
        assert demo.ensure_demo_dataset() == path
    assert target.stat().st_mtime_ns == mtime  # nothing rewritten
    # a file lost (or a killed first run): the next call rewrites it, to the same audio
    target.unlink()
    assert demo.ensure_demo_dataset() == path
    after, _ = sf.read(str(target), dtype="float32")
    assert np.array_equal(before, after)


def test_resolve_input_dir(demo_home, tmp_path):
    _, path = demo_home
    assert demo.resolve_input_dir("demo") == path
    with pytest.raises(FileNotFoundError, match="nowhere"):
        demo.resolve_input_dir(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    with pytest.raises(FileNotFoundError, match="no audio"):
        demo.resolve_input_dir(str(empty))
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        demo.resolve_input_dir(str(empty / "notes.txt"))
    (empty / "sub").mkdir()
    sf.write(str(empty / "sub" / "a.wav"), np.zeros((100, 2)), 44100)
    assert demo.resolve_input_dir(str(empty)) == empty


def test_package_data_lists_licences():
    text = (demo.PACKAGE_AUDIO / "ATTRIBUTION.md").read_text()
    for p in demo.PACKAGE_AUDIO.glob("*.ogg"):
        assert p.name in text
        assert p.with_suffix(".txt").is_file()
    assert "CC BY 3.0" in text and "CC BY-NC" in text
    assert json.loads(json.dumps(demo.spec_dicts()))[0]["name"] == "demo_beat_01"
