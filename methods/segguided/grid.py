"""The working grid every segguided network sees, and moving images onto and off it.

An image is seen on a grid of fixed ``shape`` and isotropic ``spacing`` centred on the
image's field of view, with the image's own axes (after canonical reorientation that is
RAS). Segmentation and registration networks need fixed-size inputs; centring on the
field of view needs no foreground detection, which fails on ultrasound.

Example:
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> img = Image(np.zeros((10, 20, 30), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    >>> g = working_grid(img.grid, (8, 8, 8), 4.0)
    >>> g.shape, g.spacing
    ((8, 8, 8), (4.0, 4.0, 4.0))
    >>> centre = img.grid.voxel_to_world([[4.5, 9.5, 14.5]])
    >>> np.allclose(g.voxel_to_world([[3.5, 3.5, 3.5]]), centre)
    True
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import Transform

__all__ = [
    "auto_spacing",
    "field_to_transform",
    "labels_from_probabilities",
    "one_hot",
    "onto",
    "unit_tensor",
    "working_grid",
]


def working_grid(grid: Grid, shape: tuple[int, ...], spacing: float) -> Grid:
    """A ``shape`` grid of ``spacing`` mm, centred on ``grid``'s field of view, same axes."""
    ndim = grid.ndim
    columns = np.asarray(grid.affine[:3, :ndim], np.float64)
    axes = columns / np.linalg.norm(columns, axis=0)
    centre = grid.voxel_to_world([[(s - 1) / 2.0 for s in grid.shape]])[0]
    affine = np.eye(4)
    affine[:3, :ndim] = axes * float(spacing)
    if ndim == 2:
        affine[:3, 2] = grid.affine[:3, 2]
    half = np.asarray([(s - 1) / 2.0 for s in shape])
    affine[:3, 3] = centre - affine[:3, :ndim] @ half
    return Grid(tuple(int(s) for s in shape), affine)


def auto_spacing(grids: list[Grid], shape: tuple[int, ...]) -> float:
    """The spacing at which the median image's largest extent fills the working shape."""
    extents = [max(s * d for s, d in zip(g.shape, g.spacing, strict=True)) for g in grids]
    return round(float(np.median(extents)) / max(shape), 3)


def onto(image: Image, grid: Grid, *, labels: bool = False) -> Image:
    """``image`` resampled onto ``grid`` (nearest neighbour for label maps)."""
    return Transform.identity(image.ndim).apply(
        image, grid, interpolation="nearest" if labels else "linear"
    )


def unit_tensor(data: np.ndarray) -> torch.Tensor:
    """``(1, 1, *sp)`` float32 in [0, 1]: the 0.5th-99.5th percentile of the nonzero voxels."""
    x = np.asarray(data, np.float32)
    values = x[x != 0]
    if values.size < 16:
        values = x.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    scaled = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled, np.float32))[None, None]


def one_hot(labels: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``(1, K, *sp)`` one-hot classes of a label map: class ``k`` holds ``groups[k]``;
    every label in no group is background (class 0)."""
    lab = np.asarray(labels).astype(np.int64)
    classes = np.zeros(lab.shape, np.int64)
    for k, group in enumerate(groups):
        if k:
            classes[np.isin(lab, group)] = k
    out = F.one_hot(torch.from_numpy(classes), len(groups)).movedim(-1, 0)
    return out[None].float()


def labels_from_probabilities(prob: torch.Tensor) -> np.ndarray:
    """Class indices ``(*sp)`` int16 from ``(1, K, *sp)`` probabilities."""
    return prob[0].argmax(0).to(torch.int16).numpy()


def field_to_transform(u: torch.Tensor, grid: Grid) -> Transform:
    """A voxel displacement field ``(1, ndim, *sp)`` on ``grid`` as a world-space Transform
    (``x -> x + u(x)``, RAS mm)."""
    ndim = grid.ndim
    vox = u[0].detach().movedim(0, -1).double().numpy()
    world = vox @ np.asarray(grid.affine, np.float64)[:3, :ndim].T
    return Transform.from_field(grid, world)
