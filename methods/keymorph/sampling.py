"""The detector's input grid and resampling images onto it (shared by training and use).

The input grid is a cube (a square for 2D images) of ``input_size`` voxels and
``input_mm`` side, axis-aligned in world space and centred on a chosen point (the
image's foreground centroid first, the keypoints' centroid later). Images are
pre-smoothed when the grid is coarser than the image (anti-aliasing), sampled
trilinearly with :func:`torch.nn.functional.grid_sample` (zero outside the image) and
scaled so that the 99th percentile of the object is 1 (:func:`normalize_input`):
training views go through the same steps, so the network sees the same kind of input.

For 2D images the square lies in the image plane, its axes along the image's
(orthonormalised) voxel axes; world points keep the image plane's z.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from mmreg.imaging.image import Grid, Image
from mmreg.imaging.preprocess import foreground_mask
from mmreg.imaging.transform import Transform

__all__ = [
    "antialias",
    "foreground_center",
    "input_grid",
    "normalize_input",
    "sample_image",
    "voxel_to_grid_sample",
]


def foreground_center(image: Image) -> npt.NDArray[np.float64]:
    """World centroid (3,) of the image's foreground mask (contrast-independent)."""
    mask = foreground_mask(image)
    idx = np.argwhere(mask)
    if idx.size == 0:
        idx = np.argwhere(np.ones(image.shape, bool))
    return image.grid.voxel_to_world(idx.mean(0, keepdims=True))[0]


def _plane_axes(image: Image) -> npt.NDArray[np.float64]:
    """3x3 world directions of the grid axes: identity in 3D, the image plane in 2D."""
    if image.ndim == 3:
        return np.eye(3)
    a = image.affine[:3, 0] / np.linalg.norm(image.affine[:3, 0])
    b = image.affine[:3, 1] - a * a.dot(image.affine[:3, 1])
    b /= np.linalg.norm(b)
    return np.column_stack([a, b, np.cross(a, b)])


def input_grid(
    center: npt.ArrayLike, *, size: int, side_mm: float, ndim: int = 3, like: Image | None = None
) -> Grid:
    """The detector's input grid centred on the world point ``center``.

    Args:
        center: World point (3,), RAS mm.
        size: Voxels per axis.
        side_mm: Side length in mm (voxel size ``side_mm / size``).
        ndim: 2 or 3.
        like: For 2D, the image whose plane the square lies in.

    Example:
        >>> g = input_grid([0.0, 0.0, 0.0], size=4, side_mm=8.0)
        >>> g.voxel_to_world([[0, 0, 0], [3, 3, 3]]).tolist()
        [[-3.0, -3.0, -3.0], [3.0, 3.0, 3.0]]
    """
    spacing = side_mm / size
    axes = _plane_axes(like) if (ndim == 2 and like is not None) else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = axes * spacing
    half = (size - 1) / 2.0
    offset = np.zeros(3)
    offset[:ndim] = half
    affine[:3, 3] = np.asarray(center, dtype=np.float64) - affine[:3, :3] @ offset
    return Grid((size,) * ndim, affine)


def antialias(data: npt.NDArray, factor: float) -> npt.NDArray[np.float32]:
    """Gaussian pre-smoothing for sampling at ``factor`` x the voxel size (as in preprocess)."""
    data = np.asarray(data, dtype=np.float32)
    if factor <= 1.5:
        return data
    return ndimage.gaussian_filter(data, (factor - 1.0) / 2.0, mode="constant").astype(np.float32)


def voxel_to_grid_sample(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel indices ``(..., ndim)`` (array axis order) -> ``grid_sample`` coordinates.

    ``grid_sample`` wants the LAST array axis first and ``[-1, 1]`` spanning the outer
    voxel centres (``align_corners=True``).
    """
    sizes = torch.as_tensor(shape, dtype=index.dtype, device=index.device)
    norm = 2.0 * index / (sizes - 1).clamp_min(1) - 1.0
    return norm.flip(-1)


def sample_image(
    image: Image,
    grid: Grid,
    transform: Transform | None = None,
    *,
    device: str | torch.device = "cpu",
    smooth: bool = True,
) -> torch.Tensor:
    """Resample ``image`` at ``transform(grid points)``: the input of the detector.

    Args:
        image: Source image (2D or 3D, world RAS mm).
        grid: The detector's input grid (see :func:`input_grid`).
        transform: Map from grid-world points to image-world points (identity if
            ``None``); linear maps are sampled without materialising the points.
        device: Torch device of the result.
        smooth: Pre-smooth when the grid is coarser than the image.

    Returns:
        A float32 tensor of the grid's shape (not yet normalised), 0 outside the image.
    """
    data = np.asarray(image.data, dtype=np.float32)
    if smooth:
        factor = float(np.mean(grid.spacing) / np.mean(image.spacing))
        data = antialias(data, factor)
    src = torch.from_numpy(np.ascontiguousarray(data)).to(device)[None, None]
    nd = image.ndim
    inv_src = np.linalg.inv(_full_affine(image.affine, nd))
    if transform is None or transform.is_linear:
        matrix = transform.as_affine() if transform is not None else np.eye(4)
        # One 4x4 from grid voxels to source voxels, handed to affine_grid as one matrix
        # between grid_sample's normalised coordinates: no per-point arithmetic here.
        vox = inv_src @ matrix @ _full_affine(grid.affine, nd)
        theta = _normalised(image.shape, nd) @ _linear_part(vox, nd) @ _unnormalised(grid.shape)
        size = (1, 1, *grid.shape)
        coords = F.affine_grid(
            torch.as_tensor(theta[None, :nd], dtype=torch.float32, device=device),
            list(size),
            align_corners=True,
        )
    else:
        world = grid.world_coordinates().reshape(-1, 3)
        mapped = transform.map_points(world)
        hom = np.concatenate([mapped, np.ones((mapped.shape[0], 1))], axis=1)
        src_idx = (hom @ inv_src.T)[:, :nd]
        coords = voxel_to_grid_sample(
            torch.as_tensor(src_idx, dtype=torch.float32, device=device), image.shape
        ).reshape(1, *grid.shape, nd)
    out = F.grid_sample(src, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]


def _linear_part(vox: npt.NDArray[np.float64], nd: int) -> npt.NDArray[np.float64]:
    """The ``(nd+1)``-square homogeneous matrix of a 4x4 voxel map restricted to ``nd`` axes."""
    out = np.eye(nd + 1)
    out[:nd, :nd] = vox[:nd, :nd]
    out[:nd, nd] = vox[:nd, 3]
    return out


def _unnormalised(shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """``grid_sample`` coordinates (last axis first, [-1, 1]) -> voxel indices (homogeneous)."""
    nd = len(shape)
    out = np.zeros((nd + 1, nd + 1))
    out[nd, nd] = 1.0
    for k, n in enumerate(shape):
        half = (n - 1) / 2.0
        out[k, nd - 1 - k] = half
        out[k, nd] = half
    return out


def _normalised(shape: tuple[int, ...], nd: int) -> npt.NDArray[np.float64]:
    """Voxel indices -> ``grid_sample`` coordinates; the inverse of :func:`_unnormalised`
    (as :func:`voxel_to_grid_sample`, a size-1 axis maps index 0 to -1)."""
    out = np.zeros((nd + 1, nd + 1))
    out[nd, nd] = 1.0
    for k, n in enumerate(shape[:nd]):
        scale = 2.0 / max(n - 1, 1)
        out[nd - 1 - k, k] = scale
        out[nd - 1 - k, nd] = -1.0
    return out


def _full_affine(affine: npt.NDArray[np.float64], ndim: int) -> npt.NDArray[np.float64]:
    """An invertible 4x4 (2D images may carry a zero slice column)."""
    aff = np.array(affine, dtype=np.float64)
    if ndim == 2 and abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        normal = np.cross(aff[:3, 0], aff[:3, 1])
        aff[:3, 2] = normal / np.linalg.norm(normal)
    return aff


def normalize_input(volume: torch.Tensor) -> torch.Tensor:
    """Scale a batch ``(B, 1, *S)`` (or one ``(*S)``) so the object's 99th percentile is 1.

    The object is every voxel above 10% of the maximum (background and noise stay
    out), values are clipped to ``[0, 1]``.
    """
    single = volume.dim() in (2, 3)
    x = volume[None, None] if single else volume
    flat = x.reshape(x.shape[0], -1)
    out = torch.empty_like(flat)
    for i in range(flat.shape[0]):
        v = flat[i]
        top = v.max()
        if top <= 0:
            out[i] = torch.zeros_like(v)
            continue
        inside = v[v > 0.1 * top]
        # A regular subsample of ~20k values pins the percentile well.
        q = _percentile99(inside[:: max(1, inside.numel() // 20_000)])
        torch.div(v, q.clamp_min(1e-6), out=out[i]).clamp_(0.0, 1.0)
    out = out.reshape(x.shape)
    return out[0, 0] if single else out


def _percentile99(values: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(values, 0.99)`` (linear interpolation) by two selections, no sort.

    Example:
        >>> v = torch.arange(1001, dtype=torch.float32).flip(0)
        >>> float(_percentile99(v)), float(torch.quantile(v, 0.99))
        (990.0, 990.0)
    """
    position = 0.99 * (values.numel() - 1)
    low = int(position)
    below = torch.kthvalue(values, low + 1).values
    if low + 1 >= values.numel():
        return below
    above = torch.kthvalue(values, low + 2).values
    return torch.lerp(below, above, position - low)
