"""CLAP scoring, shared by 02_tag (tags) and 07_evaluate (prompt adherence, FAD-CLAP).

Used by notebooks 02_tag and 07_evaluate; no notebook of its own. How a clip becomes one embedding
(the same for every backend; :mod:`stablebeat_utils.tag` tells it in full): non-overlapping windows of
``window_seconds`` (:func:`window_bounds`; a last partial window kept when it holds at least
``MIN_TAIL`` of a window), each window's embedding L2-normalised, averaged with weights equal to the
seconds each holds, normalised again (:func:`pool_windows`). Backends (:func:`make_backend`):
``transformers`` (``models.load_clap``; ``tiny:clap`` offline) and ``laion_clap`` (imported only
when chosen).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

BACKENDS = ("transformers", "laion_clap")
MIN_TAIL = 0.5  # a last partial window is kept when it holds at least this fraction of a window


class TagError(ValueError):
    """A parameter, input or model that cannot be used; raised before any clip is processed."""


# --------------------------------------------------------------------------------------------
# windows, embeddings, selection (pure functions, unit-tested)
# --------------------------------------------------------------------------------------------


def window_bounds(n_samples: int, sr: int, window_seconds: float, min_tail: float = MIN_TAIL) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, stop)`` windows of ``window_seconds`` covering a clip.

    A last partial window is kept when it holds ``>= min_tail`` of a window, else dropped; a clip
    shorter than one window gives one (short) window. 25 s at 10 s → 3 windows, 24 s → 2.
    """
    if n_samples <= 0:
        return []
    size = int(round(window_seconds * sr))
    if size <= 0:
        raise TagError(f"window_seconds={window_seconds} gives an empty window at {sr} Hz")
    full, tail = divmod(n_samples, size)
    bounds = [(i * size, (i + 1) * size) for i in range(full)]
    if tail and (not bounds or tail >= min_tail * size):
        bounds.append((full * size, n_samples))
    return bounds


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def pool_windows(embeddings: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """One unit vector for a clip: weighted mean of its L2-normalised window embeddings, renormalised."""
    emb = l2_normalize(np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1))
    w = np.ones(len(emb), dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(emb),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(emb)} non-negative numbers with a positive sum, got {weights!r}")
    mean = (emb.astype(np.float64) * (w / w.sum())[:, None]).sum(axis=0)
    return l2_normalize(mean).astype(np.float32)


def cosine_scores(audio_embedding: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of one audio embedding with each row of ``text_embeddings``."""
    return l2_normalize(text_embeddings) @ l2_normalize(audio_embedding)


# --------------------------------------------------------------------------------------------
# backends: texts → unit vectors, lists of mono windows → unit vectors
# --------------------------------------------------------------------------------------------


class TransformersClap:
    """LAION CLAP through ``transformers.ClapModel`` (``models.load_clap``: hub id, path, ``tiny:clap``)."""

    name = "transformers"

    def __init__(self, source: str, device: str = "cpu"):
        import torch

        from . import models

        self.source = source
        self.device = device
        self.model, self.processor = models.load_clap(source, device=device)
        self.dtype = models.pick_dtype(device)  # bf16 on GPUs that have it, fp16 on others, fp32 on CPU
        self.model = self.model.to(device=torch.device(device), dtype=self.dtype).eval()
        fe = self.processor.feature_extractor
        self.sampling_rate = int(fe.sampling_rate)
        self.window_seconds = float(fe.nb_max_samples) / self.sampling_rate
        # Every window we give is at most CLAP's length, so nothing is ever cropped at random; an
        # unfused model takes one mel ("rand_trunc"), a fused one four copies ("fusion").
        self.fusion = bool(getattr(self.model.config.audio_config, "enable_fusion", False))
        self.truncation = "fusion" if self.fusion else "rand_trunc"

    def fingerprint(self) -> str:
        """Hash of the text projection weights: tells a rebuilt or different model apart."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.text_projection.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def embed_text(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor.tokenizer(texts, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.get_text_features(**inputs)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return l2_normalize(emb.float().cpu().numpy())

    def embed_audio(self, windows: list[np.ndarray]) -> np.ndarray:
        import torch

        feats = self.processor.feature_extractor(
            [w.astype(np.float64, copy=False) for w in windows],
            sampling_rate=self.sampling_rate,
            truncation=self.truncation,
            return_tensors="pt",
        )
        features = feats["input_features"].to(device=self.device, dtype=self.dtype)
        # the extractor flags one random clip as "longer" when none is (fusion models); none of
        # our windows is longer than CLAP's input, so say so: deterministic and truthful.
        is_longer = torch.zeros((len(windows), 1), dtype=torch.bool, device=self.device)
        with torch.inference_mode():
            out = self.model.get_audio_features(input_features=features, is_longer=is_longer)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return l2_normalize(emb.float().cpu().numpy())


# LAION-CLAP's own checkpoints for the hub ids of their transformers conversions (LAION-CLAP README:
# the music checkpoints are HTSAT-base, unfused; files in the hub repo lukewys/laion_clap).
LAION_CLAP_CHECKPOINTS = {
    "laion/larger_clap_music": ("HTSAT-base", "music_audioset_epoch_15_esc_90.14.pt"),
    "laion/larger_clap_music_and_speech": ("HTSAT-base", "music_speech_audioset_epoch_15_esc_89.98.pt"),
    "laion/larger_clap_general": ("HTSAT-base", "music_speech_epoch_15_esc_89.25.pt"),
}


class LaionClapBackend:
    """The card's package, ``laion-clap`` (``CLAP_Module``), for LAION's ``.pt`` checkpoints.

    ``source``: a hub id of :data:`LAION_CLAP_CHECKPOINTS` or a local ``.pt`` file (HTSAT-base).
    Imported only here: ``import laion_clap`` pulls torchvision and calls ``from_pretrained`` for
    three tokenizers at import time (it hangs without network).
    """

    name = "laion_clap"
    sampling_rate = 48_000
    window_seconds = 10.0

    def __init__(self, source: str, device: str = "cpu"):
        if source.startswith("tiny:"):
            raise TagError(
                f"backend='laion_clap' reads LAION's .pt checkpoints; there is no {source!r} for it. "
                "Use backend='transformers' (the demo's tiny CLAP runs there)."
            )
        try:
            import laion_clap  # noqa: PLC0415 — lazy on purpose, see the class docstring
        except ImportError as exc:
            raise TagError(
                "backend='laion_clap' needs the `laion-clap` package, which is not installed. Install it with "
                "`pip install laion-clap` (it imports torchvision and needs network access at import), or use "
                "backend='transformers' (the default), which runs the same LAION weights."
            ) from exc
        if source in LAION_CLAP_CHECKPOINTS:
            amodel, filename = LAION_CLAP_CHECKPOINTS[source]
            from huggingface_hub import hf_hub_download

            ckpt = hf_hub_download("lukewys/laion_clap", filename)
        elif Path(source).suffix == ".pt" and Path(source).is_file():
            amodel, ckpt = "HTSAT-base", source
        else:
            raise TagError(
                f"backend='laion_clap': clap_model {source!r} is neither a local .pt checkpoint nor one "
                f"of {', '.join(LAION_CLAP_CHECKPOINTS)}"
            )
        self.source = source
        self.device = device
        self.model = laion_clap.CLAP_Module(enable_fusion=False, amodel=amodel, device=device)
        self.model.load_ckpt(ckpt)
        self._ckpt = str(ckpt)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self._ckpt}:{Path(self._ckpt).stat().st_size}".encode()).hexdigest()[:16]

    def embed_text(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(np.asarray(self.model.get_text_embedding(texts, use_tensor=False)))

    def embed_audio(self, windows: list[np.ndarray]) -> np.ndarray:
        rows: dict[int, np.ndarray] = {}
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(i)
        for idx in by_len.values():  # CLAP_Module takes an (N, T) array: group equal lengths
            # LAION-CLAP's README quantises to int16 and back before embedding (as in training)
            x = np.stack([np.clip(windows[i], -1, 1) for i in idx]).astype(np.float32)
            x = (x * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
            emb = np.asarray(self.model.get_audio_embedding_from_data(x=x, use_tensor=False))
            rows.update(zip(idx, emb))
        return l2_normalize(np.stack([rows[i] for i in range(len(windows))]))


def make_backend(backend: str, clap_model: str, device: str = "cpu"):
    """A backend object by name (``transformers`` or ``laion_clap``)."""
    if backend == "transformers":
        return TransformersClap(clap_model, device)
    if backend == "laion_clap":
        return LaionClapBackend(clap_model, device)
    raise TagError(f"backend {backend!r} is unknown: choose one of {', '.join(BACKENDS)}")
