"""The Lightning pieces of notebook ``05_train`` (and ``05b_focus``, which trains with 05's code).

Module-level classes, as stable-audio-tools keeps its training wrappers: this module imports
torch, PyTorch Lightning and the engine when it is imported, so :mod:`stablebeat_utils.train`
imports it only inside the functions that train (``import stablebeat_utils.train`` stays light).
It imports nothing of ``train``'s (one way: ``train`` → here → ``checkpoints``, ``runs``, ``audio``).

- :class:`AtomicCheckpointIO`: checkpoints written atomically, read with ``weights_only=True``, and
  mirrored from fast local disk to the run folder;
- :class:`Wrapper`: the engine's training wrapper with smaller, resumable checkpoints;
- :class:`CurveLogger`: loss, learning rate and seconds per step to every logger;
- :class:`FiniteGuard`: a NaN/inf loss stops training, naming the step and the last good checkpoint;
- :class:`DemoCallback`: demo WAVs of the card's prompts during training, each scored as it is made
  (:mod:`stablebeat_utils.train_watch`);
- :class:`BestWeights`: the weights of the best demo step (``export_from="best"``);
- :class:`KeepNewest`: checkpoints by steps, minutes and epochs, the newest ``keep`` kept.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import layout
from . import audio as audio_io
from . import compat
from .checkpoints import (
    RESUME_KEYS,
    CheckpointMirror,
    divergence_message,
    drop_checkpoints_from,
    newest_checkpoint,
    nonfinite_tensors,
    prune_checkpoints,
)
from .runs import JsonlLog, atomic_path

compat.apply()  # before the engine is imported: its modules import what these shims stand in for
compat.stub_training_only_imports()

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO  # noqa: E402
from stable_audio_tools.models.lora import get_lora_state_dict  # noqa: E402
from stable_audio_tools.training.diffusion import DiffusionCondTrainingWrapper  # noqa: E402

CARD_SAMPLER = {"sampler_type": "dpmpp-3m-sde", "sigma_min": 0.3, "sigma_max": 500}  # SAO 1.0 model card


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed (a kill never leaves half a file);
    read back with ``torch.load(weights_only=True)`` (no arbitrary pickles). With ``mirror_dir``
    the file is first written to fast local disk, then copied atomically to ``mirror_dir`` (the
    run folder, e.g. on Drive) in a background thread (:class:`~stablebeat_utils.checkpoints.CheckpointMirror`:
    training goes on meanwhile) where the newest ``keep`` are kept; the end of fit, and its
    teardown after an exception or an interrupt, waits for the copy in flight."""

    def __init__(self, mirror_dir: Path | None = None, keep: int = 1):
        super().__init__()
        self.mirror_dir, self.keep = mirror_dir, keep
        self.mirror = CheckpointMirror(Path(mirror_dir), keep) if mirror_dir is not None else None

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        if self.mirror is not None and Path(path).parent.resolve() != Path(self.mirror_dir).resolve():
            self.mirror.submit(Path(path))

    def teardown(self):
        if self.mirror is not None:
            self.mirror.wait()
        super().teardown()

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=True):
        return torch.load(path, map_location=map_location, weights_only=True)


class Wrapper(DiffusionCondTrainingWrapper):
    """The engine's wrapper with smaller, resumable checkpoints.

    The frozen VAE is left out of checkpoints (it comes from the base model); in LoRA mode only
    the adapters are kept — but unlike the engine (which clears the checkpoint to the adapters
    and loses optimizer and step), the optimizer, scheduler and loop state stay, so LoRA runs
    resume too. On load the left-out weights are taken from the freshly loaded base model, and
    the run's settings are compared with the checkpoint's.
    """

    stablebeat_info: dict = {}
    parent_pid: int = -1  # the process that called fit (set in run): ranks forked from it differ
    settings_error: type[Exception] = RuntimeError  # train.run sets its TrainError (no import of train here)
    diverged_error: type[Exception] = RuntimeError  # train.run sets its DivergedError
    stage: str = layout.TRAIN

    def setup(self, stage):
        # before Lightning restores a checkpoint into this rank: see compat.single_thread_if_forked
        if self.parent_pid > 0:
            compat.single_thread_if_forked(self.parent_pid)
        super().setup(stage)

    def _kept_keys(self, state: dict) -> set:
        if self.lora_config is not None:
            lora = {f"diffusion.model.{k}" for k in get_lora_state_dict(self.diffusion.model)}
            lora |= {f"diffusion.conditioner.{k}" for k in get_lora_state_dict(self.diffusion.conditioner)}
            return {k for k in state if k in lora}
        return {k for k in state if not k.startswith("diffusion.pretransform.")}

    def on_save_checkpoint(self, checkpoint):
        state = checkpoint["state_dict"]
        keep = self._kept_keys(state)
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        bad = nonfinite_tensors(checkpoint["state_dict"])
        if bad:  # never a checkpoint that can only resume into NaN: the last good one stays the newest
            info = self.stablebeat_info
            ckpt_dir = Path(info.get("checkpoint_dir", "."))
            raise self.diverged_error(
                divergence_message(
                    self.stage,
                    int(checkpoint.get("global_step", 0)),
                    f"{len(bad)} weight tensor(s) hold NaN/inf (e.g. {bad[0]}); not checkpointed",
                    float(info.get("lr", 0.0)),
                    newest_checkpoint(ckpt_dir, quiet=True),
                    ckpt_dir,
                )
            )
        checkpoint["stablebeat"] = dict(self.stablebeat_info)

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("stablebeat") or {}
        diff = {
            k: (saved.get(k), self.stablebeat_info.get(k))
            for k in RESUME_KEYS
            if saved.get(k) != self.stablebeat_info.get(k)
        }
        if diff:
            what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise self.settings_error(
                f"the checkpoints in {self.stablebeat_info.get('checkpoint_dir')} were made with "
                f"other settings ({what}). Use a new run_dir, put the settings back, or delete "
                "that folder to start over."
            )
        self._apply_new_lr(checkpoint, saved.get("lr"))
        state = checkpoint["state_dict"]
        current = self.state_dict()
        kept = self._kept_keys(current)
        for k, v in current.items():
            if k not in kept:
                state.setdefault(k, v)

    def on_validation_epoch_end(self):
        """The held-out clips' loss (the engine's ``val/avg_loss``: the mean over its five fixed noise
        levels) to every logger — the engine's own hook logs it to W&B and Comet only, not the CSV."""
        outs = self.validation_step_outputs
        values = [v for vs in outs.values() for v in vs]
        if values:
            mean = float(self.all_gather(torch.tensor(float(np.mean(values)))).mean())
            for lg in self.trainer.loggers:
                lg.log_metrics({"val/avg_loss": mean}, step=self.global_step)
        for k in outs:
            outs[k] = []

    def _apply_new_lr(self, checkpoint: dict, saved_lr) -> None:
        """A re-run with another ``lr`` (typically lower, after a divergence) resumes with it: the
        checkpoint's optimizer learning rate and the schedule's base are scaled to the new ``lr``; the
        schedule goes on from the checkpoint's step, Adam's moments and the EMA are kept."""
        new = self.stablebeat_info.get("lr")
        if saved_lr is None or new is None or float(saved_lr) == float(new) or float(saved_lr) <= 0:
            return
        factor = float(new) / float(saved_lr)
        for opt in checkpoint.get("optimizer_states", []):
            for group in opt.get("param_groups", []):
                group["lr"] = group["lr"] * factor
                if "initial_lr" in group:
                    group["initial_lr"] = float(new)
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched:
                sched["base_lrs"] = [float(new) for _ in sched["base_lrs"]]
            if "_last_lr" in sched:
                sched["_last_lr"] = [v * factor for v in sched["_last_lr"]]
        print(
            f"{self.stage}: resuming from step {checkpoint.get('global_step')} with lr={float(new):g} "
            f"(the checkpoint trained with lr={float(saved_lr):g})"
        )


class CurveLogger(pl.Callback):
    """Loss, learning rate and seconds per step, every step, to every logger (CSV, TensorBoard, W&B)."""

    def __init__(self):
        self.t0 = None
        self.step_seconds: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        dt = time.perf_counter() - self.t0
        self.step_seconds.append(dt)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        metrics = {
            "loss": float(loss.detach().float().cpu()),
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            "epoch": trainer.current_epoch,
            "step_seconds": dt,
        }
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)


class FiniteGuard(pl.Callback):
    """Stop training at a non-finite (NaN/inf) loss, with a message naming the step and what to try.

    With ``precision="16-mixed"`` the GradScaler skips a step whose loss overflowed and lowers its
    scale (the weights stay finite), so there it takes ``patience`` non-finite losses in a row;
    in 32-bit and bf16 the first one has already put NaN into the gradients, so ``patience`` is 1.
    The checkpoints whose weights gave the non-finite loss (the step before it, and later) are
    removed; the last good one stays, and a re-run with a lower ``lr`` resumes from it
    (:meth:`Wrapper._apply_new_lr`). Runs after :class:`CurveLogger`, before the checkpoint callback
    (Lightning runs those last): the non-finite step is logged, never checkpointed.
    """

    def __init__(self, stage: str, lr: float, ckpt_dirs: list[Path], patience: int = 1, error=RuntimeError):
        self.stage, self.lr, self.ckpt_dirs = stage, float(lr), [Path(d) for d in ckpt_dirs]
        self.patience, self.error, self.bad = max(1, int(patience)), error, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach().float().cpu())
        if math.isfinite(value):
            self.bad = 0
            return
        self.bad += 1
        if self.bad < self.patience:
            return
        step = int(trainer.global_step)
        io = trainer.strategy.checkpoint_io
        if getattr(io, "mirror", None) is not None:
            io.mirror.wait()  # a copy in flight lands before the bad checkpoints are removed
        dropped = drop_checkpoints_from(step - self.bad, *self.ckpt_dirs)
        what = f"the loss is {value} ({self.bad} step(s) in a row)" if self.bad > 1 else f"the loss is {value}"
        if dropped:
            what += f"; removed {', '.join(dropped)} (its weights gave that loss)"
        good = newest_checkpoint(*self.ckpt_dirs, quiet=True)
        raise self.error(divergence_message(self.stage, step, what, self.lr, good, self.ckpt_dirs[-1]))


class DemoCallback(pl.Callback):
    """Every ``every`` steps and every ``minutes`` of training (0 = off, each): generate the card's
    prompts (EMA weights when there are) to WAV files.

    The time is decided as :class:`KeepNewest` decides its checkpoints: rank 0's clock, broadcast,
    so every rank takes the same decision (only rank 0 generates); the clock starts with training
    and restarts after each demo (the minutes count training, not demo generation).
    Our own callback: the engine's demo callback saves with ``torchaudio.save``.
    """

    def __init__(
        self,
        every,
        prompts,
        steps,
        cfg,
        seconds,
        out_dir: Path,
        seed=0,
        minutes: float = 0.0,
        watch=None,
        best=None,
        cond_ids=None,
    ):
        self.every, self.prompts, self.steps, self.cfg, self.seconds = every, prompts, steps, cfg, seconds
        self.out_dir, self.seed, self.last = Path(out_dir), seed, -1
        self.watch, self.best = watch, best  # train_watch.DemoWatch; BestWeights (export_from="best") or None
        self._demo_log = None
        self.last_epoch = -1
        self.minutes, self.demo_at = float(minutes), time.monotonic()
        self.cond_ids = cond_ids  # the model's conditioning ids (modelspec); None: SAO 1.0's three

    def conditioning(self, prompt: str) -> dict:
        """A demo's conditioning: the card's (prompt, start 0, this length), less what the model is not
        conditioned on (stable-audio-open-small has no ``seconds_start``)."""
        cond = {"prompt": prompt, "seconds_start": 0, "seconds_total": self.seconds}
        return cond if self.cond_ids is None else {k: v for k, v in cond.items() if k in self.cond_ids}

    def on_train_start(self, trainer, module):
        self.demo_at = time.monotonic()

    def on_train_epoch_end(self, trainer, module):
        # at least one demo per epoch: a small set finishes epochs in fewer than ``every`` steps
        step = trainer.global_step
        if self.every <= 0 or self.last_epoch == trainer.current_epoch or step == self.last or step == 0:
            return
        self._demo(trainer, module, step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == 0 or step == self.last:
            return
        due = self.every > 0 and step % self.every == 0
        if not due and self.minutes > 0:
            late = time.monotonic() - self.demo_at >= self.minutes * 60
            due = trainer.strategy.broadcast(late)  # every rank takes the same decision
        if due:
            self.last_epoch = trainer.current_epoch
            self._demo(trainer, module, step)

    def _demo(self, trainer, module, step):
        self.last = step  # on every rank: the next decision is taken alike
        if trainer.is_global_zero:
            self.generate(trainer, module, step)
        self.demo_at = time.monotonic()

    @torch.no_grad()
    def generate(self, trainer, module, step):
        from stable_audio_tools.inference.generation import generate_diffusion_cond

        self._demo_log = self._demo_log or JsonlLog(self.out_dir / layout.DEMOS_LOG, key="file")
        diffusion = module.diffusion
        online = diffusion.model
        was_training = module.training
        module.eval()
        if module.diffusion_ema is not None:
            diffusion.model = module.diffusion_ema.ema_model
        ratio = diffusion.pretransform.downsampling_ratio if diffusion.pretransform is not None else 1
        sr = int(diffusion.sample_rate)
        n = max(1, math.ceil(self.seconds * sr / ratio)) * ratio
        try:
            for i, prompt in enumerate(self.prompts):
                with trainer.strategy.precision_plugin.forward_context():
                    out = generate_diffusion_cond(
                        diffusion,
                        steps=self.steps,
                        cfg_scale=self.cfg,
                        conditioning=[self.conditioning(prompt)],
                        sample_size=n,
                        seed=self.seed + i,
                        device=module.device,
                        apg_scale=0.0,
                        disable_tqdm=True,
                        **CARD_SAMPLER,
                    )
                wav = out[0].float().cpu().numpy()
                name = f"step{step:08d}_{i}.wav"
                if self.watch is not None:  # scored raw: normalising would hide clipping and DC offset
                    self.watch.add(step, name, prompt, wav, sr)
                wav = np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0)
                peak = float(np.max(np.abs(wav))) if wav.size else 0.0
                if peak > 0:
                    wav = wav / peak * 0.9  # a demo is for listening: normalise the level
                with atomic_path(self.out_dir / name) as tmp:
                    audio_io.write_wav(tmp, wav, sr)
                self._demo_log.append(
                    {
                        "file": name,
                        "step": step,
                        "prompt": prompt,
                        "seconds": self.seconds,
                        "steps": self.steps,
                        "cfg": self.cfg,
                        "ema": module.diffusion_ema is not None,
                    }
                )
            if self.watch is not None:
                score = self.watch.end_step(step)
                if self.best is not None:
                    self.best.offer(module, step, score)
        finally:
            diffusion.model = online
            module.train(was_training)


class BestWeights:
    """The weights of the best demo step so far (``export_from="best"``), on disk in
    ``RUN_DIR/<stage>/best/weights.safetensors`` (its step and score in the metadata, so a resumed
    session keeps comparing with it).

    What is kept is what the export needs: for a full fine-tune the EMA weights of the DiT (the
    online ones without EMA) and the trainable conditioner weights; for LoRA the adapters.
    :meth:`restore` puts them back into the wrapper before :func:`stablebeat_utils.train.export`.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / "weights.safetensors"
        self.step, self.score = None, math.inf
        if self.path.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(self.path), "pt") as fh:
                    meta = fh.metadata() or {}
                self.step, self.score = int(meta["step"]), float(meta["score"])
            except Exception:  # unreadable: the next best demo replaces it
                self.step, self.score = None, math.inf

    @staticmethod
    def _state(module) -> dict:
        diffusion = module.diffusion
        if module.lora_config is not None:
            out = {f"model.{k}": v for k, v in get_lora_state_dict(diffusion.model).items()}
            out.update({f"conditioner.{k}": v for k, v in get_lora_state_dict(diffusion.conditioner).items()})
            return out
        trainable = {n for n, q in diffusion.named_parameters() if q.requires_grad}
        out = {k: v for k, v in diffusion.state_dict().items() if k in trainable or k.startswith("model.")}
        if module.diffusion_ema is not None:
            out.update({f"model.{k}": v for k, v in module.diffusion_ema.ema_model.state_dict().items()})
        return out

    def offer(self, module, step: int, score: float) -> bool:
        """Keep ``module``'s weights when ``score`` beats the best so far (lower is better)."""
        if not math.isfinite(score) or score >= self.score:
            return False
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self._state(module).items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            save_file(state, str(tmp), metadata={"step": str(int(step)), "score": repr(float(score))})
        self.step, self.score = int(step), float(score)
        return True

    def restore(self, module) -> int | None:
        """Load the best weights into ``module`` (and its EMA); their step, or None when there are none."""
        if self.step is None or not self.path.is_file():
            return None
        from safetensors.torch import load_file

        state = load_file(str(self.path))
        diffusion = module.diffusion
        with torch.no_grad():
            diffusion.load_state_dict(state, strict=False)
            if module.diffusion_ema is not None:
                model_part = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
                module.diffusion_ema.ema_model.load_state_dict(model_part, strict=False)
        return self.step


class KeepNewest(pl.callbacks.ModelCheckpoint):
    """Save every N steps, every ``minutes`` of training and at the end of every epoch (so a small
    set, with fewer steps than N per run, still has one per epoch); then keep the ``keep``
    highest-step files of the folder.

    Pruning by what is on disk (not by Lightning's in-memory list, which a resumed run does
    not restore) also clears checkpoints left behind by a killed session.
    """

    def __init__(self, keep: int, minutes: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.keep, self.minutes = keep, float(minutes)
        self.saved_step, self.saved_at = -1, time.monotonic()

    def on_train_end(self, trainer, pl_module):
        # the last step is always checkpointed, so a finished run resumes (or extends) from its
        # end; here, in the process(es) that trained (under DDP by fork the notebook's own
        # trainer never sees a step)
        super().on_train_end(trainer, pl_module)
        last = Path(self.dirpath) / f"step={trainer.global_step}.ckpt"
        if trainer.global_step > 0 and not last.exists():
            self._save_checkpoint(trainer, str(last))

    def _save_checkpoint(self, trainer, filepath):
        super()._save_checkpoint(trainer, filepath)
        self.saved_step, self.saved_at = trainer.global_step, time.monotonic()
        if trainer.is_global_zero:
            prune_checkpoints(Path(self.dirpath), self.keep)

    def _save_now(self, trainer):
        if trainer.global_step > 0 and trainer.global_step != self.saved_step:
            self._save_checkpoint(trainer, str(Path(self.dirpath) / f"step={trainer.global_step}.ckpt"))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if self.minutes > 0 and trainer.global_step != self.saved_step:
            due = time.monotonic() - self.saved_at >= self.minutes * 60
            if trainer.strategy.broadcast(due):  # every rank takes the same decision
                self._save_now(trainer)

    def on_train_epoch_end(self, trainer, module):
        super().on_train_epoch_end(trainer, module)
        self._save_now(trainer)
