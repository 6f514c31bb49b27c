"""segguided against intensity methods and label-driven oracles, as in Demir & Niethammer's
Table 1, on a dataset where intensity similarity fails.

The dataset is :mod:`benchmarks.segguided_data` (IXI T1w with DLMUSE structures vs an
ultrasound-like, misaligned second scan; the last five IXI subjects are never trained on).
For each number of labelled images (``--labelled 1,3,10``; 0: all), ``mmreg train
segguided --labels-from T1w --labelled N`` runs on the training subjects (or ``--model``
is reused), then the participant level registers the held-out subjects with every method
in ``--methods``. Rows of the CSV (``--out``):

- one per (labelled, method, subject): Dice of the ground-truth labels moved through the
  method's transform (the participant level's ``dice_mean``), folding, runtime;
- ``S_S`` / ``S_T`` rows: Dice of the predicted segmentations (the method's derivatives)
  against each image's own ground truth;
- ``oracle-labels``: ``ants-rigid`` then ``ants-syn`` run on the TRUE label maps of both
  images (registration driven by the true labels: the paper's upper oracle row).

Stage training times are in the ``stage_s_*`` columns of the ``S_S`` rows.

    python benchmarks/bench_segguided.py --work W --labelled 0 --out segguided.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.segguided_data import write_dataset  # noqa: E402

METHODS = "identity,ants-rigid,ants-rigid+ants-syn,ants-rigid+mind-io,ants-rigid+segguided"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    labels = sorted(set(np.unique(a).tolist()) - {0})
    values = [
        2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k)) for k in labels
    ]
    return float(np.mean(values)) if values else float("nan")


def oracle(bids: Path, subject: str) -> float:
    """Dice after ``ants-rigid+ants-syn`` on the true label maps (the label-driven oracle)."""
    from mmreg.imaging.image import load_labels
    from mmreg.imaging.preprocess import reorient_canonical
    from mmreg.methods import get_method

    gt = bids / "derivatives" / "ground-truth" / f"sub-{subject}" / "anat"
    fixed = reorient_canonical(load_labels(gt / f"sub-{subject}_space-T1w_dseg.nii.gz"))
    moving = reorient_canonical(load_labels(gt / f"sub-{subject}_space-T2w_dseg.nii.gz"))
    as_float = [x.with_data(np.asarray(x.data, np.float32)) for x in (fixed, moving)]
    result = get_method("ants-rigid+ants-syn").register(*as_float, seed=0)
    moved = result.transform.apply(moving, fixed, interpolation="nearest")
    return _dice(np.asarray(fixed.data), np.asarray(moved.data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--test", type=int, default=5, help="the last N subjects are held out")
    parser.add_argument("--labelled", default="0", help="e.g. 1,3,10 (0: all)")
    parser.add_argument("--model", type=Path, default=None, help="reuse these weights")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--out", type=Path, default=Path("segguided.csv"))
    parser.add_argument("train_options", nargs="*", help="after --: mmreg train options")
    args = parser.parse_args()

    from mmreg.bids_app.cli import main as mmreg
    from mmreg.imaging.image import load_labels

    bids = args.work / "bids"
    done = args.work / "dataset-complete"  # outside the dataset: BIDS validation is on
    if not done.is_file():
        write_dataset(bids, args.subjects)
        done.write_text("ok\n")
    subjects = [f"{i + 1:02d}" for i in range(args.subjects)]
    train, test = subjects[: -args.test], subjects[-args.test :]
    rows = []
    for labelled in [int(n) for n in args.labelled.split(",")]:
        model = args.model or args.work / f"segguided-l{labelled}.pt"
        if args.model is None and not model.is_file():
            argv = ["train", "segguided", str(bids), "--out", str(model), "--labels-from", "T1w"]
            argv += ["--labelled", str(labelled), "--participant-label", *train, "--no-progress"]
            assert mmreg([*argv, *args.train_options]) == 0
        meta = torch.load(model, weights_only=True)["metadata"]["training"]
        out = args.work / f"out-l{labelled}"
        status = mmreg(
            [str(bids), str(out), "participant", "--participant-label", *test, "--methods",
             args.methods, "--model", f"segguided={model}", "--work-dir",
             str(args.work / f"work-l{labelled}")]
        )  # fmt: skip
        assert status in (0, 65), status
        for subject in test:
            table = pd.read_csv(out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv")
            for _, r in table.iterrows():
                rows.append(
                    {
                        "labelled": labelled,
                        "subject": subject,
                        "method": r["method"],
                        "dice_mean": r.get("dice_mean"),
                        "neg_jacobian_pct": r.get("neg_jacobian_pct"),
                        "runtime_s": r.get("runtime_s"),
                    }
                )
            gt = bids / "derivatives" / "ground-truth" / f"sub-{subject}" / "anat"
            anat = out / f"sub-{subject}" / "anat"
            for name, space in (("S_S", "T1w"), ("S_T", "T2w")):
                pred = (
                    anat
                    / f"sub-{subject}_from-T2w_to-T1w_space-{space}_desc-segguided_dseg.nii.gz"
                )
                truth = load_labels(gt / f"sub-{subject}_space-{space}_dseg.nii.gz").data
                row = {"labelled": labelled, "subject": subject, "method": name}
                row["dice_mean"] = _dice(np.asarray(truth), np.asarray(load_labels(pred).data))
                if name == "S_S":
                    row.update({f"stage_s_{k}": v for k, v in meta["stage_wall_time_s"].items()})
                rows.append(row)
            start = time.perf_counter()
            rows.append(
                {
                    "labelled": labelled,
                    "subject": subject,
                    "method": "oracle-labels",
                    "dice_mean": oracle(bids, subject),
                    "runtime_s": time.perf_counter() - start,
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out, index=False)
    summary = frame.groupby(["labelled", "method"])[["dice_mean", "neg_jacobian_pct", "runtime_s"]]
    print(summary.mean().round(3).to_string())


if __name__ == "__main__":
    main()
