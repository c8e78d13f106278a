"""GPU-memory preflight for the inference stages: 02_tag (CLAP), 04_prompts (chat LLM), 06_generate (SAO 1.0).

The companion of :mod:`stablebeat_utils.preflight` (05_train). Each stage calls its check right
before it loads its model: on CUDA the estimate is compared with ``torch.cuda.mem_get_info``
(through :func:`stablebeat_utils.preflight.gpu_free`) and the stage STOPs, naming settings that
fit, instead of running out of memory after minutes of downloading and loading. On the CPU (and
for the demo's ``tiny:*`` models) nothing is checked.

Where the numbers come from (GB = 1e9 bytes; each constant below says which it is):

- **computed from config** — parameter counts built from the model's configuration: CLAP
  (``laion/larger_clap_music``'s published config.json built on the meta device:
  193,913,882 parameters), SAO 1.0 (:mod:`stablebeat_utils.storage`, from
  ``data/sao-1.0-model_config.json``), the T5-base encoder (109,628,544, from t5-base's published
  config) and the chat LLMs (:data:`LLMS`: the published config.json of each model through
  :meth:`LLMArch.params`; a test checks them against the published totals). Weights are
  parameters × bytes (2 for bf16/fp16, 4 for fp32; bitsandbytes: 1 B for 8-bit, 0.5 B + one fp32
  scale per 64 for 4-bit NF4, the embeddings staying 16-bit).
- **measured** — read from ``data/gpu_measurements.csv`` (:func:`stablebeat_utils.preflight.load_measurements`:
  each row's GPU, date and command): CLAP's weights and its audio tower per batch of 10-s windows
  (:data:`MEASURED_CLAP`, :data:`CLAP_GB_PER_WINDOW` fitted to them), the ``generate`` of the chat
  LLMs (:data:`MEASURED_LLM`), and 06's peaks where ``benchmarks/gpu_all.py`` has measured them
  (:data:`MEASURED_GENERATE`). SAO's VAE decode per latent frame was measured on the CPU (peak
  resident memory, ``benchmarks/bench_vae_decode_memory.py``) and is scaled to CUDA with a margin.
- **estimated** — everything else, each with its formula: the LLM's KV cache (exact arithmetic)
  plus prefill activations fitted to the measured runs (0.6 % below to 3 % above each), the
  bitsandbytes weights and dequantisation buffer (4-bit/8-bit: bitsandbytes is not on the GPU we had),
  the DiT's sampling activations (per-layer tensors of a 2 × batch CFG pass), the prompt length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .modelspec import SAO
from .preflight import (
    GB,
    HEADROOM,
    T5_BASE_ENCODER_PARAMS,
    VAE_BYTES_PER_FRAME_FP32,
    Estimate,
    GPUMemoryError,
    gpu_free,
    load_measurements,
    num,
)
from .storage import SAO_TRAINED_PARAMS, SAO_VAE_PARAMS

# --------------------------------------------------------------------------------------------
# 02_tag: CLAP

#: computed from config: laion/larger_clap_music's published config.json (HTSAT-base audio tower,
#: depths 2-2-12-2, hidden 1024; RoBERTa-base text tower) built on the meta device; the GPU build
#: of benchmarks/bench_gpu_memory_llm_clap.py counted the same 193,913,882 (measured)
CLAP_PARAMS = {
    "laion/larger_clap_music": 193_913_882,
    "laion/larger_clap_music_and_speech": 193_913_882,  # same architecture (LAION-CLAP README)
    "laion/larger_clap_general": 193_913_882,
}
_CLAP_ROWS = [r for r in load_measurements(layout.TAG) if r["model"] == "laion/larger_clap_music"]
#: measured: CLAP's weights and buffers on the GPU (the ``weights`` row) less the bf16 parameters
CLAP_WEIGHTS_GB = next(num(r["peak_gb"]) for r in _CLAP_ROWS if r["mode"] == "weights")
CLAP_BUFFERS_GB = CLAP_WEIGHTS_GB - CLAP_PARAMS["laion/larger_clap_music"] * 2 / GB
#: measured: batch → peak reserved GB, weights included (bf16; every window is 10 s of input,
#: shorter ones are repeat-padded, so the window length does not change it)
MEASURED_CLAP = {int(num(r["batch"])): num(r["peak_gb"]) for r in _CLAP_ROWS if r["mode"] == "audio"}
#: fitted: the peak over the weights per 10-s window, a least-squares line through zero
CLAP_GB_PER_WINDOW = sum(b * (p - CLAP_WEIGHTS_GB) for b, p in MEASURED_CLAP.items()) / sum(
    b * b for b in MEASURED_CLAP
)
CLAP_TEXT_GB = 0.1  # estimated: the vocabulary's few hundred short texts through RoBERTa, once


def estimate_tag(clap_model: str, batch_size: int, backend: str = "transformers") -> Estimate | None:
    """Peak GPU memory of 02_tag (GB): CLAP weights + one batch of ``batch_size`` 10-s windows.

    ``None`` for a CLAP whose size is not known here (anything but the LAION larger_clap models).
    The ``transformers`` backend runs in bf16/fp16 (``models.pick_dtype``); ``laion_clap`` in fp32.
    """
    n = CLAP_PARAMS.get(clap_model)
    if n is None:
        return None
    fp32 = backend == "laion_clap"
    factor = 2.0 if fp32 else 1.0  # fp32: twice the bytes per weight and per activation (estimated)
    parts = {
        f"CLAP weights, {'fp32' if fp32 else 'bf16/fp16'} ({n / 1e6:.0f} M parameters)": n * (4 if fp32 else 2) / GB
        + CLAP_BUFFERS_GB,
        f"audio tower, {batch_size} windows of 10 s": CLAP_GB_PER_WINDOW * batch_size * factor,
        "text embeddings of the vocabulary (once)": CLAP_TEXT_GB,
    }
    measured = not fp32 and batch_size in MEASURED_CLAP
    if measured:  # the measured peak in place of the per-window line
        parts[f"audio tower, {batch_size} windows of 10 s"] = MEASURED_CLAP[batch_size] - n * 2 / GB - CLAP_BUFFERS_GB
    return _estimate(parts, measured)


def check_tag(
    device: str, clap_model: str, batch_size: int, backend: str = "transformers", error=GPUMemoryError
) -> Estimate | None:
    """02_tag's preflight: STOP (``error``) naming a ``batch_size`` that fits; None off CUDA."""
    free = gpu_free(_device(device))
    if free is None or clap_model.startswith("tiny:"):
        return None
    est = estimate_tag(clap_model, batch_size, backend)
    if est is None:
        return _unknown(layout.TAG, f"clap_model={clap_model!r}")
    budget = free[0] / GB * HEADROOM
    if est.gb <= budget:
        return _fits(layout.TAG, est, free)
    fits = tag_alternatives(clap_model, batch_size, backend, budget)
    raise error(
        _message(
            layout.TAG, est, f"clap_model={clap_model!r}, backend={backend!r}, batch_size={batch_size}", free, fits
        )
    )


def tag_alternatives(clap_model: str, batch_size: int, backend: str, budget_gb: float) -> list[dict]:
    """Settings that fit ``budget_gb``: the largest halved ``batch_size``; for ``laion_clap``, 16-bit."""
    out = [{"batch_size": b} for b in _smaller(batch_size) if estimate_tag(clap_model, b, backend).gb <= budget_gb][:1]
    if backend == "laion_clap":
        out += [
            {"backend": "transformers", "batch_size": b}
            for b in [batch_size, *_smaller(batch_size)]
            if estimate_tag(clap_model, b).gb <= budget_gb
        ][:1]
    return out


# --------------------------------------------------------------------------------------------
# 04_prompts: chat LLM (+ the T5 encoder the stage loads first)


@dataclass(frozen=True)
class LLMArch:
    """The few numbers of a Llama/Qwen-style decoder's config.json that size its memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    def params(self) -> int:
        """Computed from the config: embeddings (+ an untied lm_head), attention, SwiGLU MLP, norms."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * self.hidden * self.intermediate
        return self.embedding_params() + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden

    def embedding_params(self) -> int:
        """Parameters bitsandbytes leaves in 16 bits: the token embeddings and the lm_head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


#: published: each model's config.json on the hub (hidden, intermediate, layers, heads, KV heads,
#: head dim, vocabulary, tied embeddings); parameter counts are computed from them (LLMArch.params)
LLMS = {
    "meta-llama/Llama-3.2-1B-Instruct": LLMArch(2048, 8192, 16, 32, 8, 64, 128256, True),
    "meta-llama/Llama-3.2-3B-Instruct": LLMArch(3072, 8192, 28, 24, 8, 128, 128256, True),  # the profiles' default
    "Qwen/Qwen2.5-3B-Instruct": LLMArch(2048, 11008, 36, 16, 2, 128, 151936, True, qkv_bias=True),  # ungated alt.
    "meta-llama/Llama-3.1-8B-Instruct": LLMArch(4096, 14336, 32, 32, 8, 128, 128256, False),
    "Qwen/Qwen2.5-7B-Instruct": LLMArch(3584, 18944, 28, 28, 4, 128, 152064, False, qkv_bias=True),
}
#: published totals (model cards), checked against LLMArch.params() by the tests
PUBLISHED_LLM_PARAMS = {
    "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21e9,
    "Qwen/Qwen2.5-3B-Instruct": 3.09e9,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
}
DEFAULT_LLM = "meta-llama/Llama-3.2-3B-Instruct"
#: estimated: the stage's chat (system prompt, the card's worked example, one clip's metadata) is
#: ~845 characters; at ~4 characters per token plus the chat template's headers, ~260-300 tokens;
#: 320 leaves room for long tag lists (the longest prompt of a batch sets the padded length)
PROMPT_TOKENS = 320
#: estimated, fitted to the measurements below: prefill activations per sequence ≈ 5 tensors of
#: prompt_tokens × intermediate in 16 bit (the SwiGLU MLP of one layer), plus a fixed 0.1 GB
#: (tests/test_preflight_inference.py holds the total to 1 % below – 5 % above every measured run).
ACT_TENSORS, ACT_FIXED_GB = 5, 0.1
#: measured (random weights, generate with 96 new tokens, greedy, no early stop; data/gpu_measurements.csv):
#: (model, batch, prompt tokens) → peak reserved GB, weights included
MEASURED_LLM = {
    (r["model"], int(num(r["batch"])), int(num(r["tokens"]))): num(r["peak_gb"])
    for r in load_measurements(layout.PROMPTS)
    if r["mode"] == "generate" and num(r["peak_gb"]) and r["precision"] in ("bf16", "fp16") and num(r["steps"]) == 96
}
#: T5_BASE_ENCODER_PARAMS (computed, preflight): 04_prompts loads it in fp32 (models.load_t5_encoder)
#: before the LLM and keeps it
T5_PARAMS = {"t5-base": T5_BASE_ENCODER_PARAMS, "google-t5/t5-base": T5_BASE_ENCODER_PARAMS}


def llm_arch(llm_model: str) -> LLMArch | None:
    """The architecture of a known hub id, or read from a local folder's config.json; else None."""
    if llm_model in LLMS:
        return LLMS[llm_model]
    cfg_path = Path(llm_model).expanduser() / "config.json"
    if llm_model.startswith("tiny:") or not cfg_path.is_file():
        return None
    try:
        c = json.loads(cfg_path.read_text(encoding="utf-8"))
        heads = int(c["num_attention_heads"])
        return LLMArch(
            int(c["hidden_size"]),
            int(c["intermediate_size"]),
            int(c["num_hidden_layers"]),
            heads,
            int(c.get("num_key_value_heads") or heads),
            int(c.get("head_dim") or c["hidden_size"] // heads),
            int(c["vocab_size"]),
            bool(c.get("tie_word_embeddings", False)),
            bool(c.get("attention_bias", False)) or c.get("model_type") == "qwen2",
        )
    except (ValueError, KeyError, TypeError):
        return None


def llm_weight_gb(arch: LLMArch, quantization: str = "") -> float:
    """Weights on the GPU: 16-bit, or bitsandbytes 8-bit / 4-bit NF4 with 16-bit embeddings (computed)."""
    n, emb = arch.params(), arch.embedding_params()
    per = {"": 2.0, "8bit": 1.0, "4bit": 0.5 + 4 / 64}[quantization]
    return ((n - emb) * per + emb * 2) / GB


def estimate_prompts(
    llm_model: str,
    quantization: str = "",
    batch_size: int = 8,
    generation_length: int = 96,
    t5_model: str = "t5-base",
    use_llm: bool = True,
    prompt_tokens: int = PROMPT_TOKENS,
    use_measurements: bool = True,
) -> Estimate | None:
    """Peak GPU memory of 04_prompts (GB): T5 encoder + LLM weights + KV cache + prefill activations.

    Where the LLM's run was measured (:data:`MEASURED_LLM`) its peak replaces the KV + activation
    arithmetic (``use_measurements=False``: the formula alone, to compare the two)."""
    t5 = T5_PARAMS.get(t5_model, 0)
    parts = {f"T5 encoder {t5_model}, fp32 (loaded first, kept)": t5 * 4 / GB} if t5 else {}
    if not use_llm:
        return _estimate(parts or {"T5 encoder": 0.0}, False)
    arch = llm_arch(llm_model)
    if arch is None:
        return None
    tokens = prompt_tokens + generation_length
    label = {"": "bf16/fp16", "8bit": "8-bit", "4bit": "4-bit NF4"}[quantization]
    parts[f"LLM weights, {label} ({arch.params() / 1e9:.2f} B parameters)"] = llm_weight_gb(arch, quantization)
    parts[f"KV cache, {batch_size} x {tokens} tokens"] = batch_size * tokens * arch.kv_bytes_per_token() / GB
    act = batch_size * ACT_TENSORS * prompt_tokens * arch.intermediate * 2 / GB + ACT_FIXED_GB
    if quantization:  # estimated: one quantized matrix dequantised to 16 bit at a time
        act += arch.hidden * arch.intermediate * 2 / GB
    parts["prefill activations, logits"] = act
    key = (llm_model, batch_size, prompt_tokens)
    measured = use_measurements and key in MEASURED_LLM and not quantization and generation_length == 96
    if measured:  # the measured peak in place of the KV + activation arithmetic
        w = parts[f"LLM weights, {label} ({arch.params() / 1e9:.2f} B parameters)"]
        rest = MEASURED_LLM[key] - w
        kv_key = f"KV cache, {batch_size} x {tokens} tokens"
        kv = parts[kv_key]
        parts["prefill activations, logits"] = max(rest - kv, 0.0)
    return _estimate(parts, measured)


def check_prompts(
    device: str,
    llm_model: str,
    quantization: str = "",
    batch_size: int = 8,
    generation_length: int = 96,
    t5_model: str = "t5-base",
    use_llm: bool = True,
    error=GPUMemoryError,
) -> Estimate | None:
    """04_prompts' preflight: STOP (``error``) naming a quantization, batch or smaller LLM that fits."""
    free = gpu_free(_device(device))
    if free is None or not use_llm or llm_model.startswith("tiny:"):
        return None
    est = estimate_prompts(llm_model, quantization, batch_size, generation_length, t5_model)
    if est is None:
        return _unknown(layout.PROMPTS, f"llm_model={llm_model!r}")
    budget = free[0] / GB * HEADROOM
    if est.gb <= budget:
        return _fits(layout.PROMPTS, est, free)
    fits = prompts_alternatives(llm_model, quantization, batch_size, generation_length, t5_model, budget)
    what = f"llm_model={llm_model!r}, quantization={quantization!r}, batch_size={batch_size}, "
    what += f"{PROMPT_TOKENS} + {generation_length} tokens"
    raise error(_message(layout.PROMPTS, est, what, free, fits))


def prompts_alternatives(
    llm_model: str, quantization: str, batch_size: int, generation_length: int, t5_model: str, budget_gb: float
) -> list[dict]:
    """Settings that fit ``budget_gb`` (each a dict of the parameters to change): a smaller batch,
    a lighter quantization, a smaller LLM (the profiles' default first), else no LLM at all."""

    def gb(model, q, b):
        return estimate_prompts(model, q, b, generation_length, t5_model).gb

    out = []
    for b in _smaller(batch_size):
        if gb(llm_model, quantization, b) <= budget_gb:
            out.append({"batch_size": b})
            break
    order = ["", "8bit", "4bit"]
    for q in order[order.index(quantization) + 1 :]:  # 8-bit and 4-bit (Colab's T4/L4 profile uses 4-bit)
        b = next((b for b in [batch_size, *_smaller(batch_size)] if gb(llm_model, q, b) <= budget_gb), None)
        if b is not None:
            out.append({"quantization": q} | ({"batch_size": b} if b != batch_size else {}))
    arch = llm_arch(llm_model)
    smaller = sorted((m for m in LLMS if LLMS[m].params() < arch.params()), key=lambda m: -LLMS[m].params())
    smaller.sort(key=lambda m: m != DEFAULT_LLM)  # the profiles' default first when it is smaller
    for model in smaller:
        q = next((q for q in order if gb(model, q, batch_size) <= budget_gb), None)
        if q is not None:
            out.append({"llm_model": model, "quantization": q})
            break
    if not out:
        out.append({"use_llm": False})
    return out


# --------------------------------------------------------------------------------------------
# 06_generate: Stable Audio Open 1.0 (DiT + T5 + VAE)

SAO_SAMPLE_RATE, SAO_DOWNSAMPLING, SAO_WINDOW_FRAMES = SAO.sample_rate, SAO.downsampling_ratio, SAO.window_frames
DECODE_CONTEXT_LATENTS = 32  # generate.decode: latent frames decoded past the cut
#: measured on the CPU (benchmarks/bench_vae_decode_memory.py, MALLOC_MMAP_THRESHOLD_=65536 so the
#: resident memory follows the live tensors): SAO's VAE decode peaks at 4.81 MB per latent frame
#: per batch item in fp32 (4.92 / 4.84 / 4.81 / 4.80 MB at 32 / 64 / 128 / 256 frames: linear),
#: i.e. ~4.6 tensors of the decoder's last stage (2,048 samples x 128 channels per frame). The CPU's
#: bf16 run peaks at 3.5 MB per frame (its kernels keep fp32 temporaries), not used for CUDA.
#: benchmarks/bench_gpu_memory_sao.py measures it on a GPU: replace these two figures with its.
DECODE_BYTES_PER_FRAME_FP32 = VAE_BYTES_PER_FRAME_FP32  # 4.81 MB (preflight: 05 takes it for the encoder)
#: estimated: 16-bit halves it (the decoder's tensors are all in the model's dtype); on CUDA the
#: caching allocator's block rounding and cuDNN's convolution workspaces add to the CPU figure:
#: 25 % is budgeted, until MEASURED_GENERATE holds the GPU's own figure
DECODE_CUDA_MARGIN = 1.25
#: estimated: one DiT block's tensors of the CFG pass (2 x batch sequences of ~1,100 tokens: 1,024
#: latent frames + conditioning), ~27,600 values per token (QKV, attention out, the GLU feed-forward
#: 1536 → 2 x 6144 → 1536, norms)
DIT_VALUES_PER_TOKEN, DIT_TOKENS = 27_600, 1_100
SAO_T5_FP16_GB = T5_BASE_ENCODER_PARAMS * 2 / GB  # the conditioner keeps T5-base in fp16 (computed)
#: measured where benchmarks/gpu_all.py ran (data/gpu_measurements.csv, 06_generate rows of the
#: course's own ``generate_audio`` + decode): (batch, seconds, "16-bit"/"float32") → peak reserved GB
MEASURED_GENERATE = {
    (int(num(r["batch"])), round(num(r["seconds"]), 1), "float32" if r["precision"] == "float32" else "16-bit"): num(
        r["peak_gb"]
    )
    for r in load_measurements(layout.GENERATE)
    if r["mode"] == "course" and num(r["peak_gb"]) and r["peak_kind"] == "reserved"
}


def decode_frames(seconds_total: float) -> int:
    """Latent frames 06_generate decodes for ``seconds_total`` (generate.decode: the cut + context)."""
    need = math.ceil(seconds_total * SAO_SAMPLE_RATE / SAO_DOWNSAMPLING) + DECODE_CONTEXT_LATENTS
    return min(SAO_WINDOW_FRAMES, need)


def estimate_generate(batch_size: int = 1, seconds_total: float = 47.0, dtype: str = "16-bit") -> Estimate:
    """Peak GPU memory of 06_generate with SAO 1.0 (GB): the larger of loading and of generating.

    Loading: ``models.load_sao`` moves the fp32 model to the GPU and then casts it, so the fp32
    DiT + VAE (4.85 GB) is on the GPU once. Generating: weights in ``dtype`` + T5 (fp16) + the
    larger of the sampler's DiT pass and the VAE decode of ``batch_size`` clips of
    ``seconds_total`` — the decode, for any clip longer than a second or two. ``dtype``:
    ``"float32"`` or anything 16-bit (``"16-bit"``, ``"bfloat16"``, ``"float16"``: the same bytes).
    """
    b = 4 if dtype == "float32" else 2
    weights = (SAO_TRAINED_PARAMS + SAO_VAE_PARAMS) * b / GB
    load_peak = (SAO_TRAINED_PARAMS + SAO_VAE_PARAMS) * 4 / GB
    frames = decode_frames(seconds_total)
    decode = batch_size * frames * DECODE_BYTES_PER_FRAME_FP32 * (b / 4) * DECODE_CUDA_MARGIN / GB
    sampling = 2 * batch_size * DIT_TOKENS * DIT_VALUES_PER_TOKEN * b / GB
    parts = {
        f"DiT + VAE weights, {dtype}": weights,
        "T5-base encoder, fp16": SAO_T5_FP16_GB,
        f"VAE decode, {batch_size} x {seconds_total:g} s ({frames} latent frames)": decode,
    }
    if sampling > decode:
        parts.pop(next(k for k in parts if k.startswith("VAE decode")))
        parts[f"DiT sampling, CFG pass of 2 x {batch_size}"] = sampling
    measured = MEASURED_GENERATE.get((batch_size, round(seconds_total, 1), "float32" if b == 4 else "16-bit"))
    if measured is not None:  # the measured peak in place of the sampling/decode arithmetic
        parts = {k: v for k, v in parts.items() if not k.startswith(("VAE decode", "DiT sampling"))}
        parts[f"sampling + decode, {batch_size} x {seconds_total:g} s (measured peak less the weights)"] = max(
            measured - sum(parts.values()), 0.0
        )
    total = sum(parts.values())
    if load_peak > total:  # loading is the peak (tiny batches in fp16/bf16 never are, but say so)
        parts = {"loading: the fp32 DiT + VAE before the cast": load_peak}
    return _estimate(parts, measured is not None)


def check_generate(
    device: str,
    dtype: str,
    base_model: str,
    batch_size: int,
    seconds_total: float,
    error=GPUMemoryError,
) -> Estimate | None:
    """06_generate's preflight: STOP (``error``) naming a ``batch_size`` (or dtype, or length) that fits.

    ``dtype``: the stage's parameter ('auto' = bf16/fp16 on a GPU). ``batch_size`` 0 (nothing to
    generate) checks nothing. Only SAO 1.0-sized models are estimated (the hub id or a local
    folder whose model_config.json has SAO 1.0's DiT width and depth); tiny models are not checked.
    """
    if batch_size < 1 or str(base_model).startswith("tiny:") or not _is_sao_1(base_model):
        return None
    free = gpu_free(_device(device))
    if free is None:
        return None
    name = "16-bit" if dtype in (None, "", "auto") else str(dtype).replace("torch.", "")
    est = estimate_generate(batch_size, seconds_total, name)
    budget = free[0] / GB * HEADROOM
    if est.gb <= budget:
        return _fits(layout.GENERATE, est, free)
    fits = generate_alternatives(batch_size, seconds_total, name, budget)
    what = f"base_model={base_model!r}, dtype={dtype!r}, batch_size={batch_size}, seconds_total={seconds_total:g}"
    raise error(_message(layout.GENERATE, est, what, free, fits))


def generate_alternatives(batch_size: int, seconds_total: float, dtype: str, budget_gb: float) -> list[dict]:
    """Settings that fit ``budget_gb`` (dicts of the parameters to change): the largest smaller
    batch; in fp32, 16-bit; when not even one clip fits, a shorter clip."""
    out = []
    for b in _smaller(batch_size, every=True):
        if estimate_generate(b, seconds_total, dtype).gb <= budget_gb:
            out.append({"batch_size": b})
            break
    if dtype == "float32":
        b = next((b for b in range(batch_size, 0, -1) if estimate_generate(b, seconds_total).gb <= budget_gb), None)
        if b is not None:
            out.append({"dtype": "auto", "batch_size": b})
    if not out:
        s = next((s for s in range(int(seconds_total) - 1, 0, -1) if estimate_generate(1, s, dtype).gb <= budget_gb), 0)
        if s:
            out.append({"batch_size": 1, "seconds_total": s})
    return out


def _is_sao_1(source: str) -> bool:
    """The hub's SAO 1.0, or a local folder (an export of 05) with its DiT width (1536)."""
    cfg = Path(str(source)).expanduser() / layout.MODEL_CONFIG
    if not cfg.is_file():
        return "stable-audio-open-1.0" in str(source)
    try:
        dit = json.loads(cfg.read_text(encoding="utf-8"))["model"]["diffusion"]["config"]
        return int(dit.get("embed_dim", 0)) == 1536 and int(dit.get("depth", 0)) == 24
    except (ValueError, KeyError, TypeError):
        return False


# --------------------------------------------------------------------------------------------
# shared


def _device(device: str) -> str:
    """The stage's ``device`` parameter resolved as the stage will (``"auto"`` → ``"cuda"`` on a GPU).

    An explicit device is returned as is: :func:`gpu_free` answers None for anything but a visible
    CUDA device, and the stage's own loading reports a wrong name."""
    if device not in (None, "", "auto"):
        return str(device)
    from . import models

    return models.pick_device(device)


def _estimate(parts: dict, measured: bool) -> Estimate:
    total = sum(parts.values())
    return Estimate(
        round(total, 2), {k: round(v, 2) for k, v in parts.items()}, "measured" if measured else "estimated"
    )


def _smaller(n: int, every: bool = False) -> list[int]:
    """Batch sizes below ``n``, largest first: every one (06, small batches) or halvings (02/04)."""
    if every:
        return list(range(n - 1, 0, -1))
    out, b = [], n
    while b > 1:
        b //= 2
        out.append(b)
    return out


def _fits(stage: str, est: Estimate, free) -> Estimate:
    print(f"{stage}: GPU preflight: ~{est.gb:.1f} GB ({est.basis}) of {free[0] / GB:.1f} GB free")
    return est


def _unknown(stage: str, what: str) -> None:
    print(f"{stage}: GPU preflight: no memory figures for {what}; not checked")
    return None


NOTES = {
    ("quantization", "8bit"): " (bitsandbytes)",
    ("quantization", "4bit"): " (bitsandbytes)",
    ("use_llm", False): " (template prompts, no LLM)",
    ("dtype", "auto"): " (bf16/fp16)",
}


def setting_text(setting: dict) -> str:
    """``{"quantization": "4bit"}`` → ``quantization='4bit' (bitsandbytes)``: how a STOP names a setting."""
    return ", ".join(f"{k}={v!r}{NOTES.get((k, v), '')}" for k, v in setting.items())


def _message(stage: str, est: Estimate, what: str, free, fits: list[dict]) -> str:
    parts = "\n".join(f"    {k}: {v:.2f} GB" for k, v in est.parts.items())
    named = "; ".join(setting_text(f) for f in fits)
    fix = f"Settings that fit: {named}." if fits else "No setting fits this GPU: use a larger one."
    total = f" of {free[1] / GB:.1f} GB" if len(free) > 1 and free[1] else ""
    return (
        f"STOP — {stage} needs ~{est.gb:.1f} GB of GPU memory ({est.basis}) for {what}; the GPU has "
        f"{free[0] / GB:.1f} GB free{total} (using at most {HEADROOM:.0%}).\n{parts}\n{fix}"
    )
