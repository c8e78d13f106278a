#!/usr/bin/env bash
# CI's Colab legs: the course as a new user meets it on Colab, reproduced on a CPU machine.
#   usage: scripts/colab_leg.sh [RUNTIME]   (RUNTIME: a file colab/runtimes/RUNTIME.txt; default 2026.01)
#     2026.01  Colab's oldest runtime still offered: Python 3.12, torch 2.9.0, transformers 4.57.6
#              (and accelerate without W&B);
#     latest   Colab's default runtime: Python 3.13, torch 2.11.0, transformers 5.15, TensorFlow 2.20,
#              accelerate 1.14, wandb 0.28.
#   Each runtime file names its Python and torch on a line "# leg: python=3.13 torch=2.11.0".
#   1. a fresh venv of that Python with what that Colab runtime ships: the registry's CUDA build of
#      its torch/torchaudio (runs on CPU) and the packages of the runtime file;
#   2. the launcher's set-up cell, extracted verbatim from colab/launcher.ipynb, run against a local
#      clone standing in for GitHub (it clones, installs the course, and install_missing brings the
#      runtime within the course's bounds without touching torch);
#   2b. bad input: the same cell on Python 3.10 (when one is installed) must STOP naming Python;
#   3. colab/launcher.ipynb under papermill on the `demo` profile: every stage, end to end; no native
#      library log line (TensorFlow's oneDNN / CUDA-stub lines) in any executed lesson.
# Never touches ./.venv. Work folder: $COLAB_LEG_DIR (default ./.colab-leg/RUNTIME, git-ignored),
# rebuilt each run; COLAB_LEG_VENV=<dir> reuses a base venv already holding step 1's packages (local
# iteration only — CI builds it fresh). The pip cache is used when present, not required.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNTIME=${1:-2026.01}
RUNTIME_FILE=colab/runtimes/$RUNTIME.txt
[ -f "$RUNTIME_FILE" ] || { echo "colab-leg: STOP: no runtime file $RUNTIME_FILE (have: $(ls colab/runtimes))" >&2; exit 1; }
leg_line=$(grep -m1 '^# leg:' "$RUNTIME_FILE") || { echo "colab-leg: STOP: $RUNTIME_FILE has no '# leg: python=X.Y torch=A.B.C' line" >&2; exit 1; }
PYVER=$(sed -n 's/.*python=\([0-9.]*\).*/\1/p' <<<"$leg_line")
TORCH=${COLAB_LEG_TORCH:-$(sed -n 's/.*torch=\([0-9.]*\).*/\1/p' <<<"$leg_line")}
DIR=${COLAB_LEG_DIR:-$REPO/.colab-leg/$RUNTIME}
start=$(date +%s)
t() { echo "colab-leg[$RUNTIME]: $1 ($(( $(date +%s) - start )) s)"; }

PY=${COLAB_PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "python$PYVER" "$(pyenv root 2>/dev/null)/versions/$PYVER".*/bin/"python$PYVER"; do
    if "$cand" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$PYVER')" 2>/dev/null; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "colab-leg: STOP: Python $PYVER not found (set COLAB_PYTHON)" >&2; exit 1; }
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "colab-leg: note: uncommitted changes are not in the clone; testing HEAD $(git rev-parse --short HEAD)"

rm -rf "$DIR/content" "$DIR/origin.git" "$DIR/home" "$DIR/venv310" "$DIR/content310"
mkdir -p "$DIR/content" "$DIR/home"
# --- 1. the Colab-like runtime ------------------------------------------------------------------
if [ -n "${COLAB_LEG_VENV:-}" ]; then
  VENV=$COLAB_LEG_VENV
else
  VENV=$DIR/venv
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
  $PIP install "torch==$TORCH" "torchaudio==$TORCH" 2>&1 | grep -v '^WARNING: Location' || true
  $PIP install -r "$RUNTIME_FILE" 2>&1 | grep -v '^WARNING: Location' || true
fi
"$VENV/bin/python" -c "import sys, torch, transformers; print('colab-leg: runtime: Python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__)"
torch_before=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
t "runtime ready"

# --- 2. the set-up cell, verbatim, against a local "GitHub" ---------------------------------------
git init -q --bare "$DIR/origin.git"
git push -q "$DIR/origin.git" "HEAD:refs/heads/$("$VENV/bin/python" -c "import yaml; print(yaml.safe_load(open('stablebeat_utils/data/course.yaml'))['branch'])")"
"$VENV/bin/python" - "$REPO/colab/launcher.ipynb" > "$DIR/setup_cell.py" <<'PYEOF'
import json, sys
nb = json.load(open(sys.argv[1]))
cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
print("".join(cell["source"]))
PYEOF
# a clean environment: nothing of this repo or its venv on the path
export -n PYTHONPATH VIRTUAL_ENV 2>/dev/null || true
unset PYTHONPATH VIRTUAL_ENV
export PATH="$VENV/bin:$PATH" STABLEBEAT_HOME="$DIR/home" STABLEBEAT_COURSE_REPO="file://$DIR/origin.git"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${STABLEBEAT_MODEL_MIRROR:-}" ] && [ -f "$REPO/../shared/models/tempocnn/deeptemp-k16-3.pb" ]; then
  export STABLEBEAT_MODEL_MIRROR="$REPO/../shared/models/tempocnn"
fi
(cd "$DIR/content" && "$VENV/bin/python" "$DIR/setup_cell.py")
(cd "$DIR/content" && "$VENV/bin/python" - "$torch_before") <<'PYEOF'
import sys
import torch, transformers, stablebeat_utils
assert torch.__version__ == sys.argv[1], f"the set-up cell replaced Colab's torch: {sys.argv[1]} -> {torch.__version__}"
assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__
assert "/content/stablebeat-course/" in stablebeat_utils.__file__, stablebeat_utils.__file__
print("colab-leg: after set-up: torch", torch.__version__, "(kept) | transformers", transformers.__version__,
      "| course from", stablebeat_utils.__file__)
PYEOF
t "set-up cell done"

# --- bad input: a runtime below the bounds stops in the set-up cell with one message ---------------
PY310=${COLAB_LEG_OLD_PYTHON:-}
if [ -z "$PY310" ]; then
  for cand in python3.10 "$(pyenv root 2>/dev/null)/versions/"3.10*/bin/python3.10; do
    if "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then PY310=$cand; break; fi
  done
fi
if [ -n "$PY310" ]; then
  "$PY310" -m venv "$DIR/venv310"
  "$DIR/venv310/bin/python" -m pip --disable-pip-version-check -q install PyYAML packaging 2>&1 | grep -v '^WARNING: Location' || true
  mkdir -p "$DIR/content310"
  if (cd "$DIR/content310" && "$DIR/venv310/bin/python" "$DIR/setup_cell.py") > "$DIR/py310.log" 2>&1; then
    echo "colab-leg: FAIL: the set-up cell went on under Python 3.10" >&2; exit 1
  fi
  grep -q "STOP: this runtime cannot run the course: Python 3.10.[0-9]* found, Python >=3.11 needed" "$DIR/py310.log" \
    || { tail -5 "$DIR/py310.log" >&2; echo "colab-leg: FAIL: no STOP naming Python under 3.10" >&2; exit 1; }
  echo "colab-leg: Python 3.10 stops as it should: $(grep -o 'STOP: this runtime cannot run the course: Python [^;]*' "$DIR/py310.log" | tail -1)"
  rm -rf "$DIR/venv310" "$DIR/content310"
else
  echo "colab-leg: note: no Python 3.10 here; the STOP below the Python bound is covered by tests/test_colab.py only"
fi

# --- 3. the launcher on the demo profile, every stage ---------------------------------------------
(cd "$DIR/content" && "$VENV/bin/python" -m papermill --no-progress-bar --log-output \
  stablebeat-course/colab/launcher.ipynb "$DIR/launcher-demo.ipynb" \
  -p profile demo -p use_drive False -p local_folder "$DIR/content/stablebeat" \
  -p input_subfolder demo -p run_name demo -p stages "" -p run_everything True -p publish_repo_id "")
run_dir=$DIR/content/stablebeat/runs/demo
(cd "$DIR/content" && "$VENV/bin/python" - "$run_dir") <<'PYEOF'
import json, re, sys
from pathlib import Path
from stablebeat_utils import STAGES
run = Path(sys.argv[1])
missing = [s for s in STAGES if not (run / "notebooks" / f"{s}.ipynb").is_file()]
assert not missing, f"stages not run: {missing}"
print("colab-leg: every stage ran:", ", ".join(STAGES))
# native library log lines (TensorFlow, CUDA stubs: "I tensorflow/...", "E external/local_xla/...",
# absl's pre-InitializeLog warning) must not reach a lesson's output
native = re.compile(r"^(\S+ \S+: )?[IWEF]\S* (tensorflow|external)/|oneDNN custom operations|cuda drivers|absl::InitializeLog", re.M)
leaks = []
for s in STAGES:
    nb = json.loads((run / "notebooks" / f"{s}.ipynb").read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", ""))
            leaks += [f"{s}: {m.group(0)}" for m in native.finditer(text)]
assert not leaks, f"native library log lines in the lessons: {leaks[:5]}"
print("colab-leg: no native library log line in any lesson")
PYEOF
t "launcher done; total"
