"""Cross-modal similarity of embeddings, and the symmetric InfoNCE loss.

Dense similarity (Windsor et al. 2021): slide the MR embedding map over the DXA map
and take, at every offset, the sum over MR locations of the dot products of the two
unit embeddings there, divided by the number of MR locations; the similarity of a DXA
and an MR image is the maximum over offsets. With unit embeddings it lies in [-1, 1]:
1 means every MR location found an identical embedding in the DXA at one common shift.
Offsets where the MR map hangs over the DXA border count the overhanging locations as
zero, so a partial overlap cannot score higher than its overlap fraction.

The sliding correlation of every DXA with every MR of a batch is one FFT product
(:func:`correlation`), which is much cheaper than ``conv2d`` with B x B kernels for
the map sizes of whole-body images.

Example:
    >>> import torch
    >>> round(info_nce(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), temperature=1.0).item(), 4)
    0.3133
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Correlation",
    "centre_window",
    "correlation",
    "dense_similarity",
    "global_similarity",
    "info_nce",
]


@dataclass(frozen=True)
class Correlation:
    """Sliding correlations of MR maps over DXA maps.

    Attributes:
        values: ``(A, B, H + h - 1, W + w - 1)``: entry ``[a, b, k, l]`` is the mean over
            MR cells ``(i, j)`` of ``dxa[a, :, i + dy, j + dx] . mr[b, :, i, j]`` with
            ``(dy, dx) = (k, l) - offset`` (DXA cells outside its map count as zero).
        offset: ``(h - 1, w - 1)``: the index of shift ``(0, 0)``.
    """

    values: torch.Tensor
    offset: tuple[int, int]

    def shift(self, index: tuple[float, float]) -> tuple[float, float]:
        """The shift ``(dy, dx)`` in cells (MR cell ``v`` <-> DXA cell ``v + shift``)."""
        return (index[0] - self.offset[0], index[1] - self.offset[1])


def correlation(
    dxa: torch.Tensor, mr: torch.Tensor, mr_mask: torch.Tensor | None = None
) -> Correlation:
    """Full sliding correlation of every MR map over every DXA map, by FFT.

    Args:
        dxa: ``(A, C, H, W)`` DXA embeddings.
        mr: ``(B, C, h, w)`` MR embeddings.
        mr_mask: Optional ``(B, 1, h, w)`` (or ``(B, h, w)``) weights of the MR cells:
            padding cells get 0, so that they neither add to the correlation nor count
            in the normalisation.

    Returns:
        The correlation maps, normalised by the number (total weight) of MR cells.

    Example:
        >>> d = torch.zeros(1, 1, 3, 3); d[0, 0, 2, 1] = 1.0
        >>> m = torch.zeros(1, 1, 2, 2); m[0, 0, 1, 0] = 1.0
        >>> c = correlation(d, m)
        >>> k = divmod(int(c.values[0, 0].argmax()), c.values.shape[-1])
        >>> c.shift(k)  # MR cell (1, 0) sits on DXA cell (2, 1)
        (1, 1)
    """
    if dxa.dim() != 4 or mr.dim() != 4 or dxa.shape[1] != mr.shape[1]:
        raise ValueError(
            f"expected (A, C, H, W) and (B, C, h, w), got {tuple(dxa.shape)}, {tuple(mr.shape)}"
        )
    h, w = mr.shape[-2:]
    if mr_mask is None:
        count = torch.full((mr.shape[0],), float(h * w), dtype=mr.dtype, device=mr.device)
    else:
        if mr_mask.dim() == 3:
            mr_mask = mr_mask[:, None]
        mr = mr * mr_mask
        count = mr_mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
    size = (dxa.shape[-2] + h - 1, dxa.shape[-1] + w - 1)
    spectrum_d = torch.fft.rfft2(dxa, s=size)
    spectrum_m = torch.fft.rfft2(mr, s=size)
    # Sum over channels for every (DXA, MR) pair: a batched matrix product over frequencies.
    product = torch.einsum("acpq,bcpq->abpq", spectrum_d, spectrum_m.conj())
    circular = torch.fft.irfft2(product, s=size)
    # circular[s] = sum_i dxa[i + s] mr[i] with s taken modulo the size: rolling by
    # (h - 1, w - 1) puts shift -(h - 1) at index 0, so indices run over all shifts in order.
    values = torch.roll(circular, shifts=(h - 1, w - 1), dims=(-2, -1))
    return Correlation(values / count[None, :, None, None], (h - 1, w - 1))


def centre_window(
    dxa_shape: tuple[int, int], mr_shape: tuple[int, int], radius: float
) -> tuple[slice, slice]:
    """Index window of a :class:`Correlation` whose shifts keep the map centres within ``radius``.

    With both maps centred on their images, the shift that puts the MR centre on the
    DXA centre is ``((H - h) / 2, (W - w) / 2)``; the window keeps the shifts up to
    ``radius`` cells from it along each axis.

    Example:
        >>> centre_window((10, 12), (4, 6), 2)  # centre shift (3, 3) at index (6, 8)
        (slice(4, 9, None), slice(6, 11, None))
    """
    out = []
    for big, small in zip(dxa_shape, mr_shape, strict=True):
        centre = (small - 1) + (big - small) / 2.0
        lo = max(0, int(np.ceil(centre - radius - 1e-9)))
        hi = min(big + small - 1, int(np.floor(centre + radius + 1e-9)) + 1)
        out.append(slice(lo, max(hi, lo + 1)))
    return out[0], out[1]


def dense_similarity(
    dxa: torch.Tensor,
    mr: torch.Tensor,
    mr_mask: torch.Tensor | None = None,
    *,
    max_shift: float | None = None,
    softness: float = 0.0,
) -> torch.Tensor:
    """``(A, B)`` similarities: the maximum over shifts of :func:`correlation`.

    Args:
        dxa, mr, mr_mask: As for :func:`correlation`.
        max_shift: Only shifts within this many cells of the centre-on-centre shift
            (:func:`centre_window`; ``None``: all shifts).
        softness: ``0`` takes the maximum; ``t > 0`` a smooth maximum
            ``t log mean exp(c / t)`` over the shifts, which passes gradient to every
            shift in proportion to its score (used early in training, when the hard
            maximum still lands on arbitrary shifts).

    Example:
        >>> f = torch.nn.functional.normalize(torch.randn(2, 4, 5, 6), dim=1)
        >>> s = dense_similarity(f, f[:, :, 1:4, 1:5])  # each MR map is a crop of its DXA
        >>> torch.allclose(s.diagonal(), torch.ones(2))
        True
    """
    values = correlation(dxa, mr, mr_mask).values
    if max_shift is not None:
        rows, cols = centre_window(
            (dxa.shape[-2], dxa.shape[-1]), (mr.shape[-2], mr.shape[-1]), max_shift
        )
        values = values[..., rows, cols]
    if softness > 0:
        flat = values.flatten(-2)
        return softness * (
            torch.logsumexp(flat / softness, dim=-1) - float(np.log(flat.shape[-1]))
        )
    return values.amax(dim=(-2, -1))


def global_similarity(dxa: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
    """``(A, B)`` cosine similarities of globally pooled unit embeddings ``(A, D)``, ``(B, D)``."""
    return dxa @ mr.T


def info_nce(similarity: torch.Tensor, *, temperature: float = 0.01) -> torch.Tensor:
    """Symmetric InfoNCE of a ``(B, B)`` similarity matrix whose diagonal holds the true pairs.

    ``0.5 * (CE(S / t, I) + CE(S^T / t, I))``: each DXA must pick its MR among the
    batch's MRs, and each MR its DXA, with cross-entropy over softmax(similarity / t).

    Example:
        >>> s = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
        >>> # rows: log(1 + e^-1), log(1 + e); columns: log(1 + e), log(1 + e^-1)
        >>> round(info_nce(s, temperature=1.0).item(), 4)
        0.8133
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got {tuple(similarity.shape)}")
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    logits = similarity / temperature
    target = torch.arange(similarity.shape[0], device=similarity.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
