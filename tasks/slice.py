"""Pydra task: synthesise the mid-coronal slice of a whole-body MR (engine-free code in
:mod:`mmreg.imaging.slice_synthesis`).

Example:
    >>> from mmreg.tasks.slice import SynthesizeCoronalSlice
    >>> task = SynthesizeCoronalSlice(size_lr=224, size_si=501, spacing=2.2)
    >>> type(task).__name__
    'SynthesizeCoronalSlice'
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from fileformats.application import Json
from fileformats.medimage import NiftiGz

from mmreg.atomic import atomic_path
from mmreg.imaging.image import load_image, load_labels, save_image
from mmreg.imaging.slice_synthesis import (
    SliceSettings,
    SpineNotFoundWarning,
    synthesize_coronal_slice,
)
from mmreg.tasks.define import task


def _out(name: str) -> Path:
    return Path.cwd() / name


@task(outputs=["out_files", "out_labels", "path_file", "found_spine"])
def SynthesizeCoronalSlice(
    in_files: list[NiftiGz],
    roles: list[str] | None = None,
    label_file: NiftiGz | None = None,
    size_lr: int = 224,
    size_si: int = 501,
    spacing: float = 2.2,
    slab_mm: float = 0.0,
) -> tuple[list[NiftiGz], NiftiGz | None, Json, bool]:
    """Unroll a 3D MR (e.g. Dixon fat and water) into 2D coronal images along the spine.

    Args:
        in_files: 3D images on one grid (for Dixon: fat, then water).
        roles: Name of each input (``fat``, ``water``, anything else); default
            ``[fat, water]`` for two inputs. The spine is found from fat and water.
        label_file: Optional 3D label map in the same world, sampled (nearest) on
            the same surface, e.g. ground-truth labels for evaluation.
        size_lr: Output pixels along left-right.
        size_si: Output pixels along superior-inferior.
        spacing: Output pixel size, mm.
        slab_mm: AP thickness averaged around the surface (0: none).

    Returns:
        out_files: One 2D image per input, same order (``slice_<i>.nii.gz``).
        out_labels: The sampled label map, or ``None``.
        path_file: JSON with the surface (``z_mm``, ``y_mm`` per row), whether it
            follows a detected spine and the settings.
        found_spine: False when the flat body-centre plane was used instead (a
            :class:`~mmreg.imaging.slice_synthesis.SpineNotFoundWarning` is issued).
    """
    settings = SliceSettings(size=(size_lr, size_si), spacing_mm=spacing, slab_mm=slab_mm)
    images = [load_image(Path(f.fspath), ndim=3) for f in in_files]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpineNotFoundWarning)
        result = synthesize_coronal_slice(images, roles=roles, settings=settings)
    outputs = [
        NiftiGz(save_image(img, _out(f"slice_{i}.nii.gz"))) for i, img in enumerate(result.images)
    ]
    labels = None
    if label_file is not None:
        sampled = result.sample(load_labels(Path(label_file.fspath), ndim=3), order=0)
        labels = NiftiGz(save_image(sampled, _out("slice_labels.nii.gz")))
    record = {
        **result.path.to_dict(),
        "warnings": [str(w.message) for w in caught],
        "settings": {
            "size": list(settings.size),
            "spacing_mm": settings.spacing_mm,
            "slab_mm": settings.slab_mm,
        },
    }
    path = _out("slice_path.json")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return outputs, labels, Json(path), bool(result.path.found)
