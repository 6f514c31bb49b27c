"""Cohort-scale throughput: pairs per hour, where the wall time goes, peak memory.

Generates a demo dataset of N subjects (default 100; T1w fixed, T2w moving), then:

1. **BIDS indexing**: times the pybids query cold (no index) and warm (the index kept
   in the work dir, ``<work>/bids_db``, reused as every later run does).
2. **Participant run**: ``mmreg BIDS OUT participant --worker cf`` as a child process,
   while a sampler reads the RSS of the process tree from ``/proc`` every 0.2 s.
3. **Wall-time split**: the seconds the tasks spent computing (preprocessing, from each
   ``PreparePair`` manifest; registration, ``runtime_s``; evaluation, ``evaluation_s``)
   against the worker-seconds available (``wall x nprocs``). The rest is Pydra (task
   hashing, pickling, process start, polling) plus file I/O and idle slots.
4. **Streaming**: when the first subject's results were on disk (``first_subject_s``) and
   the median subject's, measured from the start of the run (each subject's sink writes
   them as soon as the subject is done). Compare ``--job-granularity task`` and
   ``subject`` on the same cohort.

Writes ``OUT/throughput.csv`` (one row) and prints it.

Usage::

    python benchmarks/bench_throughput.py --out bench-tp --subjects 100 --methods sitk-rigid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Peak RSS per process of a process tree, sampled from ``/proc``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stack, seen = [self.pid], set()
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), _rss_mb(pid))
                stack += _children(pid)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _index_times(bids: Path, work: Path) -> tuple[float, float, int]:
    from mmreg.bids_app.config import Config
    from mmreg.bids_app.query import find_pairs

    config = Config(bids_dir=str(bids), output_dir=str(work.parent / "unused"), work_dir=str(work))
    t0 = time.perf_counter()
    pairs, _ = find_pairs(config)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    find_pairs(config)
    warm = time.perf_counter() - t0
    return cold, warm, len(pairs)


def _preprocess_seconds(work: Path) -> float:
    total = 0.0
    for path in work.rglob("prepared.json"):
        total += float(json.loads(path.read_text()).get("preprocess_s", 0.0))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--methods", default="sitk-rigid")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--job-granularity", default="task", choices=("auto", "task", "subject"))
    args = parser.parse_args(argv)

    from mmreg.imaging.phantoms.brain_dataset import write_demo_dataset

    out = args.out.resolve()
    bids, work, derivatives = out / "bids", out / "work", out / "derivatives"
    t0 = time.perf_counter()
    if not (bids / "dataset_description.json").is_file():
        write_demo_dataset(bids, n_subjects=args.subjects, seed=args.seed)
    generate_s = time.perf_counter() - t0
    index_cold_s, index_warm_s, n_pairs = _index_times(bids, work)

    command = [
        sys.executable,
        "-m",
        "mmreg.bids_app",
        str(bids),
        str(derivatives),
        "participant",
        "--methods",
        args.methods,
        "--work-dir",
        str(work),
        "--worker",
        "cf",
        "--nprocs",
        str(args.nprocs),
        "--omp-nthreads",
        str(args.omp_nthreads),
        "--job-granularity",
        args.job_granularity,
    ]
    env = {**os.environ, "NO_ET": "1", "MPLBACKEND": "Agg"}
    t0, started = time.perf_counter(), time.time()
    process = subprocess.Popen(command, env=env)
    with TreeMemory(process.pid) as memory:
        code = process.wait()
    wall = time.perf_counter() - t0

    tables = sorted(derivatives.glob("sub-*/sub-*_evaluation.csv"))
    # When each subject's results landed (its sink writes them as soon as it is done).
    landed = sorted(p.stat().st_mtime - started for p in tables)
    rows = pd.concat(pd.read_csv(p) for p in tables)
    ok = rows[rows["status"] == "ok"]
    register_s = float(ok["runtime_s"].sum())
    evaluate_s = float(ok["evaluation_s"].sum())
    preprocess_s = _preprocess_seconds(work)
    slots = wall * args.nprocs
    worker_peaks = [mb for pid, mb in memory.peaks.items() if pid != process.pid]
    result = {
        "subjects": args.subjects,
        "pairs": n_pairs,
        "methods": args.methods,
        "registrations": len(rows),
        "registrations_ok": len(ok),
        "nprocs": args.nprocs,
        "omp_nthreads": args.omp_nthreads,
        "job_granularity": args.job_granularity,
        "wall_s": wall,
        "first_subject_s": landed[0] if landed else float("nan"),
        "median_subject_s": float(np.median(landed)) if landed else float("nan"),
        "registrations_per_hour": 3600 * len(ok) / wall,
        "pairs_per_hour": 3600 * n_pairs / wall,
        "preprocess_fraction": preprocess_s / slots,
        "registration_fraction": register_s / slots,
        "evaluation_fraction": evaluate_s / slots,
        "pydra_io_idle_fraction": 1 - (preprocess_s + register_s + evaluate_s) / slots,
        "peak_rss_main_mb": memory.peaks.get(process.pid, 0.0),
        "peak_rss_worker_mb": max(worker_peaks, default=0.0),
        "bids_index_cold_s": index_cold_s,
        "bids_index_warm_s": index_warm_s,
        "generate_s": generate_s,
        "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.processor() or platform.machine(),
        "exit_code": code,
    }
    table = pd.DataFrame([result])
    table.to_csv(out / "throughput.csv", index=False, float_format="%.4g")
    for key, value in result.items():
        print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
    return 0 if code in (0, 65) else code


if __name__ == "__main__":
    sys.exit(main())
