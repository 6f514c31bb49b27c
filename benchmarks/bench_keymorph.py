"""KeyMorph benchmark: accuracy against rotation angle, keypoint repeatability, runtime.

Cases: each subject's T1w is the fixed image; the moving image is a T2-like
contrast of the SAME scan (a per-label intensity look-up table inside the brain --
CSF bright, grey matter middle, white matter dark, with per-label jitter and the
T1 texture inverted -- and a non-monotone table outside it: air dark, CSF-like
intensities bright, muscle darker, fat moderately bright; plus noise), rotated by a
known angle about a random axis through the head centre and shifted by up to 8 mm.
The rotation goes into the moving image's affine (voxel -> world), so the moving
labels move exactly alongside, with no interpolation: a perfect registration scores
Dice 1. Images are written to NIfTI and go through :func:`mmreg.pipeline.prepare`
(preprocessing and centre-of-mass pre-alignment) and the methods through
:func:`mmreg.pipeline.register`, exactly as ``mmreg`` runs them.

Data: the held-out real IXI T1 scans (:data:`benchmarks.heldout.IXI_HELDOUT`, never
trained on) with DLMUSE labels in ``../shared/data/ixi-t1-dlmuse`` (2 mm, ~148 labels),
each as the whole head (``variant=head``) and brain-extracted by its labels
(``variant=brain``), and the stroke patient's T1 against its real FLAIR (``variant=flair``,
brain-extracted scans; its brain mask is the one label) when present; else generated demo
brains (11 labels, seeds from 5_000_000, disjoint from the training seeds >= 10_000_000).

Outputs (``--out``):
  ``cases.csv``        one row per case and method (Dice, TRE, runtime, ...)
  ``dice_by_angle.csv``  mean/median Dice per variant, method and angle
  ``repeatability.csv``  KeyMorph keypoint repeatability per angle (voxels)
  ``runtime.csv``      median runtime per method and the ratio to ants-affine

Usage::

    python benchmarks/bench_keymorph.py --out bench-km [--subjects 6]
        [--angles 0,30,60,90,120,150,180] [--methods keymorph-affine,ants-affine,...]
        [--model PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.spatial.transform import Rotation

os.environ.setdefault("NO_ET", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IXI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi-t1-dlmuse"
STROKE = IXI.parent / "stroke-t1-t2-flair"
DEFAULT_METHODS = "ants-affine,ants-ai,keymorph-affine,keymorph-affine+ants-affine,keymorph-tps"
DEFAULT_ANGLES = "0,30,60,90,120,150,180"


@dataclass(frozen=True)
class Case:
    """One benchmark pair: images and labels in memory, the true fixed->moving map."""

    subject: str
    variant: str
    angle: float
    fixed: object  # mmreg Image
    moving: object
    fixed_labels: object
    moving_labels: object
    truth: npt.NDArray[np.float64]  # 4x4 fixed world -> moving world


def ixi_subjects(n: int) -> list[tuple[str, Path, Path]]:
    """``(name, t1, seg)`` of the first ``n`` held-out IXI subjects (never trained on)."""
    from benchmarks.heldout import IXI_HELDOUT

    out = []
    for name in IXI_HELDOUT[:n]:
        t1 = IXI / "t1" / f"{name}_T1.nii.gz"
        seg = IXI / "seg" / f"{name}_T1_DLMUSE.nii.gz"
        if t1.is_file() and seg.is_file():
            out.append((name, t1, seg))
    return out


def brain_extracted(t1: object, labels: object) -> object:
    """The T1 with everything outside its labels (the brain) set to 0."""
    from mmreg.imaging.image import Image

    data = np.asarray(t1.data, np.float32) * (np.asarray(labels.data) > 0)
    return Image(data, t1.affine)


def t2_like(
    t1: npt.NDArray, labels: npt.NDArray, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A T2-weighted-looking image from a T1 and its labels (see the module docstring)."""
    from mmreg.imaging.image import Image
    from mmreg.imaging.preprocess import normalize_intensity

    n = normalize_intensity(Image(np.asarray(t1, np.float32), np.eye(4))).data.astype(np.float64)
    out = np.empty_like(n)
    brain = labels > 0
    # Inside the brain: a decreasing map (T1-bright white matter -> T2-dark), offset per label.
    ids = np.unique(labels[brain])
    offset = dict(zip(ids.tolist(), rng.uniform(-0.05, 0.05, ids.size), strict=True))
    lut = np.zeros(int(labels.max()) + 1)
    for k, v in offset.items():
        lut[k] = v
    out[brain] = np.clip(1.2 - 1.05 * n[brain] + lut[labels[brain]], 0.02, 1.0)
    # Outside: air dark, CSF-like (dark in T1) bright, muscle darker, fat moderately bright.
    xs = [0.0, 0.06, 0.15, 0.3, 0.5, 1.0]
    ys = [0.0, 0.05, 0.8, 0.3, 0.5, 0.7]
    out[~brain] = np.interp(n[~brain], xs, ys)
    out += rng.normal(0.0, 0.015, out.shape)
    return (np.abs(out) * 1000.0).astype(np.float32)


def make_case(
    name: str,
    t1_img: object,
    labels_img: object,
    angle: float,
    rng: np.random.Generator,
    *,
    variant: str = "head",
    other: object | None = None,
) -> Case:
    """Rotate a T2-like copy of ``t1_img`` (or ``other``, a real co-registered contrast)
    by ``angle`` degrees about a random axis."""
    from mmreg.imaging.image import Image
    from mmreg.imaging.preprocess import foreground_mask

    t1, lab = t1_img, labels_img
    mask = foreground_mask(Image(np.asarray(t1.data, np.float32), t1.affine))
    centre = t1.grid.voxel_to_world(np.argwhere(mask).mean(0, keepdims=True))[0]
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    rot = Rotation.from_rotvec(np.deg2rad(angle) * axis).as_matrix()
    shift = rng.standard_normal(3)
    shift *= rng.uniform(0.0, 8.0) / np.linalg.norm(shift)
    # Moving world y = R (x - c) + c + t for the fixed world point x of the same voxel.
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre + shift - rot @ centre
    data = t2_like(t1.data, lab.data, rng) if other is None else np.asarray(other.data)
    moving = Image(data, pose @ t1.affine)
    moving_labels = Image(np.asarray(lab.data), pose @ lab.affine)
    return Case(name, variant, float(angle), t1, moving, lab, moving_labels, pose)


def _save(image: object, path: Path) -> Path:
    from mmreg.imaging.image import save_image

    return save_image(image, path)


def dice_mean(case: Case, transform: object) -> tuple[float, float]:
    """Mean Dice over the fixed image's labels (and the fraction of labels found)."""
    from mmreg.imaging.metrics import dice

    warped = transform.apply(case.moving_labels, case.fixed_labels.grid, interpolation="nearest")
    labels = [int(v) for v in np.unique(case.fixed_labels.data) if v != 0]
    scores = dice(case.fixed_labels.data, warped.data, labels)
    return float(np.mean(list(scores.values()))), len(scores) / max(1, len(labels))


def tre(case: Case, transform: object) -> float:
    """Mean error (mm) of the estimated map at brain voxels (subsampled) vs the truth."""
    lab = np.asarray(case.fixed_labels.data)
    idx = np.argwhere(lab > 0)[::97]
    pts = case.fixed_labels.grid.voxel_to_world(idx)
    truth = pts @ case.truth[:3, :3].T + case.truth[:3, 3]
    return float(np.linalg.norm(transform.map_points(pts) - truth, axis=1).mean())


def repeatability(
    case: Case, extras: dict, spacing: float
) -> tuple[float, float] | tuple[None, None]:
    """Keypoints of the moving image vs the true map of the fixed keypoints (voxels)."""
    from mmreg.bids_app.derivatives import find_keypoints

    found = find_keypoints(extras)
    if found is None:
        return None, None
    kf = np.asarray(found[0], dtype=np.float64)
    km = np.asarray(found[1], dtype=np.float64)
    mapped = kf @ case.truth[:3, :3].T + case.truth[:3, 3]
    d = np.linalg.norm(km - mapped, axis=1) / spacing
    return float(d.mean()), float(np.median(d))


def run_case(
    case: Case, methods: Sequence[str], *, folder: Path, models: dict, threads: int
) -> list[dict]:
    from mmreg.imaging.preprocess import PreprocessOptions
    from mmreg.pipeline import prepare, register

    fixed_path = _save(case.fixed, folder / "fixed.nii.gz")
    moving_path = _save(case.moving, folder / "moving.nii.gz")
    prepared = prepare(str(fixed_path), str(moving_path), PreprocessOptions())
    rows = []
    spacing = float(np.mean(case.fixed.spacing))
    for method in methods:
        row = {
            "subject": case.subject,
            "variant": case.variant,
            "angle": case.angle,
            "method": method,
        }
        try:
            result = register(prepared, method, seed=0, threads=threads, models=models)
        except Exception as exc:  # a failed method is a row, not a crash
            row.update(status="failed", error=" ".join(str(exc).split())[:200])
            rows.append(row)
            continue
        d, found = dice_mean(case, result.transform)
        rep_mean, rep_median = repeatability(case, result.extras, spacing)
        row.update(
            status="ok",
            dice_mean=d,
            labels_found=found,
            tre_mm=tre(case, result.transform),
            runtime_s=result.runtime_s,
            repeatability_vox_mean=rep_mean,
            repeatability_vox_median=rep_median,
            keypoint_residual_mm=result.extras.get("keypoint_residual_mm"),
        )
        rows.append(row)
    return rows


def raw_repeatability(case: Case, models: dict, threads: int) -> dict:
    """Repeatability of the detector alone: independent detection on both images."""
    from mmreg.imaging.preprocess import PreprocessOptions, preprocess
    from mmreg.methods import get_method

    method = get_method("keymorph-affine:passes=0", models=models)
    fixed = preprocess(case.fixed, PreprocessOptions())
    moving = preprocess(case.moving, PreprocessOptions())
    result = method.register(fixed, moving, threads=threads)
    mean, median = repeatability(case, result.extras, float(np.mean(case.fixed.spacing)))
    return {"raw_repeatability_vox_mean": mean, "raw_repeatability_vox_median": median}


def phantom_sources(n: int) -> list[tuple[str, object, object]]:
    from mmreg.imaging.phantoms.brain import generate_brain_subject

    out = []
    for k in range(n):
        s = generate_brain_subject(5_000_000 + k, extra_deformation_mm=0.0)
        out.append((f"phantom-{5_000_000 + k}", s.t1w, s.labels_fixed))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument(
        "--variants",
        default="head,brain,flair",
        help="IXI whole heads, IXI brain-extracted, stroke T1 vs FLAIR (real data only)",
    )
    parser.add_argument("--angles", default=DEFAULT_ANGLES)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--model", type=Path, default=None, help="KeyMorph weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--data", choices=("auto", "ixi", "phantom"), default="auto")
    args = parser.parse_args(argv)

    from mmreg.imaging.image import load_image, load_labels
    from mmreg.methods.keymorph import register as _keymorph  # noqa: F401  (registers names)
    from mmreg.runtime import limit_threads

    limit_threads(args.threads)
    angles = [float(a) for a in args.angles.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    models = {"keymorph": str(args.model.resolve())} if args.model else {}
    use_ixi = args.data == "ixi" or (args.data == "auto" and IXI.is_dir())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    # (name, variant, fixed, labels, real moving contrast or None for a T2-like one)
    sources: list[tuple[str, str, object, object, object | None]] = []
    if use_ixi:
        for name, t1, seg in ixi_subjects(args.subjects):
            image, labels = load_image(t1), load_labels(seg)
            if "head" in variants:
                sources.append((name, "head", image, labels, None))
            if "brain" in variants:
                sources.append((name, "brain", brain_extracted(image, labels), labels, None))
        if "flair" in variants and STROKE.is_dir():
            from mmreg.imaging.image import Image

            t1 = load_image(STROKE / "T1.nii.gz")
            mask = Image((np.asarray(t1.data) > 0).astype(np.int16), t1.affine)
            sources.append(("stroke", "flair", t1, mask, load_image(STROKE / "FLAIR.nii.gz")))
    else:
        sources = [(n, "phantom", t, lab, None) for n, t, lab in phantom_sources(args.subjects)]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-km-") as tmp:
        for k, (name, variant, t1, lab, other) in enumerate(sources):
            for a, angle in enumerate(angles):
                rng = np.random.default_rng([args.seed, k, a])
                case = make_case(name, t1, lab, angle, rng, variant=variant, other=other)
                case_rows = run_case(
                    case, methods, folder=Path(tmp), models=models, threads=args.threads
                )
                if any(m.startswith("keymorph") for m in methods):
                    raw = raw_repeatability(case, models, args.threads)
                    for row in case_rows:
                        row.update(raw)
                rows.extend(case_rows)
                brief = ", ".join(
                    f"{r['method']}={r.get('dice_mean', float('nan')):.3f}" for r in case_rows
                )
                print(f"{name} {variant} {angle:5.0f} deg: {brief}", flush=True)
    cases = pd.DataFrame(rows)
    cases.to_csv(out / "cases.csv", index=False)
    ok = cases[cases["status"] == "ok"]
    by_angle = (
        ok.groupby(["variant", "method", "angle"])["dice_mean"]
        .agg(["mean", "median", "min", "count"])
        .reset_index()
    )
    tre_by_angle = ok.groupby(["variant", "method", "angle"])["tre_mm"].mean().reset_index()
    by_angle = by_angle.merge(tre_by_angle, on=["variant", "method", "angle"])
    by_angle.to_csv(out / "dice_by_angle.csv", index=False)
    km = ok[ok["method"].str.startswith("keymorph") & ~ok["method"].str.contains(r"\+")]
    if not km.empty:
        rep = (
            km.groupby(["variant", "method", "angle"])[
                [
                    "repeatability_vox_mean",
                    "repeatability_vox_median",
                    "raw_repeatability_vox_mean",
                    "raw_repeatability_vox_median",
                ]
            ]
            .mean()
            .reset_index()
        )
        rep.to_csv(out / "repeatability.csv", index=False)
    runtime = ok.groupby("method")["runtime_s"].median().rename("median_runtime_s").reset_index()
    if "ants-affine" in set(runtime["method"]):
        base = float(runtime.loc[runtime["method"] == "ants-affine", "median_runtime_s"].iloc[0])
        runtime["ratio_to_ants_affine"] = runtime["median_runtime_s"] / base
    runtime["threads"] = args.threads
    runtime["machine"] = f"{platform.machine()} {os.cpu_count()} cpus"
    runtime.to_csv(out / "runtime.csv", index=False)
    for variant, part in by_angle.groupby("variant"):
        print(f"{variant}: mean Dice")
        print(part.pivot(index="angle", columns="method", values="mean").round(3).to_string())
    print(runtime.round(3).to_string(index=False))
    print(f"data: {'IXI' if use_ixi else 'phantom'}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
