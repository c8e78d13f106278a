"""Read the executed lessons of a run as a producer would (issue 30), and list what they would trip on.

    python tests/reading.py runs/demo        # every RUN_DIR/notebooks/*.ipynb; exit 1 with the findings

Checked in every output of every executed notebook:

- **no cut prompt**: no training prompt of ``04_prompts/prompts.jsonl`` shown cut ("…" or "..." after
  a piece of it), no table cell ending in an ellipsis;
- **no table without its count**: every HTML table is followed by its caption ("21 rows", "20 of 57
  rows shown, 37 more rows — all of them in …");
- **no player without audio**: every ``<audio>`` carries its audio in its own ``src`` (JupyterLab
  strips ``<source src>`` from an untrusted notebook: IPython's ``Audio`` is silent there), not empty,
  and its link to the file resolves from where the notebook lies;
- **labels true**: no "Stable Audio Open 1.0" in an output of a run whose base model is a tiny
  stand-in (``tiny:…``), unless marked "(published)";
- **no frozen progress bar**: no widget progress bar saved as its text ("  0%|");
- **the demo learns** (issue 24): a run on the tiny stand-in whose 07 compared base and fine-tune must
  say the fine-tune moved toward the training clips (``07_evaluate/summary.json``'s ``learning``:
  at least 3 of 4 distances 10 % closer and a lower Fréchet CLAP distance) — the demo's central
  promise, which a lesson cannot keep by wording alone;
- **the demo's variations keep the strength's promise** (issue 29): on the tiny stand-in, each model's
  variations at the lowest strength stay closer to the beat as the model plays it back (06's
  ``variation_closeness``, window by window) than at the highest.
"""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

TABLE_COUNT = re.compile(r"</table>\s*(?:</div>\s*)*<p><i>[^<]*\b\d+ rows?\b")
AUDIO = re.compile(r"<audio\b.*?</audio>(?:\s*<a href=\"[^\"]*\")?", re.S)
AUDIO_SRC = re.compile(r'<audio\b[^>]*\bsrc="([^"]*)"')
LINK = re.compile(r'</audio>\s*<a href="([^"]*)"')
CUT_CELL = re.compile(r"<td>[^<]*(?:\.\.\.|…)</td>")
FROZEN_BAR = re.compile(r"^\s*[^|\n]*:?\s+0%\|\s+\|", re.M)


def _outputs(nb: dict):
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "stream":
                yield i, "stream", "".join(out.get("text", ""))
            for mime, value in (out.get("data") or {}).items():
                if mime.startswith("text/"):
                    yield i, mime, "".join(value) if isinstance(value, list) else str(value)


def _prompts(run_dir: Path) -> list[str]:
    path = run_dir / "04_prompts" / "prompts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tiny_base(run_dir: Path) -> bool:
    gens = run_dir / "06_generate" / "generations.jsonl"
    if gens.is_file():
        for line in gens.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("model") == "base":
                return str(row.get("model_source", "")).startswith("tiny:")
    run_json = run_dir / "run.json"
    return run_json.is_file() and '"tiny:sao"' in run_json.read_text(encoding="utf-8")


def _cut_prompts(text: str, prompts: list[str]) -> list[str]:
    found = []
    for prompt in prompts:
        for n in range(min(len(prompt) - 1, 200), 24, -1):
            head = html.escape(prompt[:n], quote=False)
            if head + "…" in text or head + "..." in text or prompt[:n] + "..." in text:
                found.append(prompt[:n])
                break
    return found


def _players(text: str, nb_dir: Path) -> list[str]:
    """A player plays in JupyterLab untrusted only from the ``<audio>`` element's own ``src``
    (``<source src>`` is stripped); its link to the file, when it has one, must resolve."""
    problems = []
    for player in AUDIO.findall(text):
        src = AUDIO_SRC.search(player)
        if src is None:
            problems.append("no src on the <audio> element (JupyterLab strips <source src> untrusted)")
        elif src.group(1).startswith("data:"):
            if len(base64.b64decode(src.group(1).split(",", 1)[1] or "", validate=False)) < 100:
                problems.append("its embedded audio is empty")
        elif not (nb_dir / unquote(html.unescape(src.group(1)))).is_file():
            problems.append(f"its file does not resolve from the notebook: {src.group(1)}")
        link = LINK.search(player)
        if link and not (nb_dir / unquote(html.unescape(link.group(1)))).is_file():
            problems.append(f"its link does not resolve from the notebook: {link.group(1)}")
    return problems


def read_notebook(path: Path, run_dir: Path, prompts: list[str] | None = None, tiny: bool | None = None) -> list[str]:
    """The findings of one executed notebook (empty: a producer trips on nothing here)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    prompts = _prompts(run_dir) if prompts is None else prompts
    tiny = _tiny_base(run_dir) if tiny is None else tiny
    found = []
    for i, mime, text in _outputs(nb):
        where = f"{Path(path).name} cell {i} ({mime})"
        for cut in _cut_prompts(text, prompts):
            found.append(f"{where}: a prompt cut with an ellipsis: {cut[:60]!r}…")
        if mime == "text/html":
            if CUT_CELL.search(text):
                found.append(f"{where}: a table cell cut with an ellipsis: {CUT_CELL.search(text).group(0)[:80]}")
            n_tables = text.count("<table")
            if n_tables and len(TABLE_COUNT.findall(text)) < n_tables:
                found.append(f"{where}: a table without its count of rows")
            found += [f"{where}: a player: {p}" for p in _players(text, Path(path).parent)]
        if tiny and re.search(r"Stable Audio Open 1\.0(?! \(published\))", text):
            found.append(f"{where}: 'Stable Audio Open 1.0' beside a tiny stand-in")
        if mime == "text/plain" and FROZEN_BAR.search(text):  # a widget bar saved as its text
            found.append(f"{where}: a progress bar frozen at 0 %: {FROZEN_BAR.search(text).group(0).strip()!r}")
    return found


def read_learning(run_dir: Path) -> list[str]:
    """A finding when a demo run's 07 compared base and fine-tune and did not see the fine-tune learn."""
    from stablebeat_utils import layout

    path = Path(run_dir) / layout.EVALUATE / layout.SUMMARY_JSON
    if not _tiny_base(Path(run_dir)) or not path.is_file():
        return []
    rec = json.loads(path.read_text(encoding="utf-8")).get("learning")
    if not rec or rec.get("shows_learning"):
        return []
    from stablebeat_utils.evaluate_report import LEARNING_MIN_DROP, LEARNING_MIN_METRICS

    f = rec.get("frechet") or {}
    return [
        f"{path}: the demo's fine-tune did not move toward the demo beats: {len(rec.get('closer') or [])} of "
        f"{len(rec.get('metrics') or {})} distances {100 * LEARNING_MIN_DROP:.0f} % closer ({LEARNING_MIN_METRICS} "
        f"needed), Fréchet CLAP {f.get('base')} -> {f.get('finetune')} (must fall)"
    ]


def read_variations(run_dir: Path) -> list[str]:
    """A finding per model when a demo run's 06 variations do not stay closer to the beat at the low strength."""
    from stablebeat_utils import generate, layout

    if not _tiny_base(Path(run_dir)):
        return []
    table = generate.closeness_table(generate.load_variations(str(run_dir)))
    if not len(table) or set(table["reference"]) != {"playback"} or "model" not in table.columns:
        return []
    found = []
    for which, t in table.groupby("model", sort=False):
        means = t.groupby("strength")["distance"].mean().sort_index()
        lo, hi = means.index[0], means.index[-1]
        if lo != hi and not means[lo] < means[hi]:
            found.append(
                f"{Path(run_dir) / layout.GENERATE / layout.VARIATIONS_TABLE}: the demo's {which} variations do not "
                f"stay closer to the beat at strength {lo:g} ({means[lo]:.2f}) than at {hi:g} ({means[hi]:.2f})"
            )
    return found


def read_run(run_dir: Path) -> list[str]:
    run_dir = Path(run_dir)
    notebooks = sorted((run_dir / "notebooks").glob("*.ipynb"))
    if not notebooks:
        return [f"{run_dir}/notebooks: no executed lesson to read"]
    prompts, tiny = _prompts(run_dir), _tiny_base(run_dir)
    found = [f for nb in notebooks for f in read_notebook(nb, run_dir, prompts, tiny)]
    return found + read_learning(run_dir) + read_variations(run_dir)


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0] if argv else "runs/demo")
    found = read_run(run_dir)
    n = len(list((run_dir / "notebooks").glob("*.ipynb")))
    for f in found:
        print("reading:", f)
    print(f"reading: {n} executed lessons of {run_dir}, {len(found)} finding(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
