"""Pairs of a 2D and a 3D image: the 3D one becomes its mid-coronal slice.

A whole-body DXA (2D, a projection) pairs with a 3D Dixon MR. Registration then happens
between the DXA and the MR's mid-coronal slice that follows the spine
(:func:`~mmreg.imaging.slice_synthesis.synthesize_coronal_slice`), in the slice's 2D
world ``(x, y, 0) = (MR x, MR z, 0)``; the transform a method returns is a 2D one between
the DXA and that slice, and the evaluation measures there too: 3D label maps are sampled on
the same surface, 3D landmarks keep their left-right and superior-inferior coordinates.

Dixon channels are found next to the given file: ``..._rec-fat_...`` brings its
``..._rec-water_...`` sibling (and the other way round), since the spine is found from
both. The slice of the given file's own channel is the image that is registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmreg.imaging.groundtruth import GroundTruth, Landmarks
from mmreg.imaging.image import Image, load_image
from mmreg.imaging.slice_synthesis import CoronalSlice, synthesize_coronal_slice

__all__ = ["PlanarPair", "dixon_channels", "make_planar", "project_ground_truth"]

#: Dixon reconstructions, as the ``rec`` entity names them, in the slicer's roles.
DIXON_ROLES = ("fat", "water")
_REC = re.compile(r"_rec-(fat|water)(?=_)")


@dataclass(frozen=True)
class PlanarPair:
    """A pair after the 3D side (if any) became a coronal slice.

    Attributes:
        fixed: The fixed image (2D if either input was).
        moving: The moving image.
        sliced: ``"fixed"``, ``"moving"`` or ``None`` (both inputs had one dimensionality).
        coronal: The slice of the 3D side, for sampling its labels.
    """

    fixed: Image
    moving: Image
    sliced: str | None = None
    coronal: CoronalSlice | None = None


def dixon_channels(path: str | Path) -> tuple[list[Path], tuple[str, ...] | None]:
    """The file and its Dixon sibling (``rec-fat`` <-> ``rec-water``), with their roles.

    Returns the given file first. Without a ``rec-fat``/``rec-water`` entity, or without
    the sibling on disk, only the file itself (roles ``None``: the slicer then falls back
    to a plain coronal plane with a warning).
    """
    path = Path(path)
    match = _REC.search(path.name)
    if not match:
        return [path], None
    own = match.group(1)
    other = DIXON_ROLES[1 - DIXON_ROLES.index(own)]
    sibling = path.with_name(_REC.sub(f"_rec-{other}", path.name, count=1))
    if not sibling.is_file():
        return [path], None
    return [path, sibling], (own, other)


def _slice(path: str | Path, image: Image) -> tuple[Image, CoronalSlice]:
    paths, roles = dixon_channels(path)
    channels = [image] + [load_image(p) for p in paths[1:]]
    if roles is None:
        roles = ("",)
    coronal = synthesize_coronal_slice(channels, roles=roles)
    return coronal.images[0], coronal


def make_planar(
    fixed_path: str | Path, moving_path: str | Path, fixed: Image, moving: Image
) -> PlanarPair:
    """Slice the 3D image of a 2D/3D pair; other pairs pass through unchanged."""
    if fixed.ndim == moving.ndim:
        return PlanarPair(fixed, moving)
    if fixed.ndim == 3:
        sliced, coronal = _slice(fixed_path, fixed)
        return PlanarPair(sliced, moving, "fixed", coronal)
    sliced, coronal = _slice(moving_path, moving)
    return PlanarPair(fixed, sliced, "moving", coronal)


def _project(landmarks: Landmarks) -> Landmarks:
    return {name: np.array([p[0], p[2], 0.0]) for name, p in landmarks.items()}


def project_ground_truth(truth: GroundTruth, pair: PlanarPair) -> GroundTruth:
    """Ground truth of the 3D side moved into the slice's 2D world (labels, landmarks)."""
    if pair.sliced is None or pair.coronal is None:
        return truth
    labels = getattr(truth, f"{pair.sliced}_labels")
    landmarks = getattr(truth, f"{pair.sliced}_landmarks")
    changes: dict[str, object] = {f"{pair.sliced}_landmarks": _project(landmarks)}
    if labels is not None and labels.ndim == 3:
        changes[f"{pair.sliced}_labels"] = pair.coronal.sample(labels, order=0)
    return replace(truth, **changes)
