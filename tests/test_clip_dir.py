"""01_segment's ``clip_dir`` end to end (issue 16, "latents only on Drive"), with the tiny models.

The Colab story: the clips on the VM's local disk, everything else in the run folder; 02-05 run
(05 with pre-encoded latents); a disconnect wipes the local disk; 05 runs again without any clip
(its latents are fresh); a stage that needs clip audio stops naming the clip, the folder and the
fix; re-running 01 rebuilds the clips bit-identical, and that stage then runs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from stablebeat_utils import clipstore, evaluate, prompts, segment, tag, tempo_key, train
from stablebeat_utils.params import schema


def _args(stage: str, run_dir: Path, **over) -> dict:
    """The demo profile's values of ``stage`` (its schema) with a few overrides."""
    return {**schema(stage), "run_dir": str(run_dir), **over}


def _hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_clips_on_local_disk_survive_a_wipe(tmp_path, tempocnn_graph, capsys):
    run_dir, local = tmp_path / "drive" / "run", tmp_path / "content" / "stablebeat_clips"
    s1 = segment.run(**_args("01_segment", run_dir, segments_per_track=1, clip_dir=str(local)), progress=False)
    folder = clipstore.folder_for(str(local), run_dir)
    assert s1["clips"] >= 2 and s1["clips_dir"] == str(folder) and not (run_dir / "01_segment" / "clips").exists()
    before = _hashes(folder)
    assert len(before) == s1["clips"]
    tag.run(**_args("02_tag", run_dir, batch_size=2))
    tempo_key.run(**_args("03_tempo_key", run_dir, tempo_model=str(tempocnn_graph), workers=1))
    prompts.run(**_args("04_prompts", run_dir))
    fast = dict(max_steps=2, demo_every=0, checkpoint_every=1, sample_seconds=0.2, pre_encode=True)
    t1 = train.run(**_args("05_train", run_dir, **fast))
    assert t1["pre_encoded"]["encoded"] == s1["clips"]
    assert all(c.path.parent == folder for c in train.read_clips(run_dir))  # prompts' filepath → clip_dir

    # the runtime disconnects: the local disk is wiped, Drive keeps the run folder
    shutil.rmtree(local.parent)
    # 05 trains on: resumes from its checkpoint on the fresh latents, no clip is opened
    t2 = train.run(**_args("05_train", run_dir, **{**fast, "max_steps": 3}))
    assert t2["pre_encoded"] == {"encoded": 0, "reused": s1["clips"]} and not local.exists()
    # a stage that reads clip audio stops: the clip, the folder, the fix
    with pytest.raises(clipstore.MissingClipsError) as err:
        tempo_key.run(**_args("03_tempo_key", run_dir, tempo_model=str(tempocnn_graph), workers=1, key_profile="edmm"))
    msg = str(err.value)
    first = sorted(before)[0]
    assert first in msg and str(folder) in msg and "re-run 01_segment" in msg
    assert f"rebuild the {s1['clips']} missing clip(s)" in msg
    with pytest.raises(clipstore.MissingClipsError, match="07_evaluate"):
        evaluate.reference_clips(run_dir)
    # (05 without latents reads every clip: it stops the same way, before loading a model)
    with pytest.raises(clipstore.MissingClipsError, match="05_train"):
        train.run(**_args("05_train", run_dir, **{**fast, "pre_encode": False, "max_steps": 4}))

    # re-running 01 rebuilds the clips from the sources, bit-identical, and says how many
    capsys.readouterr()
    s2 = segment.run(**_args("01_segment", run_dir, segments_per_track=1, clip_dir=str(local)), progress=False)
    assert s2["clips_rebuilt"] == s1["clips"] and f"{s1['clips']} missing clip(s) rebuilt" in capsys.readouterr().out
    assert _hashes(folder) == before
    out = tempo_key.run(
        **_args("03_tempo_key", run_dir, tempo_model=str(tempocnn_graph), workers=1, key_profile="edmm")
    )
    assert out["errors"] == 0
