"""Where every model comes from: a hub id, a local folder, or a tiny model built here offline.

Used by notebooks 02_tag (CLAP), 04_prompts (chat LLM, T5 encoder), 05_train / 06_generate
(Stable Audio Open) and 07_evaluate (CLAP); no notebook of its own.

One loading path for real and tiny models. A *source* is one of

- ``"tiny:<name>"`` — a tiny model (random weights, except ``tiny:sao``'s, trained by
  ``scripts/train_tiny.py`` and shipped in ``data/tiny/sao_weights.safetensors``) with a locally
  trained tokenizer, built once from the configs in ``stablebeat_utils/data/tiny/`` into ``cache_home()/"tiny-models"/<name>``,
  saved in exactly the layout of the real model (``save_pretrained`` folders; for SAO the hub
  repo's ``model_config.json`` + ``model.safetensors``);
- an existing local folder (a downloaded or exported model);
- a Hugging Face hub id (``"laion/larger_clap_music"``), handed to the engine's own download code.

:func:`resolve` turns a source into what ``from_pretrained`` reads; the ``load_*`` functions then
run the same engine calls (``ClapModel.from_pretrained``, ``create_model_from_config`` + safetensors)
whatever the source. Tiny names and the real models they stand in for:

========  ==================================  =========================================
name      stands in for                       built from
========  ==================================  =========================================
``t5``    ``t5-base`` (encoder)               ``data/tiny/t5.json`` + shipped weights/vocab
``clap``  ``laion/larger_clap_music``         ``data/tiny/clap.json`` + byte-level BPE
``llm``   ``meta-llama/Llama-3.2-3B-Instruct`` ``data/tiny/llm.json`` + byte-level BPE
``sao``   ``stabilityai/stable-audio-open-1.0`` ``data/tiny/sao_model_config.json`` + trained weights
========  ==================================  =========================================

``data/sao-1.0-model_config.json`` is the full-size SAO 1.0 architecture (read from the hub repo's
config), for building the real-size network with random weights (GPU benchmarks).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from . import layout, modelspec
from .runs import atomic_write_json, cache_home

DATA = Path(__file__).resolve().parent / "data"
TINY_DATA = DATA / "tiny"
SAO_FULL_CONFIG = modelspec.REGISTRY[modelspec.SAO_NAME].config_path
# laion/larger_clap_music's architecture (its published config.json; also ..._and_speech and
# larger_clap_general): for random-weight builds that size memory and time without the hub
# (benchmarks/bench_tag.py, bench_gpu_memory_llm_clap.py; preflight_inference.CLAP_PARAMS).
LARGER_CLAP_AUDIO = dict(
    spec_size=256,
    num_mel_bins=64,
    window_size=8,
    patch_size=4,
    patch_stride=[4, 4],
    patch_embeds_hidden_size=128,
    hidden_size=1024,
    depths=[2, 2, 12, 2],
    num_attention_heads=[4, 8, 16, 32],
    enable_fusion=False,
    projection_dim=512,
)
LARGER_CLAP_TEXT = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    projection_dim=512,
)
TINY_CORPUS = TINY_DATA / "corpus.txt"
#: tiny:sao's trained weights (VAE + DiT, 3.9 MB): written by scripts/train_tiny.py, read by _build_sao
TINY_SAO_WEIGHTS = TINY_DATA / "sao_weights.safetensors"
#: tiny:t5, fixed: the encoder (random init, 2.6 MB) and SentencePiece vocabulary that tiny:sao's DiT was
#: trained with. Built fresh they differ per runtime (transformers' init, sentencepiece's trainer: measured
#: on Colab's default runtime, 8 of 11 tensors and 352 pieces against 345), and the trained DiT would hear
#: prompts it never saw; shipped, every runtime encodes a prompt the same (issue 24). Written once from
#: _build_t5's own output on the course's stack (the T5 in train_tiny.py's run).
TINY_T5_WEIGHTS = TINY_DATA / "t5_weights.safetensors"
TINY_T5_VOCAB = TINY_DATA / "t5_vocab.json"

#: the real model each tiny one stands in for (also the loaders' defaults)
REAL_MODELS = {
    "t5": "t5-base",
    "clap": "laion/larger_clap_music",
    "llm": "meta-llama/Llama-3.2-3B-Instruct",
    "sao": modelspec.REGISTRY[modelspec.SAO_NAME].hub_id,
}
TINY_NAMES = tuple(REAL_MODELS)
#: hub ids that need an accepted licence and a token (SAO 1.0; Meta's Llama models)
GATED_PREFIXES = ("stabilityai/stable-audio-open-", "meta-llama/")
TINY_SEED = 0
#: bumped whenever a builder changes what it writes; a cached build of another format is rebuilt
TINY_FORMAT = 5
_MARKER = "stablebeat-tiny.json"  # written last into a build: its presence means "complete"


class ModelSourceError(RuntimeError):
    """A model source that cannot be used (missing folder, unknown tiny name, hub offline)."""


# --------------------------------------------------------------------------------------------
# devices and dtypes


def pick_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` if a CUDA GPU is visible, else ``"mps"`` on Apple silicon, else ``"cpu"``.

    Any other value is checked and returned unchanged (``"cuda:1"``, ``"cpu"``).
    """
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(f"device={device!r}: no CUDA GPU is visible (use device='auto' or 'cpu')")
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelSourceError(f"device={device!r}: expected 'auto', 'cpu', 'cuda[:N]' or 'mps'")
    return str(device)


def pick_dtype(device: str):
    """bf16 on GPUs that support it, fp16 on older GPUs (and MPS), fp32 on CPU."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


# --------------------------------------------------------------------------------------------
# sources


def hub_token() -> str | None:
    """The Hugging Face token: ``$HF_TOKEN`` / ``$HUGGING_FACE_HUB_TOKEN``, or Colab's secret ``HF_TOKEN``.

    Never logged or printed. ``None`` when there is none (public models still download).
    """
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var)
        if value:
            return value
    try:  # only inside Colab; a missing secret or no notebook access is not an error
        from google.colab import userdata  # type: ignore[import-not-found]
    except Exception:
        return None
    try:
        return userdata.get("HF_TOKEN") or None
    except Exception:
        return None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_local(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or os.path.isabs(source)
        or bool(re.match(r"^[A-Za-z]:[\\/]", source))
        or not _HUB_ID.match(source)
    )


def resolve(source: str | os.PathLike) -> str:
    """What ``from_pretrained`` should read for ``source``.

    ``"tiny:<name>"`` → the tiny model's folder (built on first use); an existing local folder →
    its absolute path; a hub id (``owner/name`` or ``name``) → unchanged. A local path that does
    not exist, or an unknown tiny name, raises :class:`ModelSourceError` naming it.
    """
    src = os.fspath(source).strip()
    if not src:
        raise ModelSourceError("empty model source: give a hub id, a local folder or 'tiny:<name>'")
    if src.startswith("tiny:"):
        name = src[len("tiny:") :]
        return str(ensure_tiny_models([name])[name])
    path = Path(src).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelSourceError(
            f"{src}: is a file; a model source is a folder (as saved by save_pretrained), a hub id or 'tiny:<name>'"
        )
    if _looks_local(src):
        raise ModelSourceError(
            f"{src}: no such model folder (expected a local folder, a hub id like "
            f"'owner/name', or one of {', '.join('tiny:' + n for n in TINY_NAMES)})"
        )
    return src


def _tiny_hint(tiny_name: str | None) -> str:
    return f"; offline, use source='tiny:{tiny_name}' (a tiny model built locally)" if tiny_name else ""


@contextlib.contextmanager
def _hub_errors(source: str, resolved: str, tiny_name: str | None):
    """Turn a hub failure for a hub id into one clear message (offline / gated / missing)."""
    try:
        yield
    except ModelSourceError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        if resolved != source or Path(resolved).is_dir():
            raise  # a local folder: the engine's own message names the file
        if hub_offline():
            raise ModelSourceError(
                f"{source}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1)"
                f"{_tiny_hint(tiny_name)}, or download it once with the hub reachable"
            ) from exc
        raise ModelSourceError(
            f"{source}: could not be loaded from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Gated models need an accepted licence and "
            f"a token in HF_TOKEN (or Colab's secret HF_TOKEN){_tiny_hint(tiny_name)}"
        ) from exc


# --------------------------------------------------------------------------------------------
# tiny models: build once, atomically, deterministically


def tiny_root() -> Path:
    return cache_home() / "tiny-models"


def _tiny_complete(path: Path, name: str) -> bool:
    try:
        info = json.loads((path / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        info.get("name") == name
        and info.get("format") == TINY_FORMAT
        and info.get("seed") == TINY_SEED
        and info.get("inputs_sha256") == _inputs_digest(name)
    )


def _inputs_digest(name: str) -> str:
    """Hash of the config files a tiny build reads: an edited config makes the cached build stale."""
    files = {
        "t5": ["t5.json", TINY_T5_WEIGHTS.name, TINY_T5_VOCAB.name],
        "clap": ["clap.json"],
        "llm": ["llm.json"],
        "sao": ["sao_model_config.json", "t5.json", TINY_T5_WEIGHTS.name, TINY_T5_VOCAB.name, TINY_SAO_WEIGHTS.name],
    }[name]
    h = hashlib.sha256()
    for f in files + ["corpus.txt"]:
        h.update((TINY_DATA / f).read_bytes())
    return h.hexdigest()[:16]


def ensure_tiny_models(names: Iterable[str] = TINY_NAMES) -> dict[str, Path]:
    """Build the named tiny models into ``cache_home()/"tiny-models"`` if needed; return their folders.

    A build happens in a temporary folder beside the target and is renamed into place when
    complete, so a killed build leaves nothing half-written; a complete build is reused.
    ``"sao"`` needs ``"t5"`` (its prompt conditioner), which is built first.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in TINY_NAMES]
    if unknown:
        raise ModelSourceError(
            f"unknown tiny model {', '.join(repr('tiny:' + n) for n in unknown)}; "
            f"known: {', '.join('tiny:' + n for n in TINY_NAMES)}"
        )
    if "sao" in names and "t5" not in names:
        names = ["t5"] + names
    out = {}
    for name in names:
        out[name] = _ensure_one(name)
    return out


def _ensure_one(name: str) -> Path:
    final = tiny_root() / name
    if _tiny_complete(final, name):
        return final
    # huggingface_hub's own dependency; one builder at a time (tests and notebooks may race)
    from filelock import FileLock

    with FileLock(str(final.parent / f".{name}.lock")):
        if _tiny_complete(final, name):  # built by whoever held the lock before us
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".building", dir=final.parent))
        try:
            t0 = time.perf_counter()
            build_tiny(name, tmp, seed=TINY_SEED)
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
            atomic_write_json(
                tmp / _MARKER,
                {
                    "name": name,
                    "format": TINY_FORMAT,
                    "seed": TINY_SEED,
                    "stands_in_for": REAL_MODELS[name],
                    "inputs_sha256": _inputs_digest(name),
                    "build_seconds": round(time.perf_counter() - t0, 2),
                    "bytes": size,
                },
            )
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like the hub's
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            if final.exists():  # an incomplete or outdated build: set it aside, then swap
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=final.parent))
                os.replace(final, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny(name: str, dest: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Build tiny model ``name`` into the (empty) folder ``dest``; deterministic under ``seed``.

    Most callers want :func:`ensure_tiny_models` (cached, atomic); this is the raw builder.
    """
    import torch

    builders = {"t5": _build_t5, "clap": _build_clap, "llm": _build_llm, "sao": _build_sao}
    if name not in builders:
        raise ModelSourceError(f"unknown tiny model 'tiny:{name}'; known: {', '.join('tiny:' + n for n in TINY_NAMES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        builders[name](dest)
    return dest


def _tiny_config(file: str) -> dict:
    cfg = json.loads((TINY_DATA / file).read_text(encoding="utf-8"))
    cfg.pop("_comment", None)
    return cfg


def _corpus_lines() -> list[str]:
    return [ln for ln in TINY_CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _train_unigram(vocab_size: int) -> list[tuple[str, float]]:
    """A Unigram vocabulary in t5-base's layout (pad 0, eos 1, unk 2, no bos), trained on the tiny corpus.

    SentencePiece is the tool T5's own tokenizer was trained with; single-threaded it is
    deterministic (the ``tokenizers`` Unigram trainer is not: its scores vary in the last bits).
    """
    import io

    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()),
        model_writer=proto,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def _train_byte_bpe(vocab_size: int, special: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2/RoBERTa/Llama-3-style byte-level BPE trained on the tiny corpus: (vocab, merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _build_t5(dest: Path) -> None:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    cfg = _tiny_config("t5.json")
    for f in (TINY_T5_WEIGHTS, TINY_T5_VOCAB):
        if not f.is_file():
            raise ModelSourceError(f"{f}: tiny:t5's shipped file is missing; restore it from git (git checkout -- {f})")
    vocab = [(str(p), float(s)) for p, s in json.loads(TINY_T5_VOCAB.read_text(encoding="utf-8"))]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.model_max_length = 512  # as t5-base
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **cfg["model"])).eval()
    _load_tiny_t5_weights(model)
    tokenizer.save_pretrained(dest)
    model.save_pretrained(dest)


def _load_tiny_t5_weights(model) -> None:
    """:data:`TINY_T5_WEIGHTS` into the tiny T5 encoder, strictly but for its tied input embedding (the file,
    as ``save_pretrained`` writes it, holds ``shared.weight`` once); a misfit names the file."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(TINY_T5_WEIGHTS))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, OSError) as exc:  # a shape that differs, an unreadable file
        raise ModelSourceError(f"{TINY_T5_WEIGHTS}: does not fit tiny:t5 ({exc})") from exc
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise ModelSourceError(
            f"{TINY_T5_WEIGHTS}: does not fit tiny:t5 ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )


def _build_clap(dest: Path) -> None:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    cfg = _tiny_config("clap.json")
    vocab, merges = _train_byte_bpe(cfg["tokenizer"]["vocab_size"], ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    # transformers 5: vocab_file=/merges_file= silently give a 5-token tokenizer; pass the objects
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = 512
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(**cfg["feature_extractor"]), tokenizer=tokenizer)
    text = dict(
        cfg["text_config"],
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = ClapConfig(text_config=text, audio_config=cfg["audio_config"], projection_dim=cfg["projection_dim"])
    model = ClapModel(config).eval()
    processor.save_pretrained(dest)
    model.save_pretrained(dest)


# Llama-3-style chat template (header tokens + <|eot_id|>), written for the tiny tokenizer.
_LLM_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
_LLM_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


def _build_llm(dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = _tiny_config("llm.json")
    vocab, merges = _train_byte_bpe(cfg["tokenizer"]["vocab_size"], _LLM_SPECIAL)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(_LLM_SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_max_length=cfg["model"]["max_position_embeddings"],
        chat_template=_LLM_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _LLM_SPECIAL}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
        pad_token_id=ids["<|end_of_text|>"],
        **cfg["model"],
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        **cfg["generation"],
    )
    tokenizer.save_pretrained(dest)
    model.save_pretrained(dest)


def _build_sao(dest: Path) -> None:
    """tiny:sao: the config's network holding the trained weights of :data:`TINY_SAO_WEIGHTS`.

    Trained, not random: a random VAE's decoder does not invert its encoder, so whatever the DiT
    learns in the demo's fine-tune would be lost in decoding, and 07 could not show it (issue 24).
    The weights go in through :func:`load_weights_into`, the path real checkpoints take, strictly:
    a file that no longer fits the config (missing, unexpected or reshaped tensors) stops here with
    the file's name, never a half-random model.
    """
    from safetensors.torch import save_file

    config = json.loads((TINY_DATA / "sao_model_config.json").read_text(encoding="utf-8"))
    # the config projects the 768-wide T5 tokens to the DiT width (project_cond_tokens: true): the
    # engine gives cross-attention dim_context // dim_heads kv heads and repeats them
    # num_heads // kv_heads times, so unprojected (24 kv heads for 2 query heads) torch 2.9-2.11
    # raise and torch >= 2.12 silently attend to nothing. SAO 1.0 itself (24 heads, 12 kv) is fine.
    model = create_sao_model(config)
    if not TINY_SAO_WEIGHTS.is_file():
        raise ModelSourceError(
            f"{TINY_SAO_WEIGHTS}: tiny:sao's trained weights are missing; restore the file from git "
            "or rebuild it with `.venv/bin/python scripts/train_tiny.py` (about 30 min on one CPU core)"
        )
    load_weights_into(model, TINY_SAO_WEIGHTS, strict=True)
    save_file(_plain_state_dict(model), str(dest / layout.MODEL_WEIGHTS))
    # the hub layout: the config as written (portable "tiny:t5" model_path), beside the weights
    (dest / layout.MODEL_CONFIG).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _plain_state_dict(model) -> dict:
    """Contiguous, unshared CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Stable Audio Open


def sao_full_config() -> dict:
    """The full-size SAO 1.0 ``model_config.json`` (T5 from the hub's ``t5-base``)."""
    return json.loads(SAO_FULL_CONFIG.read_text(encoding="utf-8"))


def _with_t5_paths(model_config: dict, t5_source: str | None) -> dict:
    """A copy of ``model_config`` whose T5 conditioners point at a real folder (or hub id).

    ``t5_source`` overrides; else the config's own ``model_path`` (``"tiny:t5"`` in the tiny SAO);
    else the conditioner's ``t5_model_name`` from the hub. Each goes through :func:`resolve`.
    """
    cfg = copy.deepcopy(model_config)
    for cond in cfg.get("model", {}).get("conditioning", {}).get("configs", []):
        if cond.get("type") != "t5":
            continue
        c = cond.setdefault("config", {})
        src = t5_source or c.get("model_path")
        if src:
            c["model_path"] = resolve(src)
        elif hub_offline():  # fail fast here rather than deep inside the conditioner
            name = c.get("t5_model_name", "t5-base")
            _check_transformers_cached(name, "t5")
    return cfg


def _check_transformers_cached(repo_id: str, tiny_name: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise ModelSourceError(
            f"{repo_id}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1)"
            f"{_tiny_hint(tiny_name)} or pass t5_source=<local T5 folder>"
        )


def create_sao_model(model_config: dict, t5_source: str | None = None):
    """Build the SAO network from a ``model_config.json`` dict (random weights) with stable-audio-tools."""
    from . import compat

    compat.apply()
    from stable_audio_tools.models.factory import create_model_from_config

    compat.t5_outside_autocast()
    return create_model_from_config(_with_t5_paths(model_config, t5_source))


def _sao_files(source: str, resolved: str) -> tuple[Path, Path]:
    """(model_config.json, weights) for a local folder or a hub repo."""
    if Path(resolved).is_dir():
        folder = Path(resolved)
        cfg = folder / layout.MODEL_CONFIG
        if not cfg.is_file():
            raise ModelSourceError(
                f"{cfg}: missing (a Stable Audio model folder holds model_config.json and model.safetensors)"
            )
        for name in (layout.MODEL_WEIGHTS, layout.MODEL_CKPT):
            if (folder / name).is_file():
                return cfg, folder / name
        raise ModelSourceError(f"{folder}: no model.safetensors (or model.ckpt) beside model_config.json")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    token = hub_token()
    with _hub_errors(source, resolved, "sao"):
        cfg = Path(hf_hub_download(resolved, filename=layout.MODEL_CONFIG, token=token))
        try:
            weights = Path(hf_hub_download(resolved, filename=layout.MODEL_WEIGHTS, token=token))
        except EntryNotFoundError:
            weights = Path(hf_hub_download(resolved, filename=layout.MODEL_CKPT, token=token))
    return cfg, weights


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Weights from ``.safetensors``, or a ``.ckpt`` read with ``weights_only=True`` (never arbitrary pickles).

    The whole file in memory at once; to fill a model already built, :func:`load_weights_into`
    needs no second copy.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelSourceError(f"{path}: not a weights-only checkpoint ({exc}); convert it to safetensors") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


#: how much of a weights file :func:`load_weights_into` maps at a time
LOAD_CHUNK_BYTES = 64 * 2**20


def load_weights_into(
    model, path: str | os.PathLike, strict: bool = True, chunk_bytes: int = LOAD_CHUNK_BYTES
) -> list[str]:
    """Copy a weights file into ``model``'s own tensors, in place, a chunk at a time; the keys read.

    ``model.load_state_dict(load_file(path))`` holds the file's tensors and the model's at once —
    twice the model in RAM (10.2 GB for SAO 1.0's 4.85 GB). Here each tensor is read from the
    memory-mapped safetensors file and copied into the parameter (or buffer) it belongs to; the
    file is mapped ``chunk_bytes`` at a time and unmapped in between, so the peak is the model plus
    one chunk. ``.ckpt`` files are read with ``torch.load(mmap=True, weights_only=True)``.
    ``strict``: missing or unexpected keys, or a shape that differs, raise :class:`ModelSourceError`
    naming the file (as ``load_state_dict(strict=True)`` would, before any copy).
    """
    import torch

    path = Path(path)
    own = model.state_dict(keep_vars=True)  # the model's own tensors (no copies)

    def check(keys_shapes: dict) -> None:
        missing = sorted(set(own) - set(keys_shapes))
        unexpected = sorted(set(keys_shapes) - set(own))
        wrong = sorted(k for k in set(own) & set(keys_shapes) if tuple(own[k].shape) != tuple(keys_shapes[k]))
        if strict and (missing or unexpected):
            raise ModelSourceError(
                f"{path}: weights do not fit the model ({len(missing)} missing, e.g. "
                f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
            )
        if wrong:
            k = wrong[0]
            raise ModelSourceError(
                f"{path}: {len(wrong)} tensor(s) of another shape, e.g. {k}: "
                f"{tuple(keys_shapes[k])} in the file, {tuple(own[k].shape)} in the model"
            )

    def put(key: str, value) -> None:
        with torch.no_grad():
            own[key].data.copy_(value)

    if path.suffix != ".safetensors":
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ModelSourceError(f"{path}: not a weights-only checkpoint ({exc}); convert it to safetensors") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        check({k: v.shape for k, v in state.items()})
        for k, v in state.items():
            if k in own:
                put(k, v)
        return sorted(state)

    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        shapes = {k: fh.get_slice(k).get_shape() for k in keys}
        sizes = {k: math.prod(shapes[k]) * own[k].element_size() if k in own else 0 for k in keys}
    check(shapes)
    chunks, current, size = [], [], 0
    for k in keys:
        if current and size + sizes[k] > chunk_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(k)
        size += sizes[k]
    if current:
        chunks.append(current)
    for chunk in chunks:
        with safe_open(str(path), framework="pt", device="cpu") as fh:  # unmapped when closed
            for k in chunk:
                if k in own:
                    put(k, fh.get_tensor(k))
    return keys


def load_sao(
    source: str = REAL_MODELS["sao"], device: str = "cpu", t5_source: str | None = None, dtype=None
) -> tuple[Any, dict]:
    """Stable Audio Open: ``(model, model_config)`` from a hub repo, a local folder or ``"tiny:sao"``.

    Builds the network with stable-audio-tools' ``create_model_from_config`` and copies
    ``model.safetensors`` into it (strict) with :func:`load_weights_into`: peak RAM is the model plus
    a 64 MB chunk, not twice the model. ``t5_source`` overrides the T5 conditioner's weights (a local
    T5 folder, a hub id or ``"tiny:t5"``). The returned config is the one read (unmodified).
    """
    resolved = resolve(source)
    cfg_path, weights = _sao_files(source, resolved)
    try:
        model_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelSourceError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if model_config.get("model_type") not in ("diffusion_cond", "diffusion_cond_inpaint"):
        raise ModelSourceError(
            f"{cfg_path}: model_type {model_config.get('model_type')!r} is not a "
            "conditional diffusion model (expected 'diffusion_cond')"
        )
    model = create_sao_model(model_config, t5_source=t5_source)
    try:  # copied into the built model a chunk at a time: no second copy of the weights in RAM
        load_weights_into(model, weights, strict=True)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{exc} — the config is {cfg_path}") from exc
    device = pick_device(device)
    model = model.to(device).eval()  # gradients left as built: the training stage fine-tunes this model
    if dtype is not None:
        model = model.to(dtype)
    return model, model_config


# --------------------------------------------------------------------------------------------
# transformers models


def _pretrained_pair(source: str, device: str, tiny_name: str, aux_cls, model_cls) -> tuple[Any, Any]:
    """``(aux_cls.from_pretrained, model_cls.from_pretrained)`` of one source, model in eval mode on ``device``."""
    resolved = resolve(source)
    device = pick_device(device)
    with _hub_errors(source, resolved, tiny_name):
        aux = aux_cls.from_pretrained(resolved, token=hub_token())
        model = model_cls.from_pretrained(resolved, token=hub_token())
    return aux, model.to(device).eval()


def load_clap(source: str = REAL_MODELS["clap"], device: str = "cpu") -> tuple[Any, Any]:
    """CLAP (``transformers.ClapModel`` + ``ClapProcessor``), eval mode, fp32, on ``device``."""
    from transformers import ClapModel, ClapProcessor

    processor, model = _pretrained_pair(source, device, "clap", ClapProcessor, ClapModel)
    return model, processor


def load_t5_encoder(source: str = REAL_MODELS["t5"], device: str = "cpu") -> tuple[Any, Any]:
    """A T5 text encoder: ``(tokenizer, T5EncoderModel)``, eval mode, fp32, on ``device``."""
    from transformers import AutoTokenizer, T5EncoderModel

    return _pretrained_pair(source, device, "t5", AutoTokenizer, T5EncoderModel)


QUANTIZATIONS = ("4bit", "8bit")


def load_chat_llm(
    source: str = REAL_MODELS["llm"], device: str = "cpu", quantization: str | None = None
) -> tuple[Any, Any]:
    """A chat LLM: ``(tokenizer, AutoModelForCausalLM)`` in eval mode.

    dtype from :func:`pick_dtype` (bf16 / fp16 on GPUs, fp32 on CPU). ``quantization="4bit"`` or
    ``"8bit"`` loads through bitsandbytes (CUDA only; a clear error if it is not installed).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in (None, "", *QUANTIZATIONS):
        raise ModelSourceError(f"quantization={quantization!r}: expected None, '4bit' or '8bit'")
    resolved = resolve(source)
    device = pick_device(device)
    dtype = pick_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "token": hub_token()}
    if quantization:
        if not device.startswith("cuda"):
            raise ModelSourceError(
                f"quantization={quantization!r} needs a CUDA GPU (bitsandbytes); "
                f"device is {device!r} — use quantization=None"
            )
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:
            raise ModelSourceError(
                f"quantization={quantization!r} needs the bitsandbytes package "
                "(pip install bitsandbytes), which is not importable here"
            ) from exc
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device}
    with _hub_errors(source, resolved, "llm"):
        tokenizer = AutoTokenizer.from_pretrained(resolved, token=hub_token())
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    if not quantization:
        model = model.to(device)
    if tokenizer.pad_token is None:  # Llama 3 ships none; batching and generate() want one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.eval()


def build_tiny_clap_fused(dest: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """``tiny:clap`` with LAION's fusion branch on: a stand-in for ``laion/clap-htsat-fused``.

    A separate builder, not in :data:`TINY_NAMES`: only the tests of 07's
    ``clap_setting="stable-audio-metrics"`` need a fused CLAP (fusion truncation: three 10-s crops
    plus the whole clip shrunk, and the model's fusion layers). Same tokenizer and front end as
    ``tiny:clap``; weights random under ``seed``; loaded like any local model folder.
    """
    import torch
    from transformers import ClapConfig, ClapModel, ClapProcessor

    dest = build_tiny("clap", dest, seed=seed)
    config = ClapConfig.from_pretrained(dest)
    config.audio_config.enable_fusion = True
    processor = ClapProcessor.from_pretrained(dest)
    processor.feature_extractor.truncation = "fusion"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClapModel(config).eval()
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest
