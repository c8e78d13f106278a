"""Shared pieces of the benchmarks (``benchmarks/run_all.py``; notebooks 01–03): machine facts,
process-tree memory/CPU sampling, a line fit.

Linux only: memory and CPU time of a process *tree* are read from ``/proc`` (``resource`` can only
see children that were waited for, and a stage's worker pools live under a forkserver / spawn
process that its parent never waits for). No extra dependency: psutil would do the same walk but
is not one of the project's requirements.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# the machine


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine_info() -> dict:
    """nproc, CPU model, RAM, OS, Python and engine versions, date, load."""
    from importlib import metadata

    def ver(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "cpu_mhz": _first("/proc/cpuinfo", "cpu MHz"),
        "ram_gib": round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            p: ver(p) for p in ("torch", "numpy", "librosa", "soxr", "soundfile", "essentia-tensorflow", "transformers")
        },
        "threads_env": {
            v: os.environ.get(v, "") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "gpu": _gpu(),
    }


def _gpu() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# a process tree, sampled from /proc


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds user+system) of one process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = raw[raw.rindex(")") + 2 :].split()
    return int(f[1]), (int(f[11]) + int(f[12])) / TICK


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree(root: int) -> dict[int, float]:
    """``{pid: cpu_seconds}`` of ``root`` and all its living descendants."""
    parent, cpu = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                parent[int(entry.name)], cpu[int(entry.name)] = st
    keep, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while frontier:
        for c in children.get(frontier.pop(), []):
            if c not in keep:
                keep.add(c)
                frontier.append(c)
    return {p: cpu[p] for p in keep if p in cpu}


class TreeSampler(threading.Thread):
    """Samples a process tree every ``interval`` s: peak of the summed RSS and PSS, peak single RSS,
    process count, and CPU seconds per pid (the last value seen; a process's final < ``interval``
    of CPU is missed). PSS splits shared pages (libraries mapped by every worker) between the
    processes that share them, so the PSS sum does not count a library twice; the RSS sum does."""

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_single = 0
        self.max_procs = 0
        self.cpu: dict[int, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def sample(self) -> None:
        procs = tree(self.root)
        rss = {p: _rss(p) for p in procs}
        pss = sum(_pss(p) for p in procs)
        with self._lock:
            for p, c in procs.items():
                self.cpu[p] = max(c, self.cpu.get(p, 0.0))
            self.peak_rss = max(self.peak_rss, sum(rss.values()))
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_single = max([self.peak_single, *rss.values()])
            self.max_procs = max(self.max_procs, len(procs))

    def cpu_total(self) -> float:
        with self._lock:
            return sum(self.cpu.values())

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------------------------------------
# numbers


def fit_line(x, y) -> dict:
    """Least-squares ``y = slope·x + intercept`` with R² (numpy.polyfit)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def hms(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def python_exe() -> str:
    return sys.executable


def now() -> float:
    return time.perf_counter()
