"""Pydra tasks for single preprocessing steps, to compose into your own workflows.

mmreg's participant workflow runs these steps inside one task per pair
(:class:`~mmreg.tasks.preprocess.PreparePair`), which avoids writing every
intermediate image; the tasks here expose the same engine-free functions one
step at a time, file in -> file out.

Example:
    >>> from mmreg.tasks.image import ReorientImage, ResampleImage
    >>> task = ResampleImage(spacing=2.0)
    >>> type(task).__name__
    'ResampleImage'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from fileformats.medimage import NiftiGz
from fileformats.text import TextFile

from mmreg.imaging import preprocess
from mmreg.imaging.image import Image, load_image, load_labels, save_image
from mmreg.imaging.transform import Transform
from mmreg.tasks.define import task


def _out(name: str) -> Path:
    return Path.cwd() / name


@task(outputs=["out_file"])
def ValidateImage(in_file: NiftiGz, ndim: int = 0) -> NiftiGz:
    """Check that an image can be registered; raise a one-line InputError if not.

    Args:
        in_file: NIfTI image.
        ndim: Required dimensionality (2 or 3); 0 accepts either.

    Returns:
        out_file: The same file, unchanged (so the check can sit in a chain).
    """
    load_image(in_file.fspath, ndim=ndim or None)
    return in_file


@task(outputs=["out_file"])
def ReorientImage(in_file: NiftiGz) -> NiftiGz:
    """Reorient to the closest canonical (RAS) orientation, without resampling."""
    image = preprocess.reorient_canonical(load_image(in_file.fspath))
    return NiftiGz(save_image(image, _out("reoriented.nii.gz")))


@task(outputs=["out_file"])
def ResampleImage(
    in_file: NiftiGz, spacing: float = preprocess.DEFAULT_SPACING, order: int = 1
) -> NiftiGz:
    """Resample onto an isotropic grid over the same field of view.

    Args:
        in_file: NIfTI image (a label map with ``order=0``).
        spacing: Voxel size, mm.
        order: Spline order: 1 for images, 0 for labels.
    """
    reader = load_labels if order == 0 else load_image
    image = preprocess.resample_isotropic(reader(in_file.fspath), spacing, order=order)
    return NiftiGz(save_image(image, _out("resampled.nii.gz")))


@task(outputs=["out_file", "mask_file"])
def MaskImage(in_file: NiftiGz) -> tuple[NiftiGz, NiftiGz]:
    """Zero the background outside the foreground mask; also write the mask."""
    image = load_image(in_file.fspath)
    mask = preprocess.foreground_mask(image)
    masked = save_image(
        image.with_data(np.where(mask, image.data, 0).astype(np.float32)), _out("masked.nii.gz")
    )
    mask_path = save_image(Image(mask.astype(np.uint8), image.affine), _out("mask.nii.gz"))
    return NiftiGz(masked), NiftiGz(mask_path)


@task(outputs=["out_file"])
def NormalizeImage(
    in_file: NiftiGz, lower: float = 0.5, upper: float = 99.5, mask_file: NiftiGz | None = None
) -> NiftiGz:
    """Map intensities robustly to [0, 1] between two percentiles."""
    image = load_image(in_file.fspath)
    mask = load_labels(mask_file.fspath).data > 0 if mask_file is not None else None
    out = preprocess.normalize_intensity(image, lower=lower, upper=upper, mask=mask)
    return NiftiGz(save_image(out, _out("normalized.nii.gz")))


@task(outputs=["out_file"])
def PrealignImages(
    fixed: NiftiGz, moving: NiftiGz, mode: str = preprocess.DEFAULT_PREALIGN
) -> TextFile:
    """Initial fixed->moving transform (``none``, ``com`` or ``moments``) as ITK text."""
    fixed_image = load_image(fixed.fspath)
    matrix = preprocess.prealign(fixed_image, load_image(moving.fspath), mode)
    transform = Transform.from_affine(matrix, ndim=fixed_image.ndim)
    return TextFile(transform.write(_out("prealign_xfm.txt")))


@task(outputs=["out_file"])
def ApplyTransform(
    moving: NiftiGz,
    reference: NiftiGz,
    transform: Path,
    interpolation: str = "linear",
) -> NiftiGz:
    """Resample ``moving`` onto ``reference``'s grid through an ITK transform file.

    Args:
        moving: Image (or label map with ``interpolation="nearest"``).
        reference: Image whose grid the output takes.
        transform: ``.txt``/``.mat``/``.h5`` ITK transform, fixed->moving.
        interpolation: ``linear`` or ``nearest``.
    """
    mode: Literal["linear", "nearest"] = "nearest" if interpolation == "nearest" else "linear"
    reader = load_labels if mode == "nearest" else load_image
    grid = load_image(reference.fspath, check_contents=False).grid
    out = Transform.read(transform).apply(reader(moving.fspath), grid, interpolation=mode)
    return NiftiGz(save_image(out, _out("warped.nii.gz")))
