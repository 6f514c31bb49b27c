"""Training augmentation (Windsor et al. 2021): small shifts, brightness and contrast.

Each image of a batch gets its own integer shift of up to ``max_shift_px`` working-grid
pixels along each axis (zero fill) and, per channel, a contrast factor ``c`` and a
brightness gain ``g`` drawn from ``1 +/- contrast`` and ``1 +/- brightness``:
``x' = g * ((x - m) * c + m)`` inside the image's footprint (``m`` the channel's mean
there), 0 outside, so that padding stays distinguishable from dim tissue only through
what the image shows.

Example:
    >>> import torch
    >>> x = torch.rand(2, 2, 16, 16)
    >>> y, mask = augment(x, torch.ones(2, 1, 16, 16), AugmentSettings(), torch.Generator())
    >>> y.shape, mask.shape
    (torch.Size([2, 2, 16, 16]), torch.Size([2, 1, 16, 16]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentSettings", "augment", "shift"]


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation ranges.

    Attributes:
        max_shift_px: Largest shift along each axis, in working-grid pixels (5 in the paper).
        brightness: Relative gain range (0.2: gains in [0.8, 1.2]).
        contrast: Relative contrast range around the mean (0.2: factors in [0.8, 1.2]).
    """

    max_shift_px: int = 5
    brightness: float = 0.2
    contrast: float = 0.2

    def __post_init__(self) -> None:
        if self.max_shift_px < 0 or not 0 <= self.brightness < 1 or not 0 <= self.contrast < 1:
            raise ValueError("need max_shift_px >= 0 and brightness, contrast in [0, 1)")


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift ``(..., H, W)`` by whole pixels with zero fill: ``out[i, j] = image[i - dy, j - dx]``.

    Example:
        >>> shift(torch.arange(4.0).reshape(1, 4), 0, 1).tolist()
        [[0.0, 0.0, 1.0, 2.0]]
    """
    h, w = image.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return torch.zeros_like(image)
    padded = F.pad(image, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def _uniform(n: tuple[int, ...], spread: float, generator: torch.Generator) -> torch.Tensor:
    return 1.0 + spread * (2.0 * torch.rand(n, generator=generator) - 1.0)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    settings: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``(B, C, H, W)`` with footprint masks ``(B, 1, H, W)`` (on the CPU).

    Returns:
        The augmented images and their shifted masks.
    """
    b, c = images.shape[:2]
    inside = masks > 0
    count = inside.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    mean = (images * inside).sum(dim=(2, 3), keepdim=True) / count
    gain = _uniform((b, c, 1, 1), settings.brightness, generator)
    factor = _uniform((b, c, 1, 1), settings.contrast, generator)
    out = (gain * ((images - mean) * factor + mean)).clamp_min(0.0) * inside
    if settings.max_shift_px == 0:
        return out, masks
    s = settings.max_shift_px
    shifts = torch.randint(-s, s + 1, (b, 2), generator=generator).tolist()
    out = torch.stack([shift(out[k], dy, dx) for k, (dy, dx) in enumerate(shifts)])
    masks = torch.stack([shift(masks[k], dy, dx) for k, (dy, dx) in enumerate(shifts)])
    return out, masks
