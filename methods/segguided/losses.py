"""Losses of the segmentation-guided method: soft Dice, LSGAN, GradICON, random deformations.

Example (hand-computed): two 2-class maps that agree on half of the foreground,

    >>> import torch
    >>> a = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    >>> b = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    >>> probs = lambda x: torch.cat([1 - x, x], dim=1)
    >>> round(float(soft_dice(probs(a), probs(b))), 3)  # 2 * 1 / (2 + 2)
    0.5

and a field whose composition with its partner is the identity has no GradICON penalty:

    >>> u = torch.full((1, 2, 8, 8), 1.5)
    >>> round(float(gradicon_penalty(u, -u)), 6)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmreg.methods.features.optimise import smooth_field, warp

__all__ = [
    "gradicon_penalty",
    "lsgan",
    "random_contrast",
    "random_deformation",
    "soft_dice",
]


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over the foreground classes (class 0 excluded) of ``(B, K, *sp)``
    probability maps; a class absent from both counts as 1 (MONAI's ``DiceLoss`` with
    ``include_background=False``, as a score)."""
    from monai.losses import DiceLoss

    loss = DiceLoss(include_background=False, smooth_nr=eps, smooth_dr=eps)
    return 1.0 - loss(pred, target)


def lsgan(outputs: list[torch.Tensor] | torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss of a discriminator's output (MONAI's PatchGAN returns its
    intermediate maps too; the last one is the verdict)."""
    out = outputs[-1] if isinstance(outputs, list | tuple) else outputs
    return (out - (1.0 if real else 0.0)).pow(2).mean()


def _gradient_energy(v: torch.Tensor) -> torch.Tensor:
    ndim = v.dim() - 2
    return sum(v.diff(dim=2 + a).pow(2).sum(1).mean() for a in range(ndim))  # type: ignore[return-value]


def gradicon_penalty(u_ab: torch.Tensor, u_ba: torch.Tensor) -> torch.Tensor:
    """``|grad(Phi_AB o Phi_BA) - I|^2`` (Tian et al., GradICON), both orders, averaged.

    ``u_ab`` (voxels, ``(B, ndim, *sp)``) maps A's points into B: ``Phi_AB(x) = x +
    u_ab(x)``; ``Phi_AB(Phi_BA(x)) - x = u_ba(x) + u_ab(x + u_ba(x))``, whose gradient is
    the Jacobian's departure from the identity.
    """
    forward = u_ba + warp(u_ab, u_ba)
    backward = u_ab + warp(u_ba, u_ab)
    return 0.5 * (_gradient_energy(forward) + _gradient_energy(backward))


def random_deformation(
    shape: tuple[int, ...],
    amplitude: float,
    generator: torch.Generator,
    *,
    control: int = 6,
    affine: float = 0.0,
    shift: float = 0.0,
) -> torch.Tensor:
    """A smooth random voxel displacement ``(1, ndim, *shape)``: a ``control``-point grid of
    normal offsets (std ``amplitude`` voxels) upsampled cubically and smoothed, plus a
    random linear part (``affine``: std of the matrix entries, about the centre) and a
    random translation (``shift``: std in voxels)."""
    ndim = len(shape)
    coarse = torch.randn((1, ndim, *([control] * ndim)), generator=generator) * amplitude
    mode = "bilinear" if ndim == 2 else "trilinear"
    u = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    u = smooth_field(u, passes=2)
    if affine > 0:
        matrix = torch.randn((ndim, ndim), generator=generator) * affine
        axes = [torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in shape]
        pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
        u = u + torch.einsum("ij,j...->i...", matrix, pos)[None]
    if shift > 0:
        u = u + (torch.randn(ndim, generator=generator) * shift).view(1, ndim, *([1] * ndim))
    return u


def random_contrast(
    x: torch.Tensor, generator: torch.Generator, *, knots: int = 8
) -> torch.Tensor:
    """A random synthetic contrast of ``(B, 1, *sp)`` images in [0, 1] (SynthSeg-style):
    a random piecewise-linear intensity map (not monotone: tissues may swap order), a smooth
    multiplicative bias, multiplicative (speckle-like) noise, rescaled to [0, 1].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = random_contrast(torch.rand(2, 1, 16, 16), g)
        >>> y.shape, float(y.min()) >= 0.0, float(y.max()) <= 1.0
        (torch.Size([2, 1, 16, 16]), True, True)
    """
    out = []
    for image in x:
        # Random numbers come from the CPU generator (reproducible on any device).
        lut = torch.rand(knots, generator=generator).to(x.device)
        pos = image.clamp(0, 1) * (knots - 1)
        lo = pos.floor().clamp(max=knots - 2).long()
        w = pos - lo
        y = lut[lo] * (1 - w) + lut[lo + 1] * w
        bias = random_deformation(tuple(image.shape[1:]), 0.3, generator, control=4)[0, :1]
        y = y * torch.exp(bias.to(x.device))
        noise = float(torch.rand((), generator=generator)) * 0.4
        speckle = torch.randn(y.shape, generator=generator).to(x.device)
        y = y * (1 + noise * speckle).abs()
        lo_v, hi_v = y.min(), y.max()
        out.append((y - lo_v) / (hi_v - lo_v).clamp(min=1e-6))
    return torch.stack(out)
