"""stablebeat_utils.storage: the storage plan's arithmetic with fake free space, the STOP and its options."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stablebeat_utils import storage

Usage = namedtuple("Usage", "total used free")
GB = 1e9


def fake_disks(free_by_prefix: dict):
    """disk_usage and device_of for folders under a few fake 'mounts' (longest prefix wins)."""

    def mount(path):
        path = str(path)
        return max((p for p in free_by_prefix if path.startswith(str(p))), key=lambda p: len(str(p)))

    return (lambda path: Usage(10**13, 0, int(free_by_prefix[mount(path)])), lambda path: hash(mount(path)))


def test_sizes_are_arithmetic():
    assert storage.clip_bytes(3600, "wav") == 635_040_000  # 1 h of 44.1 kHz stereo 16-bit
    assert storage.clip_bytes(3600, "flac") == int(635_040_000 * storage.FLAC_RATIO)
    # the card: 277 h of clips ≈ 176 GB as WAV
    assert storage.clip_bytes(277 * 3600) / GB == pytest.approx(175.9, abs=0.1)
    assert storage.latent_bytes(30.0) == int(30 * 44100 / 2048 * 64 * 2)  # ~83 KB per 30 s clip
    full = storage.checkpoint_bytes("full", ema=True)
    assert full / GB == pytest.approx(16.9, abs=0.05)  # DiT + EMA + AdamW (the 16.9 GB)
    assert storage.checkpoint_bytes("full", ema=True, optimizer="adamw8bit") / GB == pytest.approx(10.6, abs=0.1)
    assert storage.checkpoint_bytes("lora", lora_rank=16) / GB == pytest.approx(0.18, abs=0.01)
    assert storage.export_bytes("full") / GB == pytest.approx(4.85, abs=0.01)


def test_full_size_parameter_counts_are_computed_from_the_config():
    from stablebeat_utils import models

    counts = storage.param_counts(models.sao_full_config())
    assert counts == {
        "trained": storage.SAO_TRAINED_PARAMS,
        "vae": storage.SAO_VAE_PARAMS,
        "lora_per_rank": storage.SAO_LORA_PARAMS_PER_RANK,
    }


def _sources(folder: Path, n: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"b{i}.wav"
        sf.write(p, np.zeros((int(seconds * 8000), 2), np.int16), 8000)  # headers say `seconds`
        out.append(p)
    return out


def test_segment_plan_stops_and_names_flac_when_wav_does_not_fit(tmp_path):
    srcs = _sources(tmp_path / "in", 20, 120.0)
    run = tmp_path / "run"
    # 20 tracks x 2 clips x 27.5 s = 1100 s: WAV 194 MB, FLAC 126 MB
    du, dev = fake_disks({tmp_path: 150e6})
    plan = storage.segment_plan(run, srcs, 2, 20.0, 35.0, "wav", disk_usage=du, device_of=dev)
    assert not plan.fits and plan.facts["source_hours"] == pytest.approx(20 * 120 / 3600, abs=0.01)
    assert plan.needs[0].bytes == storage.clip_bytes(1100.0, "wav")
    assert plan.options == ["clip_format='flac' (lossless, about half the bytes)"]
    with pytest.raises(storage.StorageError) as err:
        storage.refuse(plan)
    msg = str(err.value)
    assert "STOP" in msg and "0.19 GB but has 0.15 GB free" in msg and "clip_format='flac'" in msg
    ok = storage.segment_plan(run, srcs, 2, 20.0, 35.0, "flac", disk_usage=du, device_of=dev)
    assert ok.fits
    storage.refuse(ok)  # no error
    # nothing fits at all: the STOP says so
    du, dev = fake_disks({tmp_path: 10e6})
    plan = storage.segment_plan(run, srcs, 2, 20.0, 35.0, "flac", disk_usage=du, device_of=dev)
    with pytest.raises(storage.StorageError, match="No setting of this stage fits"):
        storage.refuse(plan)


def test_segment_plan_counts_clips_already_written(tmp_path):
    srcs = _sources(tmp_path / "in", 4, 120.0)
    clips = tmp_path / "run" / "01_segment" / "clips"
    clips.mkdir(parents=True)
    (clips / "x.wav").write_bytes(b"\0" * 1_000_000)
    du, dev = fake_disks({tmp_path: 1e12})
    plan = storage.segment_plan(tmp_path / "run", srcs, 2, 20.0, 35.0, "wav", disk_usage=du, device_of=dev)
    assert plan.needs[0].bytes == storage.clip_bytes(220.0, "wav") - 1_000_000


def test_segment_plan_names_latents_only_on_drive_when_clips_fit_the_local_disk_only(tmp_path):
    """Issue 16 at small scale: the clips outgrow the run folder's disk (Drive) but fit the machine's
    local disk: the STOP names clip_dir (the clips there, the rows and latents on Drive), with the
    numbers; with clip_dir set the clips count against the local disk, not Drive's."""
    from stablebeat_utils import clipstore

    srcs = _sources(tmp_path / "in", 20, 120.0)
    drive, content = tmp_path / "drive", tmp_path / "content"
    content.mkdir(), drive.mkdir()
    local_dir = str(content / "stablebeat_clips")
    flac = storage.clip_bytes(1100.0, "flac")  # 20 tracks x 2 clips x 27.5 s: 126 MB
    du, dev = fake_disks({tmp_path: 1e12, drive: 100e6, content: 1e9})
    kw = dict(disk_usage=du, device_of=dev, local_clip_dir=local_dir)
    plan = storage.segment_plan(drive / "run", srcs, 2, 20.0, 35.0, "flac", **kw)
    assert not plan.fits and plan.needs[0].folder == drive / "run" / "01_segment" / "clips"
    assert plan.options == [
        f"clip_dir='{local_dir}' (latents only on Drive: {flac / GB:.2f} GB of flac clips on this machine's "
        "local disk, 1.00 GB free there; rows, tags, latents and checkpoints stay in run_dir; re-run "
        "01_segment after a disconnect to rebuild them)"
    ]
    with pytest.raises(storage.StorageError) as err:
        storage.refuse(plan)
    msg = str(err.value)
    assert f"needs {flac / GB:.2f} GB but has 0.10 GB free" in msg and f"clip_dir='{local_dir}'" in msg
    # as advised: the clips go to this run's folder on the local disk and fit there; Drive holds none
    folder = clipstore.folder_for(local_dir, drive / "run")
    ok = storage.segment_plan(drive / "run", srcs, 2, 20.0, 35.0, "flac", clip_folder=folder, clip_dir=local_dir, **kw)
    assert ok.fits and [d["folders"] for d in ok.disks] == [[str(folder)]] and ok.disks[0]["free"] == 1e9
    # WAV fits nowhere, FLAC on the local disk only: the option names both
    du, dev = fake_disks({tmp_path: 1e12, drive: 100e6, content: 150e6})
    plan = storage.segment_plan(
        drive / "run", srcs, 2, 20.0, 35.0, "wav", disk_usage=du, device_of=dev, local_clip_dir=local_dir
    )
    assert [o.split(" (")[0] for o in plan.options] == [f"clip_format='flac' and clip_dir='{local_dir}'"]
    # the local disk is too small as well: no option; no local folder (not Colab): not offered
    du, dev = fake_disks({tmp_path: 1e12, drive: 100e6, content: 50e6})
    plan = storage.segment_plan(
        drive / "run", srcs, 2, 20.0, 35.0, "flac", disk_usage=du, device_of=dev, local_clip_dir=local_dir
    )
    assert plan.options == []
    du, dev = fake_disks({tmp_path: 1e12, drive: 100e6})
    gone = str(tmp_path / "no" / "stablebeat_clips")
    plan = storage.segment_plan(
        drive / "run", srcs, 2, 20.0, 35.0, "flac", disk_usage=du, device_of=dev, local_clip_dir=gone
    )
    assert plan.options == []


def test_train_plan_sums_per_disk_and_names_what_fits(tmp_path):
    drive, local = tmp_path / "drive", tmp_path / "local"
    drive.mkdir(), local.mkdir()
    kw = dict(
        clip_seconds=277 * 3600,
        n_clips=40_000,
        mode="full",
        ema=True,
        optimizer="adamw",
        lora_rank=16,
        pre_encode=True,
        keep_checkpoints=2,
        local_dir=local,
        export_merged=True,
    )
    one = storage.checkpoint_bytes("full")
    lat = storage.latent_bytes(277 * 3600, 40_000)
    exp = storage.export_bytes("full")
    # Drive: latents + 3 checkpoints (2 kept + the one being written) + export; local: 3 checkpoints
    du, dev = fake_disks({drive: lat + 3 * one + exp + 100e9, local: 3 * one + 10e9})
    plan = storage.train_plan(drive / "run", disk_usage=du, device_of=dev, **kw)
    assert plan.fits and {d["need"] for d in plan.disks} == {lat + 3 * one + exp, 3 * one}
    # a 100 GB Drive with 2 kept: only keep_checkpoints=1 fits
    du, dev = fake_disks({drive: 60e9, local: 200e9})
    plan = storage.train_plan(drive / "run", disk_usage=du, device_of=dev, **kw)
    assert not plan.fits and plan.options[0] == "keep_checkpoints=1"
    # a smaller Drive: 8-bit AdamW or LoRA
    du, dev = fake_disks({drive: 35e9, local: 200e9})
    plan = storage.train_plan(drive / "run", disk_usage=du, device_of=dev, **kw)
    assert [o.split(" ")[0] for o in plan.options] == ["optimizer='adamw8bit'", "mode='lora'"]
    path = storage.record(drive / "run", plan)
    saved = json.loads(path.read_text())["05_train"]
    assert saved["fits"] is False and saved["facts"]["checkpoint_gb"] == pytest.approx(16.92, abs=0.01)
    assert saved["facts"]["checkpoint_gb_adamw8bit"] == pytest.approx(10.61, abs=0.01)


def test_the_second_stage_plans_its_own_folder_and_keeps_the_first_stages_entry(tmp_path):
    """05b trains like 05 into RUN_DIR/05b_focus: its plan names that folder, and storage_plan.json keeps
    05's entry beside 05b's (it overwrote it, naming 05's checkpoint folder, before issue 28)."""
    run = tmp_path / "run"
    du, dev = fake_disks({tmp_path: 500e9})
    kw = dict(clip_seconds=600.0, n_clips=20, mode="full", ema=True, optimizer="adamw", lora_rank=16)
    kw |= dict(pre_encode=True, keep_checkpoints=2, local_dir=None, export_merged=True, disk_usage=du, device_of=dev)
    first = storage.train_plan(run, **kw)
    second = storage.train_plan(run, stage="05b_focus", **kw)
    assert second.stage == "05b_focus" and first.stage == "05_train"
    folders = [f for d in second.disks for f in d["folders"]]
    assert folders and all("05b_focus" in f and "05_train" not in f for f in folders), folders
    storage.record(run, first)
    saved = json.loads(storage.record(run, second).read_text())
    assert set(saved) == {"05_train", "05b_focus"}
    assert all("05_train" in f for d in saved["05_train"]["disks"] for f in d["folders"])
