"""stablebeat_utils.preflight: the GPU-memory estimate, its measured anchors, and the STOP naming what fits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stablebeat_utils import preflight, train

sys.path.insert(0, str(Path(__file__).parent))

GB = 1e9


def test_estimate_reproduces_the_measured_figures():
    a = preflight.estimate("full", "bf16-mixed", 1, 10.0)
    b = preflight.estimate("full", "bf16-mixed", 4, 47.0)
    assert (a.gb, a.basis) == (27.6, "measured") and (b.gb, b.basis) == (30.0, "measured")
    assert preflight.estimate("full", "bf16-mixed", 16, 47.55).basis == "estimated"


def test_what_each_setting_saves():
    full = preflight.estimate("full", "bf16-mixed", 16, 47.55).gb
    eight = preflight.estimate("full", "bf16-mixed", 16, 47.55, optimizer="adamw8bit").gb
    lora = preflight.estimate("lora", "bf16-mixed", 8, 47.55, ema=False).gb
    assert full == pytest.approx(37.7, abs=0.2)  # the card's batch 16 on a 40 GB A100: fits, thinly
    assert full - eight == pytest.approx(1.057 * (8 - 2 - 8 / 256), abs=0.05)  # ~6.3 GB of AdamW moments
    assert lora == pytest.approx(15.9, abs=0.3)  # colab_lora on a 24 GB L4
    assert preflight.estimate("full", "32-true", 1, 10.0).gb > preflight.estimate("full", "bf16-mixed", 1, 10.0).gb


def test_stop_names_settings_that_fit():
    # a 24 GB L4 with the A100 profile: only LoRA fits (at the same effective batch)
    with pytest.raises(preflight.GPUMemoryError) as err:
        preflight.check("full", "bf16-mixed", 16, 1, 47.55, "adamw", True, 16, free_bytes=int(23.5 * GB))
    msg = str(err.value)
    assert "STOP" in msg and "~37.7 GB of GPU memory (estimated)" in msg and "23.5 GB free" in msg
    assert msg.endswith("Settings that fit: mode='lora' (profile colab_lora).")
    # 40 GB with a little taken: a smaller batch with accumulation (effective 16) or 8-bit AdamW
    with pytest.raises(preflight.GPUMemoryError) as err:
        preflight.check("full", "bf16-mixed", 16, 1, 47.55, "adamw", True, 16, free_bytes=int(38 * GB))
    msg = str(err.value)
    assert "batch_size=8, grad_accum=2 (effective batch 16 kept)" in msg and "optimizer='adamw8bit'" in msg
    # fits: returns the estimate
    assert preflight.check("lora", "bf16-mixed", 8, 2, 47.55, "adamw", False, 16, free_bytes=int(22 * GB)).gb < 20
    assert preflight.check("full", "bf16-mixed", 16, 1, 47.55, "adamw", True, 16, free_bytes=None).gb > 30  # CPU


def test_eight_bit_adamw_is_refused_on_cpu_before_loading(tmp_path):
    from test_train import make_run

    run = make_run(tmp_path / "run")
    with pytest.raises(train.TrainError, match="adamw8bit.*CUDA"):
        train.run(run_dir=str(run), optimizer="adamw8bit", accelerator="cpu", batch_size=2, sample_seconds=0.1)
    with pytest.raises(train.TrainError, match="optimizer="):
        train.run(run_dir=str(run), optimizer="sgd")
    cfg = train.training_config(
        {"model": {}},
        lr=1e-4,
        mode="full",
        lora_rank=4,
        lora_alpha=4.0,
        lora_adapter="lora",
        pre_encode=True,
        ema=True,
        sample_size=2048,
        log_every=1,
        optimizer="adamw8bit",
    )
    assert cfg["training"]["optimizer_configs"]["diffusion"]["optimizer"]["type"] == "AdamW8bit"
