#!/usr/bin/env bash
# Creates ./.venv with everything the course needs on a CPU machine (CI, a Linux laptop).
# Fast when already set up: it does nothing unless a requirements file changed.
# On Colab use colab/ instead (Colab keeps its own CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
"$PY" - <<'PYEOF' || { echo "STOP: Python >= 3.11 is needed (found $("$PY" --version 2>&1))." >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYEOF

VENV=.venv
STAMP=$VENV/.stablebeat-setup
want=$(cat requirements.txt requirements-cpu.txt requirements-dev.txt requirements-engine.txt scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

echo "Setting up $VENV (first time takes a few minutes)..."
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip wheel 2>&1 | grep -v '^WARNING: Location' || true
# torch first, alone: pins the CPU wheel before anything can pull a CUDA build
$PIP install -r requirements-cpu.txt 2>&1 | grep -v '^WARNING: Location' || true
$PIP install -r requirements-cpu.txt -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v '^WARNING: Location' || true
# the engines that declare impossible pins: see requirements-engine.txt
$PIP install --no-deps --ignore-requires-python -r requirements-engine.txt 2>&1 | grep -v '^WARNING: Location' || true
$PIP install --no-deps --no-build-isolation -e . >/dev/null 2>&1 || $PIP install --no-deps -e .
$VENV/bin/python -m stablebeat_utils.compat --setup
$VENV/bin/python -c "import torch, torchaudio, stable_audio_tools, essentia, transformers, papermill; print('stack ok: torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$STAMP"
