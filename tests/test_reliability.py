"""Cross-cutting reliability: bad inputs, interruptions (SIGKILL), parameters, disk full, secrets and
unsafe checkpoints — nothing lost, nothing leaked.

Complements (never repeats) tests/test_segment.py (01's bad inputs and SIGKILL resume),
tests/test_params.py (runner-level parameter errors), tests/test_runs.py (atomic writes) and
tests/test_publish.py (the publish dry run never writes the token).

The audio is generated here (tests/badinputs.py), never committed.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pickle
import random
import select
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
import badinputs  # noqa: E402

from stablebeat_utils import evaluate, models, prompts, runs, segment, tag, tempo_key  # noqa: E402
from stablebeat_utils.runs import RunFolderError, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stablebeat_utils"
TAG_P = dict(clap_model="tiny:clap", batch_size=2, device="cpu")
PROMPT_P = dict(batch_size=1, generation_length=12, n_clusters=3, device="cpu")
JUNK_CLIP = b"RIFF\x24\x00\x01\x00WAVEfmt " + bytes(range(256)) * 8  # a clip file damaged on disk


def tree_state(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (
            p.is_dir(),
            p.lstat().st_mtime_ns,
            None if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
    }


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_no_temp_files(root: Path) -> None:
    temps = [f for f in files_under(root) if ".tmp" in Path(f).name]
    assert not temps, f"temporary files left behind: {temps}"


def assert_complete_jsonl(path: Path) -> None:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: last line cut"
    keys = [json.loads(line).get("clip_id") or json.loads(line).get("key") for line in data.splitlines()]
    assert len(keys) == len(set(keys)), f"{path}: duplicate rows"


# =============================================================================================
# 1. the bad-input corpus through every stage that reads audio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expect = badinputs.make_corpus(root / "in")
    before = tree_state(root / "in")
    run_dir = root / "run"
    summary = segment.run(run_dir=run_dir, input_dir=root / "in", segments_per_track=1, workers=2, progress=False)
    assert tree_state(root / "in") == before, "01_segment modified its input folder"
    return root / "in", run_dir, expect, summary


def test_corpus_every_source_accounted_for_and_usable_ones_used(corpus):
    in_dir, run_dir, expect, summary = corpus
    rows = read_jsonl(run_dir / "01_segment" / "segments.jsonl")
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == set(expect), "a source is missing from segments.jsonl, or an extra one appeared"
    assert summary["sources"] == len(expect) and summary["ignored_files"] == len(badinputs.IGNORED)
    for source, want in expect.items():
        got = by_source[source]
        if want == "ok":
            assert [r["status"] for r in got] == ["ok"], (source, got)
            clip = run_dir / got[0]["path"]
            info = sf.info(str(clip))
            assert (info.samplerate, info.channels) == (44100, 2) and 20 <= info.duration <= 35.05, source
            x, _ = sf.read(str(clip), dtype="float32")
            assert np.isfinite(x).all() and np.abs(x).max() > 0.05, source
        else:
            assert len(got) == 1 and got[0]["status"] == "rejected", (source, got)
            assert want in got[0]["reason"], (source, got[0]["reason"])
    assert summary["clips"] == sum(v == "ok" for v in expect.values())
    # the clip ids of unicode/space/nested names are plain ASCII file names
    for r in rows:
        assert r["clip_id"].isascii() and " " not in r["clip_id"] and "/" not in r["clip_id"]
    assert files_under(run_dir / "01_segment" / "clips") == sorted(
        Path(r["path"]).name for r in rows if r["status"] == "ok"
    )
    assert_no_temp_files(run_dir)


@pytest.fixture(scope="module")
def downstream(corpus, tmp_path_factory, tempocnn_graph):
    """The corpus run + one clip file damaged on disk + one row whose clip is gone, through 02, 03, 07."""
    _, src_run, _, _ = corpus
    run_dir = tmp_path_factory.mktemp("downstream")
    shutil.copytree(src_run / "01_segment", run_dir / "01_segment")
    seg = run_dir / "01_segment" / "segments.jsonl"
    extra = [
        {
            "clip_id": "zz_damaged-00",
            "source": "damaged.wav",
            "index": 0,
            "of": 1,
            "start": 0.0,
            "duration": 25.0,
            "path": "01_segment/clips/zz_damaged-00.wav",
            "status": "ok",
            "reason": "",
        },
        {
            "clip_id": "zz_missing-00",
            "source": "missing.wav",
            "index": 0,
            "of": 1,
            "start": 0.0,
            "duration": 25.0,
            "path": "01_segment/clips/zz_missing-00.wav",
            "status": "ok",
            "reason": "",
        },
    ]
    (run_dir / "01_segment" / "clips" / "zz_damaged-00.wav").write_bytes(JUNK_CLIP)
    with open(seg, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in extra)
    inputs = tree_state(run_dir / "01_segment")
    ok = [r for r in read_jsonl(seg) if r["status"] == "ok"]
    out = {"ok": ok, "run_dir": run_dir}
    out["02"] = tag.run(run_dir=str(run_dir), **TAG_P)
    out["03"] = tempo_key.run(run_dir=str(run_dir), tempo_model=str(tempocnn_graph), workers=1)
    # 07 reads generated clips: a good one (the 7350 Hz mono source's), the damaged one, the missing one
    good = next(r for r in ok if r["source"] == "mono_7350.wav")
    gens = [
        {"path": r["path"], "prompt": f"A dark trap beat at {90 + i} BPM in A minor.", "model": m, "seed": i}
        for i, (r, m) in enumerate(zip([good, extra[0], extra[1]], ["base", "finetune", "base"]))
    ]
    (run_dir / "06_generate").mkdir()
    (run_dir / "06_generate" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    out["07"] = evaluate.run(
        run_dir=str(run_dir),
        tempo_model=str(tempocnn_graph),
        clap_model="tiny:clap",
        device="cpu",
        workers=1,
        reference="none",
        spectrogram_pairs=1,
    )
    assert tree_state(run_dir / "01_segment") == inputs, "a later stage modified 01_segment"
    return out


@pytest.mark.parametrize(
    "stage, file, error_key", [("02", "02_tag/tags.jsonl", "error"), ("03", "03_tempo_key/tempo_key.jsonl", "error")]
)
def test_clip_readers_give_one_row_per_clip_and_name_the_bad_ones(downstream, stage, file, error_key):
    run_dir = downstream["run_dir"]
    rows = read_jsonl(run_dir / file)
    assert_complete_jsonl(run_dir / file)
    assert [r["clip_id"] for r in rows] == sorted(r["clip_id"] for r in downstream["ok"])  # every clip, once
    by_id = {r["clip_id"]: r for r in rows}
    assert "zz_damaged-00.wav" in by_id["zz_damaged-00"][error_key]
    assert "not audio" in by_id["zz_damaged-00"][error_key]
    assert "zz_missing-00.wav" in by_id["zz_missing-00"][error_key]
    assert "not found" in by_id["zz_missing-00"][error_key]
    good = [r for cid, r in by_id.items() if not cid.startswith("zz_")]
    assert good and all(not r.get(error_key) for r in good), [r.get(error_key) for r in good]
    if stage == "03":  # every usable clip (7350 Hz mono, 96 kHz float, 5.1, clipped...) got a tempo and key
        assert all(r["tempo_raw"] and r["key_raw"] for r in good)
    else:
        assert all(r["scores"]["genres"] for r in good)
    assert downstream[stage]["errors"] == 2


def test_evaluate_measures_good_clips_and_reports_bad_ones(downstream):
    import pandas as pd

    run_dir = downstream["run_dir"]
    df = pd.read_csv(run_dir / "07_evaluate" / "metrics.csv")
    assert len(df) == 3 and downstream["07"]["errors"] == 2
    errors = {Path(p).stem: e for p, e in zip(df["path"], df["error"])}
    assert "not audio" in errors["zz_damaged-00"] and "zz_damaged-00.wav" in errors["zz_damaged-00"]
    assert "not found" in errors["zz_missing-00"] and "zz_missing-00.wav" in errors["zz_missing-00"]
    good = df[~df["path"].str.contains("zz_")]
    assert good["error"].isna().all() and good["spectral_centroid"].notna().all() and good["bpm"].notna().all()
    for name in ("report.md", "summary.json", "card_table.md"):
        assert (run_dir / "07_evaluate" / name).is_file()
    assert_no_temp_files(run_dir)


# =============================================================================================
# 2. SIGKILL at random points, then a re-run: the same outputs as an uninterrupted run


class StageServer:
    """tests/badinputs.py's server: forks a child per stage run, so a kill costs no re-import."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "badinputs.py"), "serve"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            stderr=open(log_dir / "server.err", "w"),
        )
        assert self._read(180).get("ready"), "the stage server did not start"

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the stage server did not answer in {timeout} s"
        line = self.proc.stdout.readline()
        assert line, f"the stage server died: {(self.log_dir / 'server.err').read_text()[-2000:]}"
        return json.loads(line)

    def run(self, module: str, kill_after: float | None = None, **kwargs) -> dict:
        log = self.log_dir / f"{module}-{time.monotonic_ns()}.log"
        self.proc.stdin.write(json.dumps({"module": module, "kwargs": kwargs, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        pid = self._read(30)["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.killpg(pid, signal.SIGKILL)  # the stage and every worker process it started
            except ProcessLookupError:
                pass
        try:
            done = self._read(150)
        except AssertionError:
            os.killpg(pid, signal.SIGKILL)  # a hung stage: do not leave it behind
            raise
        done["killed"] = os.WIFSIGNALED(done["status"]) and os.WTERMSIG(done["status"]) == signal.SIGKILL
        done["ok"] = os.WIFEXITED(done["status"]) and os.WEXITSTATUS(done["status"]) == 0
        done["log"] = log.read_text(errors="replace") if log.exists() else ""
        return done

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = StageServer(tmp_path_factory.mktemp("server"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def small_run(corpus, tmp_path_factory):
    """A run folder as 01 leaves it, 3 short clips (12 s crops of the corpus clips), + 02/03 rows for 04."""
    _, src_run, _, _ = corpus
    root = tmp_path_factory.mktemp("small") / "template"
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    rows = []
    for i, r in enumerate(
        [r for r in read_jsonl(src_run / "01_segment" / "segments.jsonl") if r["status"] == "ok"][:3]
    ):
        x, sr = sf.read(str(src_run / r["path"]), dtype="float32", frames=12 * 44100)
        sf.write(str(clips / f"{r['clip_id']}.wav"), x, sr, subtype="PCM_16")
        rows.append({**r, "duration": 12.0})
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = tag.load_vocab()
    tags, tks = [], []
    for i, r in enumerate(rows):
        tags.append(
            {"clip_id": r["clip_id"], **{f"{f}_tags": [e.tag for e in vocab[f][i : i + 2]] for f in tag.FAMILIES}}
        )
        tks.append(
            {
                "clip_id": r["clip_id"],
                "tempo": 90.0 + 10 * i,
                "key": ["A", "C", "F#", "Eb"][i],
                "scale": ["minor", "major"][i % 2],
                "tempo_confidence": 0.9,
                "key_confidence": 0.8,
            }
        )
    (root / "02_tag").mkdir()
    (root / "02_tag" / "tags.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tags))
    (root / "03_tempo_key").mkdir()
    (root / "03_tempo_key" / "tempo_key.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tks))
    gens = [
        {
            "path": r["path"],
            "prompt": f"A trap beat at {100 + i} BPM in C minor.",
            "model": ["base", "finetune"][i % 2],
            "seed": i,
        }
        for i, r in enumerate(rows)
    ]
    (root / "06_generate").mkdir()
    (root / "06_generate" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    return root


def _stage_outputs_equal(ref: Path, got: Path) -> None:
    """The same files; the same bytes except the stage record's timings/counters and npz zip dates."""
    assert files_under(got) == files_under(ref)
    for rel in files_under(ref):
        a, b = ref / rel, got / rel
        if rel.endswith("stage.json"):
            ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
            assert (ra["status"], ra["params"]) == (rb["status"], rb["params"]), rel
        elif rel.endswith("summary.json"):  # 07: what this run computed now differs by design
            skip = {"measured_now", "clap_embedded_now"}
            ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
            assert {k: v for k, v in ra.items() if k not in skip} == {k: v for k, v in rb.items() if k not in skip}
        elif rel.endswith(".npz"):  # np.savez stamps the zip entries with the time of writing
            with np.load(a) as za, np.load(b) as zb:
                assert sorted(za) == sorted(zb) and all(np.array_equal(za[k], zb[k]) for k in za), rel
        elif rel.startswith("cache/") and rel.endswith(".jsonl"):
            # 07's measurement cache: append order follows worker completion; rows must match
            assert_complete_jsonl(b)
            key = lambda r: r["key"]  # noqa: E731
            assert sorted(read_jsonl(a), key=key) == sorted(read_jsonl(b), key=key), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel


KILL_CASES = {
    # module, stage folder, keyword arguments (tempo_model filled in by the test)
    "tag": ("02_tag", dict(TAG_P, batch_size=1)),
    "tempo_key": ("03_tempo_key", dict(workers=2)),
    "prompts": ("04_prompts", dict(PROMPT_P, batch_size=2)),
    # workers=1: the pool path is exercised by tempo_key above; 07's spawned workers re-import essentia
    "evaluate": ("07_evaluate", dict(clap_model="tiny:clap", device="cpu", workers=1, spectrogram_pairs=1)),
}


@pytest.mark.parametrize("module", list(KILL_CASES))
def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_result(
    module, server, small_run, tmp_path, tempocnn_graph
):
    stage, kwargs = KILL_CASES[module]
    if module in ("tempo_key", "evaluate"):
        kwargs = dict(kwargs, tempo_model=str(tempocnn_graph))
    work = tmp_path / "run"  # the same absolute path for every attempt (07 caches by path and mtime)
    shutil.copytree(small_run, work)
    ref = server.run(module, run_dir=str(work), **kwargs)
    assert ref["ok"], ref["log"][-3000:]
    shutil.move(str(work), str(tmp_path / "reference"))
    ref_dir = tmp_path / "reference" / stage
    rng = random.Random(f"kill-{module}")
    points = sorted(rng.uniform(0.1, 0.75) * ref["seconds"] for _ in range(2))
    for t in points:
        for _ in range(4):  # a warm run can be quicker than the reference: then kill earlier
            shutil.copytree(small_run, work)
            killed = server.run(module, kill_after=t, run_dir=str(work), **kwargs)
            if killed["killed"]:
                break
            shutil.rmtree(work)
            t /= 2
        assert killed["killed"], f"{module}: every run ended before its kill ({t:.2f} s of {ref['seconds']:.2f} s)"
        assert not (work / stage / "stage.json").exists()
        again = server.run(module, run_dir=str(work), **kwargs)
        assert again["ok"], again["log"][-3000:]
        _stage_outputs_equal(ref_dir, work / stage)
        assert_no_temp_files(work)
        assert tree_state(work / "01_segment") == tree_state(tmp_path / "reference" / "01_segment")
        shutil.rmtree(work)


# =============================================================================================
# 3. parameters: each stage's run() called directly refuses a wrong type / missing input first


@pytest.fixture
def empty_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda d: segment.run(run_dir=d, input_dir=d.parent, min_seconds="twenty"), "min_seconds"),
        (lambda d: segment.run(run_dir=d, input_dir=d.parent, workers="2"), "workers"),
        (lambda d: tag.run(run_dir=str(d), min_similarity="high"), "min_similarity"),
        (lambda d: tag.run(run_dir=str(d), batch_size=2.5), "batch_size"),
        (lambda d: tempo_key.run(run_dir=str(d), workers="two"), "workers"),
        (lambda d: tempo_key.run(run_dir=str(d), min_confidence="0.7x"), "min_confidence"),
        (lambda d: prompts.run(run_dir=str(d), batch_size="8"), "batch_size"),
        (lambda d: prompts.run(run_dir=str(d), use_llm="no"), "use_llm"),
        (lambda d: evaluate.run(run_dir=str(d), workers="many"), "workers"),
        (lambda d: evaluate.run(run_dir=str(d), spectrogram_pairs=[8]), "spectrogram_pairs"),
    ],
)
def test_stage_run_refuses_a_wrong_type_naming_the_parameter(empty_run, call, param):
    (empty_run.parent / "beat.wav").write_bytes(b"RIFF")  # a non-empty input folder for 01
    with pytest.raises(ValueError, match=f"'?{param}'?"):
        call(empty_run)
    assert files_under(empty_run) == [], "a refused call wrote something"


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda d: tag.run(run_dir=str(d), **TAG_P), "01_segment/segments.jsonl"),
        (lambda d: tempo_key.run(run_dir=str(d)), "01_segment/segments.jsonl"),
        (lambda d: prompts.run(run_dir=str(d)), "01_segment/segments.jsonl"),
        (lambda d: evaluate.run(run_dir=str(d)), "06_generate/generations.jsonl"),
        (lambda d: evaluate.run(run_dir=str(d), generations=str(d / "mine.csv")), "mine.csv"),
        (lambda d: tempo_key.run(run_dir=str(d), tempo_model=str(d / "nope.pb")), "nope.pb"),
        (lambda d: segment.run(run_dir=d, input_dir=d.parent / "no such folder"), "no such folder"),
    ],
)
def test_stage_run_refuses_a_missing_input_naming_the_file(empty_run, call, names):
    seg = empty_run / "01_segment" / "segments.jsonl"
    if names == "nope.pb":
        seg.parent.mkdir()
        seg.write_text("")
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        call(empty_run)
    assert files_under(empty_run) == ([] if names != "nope.pb" else ["01_segment/segments.jsonl"])


@pytest.mark.parametrize(
    "call",
    [
        lambda d: segment.run(run_dir=d, input_dir=d.parent / "in"),
        lambda d: tag.run(run_dir=str(d), **TAG_P),
        lambda d: tempo_key.run(run_dir=str(d)),
        lambda d: prompts.run(run_dir=str(d)),
        lambda d: evaluate.run(run_dir=str(d)),
    ],
)
def test_stage_run_refuses_a_run_folder_of_another_format(empty_run, call):
    (empty_run.parent / "in").mkdir()
    (empty_run.parent / "in" / "a.wav").write_bytes(b"RIFF")
    (empty_run / "run.json").write_text(json.dumps({"run_format": 999, "params": {}}))
    before = tree_state(empty_run)
    with pytest.raises(RunFolderError, match="run format 999"):
        call(empty_run)
    assert tree_state(empty_run) == before


# =============================================================================================
# 4. disk full: a clear "no space left", nothing corrupt, and a clean re-run ends where it should


@pytest.fixture(scope="module")
def tiny_inputs(corpus, tmp_path_factory):
    """Three sources of 21-25 s (one clip each), cut from the corpus beats."""
    in_dir, _, _, _ = corpus
    d = tmp_path_factory.mktemp("tiny_in")
    for name, seconds in (("clipped.wav", 21.0), ("hi_96k_float.wav", 23.0), ("surround 5.1.wav", 25.0)):
        info = sf.info(str(in_dir / name))
        x, sr = sf.read(str(in_dir / name), dtype="float32", frames=int(seconds * info.samplerate))
        sf.write(str(d / name), x, sr, subtype=info.subtype)
    return d


def _seg_outputs(run_dir: Path) -> dict:
    stage = run_dir / "01_segment"
    return {
        "segments.jsonl": (stage / "segments.jsonl").read_bytes(),
        **{p.name: p.read_bytes() for p in sorted((stage / "clips").iterdir())},
    }


class DiskFills:
    """``os.replace`` succeeds ``n`` times, then the disk is full (every later rename fails)."""

    def __init__(self, n: int):
        self.n, self.calls, self.real = n, 0, os.replace

    def __call__(self, src, dst, *a, **k):
        self.calls += 1
        if self.calls > self.n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(src, dst, *a, **k)


@pytest.mark.parametrize("n_ok", [1, 2, 4])
def test_segment_disk_full_is_clear_and_a_rerun_ends_like_an_uninterrupted_run(
    tiny_inputs, tmp_path, monkeypatch, n_ok
):
    ref = tmp_path / "ref"
    segment.run(run_dir=ref, input_dir=tiny_inputs, workers=1, progress=False)
    run_dir = tmp_path / "run"
    fault = DiskFills(n_ok)
    monkeypatch.setattr(runs.os, "replace", fault)
    with pytest.raises(RunFolderError, match="no space left"):
        segment.run(run_dir=run_dir, input_dir=tiny_inputs, workers=1, progress=False)
    monkeypatch.undo()
    assert fault.calls > n_ok
    assert not (run_dir / "01_segment" / "stage.json").exists()
    seg = run_dir / "01_segment" / "segments.jsonl"
    if seg.exists():
        assert_complete_jsonl(seg)
        for r in read_jsonl(seg):  # nothing that the disk error caused is kept as a verdict on a file
            assert "space" not in (r["reason"] or ""), r
    assert_no_temp_files(run_dir)
    segment.run(run_dir=run_dir, input_dir=tiny_inputs, workers=1, progress=False)
    assert _seg_outputs(run_dir) == _seg_outputs(ref)
    assert_no_temp_files(run_dir)


class HalfWrites:
    """``open(..., "ab")`` in runs.py: the ``n``-th append writes half its bytes, then ENOSPC."""

    def __init__(self, n: int):
        self.n, self.appends = n, 0

    def __call__(self, file, mode="r", *a, **k):
        fh = open(file, mode, *a, **k)
        if mode != "ab":
            return fh
        self.appends += 1
        if self.appends < self.n:
            return fh
        real_write = fh.write

        def write(data):
            real_write(data[: len(data) // 2])
            fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        fh.write = write
        return fh


def test_tempo_key_disk_full_mid_row_is_clear_and_repaired(small_run, tmp_path, monkeypatch, tempocnn_graph):
    ref = tmp_path / "ref"
    shutil.copytree(small_run / "01_segment", ref / "01_segment")
    tempo_key.run(run_dir=str(ref), tempo_model=str(tempocnn_graph), workers=1)
    run_dir = tmp_path / "run"
    shutil.copytree(small_run / "01_segment", run_dir / "01_segment")
    monkeypatch.setattr(runs, "open", HalfWrites(3), raising=False)
    with pytest.raises(RunFolderError, match="no space left"):
        tempo_key.run(run_dir=str(run_dir), tempo_model=str(tempocnn_graph), workers=1)
    monkeypatch.undo()
    out = run_dir / "03_tempo_key" / "tempo_key.jsonl"
    assert len(read_jsonl(out)) == 2 and out.read_bytes().endswith(b"\n")  # the half row was cut away
    assert_no_temp_files(run_dir)
    tempo_key.run(run_dir=str(run_dir), tempo_model=str(tempocnn_graph), workers=1)
    assert out.read_bytes() == (ref / "03_tempo_key" / "tempo_key.jsonl").read_bytes()


def test_debris_of_a_killed_atomic_write_goes_when_the_stage_completes(tmp_path):
    """What SIGKILL leaves of runs.atomic_path (its temp file) is removed by mark_done; nothing else is."""
    stage = tmp_path / "04_prompts"
    (stage / "plots").mkdir(parents=True)
    debris = [
        stage / ".tag_map.92lmn016.tmp.png",
        stage / "plots" / ".metric_bars.a_b1c2d3.tmp.png",
        stage / ".prompts.zzzzzzzz.tmp.jsonl",
    ]
    keep = [stage / "tag_map.png", stage / ".hidden_notes.txt", stage / "my.tmp.wav"]
    for f in debris + keep:
        f.write_bytes(b"x")
    runs.Run(tmp_path).mark_done("04_prompts")
    assert [f for f in debris if f.exists()] == [] and all(f.exists() for f in keep)


# =============================================================================================
# 5. secrets: the token is read from the environment only and never written anywhere


def test_runner_never_writes_the_hub_token(tiny_inputs, tmp_path, tempocnn_graph):
    sentinel = "hf_RELIABILITY_SENTINEL_5b1d0c9e"
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "HF_TOKEN": sentinel,
        "HUGGING_FACE_HUB_TOKEN": sentinel,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STABLEBEAT_MODEL_MIRROR": str(tempocnn_graph.parent),
        "STABLEBEAT_HOME": str(tmp_path / "home"),
    }
    # the tiny models are not needed by 01/03; the TempoCNN graph comes from the mirror into this home
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stablebeat_utils",
            "run",
            "01",
            "03",
            "-p",
            "run_dir",
            str(run_dir),
            "-p",
            "input_dir",
            str(tiny_inputs),
            "-p",
            "workers",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    assert (run_dir / "notebooks" / "03_tempo_key.ipynb").is_file()
    assert len(read_jsonl(run_dir / "03_tempo_key" / "tempo_key.jsonl")) == 3
    needle = sentinel.encode()
    assert needle not in proc.stdout and needle not in proc.stderr
    checked = 0
    for f in [*run_dir.rglob("*"), *(tmp_path / "home").rglob("*")]:
        if f.is_file():
            assert needle not in f.read_bytes(), f"the token leaked into {f}"
            checked += 1
    assert checked >= 8


# =============================================================================================
# 6. checkpoints from elsewhere are never unpickled as arbitrary objects


class _Evil:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def _evil(marker: Path) -> _Evil:
    e = _Evil()
    e.marker = str(marker)
    return e


@pytest.mark.parametrize("fmt", ["torch_zip", "plain_pickle"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, fmt):
    import torch

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "model.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2), "x": _evil(marker)}}
    if fmt == "torch_zip":
        torch.save(payload, ckpt)
    else:
        with open(ckpt, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    assert not marker.exists()
    with pytest.raises(models.ModelSourceError, match="not a weights-only checkpoint"):
        models.load_state_dict_file(ckpt)
    assert not marker.exists(), "the checkpoint's pickle was executed"


def test_load_sao_refuses_a_malicious_ckpt_beside_a_model_config(tmp_path):
    import torch

    tiny = models.ensure_tiny_models(["sao"])["sao"]
    folder = tmp_path / "someones_model"
    folder.mkdir()
    shutil.copy(tiny / "model_config.json", folder / "model_config.json")
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": _evil(marker)}, folder / "model.ckpt")
    with pytest.raises(models.ModelSourceError, match="model.ckpt: not a weights-only checkpoint"):
        models.load_sao(str(folder), t5_source="tiny:t5")
    assert not marker.exists(), "load_sao executed the checkpoint's pickle"


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if (owner, name) in (("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("dill", "load")):
                kw = {k.arg: k.value for k in node.keywords}
                ok = (
                    owner == "torch"
                    and isinstance(kw.get("weights_only"), ast.Constant)
                    and kw["weights_only"].value is True
                )
                calls.append((path.name, node.lineno, ok))
    assert calls, "no torch.load found: the check is looking at the wrong place"
    assert all(ok for _, _, ok in calls), [c for c in calls if not c[2]]
