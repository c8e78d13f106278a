"""Publish a fine-tune to the Hugging Face hub with a model card in the StableBeaT card's spirit.

Used by ``colab/launcher.ipynb`` and ``python -m stablebeat_utils publish``; reads the run folder
written by notebooks 01–07. ``dry_run=True`` (the default) writes ``RUN_DIR/publish/README.md``
and ``RUN_DIR/publish/upload_list.json`` and uploads nothing — that is what CI tests. The token
comes only from :func:`stablebeat_utils.models.hub_token` (environment or Colab secrets) and is
never written anywhere.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from .runs import Run, atomic_write_json, atomic_write_text, read_jsonl

BASE_MODEL = "stabilityai/stable-audio-open-1.0"


class PublishError(RuntimeError):
    pass


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def dataset_summary(run: Run) -> dict:
    segs = [r for r in read_jsonl(run.path("01_segment", "segments.jsonl")) if r.get("status") == "ok"]
    tags = read_jsonl(run.path("02_tag", "tags.jsonl"))
    tk = read_jsonl(run.path("03_tempo_key", "tempo_key.jsonl"))
    prompts = read_jsonl(run.path("04_prompts", "prompts.jsonl"))
    freq = {}
    for fam in ("instruments_tags", "moods_tags", "genres_tags"):
        c = collections.Counter(t for r in tags for t in (r.get(fam) or []))
        freq[fam] = c.most_common(10)
    tempos = sorted(r["tempo"] for r in tk if r.get("tempo") is not None)
    keys = collections.Counter(f"{r['key']} {r['scale']}" for r in tk if r.get("key") is not None)
    return {
        "clips": len(segs),
        "sources": len({r["source"] for r in segs}),
        "seconds": sum(float(r["duration"]) for r in segs),
        "tag_frequencies": freq,
        "tempo_known": len(tempos),
        "tempo_range": (tempos[0], tempos[-1]) if tempos else None,
        "tempo_median": tempos[len(tempos) // 2] if tempos else None,
        "keys": keys.most_common(6),
        "sample_prompts": [r["prompt"] for r in prompts[:5]],
        "prompt_sources": dict(collections.Counter(r.get("prompt_source", "?") for r in prompts)),
    }


def _export_files(run: Run) -> list[Path]:
    export = run.path("05_train", "export")
    if not export.is_dir():
        raise PublishError(f"{export}: no exported model — run 05_train first")
    files = sorted(p for p in export.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise PublishError(f"{export}: no .safetensors weights in the export folder")
    return files


def model_card(run: Run, repo_id: str, samples: list[tuple[str, str]]) -> str:
    ds = dataset_summary(run)
    train = (run.stage_record("05_train") or {}).get("params", {})
    lines = [
        "---", f"base_model: {BASE_MODEL}", "library_name: stable-audio-tools", "license: other",
        "tags:", "- audio", "- text-to-audio", "- music", "- stable-audio-open", "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        f"A fine-tune of [Stable Audio Open 1.0](https://huggingface.co/{BASE_MODEL}) on beats, made with the "
        "StableBeaT course (segment → tag → tempo/key → prompts → train → generate → evaluate).", "",
        "## Dataset", "",
        f"- {ds['clips']} clips from {ds['sources']} tracks, {_hours(ds['seconds'])} of audio; each clip keeps its "
        "start time in its source track (it conditions `seconds_start`).",
    ]
    if ds["tempo_range"]:
        lines.append(f"- BPM (TempoCNN deeptemp-k16-3, confidence ≥ 0.7) known for {ds['tempo_known']} clips: "
                     f"{ds['tempo_range'][0]:g}–{ds['tempo_range'][1]:g}, median {ds['tempo_median']:g}.")
    if ds["keys"]:
        lines.append("- Most common keys: " + ", ".join(f"{k} ({n})" for k, n in ds["keys"]) + ".")
    for fam, label in (("instruments_tags", "Instruments"), ("moods_tags", "Moods"), ("genres_tags", "Genres")):
        if ds["tag_frequencies"][fam]:
            lines.append(f"- {label} (CLAP tags, most frequent): "
                         + ", ".join(f"{t} ({n})" for t, n in ds["tag_frequencies"][fam]) + ".")
    if ds["sample_prompts"]:
        lines += ["", "Sample training prompts:", ""] + [f"> {p}" for p in ds["sample_prompts"]]
    lines += ["", "## Training", ""]
    if train:
        keep = ("mode", "base_model", "batch_size", "lr", "epochs", "max_steps", "precision", "pre_encode")
        lines += [f"- `{k}`: {train[k]}" for k in keep if k in train]
    else:
        lines.append("- (no 05_train stage record in the run folder)")
    lines += ["", "## Evaluation (07_evaluate: base model vs fine-tune)", ""]
    report = run.path("07_evaluate", "report.md")
    lines.append(report.read_text(encoding="utf-8").strip() if report.is_file()
                 else "_07_evaluate has not been run for this model yet._")
    if samples:
        lines += ["", "## Audio samples", ""] + [f"- [{name}]({path})" for name, path in samples]
    lines += ["", "## Use", "", "```python",
              "from stable_audio_tools import get_pretrained_model",
              f"model, config = get_pretrained_model({repo_id!r})", "```", ""]
    return "\n".join(lines)


def run(run_dir: str | os.PathLike, repo_id: str, dry_run: bool = True, private: bool = True,
        max_samples: int = 6) -> dict:
    """Write the card and the upload list; upload them (and the weights) unless ``dry_run``."""
    if "/" not in repo_id:
        raise PublishError(f"repo_id {repo_id!r} must look like 'user/model-name'")
    run = Run(run_dir)
    files = _export_files(run)
    gens = [r for r in read_jsonl(run.path("06_generate", "generations.jsonl")) if r.get("path")]
    samples = [(f"{r.get('model', 'model')} — {r.get('prompt', '')[:60]}", f"samples/{Path(r['path']).name}")
               for r in gens[:max_samples]]
    out = run.stage_dir("publish")
    card = out / "README.md"
    atomic_write_text(card, model_card(run, repo_id, samples))
    uploads = [{"local": str(card), "path_in_repo": "README.md"}]
    uploads += [{"local": str(f), "path_in_repo": f.name} for f in files]
    uploads += [{"local": str(run.path(r["path"])), "path_in_repo": f"samples/{Path(r['path']).name}"}
                for r in gens[:max_samples]]
    atomic_write_json(out / "upload_list.json", {"repo_id": repo_id, "private": private, "files": uploads})
    summary = {"card": str(card), "files": len(uploads), "dry_run": dry_run, "repo_id": repo_id}
    if dry_run:
        return summary
    from huggingface_hub import CommitOperationAdd, HfApi

    from .models import hub_token

    token = hub_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN in the environment or in Colab's secrets "
                           "(🔑 in the left bar) with write access")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=u["path_in_repo"], path_or_fileobj=u["local"]) for u in uploads]
    api.create_commit(repo_id, operations=ops, commit_message="Upload StableBeaT-course fine-tune")
    summary["url"] = f"https://huggingface.co/{repo_id}"
    return summary
