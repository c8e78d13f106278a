"""Every stage's settings, defined once: type, default (the card's recipe), choices, bounds, help.

One dataclass per notebook (``SegmentSettings`` for 01_segment … ``EvaluateSettings`` for
07_evaluate, ``FocusSettings`` for 05b_focus, derived from 05's). Each field is a :func:`setting`:
its annotation is the type, its default the StableBeaT card's full-size recipe (or, where the card
says nothing, the value every profile uses), and its metadata the closed ``choices`` (validated),
the open ``suggest`` list (a notebook form's drop-down with free input), the bounds (``ge``, ``gt``,
``le``, ``lt``) and a one-line ``help``. From these classes:

- :func:`check` — choices and bounds, with a message naming the setting and what it allows
  (types are :mod:`stablebeat_utils.params`'); every stage's ``run()`` and the runner go through it;
- ``python -m stablebeat_utils stages`` / ``run --help`` (:func:`describe`);
- profiles (``data/profiles/*.yaml``): overlays that list only what differs from these defaults
  (``demo`` shrinks the recipe to a few CPU minutes); a key a stage does not have is an error;
- each notebook's ``parameters`` cell is checked against them (tests/test_notebooks_static.py).

Base layer: plain data, no engine imported (the choice lists come from the base modules that own them).
"""

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from . import layout
from .audio import CLIP_FORMATS
from .clap import BACKENDS
from .loops import BAR_CHOICES
from .modelspec import V_SAMPLERS
from .tempo import KEY_PROFILES

SAO_1 = "stabilityai/stable-audio-open-1.0"
LAION_CLAP = "laion/larger_clap_music"
PROFILE_NAMES = ("demo", "colab_a100", "colab_lora", "colab_t4")  # offered in the notebooks' forms
DEVICES = ("auto", "cpu", "cuda")
MODES = ("full", "lora")
ADAPTERS = ("lora", "dora")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
OPTIMIZERS = ("adamw", "adamw8bit")
EXPORT_FROM = ("last", "best")
QUANTIZATIONS = ("", "4bit", "8bit")
DTYPES = ("float32", "float16", "bfloat16")
CLAP_SETTINGS = ("card", "stable-audio-metrics")
BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def setting(default: Any, help: str, *, choices=(), suggest=(), ge=None, gt=None, le=None, lt=None, note=""):
    """A dataclass field carrying what a stage setting is: ``note`` is added to a bound's message."""
    meta = {"help": help, "choices": tuple(choices), "suggest": tuple(suggest), "note": note}
    meta.update({k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None})
    return field(default=default, metadata=meta)


def derived(cls: type, name: str, default: Any, help: str = "") -> Any:
    """``cls``'s setting ``name`` (type, choices, bounds, help) with another default: 05b's own recipe."""
    f = cls.__dataclass_fields__[name]
    return field(default=default, metadata=dict(f.metadata, help=help or f.metadata["help"]))


@dataclass
class Common:
    run_dir: str = setting("runs/demo", "the run folder: every stage reads and writes under it")
    profile: str = setting(
        "demo", "a bundled profile name or a .yaml path: values over these defaults", suggest=PROFILE_NAMES
    )


@dataclass
class SegmentSettings(Common):
    input_dir: str = setting("demo", 'your beats (never modified); "demo" = the bundled demo beats')
    segments_per_track: int = setting(2, "segments cut from each beat (the card: 2)", ge=1)
    min_seconds: float = setting(20.0, "shortest segment, s (the card: 20-35 s)", gt=0)
    max_seconds: float = setting(35.0, "longest segment, s", gt=0)
    target_lufs: float = setting(-14.0, "loudness every clip is normalised to (LUFS)", ge=-70, le=0)
    peak_ceiling_dbfs: float = setting(-1.0, "true-peak ceiling after normalising (dBFS)", ge=-20, le=0)
    workers: int = setting(2, "processes decoding and cutting beats", ge=1)
    clip_format: str = setting(
        "wav", "how clips are stored (flac: the same samples in about half the bytes)", choices=CLIP_FORMATS
    )
    clip_dir: str = setting("", '"" = RUN_DIR/01_segment/clips; or a folder outside the run folder')


@dataclass
class TagSettings(Common):
    clap_model: str = setting(
        LAION_CLAP,
        "the CLAP model scoring tags (the card: LAION's CLAP)",
        suggest=("tiny:clap", LAION_CLAP, "laion/larger_clap_general"),
    )
    backend: str = setting("transformers", "which CLAP implementation loads it", choices=BACKENDS)
    batch_size: int = setting(8, "CLAP windows per batch", ge=1)
    top_k_instruments: int = setting(3, "instrument tags kept per clip (the card: 3)", ge=0)
    top_k_moods: int = setting(2, "mood tags kept per clip (the card: 2)", ge=0)
    top_k_genres: int = setting(1, "genre tags kept per clip (the card: 1)", ge=0)
    min_similarity: float = setting(0.1, "a tag needs at least this cosine similarity", ge=-1, le=1)
    max_margin: float = setting(0.2, "a tag within this of the family's best is kept (2.0 turns it off)", ge=0)
    window_seconds: float = setting(10.0, "CLAP window, s (pooled over the clip)", gt=0)
    device: str = setting("auto", '"auto" = the GPU when there is one', suggest=DEVICES)
    vocab_dir: str = setting("", '"" = the bundled tag lists; or a folder of your own')
    calibration_file: str = setting("", "answers of the calibration round (tag_calibration)")


@dataclass
class TempoKeySettings(Common):
    tempo_model: str = setting("", '"" = TempoCNN deeptemp-k16-3 (downloaded once); or a .pb path')
    model_cache_dir: str = setting("", "where the TempoCNN graph is kept")
    min_confidence: float = setting(0.7, "tempo/key kept above this confidence (the card: 0.7)", ge=0, le=1)
    bpm_range: str = setting(
        "", '"" = any tempo; "70-160" folds estimates into that range', suggest=("", "70-160", "60-150", "80-170")
    )
    key_profile: str = setting("edma", "Essentia's key profile", choices=KEY_PROFILES)
    workers: int = setting(2, "processes analysing clips", ge=1)
    facts_from_names: bool = setting(True, "tempo and key written in file names are used as given")
    facts_file: str = setting("", "a CSV/JSON of tempo and key per file, used as given")


@dataclass
class PromptsSettings(Common):
    llm_model: str = setting(
        "meta-llama/Llama-3.2-3B-Instruct",
        "the LLM writing prompts (the card: Llama 3B)",
        suggest=("tiny:llm", "meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct"),
    )
    t5_model: str = setting(
        "t5-base", "the T5 encoding tags for the tag map (the card: T5-Base)", suggest=("tiny:t5", "t5-base")
    )
    use_llm: bool = setting(True, "False = prompts from a template, no LLM")
    quantization: str = setting("", '"" = bf16/fp16; 4bit/8bit need bitsandbytes', choices=QUANTIZATIONS)
    batch_size: int = setting(8, "prompts generated per batch", ge=1)
    generation_length: int = setting(96, "new tokens per prompt", ge=8, note="too few for a sentence (use 64-128)")
    temperature: float = setting(0.6, "sampling temperature (0 = greedy)", ge=0)
    seed: int = setting(0, "sampling seed")
    device: str = setting("auto", '"auto" = the GPU when there is one', suggest=DEVICES)
    t5_max_length: int = setting(128, "T5 tokens per tag (SAO's T5 reads 128)", ge=1, le=512)
    n_clusters: int = setting(0, "tag-map clusters: 0 = chosen by silhouette, else at least 2", ge=0)
    rare_tag_percent: float = setting(5.0, "a tag on fewer than this % of clips is flagged rare", ge=0, le=100)


@dataclass
class TrainSettings(Common):
    base_model: str = setting(
        SAO_1, "the model fine-tuned: hub id, local folder or tiny:sao", suggest=("tiny:sao", SAO_1)
    )
    t5_model: str = setting("", '"" = the model config\'s own T5 weights')
    mode: str = setting("full", "full fine-tune (the card) or LoRA adapters", choices=MODES)
    lora_rank: int = setting(16, "LoRA rank", ge=1)
    lora_alpha: float = setting(16.0, "LoRA alpha (alpha = rank: adapter scale 1)")
    lora_adapter: str = setting("lora", "the engine's LoRA or DoRA", choices=ADAPTERS)
    batch_size: int = setting(16, "clips per batch (the card: 16)", ge=1)
    lr: float = setting(5e-5, "learning rate (the card: AdamW 5e-5 with SAO's InverseLR)", gt=0)
    epochs: int = setting(14, "passes over the clips (the card: 14)", ge=0)
    max_steps: int = setting(0, "> 0 stops after that many optimizer steps; 0 = after epochs", ge=0)
    sample_seconds: float = setting(
        0.0, "training window, s; 0 = the model's own (47.55 s for SAO 1.0)", ge=0, note="0 = the model's own window"
    )
    random_crop: bool = setting(True, "a random window of a longer clip, else its start")
    ema: bool = setting(True, "keep an EMA of the DiT; the export is the EMA weights")
    precision: str = setting("auto", "auto = bf16-mixed where supported", choices=PRECISIONS)
    accelerator: str = setting("auto", "Lightning's accelerator", suggest=("auto", "gpu", "cpu"))
    devices: int = setting(1, "GPUs")
    strategy: str = setting("auto", "Lightning's strategy", suggest=("auto", "ddp", "ddp_notebook", "fsdp"))
    workers: int = setting(0, "data-loader processes", ge=0)
    checkpoint_every: int = setting(1000, "a checkpoint every that many steps", ge=1, note="steps")
    keep_checkpoints: int = setting(1, "checkpoints kept (newest)", ge=1)
    demo_every: int = setting(2000, "demos every that many steps (the engine's default)")
    num_demos: int = setting(2, "demo prompts rendered each time")
    demo_steps: int = setting(100, "sampler steps of a demo (half the card's 200)")
    demo_cfg: float = setting(7.0, "CFG scale of a demo (the card: 7)")
    demo_seconds: float = setting(47.0, "demo length, s (the card: 47)")
    demo_minutes: float = setting(
        30.0, "also demos every that many minutes; 0 = by steps only", ge=0, note="0 = demos by demo_every steps only"
    )
    pre_encode: bool = setting(False, "encode each clip once to latents (the VAE leaves the loop)")
    log_every: int = setting(10, "log the loss every that many steps")
    wandb_project: str = setting("", '"" = no Weights & Biases logging')
    seed: int = setting(0, "seed of crops, noise and shuffles")
    export_merged: bool = setting(True, "LoRA: also export the base with adapters merged")
    padding_loss_weight: float = setting(
        1.0,
        "weight of padded frames in the loss (1.0 = as SAO was trained)",
        ge=0,
        note="1.0 = train padded frames as SAO did",
    )
    grad_accum: int = setting(
        1,
        "batches per optimizer step (effective batch = batch_size x grad_accum)",
        ge=1,
        note="batches per optimizer step",
    )
    checkpoint_minutes: float = setting(
        20.0, "also a checkpoint every that many minutes; 0 = by steps", ge=0, note="0 = by steps and epochs only"
    )
    local_checkpoint_dir: str = setting("", "checkpoints written here first, then copied into the run folder")
    optimizer: str = setting("adamw", "AdamW (the card) or bitsandbytes' 8-bit AdamW", choices=OPTIMIZERS)
    export_from: str = setting("last", "last (the card) or best: the demo step nearest your clips", choices=EXPORT_FROM)
    holdout_fraction: float = setting(
        0.05, "clips never trained on; their loss is plotted", ge=0, lt=0.5, note="0 = no held-out clips"
    )


@dataclass
class FocusSettings(Common):
    init_model: str = setting("", '"" = RUN_DIR/05_train/export; or a fine-tune of the same architecture')
    focus_tags: str = setting("", '"" = the rare tags; or e.g. "genres: boom bap; instruments: 808"')
    exclude_tags: str = setting("", "tags whose clips are left out")
    rare_percent: float = setting(0.0, "0 = the tags 04 flagged; > 0 = tags on fewer than this % of clips", ge=0)
    rebalance: bool = setting(True, "repeats, so each chosen tag is seen about equally often")
    max_repeats: int = setting(4, "most repeats of one clip", ge=1)
    lr: float = derived(TrainSettings, "lr", 1e-5, "learning rate: a fifth of 05's (polish, don't overwrite)")
    epochs: int = derived(TrainSettings, "epochs", 3, "passes over the subset (the card: 2-3 more epochs)")
    max_steps: int = derived(TrainSettings, "max_steps", 0)
    batch_size: int = derived(TrainSettings, "batch_size", 16, "clips per batch; the subset must hold one batch")
    compare_prompts: int = setting(
        0, "chosen tags (rarest first) 06 generates with all 3 models; 0 = all", ge=0, note="0 = every chosen tag"
    )


@dataclass
class GenerateSettings(Common):
    base_model: str = setting(SAO_1, "the base model: hub id, local folder or tiny:sao", suggest=("tiny:sao", SAO_1))
    finetune_model: str = setting("", '"" = RUN_DIR/05_train/export; or a folder / hub id')
    allow_missing_finetune: bool = setting(False, "generate with the base model alone when there is no fine-tune")
    lora_strength: float = setting(1.0, "scale of a LoRA fine-tune's adapters")
    t5_model: str = setting("", '"" = the model config\'s own T5 weights')
    prompts_file: str = setting("", '"" = the card\'s seven prompts; or a .txt/.yaml/.jsonl file')
    n_prompts: int = setting(0, "prompts generated; 0 = all", ge=0, note="0 = all")
    steps: int = setting(200, "sampler steps (the card: 200)", ge=1)
    cfg_scale: float = setting(7.0, "classifier-free guidance (the card: 7)", ge=0)
    sampler_type: str = setting(
        "dpmpp-3m-sde",
        "sampler; the model's objective decides which exist",
        suggest=V_SAMPLERS[:2] + ("k-dpm-2", "k-heun", "v-ddim"),
    )
    sigma_min: float = setting(0.3, "lowest noise level (SAO: 0.3)", gt=0)
    sigma_max: float = setting(500.0, "highest noise level (SAO: 500)", gt=0)
    seconds_start: float = setting(0.0, "the start-time conditioning, s (the card: 0)", ge=0)
    seconds_total: float = setting(47.0, "duration, s (the card: 47)", gt=0)
    apg_scale: float = setting(0.0, "adaptive projected guidance; 0 = off")
    seed: int = setting(42, "seed of the first generation", ge=0, lt=2**32)
    batch_size: int = setting(1, "generations per batch", ge=1)
    silence_db: float = setting(60.0, "trim trailing audio this far below the peak (dB)")
    loops: bool = setting(True, "a bar-aligned, click-free loop of each generation")
    loop_bars: int = setting(4, "bars per loop (fewer when a clip is too short)", choices=BAR_CHOICES)
    loop_lufs: float = setting(0.0, "0 = loudness as generated; e.g. -14 = a loudness target (LUFS)")
    variation_of: str = setting(
        "auto", 'variations of your beat: "auto" = 04\'s first clip, a clip_id, a file, "" = none'
    )
    variation_strengths: str = setting("0.1, 0.9", "0 < strength <= 1: low keeps your beat, 1 forgets it")
    device: str = setting("auto", '"auto" = the GPU when there is one', suggest=("auto", "cuda", "cpu", "mps"))
    dtype: str = setting("auto", '"auto" = bf16/fp16 on a GPU, fp32 on the CPU', choices=("auto",) + DTYPES)


@dataclass
class EvaluateSettings(Common):
    generations: str = setting("", '"" = 06\'s generations.jsonl; or a .jsonl/.csv list of files')
    clap_model: str = setting(LAION_CLAP, "the CLAP model of the prompt score")
    clap_backend: str = setting("transformers", "which CLAP implementation loads it", choices=BACKENDS)
    clap_setting: str = setting("card", "card, or stable-audio-metrics (paper-comparable CLAP)", choices=CLAP_SETTINGS)
    tempo_model: str = setting("", '"" = TempoCNN deeptemp-k16-3; or a .pb path')
    key_profile: str = setting("edma", "Essentia's key profile", choices=KEY_PROFILES)
    reference: str = setting("", '"" = 01\'s clips as the reference set; or a folder')
    device: str = setting("auto", '"auto" = the GPU when there is one', suggest=DEVICES)
    workers: int = setting(2, "processes measuring files", ge=1)
    spectrogram_pairs: int = setting(8, "generated/reference spectrogram pairs plotted", ge=0)


SETTINGS: dict[str, type] = {
    layout.SEGMENT: SegmentSettings,
    layout.TAG: TagSettings,
    layout.TEMPO_KEY: TempoKeySettings,
    layout.PROMPTS: PromptsSettings,
    layout.TRAIN: TrainSettings,
    layout.FOCUS: FocusSettings,
    layout.GENERATE: GenerateSettings,
    layout.EVALUATE: EvaluateSettings,
}


def of(stage: str) -> type:
    """The settings class of a canonical stage name ('05_train')."""
    return SETTINGS[stage]


def spec(stage: str) -> dict[str, dataclasses.Field]:
    """``{name: field}`` in declaration order (common settings first)."""
    return {f.name: f for f in fields(of(stage))}


def defaults(stage: str) -> dict[str, Any]:
    """The card's recipe: every setting of ``stage`` at its default."""
    return dataclasses.asdict(of(stage)())


def allowed(f: dataclasses.Field) -> str:
    """What a setting allows, in words: '>= 0 and < 0.5', 'one of full, lora', ''."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(repr(c) if c == "" else str(c) for c in m["choices"])
    return " and ".join(
        f"{BOUNDS[k]} {m[k]:g}" if isinstance(m[k], float) else f"{BOUNDS[k]} {m[k]}" for k in BOUNDS if k in m
    )


def problem(stage: str, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``stage``'s setting ``name`` (its choices or bounds), else None."""
    f = spec(stage).get(name)
    if f is None or value is None or isinstance(value, bool) and f.type is not bool:
        return None
    m = f.metadata
    if m.get("choices"):
        if value not in m["choices"]:
            return f"{name} {value!r} is unknown: choose one of {', '.join(repr(c) if c == '' else str(c) for c in m['choices'])}"
        return None
    if not isinstance(value, (int, float)):
        return None
    ok = all(
        (k != "ge" or value >= m[k])
        and (k != "gt" or value > m[k])
        and (k != "le" or value <= m[k])
        and (k != "lt" or value < m[k])
        for k in BOUNDS
        if k in m
    )
    if ok and value == value:  # NaN fails every bound
        return None
    note = f" ({m['note']})" if m.get("note") else ""
    return f"{name} must be {allowed(f)}{note}, got {value!r}"


def check(stage: str, values: dict, error: type[Exception]) -> None:
    """Raise ``error`` naming the first setting of ``values`` outside its choices or bounds."""
    for name, value in values.items():
        why = problem(stage, name, value)
        if why:
            raise error(f"{stage}: {why}")


def describe(stage: str, demo: dict | None = None) -> list[str]:
    """``stages`` / ``run --help``: one line per setting — type, default, what the demo sets, allowed, help."""
    lines = []
    for name, f in spec(stage).items():
        tail = f"  [demo: {demo[name]!r}]" if demo and demo.get(name) != f.default else ""
        rule = allowed(f)
        rule = f"  {rule}" if rule else ""
        lines.append(f"      {name} = {f.default!r}  ({f.type.__name__}{rule}){tail}  {f.metadata['help']}")
    return lines
