"""MIND-SSC: modality-independent self-similarity descriptors (Heinrich et al., 2012/2013).

Each voxel is described by how similar small patches around it are to each other,
not by its intensity, so a T1w and a T2w image of the same anatomy get nearly the same
descriptor. The self-similarity context (SSC) compares the patches centred on pairs of
neighbours of the voxel (never the voxel itself, which noise and partial volume make
least reliable): in 3D the 12 pairs of the 6-neighbourhood at squared distance 2
(every two orthogonal neighbours), in 2D the 4 such pairs of the 4-neighbourhood.

:func:`pair_distances` is the shared part: the learned DNS layer
(:mod:`mmreg.methods.features.dns`) applies the same neighbour pairs to deep features.

Example:
    >>> import torch
    >>> len(neighbour_pairs(3)), len(neighbour_pairs(2))
    (12, 4)
    >>> image = torch.rand(1, 1, 12, 12, 12)
    >>> mind_ssc(image).shape
    torch.Size([1, 12, 12, 12, 12])
    >>> bool(torch.allclose(mind_ssc(image), mind_ssc(3.0 * image + 7.0), atol=1e-5))
    True
"""

from __future__ import annotations

import itertools
from functools import cache

import torch
import torch.nn.functional as F

__all__ = ["box_filter", "mind_ssc", "neighbour_pairs", "pair_distances", "shifted"]

Offset = tuple[int, ...]


@cache
def neighbour_pairs(ndim: int) -> tuple[tuple[Offset, Offset], ...]:
    """The SSC pairs: every two orthogonal unit neighbours (12 in 3D, 4 in 2D)."""
    if ndim not in (2, 3):
        raise ValueError(f"MIND-SSC needs a 2D or 3D image, got {ndim}D")
    units = []
    for axis in range(ndim):
        for sign in (-1, 1):
            units.append(tuple(sign if i == axis else 0 for i in range(ndim)))
    return tuple(
        (a, b)
        for a, b in itertools.combinations(units, 2)
        if sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) == 2
    )


def shifted(padded: torch.Tensor, offset: Offset, pad: int) -> torch.Tensor:
    """``x(p + offset)`` from ``x`` padded by ``pad`` on every spatial side."""
    ndim = len(offset)
    index = [slice(None), slice(None)]
    for axis, o in enumerate(offset):
        size = padded.shape[2 + axis] - 2 * pad
        index.append(slice(pad + o, pad + o + size))
    assert len(index) == 2 + ndim
    return padded[tuple(index)]


def pair_distances(x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Squared differences between the values at each SSC neighbour pair.

    Args:
        x: ``(B, C, *spatial)``, 2D or 3D.
        dilation: Neighbour distance in voxels.

    Returns:
        ``(B, C * P, *spatial)``, channel ``c * P + k`` for input channel ``c`` and pair
        ``k`` (``P`` = 12 in 3D, 4 in 2D); borders use replicated values.
    """
    ndim = x.dim() - 2
    pairs = neighbour_pairs(ndim)
    d = int(dilation)
    padded = F.pad(x, (d,) * (2 * ndim), mode="replicate")
    out = [
        (
            shifted(padded, tuple(d * v for v in a), d)
            - shifted(padded, tuple(d * v for v in b), d)
        ).pow(2)
        for a, b in pairs
    ]
    b, c = x.shape[:2]
    # (P, B, C, ...) -> (B, C, P, ...) -> (B, C*P, ...)
    stacked = torch.stack(out, dim=2)
    return stacked.reshape(b, c * len(pairs), *x.shape[2:])


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r+1)`` cube (square) around each voxel, replicated borders."""
    if radius <= 0:
        return x
    ndim = x.dim() - 2
    size = 2 * radius + 1
    padded = F.pad(x, (radius,) * (2 * ndim), mode="replicate")
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    return pool(padded, size, stride=1)


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors of ``image``.

    ``D_k`` is the patch distance (box mean over ``2r+1`` voxels of the squared
    difference) between the neighbours of pair ``k`` at ``dilation`` voxels.
    ``MIND_k = exp(-(D_k - min_k D) / V)``, ``V`` the mean patch distance over the
    pairs at that voxel, clamped to ``[0.001, 1000]`` times its image mean so that flat
    background and sharp edges stay finite. Subtracting the minimum (as ConvexAdam's
    reference code does) makes the best-matching pair 1 everywhere.

    Args:
        image: ``(B, 1, *spatial)`` (2D or 3D); any intensity scale.
        radius: Patch radius in voxels.
        dilation: Distance of the neighbours from the centre voxel.

    Returns:
        ``(B, P, *spatial)`` in ``(0, 1]``; ``P`` = 12 (3D) or 4 (2D).
    """
    if image.dim() not in (4, 5) or image.shape[1] != 1:
        raise ValueError(f"mind_ssc expects (B, 1, *spatial), got {tuple(image.shape)}")
    x = image.float()
    # Scale-free: the exp(-D/V) normalisation divides out any intensity gain.
    dist = box_filter(pair_distances(x, dilation), radius)
    dist = dist - dist.min(dim=1, keepdim=True).values
    var = dist.mean(dim=1, keepdim=True)
    mean_var = var.mean()
    var = var.clamp(min=float(mean_var) * 1e-3 + 1e-12, max=float(mean_var) * 1e3 + 1e-12)
    return torch.exp(-dist / var)
