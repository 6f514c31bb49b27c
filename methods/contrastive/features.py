"""Encode whole images into dense feature maps with world geometry; load shipped models.

A :class:`FeatureMap` is the encoder output for one image plus the 3x3 matrix that
maps a feature cell index to its world (x, y) centre in mm, and the cells that lie
inside the image. Every registration method of this package works on those maps.

Example:
    >>> import numpy as np, torch
    >>> from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder
    >>> model = DualEncoder(ContrastiveConfig(widths=(4, 8), embed_dim=8)).eval()
    >>> img = prepare(ChannelImage(np.random.rand(2, 20, 12), np.diag([2.0, 2.0, 1.0, 1.0])))
    >>> fm = encode(model, img, "dxa")
    >>> tuple(fm.values.shape), float(fm.grid[0, 0])  # cells of 2 pixels of 4.4 mm
    ((8, 5, 3), 8.8)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from mmreg.errors import InputError
from mmreg.methods.contrastive.data import (
    ChannelImage,
    covering_shape,
    inside_mask,
    normalise_channels,
    sample,
    working_grid,
)
from mmreg.methods.contrastive.model import DualEncoder, Modality, build_model, cell_mask
from mmreg.models import Checkpoint, load_checkpoint, resolve_model

__all__ = [
    "FeatureMap",
    "canvas",
    "cell_grid",
    "check_channels",
    "encode",
    "load_model",
    "prepare",
    "similarity_matrix",
]

Matrix3 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeatureMap:
    """Dense unit embeddings of one image with their world geometry.

    Attributes:
        values: ``(D, h, w)`` float32 tensor (CPU).
        grid: 3x3 matrix: cell index ``(i, j, 1)`` -> world ``(x, y, 1)`` of the cell centre.
        mask: ``(h, w)`` bool: cells at least half inside the image.
        angle_deg: Rotation of the working grid the image was sampled on.
    """

    values: torch.Tensor
    grid: Matrix3
    mask: npt.NDArray[np.bool_]
    angle_deg: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[1]), int(self.values.shape[2]))

    def world(self, cells: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """World (x, y) of (fractional) cell indices ``(N, 2)``."""
        c = np.atleast_2d(np.asarray(cells, dtype=float))
        return c @ self.grid[:2, :2].T + self.grid[:2, 2]

    def cells(self, world: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Fractional cell indices of world points ``(N, 2)``."""
        w = np.atleast_2d(np.asarray(world, dtype=float))
        inv = np.linalg.inv(self.grid)
        return w @ inv[:2, :2].T + inv[:2, 2]


def prepare(image: ChannelImage) -> ChannelImage:
    """The image with each channel mapped robustly to [0, 1] (what the encoders expect)."""
    return ChannelImage(normalise_channels(image.data), image.affine)


def check_channels(model: DualEncoder, image: ChannelImage, modality: Modality) -> None:
    """Raise :class:`InputError` when the image's channel count is not the encoder's."""
    expected = model.config.channels(modality)
    if image.channels != expected:
        raise InputError(
            f"the contrastive {modality.upper()} encoder reads {expected} channel(s) but the "
            f"{modality.upper()} image has {image.channels}; give a (X, Y, {expected}) image"
        )


def cell_grid(pixel_grid: Matrix3, stride: int) -> Matrix3:
    """Cell index -> world matrix of a feature map whose cells cover ``stride`` pixels.

    Cell ``k`` covers pixels ``[k s, (k + 1) s)``, so its centre is pixel ``k s + (s - 1) / 2``.
    """
    offset = (stride - 1) / 2.0
    return pixel_grid @ np.array([[stride, 0, offset], [0, stride, offset], [0, 0, 1.0]])


def canvas(
    image: ChannelImage,
    spacing: float,
    shape: tuple[int, int],
    *,
    centre: npt.ArrayLike | None = None,
    angle_deg: float = 0.0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Matrix3]:
    """The image on a working grid: pixels ``(C, *shape)``, footprint mask, pixel grid."""
    grid = working_grid(image.centre if centre is None else centre, shape, spacing, angle_deg)
    pixels = sample(image, grid, shape)
    mask = inside_mask(image, grid, shape).astype(np.float32)[None]
    return pixels, mask, grid


@torch.no_grad()
def encode(
    model: DualEncoder,
    image: ChannelImage,
    modality: Modality,
    *,
    angle_deg: float = 0.0,
    centre: npt.ArrayLike | None = None,
    shape: tuple[int, int] | None = None,
    device: str = "cpu",
) -> FeatureMap:
    """Dense embeddings of a prepared image (see :func:`prepare`) on a working grid.

    Args:
        model: The dual encoder (dense pooling), in eval mode.
        image: The image, intensities in [0, 1].
        modality: Which encoder reads it.
        angle_deg: Rotate the working grid by this angle about ``centre``
            (counter-clockwise in world x, y): the image is seen rotated by ``-angle``.
        centre: World centre of the grid (default: the image centre).
        shape: Grid size in pixels (default: covers the image, a multiple of the stride).
        device: Torch device for the forward pass.
    """
    config = model.config
    if config.pooling != "dense":
        raise InputError("registration needs a dense contrastive model (pooling=dense)")
    check_channels(model, image, modality)
    if shape is None:
        shape = covering_shape(
            image, config.spacing_mm, multiple=config.stride, angle_deg=angle_deg
        )
    pixels, mask, grid = canvas(
        image, config.spacing_mm, shape, centre=centre, angle_deg=angle_deg
    )
    x = torch.from_numpy(pixels)[None].to(device)
    m = torch.from_numpy(mask)[None]
    values = model.embed(x, modality, m.to(device))[0].float().cpu()
    cells = cell_mask(m, config.stride)[0, 0].numpy() > 0
    return FeatureMap(values, cell_grid(grid, config.stride), cells, float(angle_deg))


_CACHE: dict[tuple[str, str, str], tuple[DualEncoder, Checkpoint]] = {}
_CACHE_LOCK = threading.Lock()


def load_model(
    model: str | Path | None = None,
    *,
    family: str = "contrastive",
    prefix: str = "",
    device: str = "cpu",
) -> tuple[DualEncoder, Checkpoint]:
    """The dual encoder of a checkpoint (``None``: the shipped weights), in eval mode.

    Loaded models are cached per file digest and device, so registering many pairs
    reads the file once.

    Args:
        model: Path of a checkpoint, or ``None`` for ``mmreg/data/models/<family>.pt``.
        family: The checkpoint's method family (``contrastive``, or ``contrastive-refine``
            whose checkpoint carries its encoder under ``prefix="encoder."``).
        prefix: Name prefix of the encoder's weights in the state dict; its config is
            ``config["model"]``.
        device: Where the model lives.

    Raises:
        InputError: For a missing, tampered or foreign checkpoint.
    """
    path = resolve_model(family, model)
    checkpoint = load_checkpoint(path, method=family)
    cache_key = (str(path), checkpoint.sha256 + prefix, device)
    with _CACHE_LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    net = build_model(checkpoint.config["model"])
    state = {k[len(prefix) :]: v for k, v in checkpoint.state_dict.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path.name}: weights do not fit the stored model config") from exc
    net.to(device).eval()
    with _CACHE_LOCK:
        _CACHE[cache_key] = (net, checkpoint)
    return net, checkpoint


@torch.no_grad()
def similarity_matrix(
    model: DualEncoder,
    dxa_images: list[ChannelImage],
    mr_images: list[ChannelImage],
    *,
    device: str = "cpu",
    chunk: int = 8,
    angles: Sequence[float] = (0.0,),
) -> npt.NDArray[np.float64]:
    """``(A, B)`` similarities of prepared DXA and MR images (dense: best shift; global: cosine).

    Each image is encoded once on its own covering grid; dense maps are then zero-padded
    evenly to common sizes (DXA cells outside the image are zero, MR padding is masked
    out), so the result equals the pairwise
    :func:`~mmreg.methods.contrastive.losses.dense_similarity` under the model's shift
    prior. With several ``angles`` (dense only), each MR is also encoded on working grids
    rotated by them and the best angle counts (the paper slides over shifts only: ``(0,)``).
    """
    from mmreg.methods.contrastive.losses import dense_similarity

    if model.config.pooling == "global":
        vectors = {}
        sides: tuple[tuple[Modality, list[ChannelImage]], ...] = (
            ("dxa", dxa_images),
            ("mr", mr_images),
        )
        for name, images in sides:
            out = []
            for img in images:
                check_channels(model, img, name)
                shape = covering_shape(img, model.config.spacing_mm, multiple=model.config.stride)
                pixels, _, _ = canvas(img, model.config.spacing_mm, shape)
                x = torch.from_numpy(pixels)[None].to(device)
                out.append(model.embed(x, name)[0].float().cpu())
            vectors[name] = torch.stack(out)
        return (vectors["dxa"] @ vectors["mr"].T).double().numpy()
    dxa = [encode(model, img, "dxa", device=device) for img in dxa_images]
    fd, masks = _stack(dxa)
    fd = fd * masks
    best: torch.Tensor | None = None
    for angle in angles:
        mr = [encode(model, img, "mr", angle_deg=float(angle), device=device) for img in mr_images]
        fm, mm = _stack(mr)
        rows = []
        for a in range(0, len(dxa), chunk):
            cols = [
                dense_similarity(
                    fd[a : a + chunk],
                    fm[b : b + chunk],
                    mm[b : b + chunk],
                    max_shift=model.config.max_shift_cells,
                )
                for b in range(0, len(mr), chunk)
            ]
            rows.append(torch.cat(cols, dim=1))
        sim = torch.cat(rows, dim=0)
        best = sim if best is None else torch.maximum(best, sim)
    assert best is not None
    return best.double().numpy()


def _stack(maps: list[FeatureMap]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps zero-padded evenly on both sides to common sizes (centres stay central)."""
    h = max(m.shape[0] for m in maps)
    w = max(m.shape[1] for m in maps)

    def pad(t: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        dh, dw = h - shape[0], w - shape[1]
        return F.pad(t, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))

    values = torch.stack([pad(m.values, m.shape) for m in maps])
    masks = torch.stack([pad(torch.from_numpy(m.mask.astype(np.float32)), m.shape) for m in maps])[
        :, None
    ]
    return values, masks
