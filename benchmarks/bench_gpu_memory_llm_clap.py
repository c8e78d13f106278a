"""04_prompts' and 02_tag's GPU memory, measured: the LLMs' generate and CLAP's audio tower on CUDA.

Random weights with the published architectures (no hub), bf16: Llama-3.2-1B/3B-Instruct,
Llama-3.1-8B-Instruct and Qwen2.5-3B/7B-Instruct run ``generate`` on batches of 192-512 prompt
tokens + 96 new tokens (greedy, no early stop); laion/larger_clap_music embeds batches of 10-s
mel inputs. Each
phase's ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` goes to ``$OUT/gpu.json``.
Needs torch + transformers and this repo's models.py (no engine), so it was sent to the lent GPU as it stands (in two runs) (2026-11-26, an
H100 80GB, torch 2.11.0+cu130, transformers 5.17.0); the figures are in
``stablebeat_utils/preflight_inference.py`` (MEASURED_LLM, MEASURED_CLAP) and docs/benchmarks.md.

    OUT=/tmp python benchmarks/bench_gpu_memory_llm_clap.py
"""

import json
import os
import sys
from pathlib import Path

import torch as T
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stablebeat_utils import models  # noqa: E402  (the repo travels with the run; models imports no torch)

R = []
G = 1e9
d = "cuda"
C = T.cuda


def rec(**k):
    k.update(pa=round(C.max_memory_allocated() / G, 3), pr=round(C.max_memory_reserved() / G, 3))
    R.append(k)
    print(json.dumps(k), flush=True)
    json.dump(R, open(os.environ["OUT"] + "/gpu.json", "w"), indent=1)


def z():
    C.synchronize()
    C.empty_cache()
    C.reset_peak_memory_stats()


def n(m):
    return sum(p.numel() for p in m.parameters())


T.set_default_dtype(T.bfloat16)
for nm, h, i, l, a, t, bs in (("l3b", 3072, 8192, 28, 24, 1, (8, 16, 32)), ("l8b", 4096, 14336, 32, 32, 0, (8, 16))):
    z()
    with T.device(d):
        m = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                vocab_size=128256,
                head_dim=128,
                num_key_value_heads=8,
                hidden_size=h,
                intermediate_size=i,
                num_hidden_layers=l,
                num_attention_heads=a,
                tie_word_embeddings=bool(t),
            )
        ).eval()
    w = round(C.memory_allocated() / G, 3)
    rec(m=nm, ph="w", n=n(m), w=w)
    for b in bs:
        z()
        x = T.randint(5, 128000, (b, 320), device=d)
        with T.inference_mode():
            m.generate(
                input_ids=x,
                attention_mask=T.ones_like(x),
                max_new_tokens=96,
                min_new_tokens=96,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        rec(m=nm, ph="gen", b=b, w=w)
    del m
A, X = models.LARGER_CLAP_AUDIO, models.LARGER_CLAP_TEXT
z()
with T.device(d):
    m = tf.ClapModel(tf.ClapConfig(text_config=X, audio_config=A, projection_dim=512)).eval()
w = round(C.memory_allocated() / G, 3)
rec(m="clap", ph="w", n=n(m), w=w)
for b in (16, 32, 64, 128):
    z()
    with T.inference_mode():
        m.get_audio_features(
            input_features=T.randn(b, 1, 1001, 64, device=d), is_longer=T.zeros(b, 1, dtype=T.bool, device=d)
        )
    rec(m="clap", ph="emb", b=b, w=w)
del m
# second run (a separate process then, the same day and machine): more LLMs, and the prompt length
T.set_default_dtype(T.bfloat16)
M = [
    (
        "q3b",
        tf.Qwen2ForCausalLM,
        tf.Qwen2Config,
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        ((8, 320), (16, 320)),
    ),
    (
        "l1b",
        tf.LlamaForCausalLM,
        tf.LlamaConfig,
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
        ((16, 320),),
    ),
    (
        "l3b",
        tf.LlamaForCausalLM,
        tf.LlamaConfig,
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
        ((16, 192), (16, 512)),
    ),
    (
        "q7b",
        tf.Qwen2ForCausalLM,
        tf.Qwen2Config,
        dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        ),
        ((16, 320),),
    ),
]
for nm, K, Cf, kw, runs in M:
    z()
    with T.device(d):
        m = K(Cf(**kw)).eval()
    w = round(C.memory_allocated() / G, 3)
    rec(m=nm, ph="w", n=n(m), w=w)
    for b, p in runs:
        z()
        x = T.randint(5, 120000, (b, p), device=d)
        with T.inference_mode():
            m.generate(
                input_ids=x,
                attention_mask=T.ones_like(x),
                max_new_tokens=96,
                min_new_tokens=96,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        rec(m=nm, ph="gen", b=b, p=p, w=w)
    del m
print(C.get_device_name(), tf.__version__, T.__version__)
