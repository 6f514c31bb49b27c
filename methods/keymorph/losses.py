"""Training losses: keypoint distances, soft Dice, image MSE, and the warps they need.

Example:
    >>> import torch
    >>> a = torch.zeros(1, 2, 3)
    >>> b = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    >>> float(keypoint_distance(a, b, eps=0.0))
    2.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmreg.methods.keymorph.sampling import voxel_to_grid_sample

__all__ = [
    "keypoint_distance",
    "mse_loss",
    "one_hot",
    "soft_dice_loss",
    "warp_volume",
]


def keypoint_distance(a: torch.Tensor, b: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """Mean (Charbonnier-smoothed) Euclidean distance between matching points ``(B, N, d)``.

    ``sqrt(|a - b|^2 + eps^2) - eps`` averages like a distance (robust to a few far
    points, unlike a squared error) yet has a gradient at zero.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (torch.sqrt(((a - b) ** 2).sum(-1) + eps**2) - eps).mean()


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, *S)`` integer labels -> ``(B, C, *S)`` float one-hot."""
    out = F.one_hot(labels.long().clamp(0, n_classes - 1), n_classes)
    return out.movedim(-1, 1).float()


def soft_dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = False,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``1 - mean_c 2 sum(p t) / (sum p + sum t)`` over classes (and the batch).

    Args:
        pred: ``(B, C, *S)`` soft label maps (e.g. warped one-hot labels), in [0, 1].
        target: ``(B, C, *S)`` one-hot (or soft) labels.
        include_background: Count class 0 too.

    Classes absent from both prediction and target are skipped (their Dice is
    undefined, not zero).
    """
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    start = 0 if include_background else 1
    p = pred[:, start:].flatten(2)
    t = target[:, start:].flatten(2)
    inter = (p * t).sum(-1)
    total = p.sum(-1) + t.sum(-1)
    present = total > eps
    dice = (2.0 * inter + eps) / (total + eps)
    if not present.any():
        return pred.sum() * 0.0
    return 1.0 - dice[present].mean()


def mse_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared intensity difference (inside ``mask`` when given)."""
    diff = (pred - target) ** 2
    if mask is None:
        return diff.mean()
    mask = mask.to(diff.dtype).expand_as(diff)
    return (diff * mask).sum() / mask.sum().clamp_min(1.0)


def warp_volume(
    volume: torch.Tensor, coords: torch.Tensor, *, mode: str = "bilinear"
) -> torch.Tensor:
    """Pull ``volume`` ``(B, C, *S)`` at voxel coordinates ``coords`` ``(B, *S', d)``.

    Differentiable with respect to ``coords`` (that is how the keypoints get the
    gradient of an image or label loss). Zero outside the volume.
    """
    grid = voxel_to_grid_sample(coords, tuple(volume.shape[2:]))
    return F.grid_sample(volume, grid, mode=mode, padding_mode="zeros", align_corners=True)
