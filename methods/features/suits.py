"""SUITS: learned multi-modal features aligned by supervised iterative descent.

Blendowski and Heinrich, "Learning interpretable multi-modal features for alignment with
supervised iterative descent" (MIDL 2019). Two small CNNs, one per modality, turn the fixed
and the moving image into 8 feature channels; a Demons-like descent on those channels
moves a B-spline control grid. The networks are trained (:mod:`.suits_train`) so that the
descent step their features produce matches the step that signed distance maps of the
anatomical labels would produce: the features are whatever makes the descent behave as if
it saw the labels.

Network (:class:`SUITSNet`): per branch seven convolutions with (kernel, channels)
(7,4)-(7,6)-(5,6)-(5,8)-(5,8)-(3,8)-(3,8), 'same' (replicate) padding, each but the last
followed by GroupNorm (2 groups) and tanh; the last has a bias and nothing after it
(the others have none: GroupNorm's shift replaces it). 2D: 6,312 parameters per branch.
3D: the kernels shrink to 5-5-3-3-3-3-3 (a 7^3 kernel costs 2.7 times a 5^3 one, and the
3D receptive field of 19 voxels at 2 mm already spans most brain structures): 11,040
parameters per branch. ``SUITSConfig.kernels`` overrides either.

The descent (engine-free, :func:`suits_field`), on the fixed image's grid block-averaged
by ``shrink`` (the *working grid*; default 1 in 2D, 2 in 3D), with ``W = warp(M, u)`` the
warped moving features:

1. Demons update per channel ``c`` (Thirion; :func:`demons_update`)
   ``D_c = (F_c - W_c) grad W_c / ((F_c - W_c)^2 + |grad W_c|^2 + eps)``, averaged over the
   channels: a step in voxels, at most half a voxel long per channel.
2. Regularisation: the update handed on is
   ``D + fluid * (G D - D) + smooth * (G u - u)``, ``G`` a Gaussian of ``sigma`` voxels.
   The ``smooth`` term pulls the current field towards its smoothed self (the negative
   gradient of ``smooth / 2 * |u - G u|^2`` with ``G`` treated as fixed; diffusion-like,
   zero for a translation); ``fluid`` (default 0) smooths the step itself (fluid-like).
3. The field is ``u = base + B(P)``: ``P`` a control grid of spacing ``s`` (voxels of the
   working grid), ``B`` linear interpolation to the full grid followed by two box filters
   of width ``s`` (:func:`densify`; linear = two boxes, so four boxes in all: a discrete
   cubic B-spline). Adam moves ``P`` (learning rate ``lr`` in normalised coordinates, the
   image spanning [-1, 1] along each axis) with the gradient ``-B^T(update)``, the adjoint
   of ``B`` applied by autograd to ``<B(P), update>``.
4. Three scales, spacings 20, 10 and 7 voxels, ``iterations`` Adam steps each; each scale
   starts a zero control grid on top of the previous scales' field (``base``), with a
   fresh Adam.

Defaults, from one held-out IXI pair (2 mm, T1 vs synthetic T2, after ``ants-affine``:
label Dice 0.25): ``mind-suits`` reaches 0.44 with ``smooth=0.2`` (0.42 with 0.3, 0.31
with 1.0; 0.36 with 0.05, where the folding guard steps in; ``mind-io`` 0.48), in about a
minute on one CPU thread at ``shrink=2`` (100 iterations per scale: the same Dice in a
third of the time; ``shrink=1`` costs about 8 times as much). On small smooth synthetic
deformations a stiffer ``smooth=0.5-1`` does better; the spacings hardly mattered.

Example:
    >>> net = SUITSNet(SUITSConfig(ndim=2)).eval()
    >>> with torch.no_grad():
    ...     f, m = net(torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24))
    >>> f.shape, net.parameter_count()
    (torch.Size([1, 8, 20, 24]), 12624)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmreg.methods.features.mind import mind_ssc
from mmreg.methods.features.optimise import (
    _crop,
    _gaussian,
    _pad_to,
    _pool,
    _upsample,
    warp,
)
from mmreg.methods.features.register import FeatureIOMethod
from mmreg.methods.registry import register_factory, settings_from_params

__all__ = [
    "CHANNELS",
    "FAMILY",
    "KERNELS_2D",
    "KERNELS_3D",
    "Descent",
    "DescentSettings",
    "SUITSConfig",
    "SUITSMethod",
    "SUITSNet",
    "SUITSSettings",
    "control_shape",
    "demons_update",
    "densify",
    "load_suits",
    "make_mind_suits",
    "make_suits",
    "parse_spacings",
    "spatial_gradient",
    "suits_field",
]

#: The method family of the checkpoints (``--model suits=PATH``).
FAMILY = "suits"
#: Output channels of the seven convolutions.
CHANNELS = (4, 6, 6, 8, 8, 8, 8)
#: Kernel sizes of the paper (2D).
KERNELS_2D = (7, 7, 5, 5, 5, 3, 3)
#: Kernel sizes in 3D (7 -> 5, 5 -> 3; see the module docstring).
KERNELS_3D = (5, 5, 3, 3, 3, 3, 3)
#: GroupNorm groups.
GROUPS = 2
#: Added to the Demons denominator: where both the difference and the gradient are
#: below about ``sqrt(eps)`` (flat, matching regions) the step fades to zero.
DEMONS_EPS = 1e-6


# ---------------------------------------------------------------- network


@dataclass(frozen=True)
class SUITSConfig:
    """What :class:`SUITSNet` needs to rebuild itself (plain JSON types).

    Attributes:
        ndim: 2 or 3.
        kernels: Kernel size per convolution (odd); empty: :data:`KERNELS_2D` or
            :data:`KERNELS_3D` by ``ndim``.
        channels: Output channels per convolution (the last: the feature channels);
            all but the last divisible by ``groups``.
        groups: GroupNorm groups.
        in_channels: Input channels (one image).
    """

    ndim: int = 2
    kernels: tuple[int, ...] = ()
    channels: tuple[int, ...] = CHANNELS
    groups: int = GROUPS
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        kernels = tuple(int(k) for k in self.kernels) or (
            KERNELS_2D if self.ndim == 2 else KERNELS_3D
        )
        object.__setattr__(self, "kernels", kernels)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.kernels) != len(self.channels) or not self.channels:
            raise ValueError("kernels and channels must have the same (nonzero) length")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels must be odd and positive, got {self.kernels}")
        if min(self.channels) < 1 or self.groups < 1 or self.in_channels < 1:
            raise ValueError("channels, groups and in_channels must be positive")
        if any(c % self.groups for c in self.channels[:-1]):
            raise ValueError(f"channels {self.channels[:-1]} must be divisible by {self.groups}")

    @property
    def features(self) -> int:
        """Output channels."""
        return self.channels[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ndim": self.ndim,
            "kernels": list(self.kernels),
            "channels": list(self.channels),
            "groups": self.groups,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SUITSConfig:
        return cls(
            ndim=int(values["ndim"]),
            kernels=tuple(values["kernels"]),
            channels=tuple(values["channels"]),
            groups=int(values["groups"]),
            in_channels=int(values.get("in_channels", 1)),
        )


def _branch(config: SUITSConfig) -> nn.Sequential:
    conv = nn.Conv3d if config.ndim == 3 else nn.Conv2d
    layers: list[nn.Module] = []
    cin = config.in_channels
    last = len(config.channels) - 1
    for i, (k, cout) in enumerate(zip(config.kernels, config.channels, strict=True)):
        layers.append(conv(cin, cout, k, padding=k // 2, padding_mode="replicate", bias=i == last))
        if i < last:
            layers += [nn.GroupNorm(config.groups, cout), nn.Tanh()]
        cin = cout
    return nn.Sequential(*layers)


class SUITSNet(nn.Module):
    """The fixed-side and the moving-side feature CNN (see the module docstring).

    ``forward(fixed, moving)``: two ``(B, 1, *sp)`` images -> two ``(B, 8, *sp)`` maps.
    """

    def __init__(self, config: SUITSConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SUITSConfig()
        self.fixed = _branch(config)
        self.moving = _branch(config)

    def _check(self, x: torch.Tensor) -> None:
        from mmreg.errors import InputError

        ndim = x.dim() - 2
        if ndim != self.config.ndim:
            raise InputError(
                f"the SUITS model is {self.config.ndim}D but the images are {ndim}D; "
                f"train a {ndim}D model ('mmreg train suits' on {ndim}D images)"
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"SUITSNet expects {self.config.in_channels} input channel(s)")

    def fixed_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of fixed-side images ``(B, 1, *sp)``."""
        self._check(x)
        return self.fixed(x)

    def moving_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of moving-side images ``(B, 1, *sp)``."""
        self._check(x)
        return self.moving(x)

    def forward(
        self, fixed: torch.Tensor, moving: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fixed_features(fixed), self.moving_features(moving)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_suits(path: str | Path | None = None) -> SUITSNet:
    """The SUITS networks of a verified checkpoint, on the CPU in eval mode (cached).

    Args:
        path: A ``mmreg train suits`` checkpoint; ``None``: the shipped ``suits.pt``.

    Raises:
        InputError: One line, when there are no shipped weights (saying how to train
            them), or the file is missing, tampered or not a SUITS checkpoint.
    """
    from mmreg.models import load_network

    net: SUITSNet = load_network(
        path,
        family=FAMILY,
        build=lambda config: SUITSNet(SUITSConfig.from_dict(config)),
        name="SUITS",
        how_to_train="train them with 'mmreg train suits BIDS_DIR --out suits.pt' "
        "and pass --model suits=PATH (or use mind-suits)",
    )
    return net


# ---------------------------------------------------------------- the descent


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """Central differences of ``(B, C, *sp)`` -> ``(B, C, ndim, *sp)`` (per voxel).

    Borders are replicated, so the first and last voxel get half a one-sided difference.

    Example:
        >>> g = spatial_gradient(torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 3))
        >>> g[0, 0, 0, :, 0].tolist(), g[0, 0, 1].abs().max().item()
        ([0.5, 1.0, 1.0, 1.0, 0.5], 0.0)
    """
    ndim = x.dim() - 2
    grads = []
    for axis in range(ndim):
        pads = [0, 0] * ndim
        pads[2 * (ndim - 1 - axis)] = 1
        pads[2 * (ndim - 1 - axis) + 1] = 1
        padded = F.pad(x, pads, mode="replicate")
        dim = 2 + axis
        n = x.shape[dim]
        grads.append(0.5 * (padded.narrow(dim, 2, n) - padded.narrow(dim, 0, n)))
    return torch.stack(grads, dim=2)


def demons_update(
    fixed: torch.Tensor, warped: torch.Tensor, *, eps: float = DEMONS_EPS
) -> torch.Tensor:
    """The Demons step (voxels) that moves ``warped`` towards ``fixed``, averaged over channels.

    ``D_c = (F_c - W_c) grad W_c / ((F_c - W_c)^2 + |grad W_c|^2 + eps)`` per channel, then
    the mean over the channels: ``(B, C, *sp)`` twice -> ``(B, ndim, *sp)``. Adding ``D``
    to the field (``W(p) = M(p + u(p))``) lowers the squared difference; each channel's
    step is at most half a voxel long.

    Example:
        A ramp ``W(x) = x`` under a fixed image two units higher: the step is
        ``2 * 1 / (2^2 + 1^2) = 0.4`` voxels towards larger ``x``.

        >>> x = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 1, 8, 4)
        >>> d = demons_update(x + 2.0, x)
        >>> round(d[0, 0, 4, 2].item(), 4), d[0, 1].abs().max().item()
        (0.4, 0.0)
    """
    diff = fixed - warped
    grad = spatial_gradient(warped)
    denom = diff.square() + grad.square().sum(2) + eps
    return ((diff / denom).unsqueeze(2) * grad).mean(1)


def parse_spacings(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"20_10_7"`` (or ``-``, ``,`` or ``x`` between) -> ``(20, 10, 7)``.

    Example:
        >>> parse_spacings("20_10_7"), parse_spacings("12-6")
        ((20, 10, 7), (12, 6))
    """
    if isinstance(text, tuple | list):
        values = tuple(int(v) for v in text)
    else:
        parts = [p for p in str(text).replace("-", "_").replace(",", "_").split("_") if p]
        parts = [q for p in parts for q in p.split("x") if q]
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"spacings must be like 20_10_7, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"spacings must be positive integers like 20_10_7, got {text!r}")
    return values


def control_shape(shape: tuple[int, ...], spacing: int) -> tuple[int, ...]:
    """Control points per axis for a grid of ``shape`` voxels at ``spacing`` (at least 2).

    The points span the image (first and last voxel), so the actual spacing is at most
    ``spacing``.

    Example:
        >>> control_shape((48, 41), 20), control_shape((5, 100, 100), 7)
        ((4, 3), (2, 16, 16))
    """
    return tuple(max(2, math.ceil((n - 1) / spacing) + 1) for n in shape)


def _box1d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Box mean of odd width ``size`` along the last axis of ``(N, 1, L)``, replicated edges."""
    r = size // 2
    if r == 0:
        return x
    # Replicate padding (also wider than the axis): the edge values repeated.
    padded = torch.cat([x[..., :1].expand(-1, -1, r), x, x[..., -1:].expand(-1, -1, r)], -1)
    return F.avg_pool1d(padded, size, stride=1)


@functools.lru_cache(maxsize=64)
def _densify_matrix(length: int, points: int, spacing: int) -> torch.Tensor:
    """The 1D operator of :func:`densify` as a ``(length, points)`` matrix."""
    eye = torch.eye(points, dtype=torch.float64)[:, None, :]  # (points, 1, points)
    x = F.interpolate(eye, size=length, mode="linear", align_corners=True)
    size = 2 * (int(spacing) // 2) + 1
    x = _box1d(_box1d(x, size), size)
    return x[:, 0, :].T.contiguous().float()


def densify(grid: torch.Tensor, shape: tuple[int, ...], spacing: int) -> torch.Tensor:
    """A control grid ``(B, C, *g)`` -> a dense ``(B, C, *shape)`` cubic-B-spline-like field.

    Linear interpolation (the control points on the first and last voxels), then two box
    filters of odd width ``~spacing`` (replicated edges): a linear B-spline convolved with
    two boxes is (in the limit) the cubic B-spline. Every part is separable, so the
    operator is applied as one small matrix per axis (the same numbers as upsampling and
    pooling the whole field, at a fraction of the cost). Linear in ``grid``; autograd
    gives its adjoint. Constants stay constant.

    Example:
        >>> dense = densify(torch.full((1, 2, 3, 4), 1.5), (25, 31), 10)
        >>> dense.shape, bool(torch.allclose(dense, torch.tensor(1.5)))
        (torch.Size([1, 2, 25, 31]), True)
    """
    ndim = grid.dim() - 2
    x = grid
    for axis in range(ndim):
        k = _densify_matrix(int(shape[axis]), int(grid.shape[2 + axis]), int(spacing))
        # Contract axis 2 + axis with k: move it last, multiply, move it back.
        x = torch.matmul(x.movedim(2 + axis, -1), k.to(x.device, x.dtype).T).movedim(-1, 2 + axis)
    return x


@dataclass(frozen=True)
class DescentSettings:
    """The descent of :func:`suits_field` (voxels of the working grid).

    Attributes:
        spacings: Control-point spacing per scale, coarse to fine.
        iterations: Adam steps per scale.
        lr: Adam's learning rate (control values in normalised [-1, 1] coordinates).
        smooth: Weight of the pull of the field towards its smoothed self.
        sigma: Gaussian sigma (voxels) of the smoothing (field and step).
        fluid: Weight (0-1) of the smoothing of the step itself.
    """

    spacings: tuple[int, ...] = (20, 10, 7)
    iterations: int = 300
    lr: float = 0.005
    smooth: float = 0.2
    sigma: float = 2.0
    fluid: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacings", parse_spacings(self.spacings))
        if self.iterations < 0:
            raise ValueError("iterations must not be negative")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be positive")
        if not (self.smooth >= 0 and math.isfinite(self.smooth)):
            raise ValueError("smooth must be finite and not negative")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError("sigma must be finite and not negative")
        if not 0 <= self.fluid <= 1:
            raise ValueError("fluid must be within 0-1")

    @property
    def total(self) -> int:
        """Adam steps over all scales."""
        return self.iterations * len(self.spacings)


class Descent:
    """The state of one descent: ``u = base + B(P)`` and Adam on ``P`` (module docstring).

    Call :meth:`field` for the current displacement (voxels, ``(1, ndim, *shape)``), then
    :meth:`update` with the dense update for it; :attr:`done` after ``settings.total``
    updates. ``start`` skips to a later global step with a zero field (training starts
    descents at staggered stages this way).

    Example:
        A constant update of one voxel along axis 0 moves the field that way.

        >>> d = Descent((16, 16), DescentSettings(spacings=(8,), iterations=20))
        >>> while not d.done:
        ...     d.update(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16))
        >>> u = d.field()
        >>> bool((u[0, 0] > 0.5).all()), u[0, 1].abs().max().item() < 1e-6
        (True, True)
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        settings: DescentSettings | None = None,
        *,
        device: str | torch.device = "cpu",
        start: int = 0,
    ) -> None:
        self.settings = s = settings or DescentSettings()
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.device = torch.device(device)
        half = torch.tensor([max(n - 1, 1) / 2.0 for n in self.shape], device=self.device)
        self._half = half.view(1, self.ndim, *([1] * self.ndim))
        self.base = torch.zeros(1, self.ndim, *self.shape, device=self.device)
        self.step = min(max(0, int(start)), s.total)
        self._scale = -1
        self._dense: torch.Tensor | None = None
        if not self.done:
            self._begin(self.step // max(1, s.iterations))

    @property
    def done(self) -> bool:
        return self.step >= self.settings.total

    @property
    def scale(self) -> int:
        """Index of the current scale (``len(spacings)`` when done)."""
        return self.step // max(1, self.settings.iterations)

    def _begin(self, scale: int) -> None:
        spacing = self.settings.spacings[scale]
        grid = torch.zeros(1, self.ndim, *control_shape(self.shape, spacing), device=self.device)
        self.param = nn.Parameter(grid)
        self.optimiser = torch.optim.Adam([self.param], lr=self.settings.lr)
        self._scale = scale
        self._dense = None

    def _current(self) -> torch.Tensor:
        if self._dense is None:
            with torch.enable_grad():
                spacing = self.settings.spacings[self._scale]
                dense = densify(self.param, self.shape, spacing) * self._half
                self._dense = self.base + dense
        return self._dense

    def field(self) -> torch.Tensor:
        """The current displacement, voxels, ``(1, ndim, *shape)`` (no autograd)."""
        if self._scale < 0:
            return self.base.clone()
        return self._current().detach()

    def update(self, delta: torch.Tensor) -> None:
        """One Adam step of ``P`` with the gradient ``-B^T(delta + smooth * (G u - u))``."""
        if self.done:
            return
        dense = self._current()
        target = delta.detach().to(dense.dtype)
        s = self.settings
        if s.fluid > 0:
            target = target + s.fluid * (_gaussian(target, s.sigma) - target)
        if s.smooth > 0:
            u = dense.detach()
            target = target + s.smooth * (_gaussian(u, s.sigma) - u)
        with torch.enable_grad():
            self.optimiser.zero_grad(set_to_none=True)
            dense.backward(-target)
        self.optimiser.step()
        self._dense = None
        self.step += 1
        if self.step % max(1, s.iterations) == 0:
            self.base = self.field()
            if not self.done:
                self._begin(self.scale)


Progress = Callable[[str, int, int], None]


def suits_field(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    settings: DescentSettings | None = None,
    *,
    shrink: int = 1,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The displacement ``u`` (voxels, ``(1, ndim, *sp)``) aligning ``moving`` to ``fixed``.

    Args:
        fixed: Fixed feature map ``(1, C, *sp)``.
        moving: Moving feature map on the same grid.
        settings: See :class:`DescentSettings`.
        shrink: Work on feature maps block-averaged by this factor (spacings in its
            voxels); the field is interpolated back to the full grid.
        progress: Called as ``progress("suits", done, total)``.

    Example:
        A disc moved by 2 voxels along axis 0 is found again.

        >>> yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
        >>> disc = (((yy - 20) ** 2 + (xx - 20) ** 2) < 64).float()[None, None]
        >>> s = DescentSettings(spacings=(10, 7), iterations=60)
        >>> u = suits_field(disc, torch.roll(disc, 2, dims=2), s)
        >>> round(u[0, 0, 12, 20].item())
        2
    """
    s = settings or DescentSettings()
    if fixed.shape != moving.shape:
        raise ValueError(f"feature maps differ in shape: {fixed.shape} vs {moving.shape}")
    shrink = max(1, int(shrink))
    fixed_p, sizes = _pad_to(fixed.float(), shrink)
    moving_p, _ = _pad_to(moving.float(), shrink)
    if shrink > 1:
        pool = _pool(fixed.dim() - 2)
        fixed_p = pool(fixed_p, shrink, stride=shrink)
        moving_p = pool(moving_p, shrink, stride=shrink)
    descent = Descent(tuple(fixed_p.shape[2:]), s, device=fixed.device)
    while not descent.done:
        u = descent.field()
        with torch.no_grad():
            delta = demons_update(fixed_p, warp(moving_p, u))
        descent.update(delta)
        if progress is not None:
            progress("suits", descent.step, s.total)
    u = descent.field()
    if shrink > 1:
        full = tuple(n * shrink for n in u.shape[2:])
        return _crop(_upsample(u, shrink, full), sizes)
    return u


# ---------------------------------------------------------------- the methods


@dataclass(frozen=True)
class SUITSSettings:
    """Parameters of ``suits`` / ``mind-suits`` (``name:key=value``; working-grid voxels).

    Attributes:
        spacings: Control-point spacing per scale, coarse to fine (``20_10_7``).
        iterations: Adam steps per scale.
        lr: Adam's learning rate, normalised coordinates (the image spans [-1, 1]).
        smooth: Weight of the pull towards the smoothed field (0: none).
        sigma: Gaussian sigma of the smoothing (field and step).
        fluid: Weight (0-1) of the smoothing of the step itself (0: none).
        shrink: Block-average the feature maps by this factor first (spacings are in
            its voxels); 0: automatic, 1 in 2D and 2 in 3D (see the module docstring).
        radius: MIND patch radius (``mind-suits``).
        dilation: MIND neighbour distance (``mind-suits``).
        max_folding: Percent of folding voxels the guard allows.
    """

    spacings: str = "20_10_7"
    iterations: int = 300
    lr: float = 0.005
    smooth: float = 0.2
    sigma: float = 2.0
    fluid: float = 0.0
    shrink: int = 0
    radius: int = 1
    dilation: int = 2
    max_folding: float = 0.5

    def __post_init__(self) -> None:
        if self.shrink < 0:
            raise ValueError("shrink must be 0 (automatic) or more")
        if self.radius < 0 or self.dilation < 1:
            raise ValueError("radius must be >= 0 and dilation >= 1")
        if not 0 <= self.max_folding <= 100:
            raise ValueError("max_folding must be within 0-100")
        self.descent()  # validates the shared fields

    @property
    def opt(self) -> str:
        """The optimiser's name in the method's extras."""
        return "suits"

    def descent(self) -> DescentSettings:
        return DescentSettings(
            spacings=parse_spacings(self.spacings),
            iterations=self.iterations,
            lr=self.lr,
            smooth=self.smooth,
            sigma=self.sigma,
            fluid=self.fluid,
        )


class SUITSMethod(FeatureIOMethod):
    """:class:`FeatureIOMethod` whose optimiser is the SUITS descent (:func:`suits_field`)."""

    settings: SUITSSettings

    def _optimise(self, feat_f: torch.Tensor, feat_m: torch.Tensor, seed: int) -> torch.Tensor:
        # Deterministic: no sampling, so the seed is not needed.
        shrink = self.settings.shrink or (2 if feat_f.dim() == 5 else 1)
        return suits_field(feat_f, feat_m, self.settings.descent(), shrink=shrink)


#: ``suits``'s and ``mind-suits``'s defaults (the paper's schedule).
SUITS_DEFAULTS = SUITSSettings()


def make_suits(
    params: Mapping[str, str] | None = None, *, model: str | None = None
) -> SUITSMethod:
    """``suits[:key=value...]`` with the SUITS weights ``model`` (``None``: shipped)."""
    settings = settings_from_params("suits", SUITS_DEFAULTS, params)
    net = load_suits(model)
    return SUITSMethod("suits", net.fixed_features, settings, moving_extractor=net.moving_features)


def make_mind_suits(params: Mapping[str, str] | None = None) -> SUITSMethod:
    """``mind-suits[:key=value...]``: MIND-SSC features in the SUITS descent."""
    settings = settings_from_params("mind-suits", SUITS_DEFAULTS, params)

    def extractor(x: torch.Tensor) -> torch.Tensor:
        return mind_ssc(x, radius=settings.radius, dilation=settings.dilation)

    return SUITSMethod("mind-suits", extractor, settings)


register_factory("suits", make_suits, replace=True, model_family=FAMILY)
register_factory("mind-suits", make_mind_suits, replace=True)
