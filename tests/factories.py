"""Tiny BIDS datasets for tests: smooth random heads and every kind of broken input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmreg.imaging.image import Image, save_image


def smooth_head(shape: tuple[int, ...] = (32, 36, 30), *, seed: int = 0) -> np.ndarray:
    """A blobby 'head': an ellipsoid with smooth random internal structure."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = sum((g / r) ** 2 for g, r in zip(grids, (0.8, 0.85, 0.75), strict=False))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
    texture = (texture - texture.min()) / np.ptp(texture)
    head = (radius < 1).astype(np.float32) * (0.4 + 0.6 * texture.astype(np.float32))
    return ndimage.gaussian_filter(head, 0.7).astype(np.float32)


def second_contrast(data: np.ndarray) -> np.ndarray:
    """A non-monotonic remap, so only a multi-modal similarity aligns the two."""
    return (np.sin(3.0 * data) ** 2 + 0.2 * data).astype(np.float32)


def write_dataset_description(root: Path, name: str = "test") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )


def write_pair(
    root: Path,
    subject: str,
    *,
    fixed: Image,
    moving: Image,
    fixed_suffix: str = "T1w",
    moving_suffix: str = "T2w",
) -> dict[str, Path]:
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    return {
        "fixed": save_image(fixed, anat / f"sub-{subject}_{fixed_suffix}.nii.gz"),
        "moving": save_image(moving, anat / f"sub-{subject}_{moving_suffix}.nii.gz"),
    }


#: The eleven kinds of broken input, each given to its own subject.
BROKEN_KINDS = (
    "empty",
    "truncated",
    "notnifti",
    "nan",
    "inf",
    "allzero",
    "fourd",
    "singular",
    "missing",
    "toosmall",
    "dimmismatch",
)


def write_broken_subject(root: Path, subject: str, kind: str, good: dict[str, Path]) -> None:
    """Copy a good subject's pair and break its moving image in one way."""
    fixed_img = nib.load(good["fixed"])
    moving_img = nib.load(good["moving"])
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    nib.save(fixed_img, anat / f"sub-{subject}_T1w.nii.gz")
    moving = anat / f"sub-{subject}_T2w.nii.gz"
    data = np.asarray(moving_img.dataobj, dtype=np.float32)
    affine = moving_img.affine
    if kind == "empty":
        moving.write_bytes(b"")
    elif kind == "truncated":
        raw = good["moving"].read_bytes()
        moving.write_bytes(raw[: len(raw) // 3])
    elif kind == "notnifti":
        moving.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
    elif kind in ("nan", "inf"):
        bad = data.copy()
        bad[bad.shape[0] // 2, :, :] = np.nan if kind == "nan" else np.inf
        nib.save(nib.Nifti1Image(bad, affine), moving)
    elif kind == "allzero":
        nib.save(nib.Nifti1Image(np.zeros_like(data), affine), moving)
    elif kind == "fourd":
        nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), affine), moving)
    elif kind == "singular":
        img = nib.Nifti1Image(data, affine)
        singular = affine.copy()
        singular[:3, 2] = 0.0
        img.set_sform(singular, code=1)
        img.set_qform(None, code=0)
        nib.save(img, moving)
    elif kind == "missing":
        pass  # the moving modality simply is not there
    elif kind == "toosmall":
        c = [n // 2 for n in data.shape]
        small = data[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2]
        nib.save(nib.Nifti1Image(small.copy(), affine), moving)
    elif kind == "dimmismatch":
        nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2].copy(), affine), moving)
    else:
        raise ValueError(f"unknown kind {kind!r}")
