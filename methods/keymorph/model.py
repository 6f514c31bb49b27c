"""The KeyMorph keypoint detector: a small CNN whose last layer is a centre of mass.

The network maps an image on its fixed input grid (a cube, or a square in 2D) to
``N`` heatmaps; the centre-of-mass layer turns each heatmap into one keypoint, in
voxel coordinates of the input grid. Blocks are convolution + instance norm +
ReLU; the encoder halves the resolution with strided convolutions, a short
decoder brings the deepest features (which see the whole head, so they know its
orientation) back up to ``heatmap_level`` with skip connections, where a 1x1
convolution gives the heatmaps.

Example:
    >>> import torch
    >>> config = DetectorConfig(ndim=2, n_keypoints=4, input_size=16, channels=(4, 8, 8))
    >>> net = build_detector(config)
    >>> net(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 4, 2])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CenterOfMass",
    "DetectorConfig",
    "KeypointDetector",
    "build_detector",
]

#: Largest number of keypoints a detector may have (the solvers' cost grows as N^3 for TPS).
MAX_KEYPOINTS = 512


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of a keypoint detector (stored in checkpoints as a plain dict).

    Attributes:
        ndim: 2 or 3.
        n_keypoints: Number of keypoints ``N`` (1 to 512).
        input_size: Voxels along each axis of the input grid; must be divisible by
            ``2 ** (len(channels) - 1)``.
        input_mm: Side length of the input grid in mm (the cube that contains the
            head under any rotation; the voxel size is ``input_mm / input_size``).
        channels: Channels per resolution level, full resolution first; each later
            level halves the resolution.
        heatmap_level: Level whose resolution the heatmaps have (0 = full).
        activation: ``"softmax"`` (heatmap weights ``exp(h) / sum exp(h)``) or
            ``"relu"`` (``relu(h) / sum relu(h)``, as in the KeyMorph paper).
    """

    ndim: int = 3
    n_keypoints: int = 64
    input_size: int = 64
    input_mm: float = 256.0
    channels: tuple[int, ...] = (8, 16, 32, 64, 64)
    heatmap_level: int = 1
    activation: str = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if not 1 <= self.n_keypoints <= MAX_KEYPOINTS:
            raise ValueError(
                f"n_keypoints must be in [1, {MAX_KEYPOINTS}], got {self.n_keypoints}"
            )
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError("channels needs at least two positive entries")
        if self.input_size % 2 ** (len(self.channels) - 1):
            raise ValueError(
                f"input_size {self.input_size} is not divisible by "
                f"2**{len(self.channels) - 1} (one halving per level after the first)"
            )
        if not 0 <= self.heatmap_level < len(self.channels):
            raise ValueError(f"heatmap_level must be in [0, {len(self.channels) - 1}]")
        if self.activation not in ("softmax", "relu"):
            raise ValueError(f"activation must be softmax or relu, got {self.activation!r}")
        if not self.input_mm > 0:
            raise ValueError("input_mm must be positive")

    @property
    def spacing(self) -> float:
        """Voxel size of the input grid in mm."""
        return self.input_mm / self.input_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def _norm(ndim: int) -> type[nn.Module]:
    return nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d


class ConvBlock(nn.Sequential):
    """Convolution (3 wide) + instance norm + ReLU; ``stride=2`` halves the resolution."""

    def __init__(self, ndim: int, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__(
            _conv(ndim)(c_in, c_out, kernel_size=3, stride=stride, padding=1),
            _norm(ndim)(c_out, affine=True),
            nn.ReLU(inplace=True),
        )


class CenterOfMass(nn.Module):
    """Heatmaps ``(B, N, *S)`` -> keypoints ``(B, N, ndim)``: weighted mean voxel position.

    Positions are in voxel coordinates of the network INPUT: a heatmap at a coarser
    level (``scale`` input voxels per heatmap voxel) has its voxel ``j`` centred on
    input coordinate ``(j + 0.5) * scale - 0.5``.

    Args:
        activation: ``"softmax"`` or ``"relu"`` (see :class:`DetectorConfig`).
        scale: Input voxels per heatmap voxel.

    Example:
        >>> h = torch.zeros(1, 1, 4, 4)
        >>> h[0, 0, 1, 2] = h[0, 0, 3, 2] = 1.0
        >>> CenterOfMass("relu")(h).tolist()
        [[[2.0, 2.0]]]
    """

    def __init__(self, activation: str = "softmax", *, scale: float = 1.0) -> None:
        super().__init__()
        if activation not in ("softmax", "relu"):
            raise ValueError(f"activation must be softmax or relu, got {activation!r}")
        self.activation = activation
        self.scale = float(scale)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        b, n, *spatial = heatmaps.shape
        flat = heatmaps.reshape(b, n, -1)
        if self.activation == "softmax":
            weights = torch.softmax(flat, dim=-1)
        else:
            positive = F.relu(flat)
            # A heatmap with no positive value gets uniform weights (the grid centre)
            # instead of a division by zero.
            empty = positive.sum(-1, keepdim=True) <= 0
            positive = torch.where(empty, torch.ones_like(positive), positive)
            weights = positive / positive.sum(-1, keepdim=True)
        axes = [
            (torch.arange(s, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) * self.scale
            - 0.5
            for s in spatial
        ]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))
        return weights @ coords


class KeypointDetector(nn.Module):
    """Image ``(B, 1, *S)`` on the input grid -> keypoints ``(B, N, ndim)`` in input voxels."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        nd, ch = config.ndim, config.channels
        self.stem = ConvBlock(nd, 1, ch[0])
        self.down = nn.ModuleList(
            nn.Sequential(ConvBlock(nd, ch[i - 1], ch[i], stride=2), ConvBlock(nd, ch[i], ch[i]))
            for i in range(1, len(ch))
        )
        # Decoder from the deepest level up to the heatmap level, one block per level.
        self.up = nn.ModuleList(
            ConvBlock(nd, ch[i + 1] + ch[i], ch[i])
            for i in reversed(range(config.heatmap_level, len(ch) - 1))
        )
        self.head = _conv(nd)(ch[config.heatmap_level], config.n_keypoints, kernel_size=1)
        self.com = CenterOfMass(config.activation, scale=2.0**config.heatmap_level)
        self._mode = "bilinear" if nd == 2 else "trilinear"

    def heatmaps(self, image: torch.Tensor) -> torch.Tensor:
        """The raw heatmaps ``(B, N, *S')`` before the centre-of-mass layer."""
        expected = (self.config.input_size,) * self.config.ndim
        if image.dim() != self.config.ndim + 2 or tuple(image.shape[2:]) != expected:
            raise ValueError(f"expected input (B, 1, {expected}), got {tuple(image.shape)}")
        skips = [self.stem(image)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode=self._mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.com(self.heatmaps(image))


def build_detector(config: DetectorConfig | dict[str, Any]) -> KeypointDetector:
    """A detector from a config (or its dict form, as stored in a checkpoint)."""
    if isinstance(config, dict):
        config = DetectorConfig.from_dict(config)
    return KeypointDetector(config)
