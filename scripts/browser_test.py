"""06_generate in a real browser: JupyterLab + headless Chromium (``make browser-test``).

What a producer does, checked the way they would see it:

1. papermill executes a copy of 06 beside the run folder (as ``make demo`` does): an executed
   notebook opens **untrusted** in JupyterLab, which strips ``data:`` audio from its HTML;
2. JupyterLab opens that copy: every player of the audio grid must have a playable source (its
   ``duration`` read by the browser, after the link relative to the notebook was followed);
3. *Run All Cells*: the playground widget must render (not the text ``VBox(children=…``);
4. *Generate* (base model): players must appear with audio; one is played;
5. *Save take*: the status says where, and ``takes.jsonl`` has the rows and the WAVs exist;
6. *Cut loops*: the loop's file exists (or the reason there is none is shown); *Blind round*: the
   players come without names, *A sounds best* records a line in ``blind.jsonl`` and the status
   shows the running tally with its 95 % interval (needs the run's fine-tune, as ``make test`` makes).

A screenshot of each step is kept in ``--out`` (CI keeps them as artefacts). Exit 1 with the reason
when the widget does not render or a player has no audio. Needs Debian's ``chromium`` and
``chromium-driver`` and, in the venv, ``jupyterlab`` and ``selenium`` (``scripts/browser_setup.sh``).

    python scripts/browser_test.py [--run-dir notebooks/runs/demo] [--out runs/browser-test]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# as the machine's notes say: no background networking (this machine has no network), a fresh profile
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1400,1800",
]


class Failed(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_run_dir() -> Path:
    for cand in (REPO / "notebooks" / "runs" / "demo", REPO / "runs" / "demo"):
        if (cand / "04_prompts" / "prompts.jsonl").is_file():
            return cand
    raise Failed("no run folder with 04's prompts: run `make test` or `make demo` first (or give --run-dir)")


def prepare_notebook(run_dir: Path, work: Path) -> Path:
    """06 with ``run_dir`` pointing at the run folder relative to ``work``, executed there by papermill."""
    import papermill as pm

    work.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(run_dir, work)
    out = work / "06_generate.ipynb"
    pm.execute_notebook(
        str(REPO / "notebooks" / "06_generate.ipynb"),
        str(out),
        parameters={"run_dir": rel},
        cwd=str(work),
        progress_bar=False,
        kernel_name="python3",
    )
    return out


def start_lab(port: int, token: str, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={REPO}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.disable_check_xsrf=True",
        "--allow-root",  # CI runs as root
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(log.parent / "jupyter-runtime"))
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=env)
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise Failed(f"JupyterLab did not start: see {log}")
            time.sleep(1)
    raise Failed(f"JupyterLab did not listen on port {port} within 2 minutes: see {log}")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(
        f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp')) / ('chromium-' + secrets.token_hex(4))}"
    )
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait(driver, test, timeout: float, what: str, shots: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = test(driver)
        except Exception:  # noqa: BLE001 — elements come and go while JupyterLab renders
            got = None
        if got:
            return got
        time.sleep(0.5)
    if shots is not None:
        driver.save_screenshot(str(shots / "timeout.png"))
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")


# JS: load every <audio> in the notebook's outputs and report what the browser could play
AUDIO_STATE_JS = """
const done = arguments[arguments.length - 1];
const sel = arguments[0], blobOnly = arguments[1];
const players = Array.from(document.querySelectorAll(sel)).filter(a => !blobOnly || a.src.startsWith('blob:'));
Promise.all(players.map(a => new Promise(res => {
  const report = () => res({duration: a.duration, src: a.currentSrc, error: a.error && a.error.code,
                            sources: Array.from(a.querySelectorAll('source')).map(s => s.getAttribute('src') || '')});
  if (a.readyState >= 1 && isFinite(a.duration)) return report();
  a.addEventListener('loadedmetadata', report, {once: true});
  a.addEventListener('error', report, {once: true});
  const last = a.querySelector('source:last-of-type');
  if (last) last.addEventListener('error', report, {once: true});
  setTimeout(report, 15000);
  a.preload = 'metadata'; a.load();
}))).then(done);
"""


def audio_states(driver, selector: str, blob_only: bool = False) -> list[dict]:
    """What the browser could load of each player (``blob_only``: the widgets' players, whose audio
    the kernel sent as bytes)."""
    driver.set_script_timeout(60)
    return driver.execute_async_script(AUDIO_STATE_JS, selector, blob_only)


def check_players(states: list[dict], what: str, expect: int | None = None) -> None:
    if not states:
        raise Failed(f"{what}: no audio player found")
    if expect is not None and len(states) < expect:
        raise Failed(f"{what}: {len(states)} players, expected {expect}")
    silent = [s for s in states if not (isinstance(s["duration"], (int, float)) and s["duration"] > 0)]
    if silent:
        raise Failed(f"{what}: {len(silent)} of {len(states)} players have no audio: {json.dumps(silent)[:600]}")


def click_menu(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{menu}']").click()
    wait(
        driver,
        lambda d: d.find_element(By.XPATH, f"//div[contains(@class,'lm-Menu-itemLabel') and text()='{item}']"),
        10,
        f"menu item {item}",
    ).click()


def button(driver, text: str):
    from selenium.webdriver.common.by import By

    for b in driver.find_elements(By.CSS_SELECTOR, "button.jupyter-button, button.widget-button"):
        if b.text.strip() == text and b.is_displayed():
            return b
    return None


def music_tools(driver, run_dir: Path, timeout: float, shots: Path) -> dict:
    """After a take: *Cut loops* (a loop file, or the reason there is none), then one *Blind round*
    played and picked (a new line in blind.jsonl, and the running tally with its 95 % interval)."""
    from selenium.webdriver.common.by import By

    def html_with(*needles):
        return lambda d: [
            e for e in d.find_elements(By.CSS_SELECTOR, ".widget-html-content") if any(n in e.text for n in needles)
        ]

    def press(text: str) -> None:
        b = wait(driver, lambda d: button(d, text), 30, f"the {text!r} button", shots)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", b)
        b.click()

    press("Cut loops")
    loop = wait(driver, html_with("06_generate/takes/loops/", "no loop:"), timeout, "the take's loop", shots)[0].text
    if "06_generate/takes/loops/" in loop:
        path = run_dir / loop.split(": ", 1)[1].split(" — ")[0].strip()
        if not path.is_file():
            raise Failed(f"Cut loops showed {loop!r} but {path} is not there")
    blind_file = run_dir / "06_generate" / "blind.jsonl"
    before = len(blind_file.read_text().splitlines()) if blind_file.is_file() else 0
    press("Blind round")
    wait(
        driver,
        lambda d: button(d, "A sounds best") or html_with("No blind round", "Could not play")(d),
        timeout,
        "a blind round",
        shots,
    )
    if button(driver, "A sounds best") is None:
        raise Failed(f"no blind round: {html_with('No blind round', 'Could not play')(driver)[0].text}")
    driver.save_screenshot(str(shots / "5-blind-round.png"))
    press("A sounds best")
    tally = wait(driver, html_with("so far:"), 60, "the blind tally", shots)[0].text
    rows = blind_file.read_text().splitlines() if blind_file.is_file() else []
    if "95 % interval" not in tally or len(rows) != before + 1:
        raise Failed(f"the pick was not recorded and counted: {tally!r}, {len(rows) - before} new rows")
    driver.save_screenshot(str(shots / "6-blind-picked.png"))
    return {"loop": loop, "blind_tally": tally, "blind_rounds": len(rows)}


def run(run_dir: Path, out: Path, timeout: float) -> dict:
    from selenium.webdriver.common.by import By

    shots = out / "screenshots"
    shutil.rmtree(out, ignore_errors=True)
    shots.mkdir(parents=True)
    work = out / "lab"
    print(f"browser test: executing 06 beside {run_dir} (papermill) …", flush=True)
    nb = prepare_notebook(run_dir, work)
    takes_file = run_dir / "06_generate" / "takes.jsonl"
    takes_before = len(takes_file.read_text().splitlines()) if takes_file.is_file() else 0

    port, token = _free_port(), secrets.token_hex(16)
    lab = start_lab(port, token, out / "jupyterlab.log")
    driver = None
    try:
        driver = browser()
        url = f"http://127.0.0.1:{port}/lab/tree/{nb.relative_to(REPO).as_posix()}?token={token}"
        driver.get(url)
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120, "the notebook", shots)
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output audio"), 60, "players", shots)
        time.sleep(2)
        driver.save_screenshot(str(shots / "1-executed-copy-untrusted.png"))
        grid = audio_states(driver, ".jp-OutputArea-output audio")
        check_players(grid, "the executed copy (untrusted)")
        print(f"  executed copy: {len(grid)} players, all with audio ({grid[0]['src'][:60]}…)", flush=True)

        click_menu(driver, "Run", "Run All Cells")
        gen = wait(driver, lambda d: button(d, "Generate"), timeout, "the playground's Generate button", shots)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", gen)
        text_repr = driver.find_elements(By.XPATH, "//pre[contains(text(), 'VBox(children=')]")
        if text_repr:
            raise Failed("the playground shows as text (VBox(children=…)), not as a widget")
        driver.save_screenshot(str(shots / "2-playground.png"))
        labels = driver.execute_script(
            "return Array.from(document.querySelectorAll('.widget-label')).filter(l => l.offsetParent !== null)"
            ".map(l => ({text: l.textContent.trim(), cut: l.scrollWidth > l.clientWidth + 1}))"
        )
        shown = {lab["text"] for lab in labels}
        missing = [t for t in ("Steps", "CFG", "Seed (-1: random)", "Duration (s)") if t not in shown]
        if missing:
            raise Failed(f"the playground does not show {missing} (shown: {sorted(shown)})")
        cut = [lab["text"] for lab in labels if lab["cut"]]
        if cut:
            raise Failed(f"labels cut in the playground: {cut}")

        base = wait(
            driver,
            lambda d: [
                b for b in d.find_elements(By.CSS_SELECTOR, ".widget-toggle-button") if b.text.strip() == "base"
            ],
            10,
            "the model choice",
        )
        base[0].click()
        gen.click()
        status = wait(
            driver,
            lambda d: [
                e
                for e in d.find_elements(By.CSS_SELECTOR, ".widget-html-content")
                if "Done in" in e.text or "Could not" in e.text or "No fine-tuned" in e.text
            ],
            timeout,
            "the playground's generation",
            shots,
        )[0].text
        if "Done in" not in status:
            raise Failed(f"the playground did not generate: {status}")
        takes = audio_states(driver, "audio", blob_only=True)
        check_players(takes, "the playground's takes")
        played = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const a = Array.from(document.querySelectorAll('audio')).find(x => x.src.startsWith('blob:'));"
            "a.muted = true; a.play().then(() => setTimeout(() => done(a.currentTime), 1500), e => done(String(e)));"
        )
        if not (isinstance(played, (int, float)) and played > 0):
            raise Failed(f"a take did not play: {played}")
        driver.save_screenshot(str(shots / "3-generated.png"))

        save = button(driver, "Save take")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", save)
        save.click()
        saved = wait(
            driver,
            lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".widget-html-content") if "Saved:" in e.text],
            60,
            "the saved take",
            shots,
        )[0].text
        driver.save_screenshot(str(shots / "4-saved.png"))
        rows = [json.loads(line) for line in takes_file.read_text().splitlines()] if takes_file.is_file() else []
        new = rows[takes_before:] or [r for r in rows if r["path"] in saved]
        if not new or not all((run_dir / r["path"]).is_file() for r in new):
            raise Failed(f"Save take said {saved!r} but takes.jsonl has no new row with its WAV")
        music = music_tools(driver, run_dir, timeout, shots)
        return {
            **music,
            "executed_copy_players": len(grid),
            "take_players": len(takes),
            "played_seconds": played,
            "saved": [r["path"] for r in new],
            "status": status,
            "screenshots": sorted(p.name for p in shots.glob("*.png")),
        }
    finally:
        if driver is not None:
            driver.quit()
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "browser-test")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for Run All and for a generation")
    args = ap.parse_args(argv)
    try:
        for tool in (CHROMIUM, CHROMEDRIVER):
            if not Path(tool).is_file():
                raise Failed(f"{tool} is missing: bash scripts/browser_setup.sh")
        run_dir = (args.run_dir or _default_run_dir()).resolve()
        result = run(run_dir, args.out.resolve(), args.timeout)
    except Failed as exc:
        print(f"browser test FAILED: {exc} (screenshots in {args.out / 'screenshots'})", file=sys.stderr)
        return 1
    print("browser test passed:", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
