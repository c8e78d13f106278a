"""Tests for stablebeat_utils.train (notebook 05_train) on the tiny SAO model, CPU only.

Real code paths: the tiny SAO-architecture model from models.load_sao("tiny:sao"), the engine's
training wrapper, Lightning, real clips cut from the bundled demo beats.
"""

from __future__ import annotations

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

from stablebeat_utils import audio, train
from stablebeat_utils.runs import read_jsonl

REPO = Path(__file__).resolve().parents[1]
DEMO_AUDIO = REPO / "stablebeat_utils" / "data" / "demo_audio"
SR = 44100
# small windows keep CPU steps short; they still run the VAE, T5, DiT and EMA
FAST = dict(batch_size=2, sample_seconds=0.1, demo_every=0, workers=0, log_every=1)


def make_run(root: Path, n_sources: int = 2, starts=(1.0, 4.0), seconds=(0.6, 0.9), source_duration=True) -> Path:
    """A run folder as 01_segment + 04_prompts leave it: 44.1 kHz stereo WAV clips + JSONL rows."""
    clips_dir = root / "01_segment" / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    (root / "04_prompts").mkdir(parents=True, exist_ok=True)
    segs, rows = [], []
    for i, src in enumerate(sorted(DEMO_AUDIO.glob("*.ogg"))[:n_sources]):
        a, _ = audio.load(src, sr=SR)
        a = audio.to_stereo(a)
        for j, (start, dur) in enumerate(zip(starts, seconds)):
            cid = f"s{i}_c{j}"
            clip = a[:, int(start * SR) : int(start * SR) + int(dur * SR)]
            audio.write_wav(clips_dir / f"{cid}.wav", clip, SR, subtype="FLOAT")
            seg = {
                "clip_id": cid,
                "source": src.name,
                "start": start,
                "duration": clip.shape[1] / SR,
                "path": f"01_segment/clips/{cid}.wav",
                "status": "ok",
            }
            if source_duration:
                seg["source_duration"] = a.shape[1] / SR
            segs.append(seg)
            rows.append(
                {
                    "filepath": seg["path"],
                    "start": start,
                    "duration": seg["duration"],
                    "prompt": f"A melancholic trap beat at {100 + i} BPM, with synth bells",
                    "clip_id": cid,
                }
            )
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in segs))
    (root / "04_prompts" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ------------------------------------------------------------------------------------------
# the training set and its conditioning


def test_read_clips_joins_segments(tmp_path):
    run = make_run(tmp_path)
    clips = train.read_clips(run)
    assert [c.clip_id for c in clips] == ["s0_c0", "s0_c1", "s1_c0", "s1_c1"]
    c = clips[1]
    assert c.start == 4.0 and c.source_duration > 30 and c.path.is_file()


def test_bad_rows_fail_loudly_naming_the_clip(tmp_path):
    run = make_run(tmp_path)
    path = run / "04_prompts" / "prompts.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["prompt"] = ""
    rows[2]["start"] = "0:63"
    (run / "01_segment" / "clips" / "s1_c1.wav").unlink()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(train.TrainDataError) as err:
        train.read_clips(run)
    msg = str(err.value)
    assert "3 unusable" in msg and "s0_c1" in msg and "'prompt'" in msg
    assert "s1_c0" in msg and "'start'" in msg and "s1_c1.wav not found" in msg


def test_missing_prompts_file_is_named(tmp_path):
    with pytest.raises(train.TrainError, match="04_prompts"):
        train.read_clips(tmp_path)


def test_seconds_total_rule():
    clip = train.Clip("c", Path("x.wav"), "p", start=63.0, duration=26.0, source_duration=180.0)
    # window past the clip's end (padded): the audio stops at the clip's end in its source
    md = train.conditioning_for(clip, 0.0, 47.55, 26.0)
    assert md["seconds_start"] == 63.0 and md["seconds_total"] == 89.0
    # window full of audio, crop 5 s into the clip: the track goes on to its real end
    md = train.conditioning_for(clip, 5.0, 10.0, 10.0)
    assert md["seconds_start"] == 68.0 and md["seconds_total"] == 180.0
    unknown = train.Clip("c", Path("x.wav"), "p", start=63.0, duration=26.0, source_duration=None)
    assert train.conditioning_for(unknown, 5.0, 10.0, 10.0)["seconds_total"] == 89.0


def test_random_crop_start_is_clip_start_plus_offset(tmp_path):
    """seconds_start = the clip's start in its source + where the window was cut inside the clip."""
    run = make_run(tmp_path, n_sources=1, starts=(2.0,), seconds=(0.9,))
    clip = train.read_clips(run)[0]
    whole, _ = audio.load(clip.path)
    n = 4096
    ds = train.ClipDataset([clip], SR, n, random_crop=True, seed=3)
    offsets = set()
    for _ in range(6):
        x, md = ds[0]
        offset = round((md["seconds_start"] - clip.start) * SR)
        offsets.add(offset)
        np.testing.assert_allclose(x.numpy(), np.clip(whole[:, offset : offset + n], -1, 1), atol=1e-6)
        assert md["seconds_total"] == pytest.approx(clip.source_duration)
        assert bool(md["padding_mask"][0].all())
    assert len(offsets) > 1  # really random crops


def test_short_clip_is_padded_and_masked(tmp_path):
    run = make_run(tmp_path, n_sources=1, starts=(2.0,), seconds=(0.5,))
    clip = train.read_clips(run)[0]
    ds = train.ClipDataset([clip], SR, SR, random_crop=True)
    x, md = ds[0]
    real = round(clip.duration * SR)
    assert x.shape == (2, SR) and float(x[:, real:].abs().max()) == 0.0
    assert int(md["padding_mask"][0].sum()) == real
    assert md["seconds_start"] == 2.0 and md["seconds_total"] == pytest.approx(2.0 + clip.duration)


def test_undecodable_clip_names_the_clip(tmp_path):
    run = make_run(tmp_path, n_sources=1)
    clip = train.read_clips(run)[0]
    clip.path.write_bytes(b"not audio at all")
    with pytest.raises(train.TrainDataError, match="s0_c0"):
        train.ClipDataset([clip], SR, 4096)[0]


def test_wrapper_sees_the_runs_start_times(tmp_path):
    """The metadata reaching the engine's conditioner carry our seconds_start / seconds_total."""
    import copy

    from stablebeat_utils import compat

    compat.apply()
    compat.stub_training_only_imports()
    from stable_audio_tools.training.factory import create_training_wrapper_from_config

    from stablebeat_utils import models

    run = make_run(tmp_path)
    clips = train.read_clips(run)
    model, cfg = models.load_sao("tiny:sao")
    model.model.requires_grad_(True)
    tcfg = train.training_config(
        cfg,
        lr=1e-4,
        mode="full",
        lora_rank=4,
        lora_alpha=4,
        lora_adapter="lora",
        pre_encode=False,
        ema=True,
        sample_size=4096,
        log_every=1000,
    )
    wrapper = create_training_wrapper_from_config(tcfg, model)
    seen = []
    real_forward = model.conditioner.forward

    def spy(batch_metadata, device):
        seen.extend(
            copy.deepcopy([{k: md[k] for k in ("prompt", "seconds_start", "seconds_total")} for md in batch_metadata])
        )
        return real_forward(batch_metadata, device)

    model.conditioner.forward = spy
    loader = train.make_loader(train.ClipDataset(clips, SR, 4096, random_crop=False), batch_size=4, shuffle=False)
    reals, metadata = next(iter(loader))

    class _T:  # the wrapper logs the learning rate through its trainer
        optimizers = [type("O", (), {"param_groups": [{"lr": 1e-4}]})()]

    wrapper._trainer = _T()  # (log_every=1000: the engine's logger does not flush in one step)
    loss = wrapper.training_step((reals, metadata), 0)
    assert loss.ndim == 0 and bool(loss.isfinite())
    assert [m["seconds_start"] for m in seen] == [c.start for c in clips]
    assert [m["seconds_total"] for m in seen] == [pytest.approx(c.source_duration) for c in clips]
    assert [m["prompt"] for m in seen] == [c.prompt for c in clips]


# ------------------------------------------------------------------------------------------
# the whole stage: kill, resume, export, generate


def _checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_run_resumes_with_optimizer_ema_and_step(tmp_path):
    import torch

    run = make_run(tmp_path / "run")
    ckpt_dir = run / "05_train" / "checkpoints"
    code = (
        "from stablebeat_utils import train; "
        f"train.run(run_dir={str(run)!r}, max_steps=200, checkpoint_every=1, keep_checkpoints=2, "
        "batch_size=2, sample_seconds=0.1, demo_every=0, workers=0, log_every=1)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            newest = train.newest_checkpoint(ckpt_dir)
            if newest is not None and int(newest.stem.split("=")[1]) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"training subprocess ended early: {proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at step 3 within 240 s")
        os.kill(proc.pid, signal.SIGKILL)  # a real kill, mid-training
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "05_train" / "stage.json").exists()

    killed_at = train.newest_checkpoint(ckpt_dir)
    step = int(killed_at.stem.split("=")[1])
    before = _checkpoint(killed_at)
    assert before["global_step"] == step
    assert len(list(ckpt_dir.glob("step=*.ckpt"))) <= 3  # keep 2 (+1 if killed between save and prune)

    # run the stage again, asking for 2 more steps: it resumes without being told to
    summary = train.run(
        run_dir=str(run),
        max_steps=step + 2,
        checkpoint_every=1,
        keep_checkpoints=2,
        **dict(FAST, demo_every=step + 2, demo_steps=2, demo_seconds=0.2),
    )
    assert summary["resumed_from_step"] == step and summary["steps"] == step + 2
    assert summary["checkpoints"] == [f"step={step + 1}.ckpt", f"step={step + 2}.ckpt"]
    after = _checkpoint(ckpt_dir / f"step={step + 2}.ckpt")
    assert after["global_step"] == step + 2
    # optimizer state carried over: Adam's own step counters continue (a fresh optimizer says 2)
    adam_steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(step + 2)}
    assert after["lr_schedulers"][0]["last_epoch"] == step + 2
    # EMA carried over: its step counter continues, and its weights moved on from the killed run's
    assert int(after["state_dict"]["diffusion_ema.step"]) == step + 2
    assert int(before["state_dict"]["diffusion_ema.step"]) == step
    ema_keys = [k for k in before["state_dict"] if k.startswith("diffusion_ema.ema_model.")]
    deltas = {k: float((after["state_dict"][k] - before["state_dict"][k]).abs().max()) for k in ema_keys}
    assert 0 < max(deltas.values()) < 1e-2  # small moves on from the kill point, not a restart
    ema_key = max(deltas, key=deltas.get)
    # the frozen VAE stays out of checkpoints (it is the base model's)
    assert not any(k.startswith("diffusion.pretransform.") for k in after["state_dict"])

    # curves: one CSV per session, merged by step
    curves = train.read_curves(summary["metrics_csv"])
    assert [c["step"] for c in curves][-2:] == [step + 1, step + 2]
    assert all(np.isfinite(c["loss"]) and c["lr"] > 0 for c in curves)
    assert summary["demos"] and Path(summary["demos"][0]).is_file()

    # the export: EMA weights, loadable by load_sao and by the engine's own loader, and it generates
    from stablebeat_utils import models
    from stable_audio_tools.inference.generation import generate_diffusion_cond
    from stable_audio_tools.models.utils import load_ckpt_state_dict

    export = Path(summary["export_dir"])
    model, cfg = models.load_sao(str(export))
    engine_state = load_ckpt_state_dict(str(export / "model.safetensors"))
    ema_export_key = "model." + ema_key[len("diffusion_ema.ema_model.") :]
    torch.testing.assert_close(engine_state[ema_export_key], after["state_dict"][ema_key])
    out = generate_diffusion_cond(
        model,
        steps=3,
        cfg_scale=7.0,
        sample_size=2048 * 4,
        seed=1,
        device="cpu",
        conditioning=[{"prompt": "A dark cloud trap beat at 110 BPM", "seconds_start": 0, "seconds_total": 1}],
        sampler_type="dpmpp-3m-sde",
        sigma_min=0.3,
        sigma_max=500,
        disable_tqdm=True,
    )
    assert out.shape == (1, 2, 2048 * 4) and bool(out.isfinite().all())

    # done: the same call again only reports
    again = train.run(
        run_dir=str(run),
        max_steps=step + 2,
        checkpoint_every=1,
        keep_checkpoints=2,
        **dict(FAST, demo_every=step + 2, demo_steps=2, demo_seconds=0.2),
    )
    assert again["skipped"] and again["steps"] == step + 2

    # checkpoints made in full mode are not silently resumed as LoRA
    with pytest.raises(train.TrainError, match="other settings"):
        train.run(run_dir=str(run), max_steps=step + 3, mode="lora", checkpoint_every=1, **FAST)


def test_lora_pre_encoded_run_exports_adapters(tmp_path, monkeypatch):
    import torch

    from stablebeat_utils import compat, models

    compat.apply()
    from stable_audio_tools.models.lora import load_and_apply_loras
    from stable_audio_tools.models.pretransforms import AutoencoderPretransform

    calls = []
    real_encode = AutoencoderPretransform.encode

    def counting_encode(self, x, **kw):
        calls.append(tuple(x.shape))
        return real_encode(self, x, **kw)

    monkeypatch.setattr(AutoencoderPretransform, "encode", counting_encode)
    run = make_run(tmp_path / "run")
    kw = dict(
        FAST, mode="lora", lora_rank=4, lora_alpha=4.0, pre_encode=True, lr=1e-2, checkpoint_every=2, keep_checkpoints=1
    )
    summary = train.run(run_dir=str(run), max_steps=2, **kw)
    n_clips = summary["clips"]
    assert summary["pre_encoded"] == {"encoded": n_clips, "reused": 0}
    assert len(calls) == n_clips  # the VAE ran once per clip, never in the training loop
    latent = run / "05_train" / "latents" / "s0_c1.safetensors"
    from safetensors import safe_open

    with safe_open(str(latent), "pt") as fh:
        assert fh.metadata()["start"] == "4.0" and fh.get_tensor("latents").shape[0] == 64

    # LoRA checkpoints keep only the adapters, plus optimizer and step: they resume
    ckpt = _checkpoint(run / "05_train" / "checkpoints" / "step=2.ckpt")
    assert ckpt["state_dict"] and all("lora" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["global_step"] == 2
    summary = train.run(run_dir=str(run), max_steps=3, **kw)
    assert summary["resumed_from_step"] == 2 and summary["pre_encoded"] == {"encoded": 0, "reused": n_clips}
    assert len(calls) == n_clips  # nothing encoded again

    export = Path(summary["export_dir"])
    assert sorted(summary["export_files"]) == ["lora.safetensors", "model.safetensors", "model_config.json"]
    base, cfg = models.load_sao("tiny:sao")
    with_lora, _ = models.load_sao("tiny:sao")
    load_and_apply_loras(with_lora, [str(export / "lora.safetensors")], cfg["model_type"])
    merged, _ = models.load_sao(str(export))

    x = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.5)
    cond = base.conditioner([{"prompt": "a trap beat", "seconds_start": 0, "seconds_total": 10}], "cpu")
    inputs = base.get_conditioning_inputs(cond)
    with torch.no_grad():
        y_base = base.model(x, t, **inputs)
        y_lora = with_lora.model(x, t, **inputs)
        y_merged = merged.model(x, t, **inputs)
    assert float((y_lora - y_base).abs().max()) > 1e-4  # the adapters learned something
    # adapters kept in fp32 (the engine's own save halves them): merged and applied agree to fp32 rounding
    with safe_open(str(export / "lora.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}
        assert json.loads(fh.metadata()["lora_config"])["rank"] == 4
    torch.testing.assert_close(y_merged, y_lora, atol=1e-5, rtol=1e-5)

    # 06 plays the merged fp32 export as "finetune"; other strengths apply the fp32 adapters
    from stablebeat_utils import generate

    spec, _ = generate.find_finetune(str(run))
    assert spec.kind == "full" and spec.path == export
    spec, _ = generate.find_finetune(str(run), lora_strength=0.5)
    assert spec.kind == "lora" and spec.path == export / "lora.safetensors"
    gen = generate.run(run_dir=str(run), n_prompts=1, steps=2, seconds_total=0.5, device="cpu", dtype="float32")
    assert gen["finetune_kind"] == "full" and gen["finetune"] == str(export)
    rows = {r["model"]: r for r in read_jsonl(run / "06_generate" / "generations.jsonl")}
    assert rows["finetune"]["model_source"] == str(export)


def test_bad_parameters_fail_before_work(tmp_path):
    with pytest.raises(train.TrainError, match="mode 'half' is unknown: choose one of full, lora"):
        train.run(run_dir=str(tmp_path), mode="half")
    with pytest.raises(train.TrainError, match="04_prompts"):
        train.run(run_dir=str(tmp_path))
    with pytest.raises(train.TrainError, match="demo_minutes must be >= 0"):
        train.run(run_dir=str(tmp_path), demo_minutes=-1.0)


def test_demos_every_demo_minutes_of_training_by_the_clock(tmp_path, monkeypatch):
    """demo_minutes=2.5 with demo_every off, on a fake clock where each step takes a minute: a demo
    once 2.5 minutes have passed since training started or since the last demo (steps 3 and 6),
    none before, and one of the final weights (step 7)."""
    from types import SimpleNamespace

    from stablebeat_utils import train_lightning as tl

    now = [1000.0]
    monkeypatch.setattr(tl, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter))
    step_end = tl.CurveLogger.on_train_batch_end  # runs before the demo callback's

    def a_minute_per_step(self, trainer, *args):
        step_end(self, trainer, *args)
        now[0] += 60.0

    monkeypatch.setattr(tl.CurveLogger, "on_train_batch_end", a_minute_per_step)
    run = make_run(tmp_path / "run")
    kw = dict(FAST, num_demos=1, demo_steps=2, demo_seconds=0.3, checkpoint_every=100)
    summary = train.run(run_dir=str(run), max_steps=7, demo_minutes=2.5, **kw)
    rows = read_jsonl(run / "05_train" / "demos" / "demos.jsonl")
    assert [r["step"] for r in rows] == [3, 6, 7]
    assert [Path(d).name for d in summary["demos"]] == [
        "step00000003_0.wav",
        "step00000006_0.wav",
        "step00000007_0.wav",
    ]
    assert all(audio.load(d, sr=None)[0].size for d in summary["demos"])


def _engine_metrics(csvs) -> list[dict]:
    import csv

    rows = []
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/loss") not in (None, "")]
    return rows


def test_padding_loss_weight_reaches_the_loss(tmp_path):
    """Padded frames count in the loss with weight 1.0 (as SAO trained) and not at all with 0.0.

    The clips (0.6 and 0.9 s) are shorter than the 1.5-s window, so every window is padded; the
    engine logs the loss on real frames (``train/mse_signal``) and on padded ones
    (``train/mse_masked_loss``) beside the loss it trains on (``train/loss``).
    """
    from stablebeat_utils import models

    run = make_run(tmp_path / "run")
    t5_dir = str(models.ensure_tiny_models(["t5"])["t5"])  # a custom T5, as a local folder
    kw = dict(FAST, sample_seconds=1.5, max_steps=2, checkpoint_every=2, ema=False, t5_model=t5_dir)
    rows = {}
    for w in (0.0, 1.0):
        dst = tmp_path / f"run-w{w}"
        shutil.copytree(run, dst)
        summary = train.run(run_dir=str(dst), padding_loss_weight=w, **kw)
        rows[w] = _engine_metrics(summary["metrics_csv"])
        assert len(rows[w]) == 2
    export_t5_and_engine_reload(Path(summary["export_dir"]), t5_dir)
    # same seed: the same batch and noise in both runs at step 1 (the engine's per-region means agree)
    first = {w: rows[w][0] for w in rows}
    for key in ("train/mse_signal", "train/mse_masked_loss"):
        assert float(first[0.0][key]) == pytest.approx(float(first[1.0][key]), rel=1e-5)
    sig, pad = float(first[1.0]["train/mse_signal"]), float(first[1.0]["train/mse_masked_loss"])
    assert abs(pad - sig) > 1e-3
    # 0.0: the mean over each sample's real frames, whatever the padded frames' error
    # 1.0: the mean over whole windows, between the real frames' and the padded frames' means
    loss0, loss1 = float(first[0.0]["train/loss"]), float(first[1.0]["train/loss"])
    assert min(sig, pad) < loss1 < max(sig, pad)
    assert abs(loss1 - loss0) > 1e-3 * loss0
    with pytest.raises(train.TrainError, match="padding_loss_weight"):
        train.run(run_dir=str(run), padding_loss_weight=-1.0)


def export_t5_and_engine_reload(export: Path, t5_dir: str) -> None:
    """The export keeps the custom T5 and loads with ours (load_sao) and with the engine's functions alone."""
    import torch

    from stablebeat_utils import compat, models

    compat.apply()
    from stable_audio_tools.models.factory import create_model_from_config
    from stable_audio_tools.models.utils import load_ckpt_state_dict

    cfg = json.loads((export / "model_config.json").read_text())
    t5_conf = [c["config"] for c in cfg["model"]["conditioning"]["configs"] if c["type"] == "t5"]
    assert t5_conf and all(c["model_path"] == t5_dir for c in t5_conf)
    ours, _ = models.load_sao(str(export))  # no t5_source needed: the export says which T5
    engine = create_model_from_config(cfg)  # the engine alone, no path rewriting
    result = engine.load_state_dict(load_ckpt_state_dict(str(export / "model.safetensors")), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (k, a), (k2, b) in zip(ours.state_dict().items(), engine.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    emb_ours, _ = ours.conditioner.conditioners["prompt"](["a trap beat"], "cpu")
    emb_engine, _ = engine.conditioner.conditioners["prompt"](["a trap beat"], "cpu")
    torch.testing.assert_close(emb_ours, emb_engine)


def test_two_processes_ddp_by_fork_summary_export_and_resume(tmp_path, monkeypatch):
    """devices=2 on CPU (gloo), started by fork as a notebook does (``ddp_notebook``): killed, resumed.

    The notebook's own trainer never trains under fork; the summary must still carry the steps and
    step time, the export must be the EMA weights the ranks trained, and a kill of the whole
    process group (notebook + ranks) must resume from the newest checkpoint.
    """
    from safetensors.torch import load_file

    run = make_run(tmp_path / "run")
    ckpt_dir = run / "05_train" / "checkpoints"
    ddp = dict(accelerator="cpu", devices=2, strategy="ddp_notebook")
    common = dict(
        checkpoint_every=1,
        keep_checkpoints=2,
        batch_size=1,
        sample_seconds=0.1,
        demo_every=0,
        workers=0,
        log_every=1,
        **ddp,
    )
    code = f"from stablebeat_utils import train; train.run(run_dir={str(run)!r}, max_steps=200, **{common!r})"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=str(REPO),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            newest = train.newest_checkpoint(ckpt_dir)
            if newest is not None and int(newest.stem.split("=")[1]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"training subprocess ended early: {proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at step 2 within 300 s")
        os.killpg(proc.pid, signal.SIGKILL)  # the notebook process and both ranks
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    step = int(train.newest_checkpoint(ckpt_dir).stem.split("=")[1])
    assert not (run / "05_train" / "stage.json").exists()

    # this process has run an OpenMP parallel region (as any kernel that touched a big tensor has),
    # and OMP_NUM_THREADS is set (07_evaluate sets it; so may a user), so Lightning leaves the
    # ranks' thread count alone: ranks forked from here hung in their first parallel region
    # (libgomp is not fork-safe; seen in the full suite) until they were set to one intra-op thread
    # (compat.single_thread_if_forked). A hang ends the test run after 10 min, not CI's 90.
    import faulthandler

    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.randn(20_000_000).clone()
    faulthandler.dump_traceback_later(600, exit=True)
    try:
        summary = train.run(run_dir=str(run), max_steps=step + 2, **common)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert summary["resumed_from_step"] == step and summary["steps"] == step + 2 and summary["devices"] == 2
    assert summary["median_step_seconds"] and summary["median_step_seconds"] > 0
    assert summary["checkpoints"] == [f"step={step + 1}.ckpt", f"step={step + 2}.ckpt"]
    record = json.loads((run / "05_train" / "stage.json").read_text())
    assert record["summary"]["steps"] == step + 2
    after = _checkpoint(ckpt_dir / f"step={step + 2}.ckpt")
    assert after["global_step"] == step + 2 and int(after["state_dict"]["diffusion_ema.step"]) == step + 2
    # the export is the EMA weights of the last step, as the ranks trained them
    exported = load_file(str(Path(summary["export_dir"]) / "model.safetensors"))
    ema = {
        k[len("diffusion_ema.ema_model.") :]: v
        for k, v in after["state_dict"].items()
        if k.startswith("diffusion_ema.ema_model.")
    }
    assert ema
    for k, v in ema.items():
        assert torch_equal(exported[f"model.{k}"], v), k
    online = {
        k[len("diffusion.model.") :]: v for k, v in after["state_dict"].items() if k.startswith("diffusion.model.")
    }
    assert any(not torch_equal(exported[f"model.{k}"], v) for k, v in online.items())  # EMA, not the online weights


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.float(), b.float()))


# ------------------------------------------------------------------------------------------
# issue 16: FLAC clips, compact latents, seconds_start under latent crops


def test_training_reads_flac_clips_like_wav(tmp_path):
    """01_segment's clip_format=flac: the training set decodes the FLAC clip to the WAV clip's samples."""
    run = make_run(tmp_path, n_sources=1, starts=(2.0,), seconds=(0.5,))
    clip = train.read_clips(run)[0]
    pcm, _ = audio.load(clip.path)
    audio.write_clip(clip.path, pcm, SR, "wav")  # 16-bit, as 01_segment writes
    flac = clip.path.with_suffix(".flac")
    audio.write_clip(flac, pcm, SR, "flac")
    x_wav, md_wav = train.ClipDataset([clip], SR, SR, random_crop=False)[0]
    x_flac, md_flac = train.ClipDataset([train.Clip(**{**clip.__dict__, "path": flac})], SR, SR, random_crop=False)[0]
    assert np.array_equal(x_wav.numpy(), x_flac.numpy()) and md_wav["seconds_start"] == md_flac["seconds_start"]


def test_compact_latents_are_fp16_unless_they_would_overflow():
    import torch

    lat = torch.randn(64, 100) * 3
    half = train.compact_latents(lat)
    assert half.dtype == torch.float16
    rel = float((half.float() - lat).abs().max() / lat.abs().max())
    assert rel < 2**-11  # fp16 rounding, not bf16's 2^-8
    big = lat.clone()
    big[0, 0] = 1e6
    assert train.compact_latents(big).dtype == torch.float32  # never inf on disk


def test_latent_crop_seconds_start_is_clip_start_plus_k_frames(tmp_path):
    """A crop at offset k latent frames gives seconds_start = clip start + k * downsampling / sr."""
    import torch
    from safetensors.torch import save_file

    run = make_run(tmp_path, n_sources=1, starts=(3.0,), seconds=(0.9,))
    clip = train.read_clips(run)[0]
    ratio, frames_have, window = 2048, 40, 8
    lat = torch.arange(64 * frames_have, dtype=torch.float32).reshape(64, frames_have)  # column k holds k
    (tmp_path / "lat").mkdir()
    save_file({"latents": train.compact_latents(lat / 1000)}, str(tmp_path / "lat" / f"{clip.clip_id}.safetensors"))
    ds = train.LatentDataset([clip], tmp_path / "lat", window, ratio / SR, random_crop=True, seed=1)
    ks = set()
    for _ in range(12):
        x, md = ds[0]
        assert x.dtype == torch.float32 and x.shape == (64, window)
        k = round(float(x[0, 0]) * 1000)  # which latent frame the window starts on
        np.testing.assert_allclose(x[0].numpy() * 1000, np.arange(k, k + window), atol=0.05)
        assert md["seconds_start"] == pytest.approx(clip.start + k * ratio / SR, abs=1e-9)
        ks.add(k)
    assert len(ks) > 2


def _fake_ckpt(path: Path, step: int) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "w": torch.zeros(1000)}, path)
    return path


def test_newest_complete_checkpoint_wins_wherever_it_is(tmp_path, capsys):
    local, drive = tmp_path / "local", tmp_path / "drive"
    _fake_ckpt(drive / "step=2.ckpt", 2)
    _fake_ckpt(drive / "step=6.ckpt", 6)
    _fake_ckpt(local / "step=4.ckpt", 4)
    assert train.newest_checkpoint(local, drive) == drive / "step=6.ckpt"
    _fake_ckpt(local / "step=6.ckpt", 6)
    assert train.newest_checkpoint(local, drive) == local / "step=6.ckpt"  # same step: the local copy
    # a disconnect cut the newest copies: skipped by name, the previous complete one is used
    for p in (drive / "step=6.ckpt", local / "step=6.ckpt"):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert train.newest_checkpoint(local, drive) == local / "step=4.ckpt"
    out = capsys.readouterr().out
    assert f"skipping checkpoint {drive / 'step=6.ckpt'}" in out and "incomplete" in out
    (local / "step=8.ckpt").write_bytes(b"")  # an empty file with a checkpoint's name
    assert train.newest_checkpoint(local, drive) == local / "step=4.ckpt"


def test_mirror_to_a_vanished_or_full_drive_warns_and_keeps_what_was_there(tmp_path, capsys, monkeypatch):
    import errno

    src = _fake_ckpt(tmp_path / "local" / "step=3.ckpt", 3)
    drive = tmp_path / "drive"
    _fake_ckpt(drive / "ckpts" / "step=1.ckpt", 1)
    assert train.mirror_checkpoint(src, drive / "ckpts", keep=1) == drive / "ckpts" / "step=3.ckpt"
    assert sorted(p.name for p in (drive / "ckpts").iterdir()) == ["step=3.ckpt"]
    # Drive unmounted: the folder is gone (a file stands where the mount was)
    import shutil

    shutil.rmtree(drive)
    drive.write_text("not a folder any more")
    src2 = _fake_ckpt(tmp_path / "local" / "step=4.ckpt", 4)
    assert train.mirror_checkpoint(src2, drive / "ckpts", keep=1) is None
    err = capsys.readouterr().err
    assert "could not copy checkpoint step=4.ckpt" in err and "Training goes on" in err
    # a full disk mid-copy: nothing half-written is left, the older copy stays
    drive.unlink()
    _fake_ckpt(drive / "ckpts" / "step=3.ckpt", 3)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert train.mirror_checkpoint(src2, drive / "ckpts", keep=1) is None
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in (drive / "ckpts").iterdir()) == ["step=3.ckpt"]
    assert "no space left" in capsys.readouterr().err.lower()


def test_background_mirror_failure_warns_and_the_next_checkpoint_retries(tmp_path, capsys, monkeypatch):
    """A copy that fails in the background thread warns (and nothing half-written is left); the next
    checkpoint is copied; the mirrored file is byte-identical."""
    import errno

    from stablebeat_utils.checkpoints import CheckpointMirror

    drive = tmp_path / "drive" / "ckpts"
    mirror = CheckpointMirror(drive, keep=1)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    mirror.submit(_fake_ckpt(tmp_path / "local" / "step=3.ckpt", 3))
    assert mirror.wait(timeout=60)
    assert "could not copy checkpoint step=3.ckpt" in capsys.readouterr().err
    assert not drive.exists() or not list(drive.iterdir())
    monkeypatch.setattr(os, "fsync", real_fsync)
    src = _fake_ckpt(tmp_path / "local" / "step=4.ckpt", 4)
    mirror.submit(src)
    assert mirror.wait(timeout=60) and not mirror.busy
    assert sorted(q.name for q in drive.iterdir()) == ["step=4.ckpt"]
    assert (drive / "step=4.ckpt").read_bytes() == src.read_bytes()


def test_checkpoint_copy_to_drive_runs_beside_training_and_fit_waits_for_it(tmp_path, capsys, monkeypatch):
    """local_checkpoint_dir + a copy to the run folder held up (an Event) until fit's end: the
    training steps go on while the first copy is in flight; checkpoints written meanwhile replace
    each other in the queue (two copies in all: the held one and the newest); fit's end waits for
    the copy, says so, and the run folder ends with the final checkpoint, byte-identical."""
    import shutil
    import threading

    from stablebeat_utils.checkpoints import CheckpointMirror
    from stablebeat_utils import train_lightning as tl

    started, release, copies, seen, at_wait = threading.Event(), threading.Event(), [], [], []
    real_copy = shutil.copyfileobj

    def held_copy(src, dst, *args):
        if threading.current_thread().name == "checkpoint-mirror":
            copies.append(Path(src.name).name)
            started.set()
            assert release.wait(120), "the copy was never released"
        return real_copy(src, dst, *args)

    monkeypatch.setattr(shutil, "copyfileobj", held_copy)
    step_end = tl.CurveLogger.on_train_batch_end

    def record(self, trainer, *args):
        step_end(self, trainer, *args)
        seen.append((trainer.global_step, started.is_set(), release.is_set()))

    monkeypatch.setattr(tl.CurveLogger, "on_train_batch_end", record)
    real_wait = CheckpointMirror.wait

    def wait(self, timeout=None):
        at_wait.append(self.busy)
        release.set()
        return real_wait(self, timeout)

    monkeypatch.setattr(CheckpointMirror, "wait", wait)
    run = make_run(tmp_path / "run")
    local = tmp_path / "local_disk"
    kw = dict(FAST, checkpoint_every=1, keep_checkpoints=2, local_checkpoint_dir=str(local))
    summary = train.run(run_dir=str(run), max_steps=5, **kw)
    assert any(step >= 2 and copying and not released for step, copying, released in seen), seen
    assert at_wait[0] is True, "fit's end found no copy in flight"
    assert "waiting for the checkpoint copy to Drive" in capsys.readouterr().out
    assert len(copies) == 2 and copies[-1] == "step=5.ckpt", copies
    drive = run / "05_train" / "checkpoints"
    (local_run,) = list(local.iterdir())
    assert (drive / "step=5.ckpt").read_bytes() == (local_run / "step=5.ckpt").read_bytes()
    assert summary["checkpoints"][-1] == "step=5.ckpt" and len(summary["checkpoints"]) == 2
    assert not list(drive.glob(".*tmp*"))


def test_accumulation_epoch_checkpoints_local_first_and_resume_past_a_cut_copy(tmp_path, capsys):
    """grad_accum=2: one optimizer step per 2 batches; a checkpoint at every epoch's end even when
    checkpoint_every is far away; written locally, mirrored to the run folder; a cut newest copy is
    skipped and the run resumes from the previous complete one."""
    run = make_run(tmp_path / "run")  # 4 clips, batch 2: 2 batches = 1 optimizer step per epoch
    local = tmp_path / "local_disk"
    kw = dict(
        FAST, grad_accum=2, checkpoint_every=1000, keep_checkpoints=2, local_checkpoint_dir=str(local), max_steps=0
    )
    summary = train.run(run_dir=str(run), epochs=2, **kw)
    assert summary["steps"] == 2 and summary["effective_batch"] == 4
    drive = run / "05_train" / "checkpoints"
    (local_run,) = list(local.iterdir())
    assert sorted(p.name for p in local_run.iterdir()) == ["step=1.ckpt", "step=2.ckpt"]
    assert sorted(p.name for p in drive.iterdir()) == ["step=1.ckpt", "step=2.ckpt"]
    assert (drive / "step=2.ckpt").read_bytes() == (local_run / "step=2.ckpt").read_bytes()
    # a new Colab machine (local disk empty) and a copy cut by a disconnect
    import shutil

    shutil.rmtree(local)
    p = drive / "step=2.ckpt"
    p.write_bytes(p.read_bytes()[:1000])
    summary = train.run(run_dir=str(run), epochs=3, **kw)
    assert "skipping checkpoint" in capsys.readouterr().out
    assert summary["resumed_from_step"] == 1 and summary["steps"] == 3
    assert train.checkpoint_problem(drive / "step=3.ckpt") is None


def test_disk_full_mid_checkpoint_is_clear_and_the_next_run_resumes(tmp_path, monkeypatch):
    """The run folder's disk fills while step 2's checkpoint is written: a clear message naming the file,
    step 1's checkpoint intact, nothing half-written left; run again (space freed) → resumes at step 1."""
    import errno

    import torch

    from stablebeat_utils.runs import RunFolderError

    run = make_run(tmp_path / "run")
    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(str(f))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    kw = dict(FAST, checkpoint_every=1, keep_checkpoints=2)
    with pytest.raises(RunFolderError, match=r"step=2\.ckpt: no space left"):
        train.run(run_dir=str(run), max_steps=3, **kw)
    ckpts = run / "05_train" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step=1.ckpt"]
    assert train.checkpoint_problem(ckpts / "step=1.ckpt") is None
    monkeypatch.setattr(torch, "save", real_save)
    summary = train.run(run_dir=str(run), max_steps=3, **kw)
    assert summary["resumed_from_step"] == 1 and summary["steps"] == 3


def test_read_only_run_folder_stops_before_training(tmp_path, monkeypatch):
    import errno

    from stablebeat_utils import runs
    from stablebeat_utils.runs import RunFolderError

    run = make_run(tmp_path / "run")

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runs.os, "replace", read_only)
    with pytest.raises(RunFolderError, match="storage_plan.json: cannot write \\(Read-only file system\\)"):
        train.run(run_dir=str(run), max_steps=1, **FAST)
    assert not (run / "05_train" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------
# divergence: a NaN/inf loss stops training, nothing non-finite is checkpointed or exported


def _finite(state: dict) -> bool:
    import torch

    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_divergence_stops_naming_the_step_and_a_lower_lr_resumes_cleanly(tmp_path):
    """3 good steps at lr 5e-5, then the same run extended with lr=1e8 (it resumes with the new lr):
    the loss turns NaN within a few steps; the stage raises DivergedError naming the step and the last
    good checkpoint (step 3), writes no export and keeps only finite checkpoints, none from the weights
    that gave the NaN. The same call with lr 5e-5 resumes from step 3 with that lr and exports finite
    weights."""
    run = make_run(tmp_path / "run")
    ckpt_dir = run / "05_train" / "checkpoints"
    kw = dict(FAST, checkpoint_every=1, keep_checkpoints=50)
    train.run(run_dir=str(run), lr=5e-5, max_steps=3, **kw)
    (run / "05_train" / "export" / "model.safetensors").unlink()  # so that "no export" below is this run's doing
    with pytest.raises(train.DivergedError, match=r"05_train: training diverged at step \d+: the loss is nan") as err:
        train.run(run_dir=str(run), lr=1e8, max_steps=12, **kw)
    msg = str(err.value)
    diverged_at = int(msg.split("diverged at step ")[1].split(":")[0])
    assert 3 < diverged_at < 12, msg
    assert "lower lr (e.g. lr=1e+07)" in msg and "nothing was exported" in msg
    assert not (run / "05_train" / "export" / "model.safetensors").exists()
    kept = sorted(ckpt_dir.glob("step=*.ckpt"), key=lambda q: int(q.stem.split("=")[1]))
    assert kept and all(_finite(_checkpoint(ck)["state_dict"]) for ck in kept)  # every one left is finite
    assert all(int(q.stem.split("=")[1]) < diverged_at - 1 for q in kept)  # none from the weights that gave NaN
    assert f"resumes from {kept[-1].name} with the new learning rate" in msg

    summary = train.run(run_dir=str(run), lr=5e-5, max_steps=diverged_at + 1, **kw)
    assert summary["resumed_from_step"] == int(kept[-1].stem.split("=")[1])
    assert summary["steps"] == diverged_at + 1
    last = _checkpoint(ckpt_dir / f"step={diverged_at + 1}.ckpt")
    assert last["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 5e-5
    assert last["lr_schedulers"][0]["base_lrs"] == [5e-5]
    from safetensors.torch import load_file

    assert _finite(load_file(str(run / "05_train" / "export" / "model.safetensors")))
    curves = train.read_curves(summary["metrics_csv"])
    assert np.isfinite(curves[-1]["loss"]) and curves[-1]["lr"] < 1e-4


def test_a_nonfinite_start_without_good_checkpoint_says_it_starts_over(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(train.DivergedError, match="starts over from the base model"):
        train.run(run_dir=str(run), lr=1e8, max_steps=12, **dict(FAST, checkpoint_every=1))
    assert not list((run / "05_train" / "checkpoints").glob("step=*.ckpt"))
    assert not (run / "05_train" / "export" / "model.safetensors").exists()


def test_export_refuses_nonfinite_weights(tmp_path):
    """export() itself refuses a NaN weight (whatever produced it), writing nothing."""
    import torch
    from types import SimpleNamespace

    class Diffusion(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(2, 2)

    d = Diffusion()
    with torch.no_grad():
        d.model.weight[0, 0] = float("nan")
    wrapper = SimpleNamespace(diffusion=d, lora_config=None, diffusion_ema=None)
    with pytest.raises(train.DivergedError, match="1 of 2 weight tensors hold NaN/inf"):
        train.export(wrapper, {}, tmp_path / "05_train" / "export")
    assert not list((tmp_path / "05_train" / "export").glob("*"))


# ------------------------------------------------------------------------------------------
# training that watches its own sound; keep the best; a held-out split


def test_demos_scored_held_out_loss_and_best_export(tmp_path, monkeypatch):
    """12 clips, holdout_fraction 0.25: the clips whose id hash falls under 0.25 are held out (never
    in training), their loss logged as val/avg_loss; every demo gets a row in demo_scores.csv; with
    export_from="best" the export holds the weights of the demo step with the lowest score."""
    import torch
    from safetensors.torch import load_file

    from stablebeat_utils import train_watch as tw

    from stablebeat_utils import audio_checks

    # the tiny random model's demos are mostly DC with a little noise, alike for every prompt: its DC
    # offset, clicks, clipping and collapse detectors would fire on every demo (they are tested in
    # test_audio_checks); lifted here so that the scores are finite and the best step is chosen by distance
    monkeypatch.setattr(audio_checks, "DC_RATIO", 100.0)
    monkeypatch.setattr(audio_checks, "CLICK_RATE", 1e6)
    monkeypatch.setattr(audio_checks, "CLIP_FRACTION", 1.0)
    monkeypatch.setattr(audio_checks, "COLLAPSE_DB", 0.0)
    run = make_run(tmp_path / "run", n_sources=3, starts=(1.0, 4.0, 7.0, 10.0), seconds=(0.6,) * 4)
    ids = sorted(c.clip_id for c in train.read_clips(run))
    held = sorted(i for i in ids if train.holdout_unit(i) < 0.25)
    assert 0 < len(held) < len(ids)
    kw = dict(FAST, demo_every=2, num_demos=2, demo_steps=2, demo_seconds=0.5, checkpoint_every=2)
    summary = train.run(run_dir=str(run), max_steps=6, holdout_fraction=0.25, export_from="best", **kw)
    assert summary["held_out_clips"] == held and summary["clips"] == len(ids) - len(held)
    val = train.read_val_curve(summary["metrics_csv"])
    assert [v["step"] for v in val] == [2, 4, 6] and all(np.isfinite(v["val_loss"]) for v in val)
    rows = tw.read_scores(run / "05_train" / tw.CSV_NAME)
    files = sorted(Path(d).name for d in summary["demos"])
    assert sorted(r["file"] for r in rows) == files and len(files) == 6  # steps 2, 4, 6 x 2 prompts
    assert all(r["status"] == "scored" or r["status"].startswith("not scored") for r in rows)
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    scores = {s: tw.step_score(v) for s, v in by_step.items()}
    assert all(np.isfinite(v) for v in scores.values()), scores
    best = min(scores, key=scores.get)
    assert summary["exported_step"] == best
    kept = load_file(str(run / "05_train" / "best" / "weights.safetensors"))
    exported = load_file(str(run / "05_train" / "export" / "model.safetensors"))
    assert set(kept) <= set(exported)
    assert all(torch.equal(kept[k], exported[k]) for k in kept)  # the export is the best step's weights
    if best != 6:  # and not the last step's (the final checkpoint's EMA weights)
        last = _checkpoint(run / "05_train" / "checkpoints" / "step=6.ckpt")["state_dict"]
        k = next(k for k in kept if k.startswith("model.") and kept[k].is_floating_point())
        assert not torch.equal(exported[k], last["diffusion_ema.ema_model." + k[len("model.") :]])
    assert summary["demo_warnings"] == tw.warnings_of(rows)


def test_too_small_a_catalogue_trains_without_a_held_out_split(tmp_path, capsys):
    clips = train.read_clips(make_run(tmp_path / "run"))
    kept, held = train.split_holdout(clips, 0.3)
    assert kept == clips and held == []
    assert "too small for a held-out split (4 clips" in capsys.readouterr().out
