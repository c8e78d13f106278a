"""All the data-stage benchmarks in one command (notebooks 01_segment, 02_tag, 03_tempo_key); writes
``docs/benchmarks.md``. A measurement, not a test. ``make bench`` runs it with the defaults::

    .venv/bin/python benchmarks/run_all.py [--tracks 200] [--seconds 60] [--sizes 25 50 100 200] \
        [--workers 1 2] [--repeats 3] [--tag-tracks 25] [--baseline-tracks 25] [--out docs/benchmarks.md]

What it does:

1. renders ``--tracks`` distinct synthetic beats of ``--seconds`` s as 44.1 kHz WAV
   (``bench_segment.make_input``: ``demo.make_beat`` beats, shifted in tempo/pitch and gain);
   smaller sizes are the first N of them (symbolic links in their own folder);
2. for each size (the scaling series, at the largest worker count) and, at ``--workers-sizes``
   (default: the smallest and the largest size), at every worker count: runs ``segment.run``
   (01) on the folder, then ``tempo_key.run`` (03) on its clips, each in a fresh Python process
   whose whole process tree (the stage's worker pools included) is sampled from ``/proc`` every
   0.2 s: peak summed RSS, peak summed PSS, CPU seconds. Sizes ≤ ``--repeat-up-to`` are timed
   ``--repeats`` times and the median is reported;
3. ``tag.run`` (02) with the tiny CLAP on the clips of the first ``--tag-tracks`` tracks, with
   1 and 2 torch threads (the stage has no worker processes; threads are its parallelism);
4. the naive baseline (``benchmarks/baseline_naive.py``: a sequential librosa loop doing 01 + 03's
   work) on the first ``--baseline-tracks`` tracks, in the same way, beside the stages on the
   same tracks;
5. ``bench_train.py`` / ``bench_generate.py`` CPU (tiny-model) modes when those scripts exist
   (their printed figures are copied; ``--skip-model-benches`` to leave them out);
6. writes the report: machine, command, load average around each measurement, medians, ratios,
   the linear fits, the card's scale on paper, and the GPU commands with empty cells.

Scratch data (a few GB for 200 × 60 s) goes to ``--scratch`` (default: a temporary folder, removed
at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import common  # noqa: E402

DEFAULT_GRAPH = REPO.parent / "shared" / "models" / "tempocnn" / "deeptemp-k16-3.pb"
WAV_BYTES_PER_S = 44100 * 2 * 2  # 44.1 kHz × 2 channels × 16 bit


# ---------------------------------------------------------------------------------------------
# one measurement = one fresh process (``--child``)


def child(spec: dict) -> None:
    """Run one stage call; print ``@@START`` after the imports and ``@@RESULT {json}`` at the end."""
    import importlib

    kind = spec["kind"]
    if kind == "tag":
        import torch

        torch.set_num_threads(int(spec["workers"]))
    # import before the clock starts: the timed region is the stage's own work
    for mod in {
        "segment": ["stablebeat_utils.segment"],
        "tempo_key": ["stablebeat_utils.tempo_key"],
        "tag": ["stablebeat_utils.tag"],
        "baseline": ["baseline_naive", "librosa"],
    }.get(kind, []):
        importlib.import_module(mod)
    print("@@START", flush=True)
    t0 = time.perf_counter()
    if kind == "segment":
        from stablebeat_utils import segment

        s = segment.run(
            run_dir=spec["run_dir"], input_dir=spec["input_dir"], workers=int(spec["workers"]), progress=False
        )
        out = {
            "clips": s["clips"],
            "rejected": s["rejected"],
            "duplicates": s["duplicates"],
            "clip_s": round(s["clip_hours"] * 3600, 2),
        }
    elif kind == "tempo_key":
        from stablebeat_utils import tempo_key
        from stablebeat_utils.runs import read_jsonl

        s = tempo_key.run(run_dir=spec["run_dir"], tempo_model=spec["tempo_model"], workers=int(spec["workers"]))
        segs = read_jsonl(Path(spec["run_dir"]) / "01_segment" / "segments.jsonl")
        out = {
            "clips": s["clips"],
            "errors": s["errors"],
            "tempo_kept": s["tempo_kept"],
            "key_kept": s["key_kept"],
            "clip_s": round(sum(r["duration"] for r in segs if r["status"] == "ok"), 2),
            "bytes": (Path(spec["run_dir"]) / "03_tempo_key" / "tempo_key.jsonl").stat().st_size,
        }
    elif kind == "tag":
        from stablebeat_utils import tag

        s = tag.run(run_dir=spec["run_dir"], clap_model="tiny:clap", device="cpu", batch_size=8)
        out = {
            "clips": s["clips"],
            "errors": s["errors"],
            "clip_s": s["audio_seconds"],
            "loop_times_real_time": s["times_real_time"],
            "bytes": (Path(spec["run_dir"]) / "02_tag" / "tags.jsonl").stat().st_size,
        }
    elif kind == "baseline":
        import baseline_naive

        s = baseline_naive.run(spec["input_dir"], spec["out_dir"])
        out = {"clips": s["clips"], "clip_s": s["clip_s"], "tracks": s["tracks"]}
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    print("@@RESULT " + json.dumps(out), flush=True)


def measure(spec: dict, log_dir: Path) -> dict:
    """Run ``child(spec)`` in a new process, sampling its process tree; return its figures."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    name = f"{spec['kind']}_n{spec.get('tracks', 0)}_w{spec['workers']}_r{spec.get('rep', 0)}"
    load_before = common.load()
    with open(log_dir / f"{name}.stderr", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            env=env,
        )
        sampler = common.TreeSampler(proc.pid)
        sampler.start()
        cpu0 = cpu1 = None
        result = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("@@START"):
                sampler.sample()
                cpu0 = sampler.cpu_total()
            elif line.startswith("@@RESULT "):
                sampler.sample()
                cpu1 = sampler.cpu_total()
                result = json.loads(line[len("@@RESULT ") :])
        proc.wait()
        sampler.stop()
    if proc.returncode or result is None:
        tail = (log_dir / f"{name}.stderr").read_text()[-3000:]
        raise RuntimeError(f"measurement {name} failed (exit {proc.returncode}):\n{tail}")
    result.update(
        kind=spec["kind"],
        tracks=spec.get("tracks"),
        workers=spec["workers"],
        rep=spec.get("rep", 0),
        cpu_s=round(cpu1 - cpu0, 2),
        peak_rss_mib=round(sampler.peak_rss / 2**20, 1),
        peak_pss_mib=round(sampler.peak_pss / 2**20, 1),
        peak_single_rss_mib=round(sampler.peak_single / 2**20, 1),
        max_procs=sampler.max_procs,
        load_before=load_before,
        load_after=common.load(),
    )
    print(
        f"  {name}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, "
        f"tree RSS {result['peak_rss_mib']:.0f} MiB (PSS {result['peak_pss_mib']:.0f}), "
        f"load {load_before[0]:.1f}→{result['load_after'][0]:.1f}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# inputs


def subset(src: Path, dest: Path, n: int) -> Path:
    """A folder holding links to the first ``n`` tracks of ``src``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for p in sorted(src.glob("*.wav"))[:n]:
        (dest / p.name).symlink_to(p)
    return dest


def durations(folder: Path) -> float:
    import soundfile as sf

    return sum(sf.info(str(p)).duration for p in sorted(folder.glob("*.wav")))


def run_script(cmd: list[str], timeout: int) -> dict:
    """Run a model benchmark script; keep its printed figures (stdout) and timing."""
    t0 = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = (
            "timeout",
            (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""),
            "",
        )
    return {
        "cmd": " ".join(shlex.quote(c) for c in cmd),
        "rc": rc,
        "wall_s": round(time.perf_counter() - t0, 1),
        "stdout": out.strip()[-4000:],
        "stderr_tail": (err or "").strip()[-1500:],
    }


# ---------------------------------------------------------------------------------------------
# the whole run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tracks", type=int, default=200, help="synthetic tracks rendered (the largest size)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each track before its ±10 %% tempo shift")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="numbers of tracks of the scaling series (default: tracks/8, /4, /2, tracks)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--workers-sizes",
        type=int,
        nargs="+",
        default=None,
        help="sizes run at every worker count (default: the smallest and the largest)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--repeat-up-to", type=int, default=None, help="sizes up to this are repeated (default: the smallest)"
    )
    ap.add_argument(
        "--tag-tracks", type=int, default=None, help="02_tag on the clips of this many tracks (default: smallest size)"
    )
    ap.add_argument(
        "--baseline-tracks", type=int, default=None, help="naive baseline on this many tracks (default: smallest size)"
    )
    ap.add_argument(
        "--tempo-model",
        default="",
        help="TempoCNN graph (.pb); default: ../shared/models/tempocnn's "
        "copy when present, else what 03_tempo_key resolves (cache, $STABLEBEAT_MODEL_MIRROR, download)",
    )
    ap.add_argument("--scratch", default=None, help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    ap.add_argument(
        "--report-from", default=None, help="only write the report from a JSON file of an earlier --json run"
    )
    ap.add_argument("--skip-model-benches", action="store_true", help="do not run bench_train.py / bench_generate.py")
    ap.add_argument("--model-bench-timeout", type=int, default=600)
    # the card's scale
    ap.add_argument("--card-beats", type=int, default=20000)
    ap.add_argument("--card-clips", type=int, default=40000)
    ap.add_argument("--card-clip-hours", type=float, default=277.0)
    ap.add_argument("--card-source-minutes", type=float, default=3.0, help="assumed mean length of a source beat")
    ap.add_argument("--colab-vcpus", type=int, default=12)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.report_from:
        data = json.loads(Path(args.report_from).read_text())
        Path(args.out).write_text(report(data["meta"], data["results"], data["extra"]))
        print(f"wrote {args.out}")
        return 0

    sizes = sorted(
        set(args.sizes or [max(1, args.tracks // 8), max(1, args.tracks // 4), max(1, args.tracks // 2), args.tracks])
    )
    small, top = sizes[0], sizes[-1]
    tag_n = args.tag_tracks or small
    base_n = args.baseline_tracks or small
    sizes = sorted(set(sizes) | {tag_n, base_n})
    if sizes[-1] > args.tracks:
        raise SystemExit(f"a size ({sizes[-1]}) is larger than --tracks {args.tracks}")
    workers_sizes = set(args.workers_sizes or [small, top]) | {base_n}
    repeat_up_to = args.repeat_up_to if args.repeat_up_to is not None else small
    wmax = max(args.workers)
    if args.tempo_model:
        graph = Path(args.tempo_model)
        if not graph.is_file():
            raise SystemExit(f"--tempo-model {graph}: no such file (the TempoCNN graph deeptemp-k16-3.pb)")
    elif DEFAULT_GRAPH.is_file():
        graph = DEFAULT_GRAPH
    else:
        from stablebeat_utils import tempo_key

        graph = tempo_key.resolve_tempo_model("")  # the stage's own resolution: cache, mirror or download
    command = "benchmarks/run_all.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="stablebeat_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    logs = scratch / "logs"
    logs.mkdir(exist_ok=True)
    machine = common.machine_info()
    load_start = common.load()
    started = time.time()
    print(f"scratch: {scratch}; sizes {sizes}; workers {args.workers}; load {load_start}", flush=True)
    results: list[dict] = []
    extra: dict = {}
    source_s: dict[int, float] = {}
    meta = {
        "machine": machine,
        "command": command,
        "load_start": load_start,
        "load_end": None,
        "elapsed_s": None,
        "sizes": sizes,
        "workers": args.workers,
        "tag_tracks": tag_n,
        "baseline_tracks": base_n,
        "top": top,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "repeat_up_to": repeat_up_to,
        "card": {
            "beats": args.card_beats,
            "clips": args.card_clips,
            "clip_hours": args.card_clip_hours,
            "source_minutes": args.card_source_minutes,
            "vcpus": args.colab_vcpus,
        },
    }

    def save() -> None:
        meta.update(load_end=common.load(), elapsed_s=round(time.time() - started))
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "extra": extra}, indent=1))

    def take(spec: dict) -> None:
        m = measure(spec, logs)
        m["source_s"] = round(source_s[spec["tracks"]], 2)
        results.append(m)
        save()

    try:
        import bench_segment

        src = scratch / "tracks"
        if not (src.is_dir() and len(list(src.glob("*.wav"))) == args.tracks):
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            t = time.perf_counter()
            bench_segment.make_input(src, args.tracks, args.seconds)
            print(f"rendered {args.tracks} tracks in {time.perf_counter() - t:.0f} s", flush=True)
        inputs = {}
        for n in sizes:
            inputs[n] = src if n == args.tracks else subset(src, scratch / f"in_{n:04d}", n)
            source_s[n] = durations(inputs[n])
        tag_run = None
        for n in sizes:
            for w in args.workers:
                if w != wmax and n not in workers_sizes:
                    continue
                for r in range(args.repeats if n <= repeat_up_to else 1):
                    rd = scratch / f"run_n{n}_w{w}_r{r}"
                    shutil.rmtree(rd, ignore_errors=True)
                    common_spec = {"tracks": n, "workers": w, "rep": r, "run_dir": str(rd)}
                    take({"kind": "segment", "input_dir": str(inputs[n]), **common_spec})
                    take({"kind": "tempo_key", "tempo_model": str(graph), **common_spec})
                    if n == tag_n and w == wmax and tag_run is None:
                        tag_run = rd
                    else:
                        shutil.rmtree(rd, ignore_errors=True)
            if n == base_n:
                for r in range(args.repeats if n <= repeat_up_to else 1):
                    out_dir = scratch / f"baseline_r{r}"
                    shutil.rmtree(out_dir, ignore_errors=True)
                    take(
                        {
                            "kind": "baseline",
                            "tracks": n,
                            "workers": 1,
                            "rep": r,
                            "input_dir": str(inputs[n]),
                            "out_dir": str(out_dir),
                        }
                    )
                    shutil.rmtree(out_dir, ignore_errors=True)
        assert tag_run is not None
        for w in args.workers:
            for r in range(args.repeats if tag_n <= repeat_up_to else 1):
                shutil.rmtree(tag_run / "02_tag", ignore_errors=True)
                take({"kind": "tag", "tracks": tag_n, "workers": w, "rep": r, "run_dir": str(tag_run)})
        shutil.rmtree(tag_run, ignore_errors=True)

        if not args.skip_model_benches:
            py = sys.executable
            if (HERE / "bench_train.py").is_file():
                print("bench_train.py (tiny, CPU) ...", flush=True)
                extra["train"] = run_script(
                    [
                        py,
                        "benchmarks/bench_train.py",
                        "--model",
                        "tiny",
                        "--steps",
                        "5",
                        "--batch-size",
                        "2",
                        "--seconds",
                        "1",
                        "--clips",
                        "4",
                        "--clip-seconds",
                        "6",
                        "--variants",
                        "full-raw",
                        "full-latent",
                    ],
                    args.model_bench_timeout,
                )
            if (HERE / "bench_generate.py").is_file():
                print("bench_generate.py (tiny, CPU) ...", flush=True)
                extra["generate"] = run_script(
                    [py, "benchmarks/bench_generate.py", "--mode", "tiny", "--steps", "20", "--repeats", "3"],
                    args.model_bench_timeout,
                )
            save()
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    save()
    text = report(meta, results, extra)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({meta['elapsed_s']} s in all)")
    return 0


# ---------------------------------------------------------------------------------------------
# the report


def _med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarize(results: list[dict]) -> dict:
    """(kind, tracks, workers) → medians over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["kind"], r["tracks"], r["workers"]), []).append(r)
    out = {}
    for k, rows in groups.items():
        out[k] = {
            "n": len(rows),
            "wall_s": _med(rows, "wall_s"),
            "cpu_s": _med(rows, "cpu_s"),
            "peak_rss_mib": _med(rows, "peak_rss_mib"),
            "peak_pss_mib": _med(rows, "peak_pss_mib"),
            "peak_single_rss_mib": _med(rows, "peak_single_rss_mib"),
            "source_s": rows[0]["source_s"],
            "clip_s": rows[0]["clip_s"],
            "clips": rows[0]["clips"],
            "rows": rows,
            "load": max(max(r["load_before"][0], r["load_after"][0]) for r in rows),
            "bytes": rows[0].get("bytes"),
            "loop_xrt": (
                statistics.median(r["loop_times_real_time"] for r in rows)
                if rows[0].get("loop_times_real_time")
                else None
            ),
        }
    return out


def _figures_only(text: str) -> str:
    """A script's printed output without progress bars and import chatter."""
    import re

    noise = re.compile(r"it/s|s/it|flash_attn|^(Training|Epoch \d+|Sanity|Validation)\b")
    return "\n".join(ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not noise.search(ln))


def _audio_s(kind: str, s: dict) -> float:
    """The audio a stage's rate is measured on: source tracks for 01 and the baseline, clips for 02/03."""
    return s["source_s"] if kind in ("segment", "baseline") else s["clip_s"]


def report(meta: dict, results: list[dict], extra: dict) -> str:
    S = summarize(results)
    m = meta["machine"]
    W = meta["workers"]
    wmax, top, tag_n, base_n = max(W), meta["top"], meta["tag_tracks"], meta["baseline_tracks"]
    L: list[str] = []
    add = L.append
    add("# Benchmarks — data stages 01–03 against a naive baseline\n")
    add(
        "Written by `benchmarks/run_all.py` (`make bench`); do not edit by hand, run it again. "
        "Measurements, not tests: figures depend on the machine and on what else runs on it.\n"
    )
    add("## Machine and run\n")
    add(f"- Date: {m['date_utc']}; whole run took {common.hms(meta['elapsed_s'])}.")
    add(f"- Command: `.venv/bin/python {meta['command'].strip()}`")
    add(
        f"- CPU: {m['cpu_model']} — nproc {m['nproc']} (usable by this process: {m['affinity']}); RAM {m['ram_gib']} GiB; "
        f"GPU: {m['gpu']}; Linux {m['kernel']}."
    )
    add(f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".")
    thr = {k: v for k, v in m["threads_env"].items() if v}
    add(f"- Thread variables: {thr or 'none set (library defaults)'}.")
    loads = [x for r in results for x in (r["load_before"][0], r["load_after"][0])]
    busy = max(loads) if loads else 0
    add(
        f"- Load average (1 min) at the start {meta['load_start'][0]}, at the end {meta['load_end'][0]}; "
        f"around the measurements {min(loads):.1f}–{max(loads):.1f} on {m['nproc']} CPUs."
        if loads
        else ""
    )
    # the benchmark's own workers (+ its sampler) load up to about nproc + 1; above that, others competed
    if busy > (m["nproc"] or 1) + 1:
        add(
            f"- **The machine was busy while measuring** (load up to {busy:.1f} on {m['nproc']} CPUs: other "
            "processes — other people's tests and notebooks — shared the cores). Wall-clock rates below are "
            "therefore lower than on an idle machine; the CPU-time columns (the tree's user+system seconds) "
            "are much less sensitive to that and are the better basis for estimates."
        )
    add(
        f"- Input: {top} synthetic tracks of ~{meta['seconds']:g} s (44.1 kHz stereo 16-bit WAV; "
        "`bench_segment.make_input`: 8 `demo.make_beat` beats, each re-pitched/re-timed by up to +10 % and "
        "re-gained so no two files are duplicates). Smaller sizes are the first N of them."
    )
    add(
        f"- Medians of {meta['repeats']} timed runs for sizes ≤ {meta['repeat_up_to']} tracks; larger sizes "
        "were run once (the cost of repeating them did not fit here)."
    )
    add(
        "- Every measurement runs in a fresh Python process (imports excluded from the wall time; pool start-up, "
        "model loading and all work included). **Memory** = peak over time of the summed RSS of that process "
        "and all its descendants (the stage's worker processes), sampled from `/proc/<pid>/statm` every "
        "0.2 s; PSS (from `/proc/<pid>/smaps_rollup`) beside it counts pages shared between the processes "
        "(libraries) once. **CPU** = user+system seconds of the same tree (`/proc/<pid>/stat`)."
    )
    add(
        "- **× real time** = seconds of audio processed per wall-clock second. For 01 and the baseline the "
        "audio is the source tracks; for 02 and 03 it is the clips they read.\n"
    )

    # headline
    add("## Stages at a glance\n")
    add(
        "| stage | tracks | workers | audio | wall | × real time | CPU s | audio s per CPU s | peak RSS tree (PSS) | largest process | load |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def line(label: str, kind: str, n: int, w: int, note: str = "") -> None:
        s = S.get((kind, n, w))
        if not s:
            return
        a = _audio_s(kind, s)
        add(
            f"| {label}{note} | {n} | {w} | {common.hms(a)} | {s['wall_s']:.1f} s | **{a / s['wall_s']:.1f}×** | "
            f"{s['cpu_s']:.1f} | {a / s['cpu_s']:.1f} | {s['peak_rss_mib']:.0f} MiB ({s['peak_pss_mib']:.0f}) | "
            f"{s['peak_single_rss_mib']:.0f} MiB | {s['load']:.1f} |"
        )

    every_w = sorted(n for n in {k[1] for k in S if k[0] == "segment"} if all(("segment", n, w) in S for w in W))
    for n in sorted({top, base_n, *every_w[-1:]}):
        for w in W:
            line("01_segment", "segment", n, w)
            line("03_tempo_key", "tempo_key", n, w)
    for w in W:
        line("02_tag (tiny CLAP, CPU)", "tag", tag_n, w, " ¹")
    for n in sorted({top, base_n}):
        if ("baseline", n, 1) in S:
            line("naive baseline (01+03 work)", "baseline", n, 1)
    add(
        "\n¹ 02_tag has no worker processes: the *workers* column is the number of torch threads "
        "(`torch.set_num_threads`). The tiny CLAP is the demo's random ~1 M-parameter model: this measures the "
        "stage's own cost (decode, 48 kHz resample, 10-s windows, batching, scoring) plus a small model; the real "
        "`laion/larger_clap_music` belongs on a GPU (see below).\n"
    )

    # data preparation = 01 + 03
    add("## Data preparation (01 + 03) — target ≥ 60× real time on 2 cores\n")
    add(
        "| tracks | workers | source audio | 01 wall | 03 wall | 01+03 wall | **× real time** | 01+03 CPU s | source s per CPU s | verdict |"
    )
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    prep = {}
    for n in sorted({s[1] for s in S if s[0] == "segment"}):
        for w in W:
            a, b = S.get(("segment", n, w)), S.get(("tempo_key", n, w))
            if not (a and b):
                continue
            wall, cpu = a["wall_s"] + b["wall_s"], a["cpu_s"] + b["cpu_s"]
            xrt = a["source_s"] / wall
            prep[(n, w)] = {"wall": wall, "cpu": cpu, "xrt": xrt, "per_cpu": a["source_s"] / cpu}
            verdict = "meets 60×" if xrt >= 60 else "below 60×"
            add(
                f"| {n} | {w} | {common.hms(a['source_s'])} | {a['wall_s']:.1f} s | {b['wall_s']:.1f} s | {wall:.1f} s | "
                f"**{xrt:.1f}×** | {cpu:.1f} | {a['source_s'] / cpu:.1f} | {verdict} |"
            )
    if (top, wmax) in prep:
        p = prep[(top, wmax)]
        add(
            f"\nAt {top} tracks and {wmax} workers, data preparation ran at **{p['xrt']:.1f}× real time** "
            f"(wall clock, load ≤ {max(S[('segment', top, wmax)]['load'], S[('tempo_key', top, wmax)]['load']):.1f}). "
            f"It used {p['cpu']:.0f} CPU-seconds for {common.hms(S[('segment', top, wmax)]['source_s'])} of audio, "
            f"i.e. {p['per_cpu']:.1f} s of audio per CPU-second: two otherwise idle cores kept busy by "
            f"{wmax} workers would give at most ~{wmax * p['per_cpu']:.0f}× real time (an upper bound estimated from "
            "CPU time, not a measurement; pool start-up and the sequential parts are not free).\n"
        )

    # scaling
    add("## Scaling with the number of tracks\n")
    add(
        f"{wmax} workers. Time should grow linearly (a fixed start-up + a cost per track) and peak memory "
        "should stay flat (both stages stream: a bounded window of tracks in flight).\n"
    )
    add("| tracks | 01 wall | 03 wall | 01+03 wall | 01 peak RSS tree (PSS) | 03 peak RSS tree (PSS) | load |")
    add("|---:|---:|---:|---:|---:|---:|---:|")
    ns = sorted(n for (k, n, w) in S if k == "segment" and w == wmax)
    for n in ns:
        a, b = S[("segment", n, wmax)], S[("tempo_key", n, wmax)]
        add(
            f"| {n} | {a['wall_s']:.1f} s | {b['wall_s']:.1f} s | {a['wall_s'] + b['wall_s']:.1f} s | "
            f"{a['peak_rss_mib']:.0f} MiB ({a['peak_pss_mib']:.0f}) | {b['peak_rss_mib']:.0f} MiB ({b['peak_pss_mib']:.0f}) | "
            f"{max(a['load'], b['load']):.1f} |"
        )
    fits = {}
    if len(ns) >= 2:
        add("\nLeast-squares line *wall = per-track × tracks + fixed* (numpy.polyfit):\n")
        add("| stage | per track | fixed | R² | peak RSS smallest → largest |")
        add("|---|---:|---:|---:|---:|")
        for label, kind in (("01_segment", "segment"), ("03_tempo_key", "tempo_key"), ("01+03", None)):
            if kind:
                ys = [S[(kind, n, wmax)]["wall_s"] for n in ns]
                mem = (
                    f"{S[(kind, ns[0], wmax)]['peak_rss_mib']:.0f} → {S[(kind, ns[-1], wmax)]['peak_rss_mib']:.0f} MiB"
                )
            else:
                ys = [S[("segment", n, wmax)]["wall_s"] + S[("tempo_key", n, wmax)]["wall_s"] for n in ns]
                mem = ""
            f = common.fit_line(ns, ys)
            fits[label] = f
            add(f"| {label} | {f['slope']:.2f} s | {f['intercept']:.1f} s | {f['r2']:.4f} | {mem} |")
        add("")

    # baseline
    add(f"## Against the naive baseline ({base_n} tracks)\n")
    add(
        "`benchmarks/baseline_naive.py`: the loop a notebook author would write — one file after another, "
        "`librosa.load(sr=44100, mono=False)`, `librosa.beat.beat_track` on the 44.1 kHz mono mix, 2 segments "
        "of 25 s (one per half of the track, starting on a beat) written with `soundfile`, and per segment "
        "`librosa.feature.chroma_cqt` + the Krumhansl–Kessler key profiles. It does less than 01 + 03 (no "
        "loudness normalisation, no fades/silence handling, no duplicate detection, no bar alignment, no "
        "confidences, no resume). Same tracks, same run, same machine load.\n"
    )
    bl = S.get(("baseline", base_n, 1))
    if bl:
        add("| pipeline | wall | × real time | CPU s | speed-up vs baseline (wall) | CPU-time ratio |")
        add("|---|---:|---:|---:|---:|---:|")
        add(
            f"| naive baseline (1 process) | {bl['wall_s']:.1f} s | {bl['source_s'] / bl['wall_s']:.1f}× | "
            f"{bl['cpu_s']:.1f} | 1.00 | 1.00 |"
        )
        for w in W:
            p = prep.get((base_n, w))
            if p:
                add(
                    f"| 01 + 03, {w} worker{'s' if w > 1 else ''} | {p['wall']:.1f} s | {p['xrt']:.1f}× | {p['cpu']:.1f} | "
                    f"**{bl['wall_s'] / p['wall']:.2f}×** | {bl['cpu_s'] / p['cpu']:.2f}× |"
                )
        add(
            "\nSpeed-up > 1: the stages are faster than the baseline. CPU-time ratio > 1: they also spend less "
            "CPU for the same audio (analysis at 11 025 Hz instead of 44.1 kHz; HPCP + TempoCNN instead of a "
            "CQT).\n"
        )

    # tag
    add(f"## 02_tag on CPU ({tag_n} tracks' clips)\n")
    add(
        "| torch threads | clips | clip audio | wall (incl. model load + text embeddings) | × real time (wall) | "
        "× real time (clip loop, stage's own figure) | peak RSS tree (PSS) |"
    )
    add("|---:|---:|---:|---:|---:|---:|---:|")
    for w in W:
        s = S.get(("tag", tag_n, w))
        if s:
            add(
                f"| {w} | {s['clips']} | {common.hms(s['clip_s'])} | {s['wall_s']:.1f} s | {s['clip_s'] / s['wall_s']:.1f}× | "
                f"{s['loop_xrt']:.1f}× | {s['peak_rss_mib']:.0f} MiB ({s['peak_pss_mib']:.0f}) |"
            )
    add("")

    # scale on paper
    card = meta["card"]
    add("## The card's scale on paper (an estimate, not a measurement)\n")
    src_h = card["beats"] * card["source_minutes"] / 60
    clip_s_total = card["clip_hours"] * 3600
    add(
        f"The StableBeaT card: {card['beats']:,} beats → {card['clips']:,} clips, ~{card['clip_hours']:g} h of clips. "
        f"Assumptions, each stated so it can be changed (`--card-*`, `--colab-vcpus`):\n"
    )
    add(
        f"- a source beat lasts {card['source_minutes']:g} min on average → {card['beats']:,} × {card['source_minutes']:g} min "
        f"= **{src_h:,.0f} h of source audio** for 01 (01's cost grows with source length: it decodes and analyses whole "
        "tracks); 02 and 03 read the clips, **{:g} h**;".format(card["clip_hours"])
    )
    half = card["vcpus"] // 2
    add(
        f"- a Colab A100 VM has {card['vcpus']} vCPUs (hyperthreads of {half} physical cores). CPU stages are scaled "
        f"from this machine's **CPU time**, not its wall time (the wall time here suffers from other processes on "
        f"the cores; CPU time much less): rate per busy core = audio seconds / CPU-seconds of the whole process "
        f"tree at {wmax} workers (worker start-up and model loading included). The estimate is that rate × the "
        f"number of busy cores, with one Colab core as fast as one CPU here and {card['vcpus']} workers keeping "
        f"them busy: between {half} (hyperthread pairs share a core) and {card['vcpus']} cores' worth. "
        "**An estimate**, not a measurement;"
    )
    add("- GPU stages (02 with the real CLAP, 05 training, 06 generation) are **not measured here** (no GPU);")
    add(
        f"- WAV clip size = 44,100 Hz × 2 ch × 2 bytes × seconds = {WAV_BYTES_PER_S:,} B/s; "
        f"{card['clip_hours']:g} h × 3600 × {WAV_BYTES_PER_S:,} B/s = **{clip_s_total * WAV_BYTES_PER_S / 1e9:,.0f} GB** of clips.\n"
    )
    add(
        f"| stage | audio to process | measured here ({wmax} workers): audio s / CPU s | estimated rate, {half}–{card['vcpus']} cores "
        "| estimated time | disk written |"
    )
    add("|---|---:|---:|---:|---:|---:|")
    for label, kind, audio_total, disk in (
        ("01_segment", "segment", src_h * 3600, f"{clip_s_total * WAV_BYTES_PER_S / 1e9:,.0f} GB (clips)"),
        ("03_tempo_key", "tempo_key", clip_s_total, None),
        ("02_tag (tiny CLAP, CPU threads)", "tag", clip_s_total, None),
    ):
        n = tag_n if kind == "tag" else top
        sw = S.get((kind, n, wmax))
        if not sw:
            continue
        per_cpu = _audio_s(kind, sw) / sw["cpu_s"]
        lo, hi = per_cpu * half, per_cpu * card["vcpus"]
        if disk is None and sw.get("bytes"):
            per_clip = sw["bytes"] / max(sw["clips"], 1)
            disk = f"{per_clip * card['clips'] / 1e6:,.0f} MB (rows: {per_clip:.0f} B/clip × {card['clips']:,})"
        add(
            f"| {label} | {common.hms(audio_total)} | {_audio_s(kind, sw):.0f} / {sw['cpu_s']:.0f} = {per_cpu:.1f} | "
            f"{per_cpu:.1f} × {half} = {lo:.0f}× … {per_cpu:.1f} × {card['vcpus']} = {hi:.0f}× | "
            f"{common.hms(audio_total / hi)} … {common.hms(audio_total / lo)} | {disk} |"
        )
    s01, s03 = S.get(("segment", top, wmax)), S.get(("tempo_key", top, wmax))
    if s01 and s03:
        cpu_h = (src_h * 3600 / (s01["source_s"] / s01["cpu_s"]) + clip_s_total / (s03["clip_s"] / s03["cpu_s"])) / 3600
        add(
            f"| **01 + 03 together** | | {cpu_h:,.0f} CPU-hours in all | | "
            f"**{common.hms(cpu_h * 3600 / card['vcpus'])} … {common.hms(cpu_h * 3600 / half)}** | |"
        )
    add("| 02_tag, real CLAP (GPU) | 277 h | not measured | | | |")
    add("| 05_train (GPU) | | not measured | | | |")
    add("| 06_generate (GPU) | | not measured | | | |")
    add("")

    # GPU
    add("## GPU figures — NOT MEASURED (no GPU on this machine)\n")
    add(
        "Run these on a CUDA machine (Colab A100, an H100…) and fill the cells; until then they stay empty. "
        "Never copy numbers here that were not measured.\n"
    )
    add("```bash")
    add("# 02_tag with the real CLAP architecture (random weights; timing only)")
    add(
        "HF_HUB_OFFLINE=1 python benchmarks/bench_tag.py --models large --device cuda --clips 64 --seconds 30 --batch-size 32"
    )
    add("# 05_train: full-size SAO 1.0 DiT, raw audio vs pre-encoded latents, full vs LoRA")
    add("HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --model full --device cuda --batch-size 16 --seconds 0 \\")
    add("    --clips 32 --clip-seconds 30 --steps 6 --warmup 2 --variants full-raw full-latent lora-raw lora-latent")
    add("# 06_generate: full-size SAO 1.0 at the card's settings (200 steps, dpmpp-3m-sde, CFG 7, 47 s)")
    add("python benchmarks/bench_generate.py --mode full --steps 200 --batch 1 4 --repeats 2")
    add("```\n")
    add("| measurement | GPU | figure | value |")
    add("|---|---|---|---|")
    for what, fig in (
        ("02_tag, larger_clap_music architecture, batch 32", "× real time"),
        ("05_train full-raw, batch 16, 47.55 s", "s / step; peak GPU GB"),
        ("05_train full-latent, batch 16", "s / step; peak GPU GB"),
        ("05_train lora-raw, batch 16", "s / step; peak GPU GB"),
        ("05_train lora-latent, batch 16", "s / step; peak GPU GB"),
        ("06_generate, 200 steps, batch 1", "s / clip; s / step"),
        ("06_generate, 200 steps, batch 4", "s / clip; s / step"),
    ):
        add(f"| {what} | | {fig} | |")
    add("")

    if extra:
        add("## Model stages on this CPU (tiny models; printed by their own scripts)\n")
        add(
            "The demo's tiny models, not SAO: these show the stage machinery's overhead on CPU, not the card's "
            "training or generation speed.\n"
        )
        for name, e in extra.items():
            add(f"### {name}: `{e['cmd'].replace(sys.executable, '.venv/bin/python')}`\n")
            add(f"exit status {e['rc']}, {e['wall_s']} s.\n")
            add("```")
            add(_figures_only(e["stdout"]) or "(no output)")
            if e["rc"] not in (0,) and e["stderr_tail"]:
                add("--- stderr (tail) ---")
                add(e["stderr_tail"])
            add("```\n")

    # every measurement
    add("## Every measurement\n")
    add("<details><summary>all runs (repeats included)</summary>\n")
    add(
        "| kind | tracks | workers | rep | wall s | CPU s | clips | peak RSS tree MiB | PSS MiB | largest MiB | procs | load before → after |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        add(
            f"| {r['kind']} | {r['tracks']} | {r['workers']} | {r['rep']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['clips']} | {r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | {r['peak_single_rss_mib']:.0f} | "
            f"{r['max_procs']} | {r['load_before'][0]} → {r['load_after'][0]} |"
        )
    add("\n</details>\n")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
