"""Annotation transfer DXA -> MR (Windsor et al. 2021): train on one cohort, score another.

Both cohorts are whole-body demo datasets (``mmreg demo --dataset wholebody`` data, written
once per seed and size under ``--cache``). ``train`` fits an ``unet-transfer`` model on the
training cohort; ``eval`` segments the MR mid-coronal slices of unseen subjects and writes
per-subject Dice against ``space-midcoronal_dseg`` (``evaluation.csv``) and the means
(``summary.json``).

``train --method`` takes any registration method spec (what ``mmreg train unet-transfer``
runs) and two bounds that need the phantom's ground truth:

- ``truth``: the DXA labels moved by the true DXA -> MR-slice transform (a perfect
  registration; the labels still differ from the slice's own, since a DXA label is a
  projection of the whole bone and the slice cuts through it);
- ``oracle``: the MR slice's own labels (no transfer at all).

Usage::

    python benchmarks/bench_unet_transfer.py train --seed 30000000 --subjects 40 \\
        --method sitk-rigid --out unet.pt -- --epochs 30 --spacing-mm 4.4
    python benchmarks/bench_unet_transfer.py eval --model unet.pt --seed 31000000 \\
        --subjects 10 --out eval-sitk
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench_unet_transfer")
BOUNDS = ("truth", "oracle")


def dataset(seed: int, subjects: int, cache: Path) -> Path:
    """The BIDS folder of a whole-body demo cohort, written on first use."""
    from mmreg.imaging.phantoms.wholebody_dataset import write_wholebody_dataset

    bids = cache / f"wholebody-seed{seed}-n{subjects}" / "bids"
    done = bids.parent / "complete"
    if not done.is_file():
        start = time.perf_counter()
        write_wholebody_dataset(bids, n_subjects=subjects, seed=seed)
        done.write_text("ok\n")
        LOG.warning(
            "wrote %d subjects to %s in %.0f s", subjects, bids, time.perf_counter() - start
        )
    return bids


def pair_records(bids: Path, work: Path) -> list[dict[str, Any]]:
    """The ``unet-transfer`` target's pairs of a dataset (DXA bone fixed, Dixon fat moving)."""
    from mmreg.bids_app.train import TARGETS, training_pairs

    args = argparse.Namespace(
        bids_dir=bids,
        ground_truth=None,
        fixed=None,
        moving=None,
        participant_label=[],
        out=work / "model.pt",
        work_dir=work / "index",
    )
    return training_pairs(TARGETS["unet-transfer"], args)


def _truth_transforms(records: list[dict[str, Any]]) -> dict[str, Any]:
    from mmreg.imaging.transform import Transform
    from mmreg.segmentation.transfer import subject_id

    out = {}
    for record in records:
        folder = Path(record["fixed_dseg"]).parent
        name = f"sub-{record['subject']}_from-DXA_to-midcoronal_desc-truth_xfm.txt"
        out[subject_id(record)] = Transform.read(folder / name, ndim=2)
    return out


def train_bound(records: list[dict[str, Any]], bound: str, out: Path, argv: list[str]) -> Path:
    """Train on labels moved by the true transform (``truth``) or on the MR's own (``oracle``)."""
    from dataclasses import replace

    from mmreg.bids_app.train import TARGETS, build_train_parser, settings_from_args
    from mmreg.segmentation import unet_transfer as ut

    target = TARGETS["unet-transfer"]
    parser = build_train_parser(target, ut.UNetTransferSettings)
    args = parser.parse_args(["unused", "--out", str(out), *argv])
    settings = settings_from_args(ut.UNetTransferSettings, args)
    start = time.perf_counter()
    subjects, skipped = ut.collect_subjects(
        records, method=_truth_transforms(records), seed=settings.seed, progress=True
    )
    transfer_s = time.perf_counter() - start
    if bound == "oracle":
        subjects = [replace(s, labels=s.truth) for s in subjects]
    segmenter, summary = ut.fit_unet_transfer(
        subjects, settings, label_names=ut.label_table(records), progress=True
    )
    summary = {
        "transfer_method": f"bound:{bound}",
        **summary,
        "skipped": skipped,
        "transfer_wall_time_s": round(transfer_s, 1),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    ut.save_unet_transfer(out, segmenter, summary)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from mmreg.bids_app.train import main_train

    bids = dataset(args.seed, args.subjects, args.cache)
    extra = list(args.settings)
    if args.method in BOUNDS:
        from mmreg.runtime import limit_threads

        limit_threads(args.threads)
        records = pair_records(bids, args.out.parent / f".{args.out.stem}-work")
        train_bound(records, args.method, args.out, extra)
    else:
        argv = [str(bids), "--out", str(args.out), "--method", args.method]
        argv += ["--omp-nthreads", str(args.threads), *extra]
        status = main_train(["unet-transfer", *argv])
        if status:
            return status
    _print_training(args.out)
    return 0


def _print_training(path: Path) -> None:
    from mmreg.segmentation.unet_transfer import load_unet_transfer

    training = load_unet_transfer(path).metadata["training"]
    keep = ("transfer_method", "n_subjects", "best_epoch", "best_val_dice_transferred")
    keep += ("val_truth", "skipped", "transfer_wall_time_s", "train_wall_time_s", "wall_time_s")
    print(json.dumps({k: training.get(k) for k in keep}, indent=2))


def cmd_eval(args: argparse.Namespace) -> int:
    from mmreg.runtime import limit_threads
    from mmreg.segmentation.evaluate import evaluate_subjects, summarise, write_rows
    from mmreg.segmentation.unet_transfer import load_unet_transfer

    limit_threads(args.threads)
    bids = args.bids or dataset(args.seed, args.subjects, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    records = pair_records(bids, args.out)
    segmenter = load_unet_transfer(args.model)
    start = time.perf_counter()
    rows = evaluate_subjects(
        records,
        segmenter,
        device=args.device,
        predictions=args.out / "predictions" if args.save_predictions else None,
    )
    write_rows(rows, args.out / "evaluation.csv")
    summary = {
        "model": str(args.model),
        "transfer_method": segmenter.metadata.get("training", {}).get("transfer_method"),
        "bids": str(bids),
        **summarise(rows),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["n_failed"] == 0 else 65


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("bench-unet-transfer-data"))
    parser.add_argument("--threads", type=int, default=1, help="torch/ITK threads")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on a generated cohort")
    train.add_argument("--seed", type=int, default=30_000_000, help="training cohort seed")
    train.add_argument("--subjects", type=int, default=40)
    train.add_argument(
        "--method",
        default="sitk-rigid",
        help=f"transfer method spec, or a bound: {', '.join(BOUNDS)}",
    )
    train.add_argument("--out", type=Path, required=True, metavar="MODEL.pt")
    train.add_argument(
        "settings", nargs="*", help="after --: options of 'mmreg train unet-transfer'"
    )
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="score a model on unseen subjects")
    ev.add_argument("--model", type=Path, required=True, metavar="MODEL.pt")
    ev.add_argument("--seed", type=int, default=31_000_000, help="test cohort seed")
    ev.add_argument("--subjects", type=int, default=10)
    ev.add_argument("--bids", type=Path, default=None, help="a BIDS dataset instead")
    ev.add_argument("--out", type=Path, required=True, help="folder for the CSV and summary")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--save-predictions", action="store_true")
    ev.set_defaults(func=cmd_eval)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
