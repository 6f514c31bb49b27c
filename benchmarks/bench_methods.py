"""Side-by-side benchmark of registration methods on the demo brains.

Generates a demo dataset, runs every method through the real participant and
group levels (one CLI run, so all methods share machine conditions), and
writes ``OUT/methods.csv``: accuracy (Dice, HD95, TRE), runtime, and runtime
as a ratio to ``ants-affine`` (ratios travel between machines; seconds do not).

Usage::

    python benchmarks/bench_methods.py --subjects 4 --out bench [--max-rotation 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

DEFAULT_METHODS = (
    "identity,sitk-rigid,sitk-affine,ants-rigid,ants-affine,ants-syn,ants-affine+ants-syn"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--max-rotation", type=float, default=20.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--worker", default="cf")
    args = parser.parse_args(argv)

    from mmreg.bids_app.cli import main as mmreg_main

    out = args.out.resolve()
    t0 = time.perf_counter()
    code = mmreg_main(
        [
            "demo",
            "--out",
            str(out),
            "--subjects",
            str(args.subjects),
            "--seed",
            str(args.seed),
            "--methods",
            args.methods,
            "--max-rotation",
            str(args.max_rotation),
            "--nprocs",
            str(args.nprocs),
            "--worker",
            args.worker,
        ]
    )
    wall = time.perf_counter() - t0
    evaluation = pd.read_csv(out / "bids" / "derivatives" / "mmreg" / "group" / "evaluation.csv")
    ok = evaluation[evaluation["status"] == "ok"]
    table = ok.groupby("method", sort=False).agg(
        n=("dice_mean", "size"),
        initial_dice_mean=("initial_dice_mean", "mean"),
        dice_mean=("dice_mean", "mean"),
        dice_min=("dice_mean", "min"),
        hd95_mean_mm=("hd95_mean_mm", "mean"),
        initial_tre_mean_mm=("initial_tre_mean_mm", "mean"),
        tre_mean_mm=("tre_mean_mm", "mean"),
        neg_jacobian_pct=("neg_jacobian_pct", "mean"),
        runtime_median_s=("runtime_s", "median"),
    )
    table["n_failed"] = evaluation[evaluation["status"] != "ok"].groupby("method").size()
    table["n_failed"] = table["n_failed"].fillna(0).astype(int)
    if "ants-affine" in table.index:
        table["runtime_ratio_to_ants_affine"] = (
            table["runtime_median_s"] / table.loc["ants-affine", "runtime_median_s"]
        )
    table["demo_wall_s"] = wall
    table["cpus"] = len(os.sched_getaffinity(0))
    table["machine"] = platform.processor() or platform.machine()
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "methods.csv", float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["machine"]).round(3))
    print(f"demo exit code {code}; wall time {wall:.1f} s on {table['cpus'].iloc[0]} CPU(s)")
    return 0 if code in (0, 65) else code


if __name__ == "__main__":
    sys.exit(main())
