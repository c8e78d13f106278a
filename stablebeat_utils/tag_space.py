"""A look at the dataset's tags: frequencies, tempo/key spread, prompt lengths, T5 clusters.

The second half of ``notebooks/04_prompts.ipynb`` (called at the end of :func:`prompts.run`, or on
its own with :func:`run`). Reads the run folder only; writes into ``RUN_DIR/04_prompts/``:

- ``tag_frequency.png`` — clips per tag, one panel per family (the card's "Frequence moods");
- ``bpm_key.png`` — confident tempos and keys;
- ``prompt_lengths.png`` — prompt lengths in T5 tokens, LLM vs template, with T5's 128 limit;
- ``tag_map.png`` — every vocabulary tag embedded with T5's encoder (the text encoder Stable Audio
  Open conditions on), mean-pooled over its tokens, clustered with KMeans and drawn in 2-D (PCA);
- ``tag_space.json`` — the clusters (named by their 2–3 most central tags), the silhouette score
  (how well separated the clusters are: 1 = far apart, 0 = touching, < 0 = mixed up; the card
  found 0.095 for 5 groups), and the under-represented tags.

Under-represented tags are vocabulary entries carried by fewer than ``rare_tag_percent`` % of the
clips (never-chosen ones included): the model will see few examples of them and, as the card
notes for boom bap, will struggle to render them.

With ``"tiny:t5"`` (random weights) the clusters mean nothing: the code path is the real one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import layout
from . import clipfacts
from .runs import Run, atomic_path, atomic_write_json, read_json, read_jsonl

STAGE = layout.PROMPTS
K_RANGE = (2, 8)  # KMeans k tried when n_clusters=0
CLUSTER_FORMAT = 1  # bumped when the clustering changes: cached clusters are recomputed


def embed_texts(tokenizer, encoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """T5 encoder states mean-pooled over each text's tokens (padding excluded): (n, d_model)."""
    import torch

    out = []
    device = next(encoder.parameters()).device
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        out.append(((states * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def cluster(
    emb: np.ndarray, n_clusters: int = 0, seed: int = 0, k_range: tuple[int, int] = K_RANGE
) -> tuple[np.ndarray, int, float, dict[int, float]]:
    """KMeans on L2-normalised embeddings: (labels, k, silhouette, silhouette per k tried).

    ``n_clusters=0`` tries every k of ``k_range`` and keeps the best silhouette score.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n < 3:
        raise ValueError(f"{n} tag(s): at least 3 are needed to cluster")
    ks = [n_clusters] if n_clusters else list(range(k_range[0], min(k_range[1], n - 1) + 1))
    scores: dict[int, float] = {}
    fits = {}
    for k in ks:
        if not 2 <= k < n:
            raise ValueError(f"n_clusters={k}: must be between 2 and the number of tags - 1 ({n - 1})")
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        scores[k] = float(silhouette_score(x, labels)) if len(set(labels)) > 1 else -1.0
        fits[k] = labels
    best = max(scores, key=lambda k: (scores[k], -k))
    return fits[best], best, scores[best], scores


def name_clusters(emb: np.ndarray, labels: np.ndarray, tags: list[str], top: int = 3) -> dict[int, dict]:
    """Each cluster's members (most central first) and a name from its ``top`` most central tags."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out = {}
    for c in sorted(set(int(l) for l in labels)):
        idx = np.flatnonzero(labels == c)
        centre = x[idx].mean(0)
        order = idx[np.argsort(np.linalg.norm(x[idx] - centre, axis=1), kind="stable")]
        members = [tags[i] for i in order]
        out[c] = {"name": " / ".join(members[:top]), "size": len(members), "members": members}
    return out


def under_represented(
    freq: dict[str, Counter], vocab: dict[str, list[str]], n_clips: int, percent: float
) -> list[dict]:
    """Vocabulary tags carried by fewer than ``percent`` % of clips, rarest first within each family."""
    rows = []
    for fam, tags in vocab.items():
        for t in tags:
            c = freq.get(fam, Counter()).get(t, 0)
            share = 100.0 * c / n_clips if n_clips else 0.0
            if share < percent:
                rows.append({"family": fam, "tag": t, "clips": c, "percent": round(share, 2), "never_chosen": c == 0})
    return sorted(rows, key=lambda r: (r["family"], r["clips"], r["tag"]))


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path.name


def _clip_stats(records: list[dict], out_dir: Path):
    """Tag frequencies per family, confident tempos, keys, and prompt lengths in T5 tokens by source."""
    freq = {
        f: Counter(t for r in records for t in dict.fromkeys(r["meta"].get(f"{f}_tags") or []))
        for f in clipfacts.FAMILIES
    }
    bpms = [float(r["meta"]["tempo"]) for r in records if clipfacts.known_tempo(r["meta"]) is not None]
    keys = Counter(f"{r['meta']['key']} {r['meta']['scale']}" for r in records if clipfacts.known_key(r["meta"]))
    prompt_rows = read_jsonl(out_dir / layout.PROMPT_ROWS)
    lengths = {
        src: [r["t5_tokens"] for r in prompt_rows if r.get("prompt_source") == src and r.get("t5_tokens")]
        for src in ("llm", "template")
    }
    return freq, bpms, keys, lengths


def _previous_clusters(previous: dict):
    """The clusters of the last run, as :func:`_compute_clusters` returns them."""
    k, sil = previous["n_clusters"], previous["silhouette"]
    sil_by_k = {int(kk): v for kk, v in previous["silhouette_by_k"].items()}
    named = {c["id"]: {kk: c[kk] for kk in ("name", "size", "members")} for c in previous["clusters"]}
    labels = np.array([p["cluster"] for p in previous["points"]])
    xy = np.array([[p["x"], p["y"]] for p in previous["points"]])
    return k, sil, sil_by_k, named, labels, xy, layout.TAG_MAP_PNG


def _compute_clusters(tags: list[str], t5_model: str, n_clusters: int, seed: int, device: str, t5, out_dir: Path):
    """Embed the tags with T5, cluster them, draw the map: ``(k, sil, sil_by_k, named, labels, xy, map_png)``."""
    from . import models, plots

    tokenizer, encoder = t5 or models.load_t5_encoder(t5_model, device=models.pick_device(device))
    emb = embed_texts(tokenizer, encoder, tags)
    labels, k, sil, sil_by_k = cluster(emb, n_clusters, seed)
    named = name_clusters(emb, labels, tags)
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=seed).fit_transform(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    map_png = _save(
        plots.plot_tag_map(
            xy.tolist(),
            tags,
            [int(l) for l in labels],
            {c: v["name"] for c, v in named.items()},
            f"{len(tags)} tags embedded with {t5_model}: {k} clusters, silhouette {sil:.3f}",
        ),
        out_dir / layout.TAG_MAP_PNG,
    )
    return k, sil, sil_by_k, named, labels, xy, map_png


def _plot_stats(freq, n: int, bpms, keys, lengths, out_dir: Path, map_png: str) -> dict[str, str]:
    from . import plots

    return {
        "tag_frequency": _save(
            plots.plot_tag_frequency({f: freq[f].most_common() for f in freq}, n), out_dir / layout.TAG_FREQUENCY_PNG
        ),
        "bpm_key": _save(plots.plot_bpm_key(bpms, dict(keys)), out_dir / layout.BPM_KEY_PNG),
        "prompt_lengths": _save(
            plots.plot_prompt_lengths(lengths, clipfacts.T5_MAX_TOKENS), out_dir / layout.PROMPT_LENGTHS_PNG
        ),
        "tag_map": map_png,
    }


def run(
    run_dir: str = "runs/demo",
    t5_model: str = "tiny:t5",
    n_clusters: int = 0,
    rare_tag_percent: float = 5.0,
    seed: int = 0,
    device: str = "auto",
    t5: tuple | None = None,
    lexicon: Any = None,
) -> dict:
    """Compute and save the tag-space figures and ``tag_space.json``; return its summary.

    ``t5`` (tokenizer, encoder) and ``lexicon`` may be passed by :func:`prompts.run` to reuse them.
    """
    run_ = Run(run_dir)
    out_dir = run_.stage_dir(STAGE)
    records = clipfacts.gather(run_)
    lexicon = lexicon or clipfacts.load_lexicon()
    n = len(records)
    freq, bpms, keys, lengths = _clip_stats(records, out_dir)

    tag_list = [(f, t) for f in clipfacts.FAMILIES for t in lexicon.tags[f]]
    tags = [t for _, t in tag_list]
    # the clusters depend on the vocabulary and the model only (not on the clips): kept across runs
    cluster_key = hashlib.sha256(
        json.dumps([CLUSTER_FORMAT, t5_model, tag_list, n_clusters, seed, K_RANGE]).encode()
    ).hexdigest()[:16]
    previous = read_json(out_dir / layout.TAG_SPACE) or {}
    if previous.get("cluster_key") == cluster_key and (out_dir / layout.TAG_MAP_PNG).is_file():
        k, sil, sil_by_k, named, labels, xy, map_png = _previous_clusters(previous)
    else:
        k, sil, sil_by_k, named, labels, xy, map_png = _compute_clusters(
            tags, t5_model, n_clusters, seed, device, t5, out_dir
        )
    rare = under_represented(freq, lexicon.tags, n, rare_tag_percent)
    pngs = _plot_stats(freq, n, bpms, keys, lengths, out_dir, map_png)

    families_of = dict((t, f) for f, t in tag_list)
    result = {
        "t5_model": t5_model,
        "cluster_key": cluster_key,
        "n_tags": len(tags),
        "n_clips": n,
        "k_chosen_by": "parameter" if n_clusters else f"silhouette over k={K_RANGE[0]}..{K_RANGE[1]}",
        "n_clusters": k,
        "silhouette": round(sil, 4),
        "silhouette_by_k": {str(kk): round(v, 4) for kk, v in sil_by_k.items()},
        "clusters": [
            {"id": c, **v, "families": dict(Counter(families_of[m] for m in v["members"]))} for c, v in named.items()
        ],
        "points": [
            {"tag": t, "family": f, "cluster": int(l), "x": round(float(p[0]), 5), "y": round(float(p[1]), 5)}
            for (f, t), l, p in zip(tag_list, labels, xy)
        ],
        "frequency": {f: dict(freq[f].most_common()) for f in freq},
        "tempo": {"confident": len(bpms), "median": float(np.median(bpms)) if bpms else None},
        "keys": dict(keys.most_common()),
        "rare_tag_percent": rare_tag_percent,
        "under_represented": rare,
        "plots": pngs,
    }
    atomic_write_json(out_dir / layout.TAG_SPACE, result)
    return {
        "n_clusters": k,
        "silhouette": result["silhouette"],
        "clusters": {str(c): v["name"] for c, v in named.items()},
        "under_represented": len(rare),
        "never_chosen": sum(r["never_chosen"] for r in rare),
        "plots": {name: run_.rel(out_dir / f) for name, f in pngs.items()},
        "json": run_.rel(out_dir / layout.TAG_SPACE),
    }


def read(run_dir: str | Path) -> dict:
    """``RUN_DIR/04_prompts/tag_space.json`` (for the notebook)."""
    from .runs import read_json

    return read_json(Run(run_dir).path(STAGE, layout.TAG_SPACE)) or {}
