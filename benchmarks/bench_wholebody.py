"""Whole-body DXA <-> MR benchmark (Windsor et al. 2021, Table 1) on phantom subjects.

Each subject of :mod:`mmreg.imaging.phantoms.wholebody` gives a 2D DXA (bone, tissue)
and a 3D Dixon MR (fat, water); the MR is reduced to its mid-coronal slice by
:func:`mmreg.imaging.slice_synthesis.synthesize_coronal_slice`. The DXA is the fixed
image, the MR slice the moving one. Every method runs through
``mmreg.methods.get_method`` (what users get) and is scored by keypoint transfer error:
the five true landmarks of the DXA mapped by the method's transform, against their true
MR-slice positions, in cm, grouped as in the paper: HJ (hip joints: both femoral
heads), S1, SJ (shoulder joints: both humeral heads). "best-rigid" is the least-squares
rigid fit on the true landmarks themselves (the floor of any rigid method). Times are
CPU seconds (``time.process_time``) per registration.

The classical baselines (``identity``, ``sitk-rigid``, ``ants-rigid``) read one channel
per image: the mean of the normalised channels (bone + tissue, fat + water), since
mutual information needs a scalar image.

Retrieval and swap detection use the dense similarity of every DXA with every MR slice
of the cohort (CSLS-corrected, as the group level scores); the swap threshold is
calibrated within the cohort itself (the group level's rule,
:func:`mmreg.methods.contrastive.matching.impostor_threshold`), and swaps are injected
to measure it (``swap.csv``: that rule, the best-match rule and, with
``--calibration-subjects``, the old threshold from 1 % of a second cohort's true pairs;
``swap_curve.csv``/``swap_curve_dense.png``: caught against false alarms over alpha).

Outputs in ``--out``: ``table1.csv`` (per method: median, mean and sd of the error in
cm for HJ, S1, SJ and all points; CPU time), ``keypoints.csv`` (every point),
``matching.csv`` (per query), ``retrieval.csv`` (recall@K, ROC AUC, EER, ...),
``swap.csv``, ``swap_curve.csv``, ``roc.csv``, ``recall.csv`` and ``matching.png``.

Usage::

    # Table 1, matching and swap detection on 60 unseen subjects (seeds 1000..1059):
    python benchmarks/bench_wholebody.py run --seed 1000 --subjects 60 --out bench-wb
    # The shipped weights (see docs/contrastive.md):
    python benchmarks/bench_wholebody.py train --seed 20000000 --subjects 240 \\
        --out-dir mmreg/data/models --cache /tmp/wb-train
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmreg.imaging.image import Image
from mmreg.methods.contrastive.matching import CSLS_K, MATCH_ANGLES
from mmreg.methods.contrastive.refine import REFERENCES as REFINE_REFERENCES
from mmreg.reports.landmark_groups import LANDMARK_GROUPS

DEFAULT_METHODS = (
    "identity,sitk-rigid,ants-rigid,contrastive-dense,contrastive-salient,contrastive-refine"
)
#: Methods that read one channel per image (the rest read the channel images).
SCALAR_METHODS = ("identity", "sitk-", "ants-")
LOG = logging.getLogger("bench_wholebody")


@dataclass(frozen=True)
class WholeBodyPair:
    """One phantom subject as a registration pair (DXA fixed, MR slice moving)."""

    seed: int
    dxa: Image  # (X, Y, 2): bone, tissue
    mr: Image  # (X, Y, 2): fat, water (mid-coronal slice)
    landmarks_dxa: np.ndarray  # (5, 3) world, z = 0
    landmarks_mr: np.ndarray  # (5, 3) MR-slice world
    names: tuple[str, ...]
    truth: np.ndarray  # 4x4 DXA -> MR slice

    @property
    def subject(self) -> str:
        return f"wb{self.seed}"


def make_pair(seed: int) -> WholeBodyPair:
    """Generate a phantom subject and synthesise its MR mid-coronal slice."""
    from mmreg.imaging.phantoms.wholebody import LANDMARK_NAMES, generate_wholebody_subject
    from mmreg.imaging.slice_synthesis import synthesize_coronal_slice

    subject = generate_wholebody_subject(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a missed spine is a warning; the slice is still valid
        mid = synthesize_coronal_slice([subject.mr_fat, subject.mr_water])
    dxa = np.stack([subject.dxa_bone.data, subject.dxa_tissue.data], axis=-1)
    mr = np.stack([im.data for im in mid.images], axis=-1)
    return WholeBodyPair(
        seed=seed,
        dxa=Image(dxa.astype(np.float32), subject.dxa_bone.affine),
        mr=Image(mr.astype(np.float32), mid.grid.affine),
        landmarks_dxa=np.array([subject.landmarks_dxa[k] for k in LANDMARK_NAMES]),
        landmarks_mr=np.array([subject.landmarks_mr_slice[k] for k in LANDMARK_NAMES]),
        names=tuple(LANDMARK_NAMES),
        truth=np.asarray(subject.dxa_to_mr_slice),
    )


def load_pair(seed: int, cache: Path | None) -> WholeBodyPair:
    """:func:`make_pair`, through an ``.npz`` cache folder when given."""
    if cache is None:
        return make_pair(seed)
    path = cache / f"{seed}.npz"
    if path.is_file():
        z = np.load(path)
        return WholeBodyPair(
            seed,
            Image(z["dxa"], z["dxa_affine"]),
            Image(z["mr"], z["mr_affine"]),
            z["lm_dxa"],
            z["lm_mr"],
            tuple(str(n) for n in z["names"]),
            z["truth"],
        )
    pair = make_pair(seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        dxa=pair.dxa.data,
        dxa_affine=pair.dxa.affine,
        mr=pair.mr.data,
        mr_affine=pair.mr.affine,
        lm_dxa=pair.landmarks_dxa,
        lm_mr=pair.landmarks_mr,
        names=np.array(pair.names),
        truth=pair.truth,
    )
    tmp.replace(path)
    return pair


def load_cohort(
    seeds: range | list[int], cache: Path | None, progress: bool = True
) -> list[WholeBodyPair]:
    from tqdm.auto import tqdm

    return [load_pair(s, cache) for s in tqdm(list(seeds), desc="phantoms", disable=not progress)]


def scalar(image: Image) -> Image:
    """Mean of the per-channel normalised channels, as a 2D image (what the pipeline's
    classical methods register, :func:`mmreg.imaging.planar.channel_mean`)."""
    from mmreg.imaging.planar import channel_mean

    return Image(channel_mean(image.data), image.affine)


def best_rigid(pair: WholeBodyPair) -> np.ndarray:
    """The least-squares rigid map of the true DXA landmarks onto the MR-slice ones (4x4)."""
    from mmreg.methods.contrastive.geometry import fit_rigid

    m3 = fit_rigid(pair.landmarks_dxa[:, :2], pair.landmarks_mr[:, :2])
    m = np.eye(4)
    m[np.ix_([0, 1], [0, 1])] = m3[:2, :2]
    m[[0, 1], 3] = m3[:2, 2]
    return m


def keypoint_rows(
    pair: WholeBodyPair, method: str, mapped: np.ndarray, cpu: float
) -> list[dict[str, Any]]:
    errors = np.linalg.norm(mapped[:, :2] - pair.landmarks_mr[:, :2], axis=1) / 10.0
    group_of = {n: g for g, names in LANDMARK_GROUPS.items() for n in names}
    return [
        {
            "subject": pair.subject,
            "method": method,
            "landmark": name,
            "group": group_of[name],
            "error_cm": float(e),
            "cpu_s": cpu,
        }
        for name, e in zip(pair.names, errors, strict=True)
    ]


def register_all(
    pairs: list[WholeBodyPair], methods: list[str], models: dict[str, str], *, fixed: str = "dxa"
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Keypoint errors of every method on every pair (plus identity-free best-rigid)."""
    from tqdm.auto import tqdm

    from mmreg.methods import get_method
    from mmreg.pipeline import method_columns

    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    objects = {m: get_method(m, models=models) for m in methods}
    for pair in tqdm(pairs, desc="registering"):
        truth_rows = keypoint_rows(
            pair,
            "best-rigid",
            pair.landmarks_dxa @ best_rigid(pair)[:3, :3].T + best_rigid(pair)[:3, 3],
            0.0,
        )
        rows += truth_rows
        for name, method in objects.items():
            is_scalar = name.startswith(SCALAR_METHODS)
            dxa, mr = (scalar(pair.dxa), scalar(pair.mr)) if is_scalar else (pair.dxa, pair.mr)
            fixed_img, moving_img = (dxa, mr) if fixed == "dxa" else (mr, dxa)
            start = time.process_time()
            try:
                result = method.register(fixed_img, moving_img, seed=0)
            except Exception as exc:  # a benchmark reports failures; it does not stop
                failures.append({"subject": pair.subject, "method": name, "error": str(exc)})
                continue
            cpu = time.process_time() - start
            points = pair.landmarks_dxa
            if fixed == "dxa":
                mapped = result.transform.map_points(points)
            else:
                # fixed = MR: the transform maps MR points to DXA points; invert (rigid).
                mapped_inv = np.linalg.inv(result.transform.as_affine())
                mapped = points @ mapped_inv[:3, :3].T + mapped_inv[:3, 3]
            fallback = method_columns(result.extras).get("salient_fallback", np.nan)
            rows += [
                {**r, "salient_fallback": fallback} for r in keypoint_rows(pair, name, mapped, cpu)
            ]
    return pd.DataFrame(rows), failures


def table1(keypoints: pd.DataFrame) -> pd.DataFrame:
    """Per method: median, mean and sd (cm) per landmark group and overall; CPU time."""
    out = []
    for method, group in keypoints.groupby("method", sort=False):
        row: dict[str, Any] = {"method": method, "n_subjects": group["subject"].nunique()}
        for name in (*LANDMARK_GROUPS, "all"):
            e = (
                group["error_cm"]
                if name == "all"
                else group.loc[group["group"] == name, "error_cm"]
            )
            row[f"{name}_median_cm"] = float(e.median())
            row[f"{name}_mean_cm"] = float(e.mean())
            row[f"{name}_sd_cm"] = float(e.std(ddof=1)) if len(e) > 1 else 0.0
        per_pair = group.drop_duplicates("subject")["cpu_s"]
        row["cpu_s_median"] = float(per_pair.median())
        if "salient_fallback" in group and group["salient_fallback"].notna().any():
            # Share of subjects on which contrastive-salient fell back to dense.
            row["salient_fallback_share"] = float(
                group.drop_duplicates("subject")["salient_fallback"].mean()
            )
        row["cpu_s_mean"] = float(per_pair.mean())
        out.append(row)
    table = pd.DataFrame(out)
    best = table.loc[table["method"] == "best-rigid", "all_mean_cm"]
    if len(best) and float(best.iloc[0]) > 0:
        table["ratio_to_best_rigid"] = table["all_mean_cm"] / float(best.iloc[0])
    return table


def matching(
    pairs: list[WholeBodyPair],
    calibration: list[WholeBodyPair],
    model_path: str | None,
    out: Path,
    *,
    n_swaps: int,
    label: str = "dense",
    angles: tuple[float, ...] = (0.0,),
    hubness: bool = True,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Retrieval, verification and swap detection with one contrastive model."""
    from mmreg.methods.contrastive import matching as mt
    from mmreg.methods.contrastive.data import as_channels
    from mmreg.methods.contrastive.features import load_model, prepare, similarity_matrix

    model, _ = load_model(model_path)
    alpha = mt.SWAP_ALPHA if alpha is None else alpha

    def sims(cohort: list[WholeBodyPair]) -> np.ndarray:
        return similarity_matrix(
            model,
            [prepare(as_channels(p.dxa)) for p in cohort],
            [prepare(as_channels(p.mr)) for p in cohort],
            angles=angles,
        )

    subjects = [p.subject for p in pairs]
    s = sims(pairs)
    raw_summary = mt.summarize(s, subjects)
    if hubness:  # as the group level scores (cross-domain similarity local scaling)
        s = mt.csls(s, k=CSLS_K)
    # The group level's rule: a threshold calibrated within the cohort itself.
    threshold = mt.impostor_threshold(s, subjects, alpha=alpha)
    table = mt.match_table(s, subjects, threshold=threshold)
    table.insert(0, "model", label)
    summary = mt.summarize(s, subjects)
    summary.insert(0, "model", label)
    summary["score"] = f"csls-{CSLS_K}" if hubness else "raw"
    summary["raw_recall_at_1"] = float(raw_summary["recall_at_1"].iloc[0])
    summary["raw_tpr_at_fpr_1pct"] = float(raw_summary["tpr_at_fpr_1pct"].iloc[0])
    swaps = [
        {"rule": f"within-cohort alpha={alpha:g}"}
        | mt.swap_experiment(s, subjects, n_swaps, alpha=alpha, trials=200, seed=0).as_dict(),
        {"rule": "best match"}
        | mt.swap_experiment(s, subjects, n_swaps, trials=200, seed=0).as_dict(),
    ]
    if calibration:  # the old rule: 1 % of a second cohort's true pairs
        cal = sims(calibration)
        cal = mt.csls(cal, k=CSLS_K) if hubness else cal
        genuine_cal, _ = mt.true_pair_scores(cal, [p.subject for p in calibration])
        fixed = mt.calibrate_threshold(genuine_cal, 0.01)
        swaps.append(
            {"rule": "second-cohort 1 %"}
            | mt.swap_experiment(s, subjects, n_swaps, threshold=fixed, trials=200).as_dict()
        )
    curve = mt.swap_curve(s, subjects, n_swaps, trials=200, seed=0)
    (out / f"swap_curve_{label}.png").write_bytes(
        mt.swap_figure_png(curve, alpha=alpha, n_swaps=n_swaps)
    )
    genuine, impostor = mt.true_pair_scores(s, subjects)
    roc = mt.roc_curve(genuine, impostor)
    recall = mt.recall_curve(table, 10)
    np.save(out / f"similarity_{label}.npy", s)
    return {
        "table": table,
        "summary": summary,
        "swap": pd.DataFrame(swaps).assign(model=label),
        "swap_curve": curve.assign(model=label),
        "roc": roc.assign(model=label),
        "recall": recall.assign(model=label),
    }


def cmd_run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    if args.contrastive_model:
        models["contrastive"] = args.contrastive_model
    if args.refine_model:
        models["contrastive-refine"] = args.refine_model
    seeds = range(args.seed, args.seed + args.subjects)
    calib = range(args.seed + args.subjects, args.seed + args.subjects + args.calibration_subjects)
    wall = time.perf_counter()
    pairs = load_cohort(seeds, args.cache)
    calibration = load_cohort(calib, args.cache)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    keypoints, failures = register_all(pairs, methods, models, fixed=args.fixed)
    keypoints.to_csv(out / "keypoints.csv", index=False)
    table = table1(keypoints)
    table.to_csv(out / "table1.csv", index=False, float_format="%.4f")
    angles = tuple(float(a) for a in args.match_angles.split(","))
    results = [
        matching(
            pairs,
            calibration,
            models.get("contrastive"),
            out,
            n_swaps=args.swaps,
            angles=angles,
            hubness=not args.raw_scores,
        )
    ]
    if args.global_model:
        results.append(
            matching(
                pairs, calibration, args.global_model, out, n_swaps=args.swaps, label="global"
            )
        )
    for key, name in (
        ("table", "matching.csv"),
        ("summary", "retrieval.csv"),
        ("swap", "swap.csv"),
        ("swap_curve", "swap_curve.csv"),
        ("roc", "roc.csv"),
        ("recall", "recall.csv"),
    ):
        pd.concat([r[key] for r in results]).to_csv(out / name, index=False, float_format="%.5f")
    from mmreg.methods.contrastive.matching import figure_png

    png = figure_png(
        {str(r["summary"]["model"].iloc[0]): (r["roc"], r["recall"]) for r in results}
    )
    (out / "matching.png").write_bytes(png)
    meta = {
        "seeds": [seeds.start, seeds.stop - 1],
        "calibration_seeds": [calib.start, calib.stop - 1] if len(calib) else [],
        "fixed": args.fixed,
        "methods": methods,
        "models": models,
        "failures": failures,
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "machine": platform.platform(),
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        cols = [
            "method",
            "HJ_median_cm",
            "S1_median_cm",
            "SJ_median_cm",
            "all_mean_cm",
            "all_sd_cm",
            "cpu_s_median",
        ]
        print(table[[c for c in cols if c in table]].to_string(index=False, float_format="%.2f"))
        print(
            pd.concat([r["summary"] for r in results]).to_string(index=False, float_format="%.3f")
        )
        print(pd.concat([r["swap"] for r in results]).to_string(index=False, float_format="%.3f"))
    if failures:
        print(f"{len(failures)} registration(s) failed; see run.json", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the shipped weights: the dual encoder, then the refinement regressor."""
    import torch

    from mmreg.methods.contrastive.data import as_channels
    from mmreg.methods.contrastive.features import load_model
    from mmreg.methods.contrastive.refine import RefineTrainSettings, fit_refine, save_refine
    from mmreg.methods.contrastive.train import (
        ContrastiveTrainSettings,
        PairImages,
        fit_contrastive,
        save_contrastive,
    )

    torch.set_num_threads(args.threads)
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = load_cohort(range(args.seed, args.seed + args.subjects), args.cache)
    images = [PairImages(p.subject, as_channels(p.dxa), as_channels(p.mr)) for p in pairs]
    timings = {}
    encoder_path = out_dir / f"{args.prefix}contrastive.pt"
    if not args.skip_encoder:
        settings = ContrastiveTrainSettings(
            epochs=args.epochs,
            pooling=args.pooling,
            seed=args.train_seed,
            init=str(args.init.resolve()) if args.init else "",
            # Unset options keep ContrastiveTrainSettings' own defaults (one definition).
            **{
                key: value
                for key, value in (
                    ("spacing_mm", args.spacing_mm),
                    ("learning_rate", args.lr),
                    ("softness", args.softness),
                )
                if value is not None
            },
        )
        start = time.perf_counter()
        model, summary = fit_contrastive(images, settings, device=args.device)
        summary["phantom_seeds"] = [args.seed, args.seed + args.subjects - 1]
        timings["contrastive_s"] = round(time.perf_counter() - start, 1)
        summary["command"] = " ".join(sys.argv)
        save_contrastive(encoder_path, model, summary)
        print(f"wrote {encoder_path} in {timings['contrastive_s']} s")
    if args.pooling == "dense" and not args.skip_refine:
        model, checkpoint = load_model(encoder_path)
        given = args.refine_reference == "truth"
        settings_r = RefineTrainSettings(
            epochs=args.refine_epochs,
            seed=args.train_seed,
            width=48,
            reference="sitk-rigid" if given else args.refine_reference,
        )
        # The phantom's true DXA->MR-slice map (in the plane) as the reference alignment.
        truths = [p.truth[np.ix_([0, 1, 3], [0, 1, 3])] for p in pairs] if given else None
        start = time.perf_counter()
        regressor, summary_r = fit_refine(
            model, images, settings_r, device=args.device, references=truths
        )
        timings["refine_s"] = round(time.perf_counter() - start, 1)
        summary_r["phantom_seeds"] = [args.seed, args.seed + args.subjects - 1]
        summary_r["command"] = " ".join(sys.argv)
        path = out_dir / f"{args.prefix}contrastive-refine.pt"
        save_refine(path, model, regressor, summary_r, checkpoint.sha256)
        print(f"wrote {path} in {timings['refine_s']} s")
    print(json.dumps(timings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Table 1, retrieval and swap detection")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--seed", type=int, default=1000, help="first phantom seed (test cohort)")
    run.add_argument("--subjects", type=int, default=60)
    run.add_argument(
        "--calibration-subjects",
        type=int,
        default=0,
        help="a second cohort for the old swap rule (1 %% of its true pairs), for comparison",
    )
    run.add_argument("--methods", default=DEFAULT_METHODS)
    run.add_argument("--fixed", choices=("dxa", "mr"), default="dxa")
    run.add_argument("--swaps", type=int, default=5, help="swapped pairs per trial")
    run.add_argument(
        "--match-angles",
        default=",".join(f"{a:g}" for a in MATCH_ANGLES),
        help="MR rotations (deg) searched for matching (default: the group level's; 0: "
        "the paper's shifts only)",
    )
    run.add_argument(
        "--raw-scores", action="store_true", help="match on raw similarities (no CSLS)"
    )
    run.add_argument("--contrastive-model", default=None, help="default: shipped weights")
    run.add_argument("--refine-model", default=None, help="default: shipped weights")
    run.add_argument("--global-model", default=None, help="a pooling=global model to compare")
    run.add_argument("--cache", type=Path, default=None, help="phantom .npz cache folder")
    run.set_defaults(func=cmd_run)
    train = sub.add_parser("train", help="train the shipped weights on phantom subjects")
    train.add_argument("--out-dir", type=Path, required=True)
    train.add_argument("--prefix", default="", help="file name prefix of the checkpoints")
    train.add_argument("--seed", type=int, default=20_000_000, help="first phantom seed")
    train.add_argument("--subjects", type=int, default=240)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--refine-epochs", type=int, default=300)
    train.add_argument("--spacing-mm", type=float, default=None, help="encoder grid (mm)")
    train.add_argument("--lr", type=float, default=None, help="learning rate")
    train.add_argument("--softness", type=float, default=None, help="initial max softness")
    train.add_argument(
        "--init", type=Path, default=None, help="contrastive checkpoint to start from"
    )
    train.add_argument("--pooling", choices=("dense", "global"), default="dense")
    train.add_argument("--train-seed", type=int, default=0)
    train.add_argument("--skip-encoder", action="store_true", help="reuse OUT_DIR's encoder")
    train.add_argument("--skip-refine", action="store_true")
    train.add_argument(
        "--refine-reference",
        choices=("truth", *REFINE_REFERENCES),
        default="truth",
        help="alignment the refine perturbations are made around (truth: the phantom's)",
    )
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--cache", type=Path, default=None)
    train.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
