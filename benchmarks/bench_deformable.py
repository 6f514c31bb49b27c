"""Side-by-side deformable benchmark: ANTs SyN, convexAdam and feature instance optimisation.

Pairs come from :mod:`benchmarks.real_pairs` (demo brains, held-out IXI heads, the
stroke patient with a known deformation, the BraTS-Reg case), all at 2 mm. For every
pair ``ants-affine`` runs once; the chains ``ants-affine+X`` and ``convexadam`` start
from that same affine (their runtime includes it, ``io_runtime_s`` is the step after
it), so every deformable method starts identically; a plain spec (``ants-syn``) runs
from scratch.

``convexadam`` is the ``convexAdam`` pip package (MIND-SSC, coupled convex
optimisation, then Adam; Siebert et al. 2021), run with ``convex_adam_pt`` on the fixed
image and the moving image pre-warped by the shared affine; its voxel displacement is
turned into an mmreg transform (:func:`convexadam_transform`), so it is scored exactly
like the others. It is not a dependency of mmreg: install it into the venv with
``pip install -c constraints.txt convexAdam``.

Outputs (``--out DIR``): ``deformable.csv`` (one row per pair and method),
``deformable_summary.csv`` (means per set and method, also printed as a markdown
table) and ``machine.json`` (cores, threads, versions).

Usage::

    python benchmarks/bench_deformable.py --out bench-def --sets demo,ixi,stroke \\
        --methods ants-affine,ants-syn,convexadam --threads 1 [--model dns=dns.pt]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_pairs import SETS, SHARED_DATA, BenchPair, load_set  # noqa: E402
from mmreg.imaging.image import Grid, Image  # noqa: E402
from mmreg.imaging.metrics import (  # noqa: E402
    dice,
    hausdorff95,
    landmark_errors,
    nonpositive_jacobian_pct,
)
from mmreg.imaging.preprocess import foreground_mask  # noqa: E402
from mmreg.imaging.transform import Transform  # noqa: E402

DEFAULT_METHODS = "ants-syn,ants-affine+ants-syn,ants-affine+mind-io,ants-affine+dns-io,convexadam"
AFFINE = "ants-affine"
CONVEXADAM = "convexadam"
#: ``convex_adam_pt`` settings: the package's defaults (tuned for ~1.5 mm CT/MR) except
#: a finer control grid and search for 2 mm brains (4 voxels = 8 mm; +-3 steps = +-24 mm).
CONVEXADAM_PARAMS: dict[str, Any] = {
    "mind_r": 1,
    "mind_d": 2,
    "lambda_weight": 1.25,
    "grid_sp": 4,
    "disp_hw": 3,
    "selected_niter": 80,
    "selected_smooth": 0,
    "grid_sp_adam": 2,
    "ic": True,
}
COLUMNS = [
    "set",
    "pair",
    "method",
    "status",
    "dice_mean",
    "hd95_mean",
    "tre_mean_mm",
    "neg_jac_pct",
    "sd_log_jac",
    "runtime_s",
    "io_runtime_s",
    "runtime_ratio_to_ants_syn",
]
METRICS = COLUMNS[4:]


# --------------------------------------------------------------------------- convexAdam


def _padded_to_multiple(grid: Grid, multiple: int) -> Grid:
    """``grid`` extended at the far end of each axis to a multiple of ``multiple`` voxels."""
    shape = tuple(math.ceil(n / multiple) * multiple for n in grid.shape)
    return Grid(shape, grid.affine)


def voxel_displacement_to_transform(
    grid: Grid, displacement: np.ndarray, initial: Transform | None = None
) -> Transform:
    """The mmreg transform of a convexAdam displacement field on ``grid``.

    convexAdam's output ``d`` (``grid.shape + (3,)``, voxels, components in array-axis
    order) warps as ``warped[i] = moving[i + d[i]]`` (its ``apply_convex``): the pull of
    fixed voxel ``i`` from moving voxel ``i + d``. With voxel-to-world ``A`` that is the
    world displacement ``u = A[:3, :3] d``, and with a moving image pre-warped by
    ``initial``, the full fixed->moving map is ``x -> initial(x + u(x))``.
    """
    vectors = np.asarray(displacement, dtype=np.float64) @ grid.affine[:3, :3].T
    out = Transform.from_field(grid, vectors)
    return out if initial is None else out.then(initial)


def convexadam_transform(
    fixed: Image,
    moving: Image,
    initial: Transform | None = None,
    *,
    threads: int = 1,
    params: dict[str, Any] | None = None,
) -> tuple[Transform, float]:
    """Register with convexAdam from ``initial``; the full transform and the runtime (s).

    The moving image is resampled through ``initial`` onto the fixed grid, both grown to
    a multiple of the control spacing (zeros outside), and ``convex_adam_pt`` runs on
    the two arrays on the CPU in float32.
    """
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    settings = {**CONVEXADAM_PARAMS, **(params or {})}
    start = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    multiple = int(np.lcm(settings["grid_sp"], settings["grid_sp_adam"]))
    grid = _padded_to_multiple(fixed.grid, multiple)
    first = initial or Transform.identity()
    fixed_arr = Transform.identity().apply(fixed, grid).data
    moving_arr = first.apply(moving, grid).data
    displacement = convex_adam_pt(
        np.ascontiguousarray(fixed_arr, dtype=np.float32),
        np.ascontiguousarray(moving_arr, dtype=np.float32),
        dtype=torch.float32,
        device=torch.device("cpu"),
        **settings,
    )
    transform = voxel_displacement_to_transform(grid, displacement, initial)
    return transform, time.perf_counter() - start


# --------------------------------------------------------------------------- metrics


def evaluate(pair: BenchPair, transform: Transform) -> dict[str, float]:
    """Dice, HD95, TRE and Jacobian statistics of ``transform`` on ``pair``."""
    out: dict[str, float] = dict.fromkeys(
        ("dice_mean", "hd95_mean", "tre_mean_mm", "neg_jac_pct", "sd_log_jac"), math.nan
    )
    if pair.fixed_labels is not None and pair.moving_labels is not None:
        warped = transform.apply(pair.moving_labels, pair.fixed, interpolation="nearest").data
        present = np.intersect1d(
            np.unique(pair.fixed_labels.data), np.unique(pair.moving_labels.data)
        )
        labels = [int(v) for v in present if v != 0]
        scores = dice(pair.fixed_labels.data, warped, labels)
        out["dice_mean"] = float(np.mean([scores.get(lab, 0.0) for lab in labels]))
        hd = hausdorff95(pair.fixed_labels.data, warped, labels, pair.fixed.spacing)
        out["hd95_mean"] = float(np.nanmean(list(hd.values()))) if hd else math.nan
    if pair.fixed_points is not None and pair.moving_points is not None:
        errors = landmark_errors(transform.map_points(pair.fixed_points), pair.moving_points)
        out["tre_mean_mm"] = float(errors.mean())
    det = transform.jacobian_determinant(pair.fixed)
    out["neg_jac_pct"] = nonpositive_jacobian_pct(det)
    inside = foreground_mask(pair.fixed) & (det > 0)
    out["sd_log_jac"] = float(np.log(det[inside]).std()) if inside.any() else math.nan
    return out


# --------------------------------------------------------------------------- methods


def available(spec: str, models: dict[str, str] | None = None) -> str | None:
    """``None`` when every step of ``spec`` can run here, else the reason it cannot."""
    from mmreg.methods import get_method

    for step in (part.strip() for part in spec.split("+")):
        if step == CONVEXADAM:
            try:
                import convexAdam  # noqa: F401
            except ImportError:
                return "the convexAdam package is not installed (pip install convexAdam)"
            continue
        try:
            get_method(step, models=models)
        except Exception as exc:  # any import or lookup failure skips it
            return f"{type(exc).__name__}: {exc}"
    return None


def run_method(
    spec: str,
    pair: BenchPair,
    affine: Any,
    *,
    seed: int,
    threads: int,
    models: dict[str, str] | None = None,
) -> tuple[Transform, float, float]:
    """``(transform, runtime_s, io_runtime_s)`` of one spec on ``pair``.

    ``affine`` is the pair's shared ``ants-affine`` result; ``ants-affine`` and
    ``convexadam`` / ``ants-affine+X`` reuse it (``io_runtime_s``: the step after it),
    any other spec runs from scratch (``io_runtime_s`` NaN).
    """
    from mmreg.methods import run_chain

    if spec == AFFINE:
        return affine.transform, affine.runtime_s, math.nan
    prefix = AFFINE + "+"
    rest = spec[len(prefix) :] if spec.startswith(prefix) else None
    if spec == CONVEXADAM:
        rest = CONVEXADAM
    if rest is None:
        result = run_chain(
            spec, pair.fixed, pair.moving, seed=seed, threads=threads, models=models
        )
        return result.transform, result.runtime_s, math.nan
    if rest == CONVEXADAM:
        transform, seconds = convexadam_transform(
            pair.fixed, pair.moving, affine.transform, threads=threads
        )
    else:
        result = run_chain(
            rest,
            pair.fixed,
            pair.moving,
            initial=affine.transform,
            seed=seed,
            threads=threads,
            models=models,
        )
        transform, seconds = result.transform, result.runtime_s
    return transform, affine.runtime_s + seconds, seconds


# --------------------------------------------------------------------------- tables


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Means per set and method (failed runs counted, not averaged)."""
    ok = rows[rows["status"] == "ok"]
    summary = ok.groupby(["set", "method"], sort=False)[METRICS].mean()
    summary.insert(0, "n", ok.groupby(["set", "method"], sort=False).size())
    failed = rows[rows["status"] != "ok"].groupby(["set", "method"]).size()
    summary["n_failed"] = failed.reindex(summary.index).fillna(0).astype(int)
    return summary.reset_index()


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no extra dependency)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}g}"
        return str(value)

    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    """Cores, thread settings and versions, for reading runtimes later."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from mmreg.runtime import usable_cpus

    versions = {}
    for name in ("mmreg", "torch", "antspyx", "SimpleITK", "convexAdam", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "itk_threads_env": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
        "versions": versions,
    }


# --------------------------------------------------------------------------- main


def run(
    sets: list[str],
    methods: list[str],
    out: Path,
    *,
    seed: int = 0,
    threads: int = 2,
    data: Path = SHARED_DATA,
    n_demo: int = 2,
    models: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run the benchmark; writes ``out/deformable.csv`` after every pair and returns it."""
    from mmreg.methods import run_chain

    runnable = []
    for spec in methods:
        reason = available(spec, models)
        if reason is None:
            runnable.append(spec)
        else:
            log(f"note: skipping {spec}: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for set_name in sets:
        pairs = load_set(set_name, seed=seed, data=data, n_demo=n_demo)
        for pair in pairs:
            affine = run_chain(AFFINE, pair.fixed, pair.moving, seed=seed, threads=threads)
            pair_rows = []
            for spec in runnable:
                row: dict[str, Any] = {"set": set_name, "pair": pair.name, "method": spec}
                try:
                    transform, seconds, io_seconds = run_method(
                        spec, pair, affine, seed=seed, threads=threads, models=models
                    )
                    row.update(status="ok", runtime_s=seconds, io_runtime_s=io_seconds)
                    row.update(evaluate(pair, transform))
                except Exception as exc:  # one failure must not end the run
                    row.update(status=f"failed: {type(exc).__name__}: {exc}"[:200])
                pair_rows.append(row)
                log(
                    f"{set_name:6s} {pair.name:24s} {spec:24s} "
                    + (
                        f"dice {row.get('dice_mean', math.nan):.3f} "
                        f"tre {row.get('tre_mean_mm', math.nan):6.2f} mm "
                        f"negJ {row.get('neg_jac_pct', math.nan):.3f}% "
                        f"{row.get('runtime_s', math.nan):7.1f} s"
                        if row["status"] == "ok"
                        else row["status"]
                    )
                )
            syn = [r.get("runtime_s") for r in pair_rows if r["method"] == "ants-syn"]
            for r in pair_rows:
                base = syn[0] if syn else None
                r["runtime_ratio_to_ants_syn"] = (
                    r["runtime_s"] / base if base and "runtime_s" in r else math.nan
                )
            rows.extend(pair_rows)
            pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(out / "deformable.csv", index=False)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--demo-subjects", type=int, default=2)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FAMILY=PATH",
        help="weights of a learned method family, e.g. dns=dns.pt (repeatable)",
    )
    args = parser.parse_args(argv)
    models = {}
    for item in args.model:
        family, sep, path = item.partition("=")
        if not sep or not family or not path:
            parser.error(f"--model wants FAMILY=PATH, got {item!r}")
        models[family] = str(Path(path).resolve())

    from mmreg.runtime import limit_threads

    limit_threads(args.threads)  # before the first ANTs call: ITK reads it once
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps(machine_info(args.threads), indent=2) + "\n")
    t0 = time.perf_counter()
    rows = run(
        sets,
        methods,
        out,
        seed=args.seed,
        threads=args.threads,
        data=args.data,
        n_demo=args.demo_subjects,
        models=models or None,
    )
    summary = summarise(rows)
    summary.to_csv(out / "deformable_summary.csv", index=False)
    print()
    print(markdown(summary))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
