"""ants-ai against ants-affine on large rotations: landmark error and runtime per case.

Cases: twelve 2 mm brain phantoms (:func:`mmreg.imaging.phantoms.brain.generate_brain_subject`
with ``large_rotations=True``: rotations of 4-157 degrees about random axes, shifts up to
10 mm, a 4 mm distortion between the T1w and T2w scans, so affine cannot do better than
~1.5 mm), each registered alone and after a centre-of-mass pre-alignment, as the app runs
it. This was a slow test; accuracy over many cases and runtime belong in a benchmark.

Outputs (``--out``): ``cases.csv`` (one row per seed, pre-alignment and method: landmark
error in mm, runtime in s) and ``summary.csv`` (cases within 2.5 mm, median runtime and
its ratio to ants-affine).

Usage::

    python benchmarks/bench_ants_ai.py --out bench-ai [--seeds 12] [--methods ants-ai,ants-affine]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from mmreg.imaging.phantoms.brain import BrainSubject, generate_brain_subject
from mmreg.imaging.transform import Transform
from mmreg.methods import get_method

#: A case counts as recovered below this mean landmark error (mm).
RECOVERED_MM = 2.5


def _com_shift(subject: BrainSubject) -> Transform:
    """The translation between the two scans' centres of mass (``--prealign com``)."""
    fixed, moving = subject.t1w, subject.t2w
    shift = np.eye(4)
    shift[:3, 3] = (
        moving.grid.voxel_to_world(ndimage.center_of_mass(moving.data))[0]
        - fixed.grid.voxel_to_world(ndimage.center_of_mass(fixed.data))[0]
    )
    return Transform.from_affine(shift)


def _landmark_error(subject: BrainSubject, transform: Transform) -> float:
    fixed = np.array(list(subject.landmarks_fixed.values()))
    true = subject.fixed_to_moving(fixed)
    return float(np.linalg.norm(transform.map_points(fixed) - true, axis=1).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--methods", default="ants-ai,ants-affine")
    args = parser.parse_args(argv)
    rows = []
    for seed in range(args.seeds):
        subject = generate_brain_subject(seed, large_rotations=True)
        for prealign in ("none", "com"):
            initial = _com_shift(subject) if prealign == "com" else None
            for method in args.methods.split(","):
                start = time.perf_counter()
                result = get_method(method).register(
                    subject.t1w, subject.t2w, initial=initial, seed=0, threads=1
                )
                seconds = time.perf_counter() - start
                error = _landmark_error(subject, result.transform)
                rows.append(
                    {
                        "seed": seed,
                        "prealign": prealign,
                        "method": method,
                        "error_mm": error,
                        "runtime_s": seconds,
                    }
                )
                print(f"seed {seed} {prealign:4s} {method}: {error:6.2f} mm {seconds:6.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = pd.DataFrame(rows)
    cases.to_csv(args.out / "cases.csv", index=False)
    summary = cases.groupby(["method", "prealign"]).agg(
        recovered=("error_mm", lambda e: int((e < RECOVERED_MM).sum())),
        cases=("error_mm", "size"),
        median_error_mm=("error_mm", "median"),
        median_runtime_s=("runtime_s", "median"),
    )
    base = (
        summary.xs("ants-affine", level="method")["median_runtime_s"]
        if ("ants-affine" in args.methods.split(","))
        else None
    )
    if base is not None:
        summary["runtime_ratio_to_ants_affine"] = (
            summary["median_runtime_s"]
            / base.reindex(summary.index.get_level_values("prealign")).to_numpy()
        )
    summary.to_csv(args.out / "summary.csv")
    print(summary.to_string())


if __name__ == "__main__":
    main()
