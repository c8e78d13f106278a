"""The catalogue planner (01 and 05's table): the card's own numbers come out, and disk and memory
are storage's and the preflight's (no second formula)."""

import math

import pytest

from stablebeat_utils import planner, preflight, storage


def H200_FULL_S() -> float:
    """The median of the H200's full fine-tune steps in the measured-points file (read here directly)."""
    rows = [r for r in preflight.load_measurements("05_train") if r["gpu"] == "NVIDIA H200" and r["mode"] == "full"]
    times = sorted(float(r["s_per_step"]) for r in rows if r["s_per_step"] and r["input"] == "latents")
    return round((times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2, 3)


def test_the_cards_catalogue_gives_the_cards_steps():
    # the card: 40,000 clips, batch 16, ~2,500 steps an epoch, 14 epochs, 35,000 steps
    p = planner.plan(clips=40_000, profile="colab_a100")
    assert (p["steps_per_epoch"], p["epochs"], p["steps"]) == (2_500, 14, 35_000)
    h200 = next(r for r in p["gpus"] if r["GPU"] == "H200")
    measured = H200_FULL_S()
    assert 0.3 < measured < 0.5  # the H200 runs: 0.419 and 0.404 s
    assert h200["step time is"] == "measured" and h200["s / step"] == measured
    assert h200["hours"] == round(35_000 * measured / 3600, 1)
    assert all(r["step time is"] == "estimated" for r in p["gpus"] if r["GPU"] != "H200")


def test_lora_profile_counts_optimizer_steps_of_the_effective_batch():
    p = planner.plan(clips=1_600, profile="colab_lora")  # batch 8 x grad_accum 2
    assert p["steps_per_epoch"] == 100 and p["batch"] == "8 x 2 = 16"


@pytest.mark.parametrize(
    ("clips", "epochs"),
    [(40_000, 14), (2_880, 14), (1_000, 41), (160, 100), (16, 100)],
)
def test_epochs_scaled_to_the_catalogue(clips, epochs):
    got, why = planner.scaled_epochs(clips, 16, 1, 14)
    assert got == epochs, why
    steps = planner.steps_per_epoch(clips, 16) * got
    assert steps >= planner.MIN_STEPS or got == planner.MAX_EPOCHS


def test_estimated_step_time_scales_with_throughput_and_batch():
    a100, basis = planner.step_seconds("A100 40 GB", "full", 16)
    assert basis == "estimated"
    assert a100 == pytest.approx(H200_FULL_S() * 989 / 312, rel=1e-3)
    half, _ = planner.step_seconds("A100 40 GB", "full", 8)
    assert half == pytest.approx(a100 / 2, rel=1e-2)


def test_disk_is_storages_arithmetic():
    s = planner.train_settings("colab_a100")
    clip_s = 1_000 * 27.5
    p = planner.plan(clips=1_000, clip_seconds=clip_s, profile="colab_a100")
    one = storage.checkpoint_bytes("full", True, s["optimizer"], s["lora_rank"])
    keep = s["keep_checkpoints"] + 1  # the oldest stays while the next is written
    drive = (
        storage.clip_bytes(clip_s, s["clip_format"])
        + storage.latent_bytes(clip_s, 1_000)
        + keep * one
        + storage.export_bytes("full", True)
    )
    assert p["drive_gb"] == round(drive / storage.GB, 2)
    assert p["local_gb"] == round(keep * one / storage.GB, 2)  # local_checkpoint_dir
    assert p["checkpoint_gb"] == round(one / storage.GB, 2)


def test_memory_is_the_preflights():
    p = planner.plan(beats=100, profile="colab_a100")
    est = preflight.estimate("full", "bf16-mixed", 16, planner.SAO_WINDOW_S, "adamw", True, 16)
    rows = {r["GPU"]: r for r in p["gpus"]}
    assert rows["A100 40 GB"]["GPU memory (GB)"].startswith(f"{est.gb:.1f} ")
    assert rows["A100 40 GB"]["fits (05's preflight)"] == "yes"
    assert rows["T4"]["fits (05's preflight)"].startswith("no; fits with mode='lora'")


def test_beats_typed_become_clips_of_the_profile():
    s = planner.train_settings("colab_a100")
    p = planner.plan(beats=500, profile="colab_a100")
    assert p["clips"] == 500 * s["segments_per_track"]
    mean = (s["min_seconds"] + s["max_seconds"]) / 2
    assert p["clip_hours"] == round(p["clips"] * mean / 3600, 2)
    with pytest.raises(ValueError):
        planner.plan(profile="colab_a100")


def test_from_run_counts_ok_clips(tmp_path):
    import json

    seg = tmp_path / "01_segment"
    seg.mkdir()
    rows = [{"status": "ok", "duration": 30.0}, {"status": "ok", "duration": 25.0}, {"status": "rejected"}]
    (seg / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert planner.from_run(tmp_path) == {"clips": 2, "clip_seconds": 55.0}
    assert math.isclose(planner.plan(**planner.from_run(tmp_path), profile="colab_lora")["clip_hours"], 0.02)
