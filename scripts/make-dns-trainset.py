"""Write the BIDS raw dataset of real training images for the DNS feature network.

Every IXI T1 of ``../shared/data/ixi-t1-dlmuse`` that is not held out for evaluation
(``benchmarks.heldout.IXI_HELDOUT``) becomes ``sub-<id without dashes>/anat/..._T1w``, and
the stroke patient's T1, T2 and FLAIR become ``sub-stroke/anat/sub-stroke_{T1w,T2w,FLAIR}``.
Files are copied, never linked. A non-empty ``OUT_DIR`` is refused unless this script wrote
it (it then holds the marker file ``.make-dns-trainset``) and is rewritten.

With ``--labels`` each IXI subject's DLMUSE label map is written as ground truth
(``derivatives/ground-truth/sub-<id>/anat/sub-<id>_space-T1w_dseg.nii.gz``), which is the
KeyMorph training set (``mmreg train keymorph OUT_DIR --suffix T1w --synth-from-labels``);
``--no-stroke`` leaves the stroke patient out (kept for evaluation).

Usage::

    python scripts/make-dns-trainset.py OUT_DIR [--data ../shared/data] [--labels] [--no-stroke]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.heldout import IXI_HELDOUT  # noqa: E402

MARKER = ".make-dns-trainset"
STROKE_FILES = {"T1w": "T1.nii.gz", "T2w": "T2.nii.gz", "FLAIR": "FLAIR.nii.gz"}

README = """\
# mmreg DNS feature-network training set

Real MR images for self-supervised training of mmreg's dense feature network, written by
`scripts/make-dns-trainset.py` from the project's shared data folder.

- `sub-IXI*`: IXI T1-weighted heads at 2 mm, 8-bit (IXI dataset, CC BY-SA 3.0, as
  processed by the NiChart project). The held-out evaluation subjects
  ({heldout}) are not included.
- `sub-stroke`: one chronic-stroke patient, 3T T1w, T2w and FLAIR, brain-extracted,
  8-bit, 1 mm, co-registered on one grid (neurolabusc/VolumeRenderingData, MIT).
"""


def ixi_subjects(data: Path) -> list[str]:
    """IXI ids with a T1 image in ``data``, sorted, held-out ids removed."""
    ids = sorted(
        p.name[: -len("_T1.nii.gz")] for p in (data / "ixi-t1-dlmuse" / "t1").glob("*_T1.nii.gz")
    )
    return [i for i in ids if i not in IXI_HELDOUT]


def bids_label(ixi_id: str) -> str:
    """BIDS subject label of an IXI id: ``IXI012-HH-1211`` -> ``IXI012HH1211``."""
    return "".join(ch for ch in ixi_id if ch.isalnum())


def _demographics(data: Path) -> dict[str, tuple[str, str]]:
    path = data / "ixi-t1-dlmuse" / "participants.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["MRID"]: (row["Age"], row["Sex"]) for row in csv.DictReader(f)}


def prepare_out(out: Path) -> None:
    """Create ``out``; refuse a non-empty folder this script did not write."""
    if out.exists():
        if not out.is_dir():
            raise SystemExit(f"{out} exists and is not a folder")
        contents = list(out.iterdir())
        if contents and not (out / MARKER).is_file():
            raise SystemExit(f"{out} is not empty and was not written by this script; refusing")
        for item in contents:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by scripts/make-dns-trainset.py\n")


def write_trainset(
    out: Path, data: Path, *, labels: bool = False, stroke: bool = True
) -> list[str]:
    """Write the dataset to ``out``; returns the BIDS subject labels written."""
    ixi_dir = data / "ixi-t1-dlmuse" / "t1"
    stroke_dir = data / "stroke-t1-t2-flair"
    if not ixi_dir.is_dir() or not stroke_dir.is_dir():
        raise SystemExit(f"shared data not found under {data}")
    prepare_out(out)
    demo = _demographics(data)
    rows = []
    for ixi_id in ixi_subjects(data):
        sub = bids_label(ixi_id)
        anat = out / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        shutil.copyfile(ixi_dir / f"{ixi_id}_T1.nii.gz", anat / f"sub-{sub}_T1w.nii.gz")
        if labels:
            truth = out / "derivatives" / "ground-truth" / f"sub-{sub}" / "anat"
            truth.mkdir(parents=True)
            seg = data / "ixi-t1-dlmuse" / "seg" / f"{ixi_id}_T1_DLMUSE.nii.gz"
            shutil.copyfile(seg, truth / f"sub-{sub}_space-T1w_dseg.nii.gz")
        age, sex = demo.get(ixi_id, ("n/a", "n/a"))
        rows.append((sub, age, sex, "IXI", ixi_id))
    if stroke:
        anat = out / "sub-stroke" / "anat"
        anat.mkdir(parents=True)
        for suffix, name in STROKE_FILES.items():
            shutil.copyfile(stroke_dir / name, anat / f"sub-stroke_{suffix}.nii.gz")
        rows.append(("stroke", "n/a", "n/a", "VolumeRenderingData", "n/a"))
    if labels:
        (out / "derivatives" / "ground-truth" / "dataset_description.json").write_text(
            json.dumps(
                {
                    "Name": "DLMUSE brain labels of the IXI T1 images (NiChart)",
                    "BIDSVersion": "1.9.0",
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "DLMUSE (NiChart)"}],
                },
                indent=2,
            )
            + "\n"
        )

    lines = ["participant_id\tage\tsex\tsource\tsource_id"]
    lines += ["\t".join((f"sub-{r[0]}", *r[1:])) for r in rows]
    (out / "participants.tsv").write_text("\n".join(lines) + "\n")
    (out / "participants.json").write_text(
        json.dumps(
            {
                "age": {"Description": "age at scan", "Units": "year"},
                "sex": {"Description": "sex as reported by the source dataset"},
                "source": {"Description": "dataset the images come from"},
                "source_id": {"Description": "subject id in the source dataset"},
            },
            indent=2,
        )
        + "\n"
    )
    description = {
        "Name": "mmreg DNS feature-network training set",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC-BY-SA-3.0 (IXI); MIT (stroke images)",
        "Authors": ["IXI dataset contributors", "Center for the Study of Aphasia Recovery"],
        "ReferencesAndLinks": [
            "https://brain-development.org/ixi-dataset/",
            "https://github.com/neurolabusc/VolumeRenderingData",
        ],
        "GeneratedBy": [{"Name": "mmreg scripts/make-dns-trainset.py"}],
    }
    (out / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    (out / "README").write_text(README.format(heldout=", ".join(IXI_HELDOUT)))
    (out / ".bidsignore").write_text(MARKER + "\n")
    return [r[0] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--labels", action="store_true", help="write the DLMUSE label maps")
    parser.add_argument("--no-stroke", action="store_true", help="leave the stroke patient out")
    args = parser.parse_args(argv)
    subjects = write_trainset(
        args.out_dir.resolve(), args.data.resolve(), labels=args.labels, stroke=not args.no_stroke
    )
    print(f"wrote {len(subjects)} subjects to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
