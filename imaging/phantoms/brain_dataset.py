"""The brain phantom as a BIDS dataset (``mmreg demo``): raw scans and ground-truth derivatives.

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

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mmreg import __version__
from mmreg.atomic import atomic_path
from mmreg.imaging.image import Image, save_image
from mmreg.imaging.phantoms.bids_writer import (
    write_dataset_description,
    write_json,
    write_participants,
    write_phantom_dataset,
    write_text,
    write_tsv,
)
from mmreg.imaging.phantoms.brain import (
    BRAIN_LABELS,
    MODALITIES,
    BrainSubject,
    generate_brain_subject,
)

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
    write_text(
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
    write_text(
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
    write_tsv(gt_dir / "dseg.tsv", ["index", "name"], [[k, v] for k, v in BRAIN_LABELS.items()])
    # Inherited by every *_dseg.nii.gz in the dataset.
    write_json(
        gt_dir / "dseg.json",
        {"Description": "Phantom labels: tissue classes and structures (see dseg.tsv)."},
    )
    # BIDS 1.10 has no suffix for landmark tables or transforms.
    write_text(gt_dir / ".bidsignore", "*_desc-landmarks.tsv\n*_xfm.json\n*_xfm.nii.gz\n")


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
        write_json(
            anat / f"{sub}_{mod}.json",
            {"SeriesDescription": f"mmreg brain phantom {mod} ({role} image)"},
        )
        labels = subject.labels[mod]
        save_image(
            Image(labels.data, labels.affine),
            gt_anat / f"{sub}_space-{mod}_dseg.nii.gz",
            dtype=np.uint8,
        )
        write_json(
            gt_anat / f"{sub}_space-{mod}_dseg.json",
            {"SpatialReference": f"bids:raw:{sub}/anat/{sub}_{mod}.nii.gz"},
        )
        landmarks = subject.landmarks[mod]
        write_tsv(
            gt_anat / f"{sub}_space-{mod}_desc-landmarks.tsv",
            ["name", "x", "y", "z"],
            [[name, *(f"{c:.4f}" for c in xyz)] for name, xyz in landmarks.items()],
        )
    for mod in MODALITIES[1:]:
        stem = f"{sub}_from-{FIXED_MODALITY}_to-{mod}_desc-truth_xfm"
        _write_field(subject, gt_anat / f"{stem}.nii.gz")
        write_json(
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
        seed: Dataset seed; subject ``k`` uses
            :func:`~mmreg.imaging.phantoms.bids_writer.subject_seed` ``(seed, k)``.
        max_rotation_deg: Largest rotation of the moving scans (random axis).
        large_rotations: Rotate the moving scans by up to 180 degrees about a random axis.

    Returns:
        ``bids_dir``.

    Raises:
        ValueError: If ``n_subjects`` is less than 1.
    """
    return write_phantom_dataset(
        bids_dir,
        n_subjects=n_subjects,
        seed=seed,
        max_rotation_deg=max_rotation_deg,
        large_rotations=large_rotations,
        generate=lambda sub_seed: generate_brain_subject(
            sub_seed, max_rotation_deg=max_rotation_deg, large_rotations=large_rotations
        ),
        write_subject=_write_subject,
        write_raw_metadata=_write_raw_metadata,
        write_ground_truth_metadata=_write_ground_truth_metadata,
    )
