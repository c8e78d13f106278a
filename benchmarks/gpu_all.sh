#!/usr/bin/env bash
# The lent GPU machine's side of benchmarks/gpu_all.py: install the carried wheels, run every phase,
# leave the results (gpu_measurements.csv, results.jsonl, summary.md, log.txt) under $OUT.
#
#   device run:  command "bash benchmarks/gpu_all.sh", carry [".whl"], timeout_s 600
#
# .whl/ (ignored by git through .git/info/exclude) holds the wheels the machine lacks and
# .whl/src/stable_audio_tools (the engine, copied as a folder: its wheel refuses Python >= 3.11).
# How to fill it: docs/benchmarks.md, "One GPU run of every stage". Extra arguments go to gpu_all.py.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_all_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/src${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export STABLEBEAT_HOME=${STABLEBEAT_HOME:-/tmp/stablebeat_home}
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 | tee "$OUT/log.txt"
python3 benchmarks/gpu_all.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
