"""The whole-body phantom as a BIDS dataset: DXA and Dixon MR, raw scans and ground truth.

Layout (``<l>`` = ``01``, ``02``, ...)::

    bids_dir/
      dataset_description.json  README  participants.tsv  participants.json  .bidsignore
      sub-<l>/anat/sub-<l>_acq-dixon_rec-fat_T1w.{nii.gz,json}     3D Dixon fat
      sub-<l>/anat/sub-<l>_acq-dixon_rec-water_T1w.{nii.gz,json}   3D Dixon water
      sub-<l>/anat/sub-<l>_rec-bone_DXA.{nii.gz,json}              2D DXA bone
      sub-<l>/anat/sub-<l>_rec-tissue_DXA.{nii.gz,json}            2D DXA soft tissue
      derivatives/ground-truth/
        dataset_description.json  README  dseg.tsv  dseg.json  .bidsignore
        sub-<l>/anat/sub-<l>_space-DXA_dseg.{nii.gz,json}          spine, pelvis, cavity
        sub-<l>/anat/sub-<l>_space-DXA_desc-landmarks.tsv          (x, y, 0)
        sub-<l>/anat/sub-<l>_space-T1w_dseg.{nii.gz,json}          on the Dixon grid
        sub-<l>/anat/sub-<l>_space-T1w_desc-landmarks.tsv          (x, y, z)
        sub-<l>/anat/sub-<l>_acq-dixon_rec-{fat,water}_space-midcoronal_T1w.{nii.gz,json}
        sub-<l>/anat/sub-<l>_space-midcoronal_dseg.{nii.gz,json}   on the MR slice grid
        sub-<l>/anat/sub-<l>_space-midcoronal_desc-landmarks.tsv   (x, y, 0)
        sub-<l>/anat/sub-<l>_from-DXA_to-midcoronal_desc-truth_xfm.{txt,json}

Naming. BIDS 1.10 has no modality for DXA and no suffix for Dixon images.
The Dixon fat and water images are two reconstructions of one T1-weighted
gradient-echo acquisition, which BIDS expresses as ``acq-dixon`` plus
``rec-fat``/``rec-water`` on the ``T1w`` suffix (``part-`` only takes
mag/phase/real/imag, and pybids only parses those). The DXA bone and
soft-tissue images are likewise two decompositions of one dual-energy scan:
``rec-bone``/``rec-tissue`` on a ``DXA`` suffix, which BIDS cannot express, so
the raw ``.bidsignore`` lists exactly ``*_DXA.nii.gz`` and ``*_DXA.json``.
mmreg queries them as ``--fixed suffix=DXA rec=bone`` and
``--moving suffix=T1w acq=dixon rec=fat`` (see :data:`FIXED_FILTER`).

Ground truth. Label spaces are named by modality suffix as the contract asks
(``space-DXA``, ``space-T1w``); ``space-midcoronal`` is the 2D mid-coronal slice
that :func:`mmreg.imaging.slice_synthesis.synthesize_coronal_slice` makes from
the fat and water images with default settings (224 x 501 pixels at 2.2 mm,
centred on the MR field of view). The ``xfm`` files hold the true 2D rigid map
from DXA world points to MR-slice world points (the ITK convention: fixed DXA
-> moving MR slice); it is exact for the trunk and the landmarks, while the
limbs move by a few degrees on top of it. Landmark tables and transforms have
no place in BIDS 1.10: the derivatives' ``.bidsignore`` lists them.
"""

from __future__ import annotations

import gzip
import json
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmreg import __version__
from mmreg.atomic import atomic_path
from mmreg.imaging.image import Image
from mmreg.imaging.phantoms.bids_writer import (
    write_dataset_description,
    write_json,
    write_participants,
    write_phantom_dataset,
    write_text,
    write_tsv,
)
from mmreg.imaging.phantoms.wholebody import (
    LANDMARK_NAMES,
    WHOLEBODY_LABELS,
    WholeBodySettings,
    WholeBodySubject,
    generate_wholebody_subject,
)
from mmreg.imaging.slice_synthesis import (
    CoronalSlice,
    SliceSettings,
    SpineNotFoundWarning,
    synthesize_coronal_slice,
)
from mmreg.imaging.transform import Transform

#: Modality suffix of the DXA images and label space of their ground truth.
DXA_SUFFIX = "DXA"
#: Modality suffix of the Dixon images and label space of their 3D ground truth.
DIXON_SUFFIX = "T1w"
#: Label space of the synthesised mid-coronal MR slice.
MR_SLICE_SPACE = "midcoronal"
#: Suggested query of the fixed image (``--fixed``) and of the moving image (``--moving``).
FIXED_FILTER: dict[str, str] = {"suffix": DXA_SUFFIX, "rec": "bone"}
MOVING_FILTER: dict[str, str] = {"suffix": DIXON_SUFFIX, "acq": "dixon", "rec": "fat"}
#: Raw-dataset file stems (after ``sub-<l>_``) of the four images.
FILES: dict[str, str] = {
    "fat": f"acq-dixon_rec-fat_{DIXON_SUFFIX}",
    "water": f"acq-dixon_rec-water_{DIXON_SUFFIX}",
    "bone": f"rec-bone_{DXA_SUFFIX}",
    "tissue": f"rec-tissue_{DXA_SUFFIX}",
}

_LICENSE = "CC0"


_GENERATOR = "mmreg whole-body phantom (mmreg.imaging.phantoms.wholebody)"


def _write_raw_metadata(bids_dir: Path, rows: list[list[Any]], settings: dict[str, Any]) -> None:
    write_dataset_description(
        bids_dir,
        name="mmreg whole-body demo (synthetic DXA and Dixon MR)",
        generator=_GENERATOR,
        license=_LICENSE,
    )
    write_text(
        bids_dir / "README",
        "# mmreg whole-body demo\n\n"
        f"Synthetic whole-body scans written by `mmreg demo --dataset wholebody` (mmreg "
        f"{__version__}) for trying out DXA to MR registration.\n\n"
        "Per subject:\n"
        "- `*_rec-bone_DXA` and `*_rec-tissue_DXA`: 2D whole-body DXA, head to feet "
        "(areal bone mineral and soft-tissue density, g/cm^2), 2.2 mm pixels. 2D world "
        "coordinates: x left-right, y inferior-superior, z = 0.\n"
        "- `*_acq-dixon_rec-fat_T1w` and `*_acq-dixon_rec-water_T1w`: 3D two-point Dixon "
        "fat and water images, neck to knees, 2.2 mm isotropic (acquired as 4.4 mm "
        "slices), stored left-right flipped.\n\n"
        "Between the scans the MR is rotated in the coronal plane by a few degrees, "
        "translated and cropped, and each arm and leg moves by a few degrees.\n"
        "BIDS has no DXA modality: `.bidsignore` lists the DXA files. Query them with "
        "`--fixed suffix=DXA rec=bone` and `--moving suffix=T1w acq=dixon rec=fat`.\n"
        f"Generator settings: {json.dumps(settings, sort_keys=True)}.\n\n"
        "Ground truth (labels, landmarks, the true DXA to MR-slice transform) is in "
        "`derivatives/ground-truth`.\n",
    )
    write_participants(bids_dir, rows)
    # BIDS 1.10 has no modality for DXA; everything else is valid BIDS.
    write_text(bids_dir / ".bidsignore", f"*_{DXA_SUFFIX}.nii.gz\n*_{DXA_SUFFIX}.json\n")


def _write_ground_truth_metadata(gt_dir: Path) -> None:
    write_dataset_description(
        gt_dir, name="mmreg whole-body demo ground truth", generator=_GENERATOR, license=_LICENSE
    )
    write_text(
        gt_dir / "README",
        "# Ground truth of the mmreg whole-body demo\n\n"
        f"- `*_space-{DXA_SUFFIX}_dseg.nii.gz`: labels on the DXA grid (projections: the "
        "pelvic inlet is labelled where the sacrum lies behind it).\n"
        f"- `*_space-{DIXON_SUFFIX}_dseg.nii.gz`: labels on the Dixon grid (3D; the pelvic "
        "cavity is the region enclosed by the pelvic ring in the coronal view, between "
        "sacrum and pubis).\n"
        f"- `*_space-{MR_SLICE_SPACE}_dseg.nii.gz`: labels on the mid-coronal MR slice made "
        "by mmreg's slice synthesis from the fat and water images with default settings "
        "(224 x 501 pixels at 2.2 mm); label names in `dseg.tsv`. The slices themselves "
        f"are `*_space-{MR_SLICE_SPACE}_{DIXON_SUFFIX}.nii.gz`.\n"
        "- `*_desc-landmarks.tsv`: femoral and humeral head centres and S1 (columns name, "
        "x, y, z; world mm, RAS; 2D images use z = 0).\n"
        f"- `*_from-{DXA_SUFFIX}_to-{MR_SLICE_SPACE}_desc-truth_xfm.txt` (ITK, "
        "readable by SimpleITK and ANTs) and `.json`: the true 2D rigid map from DXA world "
        "points to MR-slice world points. It is exact for the trunk and the landmarks; "
        "the limbs move by a few degrees on top of it.\n",
    )
    write_tsv(
        gt_dir / "dseg.tsv", ["index", "name"], [[k, v] for k, v in WHOLEBODY_LABELS.items()]
    )
    write_json(
        gt_dir / "dseg.json",
        {"Description": "Whole-body phantom labels: spine, pelvis, pelvic cavity (dseg.tsv)."},
    )
    write_text(gt_dir / ".bidsignore", "*_desc-landmarks.tsv\n*_xfm.json\n*_xfm.txt\n")


def _save(image: Image, path: Path, dtype: npt.DTypeLike) -> Path:
    """Write NIfTI like :func:`~mmreg.imaging.image.save_image`, but with fast gzip.

    Noisy MR volumes compress to the same size at level 1 as at level 6, four
    times faster; headers carry no name and no time stamp, so files are
    reproducible byte for byte.
    """
    nifti = image.to_nifti(dtype)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=1, mtime=0))
    return path


def _landmark_rows(points: dict[str, np.ndarray]) -> list[list[str]]:
    return [[name, *(f"{c:.4f}" for c in points[name])] for name in LANDMARK_NAMES]


def mr_slice_settings() -> SliceSettings:
    """The slice-synthesis settings of the ``space-midcoronal`` ground truth."""
    return SliceSettings()


def _write_raw(anat: Path, sub: str, subject: WholeBodySubject) -> tuple[Image, Image]:
    """The raw Dixon and DXA images and sidecars; the Dixon fat and water as written."""
    # MR as scanners store it (whole numbers, int16); the slice ground truth is computed
    # from exactly these values, so mmreg's own synthesis of the files reproduces it.
    fat = subject.mr_fat.with_data(np.rint(subject.mr_fat.data))
    water = subject.mr_water.with_data(np.rint(subject.mr_water.data))
    for key, image in (("fat", fat), ("water", water)):
        _save(image, anat / f"{sub}_{FILES[key]}.nii.gz", np.int16)
        write_json(
            anat / f"{sub}_{FILES[key]}.json",
            {
                "SeriesDescription": f"mmreg whole-body phantom Dixon {key} image",
                "MRAcquisitionType": "3D",
                "ImageType": ["DERIVED", "PRIMARY", key.upper()],
            },
        )
    for key, image in (("bone", subject.dxa_bone), ("tissue", subject.dxa_tissue)):
        _save(image, anat / f"{sub}_{FILES[key]}.nii.gz", np.float32)
        write_json(
            anat / f"{sub}_{FILES[key]}.json",
            {
                "SeriesDescription": f"mmreg whole-body phantom DXA {key} image",
                "Modality": "DXA",
                "Units": "g/cm^2",
                "Description": (
                    "Projection along the anterior-posterior axis; 2D world coordinates "
                    "x = left-right, y = inferior-superior, z = 0."
                ),
            },
        )
    return fat, water


def _write_mr_slices(gt_anat: Path, sub: str, fat: Image, water: Image) -> CoronalSlice:
    """The mid-coronal fat and water slices: the reference images of the slice labels
    (and a ready-made moving image for DXA registration)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpineNotFoundWarning)
        mr_slice = synthesize_coronal_slice([fat, water], settings=mr_slice_settings())
    synthesis = {
        "Settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(mr_slice.settings).items()
        },
        "FoundSpine": bool(mr_slice.path.found),
    }
    for key, image in zip(("fat", "water"), mr_slice.images, strict=True):
        stem = _mr_slice_stem(sub, key)
        # Stored as (X, Y, 1): BIDS wants 3D T1w files; mmreg reads it back as 2D.
        _save(Image(image.data[:, :, None], image.affine), gt_anat / f"{stem}.nii.gz", np.float32)
        write_json(
            gt_anat / f"{stem}.json",
            {
                # Same world frame (x and z) as the Dixon image it comes from.
                "SpatialReference": f"bids:raw:{sub}/anat/{sub}_{FILES[key]}.nii.gz",
                "SkullStripped": False,
                "Description": (
                    f"Mid-coronal {key} slice synthesised from the Dixon images along the "
                    "spine (mmreg.imaging.slice_synthesis, default settings); 2D world "
                    "x = left-right, y = the MR's inferior-superior z, z = 0."
                ),
                "Sources": [
                    f"bids:raw:{sub}/anat/{sub}_{FILES['fat']}.nii.gz",
                    f"bids:raw:{sub}/anat/{sub}_{FILES['water']}.nii.gz",
                ],
                "SliceSynthesis": synthesis,
            },
        )
    return mr_slice


def _mr_slice_stem(sub: str, key: str) -> str:
    """File stem of a subject's mid-coronal ``fat`` or ``water`` slice."""
    return f"{sub}_acq-dixon_rec-{key}_space-{MR_SLICE_SPACE}_{DIXON_SUFFIX}"


def _write_labels_and_landmarks(
    gt_anat: Path, sub: str, subject: WholeBodySubject, slice_labels: Image
) -> None:
    """Label maps and landmark tables in the three spaces (DXA, Dixon, MR slice)."""
    spaces = {
        DXA_SUFFIX: (
            subject.dxa_labels,
            subject.landmarks_dxa,
            f"bids:raw:{sub}/anat/{sub}_{FILES['bone']}.nii.gz",
        ),
        DIXON_SUFFIX: (
            subject.mr_labels,
            subject.landmarks_mr,
            f"bids:raw:{sub}/anat/{sub}_{FILES['fat']}.nii.gz",
        ),
        MR_SLICE_SPACE: (
            slice_labels,
            subject.landmarks_mr_slice,
            f"bids::{sub}/anat/{_mr_slice_stem(sub, 'fat')}.nii.gz",
        ),
    }
    for space, (labels, landmarks, reference) in spaces.items():
        _save(labels, gt_anat / f"{sub}_space-{space}_dseg.nii.gz", np.uint8)
        write_json(gt_anat / f"{sub}_space-{space}_dseg.json", {"SpatialReference": reference})
        write_tsv(
            gt_anat / f"{sub}_space-{space}_desc-landmarks.tsv",
            ["name", "x", "y", "z"],
            _landmark_rows(landmarks),
        )


def _write_true_transform(gt_anat: Path, sub: str, subject: WholeBodySubject) -> None:
    """The true 2D rigid map from the DXA to the MR slice: ITK text file and JSON."""
    stem = f"{sub}_from-{DXA_SUFFIX}_to-{MR_SLICE_SPACE}_desc-truth_xfm"
    Transform.from_affine(subject.dxa_to_mr_slice, ndim=2).write(gt_anat / f"{stem}.txt")
    write_json(
        gt_anat / f"{stem}.json",
        {
            "Description": (
                f"True 2D rigid map from {DXA_SUFFIX} world points (x, y, 0) to "
                f"{MR_SLICE_SPACE} world points (RAS mm; fixed -> moving, as ITK): "
                "y = Matrix @ x. Exact for the trunk and the landmarks; each limb moves by "
                "a few degrees on top of it."
            ),
            "Matrix": np.round(subject.dxa_to_mr_slice, 10).tolist(),
            "ITKTransform": f"{stem}.txt",
            "FromSpace": DXA_SUFFIX,
            "ToSpace": MR_SLICE_SPACE,
            "GeneratorMetadata": subject.metadata,
        },
    )


def _write_subject(bids_dir: Path, gt_dir: Path, label: str, subject: WholeBodySubject) -> None:
    """Every file of one subject: raw images, then its ground truth."""
    sub = f"sub-{label}"
    gt_anat = gt_dir / sub / "anat"
    fat, water = _write_raw(bids_dir / sub / "anat", sub, subject)
    mr_slice = _write_mr_slices(gt_anat, sub, fat, water)
    slice_labels = mr_slice.sample(subject.mr_labels, order=0)
    _write_labels_and_landmarks(gt_anat, sub, subject, slice_labels)
    _write_true_transform(gt_anat, sub, subject)


def write_wholebody_dataset(
    bids_dir: Path,
    *,
    n_subjects: int,
    seed: int,
    max_rotation_deg: float = 4.0,
    large_rotations: bool = False,
    settings: WholeBodySettings | None = None,
    timings: dict[str, list[float]] | None = None,
) -> Path:
    """Write the whole-body demo as a BIDS raw dataset with ground truth under ``derivatives/``.

    Args:
        bids_dir: Dataset root (created if missing; existing demo files are overwritten).
        n_subjects: Number of subjects (labelled ``01``, ``02``, ...).
        seed: Dataset seed; subject ``k`` uses
            :func:`~mmreg.imaging.phantoms.bids_writer.subject_seed` ``(seed, k)``.
        max_rotation_deg: Largest in-plane (coronal) rotation of the MR relative to the
            DXA; the phantom's default, 4 degrees, is what whole-body scans show.
        large_rotations: Rotate the MR in-plane by up to 180 degrees instead.
        settings: Generator settings (the two arguments above override its rotation).
        timings: If given, receives ``generate_s`` and ``write_s`` per subject.

    Returns:
        ``bids_dir``.

    Raises:
        ValueError: If ``n_subjects`` is less than 1.

    Example:
        >>> import tempfile
        >>> root = write_wholebody_dataset(Path(tempfile.mkdtemp()) / "bids", n_subjects=1,
        ...                                seed=0)  # doctest: +SKIP
    """
    settings = replace(
        settings or WholeBodySettings(),
        max_rotation_deg=float(max_rotation_deg),
        large_rotations=bool(large_rotations),
    )
    return write_phantom_dataset(
        bids_dir,
        n_subjects=n_subjects,
        seed=seed,
        max_rotation_deg=max_rotation_deg,
        large_rotations=large_rotations,
        generate=lambda sub_seed: generate_wholebody_subject(sub_seed, settings=settings),
        write_subject=_write_subject,
        write_raw_metadata=_write_raw_metadata,
        write_ground_truth_metadata=_write_ground_truth_metadata,
        timings=timings,
    )
