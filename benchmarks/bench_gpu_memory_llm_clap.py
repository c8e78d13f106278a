"""04_prompts' and 02_tag's GPU memory, measured: the LLMs' generate and CLAP's audio tower on CUDA.

Random weights with the published architectures (no hub), bf16: Llama-3.2-1B/3B-Instruct,
Llama-3.1-8B-Instruct and Qwen2.5-3B/7B-Instruct run ``generate`` on batches of 192-512 prompt
tokens + 96 new tokens (greedy, no early stop); laion/larger_clap_music embeds batches of 10-s
mel inputs. Each phase's ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` goes to
``$OUT/gpu.json``. Needs torch + transformers and this repo's models.py (no engine), so it was
sent to the lent GPU as it stands (in two runs) (2026-11-26, an H100 80GB, torch 2.11.0+cu130,
transformers 5.17.0); the figures are rows of ``stablebeat_utils/data/gpu_measurements.csv``
(read by ``stablebeat_utils/preflight_inference.py``) and docs/benchmarks.md.

    OUT=/tmp python benchmarks/bench_gpu_memory_llm_clap.py

The pieces (:func:`build_llm`, :func:`generate`, :func:`build_clap`, :func:`clap_embed`) are also
what ``benchmarks/gpu_all.py`` times.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stablebeat_utils import models  # noqa: E402  (the repo travels with the run; models imports no torch)

G = 1e9
#: (transformers class, config class, published config) of the chat LLMs measured
LLMS = {
    "l1b": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            tie_word_embeddings=True,
        ),
    ),
    "l3b": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
    "l8b": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=False,
        ),
    ),
    "q3b": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
    "q7b": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        ),
    ),
    # a CPU check of the code path (benchmarks/gpu_all.py --smoke)
    "tiny": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
        ),
    ),
}
HUB_IDS = {
    "l1b": "meta-llama/Llama-3.2-1B-Instruct",
    "l3b": "meta-llama/Llama-3.2-3B-Instruct",
    "l8b": "meta-llama/Llama-3.1-8B-Instruct",
    "q3b": "Qwen/Qwen2.5-3B-Instruct",
    "q7b": "Qwen/Qwen2.5-7B-Instruct",
    "tiny": "tiny llama (CPU check)",
}


def reset(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peaks(device: str) -> dict:
    """Peak allocated / reserved GB since the last :func:`reset` (None off CUDA)."""
    import torch

    if not str(device).startswith("cuda"):
        return {"pa": None, "pr": None}
    torch.cuda.synchronize()
    return {"pa": round(torch.cuda.max_memory_allocated() / G, 3), "pr": round(torch.cuda.max_memory_reserved() / G, 3)}


def _build(factory, device: str, dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return factory().eval()
    finally:
        torch.set_default_dtype(old)


def build_llm(name: str, device: str = "cuda", dtype=None):
    """A chat LLM of :data:`LLMS` with random weights, built on ``device`` in ``dtype`` (bf16)."""
    import torch
    import transformers as tf

    cls, cfg, kw = LLMS[name]
    return _build(lambda: getattr(tf, cls)(getattr(tf, cfg)(**kw)), device, dtype or torch.bfloat16)


def generate(model, batch: int, prompt_tokens: int = 320, new_tokens: int = 96, device: str = "cuda") -> dict:
    """One greedy ``generate`` of ``new_tokens`` for ``batch`` random prompts: seconds and peaks."""
    import torch

    reset(device)
    vocab = model.config.vocab_size
    x = torch.randint(5, vocab - 1, (batch, prompt_tokens), device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, **peaks(device)}


def build_clap(device: str = "cuda", dtype=None, audio=None, text=None):
    """laion/larger_clap_music's architecture (models.LARGER_CLAP_AUDIO/TEXT), random weights."""
    import torch
    import transformers as tf

    cfg = tf.ClapConfig(
        text_config=text or models.LARGER_CLAP_TEXT, audio_config=audio or models.LARGER_CLAP_AUDIO, projection_dim=512
    )
    return _build(lambda: tf.ClapModel(cfg), device, dtype or torch.bfloat16)


def clap_embed(model, batch: int, device: str = "cuda") -> dict:
    """Audio embeddings of ``batch`` 10-s mel windows (1001 frames x the tower's mel bins): seconds, peaks."""
    import torch

    reset(device)
    mels = model.config.audio_config.num_mel_bins
    x = torch.randn(batch, 1, 1001, mels, device=device, dtype=next(model.parameters()).dtype)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.get_audio_features(input_features=x, is_longer=torch.zeros(batch, 1, dtype=torch.bool, device=device))
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, **peaks(device)}


def main() -> int:
    """The two H100 runs of 2026-11-26, as they were run."""
    import torch
    import transformers as tf

    out, rows = os.environ["OUT"], []

    def rec(**k):
        rows.append(k)
        print(json.dumps(k), flush=True)
        json.dump(rows, open(out + "/gpu.json", "w"), indent=1)

    runs = (("l3b", ((8, 320), (16, 320), (32, 320))), ("l8b", ((8, 320), (16, 320))))
    runs += (("q3b", ((8, 320), (16, 320))), ("l1b", ((16, 320),)), ("l3b", ((16, 192), (16, 512))))
    runs += (("q7b", ((16, 320),)),)
    for name, sizes in runs:
        reset("cuda")
        m = build_llm(name)
        w = round(torch.cuda.memory_allocated() / G, 3)
        rec(m=name, ph="w", n=sum(p.numel() for p in m.parameters()), w=w)
        for b, p in sizes:
            rec(m=name, ph="gen", b=b, p=p, w=w, **{k: v for k, v in generate(m, b, p).items() if k != "seconds"})
        del m
    reset("cuda")
    m = build_clap()
    w = round(torch.cuda.memory_allocated() / G, 3)
    rec(m="clap", ph="w", n=sum(p.numel() for p in m.parameters()), w=w)
    for b in (16, 32, 64, 128):
        rec(m="clap", ph="emb", b=b, w=w, **{k: v for k, v in clap_embed(m, b).items() if k != "seconds"})
    print(torch.cuda.get_device_name(), tf.__version__, torch.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
