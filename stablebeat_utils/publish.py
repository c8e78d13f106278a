"""Publish a fine-tune to the Hugging Face hub with a model card in the StableBeaT card's spirit.

Used by ``colab/launcher.ipynb`` and ``python -m stablebeat_utils publish``; reads the run folder
written by notebooks 01–07. ``dry_run=True`` (the default) writes ``RUN_DIR/publish/README.md``
and ``RUN_DIR/publish/upload_list.json`` and uploads nothing — that is what CI tests. The token
comes only from :func:`stablebeat_utils.models.hub_token` (environment or Colab secrets) and is
never written anywhere.

Layout on the hub: ``README.md`` (the card), the export's ``model_config.json`` and
``model.safetensors`` (+ ``lora.safetensors``) at the root — what stable-audio-tools'
``get_pretrained_model(repo_id)`` downloads — ``samples/<model>/<file>`` (base and fine-tune never
share a path) and every other file the card links to (07's ``plots/*.png``). The card is checked:
a relative link to a file that is not uploaded stops the publish before anything is sent.

The push goes in small commits (each weights file alone, then the samples and plots, the card
last, so the card never links to a file that is not there yet). What is on the hub is recorded in
``RUN_DIR/publish/upload_state.json`` (path → sha256 of the local file); a failed upload stops with
a message saying what is up and what is left, and running the publish again uploads only what is
left (a file changed since, or gone from the hub, is uploaded again).
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

from . import layout
from .clipfacts import FAMILIES
from .modelspec import SAO
from .tempo import KEY_ALT
from .runs import Run, atomic_write_json, atomic_write_text, file_sha256, read_json, read_jsonl

BASE_MODEL = SAO.known.hub_id
# SAO 1.0's weights are under the Stability AI Community License: a fine-tune is a derivative work
LICENSE_NAME = SAO.known.licence_name
LICENSE_ID = SAO.known.licence_id
LICENSE_LINK = f"https://huggingface.co/{BASE_MODEL}/blob/main/LICENSE.md"
MODEL_LABELS = {"base": SAO.known.label, "finetune": "fine-tune"}
STATE_FILE = layout.UPLOAD_STATE


NOTICE_FILE = "NOTICE"


class PublishError(RuntimeError):
    pass


def notice_text(known=None) -> str | None:
    """The "Notice" text file a derivative work ships with (its licence's sentence, then what changed).

    None when the base model's licence asks for none (``modelspec`` holds the sentence).
    """
    known = known or SAO.known
    if not known or not known.notice:
        return None
    return (
        f"{known.notice}\n\n"
        f"Attributions above apply to the Stability AI Materials ({known.label}, https://huggingface.co/{known.hub_id}).\n"
        f"Changed: this model is {known.label} fine-tuned (the DiT's weights or LoRA adapters trained) on the "
        "publisher's own beats with the StableBeaT course; the recipe is in README.md.\n"
    )


def licence_copy(run: Run, known=None) -> Path | None:
    """A copy of the base model's licence to ship: one placed in the export folder, else the hub cache's."""
    known = known or SAO.known
    if not known or not known.licence_file:
        return None
    local = layout.export_dir(run.path(layout.TRAIN)) / known.licence_file
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(known.hub_id, known.licence_file)
    except Exception:
        return None
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def dataset_summary(run: Run) -> dict:
    segs = [r for r in read_jsonl(run.path(layout.SEGMENT, layout.SEGMENTS)) if r.get("status") == "ok"]
    tags = read_jsonl(run.path(layout.TAG, layout.TAGS))
    tk = read_jsonl(run.path(layout.TEMPO_KEY, layout.TEMPO_KEYS))
    prompts = read_jsonl(run.path(layout.PROMPTS, layout.PROMPT_ROWS))
    freq = {}
    for fam in (f"{f}_tags" for f in FAMILIES):
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
    export = layout.export_dir(run.path(layout.TRAIN))
    if not export.is_dir():
        raise PublishError(f"{export}: no exported model — run 05_train first")
    files = sorted(p for p in export.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise PublishError(f"{export}: no .safetensors weights in the export folder")
    return files


def choose_samples(run: Run, max_samples: int = 6) -> list[dict]:
    """Generations to upload, prompt by prompt (every model of a prompt, its first seed), each with its
    own ``path_in_repo`` = ``samples/<model>/<file name>`` — base and fine-tune never overwrite each other.

    Whole prompts are taken while the count stays within ``max_samples`` (at least one prompt).
    """
    gens = [r for r in read_jsonl(run.path(layout.GENERATE, layout.GENERATIONS)) if r.get("path")]
    order: dict[str, int] = {}
    for r in sorted(gens, key=lambda r: (r.get("prompt_idx") is None, int(r.get("prompt_idx") or 0))):
        order.setdefault(r.get("prompt", ""), len(order))
    groups: dict[int, dict[str, dict]] = {}
    for r in sorted(gens, key=lambda r: (order[r.get("prompt", "")], int(r.get("seed") or 0))):
        groups.setdefault(order[r.get("prompt", "")], {}).setdefault(str(r.get("model") or "model"), r)
    chosen, used = [], set()
    for idx in sorted(groups):
        rows = sorted(groups[idx].items(), key=lambda kv: (kv[0] not in MODEL_LABELS, kv[0] != "base", kv[0]))
        if chosen and len(chosen) + len(rows) > max_samples:
            break
        for model, r in rows:
            local = Path(r["path"]) if Path(r["path"]).is_absolute() else run.path(r["path"])
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "model"
            dest = f"samples/{slug}/{local.name}"
            if dest in used:  # the same file name twice for one model: keep both
                dest = f"samples/{slug}/p{idx + 1:02d}-seed{r.get('seed', 0)}-{local.name}"
            used.add(dest)
            chosen.append(
                {
                    "model": model,
                    "prompt": r.get("prompt", ""),
                    "prompt_idx": idx,
                    "seed": r.get("seed"),
                    "local": str(local),
                    "path_in_repo": dest,
                }
            )
    return chosen


def _recipe(run: Run) -> list[str]:
    def p(stage):
        return (run.stage_record(stage) or {}).get("params") or {}

    seg, tag, tk, pr, tr, gen = (
        p(s) for s in (layout.SEGMENT, layout.TAG, layout.TEMPO_KEY, layout.PROMPTS, layout.TRAIN, layout.GENERATE)
    )
    out = []
    if seg:
        out.append(
            f"1. **Segment** (01): {seg.get('segments_per_track', 2)} segments of "
            f"{seg.get('min_seconds', 20):g}–{seg.get('max_seconds', 35):g} s per track, cut on bars, start "
            f"time kept; loudness {seg.get('target_lufs', -14):g} LUFS."
        )
    if tag:
        out.append(
            f"2. **Tag** (02): zero-shot instrument / mood / genre tags by CLAP similarity (`{tag.get('clap_model')}`)."
        )
    if tk:
        out.append(
            f"3. **Tempo and key** (03): Essentia TempoCNN deeptemp-k16-3 and KeyExtractor "
            f"(`{tk.get('key_profile', 'edma')}`), kept at confidence ≥ {tk.get('min_confidence', 0.7):g}."
            + (
                f" Where `edma` reads a major key, a second KeyExtractor (`{KEY_ALT}`) decides between it and "
                "its relative minor; too close to call, no key is stated."
                if tk.get("key_profile", "edma") == "edma"
                else ""
            )
        )
    if pr:
        out.append(
            f"4. **Prompts** (04): {'a local LLM (`' + str(pr.get('llm_model')) + '`)' if pr.get('use_llm') else 'templates'}"
            " writes one prompt per clip from its tags, BPM and key."
        )
    if tr:
        keep = ("mode", "base_model", "batch_size", "lr", "epochs", "max_steps", "precision", "pre_encode", "lora_rank")
        out.append("5. **Train** (05): " + ", ".join(f"`{k}` = {tr[k]}" for k in keep if k in tr) + ".")
    else:
        out.append("5. **Train** (05): (no 05_train stage record in the run folder)")
    if gen:
        out.append(
            f"6. **Generate** (06): {gen.get('steps')} steps, CFG {gen.get('cfg_scale')}, sampler "
            f"`{gen.get('sampler_type')}`, seconds_start {gen.get('seconds_start')}, "
            f"{gen.get('seconds_total')} s."
        )
    return out


def _card_header(repo_id: str) -> list[str]:
    """Front matter, title and licence."""
    return [
        "---",
        f"base_model: {BASE_MODEL}",
        "library_name: stable-audio-tools",
        "license: other",
        f"license_name: {LICENSE_ID}",
        f"license_link: {LICENSE_LINK}",
        "tags:",
        "- audio",
        "- text-to-audio",
        "- music",
        "- stable-audio-open",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A fine-tune of [Stable Audio Open 1.0](https://huggingface.co/{BASE_MODEL}) on beats, made with the "
        "StableBeaT course (segment → tag → tempo/key → prompts → train → generate → evaluate).",
        "",
        "## Licence",
        "",
        f"The weights derive from Stable Audio Open 1.0 and are released under the **{LICENSE_NAME}** "
        f"([licence text]({LICENSE_LINK})): read it before use — commercial use above its revenue threshold "
        "needs a licence from Stability AI. Powered by Stability AI.",
        "",
    ]


def _card_use(repo_id: str) -> list[str]:
    """How to load the model from the hub repo, or from a local copy."""
    return [
        "## Use",
        "",
        "With [stable-audio-tools](https://github.com/Stability-AI/stable-audio-tools) (it downloads "
        "`model_config.json` and `model.safetensors` from this repo):",
        "",
        "```python",
        "import torch",
        "from stable_audio_tools import get_pretrained_model",
        "from stable_audio_tools.inference.generation import generate_diffusion_cond",
        "",
        f"model, config = get_pretrained_model({repo_id!r})",
        'model = model.to("cuda").eval()',
        'conditioning = [{"prompt": "A dark trap beat at 140 BPM with 808 and synth bells",',
        '                 "seconds_start": 0, "seconds_total": 47}]',
        "audio = generate_diffusion_cond(model, steps=200, cfg_scale=7, conditioning=conditioning,",
        '                                sample_size=config["sample_size"], device="cuda")',
        "```",
        "",
        "From a local copy of this repo (or the course's export folder), the course's loader reads the same "
        'files: `from stablebeat_utils.models import load_sao; model, config = load_sao("path/to/folder")`.',
        "",
    ]


def _card_dataset(ds: dict) -> list[str]:
    """Clips, tempo, keys, tag frequencies and sample prompts of the training set."""
    lines = [
        "## Dataset",
        "",
        f"- {ds['clips']} clips from {ds['sources']} tracks, {_hours(ds['seconds'])} of audio; each clip keeps its "
        "start time in its source track (it conditions `seconds_start`).",
    ]
    if ds["tempo_range"]:
        lines.append(
            f"- BPM (TempoCNN deeptemp-k16-3, confidence ≥ 0.7) known for {ds['tempo_known']} clips: "
            f"{ds['tempo_range'][0]:g}–{ds['tempo_range'][1]:g}, median {ds['tempo_median']:g}."
        )
    if ds["keys"]:
        lines.append("- Most common keys: " + ", ".join(f"{k} ({n})" for k, n in ds["keys"]) + ".")
    for fam, label in ((f"{f}_tags", f.capitalize()) for f in FAMILIES):
        if ds["tag_frequencies"][fam]:
            lines.append(
                f"- {label} (CLAP tags, most frequent): "
                + ", ".join(f"{t} ({n})" for t, n in ds["tag_frequencies"][fam])
                + "."
            )
    if ds["sample_prompts"]:
        lines += ["", "Sample training prompts:", ""] + [f"> {p}" for p in ds["sample_prompts"]]
    return lines


def _card_evaluation(run: Run) -> list[str]:
    lines = ["", "## Evaluation (07_evaluate: base model vs fine-tune)", ""]
    report = run.path(layout.EVALUATE, layout.REPORT)
    if report.is_file():  # 07's report, headings one level down; its plot links are uploaded beside the card
        body = report.read_text(encoding="utf-8").strip()
        lines.append(re.sub(r"(?m)^(#+) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", body))
    else:
        lines.append("_07_evaluate has not been run for this model yet._")
    return lines


def _card_samples(samples: list[dict]) -> list[str]:
    """A table of the uploaded samples: one row per prompt, one column per model."""
    lines = ["", "## Audio samples", "", "Same prompt and seed for each model (the same starting noise).", ""]
    models = list(dict.fromkeys(x["model"] for x in samples))
    lines.append("| Prompt | " + " | ".join(MODEL_LABELS.get(m, m) for m in models) + " |")
    lines.append("|---|" + "---|" * len(models))
    for idx in dict.fromkeys(x["prompt_idx"] for x in samples):
        row = {x["model"]: x for x in samples if x["prompt_idx"] == idx}
        prompt = next(iter(row.values()))["prompt"].replace("|", "\\|")
        cells = [
            f"[{Path(row[m]['path_in_repo']).name}]({row[m]['path_in_repo']})" if m in row else "—" for m in models
        ]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return lines


def model_card(run: Run, repo_id: str, samples: list[dict]) -> str:
    """The README.md of the hub repo: licence, use, dataset, recipe, evaluation, samples."""
    ds = dataset_summary(run)
    export = layout.export_dir(run.path(layout.TRAIN))
    lines = _card_header(repo_id) + _card_use(repo_id) + _card_dataset(ds)
    lines += ["", "## Recipe", ""] + _recipe(run)
    lines += _card_evaluation(run)
    if samples:
        lines += _card_samples(samples)
    if not export.is_dir():
        lines += ["", "_No export folder in the run._"]
    return "\n".join(lines) + "\n"


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def card_links(card: str) -> list[str]:
    """Relative links of a markdown card (images and files; not URLs, anchors or absolute paths)."""
    out = []
    for m in _LINK.finditer(card):
        link = m.group(1).split("#", 1)[0]
        if link and "://" not in link and not link.startswith(("mailto:", "/")) and link not in out:
            out.append(link)
    return out


def upload_list(run: Run, card_path: Path, card: str, samples: list[dict]) -> list[dict]:
    """Every file to upload: the card, the export, the samples and every other file the card links to.

    A linked file is looked up beside 07's report (its ``plots/``); one that does not exist stops
    the publish with its name.
    """
    uploads = [{"local": str(card_path), "path_in_repo": layout.README}]
    uploads += [{"local": str(f), "path_in_repo": f.name} for f in _export_files(run)]
    uploads += [{"local": s["local"], "path_in_repo": s["path_in_repo"]} for s in samples]
    have = {u["path_in_repo"] for u in uploads}
    missing = []
    for link in card_links(card):
        if link in have:
            continue
        local = run.path(layout.EVALUATE, link)
        if local.is_file() and ".." not in Path(link).parts:
            uploads.append({"local": str(local), "path_in_repo": link})
            have.add(link)
        else:
            missing.append(link)
    if missing:
        raise PublishError(
            f"{card_path}: the card links {', '.join(missing)}, which the run folder does not hold "
            f"(looked beside {run.path(layout.EVALUATE)}); re-run 07_evaluate or remove the link"
        )
    gone = [u["local"] for u in uploads[1:] if not Path(u["local"]).is_file()]  # [0]: the card, written next
    if gone:
        raise PublishError(f"file(s) to upload are missing: {', '.join(gone)}")
    return uploads


def _batches(uploads: list[dict]) -> list[list[dict]]:
    """Commits in order: each weights file alone, then everything else but the card, the card last."""
    weights = [u for u in uploads if u["path_in_repo"].endswith((".safetensors", ".ckpt"))]
    card = [u for u in uploads if u["path_in_repo"] == layout.README]
    rest = [u for u in uploads if u not in weights and u not in card]
    return [[w] for w in weights] + ([rest] if rest else []) + [card]


def push(uploads: list[dict], repo_id: str, api, state_path: Path, private: bool = True) -> dict:
    """Upload what the hub does not have yet; resumable (see the module docstring). Returns counts."""
    from huggingface_hub import CommitOperationAdd

    state = read_json(state_path, default=None) or {}
    if state.get("repo_id") != repo_id:
        state = {"repo_id": repo_id, "files": {}}
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        on_hub = set(api.list_repo_files(repo_id))
    except Exception as exc:
        raise PublishError(
            f"cannot reach {repo_id} on the hub ({type(exc).__name__}: {exc}); nothing was "
            "uploaded — check the network and the token's write access, then run publish again"
        ) from exc
    sha = {u["path_in_repo"]: file_sha256(u["local"]) for u in uploads}
    todo = [
        u
        for u in uploads
        if not (state["files"].get(u["path_in_repo"]) == sha[u["path_in_repo"]] and u["path_in_repo"] in on_hub)
    ]
    skipped = len(uploads) - len(todo)
    done = 0
    for batch in _batches(todo):
        if not batch:
            continue
        ops = [CommitOperationAdd(path_in_repo=u["path_in_repo"], path_or_fileobj=u["local"]) for u in batch]
        names = ", ".join(u["path_in_repo"] for u in batch)
        try:
            api.create_commit(repo_id, operations=ops, commit_message=f"StableBeaT course: upload {names[:120]}")
        except Exception as exc:
            left = len(todo) - done
            raise PublishError(
                f"upload to {repo_id} failed at {names[:200]} ({type(exc).__name__}: {exc}). "
                f"{skipped + done} of {len(uploads)} files are on the hub (recorded in {state_path}); "
                f"run publish again to upload the {left} left."
            ) from exc
        for u in batch:
            state["files"][u["path_in_repo"]] = sha[u["path_in_repo"]]
        atomic_write_json(state_path, state)
        done += len(batch)
    return {"uploaded": done, "already_there": skipped}


def _licence_files(run: Run, out: Path, dry_run: bool) -> list[dict]:
    """The Notice file (written to ``out``) and the licence copy, when the base model's licence asks."""
    files = []
    notice = notice_text()
    if notice:
        atomic_write_text(out / NOTICE_FILE, notice)
        files.append({"local": str(out / NOTICE_FILE), "path_in_repo": NOTICE_FILE})
    else:
        (out / NOTICE_FILE).unlink(missing_ok=True)  # left by a publish of another base model
    if SAO.known.licence_file:
        copy = licence_copy(run)
        if copy is None and not dry_run:
            raise PublishError(
                f"no copy of {SAO.known.licence_name} to ship ({SAO.known.licence_file}): download it from "
                f"{LICENSE_LINK} into {layout.export_dir(run.path(layout.TRAIN))}, then run publish again"
            )
        if copy is not None:
            files.append({"local": str(copy), "path_in_repo": SAO.known.licence_file})
    return files


def run(
    run_dir: str | os.PathLike, repo_id: str, dry_run: bool = True, private: bool = True, max_samples: int = 6, api=None
) -> dict:
    """Write the card and the upload list; upload them (and the weights) unless ``dry_run``.

    ``api``: an ``huggingface_hub.HfApi``-like object (``create_repo``, ``list_repo_files``,
    ``create_commit``); None builds ``HfApi(token=…)`` from the environment's token.
    """
    if "/" not in repo_id:
        raise PublishError(f"repo_id {repo_id!r} must look like 'user/model-name'")
    run = Run(run_dir)
    _export_files(run)
    samples = choose_samples(run, max_samples)
    out = run.stage_dir("publish")
    card_path = out / layout.README
    card = model_card(run, repo_id, samples)
    uploads = upload_list(run, card_path, card, samples)
    uploads += _licence_files(run, out, dry_run)
    atomic_write_text(card_path, card)
    atomic_write_json(out / layout.UPLOAD_LIST, {"repo_id": repo_id, "private": private, "files": uploads})
    summary = {"card": str(card_path), "files": len(uploads), "dry_run": dry_run, "repo_id": repo_id}
    if dry_run:
        return summary
    from .models import hub_token

    token = hub_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN in the environment or in Colab's secrets "
            "(🔑 in the left bar) with write access"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    summary.update(push(uploads, repo_id, api, out / STATE_FILE, private=private))
    summary["url"] = f"https://huggingface.co/{repo_id}"
    return summary
