"""The run folder's layout: every stage folder and every file name a stage writes, spelled once.

Used by every notebook (01_segment … 07_evaluate); no notebook of its own. Every other module names
a folder or file of the run folder through this module (``layout.SEGMENTS``,
``layout.path(run_dir, layout.SEGMENT, layout.SEGMENTS)``); tests/test_layers.py fails if another
module spells one. Moving a file (checkpoints into another folder, say) is a one-line edit here.

::

    RUN_DIR/
      run.json                       every stage's parameters and versions (runs.record_params)
      storage_plan.json              where 01's clips and 05's checkpoints live (storage.py)
      01_segment/  segments.jsonl  clips/  clip_folder.json  .work/{config.json,fingerprints.jsonl}
      02_tag/      tags.jsonl  calibration.json  calibration_answers.jsonl
      03_tempo_key/ tempo_key.jsonl  analysis.json
      04_prompts/  prompts.jsonl  metadata.json  tag_space.json  plots/*.png
      05_train/    checkpoints/  export/{model.safetensors,model_config.json,lora.safetensors}
                   demos/demos.jsonl  latents/  logs/
      05b_focus/   subset.jsonl  focus.json  tag_counts.png  (and 05's folders)
      06_generate/ generations.jsonl  takes.jsonl  base/ finetune/
      07_evaluate/ metrics.csv  training_metrics.csv  card_table.md  summary.md  summary.json
                   report.md  plots/*.png
    each stage folder: stage.json (its record, runs.Run.mark_done)
"""

from __future__ import annotations

import os
from pathlib import Path

# -- stage folders (also the notebooks' names) -----------------------------------------------------
SEGMENT = "01_segment"
TAG = "02_tag"
TEMPO_KEY = "03_tempo_key"
PROMPTS = "04_prompts"
TRAIN = "05_train"
FOCUS = "05b_focus"
GENERATE = "06_generate"
EVALUATE = "07_evaluate"
STAGES = (SEGMENT, TAG, TEMPO_KEY, PROMPTS, TRAIN, FOCUS, GENERATE, EVALUATE)

# -- the run folder's own files --------------------------------------------------------------------
RUN_JSON = "run.json"  # every stage's parameters and the versions they ran with
STAGE_JSON = "stage.json"  # in each stage folder: the stage's record when done
STORAGE_PLAN = "storage_plan.json"

# -- 01_segment -------------------------------------------------------------------------------------
SEGMENTS = "segments.jsonl"
CLIPS = "clips"  # folder of the clips (or clip_folder, see CLIP_FOLDER_RECORD)
CLIP_FOLDER_RECORD = "clip_folder.json"
WORK = ".work"  # 01's resume state
WORK_CONFIG = "config.json"
FINGERPRINTS = "fingerprints.jsonl"

# -- 02_tag -----------------------------------------------------------------------------------------
TAGS = "tags.jsonl"
CALIBRATION = "calibration.json"
CALIBRATION_ANSWERS = "calibration_answers.jsonl"

# -- 03_tempo_key -----------------------------------------------------------------------------------
TEMPO_KEYS = "tempo_key.jsonl"
ANALYSIS = "analysis.json"

# -- 04_prompts -------------------------------------------------------------------------------------
PROMPT_ROWS = "prompts.jsonl"
METADATA = "metadata.json"
TAG_SPACE = "tag_space.json"
TAG_MAP_PNG = "tag_map.png"
TAG_FREQUENCY_PNG = "tag_frequency.png"
BPM_KEY_PNG = "bpm_key.png"
PROMPT_LENGTHS_PNG = "prompt_lengths.png"

# -- 05_train (and 05b_focus, which trains the same way into its own folder) ------------------------
CHECKPOINTS = "checkpoints"
EXPORT = "export"
MODEL_WEIGHTS = "model.safetensors"  # an exported model folder: these two files
MODEL_CONFIG = "model_config.json"
MODEL_CKPT = "model.ckpt"  # a stable-audio-tools checkpoint (hub folders may hold this instead)
LORA_WEIGHTS = "lora.safetensors"
DEMOS = "demos"
DEMOS_LOG = "demos.jsonl"
DEMO_SCORES = "demo_scores.csv"  # each demo scored as it is made (train_watch)
LATENTS = "latents"
PRE_ENCODED = "pre_encoded"
LOGS = "logs"
LOG_CSVS = "version_*/metrics.csv"  # Lightning CSVLogger's loss curves under LOGS, one folder per session

# -- 05b_focus --------------------------------------------------------------------------------------
SUBSET = "subset.jsonl"
FOCUS_JSON = "focus.json"
TAG_COUNTS_PNG = "tag_counts.png"

# -- 06_generate ------------------------------------------------------------------------------------
GENERATIONS = "generations.jsonl"
TAKES = "takes.jsonl"
LOOPS = "loops"  # bar-aligned loops of the generations
LOOPS_TABLE = "loops.jsonl"
VARIATIONS_TABLE = "variations.jsonl"
VARIATION_CLOSENESS_CSV = "variation_closeness.csv"  # variations.jsonl per strength and metric (issue 29)
BLIND = "blind.jsonl"  # the playground's blind rounds, one line each (07 reports them)

# -- 07_evaluate ------------------------------------------------------------------------------------
METRICS_CSV = "metrics.csv"
TRAINING_METRICS_CSV = "training_metrics.csv"
CARD_TABLE = "card_table.md"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
REPORT = "report.md"
METRIC_BARS_PNG = "metric_bars.png"
BPM_SCATTER_PNG = "bpm_requested_vs_measured.png"
PLOTS = "plots"  # 04's and 07's figures

# -- publish (a model repository's folder) ----------------------------------------------------------
README = "README.md"
UPLOAD_STATE = "upload_state.json"
UPLOAD_LIST = "upload_list.json"


def path(run_dir: str | os.PathLike, *parts: str) -> Path:
    """``RUN_DIR/part/part…`` (not resolved, not created)."""
    return Path(run_dir).expanduser().joinpath(*parts)


def export_dir(stage_dir: str | os.PathLike) -> Path:
    """Where a training stage (05 or 05b) exports its model."""
    return Path(stage_dir) / EXPORT


def checkpoint_dir(stage_dir: str | os.PathLike) -> Path:
    """Where a training stage (05 or 05b) writes its checkpoints."""
    return Path(stage_dir) / CHECKPOINTS


def exported_weights(stage_dir: str | os.PathLike) -> Path:
    return export_dir(stage_dir) / MODEL_WEIGHTS
