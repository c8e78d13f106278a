"""How long a checkpoint's copy to the run folder holds up training: synchronous vs background (issue 16).

05_train with ``local_checkpoint_dir`` writes each checkpoint to local disk, then copies it to the
run folder (Drive on Colab). Before, the copy ran inside the checkpoint save, so training paused
for the whole copy (16.9 GB for a full fine-tune); now :class:`stablebeat_utils.checkpoints.CheckpointMirror`
runs it in a background thread. This script writes a file of ``--gb`` GB and measures, ``--repeat``
times: the pause of a synchronous :func:`~stablebeat_utils.checkpoints.mirror_checkpoint`, the
pause of ``CheckpointMirror.submit`` (what a training step now waits), and how long the
background copy itself takes (until ``wait()`` returns). Medians. Point ``--mirror`` at a Drive
folder on Colab to measure the real thing; here both folders are on the same local disk (the file
just written is in the page cache, so the copy is bound by the writes).

    python benchmarks/bench_mirror.py [--gb 1] [--repeat 3] [--local DIR] [--mirror DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--local", default="")
    ap.add_argument("--mirror", default="")
    args = ap.parse_args()
    from stablebeat_utils.checkpoints import CheckpointMirror, mirror_checkpoint

    scratch = Path(tempfile.mkdtemp(prefix="bench_mirror_"))
    # our own subfolders: nothing else in a given folder is touched
    local = (Path(args.local) if args.local else scratch) / "bench_mirror_local"
    mirror = (Path(args.mirror) if args.mirror else scratch) / "bench_mirror_copy"
    local.mkdir(parents=True, exist_ok=True)
    src = local / "step=1.ckpt"
    block = os.urandom(16 << 20)
    with open(src, "wb") as fh:
        for _ in range(max(1, round(args.gb * 1024 / 16))):
            fh.write(block)
    size = src.stat().st_size
    sync, submit, background = [], [], []
    try:
        for _ in range(args.repeat):
            t = time.perf_counter()
            mirror_checkpoint(src, mirror, keep=1)
            sync.append(time.perf_counter() - t)
            shutil.rmtree(mirror)
            m = CheckpointMirror(mirror, keep=1)
            t = time.perf_counter()
            m.submit(src)
            submit.append(time.perf_counter() - t)
            assert m.wait(timeout=3600)
            background.append(time.perf_counter() - t)
            assert (mirror / src.name).stat().st_size == size
            shutil.rmtree(mirror)
    finally:
        for folder in (local, mirror, scratch):
            shutil.rmtree(folder, ignore_errors=True)
    out = {
        "bytes": size,
        "repeat": args.repeat,
        "training_pause_s_synchronous": round(statistics.median(sync), 3),
        "training_pause_s_background": round(statistics.median(submit), 6),
        "background_copy_s": round(statistics.median(background), 3),
        "copy_MB_per_s": round(size / 1e6 / statistics.median(sync), 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
