"""The phases of ``benchmarks/gpu_all.py`` (each runs in its own process; see that file).

Each phase reuses the benchmark that already measures its stage (``bench_train``, ``bench_tag``,
``bench_gpu_memory_sao``, ``bench_gpu_memory_llm_clap``) and reports through ``ctx.emit``: a row
of ``stablebeat_utils/data/gpu_measurements.csv`` per measured point, raw results beside it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

SAO = "sao-1.0 architecture, random weights"
GIB = 2**30 / 1e9  # train.run's summary reports GiB


# --------------------------------------------------------------------------------------------
# env


def phase_env(ctx) -> None:
    import importlib.metadata as md
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("transformers", "pytorch-lightning", "stable-audio-tools", "numpy"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed as a distribution"
    import stable_audio_tools

    info["stable_audio_tools_path"] = str(Path(stable_audio_tools.__file__).parent)
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": ctx.gpu,
            "capability": f"{p.major}.{p.minor}",
            "memory_gb": round(p.total_memory / 1e9, 1),
            "free_gb": round(torch.cuda.mem_get_info()[0] / 1e9, 1),
            "bf16": torch.cuda.is_bf16_supported(),
            "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
            "sdpa_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "sdpa_cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        }
    try:
        import flash_attn  # noqa: F401

        info["flash_attn package"] = True
    except ImportError:
        info["flash_attn package"] = False  # the engine then uses torch's scaled_dot_product_attention
    ctx.emit(env=info)


# --------------------------------------------------------------------------------------------
# 05_train


def _train(
    ctx, variants: list[str], batches: list[int], precision: str = "auto", steps: int = 3, warmup: int = 1, workers=0
):
    import bench_train

    for batch in batches[:1] if ctx.smoke else batches:
        if ctx.smoke:
            argv = ["--model", "tiny", "--device", "cpu", "--batch-size", "2", "--seconds", "1", "--clips", "4"]
            argv += ["--clip-seconds", "2", "--steps", str(min(steps, 2)), "--warmup", "1"]
        else:
            argv = ["--model", "full", "--device", "cuda", "--batch-size", str(batch), "--seconds", "0"]
            argv += ["--clips", str(2 * batch), "--clip-seconds", "30", "--steps", str(steps), "--warmup", str(warmup)]
            argv += ["--workers", str(workers)]  # 0 for latents: the path the H200 ran on 2026-11-26
        argv += ["--variants", *variants, "--scratch", str(ctx.scratch / "train"), "--cleanup"]
        argv += ["--precision", precision if not ctx.smoke or precision != "16-mixed" else "32-true"]
        for r in bench_train.measure(bench_train.parser().parse_args(argv)):
            mode, data = r["variant"].split("-")
            peak = round(r["peak_gpu_gb"] * GIB, 2) if r["peak_gpu_gb"] is not None else ""
            ctx.emit(
                {
                    "stage": "05_train",
                    "model": SAO if not ctx.smoke else "tiny:sao (CPU smoke)",
                    "mode": mode,
                    "input": "latents" if data == "latent" else "raw",
                    "precision": r["precision"],
                    "optimizer": "adamw",
                    "ema": str(mode == "full").lower(),
                    "lora_rank": 16 if mode == "lora" else "",
                    "text_encoder": "tiny:t5",
                    "batch": r["batch_size"],
                    "seconds": round(r["window_s"], 2),
                    "steps": r["timed_steps"],
                    "s_per_step": r["median_step_s"],
                    "peak_gb": peak,
                    "peak_kind": "allocated" if peak != "" else "",
                    "source": f"bench_train.measure, 30-s clips padded, {r['finite_losses']}/{r['losses']} "
                    f"finite losses, last {r['last_loss']}; stage wall {r['stage_wall_s']} s",
                },
                result=r,
            )


def phase_train(ctx) -> None:
    _train(ctx, ["lora-latent", "full-latent"], [4, 8])


def phase_raw(ctx) -> None:
    _train(ctx, ["lora-raw", "full-raw"], [4], workers=4)  # decoding 30-s WAVs: loader processes


def phase_t4(ctx) -> None:
    """16-mixed LoRA at full size, >= 50 steps: h26's bench_t4_numerics.main where it exists."""
    import importlib.util
    import inspect

    here = Path(__file__).resolve().parent / "bench_t4_numerics.py"
    if here.is_file() and not ctx.smoke:
        spec = importlib.util.spec_from_file_location("bench_t4_numerics", here)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t = time.perf_counter()
        rc = mod.main([]) if inspect.signature(mod.main).parameters else mod.main()
        ctx.emit(t4_numerics={"script": "benchmarks/bench_t4_numerics.py", "rc": rc, "s": time.perf_counter() - t})
        return
    _train(ctx, ["lora-latent"], [4], precision="16-mixed", steps=50, warmup=2)


# --------------------------------------------------------------------------------------------
# 06_generate


def _sao(ctx):
    """The full-size SAO 1.0 network (tiny in smoke), fp32 on the CPU, its config, the card's prompt."""
    import json

    import bench_gpu_memory_sao

    from stablebeat_utils import models

    tiny = ctx.smoke
    cfg = json.loads((models.TINY_DATA / "sao_model_config.json").read_text()) if tiny else models.sao_full_config()
    t5 = bench_gpu_memory_sao.t5_base_shaped(ctx.scratch / "t5-base-shaped", tiny)
    model = models.create_sao_model(cfg, t5_source=str(t5)).eval().requires_grad_(False)
    return model, cfg


class Timer:
    """Wall seconds of a call (device synchronised) and its per-step seconds from the sampler's callback."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __call__(self, fn):
        import torch

        marks = []
        sync = torch.cuda.synchronize if self.ctx.device == "cuda" else (lambda: None)
        self.ctx.reset()
        sync()
        t = time.perf_counter()
        fn(lambda _info: marks.append(time.perf_counter()))
        sync()
        took = time.perf_counter() - t
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None
        return {"s": round(took, 3), "s_per_step": round(per_step, 5) if per_step else None, **self.ctx.peaks()}


def _course(model, cfg, batch, steps, seconds, ctx):
    from stablebeat_utils import generate as gen

    settings = gen.Settings(steps=steps, seconds_total=seconds)
    prompt = gen.card_prompts()[0]
    return lambda cb: gen.generate_audio(model, cfg, [prompt] * batch, 42, settings, ctx.device, callback=cb)


def _engine(model, cfg, batch, steps, seconds, ctx):
    """The engine's own call as its README shows it (it decodes the whole window), audio to the host."""
    import torch
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    from stablebeat_utils import generate as gen

    s = gen.Settings(steps=steps, seconds_total=seconds)
    cond = [{"prompt": gen.card_prompts()[0], "seconds_start": 0.0, "seconds_total": seconds}] * batch

    def run(cb):
        with torch.inference_mode():
            audio = generate_diffusion_cond(
                model,
                steps=steps,
                cfg_scale=s.cfg_scale,
                conditioning=cond,
                batch_size=batch,
                sample_size=int(cfg["sample_size"]),
                seed=42,
                device=ctx.device,
                sampler_type=s.sampler_type,
                sigma_min=s.sigma_min,
                sigma_max=s.sigma_max,
                apg_scale=s.apg_scale,
                callback=cb,
            )
            return audio.float().cpu()

    return run


def _row06(ctx, mode, dtype, batch, steps, seconds, m, note=""):
    return {
        "stage": "06_generate",
        "model": SAO if not ctx.smoke else "tiny:sao (CPU smoke)",
        "mode": mode,
        "input": "",
        "precision": dtype,
        "text_encoder": "t5-base shape, random",
        "batch": batch,
        "seconds": seconds,
        "steps": steps,
        "s_per_step": m["s_per_step"],
        "rate": round(batch / m["s"], 4),
        "rate_unit": "clips/s",
        "peak_gb": m["pr"] if m["pr"] is not None else "",
        "peak_kind": "reserved" if m["pr"] is not None else "",
        "source": f"{m['s'] / batch:.2f} s per clip; allocated {m['pa']} GB; dpmpp-3m-sde, CFG 7{note}",
    }


def attention_kernels(fn, ctx) -> list[str]:
    """The attention kernels the profiler sees in a short call (names of CUDA kernels)."""
    from torch.profiler import ProfilerActivity, profile

    if ctx.device != "cuda":
        return ["(CPU: no CUDA kernels)"]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(None)
    keys = ("flash", "fmha", "attention", "attn", "efficient", "cudnn", "sdpa", "softmax")
    names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)}
    return sorted(names)[:8]


def phase_generate(ctx) -> None:
    import torch

    model, cfg = _sao(ctx)
    model = model.to(ctx.device)
    steps, seconds, batches = (3, 4.0, [1]) if ctx.smoke else (200, 47.0, [1, 4])
    dtypes = [torch.float32] if ctx.smoke else [torch.bfloat16, torch.float16]
    timer = Timer(ctx)
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        model = model.to(dtype)  # fp16 from the bf16 copy: the values change a little, the work does not
        timer(_course(model, cfg, 1, 5 if not ctx.smoke else 2, seconds, ctx))  # warm-up: kernels, allocator
        kernels = attention_kernels(_course(model, cfg, 1, 2, seconds, ctx), ctx)
        ctx.emit(attention={"dtype": name, "kernels": kernels})
        for batch in batches:
            m = timer(_course(model, cfg, batch, steps, seconds, ctx))
            ctx.emit(_row06(ctx, "course", name, batch, steps, seconds, m, f"; attention: {', '.join(kernels)[:80]}"))
            if dtype != torch.float16 or batch == 1:
                e = timer(_engine(model, cfg, batch, steps, seconds, ctx))
                ctx.emit(
                    _row06(ctx, "engine", name, batch, steps, seconds, e, "; the engine's generate_diffusion_cond")
                )
                ctx.emit(course_over_engine={"dtype": name, "batch": batch, "ratio": round(m["s"] / e["s"], 4)})
        if dtype == dtypes[0]:
            _backends(ctx, model, cfg, name, seconds, timer)


def _backends(ctx, model, cfg, name, seconds, timer) -> None:
    """Batch 1, 50 steps under each SDPA backend alone (one that cannot run says why)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    steps = 2 if ctx.smoke else 50
    backends = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
    for backend in backends[::3] if ctx.smoke else backends:  # smoke: one that fails on a CPU, one that runs
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                m = timer(_course(model, cfg, 1, steps, seconds, ctx))
            ctx.emit(_row06(ctx, f"course, sdpa {backend.lower()}", name, 1, steps, seconds, m))
        except Exception as exc:  # a backend that does not apply to these shapes/dtype/GPU
            ctx.emit(backend={"backend": backend, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})


def phase_compile(ctx) -> None:
    """torch.compile on the DiT: the first call (compiling) timed apart, then batch 1 at 50 steps."""
    import torch

    cpu_model, cfg = _sao(ctx)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    model = cpu_model.to(ctx.device).to(dtype)
    model.model.model = torch.compile(model.model.model, dynamic=False)
    timer = Timer(ctx)
    seconds, steps = (4.0, 2) if ctx.smoke else (47.0, 50)
    first = timer(_course(model, cfg, 1, 2, seconds, ctx))
    m = timer(_course(model, cfg, 1, steps, seconds, ctx))
    name = str(dtype).replace("torch.", "")
    ctx.emit(_row06(ctx, "course, torch.compile", name, 1, steps, seconds, m, f"; compiling call {first['s']} s"))


# --------------------------------------------------------------------------------------------
# 02_tag and 04_prompts


def phase_tag(ctx) -> None:
    import bench_gpu_memory_llm_clap as g
    import bench_tag

    clips, secs = (4, 12.0) if ctx.smoke else (64, 30.0)
    source = "tiny:clap" if ctx.smoke else str(bench_tag.build_large(ctx.scratch / "large_clap"))
    for batch in [2] if ctx.smoke else [16, 32]:
        run_dir = bench_tag.make_run(ctx.scratch / f"tag-b{batch}-{time.time_ns()}", clips, secs)
        ctx.reset()
        line = bench_tag.bench("large" if not ctx.smoke else "tiny", source, run_dir, ctx.device, batch)
        p = ctx.peaks()
        rate = round(line["clips"] / line["loop_s"], 2) if line["loop_s"] else ""
        ctx.emit(
            {
                "stage": "02_tag",
                "model": "laion/larger_clap_music" if not ctx.smoke else "tiny:clap (CPU smoke)",
                "mode": "stage",
                "precision": "auto (bf16/fp16)",
                "batch": batch,
                "seconds": secs,
                "rate": rate,
                "rate_unit": "clips/s",
                "peak_gb": p["pr"] if p["pr"] is not None else "",
                "peak_kind": "reserved" if p["pr"] is not None else "",
                "source": f"tag.run over {clips} clips of {secs:g} s: {line['times_real_time']}x real time, "
                f"load + text {line['load_and_text_s']} s; allocated {p['pa']} GB",
            },
            result=line,
        )
    if ctx.smoke:
        return
    model = g.build_clap(ctx.device)
    for batch in (16, 32):
        m = g.clap_embed(model, batch, ctx.device)
        m = g.clap_embed(model, batch, ctx.device)  # the second call: warm kernels
        ctx.emit(
            {
                "stage": "02_tag",
                "model": "laion/larger_clap_music",
                "mode": "audio",
                "precision": "bf16",
                "batch": batch,
                "seconds": 10,
                "rate": round(batch / m["seconds"], 1),
                "rate_unit": "windows/s",
                "peak_gb": m["pr"],
                "peak_kind": "reserved",
                "source": f"get_audio_features on random 10-s mels; allocated {m['pa']} GB",
            }
        )


def phase_prompts(ctx) -> None:
    import bench_gpu_memory_llm_clap as g

    name = "tiny" if ctx.smoke else "l3b"
    tokens, new, batches = (16, 4, [2]) if ctx.smoke else (320, 96, [8, 16])
    model = g.build_llm(name, ctx.device)
    g.generate(model, 1, 16, 4, ctx.device)  # warm-up
    for batch in batches:
        runs = [g.generate(model, batch, tokens, new, ctx.device) for _ in range(2)]
        m = min(runs, key=lambda r: r["seconds"])
        ctx.emit(
            {
                "stage": "04_prompts",
                "model": g.HUB_IDS[name],
                "mode": "generate",
                "precision": "bf16",
                "batch": batch,
                "tokens": tokens,
                "steps": new,
                "rate": round(batch / m["seconds"] * 60, 1),
                "rate_unit": "prompts/min",
                "peak_gb": m["pr"] if m["pr"] is not None else "",
                "peak_kind": "reserved" if m["pr"] is not None else "",
                "source": f"random weights, greedy, {new} new tokens, no early stop; the faster of 2 runs "
                f"({statistics.median(r['seconds'] for r in runs):.2f} s median); allocated {m['pa']} GB",
            }
        )
