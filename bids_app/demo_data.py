"""Write the built-in brain demo: a BIDS raw dataset and its ground-truth derivatives.

Layout (``<l>`` = ``01``, ``02``, ...)::

    bids_dir/
      dataset_description.json  README  participants.tsv  participants.json
      sub-<l>/anat/sub-<l>_{T1w,T2w,PDw}.{nii.gz,json}
      derivatives/ground-truth/
        dataset_description.json  README  dseg.tsv  dseg.json  .bidsignore
        sub-<l>/anat/sub-<l>_space-<mod>_dseg.{nii.gz,json}      (mod = T1w, T2w, PDw)
        sub-<l>/anat/sub-<l>_space-<mod>_desc-landmarks.tsv      (name, x, y, z; RAS mm)
        sub-<l>/anat/sub-<l>_from-T1w_to-<mod>_desc-truth_xfm.json     (mod = T2w, PDw)
        sub-<l>/anat/sub-<l>_from-T1w_to-<mod>_desc-truth_xfm.nii.gz

The ``xfm`` files hold the true fixed->moving map (``y = Pose @ (x + d(x))``,
RAS mm; see the JSON's ``Description``). Landmark tables and transforms have
no place in BIDS 1.10, so the derivatives' ``.bidsignore`` lists them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mmreg import __version__
from mmreg.atomic import atomic_path
from mmreg.imaging.image import Image, save_image
from mmreg.imaging.phantoms.brain import (
    BRAIN_LABELS,
    MODALITIES,
    BrainSubject,
    generate_brain_subject,
)

BIDS_VERSION = "1.10.0"
GROUND_TRUTH_DIR = Path("derivatives") / "ground-truth"
#: The fixed modality of the demo; the others are moving.
FIXED_MODALITY = MODALITIES[0]

_LICENSE = (
    "Synthetic images derived from the MNI ICBM152 2009a template, "
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University; used under its "
    "permissive licence (see README)"
)
_TEMPLATE_CREDIT = """\
The anatomy comes from the MNI ICBM152 2009a symmetric template:
VS Fonov, AC Evans, RC McKinstry, CR Almli, DL Collins. Unbiased nonlinear
average age-appropriate brain templates from birth to adulthood. NeuroImage
47:S102 (2009); VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry,
DL Collins. Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 54(1):313-327 (2011).
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy,
modify, and distribute this software and its documentation for any purpose
and without fee is hereby granted, provided that the above copyright notice
appear in all copies. The authors and McGill University make no
representations about the suitability of this software for any purpose. It
is provided "as is" without express or implied warranty.
"""


def subject_seed(seed: int, index: int) -> int:
    """The generator seed of the ``index``-th subject (1-based) of a demo made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def subject_label(index: int, n_subjects: int) -> str:
    """``01``, ``02``, ... (more digits only beyond 99 subjects)."""
    return f"{index:0{max(2, len(str(n_subjects)))}d}"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def write_dataset_description(
    folder: Path, *, name: str, generator: str, license: str, **extra: Any
) -> None:
    """``dataset_description.json`` of a demo dataset; a folder under ``derivatives/``
    is a derivative dataset that links back to the raw one two levels up."""
    derivative = folder.parent.name == "derivatives"
    description: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "License": license,
        "Authors": ["mmreg developers"],
        "GeneratedBy": [{"Name": "mmreg", "Version": __version__, "Description": generator}],
    }
    if derivative:
        description["DatasetLinks"] = {"raw": "../../"}
        description["SourceDatasets"] = [{"URL": "bids:raw:"}]
    _write_json(folder / "dataset_description.json", {**description, **extra})


def write_participants(bids_dir: Path, rows: list[list[Any]]) -> None:
    """``participants.tsv`` (label, generator seed) and its sidecar."""
    _write_tsv(bids_dir / "participants.tsv", ["participant_id", "seed"], rows)
    _write_json(
        bids_dir / "participants.json",
        {
            "participant_id": {"Description": "Subject label"},
            "seed": {"Description": "Seed of the phantom generator for this subject"},
        },
    )


_GENERATOR = "mmreg brain phantom (mmreg.imaging.phantoms.brain)"


def _write_raw_metadata(bids_dir: Path, rows: list[list[Any]], settings: dict[str, Any]) -> None:
    write_dataset_description(
        bids_dir,
        name="mmreg brain demo (synthetic T1w, T2w and PDw)",
        generator=_GENERATOR,
        license=_LICENSE,
        SourceDatasets=[
            {
                "URL": "https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
                "Version": "ICBM152 2009a nonlinear symmetric",
            }
        ],
    )
    _write_text(
        bids_dir / "README",
        "# mmreg brain demo\n\n"
        "Synthetic brain MR scans written by `mmreg demo` (mmreg "
        f"{__version__}) for trying out cross-modality registration.\n"
        "Per subject: a T1w scan (the fixed image, 2 mm) and T2w and PDw scans "
        "(the moving images, 2.4 mm, stored left-to-right flipped) that share "
        "one random rigid pose and a small smooth deformation relative to the T1w.\n"
        "Intensities follow tissue models with bias fields and Rician noise.\n"
        f"Generator settings: {json.dumps(settings, sort_keys=True)}.\n\n"
        "Ground truth (labels, landmarks, true transforms) is in "
        "`derivatives/ground-truth`.\n\n" + _TEMPLATE_CREDIT,
    )
    write_participants(bids_dir, rows)


def _write_ground_truth_metadata(gt_dir: Path) -> None:
    write_dataset_description(
        gt_dir, name="mmreg brain demo ground truth", generator=_GENERATOR, license=_LICENSE
    )
    _write_text(
        gt_dir / "README",
        "# Ground truth of the mmreg brain demo\n\n"
        "- `*_space-<mod>_dseg.nii.gz`: labels on the grid of that subject's <mod> scan; "
        "label names in `dseg.tsv`.\n"
        "- `*_space-<mod>_desc-landmarks.tsv`: anatomical landmarks (columns name, x, y, z; "
        "world coordinates in mm, RAS) on the same anatomy in every scan.\n"
        "- `*_from-T1w_to-<mod>_desc-truth_xfm.{json,nii.gz}`: the true map from T1w points "
        "to <mod> points, `y = Pose @ (x + d(x))` in RAS mm; `Pose` is in the JSON and "
        "`d` is the 4D displacement field (X, Y, Z, 3) in the NIfTI (RAS vectors, "
        "trilinear, zero outside its grid).\n\n" + _TEMPLATE_CREDIT,
    )
    _write_tsv(gt_dir / "dseg.tsv", ["index", "name"], [[k, v] for k, v in BRAIN_LABELS.items()])
    # Inherited by every *_dseg.nii.gz in the dataset.
    _write_json(
        gt_dir / "dseg.json",
        {"Description": "Phantom labels: tissue classes and structures (see dseg.tsv)."},
    )
    # BIDS 1.10 has no suffix for landmark tables or transforms.
    _write_text(gt_dir / ".bidsignore", "*_desc-landmarks.tsv\n*_xfm.json\n*_xfm.nii.gz\n")


def _write_field(subject: BrainSubject, path: Path) -> None:
    img = nib.Nifti1Image(
        subject.displacement.astype(np.float32), subject.displacement_grid.affine
    )
    img.set_sform(subject.displacement_grid.affine, code=1)
    img.set_qform(subject.displacement_grid.affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_intent("vector")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _write_subject(bids_dir: Path, gt_dir: Path, label: str, subject: BrainSubject) -> None:
    sub = f"sub-{label}"
    anat = bids_dir / sub / "anat"
    gt_anat = gt_dir / sub / "anat"
    for mod, image in subject.images.items():
        # Whole numbers in int16, as scanners store them; keeps the files small.
        rounded = image.with_data(np.rint(image.data))
        save_image(rounded, anat / f"{sub}_{mod}.nii.gz", dtype=np.int16)
        role = "fixed" if mod == FIXED_MODALITY else "moving"
        _write_json(
            anat / f"{sub}_{mod}.json",
            {"SeriesDescription": f"mmreg brain phantom {mod} ({role} image)"},
        )
        labels = subject.labels[mod]
        save_image(
            Image(labels.data, labels.affine),
            gt_anat / f"{sub}_space-{mod}_dseg.nii.gz",
            dtype=np.uint8,
        )
        _write_json(
            gt_anat / f"{sub}_space-{mod}_dseg.json",
            {"SpatialReference": f"bids:raw:{sub}/anat/{sub}_{mod}.nii.gz"},
        )
        landmarks = subject.landmarks[mod]
        _write_tsv(
            gt_anat / f"{sub}_space-{mod}_desc-landmarks.tsv",
            ["name", "x", "y", "z"],
            [[name, *(f"{c:.4f}" for c in xyz)] for name, xyz in landmarks.items()],
        )
    for mod in MODALITIES[1:]:
        stem = f"{sub}_from-{FIXED_MODALITY}_to-{mod}_desc-truth_xfm"
        _write_field(subject, gt_anat / f"{stem}.nii.gz")
        _write_json(
            gt_anat / f"{stem}.json",
            {
                "Description": (
                    f"True map from {FIXED_MODALITY} world points x to {mod} world points y "
                    "(RAS mm): y = Pose @ (x + d(x)), d = DisplacementField, trilinear, "
                    "zero outside its grid."
                ),
                "Pose": np.round(subject.pose, 10).tolist(),
                "DisplacementField": f"{stem}.nii.gz",
                "FromSpace": FIXED_MODALITY,
                "ToSpace": mod,
                "GeneratorMetadata": subject.metadata,
            },
        )


def write_demo_dataset(
    bids_dir: Path,
    *,
    n_subjects: int,
    seed: int,
    max_rotation_deg: float = 20.0,
    large_rotations: bool = False,
) -> Path:
    """Write the brain demo as a BIDS raw dataset with ground truth under ``derivatives/``.

    Args:
        bids_dir: Dataset root (created if missing; existing demo files are overwritten).
        n_subjects: Number of subjects (labelled ``01``, ``02``, ...).
        seed: Dataset seed; subject ``k`` uses :func:`subject_seed` ``(seed, k)``.
        max_rotation_deg: Largest rotation of the moving scans (random axis).
        large_rotations: Rotate the moving scans by up to 180 degrees about a random axis.

    Returns:
        ``bids_dir``.

    Raises:
        ValueError: If ``n_subjects`` is less than 1.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    bids_dir = Path(bids_dir)
    gt_dir = bids_dir / GROUND_TRUTH_DIR
    settings = {
        "seed": int(seed),
        "n_subjects": int(n_subjects),
        "max_rotation_deg": float(max_rotation_deg),
        "large_rotations": bool(large_rotations),
    }
    rows = []
    for k in range(1, n_subjects + 1):
        label = subject_label(k, n_subjects)
        sub_seed = subject_seed(seed, k)
        subject = generate_brain_subject(
            sub_seed, max_rotation_deg=max_rotation_deg, large_rotations=large_rotations
        )
        _write_subject(bids_dir, gt_dir, label, subject)
        rows.append([f"sub-{label}", sub_seed])
    _write_raw_metadata(bids_dir, rows, settings)
    _write_ground_truth_metadata(gt_dir)
    return bids_dir
