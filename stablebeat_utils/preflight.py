"""GPU-memory preflight for 05_train: will this mode × precision × batch × window × optimizer fit?

Called by ``train.run`` before the model is loaded (loading SAO takes minutes; an out-of-memory
error after that teaches nothing). On CUDA it compares the estimate with
``torch.cuda.mem_get_info`` and STOPs naming settings that fit: a smaller batch with gradient
accumulation (the same effective batch), 8-bit AdamW, LoRA. :func:`choose` names the largest
batch × accumulation that fits a GPU (:data:`COLAB_GPUS`: a T4, an L4, an A100 40 GB).

Where the numbers come from (all in GB = 1e9 bytes):

- **measured**: ``data/gpu_measurements.csv`` (:func:`load_measurements`), one row per measured
  point with its GPU, date, command and settings; ``benchmarks/gpu_all.py`` appends to it, and
  every figure below is refitted from it at import. No figure of this module is typed in by hand.
- **computed** from parameter counts (:mod:`stablebeat_utils.storage`): weights, gradients,
  AdamW moments (8 B per parameter, ~2 B with bitsandbytes' 8-bit AdamW), EMA, the fp32 VAE that
  stays on the GPU, the fp16 T5-base encoder.
- **fitted**: per mode (``lora``/``full``) and input (pre-encoded ``latents``/``raw`` audio), the
  rest of each measured peak (peak − computed) = a fixed part + a per-sample part × batch ×
  window seconds, by least squares where two or more batch × window sizes were measured. Where
  only one size was measured (:attr:`Fit.one_size`), the two parts cannot be told apart: the
  per-sample part is then shared by those groups and set to the smallest rest per sample-second
  among them (an upper bound on the DiT's activations, which LoRA and the full fine-tune share:
  the backward runs through the whole DiT in both), and each group's fixed part is what is left.
- **estimated**: a group with no measured point borrows a measured one (named in its basis);
  raw audio without a raw point adds one window's VAE encode (the decoder's per-frame peak,
  measured on the CPU, taken for the encoder) and the batch's audio; 32-true doubles the
  activations; 16-mixed is taken as bf16-mixed until a 16-mixed point is measured.

The estimate is of ``torch.cuda.max_memory_allocated``; :data:`HEADROOM` leaves 8 % of the free
memory for the caching allocator's reserve and the CUDA context.
"""

from __future__ import annotations

import csv
import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .modelspec import SAO
from .storage import SAO_LORA_PARAMS_PER_RANK, SAO_TRAINED_PARAMS, SAO_VAE_PARAMS

GB = 1e9
HEADROOM = 0.92  # leave 8 % of the free memory (allocator reserve, fragmentation, demos)
DATA = Path(__file__).parent / "data" / "gpu_measurements.csv"
COLUMNS = (
    "stage,gpu,date,model,mode,input,precision,optimizer,ema,lora_rank,text_encoder,batch,seconds,tokens,"
    "steps,s_per_step,rate,rate_unit,peak_gb,peak_kind,command,source"
).split(",")
#: computed from t5-base's published config (d_model 768, d_ff 3072, 12 layers, vocab 32128)
T5_BASE_ENCODER_PARAMS = 109_628_544
SAO_WINDOW_SECONDS = SAO.window_seconds  # from data/sao-1.0-model_config.json (modelspec)
#: measured on the CPU (benchmarks/bench_vae_decode_memory.py): SAO's VAE decode peaks at 4.81 MB per
#: latent frame in fp32; taken for the encoder of a raw-audio step (estimated, until a raw point exists)
VAE_BYTES_PER_FRAME_FP32 = 4.81e6
#: free and total bytes as torch.cuda.mem_get_info reports them after the CUDA context is made
#: (nominal: the card's memory less ~0.8-3 GB of context and driver reserve; not measured here),
#: and the precision 05 picks there (``train.pick_precision``: no bf16 on a T4)
COLAB_GPUS = {
    "T4": (int(15.0 * GB), int(15.8 * GB), "16-mixed"),
    "L4": (int(22.0 * GB), int(23.7 * GB), "bf16-mixed"),
    "A100-40": (int(39.4 * GB), int(42.4 * GB), "bf16-mixed"),
}


class GPUMemoryError(RuntimeError):
    """The chosen setting will not fit this GPU; the message names settings that would."""


@dataclass
class Estimate:
    gb: float
    parts: dict
    basis: str  # "measured", "fitted to measurements" or "estimated"


@dataclass(frozen=True)
class Fit:
    """The rest of the measured peaks of one (mode, input) group: fixed + per sample-second."""

    mode: str
    input: str
    fixed_gb: float
    per_sample_second_gb: float
    points: int
    sizes: int  # distinct batch × window sizes measured
    basis: str

    @property
    def one_size(self) -> bool:
        return self.sizes < 2


# --------------------------------------------------------------------------------------------
# the measurements


def load_measurements(stage: str | None = None, path: str | Path | None = None) -> list[dict]:
    """The rows of ``data/gpu_measurements.csv`` (or ``path``), of one stage or all, as strings."""
    p = Path(path or DATA)
    rows = _read(str(p), p.stat().st_mtime_ns)
    return [dict(r) for r in rows if stage is None or r["stage"] == stage]


@functools.lru_cache(maxsize=8)
def _read(path: str, _mtime: int) -> tuple[dict, ...]:
    with open(path, newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def num(value, default=None):
    """A CSV cell as a float (``default`` when empty)."""
    return float(value) if str(value).strip() not in ("", "None") else default


def text_encoder_gb(name: str) -> float:
    """The T5 encoder the engine's conditioner keeps in fp16 (computed); a tiny one counts as 0."""
    return 0.0 if not name or str(name).startswith("tiny:") else T5_BASE_ENCODER_PARAMS * 2 / GB


def state_parts(mode: str, optimizer: str = "adamw", ema: bool = True, lora_rank: int = 16) -> dict:
    """What parameter counts decide (computed): weights, gradients, optimizer state, EMA, the VAE."""
    p = SAO_TRAINED_PARAMS
    moments = 2 + 8 / 256 if optimizer == "adamw8bit" else 8
    if mode == "lora":
        n = SAO_LORA_PARAMS_PER_RANK * lora_rank
        state = {
            "base weights (frozen, fp32)": p * 4 / GB,
            f"rank-{lora_rank} adapters + grads + {optimizer}": n * (8 + moments) / GB,
        }
    else:
        state = {"weights fp32": p * 4 / GB, "gradients fp32": p * 4 / GB, f"{optimizer} moments": p * moments / GB}
        if ema:
            state["EMA copy"] = p * 4 / GB
    state["VAE, fp32 (kept on the GPU)"] = SAO_VAE_PARAMS * 4 / GB
    return state


def _sample_seconds(batch: float, seconds: float, precision: str) -> float:
    return batch * seconds * (2.0 if precision == "32-true" else 1.0)


def _rest(row: dict) -> tuple[float, float]:
    """(sample-seconds, peak − computed parts) of a measured 05 row."""
    ema = row["ema"].strip().lower() == "true"
    rank = int(num(row["lora_rank"], 16))
    computed = sum(state_parts(row["mode"], row["optimizer"] or "adamw", ema, rank).values())
    computed += text_encoder_gb(row["text_encoder"])
    x = _sample_seconds(num(row["batch"]), num(row["seconds"]), row["precision"])
    return x, num(row["peak_gb"]) - computed


def fitted_rows(path: str | Path | None = None) -> list[dict]:
    """05's rows the fit uses: a peak read with ``torch.cuda.max_memory_allocated``."""
    return [r for r in load_measurements(layout.TRAIN, path) if r["peak_kind"] == "allocated" and num(r["peak_gb"])]


def fits(path: str | Path | None = None) -> dict[tuple[str, str], Fit]:
    """One :class:`Fit` per measured (mode, input) group of ``data/gpu_measurements.csv`` (or ``path``)."""
    p = Path(path or DATA)
    return _fits(str(p), p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _fits(path: str, _mtime: int) -> dict[tuple[str, str], Fit]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for row in fitted_rows(path):
        groups[(row["mode"], row["input"])].append(_rest(row))
    out, single = {}, {}
    for key, pts in groups.items():
        xs = sorted({round(x, 3) for x, _ in pts})
        if len(xs) < 2:
            single[key] = pts
            continue
        n, mx, my = len(pts), sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        slope = max(slope, 0.0)
        out[key] = Fit(*key, my - slope * mx, slope, n, len(xs), f"fitted to {n} points, {len(xs)} sizes")
    if single:
        if out:  # the per-sample part of the groups measured at several sizes
            slope, how = sum(f.per_sample_second_gb for f in out.values()) / len(out), "the multi-size fits' mean"
        else:
            rates = {k: min(y / x for x, y in pts) for k, pts in single.items()}
            low = min(rates, key=rates.get)
            slope, how = max(rates[low], 0.0), f"{low[0]}-{low[1]}'s whole rest (an upper bound)"
        for key, pts in single.items():
            fixed = sum(y - slope * x for x, y in pts) / len(pts)
            basis = f"one size measured: per-sample part shared, set from {how}"
            out[key] = Fit(*key, fixed, slope, len(pts), 1, basis)
    return out


def group_fit(mode: str, input_: str, path: str | None = None) -> tuple[Fit, bool]:
    """The fit of (mode, input), or one borrowed from a measured group; (fit, measured-group?).

    A borrowed fit keeps the mode and input it was measured with (so the estimate knows what to add)."""
    all_fits = fits(path)
    if (mode, input_) in all_fits:
        return all_fits[(mode, input_)], True
    other = "raw" if input_ == "latents" else "latents"
    if (mode, other) in all_fits:
        base = all_fits[(mode, other)]
        return Fit(mode, other, base.fixed_gb, base.per_sample_second_gb, 0, 0, f"estimated from {mode}-{other}"), False
    same_input = [f for (m, i), f in all_fits.items() if i == input_] or list(all_fits.values())
    if not same_input:
        raise GPUMemoryError(f"{DATA} holds no measured 05_train peak: the preflight has nothing to fit")
    f = max(same_input, key=lambda f: f.fixed_gb)  # the larger fixed part: err on the safe side
    return Fit(f.mode, f.input, f.fixed_gb, f.per_sample_second_gb, 0, 0, f"estimated from {f.mode}-{f.input}"), False


# --------------------------------------------------------------------------------------------
# the estimate


def estimate(
    mode: str = "full",
    precision: str = "bf16-mixed",
    batch_size: int = 16,
    window_seconds: float = SAO_WINDOW_SECONDS,
    optimizer: str = "adamw",
    ema: bool = True,
    lora_rank: int = 16,
    pre_encode: bool = True,
    text_encoder: str = "t5-base",
) -> Estimate:
    """Peak GPU memory of one training step (GB allocated) and what it is made of."""
    input_ = "latents" if pre_encode else "raw"
    fit, measured_group = group_fit(mode, input_)
    parts = state_parts(mode, optimizer, ema and mode == "full", lora_rank)
    if text_encoder_gb(text_encoder):
        parts["T5-base encoder, fp16"] = text_encoder_gb(text_encoder)
    x = _sample_seconds(batch_size, window_seconds, precision)
    parts[f"fixed rest of the measured peaks ({fit.basis})"] = fit.fixed_gb
    per = fit.per_sample_second_gb * SAO_WINDOW_SECONDS
    parts[
        f"activations, {batch_size} x {window_seconds:.1f} s ({per:.3f} GB per {SAO_WINDOW_SECONDS:.2f}-s sample)"
    ] = fit.per_sample_second_gb * x
    if input_ == "raw" and fit.input != "raw":
        frames = math.ceil(window_seconds * SAO.sample_rate / SAO.downsampling_ratio)
        audio = batch_size * 2 * window_seconds * SAO.sample_rate * 4 / GB
        parts["raw audio: one window's VAE encode + the batch (estimated)"] = (
            frames * VAE_BYTES_PER_FRAME_FP32 / GB + audio
        )
    total = sum(parts.values())
    setting = (mode, input_, precision, optimizer, ema and mode == "full", lora_rank, batch_size, window_seconds)
    if any(_same(row, setting, text_encoder) for row in fitted_rows()):
        basis = "measured"
    else:
        basis = "fitted to measurements" if measured_group else "estimated"
    return Estimate(round(total, 2), {k: round(v, 2) for k, v in parts.items()}, basis)


def _same(row: dict, setting: tuple, text_encoder: str) -> bool:
    mode, input_, precision, optimizer, ema, rank, batch, seconds = setting
    return (
        (row["mode"], row["input"], row["precision"], row["optimizer"]) == (mode, input_, precision, optimizer)
        and (row["ema"].lower() == "true") == bool(ema)
        and (mode == "full" or int(num(row["lora_rank"], 16)) == rank)
        and int(num(row["batch"])) == batch
        and abs(num(row["seconds"]) - seconds) < 0.05
        and text_encoder_gb(row["text_encoder"]) == text_encoder_gb(text_encoder)
    )


def estimate_row(row: dict) -> Estimate:
    """The estimate for the setting a measured row ran with (its own text encoder)."""
    return estimate(
        row["mode"],
        row["precision"],
        int(num(row["batch"])),
        num(row["seconds"]),
        row["optimizer"] or "adamw",
        row["ema"].lower() == "true",
        int(num(row["lora_rank"], 16)),
        pre_encode=row["input"] != "raw",
        text_encoder=row["text_encoder"],
    )


# --------------------------------------------------------------------------------------------
# what fits


def choose(
    mode: str,
    precision: str,
    effective_batch: int,
    window_seconds: float,
    optimizer: str,
    ema: bool,
    lora_rank: int,
    free_bytes: int,
    pre_encode: bool = True,
) -> tuple[int, int] | None:
    """The largest ``(batch_size, grad_accum)`` keeping ``effective_batch`` whose estimate fits
    ``free_bytes`` (with :data:`HEADROOM`); None when not even batch 1 fits."""
    budget = free_bytes / GB * HEADROOM
    for b in range(effective_batch, 0, -1):
        if effective_batch % b == 0:
            est = estimate(mode, precision, b, window_seconds, optimizer, ema, lora_rank, pre_encode)
            if est.gb <= budget:
                return b, effective_batch // b
    return None


def named_choice(gpu: str, mode: str = "lora", effective_batch: int = 16, **kw) -> tuple[int, int] | None:
    """:func:`choose` on one of :data:`COLAB_GPUS` with the precision 05 picks there."""
    free, _total, precision = COLAB_GPUS[gpu]
    s = {"window_seconds": SAO_WINDOW_SECONDS, "optimizer": "adamw", "ema": mode == "full", "lora_rank": 16} | kw
    return choose(mode, precision, effective_batch, s["window_seconds"], s["optimizer"], s["ema"], s["lora_rank"], free)


def t4_choice(effective_batch: int = 16, **kw) -> tuple[int, int] | None:
    """LoRA on a free Colab T4 (16-mixed): the ``(batch_size, grad_accum)`` a ``colab_t4`` profile should hold."""
    return named_choice("T4", "lora", effective_batch, **kw)


def alternatives(
    mode: str,
    precision: str,
    batch_size: int,
    grad_accum: int,
    window_seconds: float,
    optimizer: str,
    ema: bool,
    lora_rank: int,
    budget_gb: float,
    pre_encode: bool = True,
) -> list[str]:
    """Settings that fit ``budget_gb``, each keeping the effective batch ``batch_size * grad_accum``."""
    effective = batch_size * grad_accum
    free = budget_gb / HEADROOM * GB

    def named(choice):
        b, acc = choice
        return f", batch_size={b}, grad_accum={acc}" if b != batch_size else ""

    out = []
    same = choose(mode, precision, effective, window_seconds, optimizer, ema, lora_rank, free, pre_encode)
    if same and same[0] < batch_size:
        out.append(f"batch_size={same[0]}, grad_accum={same[1]} (effective batch {effective} kept)")
    if mode == "full" and optimizer != "adamw8bit":
        eight = choose(mode, precision, effective, window_seconds, "adamw8bit", ema, lora_rank, free, pre_encode)
        if eight:
            out.append("optimizer='adamw8bit'" + named(eight))
    if mode == "full":
        lora = choose("lora", precision, effective, window_seconds, optimizer, False, lora_rank, free, pre_encode)
        if lora:
            out.append("mode='lora' (profile colab_lora)" + named(lora))
    return out


def check(
    mode: str,
    precision: str,
    batch_size: int,
    grad_accum: int,
    window_seconds: float,
    optimizer: str,
    ema: bool,
    lora_rank: int,
    free_bytes: int | None,
    total_bytes: int | None = None,
    pre_encode: bool = True,
) -> Estimate:
    """Raise :class:`GPUMemoryError` when the estimate exceeds the GPU's free memory (with headroom)."""
    est = estimate(mode, precision, batch_size, window_seconds, optimizer, ema, lora_rank, pre_encode)
    if free_bytes is None:
        return est
    budget = free_bytes / GB * HEADROOM
    if est.gb <= budget:
        return est
    fits_ = alternatives(
        mode, precision, batch_size, grad_accum, window_seconds, optimizer, ema, lora_rank, budget, pre_encode
    )
    parts = "\n".join(f"    {k}: {v:.2f} GB" for k, v in est.parts.items())
    fix = ("Settings that fit: " + "; ".join(fits_) + ".") if fits_ else "No setting fits this GPU: use a larger one."
    total = f" of {total_bytes / GB:.1f} GB" if total_bytes else ""
    raise GPUMemoryError(
        f"STOP — 05_train needs ~{est.gb:.1f} GB of GPU memory ({est.basis}) for mode={mode!r}, "
        f"precision={precision!r}, batch_size={batch_size}, a {window_seconds:.1f} s window, optimizer={optimizer!r}"
        f"{', EMA' if ema and mode == 'full' else ''}{'' if pre_encode else ', raw audio'}; the GPU has "
        f"{free_bytes / GB:.1f} GB free{total} (using at most {HEADROOM:.0%}).\n{parts}\n{fix}"
    )


def report() -> list[str]:
    """Markdown lines: every measured 05 peak against the estimate, the fits, the Colab choices."""
    lines = ["| GPU | setting | measured | kind | estimate | error |", "|---|---|---:|---|---:|---:|"]
    for row in load_measurements(layout.TRAIN):
        if num(row["peak_gb"]) is None:
            continue
        est, peak = estimate_row(row), num(row["peak_gb"])
        what = f"{row['mode']}-{row['input']}, {row['precision']}, batch {row['batch']} x {row['seconds']} s"
        err = f"{(est.gb - peak) / peak:+.0%}"
        lines.append(f"| {row['gpu']} | {what} | {peak:.2f} GB | {row['peak_kind']} | {est.gb:.2f} GB | {err} |")
    lines += ["", f"| group | fixed rest | per {SAO_WINDOW_SECONDS:.2f}-s sample | basis |", "|---|---:|---:|---|"]
    for f in fits().values():
        per = f.per_sample_second_gb * SAO_WINDOW_SECONDS
        lines.append(f"| {f.mode}-{f.input} | {f.fixed_gb:.2f} GB | {per:.3f} GB | {f.basis} |")
    lines += ["", "| GPU | mode | choice (batch x grad_accum, effective 16) | estimate |", "|---|---|---|---:|"]
    for gpu, (_free, _total, prec) in COLAB_GPUS.items():
        for mode in ("lora", "full"):
            c = named_choice(gpu, mode)
            gb = estimate(mode, prec, c[0], ema=mode == "full").gb if c else None
            lines.append(f"| {gpu} ({prec}) | {mode} | {f'{c[0]} x {c[1]}' if c else 'none fits'} | {gb or '-'} |")
    return lines


def gpu_free(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device, or None when not on CUDA."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(int(x) for x in torch.cuda.mem_get_info(torch.device(device)))
