"""The generation playground of notebook 06_generate: type or build a prompt, generate, listen, compare.

``build(P)`` returns a :class:`Playground` (display it in a notebook); its callbacks are plain
methods — :meth:`Playground.generate` and :meth:`Playground.save_take` — so tests drive them
without a browser. Every problem (an empty prompt, a duration longer than the model's window, a
missing checkpoint, an engine error) ends as a message in the status line, never as a traceback.

Models are loaded on the first Generate and kept for the session (one process-wide cache, so
re-running the cell does not reload them). A LoRA fine-tune is applied onto the base model once;
its strength slider drives stable-audio-tools' ``set_lora_strength`` at each generation, and the
base model is the same network at strength 0 (exactly the base weights), so A/B needs one model.

Saved takes go to ``RUN_DIR/06_generate/takes/<take_id>.wav`` with a row in ``takes.jsonl``.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import random
import time
from dataclasses import dataclass, field

import numpy as np

from . import layout
from . import generate as gen
from .runs import JsonlLog, Run

log = logging.getLogger(__name__)

KEYS = ("", "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = ("minor", "major")
CHOICES = ("base", "fine-tune", "A/B")
FOCUS_CHOICES = ("05b focus", "all three")  # when 05b_focus exported a second stage
_WHICH = {
    "base": ["base"],
    "fine-tune": ["finetune"],
    "A/B": ["base", "finetune"],
    "05b focus": ["focus"],
    "all three": ["base", "finetune", "focus"],
}
LABELS = {"base": "base", "finetune": "fine-tune", "focus": "05b focus"}
LABEL_WIDTH = "11em"  # the longest label, "Seed (-1: random)", whole


def _tip(widget, text: str):
    """A tooltip (hover text): ``tooltip`` on ipywidgets 8, ``description_tooltip`` on Colab's 7.7."""
    if "tooltip" in widget.trait_names():
        widget.tooltip = text
    else:
        widget.description_tooltip = text
    return widget


def as_typed(value: float, step: float) -> float:
    """A slider's float as the producer set it: 3.5, not 3.5000000000000004 (the slider's step arithmetic)."""
    decimals = max(0, -int(np.floor(np.log10(step)))) if 0 < step < 1 else 0
    return round(float(value), decimals + 2)


def steps_range(steps: int) -> int:
    """The Steps slider's maximum: room above the profile's steps (the demo's 8 is not at the far left of
    1–500), the card's 200 up to 500."""
    return int(max(50, min(500, 2.5 * max(1, steps))))


_CACHE: dict[tuple, tuple] = {}  # (kind, source, lora, device, dtype) -> (model, config)


# -- the prompt builder (pure, tested on its own) ---------------------------------------------


def _figure(value) -> str:
    """A distance for a message: two decimals, or "—" when there was nothing to measure."""
    return "—" if value is None else f"{value:.2f}"


def _join(items: list[str], last: str = "and") -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {last} {items[1]}"
    return ", ".join(items[:-1]) + f", {last} {items[-1]}"


def build_prompt(
    genre: str = "", moods=(), instruments=(), bpm: int | None = None, key: str = "", scale: str = ""
) -> str:
    """A prompt in the card's format: "A melancholic and dark cloud trap beat at 110 BPM in G minor,
    using synth bells, plucked bass, and deep sub." Empty pickers are left out."""
    moods, instruments = list(moods or ()), list(instruments or ())
    head = " ".join(p for p in (_join(moods), genre or "", "beat") if p)
    article = "An" if head[:1].lower() in "aeiou" else "A"
    text = f"{article} {head}"
    if bpm:
        text += f" at {int(bpm)} BPM"
    if key:
        text += f" in {key} {scale}".rstrip()
    if instruments:
        text += f", using {', '.join(instruments[:-1]) + ', and ' + instruments[-1] if len(instruments) > 2 else _join(instruments)}"
    return text + "."


def vocabulary() -> dict[str, list[str]]:
    """Tag lists for the pickers, from the tagging vocabularies (02_tag's loader)."""
    from . import tag

    return {family: [e.tag for e in entries] for family, entries in tag.load_vocab().items()}


# -- results ----------------------------------------------------------------------------------


@dataclass
class Take:
    """One generated clip, kept in memory until saved."""

    model: str  # "base", "finetune" or "focus" (05b_focus's second stage)
    audio: np.ndarray
    sr: int
    prompt: str
    seed: int
    settings: dict
    source: str
    lora_strength: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def take_id(self) -> str:
        recipe = json.dumps([self.prompt, self.settings, self.source, self.lora_strength], sort_keys=True)
        return f"{self.model}-seed{self.seed}-{hashlib.sha1(recipe.encode()).hexdigest()[:8]}"


class _FromModelToMusic:
    """The playground's tools for a producer (issue 29), kept apart from its core controls.

    - **Loops**: *Cut loops* cuts a bar-aligned, click-free loop from each take at the prompt's
      BPM (:mod:`stablebeat_utils.loops`) into ``06_generate/takes/loops/``.
    - **Variations of your beat**: *Vary my beat* starts the sampler from one of your clips (a
      ``clip_id`` of 04_prompts, an audio file, or ``auto`` = 04's first clip) with noise set by
      the strength slider, with the model(s) chosen above; the result is a take like any other.
    - **Blind test**: *Blind round* generates the prompt with every model (base, fine-tune, and
      05b's second stage when exported) from the same seed and plays them as A, B (, C) in random
      order; the pick is appended to ``06_generate/blind.jsonl`` (one fsynced line per round, so
      it survives a kernel restart) before the names are shown. After each pick the status shows
      every model's preference rate so far with its 95 % interval, and 07's report (when 07 has
      run) has its blind-listening section rewritten from the record: no need to run 07 again.
    """

    def _music_widgets(self, W, style: dict) -> None:
        wide = W.Layout(width="36em")
        self.loop_bars = W.Dropdown(options=[1, 2, 4, 8], value=4, description="Loop bars", style=style)
        self.loop_button = W.Button(description="Cut loops", icon="repeat", disabled=True)
        self.loop_out = W.VBox()
        self.init_clip = W.Text(value="auto", description="Your clip", style=style, layout=wide)
        self.var_strength = W.FloatSlider(
            value=0.3, min=0.05, max=1.0, step=0.05, description="Variation strength", style=style, layout=wide
        )
        self.var_button = W.Button(description="Vary my beat", icon="random")
        self.blind_button = W.Button(description="Blind round", icon="eye-slash")
        self.blind_players = W.HBox()
        self.blind_picks = W.HBox()
        self.blind_status = W.HTML(self._tally_so_far())
        self._blind: dict | None = None
        self._rng = random.Random()
        self.loop_button.on_click(self.cut_loops)
        self.var_button.on_click(self.vary)
        self.blind_button.on_click(self.blind_round)

    def _tally_so_far(self) -> str:
        """The running tally of earlier sessions' blind rounds (read only), for when the playground opens."""
        from . import evaluate_report

        try:
            pref = evaluate_report.blind_preference(str(self.run.root))
        except (OSError, ValueError) as exc:  # a damaged record: said, never a traceback
            return html.escape(f"The blind-test record cannot be read: {exc}")
        return html.escape(evaluate_report.tally_line(pref)) if pref else ""

    def _music_layout(self, W):
        return W.VBox(
            [
                W.HTML("<b>Loops</b> — bar-aligned, click-free, at the prompt's BPM"),
                W.HBox([self.loop_bars, self.loop_button]),
                self.loop_out,
                W.HTML("<b>Variations of your own beat</b>"),
                self.init_clip,
                self.var_strength,
                self.var_button,
                W.HTML("<b>Blind test</b> — which model do your ears prefer?"),
                self.blind_button,
                self.blind_players,
                self.blind_picks,
                self.blind_status,
            ]
        )

    # -- loops --------------------------------------------------------------------------------
    def cut_loops(self, _button=None) -> list[dict] | None:
        """Loops of the current takes into ``06_generate/takes/loops/``; their rows (or None and a message)."""
        import ipywidgets as W

        from . import clipfacts, loops

        if not self.takes:
            self.loop_out.children = (W.HTML("Nothing to loop yet: generate first."),)
            return None
        rows, boxes = [], []
        for t in self.takes:
            loop = loops.cut_loop(t.audio, t.sr, clipfacts.parse_bpm(t.prompt), int(self.loop_bars.value))
            row = {"take_id": t.take_id, **loops.loop_row(loop), "path": None}
            if loop.audio is not None:
                name = loops.loop_name(t.take_id, loop, clipfacts.parse_key(t.prompt))
                path = self.run.stage_dir(gen.STAGE) / "takes" / layout.LOOPS / name
                loops.write_loop(path, loop)
                row["path"] = self.run.rel(path)
            rows.append(row)
            what = row["path"] or f"no loop: {row['reason']}"
            flag = f" — ⚠ tempo: {row['tempo_note']}" if row.get("tempo_flagged") and row["path"] else ""
            boxes.append(W.HTML(f"{html.escape(t.model)}: {html.escape(what)}{html.escape(flag)}"))
        self.loop_out.children = tuple(boxes)
        return rows

    # -- variations ---------------------------------------------------------------------------
    def vary(self, _button=None) -> list[Take] | None:
        """A variation of the producer's clip with the chosen model(s); the takes (or None and a message)."""
        try:
            return self._vary()
        except (gen.GenerateError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            log.debug("playground variation failed", exc_info=True)
            self._say(f"Could not make a variation: {exc}", "error")
        except Exception as exc:  # noqa: BLE001 — a playground never shows a traceback
            log.debug("playground variation failed", exc_info=True)
            self._say(f"Could not make a variation ({type(exc).__name__}): {exc}", "error")
        return None

    def _vary(self) -> list[Take] | None:
        prompt = self.prompt_text()
        if not prompt:
            self._say("The prompt is empty: describe what the variation should become.", "error")
            return None
        source, message = gen.find_variation_source(str(self.run.root), self.init_clip.value.strip(), [prompt])
        if source is None:
            self._say(message, "error")
            return None
        settings, seed = self._settings(), self._seed()
        gen.check_settings(settings)
        which = {"base": ["base"], "fine-tune": ["finetune"], "A/B": ["base", "finetune"]}[self.choice.value]
        spec, ft_message = self._finetune()
        if spec is None and "finetune" in which:
            self._say(f"No fine-tuned model to use: {ft_message}", "error")
            return None
        takes, notes = [], []
        for w in which:
            model, config, src, strength = self._load(w, spec)
            init, notes = gen.load_init_audio(source["path"], int(config["sample_rate"]), gen.max_seconds(config))
            self._say(f"Varying {source['path']} with the {w} model (strength {self.var_strength.value:g})…")
            audio, info = gen.generate_variation(
                model, config, init, prompt, seed, settings, float(self.var_strength.value), self._device()[0]
            )
            heard = gen.playback(model, config, init, self._device()[0])
            info.update(gen.measure_variation(init, heard, audio, int(config["sample_rate"])))
            info.update(init_audio=str(source["path"]), strength=float(self.var_strength.value))
            s = {**settings.as_dict(), "seconds_total": info["seconds_total"], "variation_of": str(source["path"])}
            takes.append(Take(w, audio, int(config["sample_rate"]), prompt, seed, s, src, strength, info))
        self.takes = takes
        self._show(takes)
        self.save_button.disabled = False
        self.loop_button.disabled = False
        dist = ", ".join(f"{t.model} {t.info['distance']:.2f}" for t in takes)
        moved = ", ".join(f"{t.model} {_figure(t.info['playback_distance'])}" for t in takes)
        conv = f" ({'; '.join(notes)})" if notes else ""
        self._say(
            f"Variation of {source['path']}{conv} — distance from it on 07's metrics: {dist}; from it as the model "
            f"plays it back, moment by moment: {moved} (low strength: small; high strength: large).",
            "ok",
        )
        return takes

    # -- blind test ---------------------------------------------------------------------------
    def _blind_models(self) -> list[str]:
        from . import focus

        spec, _ = self._finetune()
        return ["base"] + (["finetune"] if spec else []) + (["focus"] if focus.for_generation(self.run.root)[0] else [])

    def _load_any(self, which: str, spec) -> tuple:
        """``_load`` for base and fine-tune; 05b's second stage (a whole model) cached the same way."""
        if which != "focus":
            return self._load(which, spec)
        from . import focus

        path = str(focus.for_generation(self.run.root)[0])
        dev, dtype = self._device()
        key = ("full", path, None, dev, str(dtype), self.P.get("t5_model", ""))
        if key not in _CACHE:
            _CACHE[key] = gen.load_model(path, dev, dtype, self.P.get("t5_model", ""))
        model, config = _CACHE[key]
        return model, config, path, None

    def blind_round(self, _button=None) -> list[str] | None:
        """Generate with every model, same prompt and seed, and play them as A, B (, C) in random order."""
        try:
            return self._blind_round()
        except Exception as exc:  # noqa: BLE001 — a message, never a traceback
            log.debug("blind round failed", exc_info=True)
            self.blind_status.value = (
                f"<span style='color:#b00020'>Could not play a blind round: {html.escape(str(exc))}</span>"
            )
        return None

    def _blind_round(self) -> list[str] | None:
        import ipywidgets as W
        from IPython.display import Audio

        models = self._blind_models()
        prompt = self.prompt_text()
        if len(models) < 2 or not prompt:
            why = "the prompt is empty" if not prompt else "there is no fine-tune to compare with (run 05_train)"
            self.blind_status.value = f"<span style='color:#b00020'>No blind round: {why}.</span>"
            return None
        settings, seed = self._settings(), self._seed()
        gen.check_settings(settings)
        spec, _ = self._finetune()
        order = self._rng.sample(models, len(models))
        labels = [chr(ord("A") + i) for i in range(len(order))]
        players = []
        for label, which in zip(labels, order):
            model, config, _src, _ = self._load_any(which, spec)
            ((audio, _info),) = gen.generate_audio(model, config, [prompt], seed, settings, self._device()[0])
            wav = Audio(np.clip(audio, -1, 1), rate=int(config["sample_rate"]), normalize=False).data
            players.append(W.VBox([W.HTML(f"<b>{label}</b>"), W.Audio(value=wav, format="wav", autoplay=False)]))
        self._blind = {"prompt": prompt, "seed": seed, "settings": settings.as_dict(), "order": order, "labels": labels}
        self.blind_players.children = tuple(players)
        buttons = []
        for label in labels:
            b = W.Button(description=f"{label} sounds best")
            b.on_click(lambda _b, _l=label: self.blind_choose(_l))
            buttons.append(b)
        self.blind_picks.children = tuple(buttons)
        self.blind_status.value = "Listen to each, then pick the one you prefer. The names are shown after your pick."
        return labels

    def blind_choose(self, label: str) -> dict | None:
        """Record the pick of ``label`` (appended to ``06_generate/blind.jsonl``), then reveal the names."""
        import uuid

        if not self._blind or label not in self._blind["labels"]:
            self.blind_status.value = "Play a blind round first."
            return None
        b, self._blind = self._blind, None
        row = {
            "round_id": uuid.uuid4().hex,
            **b,
            "choice_label": label,
            "choice": b["order"][b["labels"].index(label)],
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        JsonlLog(self.run.stage_dir(gen.STAGE) / gen.BLIND_FILE, key="round_id").append(row)
        for btn in self.blind_picks.children:
            btn.disabled = True
        names = ", ".join(f"{lab} = {m}" for lab, m in zip(b["labels"], b["order"]))
        tally = self.blind_tally()
        self.blind_status.value = html.escape(f"You picked {label}: {row['choice']} ({names}). {tally['line']}") + (
            " 07's report is updated." if tally["report_updated"] else " 07's report will count them."
        )
        return row

    def blind_tally(self) -> dict:
        """The rounds recorded so far in the run folder (any session), each model's preference rate with
        its 95 % interval, and 07's report brought up to date when 07 has run.

        ``{"rounds", "chosen": {model: n}, "preference": blind_preference's dict, "line", "report_updated"}``.
        """
        from . import evaluate_report

        updated = True
        try:
            pref = evaluate_report.refresh_blind(str(self.run.root))  # 07's section rewritten from the record
        except (OSError, ValueError) as exc:  # 07's files unreadable: the tally still counts, the report waits
            log.warning("07's report not updated with the blind rounds: %s", exc)
            pref, updated = evaluate_report.blind_preference(str(self.run.root)), False
        report = self.run.path(layout.EVALUATE, layout.REPORT)
        return {
            "rounds": pref["rounds"] if pref else 0,
            "chosen": {m: v["chosen"] for m, v in (pref or {"models": {}})["models"].items()},
            "preference": pref,
            "line": evaluate_report.tally_line(pref),
            "report_updated": updated and bool(pref) and report.is_file(),
        }


class Playground(_FromModelToMusic):
    """The widgets, and the two callbacks. ``Playground(P)`` with the notebook's parameters."""

    def __init__(self, P: dict):
        import ipywidgets as W

        self.P = dict(P)
        self.run = Run(self.P.get("run_dir", "runs/demo"))
        self.takes: list[Take] = []
        style = {"description_width": LABEL_WIDTH}
        self._prompt_widgets(W, style)
        self._setting_widgets(W, style)
        self._output_widgets(W)
        self._music_widgets(W, style)
        self._connect()
        self.widget = self._layout(W)

    def _prompt_widgets(self, W, style: dict) -> None:
        """Free text, or the builder (genre, moods, instruments, BPM, key) with its preview."""
        vocab = vocabulary()
        self.mode = W.ToggleButtons(
            options=["free text", "builder"],
            value="free text",
            description="Prompt",
            style=style,
            tooltips=["Type the prompt yourself", "Build it from the tags the course trains on"],
        )
        self.prompt = W.Textarea(
            value=gen.card_prompts()[0], placeholder="Describe the beat…", layout=W.Layout(width="44em", height="4.5em")
        )
        _tip(self.mode, "How to write the prompt: free text, or picked from the tagging vocabularies")
        _tip(self.prompt, "The prompt, in the card's style: mood, genre, tempo, key, instruments")
        self.genre = W.Dropdown(options=[""] + vocab["genres"], value="", description="Genre", style=style)
        self.moods = W.SelectMultiple(options=vocab["moods"], rows=5, description="Moods", style=style)
        self.instruments = W.SelectMultiple(
            options=vocab["instruments"], rows=5, description="Instruments", style=style
        )
        self.bpm = W.IntSlider(value=110, min=50, max=200, description="BPM", style=style)
        self.key = W.Dropdown(options=list(KEYS), value="", description="Key", style=style)
        self.scale = W.Dropdown(options=list(SCALES), value="minor", description="Scale", style=style)
        self.preview = W.HTML()
        for w, tip in (
            (self.genre, "One genre (02_tag's genre vocabulary); empty: none"),
            (self.moods, "Moods: Ctrl/Cmd-click to pick several"),
            (self.instruments, "Instruments: Ctrl/Cmd-click to pick several"),
            (self.bpm, "Tempo in beats per minute, written into the prompt"),
            (self.key, "Key, written into the prompt; empty: none"),
            (self.scale, "Minor or major (with a key)"),
        ):
            _tip(w, tip)
        self.builder = W.VBox(
            [self.genre, self.moods, self.instruments, self.bpm, W.HBox([self.key, self.scale]), self.preview]
        )
        self.builder.layout.display = "none"

    def _setting_widgets(self, W, style: dict) -> None:
        """Steps, CFG, seed, duration, which model(s), LoRA strength: from the notebook's parameters."""

        def wide():  # one Layout each: a shared one would hide Steps and CFG with the strength slider
            return W.Layout(width="36em")

        steps = int(self.P.get("steps", 200))
        self.steps = W.IntSlider(
            value=steps, min=1, max=steps_range(steps), description="Steps", style=style, layout=wide()
        )
        self.cfg = W.FloatSlider(
            value=float(self.P.get("cfg_scale", 7.0)),
            min=0.0,
            max=15.0,
            step=0.5,
            description="CFG",
            style=style,
            layout=wide(),
        )
        self.seed = W.IntText(value=int(self.P.get("seed", 42)), description="Seed (-1: random)", style=style)
        self.duration = W.BoundedFloatText(
            value=float(self.P.get("seconds_total", 47.0)),
            min=0.0,
            max=3600.0,
            step=1.0,
            description="Duration (s)",
            style=style,
        )
        self.focus_path = self._focus_path()
        choices = list(CHOICES) + (list(FOCUS_CHOICES) if self.focus_path else [])
        self.choice = W.ToggleButtons(
            options=choices,
            value="A/B",
            description="Model",
            style=style,
            tooltips=[
                {
                    "base": "Stable Audio Open as published (or the profile's base model)",
                    "fine-tune": "Your fine-tune (05_train's export)",
                    "A/B": "Base and fine-tune, same seed: any difference comes from the training",
                    "05b focus": "The second stage on rare tags (05b_focus's export)",
                    "all three": "Base, fine-tune and 05b focus, same seed",
                }[c]
                for c in choices
            ],
        )
        self.strength = W.FloatSlider(
            value=float(self.P.get("lora_strength", 1.0)),
            min=0.0,
            max=2.0,
            step=0.05,
            description="LoRA strength",
            style=style,
            layout=wide(),
        )
        for w, tip in (
            (self.steps, "Sampler steps: more is slower and cleaner (the card: 200; the demo profile: a few)"),
            (self.cfg, "Guidance (CFG): how closely to follow the prompt; 1 = not at all, the card's 7 = closely"),
            (self.seed, "The starting noise: the same seed gives the same beat; -1 draws a new one"),
            (self.duration, "Seconds of music (at most the model's 47.5-s window); the rest is trimmed"),
            (self.choice, "Which model(s) to generate with"),
            (self.strength, "LoRA only: 0 = the base model, 1 = the fine-tune as trained, above 1 = exaggerated"),
        ):
            _tip(w, tip)
        # the strength slider only where it does something: a LoRA fine-tune
        self.strength.layout.display = None if self._is_lora() else "none"

    def _output_widgets(self, W) -> None:
        """The Generate button and its progress, the status line, the players, the Save button."""
        self.button = W.Button(
            description="Generate", button_style="primary", icon="music", tooltip="Generate with these settings"
        )
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="36em"))
        self.status = W.HTML()
        self.results = W.HBox()
        self.save_button = W.Button(
            description="Save take",
            icon="save",
            disabled=True,
            tooltip="Keep these takes in 06_generate/takes/ with a row in takes.jsonl",
        )
        _tip(self.progress, "Sampler steps done")
        self.saved = W.HTML()

    def _connect(self) -> None:
        """The callbacks: mode switch, builder preview, Generate, Save."""
        self.mode.observe(self._on_mode, names="value")
        for w in (self.genre, self.moods, self.instruments, self.bpm, self.key, self.scale):
            w.observe(lambda _change: self._update_preview(), names="value")
        self.button.on_click(self.generate)
        self.save_button.on_click(self.save_take)
        self._update_preview()

    def _layout(self, W):
        return W.VBox(
            [
                self.mode,
                self.prompt,
                self.builder,
                self.steps,
                self.cfg,
                self.seed,
                self.duration,
                self.choice,
                self.strength,
                W.HBox([self.button, self.progress]),
                self.status,
                self.results,
                W.HBox([self.save_button, self.saved]),
                self._music_layout(W),
            ]
        )

    # display as the widget. IPython asks _ipython_display_ first: display(widget) works on
    # ipywidgets 8 and on the 7.7.1 that Colab ships (its widgets have no _repr_mimebundle_).
    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _on_mode(self, change) -> None:
        builder = change["new"] == "builder"
        self.builder.layout.display = None if builder else "none"
        self.prompt.layout.display = "none" if builder else None

    def _update_preview(self) -> None:
        self.preview.value = f"<i>{html.escape(self.built_prompt())}</i>"

    def built_prompt(self) -> str:
        return build_prompt(
            self.genre.value, self.moods.value, self.instruments.value, self.bpm.value, self.key.value, self.scale.value
        )

    def prompt_text(self) -> str:
        return self.built_prompt() if self.mode.value == "builder" else self.prompt.value.strip()

    def _say(self, text: str, kind: str = "info") -> None:
        color = {"error": "#b00020", "ok": "#1b5e20", "info": "#333"}[kind]
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    # -- models -------------------------------------------------------------------------------
    def _device(self):
        return gen._device_and_dtype(self.P.get("device", "auto"), self.P.get("dtype", "auto"))

    def _finetune(self):
        # a strength other than 1 prefers the LoRA file beside a merged export: the slider then acts
        return gen.find_finetune(str(self.run.root), self.P.get("finetune_model", ""), lora_strength=0.5)

    def _is_lora(self) -> bool:
        spec, _ = self._finetune()
        return spec is not None and spec.kind == "lora"

    def _focus_path(self):
        from . import focus

        return focus.for_generation(self.run.root)[0]

    def _load(self, which: str, spec) -> tuple:
        """``(model, config, source, lora_strength or None)`` for "base" or "finetune" (cached)."""
        dev, dtype = self._device()
        base = self.P.get("base_model") or "tiny:sao"
        t5 = self.P.get("t5_model", "")
        if spec is not None and spec.kind == "lora" and which != "focus":  # one network: base = strength 0
            key = ("lora", base, str(spec.path), dev, str(dtype), t5)
            if key not in _CACHE:
                model, config = gen.load_model(base, dev, dtype, t5)
                gen.apply_lora(model, config, spec.path, 0.0)
                _CACHE[key] = (model, config)
            model, config = _CACHE[key]
            if which == "base":
                gen.set_lora_strength(model, 0.0)
                return model, config, base, None
            strength = as_typed(self.strength.value, self.strength.step)
            gen.set_lora_strength(model, strength)
            return model, config, f"{base} + LoRA {spec.path}", strength
        source = {"base": base, "focus": str(self.focus_path)}.get(which) or str(spec.path)
        key = ("full", source, None, dev, str(dtype), t5)
        if key not in _CACHE:
            _CACHE[key] = gen.load_model(source, dev, dtype, t5)
        model, config = _CACHE[key]
        return model, config, source, None

    # -- callbacks ----------------------------------------------------------------------------
    def generate(self, _button=None) -> list[Take] | None:
        """The Generate button: returns the takes (or None after a message in the status line)."""
        try:
            return self._generate()
        except (gen.GenerateError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            log.debug("playground generation failed", exc_info=True)
            self._say(f"Could not generate: {exc}", "error")
        except Exception as exc:  # noqa: BLE001 — a playground never shows a traceback
            log.debug("playground generation failed", exc_info=True)
            self._say(f"Could not generate ({type(exc).__name__}): {exc}", "error")
        finally:
            self.button.disabled = False
        return None

    def _settings(self) -> gen.Settings:
        """The sampling settings: the widgets' values, the rest from the notebook's parameters."""
        return gen.Settings(
            steps=int(self.steps.value),
            cfg_scale=as_typed(self.cfg.value, self.cfg.step),
            sampler_type=self.P.get("sampler_type", gen.CARD_SETTINGS.sampler_type),
            sigma_min=float(self.P.get("sigma_min", gen.CARD_SETTINGS.sigma_min)),
            sigma_max=float(self.P.get("sigma_max", gen.CARD_SETTINGS.sigma_max)),
            seconds_start=float(self.P.get("seconds_start", 0.0)),
            seconds_total=as_typed(self.duration.value, self.duration.step),
            apg_scale=float(self.P.get("apg_scale", 0.0)),
        )

    def _seed(self) -> int:
        """The seed widget's value; -1 draws a random one."""
        seed = int(self.seed.value)
        if seed == -1:
            seed = random.randrange(2**31)
        elif not 0 <= seed < 2**32:
            raise gen.GenerateError(f"the seed must be -1 (random) or between 0 and 2**32 - 1 (got {seed})")
        return seed

    def _generate(self) -> list[Take] | None:
        prompt = self.prompt_text()
        if not prompt:
            self._say("The prompt is empty: type a description of the beat, or use the builder.", "error")
            return None
        settings = self._settings()
        gen.check_settings(settings)
        seed = self._seed()
        which = _WHICH[self.choice.value]
        spec, message = self._finetune()  # also for "base": a LoRA fine-tune shares the base network
        if "focus" in which and not self.focus_path:
            self._say("No 05b focus model: run 05b_focus first.", "error")
            return None
        if spec is None and "finetune" in which:
            self._say(f"No fine-tuned model to use: {message}", "error")
            return None
        self.button.disabled = True
        self.save_button.disabled = True
        self.results.children = ()
        self.saved.value = ""
        self._say("Loading the model…" if not _CACHE else "Generating…")
        takes = []
        self.progress.max = settings.steps * len(which)
        self.progress.value = 0
        t0 = time.perf_counter()
        for n, w in enumerate(which):
            model, config, source, strength = self._load(w, spec)
            gen.check_settings(settings, config)  # the duration against this model's window
            self._say(f"Generating with the {LABELS[w]} model (seed {seed})…")
            dev, _ = self._device()

            def step(info, _n=n):
                self.progress.value = min(self.progress.max, _n * settings.steps + int(info.get("i", 0)) + 1)

            from .compat import quiet_sampler

            with quiet_sampler():  # the bar above shows the steps; the engine's own would go to the log
                ((audio, info),) = gen.generate_audio(
                    model,
                    config,
                    [prompt],
                    seed,
                    settings,
                    dev,
                    callback=step,
                    silence_db=float(self.P.get("silence_db", 60.0)),
                )
            takes.append(
                Take(w, audio, int(config["sample_rate"]), prompt, seed, settings.as_dict(), source, strength, info)
            )
        self.takes = takes
        self._show(takes)
        self.save_button.disabled = False
        self.loop_button.disabled = False
        self._say(f"Done in {time.perf_counter() - t0:.1f} s — seed {seed}.", "ok")
        return takes

    def _show(self, takes: list[Take]) -> None:
        import ipywidgets as W
        from IPython.display import Audio

        from . import plots

        boxes = []
        for t in takes:
            label = f"<b>{LABELS[t.model]}</b> · seed {t.seed} · {t.audio.shape[1] / t.sr:.1f} s" + (
                f" · LoRA ×{t.lora_strength:g}" if t.lora_strength is not None else ""
            )
            wav = Audio(np.clip(t.audio, -1, 1), rate=t.sr, normalize=False).data  # IPython encodes the WAV
            boxes.append(
                W.VBox(
                    [
                        W.HTML(label),
                        W.Audio(value=wav, format="wav", autoplay=False),
                        W.Image(value=plots.spectrogram_png(t.audio, t.sr, t.model), format="png"),
                    ]
                )
            )
        self.results.children = tuple(boxes)

    def save_take(self, _button=None) -> list[dict] | None:
        """The Save button: the current takes into ``RUN_DIR/06_generate/takes/`` + ``takes.jsonl``."""
        if not self.takes:
            self.saved.value = "Nothing to save yet: generate first."
            return None
        try:
            folder = self.run.stage_dir(gen.STAGE) / "takes"
            takes_log = JsonlLog(self.run.stage_dir(gen.STAGE) / layout.TAKES, key="take_id")
            rows = []
            for t in self.takes:
                path = folder / f"{t.take_id}.wav"
                if t.take_id not in takes_log or not path.exists():
                    gen._write_wav(path, t.audio, t.sr)
                rows.append(
                    {
                        "take_id": t.take_id,
                        "model": t.model,
                        "prompt": t.prompt,
                        "seed": t.seed,
                        "settings": t.settings,
                        "model_source": t.source,
                        "lora_strength": t.lora_strength,
                        "sample_rate": t.sr,
                        "duration": round(t.audio.shape[1] / t.sr, 3),
                        "path": self.run.rel(path),
                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                )
            takes_log.append(*rows)
        except Exception as exc:  # noqa: BLE001 — a message, never a traceback
            self.saved.value = f"<span style='color:#b00020'>Could not save: {html.escape(str(exc))}</span>"
            return None
        self.saved.value = "Saved: " + ", ".join(html.escape(r["path"]) for r in rows)
        return rows


def build(P: dict) -> Playground:
    """The playground for the notebook's parameters ``P`` (display the returned object)."""
    return Playground(P)
