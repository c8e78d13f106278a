"""How fast are 07_evaluate's per-clip metrics? (notebook 07_evaluate; a measurement, not a test).

Median wall time of several runs per metric, and of the whole per-clip measurement, on a 47-s
excerpt of a real recording, pinned to one CPU core with one BLAS/OpenMP thread:

    .venv/bin/python benchmarks/bench_evaluate.py [--repeat 5] [--audio FILE] [--clap tiny:clap]

Needs the TempoCNN graph (``--tempo-model``, default ``../shared/models/tempocnn/deeptemp-k16-3.pb``).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core: set before numpy/torch are imported

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", default=str(REPO.parent / "shared" / "audio" / "Kevin_MacLeod_-_Vibe_Ace.ogg"))
    ap.add_argument("--seconds", type=float, default=47.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tempo-model", default=str(REPO.parent / "shared" / "models" / "tempocnn" / "deeptemp-k16-3.pb"))
    ap.add_argument("--clap", default="tiny:clap")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import tempfile

    import torch

    torch.set_num_threads(1)
    from stablebeat_utils import audio, evaluate as ev
    from stablebeat_utils import evaluate_metrics as em

    y, sr = audio.load(args.audio)
    y = y[:, : int(args.seconds * sr)]
    seconds = y.shape[1] / sr
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "excerpt.wav"
        audio.write_wav(wav, y, sr)
        ev._init_worker(args.tempo_model, "edma")
        clap = ev.make_clap(args.clap, "transformers", "cpu")
        text = clap.embed_text(["a trap beat at 90 BPM"])
        ev.measure_clip(str(wav))  # warm up: imports, FFT plans, TensorFlow graph
        ev.clap_audio_embedding(clap, y, sr)

        from stablebeat_utils import tempo_key

        S = em.magnitude(y, sr)
        rows = [
            ("decode (audio.load)", lambda: audio.load(wav)),
            ("STFT |X| (mono, 44.1 kHz)", lambda: em.magnitude(y, sr)),
            ("spectral centroid", lambda: em.spectral_centroid(S)),
            ("spectral flatness", lambda: em.spectral_flatness(S)),
            ("H/P ratio (HPSS)", lambda: em.hp_ratio(S)),
            ("transient sharpness (own RMS envelope)", lambda: em.transient_sharpness(y, sr)),
            ("BPM + key (03's TempoCNN + KeyExtractor)", lambda: tempo_key.analyse_clip("x", str(wav))),
            (f"CLAP score ({args.clap})", lambda: ev.clap_scores(ev.clap_audio_embedding(clap, y, sr), text)),
            ("all signal metrics + BPM + key (measure_clip)", lambda: ev.measure_clip(str(wav))),
        ]
        print(f"{Path(args.audio).name}: {seconds:.1f} s, median of {args.repeat} runs, 1 core")
        total = 0.0
        for name, fn in rows:
            t, _ = _median_time(fn, args.repeat)
            if name.startswith(("all", "CLAP")):
                total += t
            print(f"  {name:48s} {t:7.3f} s   ({t / seconds * 100:5.1f} % of the clip's duration)")
        print(
            f"  {'per clip in all (measure_clip + CLAP)':48s} {total:7.3f} s   "
            f"({total / seconds * 100:5.1f} % of the clip's duration)"
        )
        row = ev.measure_clip(str(wav))
        print("  values:", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


if __name__ == "__main__":
    main()
