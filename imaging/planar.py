"""Pairs of a 2D and a 3D image: the 3D one becomes its mid-coronal slice.

A whole-body DXA (2D, a projection) pairs with a 3D Dixon MR. Registration then happens
between the DXA and the MR's mid-coronal slice that follows the spine
(:func:`~mmreg.imaging.slice_synthesis.synthesize_coronal_slice`), in the slice's 2D
world ``(x, y, 0) = (MR x, MR z, 0)``; the transform a method returns is a 2D one between
the DXA and that slice, and the evaluation measures there too: 3D label maps are sampled on
the same surface, 3D landmarks keep their left-right and superior-inferior coordinates.

Channels are found next to the given files: ``..._rec-fat_...`` brings its
``..._rec-water_...`` sibling (and the other way round), since the spine is found from
both; a DXA's ``rec-bone`` brings its ``rec-tissue`` sibling. Both sides then carry
their channels (:attr:`~mmreg.imaging.image.Image.channels`, own channel first) for
methods that read them (the contrastive encoders), and :func:`channel_mean` makes
the scalar image the other methods register: the mean of the robustly normalised
channels (bone + soft tissue, fat + water: the whole body, as mutual information
needs, not just its bones or its fat).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from mmreg.imaging.groundtruth import GroundTruth, Landmarks
from mmreg.imaging.image import Image, load_image
from mmreg.imaging.preprocess import normalise_channels
from mmreg.imaging.slice_synthesis import CoronalSlice, synthesize_coronal_slice
from mmreg.typing import PathLike

__all__ = [
    "PlanarPair",
    "channel_mean",
    "channel_siblings",
    "dixon_channels",
    "load_planar",
    "make_planar",
    "project_ground_truth",
]

#: Dixon reconstructions, as the ``rec`` entity names them, in the slicer's roles.
DIXON_ROLES = ("fat", "water")
_REC = re.compile(r"_rec-(fat|water)(?=_)")
#: ``rec`` labels whose sibling file is another channel of the same acquisition.
SIBLINGS = {"fat": "water", "water": "fat", "bone": "tissue", "tissue": "bone"}
_REC_ANY = re.compile(r"_rec-(fat|water|bone|tissue)(?=_)")
LOG = logging.getLogger("mmreg.planar")


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
    sliced: Literal["fixed", "moving"] | None = None
    coronal: CoronalSlice | None = None


def channel_siblings(path: str | Path) -> list[Path]:
    """The file and its channel sibling on disk (see :data:`SIBLINGS`), own file first.

    Example:
        >>> channel_siblings("/nonexistent/sub-01_rec-bone_DXA.nii.gz")[0].name
        'sub-01_rec-bone_DXA.nii.gz'
    """
    path = Path(path)
    match = _REC_ANY.search(path.name)
    if not match:
        return [path]
    sibling = path.with_name(_REC_ANY.sub(f"_rec-{SIBLINGS[match.group(1)]}", path.name, count=1))
    return [path, sibling] if sibling.is_file() else [path]


def channel_mean(channels: npt.NDArray) -> npt.NDArray[np.float32]:
    """Mean of the channels of ``(X, Y, C)`` after mapping each robustly to [0, 1]
    (:func:`~mmreg.imaging.preprocess.normalise_channels`; their units differ).

    Example:
        >>> x = np.stack([np.arange(4.0).reshape(2, 2), 10 * np.arange(4.0).reshape(2, 2)], -1)
        >>> channel_mean(x).round(3).tolist()
        [[0.0, 0.0], [0.5, 1.0]]
    """
    return normalise_channels(np.moveaxis(channels, -1, 0)).mean(axis=0).astype(np.float32)


def _with_channels(image: Image, channels: list[Image]) -> Image:
    """``image`` as the mean of its channels, carrying them (own channel first)."""
    stack = np.stack([np.asarray(c.data, np.float32) for c in channels], axis=-1)
    return Image(channel_mean(stack), image.affine, channels=stack)


def _planar_channels(path: str | Path, image: Image) -> Image:
    """A 2D image with its sibling channels (only siblings on the same grid)."""
    channels = [image]
    for sibling in channel_siblings(path)[1:]:
        other = load_image(sibling)
        if other.shape != image.shape or not np.allclose(other.affine, image.affine, atol=1e-3):
            LOG.warning(
                "%s: not on the grid of %s; channel ignored", sibling.name, Path(path).name
            )
            continue
        channels.append(other)
    return _with_channels(image, channels) if len(channels) > 1 else image


def load_planar(path: str | Path) -> Image:
    """A 2D image with its sibling channels, as a 2D/3D pair's 2D side is loaded."""
    return _planar_channels(path, load_image(path))


def dixon_channels(path: PathLike) -> tuple[list[Path], tuple[str, ...] | None]:
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
    if len(coronal.images) > 1:
        return _with_channels(coronal.images[0], list(coronal.images)), coronal
    return coronal.images[0], coronal


def make_planar(
    fixed_path: str | Path, moving_path: str | Path, fixed: Image, moving: Image
) -> PlanarPair:
    """Slice the 3D image of a 2D/3D pair; other pairs pass through unchanged."""
    if fixed.ndim == moving.ndim:
        return PlanarPair(fixed, moving)
    if fixed.ndim == 3:
        sliced, coronal = _slice(fixed_path, fixed)
        return PlanarPair(sliced, _planar_channels(moving_path, moving), "fixed", coronal)
    sliced, coronal = _slice(moving_path, moving)
    return PlanarPair(_planar_channels(fixed_path, fixed), sliced, "moving", coronal)


def _project(landmarks: Landmarks) -> Landmarks:
    return {name: np.array([p[0], p[2], 0.0]) for name, p in landmarks.items()}


def project_ground_truth(truth: GroundTruth, pair: PlanarPair) -> GroundTruth:
    """Ground truth of the 3D side moved into the slice's 2D world (labels, landmarks)."""
    if pair.sliced is None or pair.coronal is None:
        return truth
    fixed = pair.sliced == "fixed"
    labels = truth.fixed_labels if fixed else truth.moving_labels
    landmarks = _project(truth.fixed_landmarks if fixed else truth.moving_landmarks)
    if labels is not None and labels.ndim == 3:
        labels = pair.coronal.sample(labels, order=0)
    if fixed:
        return replace(truth, fixed_labels=labels, fixed_landmarks=landmarks)
    return replace(truth, moving_labels=labels, moving_landmarks=landmarks)
