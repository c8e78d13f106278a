"""GPU-memory preflight for 05_train: will this mode × precision × batch × window × optimizer fit?

Called by ``train.run`` before the model is loaded (loading SAO takes minutes; an out-of-memory
error after that teaches nothing). On CUDA it compares the estimate with
``torch.cuda.mem_get_info`` and STOPs naming settings that fit: a smaller batch with gradient
accumulation (the same effective batch), 8-bit AdamW, LoRA.

Where the numbers come from (all in GB = 1e9 bytes):

- **measured** (community, stable-audio-tools issue #161, full fine-tune of SAO 1.0 with the
  engine's AdamW + EMA, mixed precision): batch 1 × 10 s → 27.6 GB; batch 4 × 47 s → "30-ish".
  Two points give :data:`FULL_BASE_GB` (27.47 GB at zero audio) and :data:`GB_PER_SAMPLE_SECOND`
  (0.0135 GB per second of audio in the batch: activations, with the engine's gradient
  checkpointing). These are the only measured figures; nobody has measured this project's runs
  on a GPU yet (``benchmarks/bench_train.py --model full`` does).
- **computed** from parameter counts (:mod:`stablebeat_utils.storage`): weights, gradients,
  AdamW moments (8 B per parameter, ~2 B with bitsandbytes' 8-bit AdamW), EMA.
- **estimated**: everything else is the measured full fine-tune minus the computed parts that a
  setting removes — LoRA keeps the frozen base (4 B per parameter) but drops its gradients, AdamW
  moments and EMA; the rest of the measured base (CUDA context, bf16 weight copies, allocator
  slack, VAE, T5: :data:`OVERHEAD_GB`) is kept as it is; 32-bit precision doubles the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from .modelspec import SAO
from .storage import SAO_LORA_PARAMS_PER_RANK, SAO_TRAINED_PARAMS

GB = 1e9
MEASURED = {"full, AdamW, batch 1 x 10 s": 27.6, "full, AdamW, batch 4 x 47 s": 30.0}  # issue #161
GB_PER_SAMPLE_SECOND = (30.0 - 27.6) / (4 * 47 - 1 * 10)  # 0.0135: the slope of the two measurements
FULL_BASE_GB = 27.6 - 10 * GB_PER_SAMPLE_SECOND  # 27.47 GB at zero audio
_FULL_STATE_GB = SAO_TRAINED_PARAMS * (4 + 4 + 8 + 4) / GB  # weights + grads + AdamW + EMA (computed)
OVERHEAD_GB = FULL_BASE_GB - _FULL_STATE_GB  # ~6.3 GB: context, bf16 copies, VAE, T5, slack (derived)
HEADROOM = 0.92  # leave 8 % of the free memory (fragmentation, demos)


class GPUMemoryError(RuntimeError):
    """The chosen setting will not fit this GPU; the message names settings that would."""


@dataclass
class Estimate:
    gb: float
    parts: dict
    basis: str  # "measured" or "estimated"


def estimate(
    mode: str = "full",
    precision: str = "bf16-mixed",
    batch_size: int = 16,
    window_seconds: float = round(SAO.window_seconds, 2),  # 47.55 s
    optimizer: str = "adamw",
    ema: bool = True,
    lora_rank: int = 16,
) -> Estimate:
    """Peak GPU memory of one training step (GB) and what it is made of."""
    p = SAO_TRAINED_PARAMS
    if mode == "lora":
        n = SAO_LORA_PARAMS_PER_RANK * lora_rank
        moments = 2 + 8 / 256 if optimizer == "adamw8bit" else 8
        state = {"base weights (frozen, fp32)": p * 4 / GB, "adapters + grads + AdamW": n * (4 + 4 + moments) / GB}
    else:
        moments = 2 + 8 / 256 if optimizer == "adamw8bit" else 8
        state = {"weights fp32": p * 4 / GB, "gradients fp32": p * 4 / GB, f"{optimizer} moments": p * moments / GB}
        if ema:
            state["EMA copy"] = p * 4 / GB
    act = GB_PER_SAMPLE_SECOND * batch_size * window_seconds * (2.0 if precision == "32-true" else 1.0)
    parts = {
        **state,
        "overhead (CUDA, bf16 copies, VAE, T5; from the measurement)": OVERHEAD_GB,
        f"activations ({batch_size} x {window_seconds:.1f} s)": act,
    }
    total = sum(parts.values())
    measured = (
        mode == "full"
        and optimizer == "adamw"
        and ema
        and precision != "32-true"
        and (batch_size, round(window_seconds)) in ((1, 10), (4, 47))
    )
    return Estimate(
        round(total, 2), {k: round(v, 2) for k, v in parts.items()}, "measured" if measured else "estimated"
    )


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
) -> list[str]:
    """Settings that fit ``budget_gb``, each keeping the effective batch ``batch_size * grad_accum``."""
    effective = batch_size * grad_accum
    # batch sizes that keep the effective batch exactly (divisors of it), largest first
    sizes = [b for b in range(batch_size, 0, -1) if effective % b == 0]

    def smaller(b):
        return f", batch_size={b}, grad_accum={effective // b}" if b < batch_size else ""

    out = []
    for b in sizes[1:] if sizes and sizes[0] == batch_size else sizes:
        if estimate(mode, precision, b, window_seconds, optimizer, ema, lora_rank).gb <= budget_gb:
            out.append(f"batch_size={b}, grad_accum={effective // b} (effective batch {effective} kept)")
            break
    if mode == "full" and optimizer != "adamw8bit":
        for b in sizes:
            if estimate(mode, precision, b, window_seconds, "adamw8bit", ema, lora_rank).gb <= budget_gb:
                out.append("optimizer='adamw8bit'" + smaller(b))
                break
    if mode == "full":
        for b in sizes:
            if estimate("lora", precision, b, window_seconds, optimizer, False, lora_rank).gb <= budget_gb:
                out.append("mode='lora' (profile colab_lora)" + smaller(b))
                break
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
) -> Estimate:
    """Raise :class:`GPUMemoryError` when the estimate exceeds the GPU's free memory (with headroom)."""
    est = estimate(mode, precision, batch_size, window_seconds, optimizer, ema, lora_rank)
    if free_bytes is None:
        return est
    budget = free_bytes / GB * HEADROOM
    if est.gb <= budget:
        return est
    fits = alternatives(mode, precision, batch_size, grad_accum, window_seconds, optimizer, ema, lora_rank, budget)
    parts = "\n".join(f"    {k}: {v:.2f} GB" for k, v in est.parts.items())
    fix = ("Settings that fit: " + "; ".join(fits) + ".") if fits else "No setting fits this GPU: use a larger one."
    total = f" of {total_bytes / GB:.1f} GB" if total_bytes else ""
    raise GPUMemoryError(
        f"STOP — 05_train needs ~{est.gb:.1f} GB of GPU memory ({est.basis}) for mode={mode!r}, "
        f"precision={precision!r}, batch_size={batch_size}, a {window_seconds:.1f} s window, optimizer={optimizer!r}"
        f"{', EMA' if ema and mode == 'full' else ''}; the GPU has {free_bytes / GB:.1f} GB free{total} "
        f"(using at most {HEADROOM:.0%}).\n{parts}\n{fix}"
    )


def gpu_free(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device, or None when not on CUDA."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(int(x) for x in torch.cuda.mem_get_info(torch.device(device)))
