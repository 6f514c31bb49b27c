"""The networks of the segmentation-guided method, and the one module that holds them all.

Demir & Niethammer (MIDL 2024) use five kinds of network; all live in one
:class:`SegGuidedNets`, so one checkpoint file (one sha256) carries the whole method:

- ``seg_source`` (S_S) and ``seg_target`` (S_T): MONAI residual U-Nets, image ->
  ``n_classes`` logits, for the labelled modality and for the other one;
- ``gen_st`` / ``gen_ts``: the CycleGAN's ResNet generators (source -> target look and
  back), :class:`ResnetGenerator`;
- ``disc_source`` / ``disc_target``: MONAI PatchGAN discriminators;
- ``reg``: a MONAI U-Net from the two images' class probabilities (``2 * n_classes``
  channels) to a displacement field (``ndim`` channels, voxels of the working grid).

Only the two segmenters and ``reg`` are used to register; the CycleGAN is kept for
inspection and for resuming training.

Example:
    >>> import torch
    >>> config = SegGuidedConfig(ndim=2, n_classes=2, shape=(32, 32), spacing=2.0)
    >>> nets = SegGuidedNets(config).eval()
    >>> x = torch.rand(1, 1, 32, 32)
    >>> nets.seg_source(x).shape, nets.reg(torch.rand(1, 4, 32, 32)).shape
    (torch.Size([1, 2, 32, 32]), torch.Size([1, 2, 32, 32]))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FAMILY",
    "LABELLED_SIDES",
    "ResnetGenerator",
    "SegGuidedConfig",
    "SegGuidedNets",
    "load_segguided",
]

#: The method family of the checkpoints (``--model segguided=PATH``).
FAMILY = "segguided"
#: Which image of a pair is of the labelled modality.
LABELLED_SIDES = ("fixed", "moving")


@dataclass(frozen=True)
class SegGuidedConfig:
    """What :class:`SegGuidedNets` needs to rebuild itself, and how it was trained to see.

    Attributes:
        ndim: 2 or 3.
        n_classes: Background plus one class per label group.
        shape: The working grid's shape (every network sees images resampled onto it).
        spacing: The working grid's isotropic voxel size, mm.
        labelled_side: ``fixed`` or ``moving``: which image of a pair S_S segments.
        labelled_suffix: The labelled modality (``--labels-from``), for messages.
        other_suffix: The other modality.
        groups: The ground-truth labels of each class (class 0 is the background).
        seg_channels: Channels per level of the two segmenters.
        reg_channels: Channels per level of the registration U-Net.
        gen_channels: Channels of the generators (after the first convolution).
        gen_blocks: Residual blocks of the generators.
        disc_channels: Channels of the discriminators' first layer.
    """

    ndim: int
    n_classes: int
    shape: tuple[int, ...]
    spacing: float
    labelled_side: str = "fixed"
    labelled_suffix: str = ""
    other_suffix: str = ""
    groups: tuple[tuple[int, ...], ...] = ()
    seg_channels: tuple[int, ...] = (8, 16, 32, 64)
    reg_channels: tuple[int, ...] = (16, 32, 32, 32)
    gen_channels: int = 8
    gen_blocks: int = 2
    disc_channels: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "groups", tuple(tuple(int(v) for v in g) for g in self.groups))
        for name in ("seg_channels", "reg_channels"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        if self.ndim not in (2, 3) or len(self.shape) != self.ndim:
            raise ValueError(f"ndim must be 2 or 3 and match shape {self.shape}")
        if self.n_classes < 2:
            raise ValueError("n_classes must be at least 2 (background and one label)")
        if self.labelled_side not in LABELLED_SIDES:
            raise ValueError(f"labelled_side must be one of {', '.join(LABELLED_SIDES)}")
        factor = self.factor
        if any(s % factor for s in self.shape):
            raise ValueError(f"shape {self.shape} must be a multiple of {factor} on every axis")
        if not self.spacing > 0:
            raise ValueError("spacing must be positive")

    @property
    def factor(self) -> int:
        """The working shape must be a multiple of this (every network's downsampling)."""
        levels = max(len(self.seg_channels), len(self.reg_channels)) - 1
        return max(4, 2**levels)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("shape", "seg_channels", "reg_channels"):
            values[key] = list(values[key])
        values["groups"] = [list(g) for g in self.groups]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegGuidedConfig:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})


class _ResBlock(nn.Module):
    def __init__(self, conv: type, norm: type, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, padding_mode="reflect"),
            norm(channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, padding_mode="reflect"),
            norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator (Zhu et al.), scaled down: conv 7, two stride-2 convs,
    ``blocks`` residual blocks, two transposed convs, conv 7, ``tanh`` mapped to [0, 1].

    Example:
        >>> g = ResnetGenerator(2, channels=4, blocks=1)
        >>> g(torch.rand(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(self, ndim: int, channels: int = 16, blocks: int = 3) -> None:
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        norm = nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d
        c = channels
        layers: list[nn.Module] = [
            conv(1, c, 7, padding=3, padding_mode="reflect"),
            norm(c),
            nn.ReLU(inplace=True),
            conv(c, 2 * c, 3, stride=2, padding=1),
            norm(2 * c),
            nn.ReLU(inplace=True),
            conv(2 * c, 4 * c, 3, stride=2, padding=1),
            norm(4 * c),
            nn.ReLU(inplace=True),
        ]
        layers += [_ResBlock(conv, norm, 4 * c) for _ in range(blocks)]
        layers += [
            up(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1),
            norm(2 * c),
            nn.ReLU(inplace=True),
            up(2 * c, c, 3, stride=2, padding=1, output_padding=1),
            norm(c),
            nn.ReLU(inplace=True),
            conv(c, 1, 7, padding=3, padding_mode="reflect"),
            nn.Tanh(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Images are in [0, 1]; tanh's [-1, 1] is mapped back onto it.
        return 0.5 * (self.net(2.0 * x - 1.0) + 1.0)


def _unet(ndim: int, cin: int, cout: int, channels: tuple[int, ...], res_units: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=ndim,
        in_channels=cin,
        out_channels=cout,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        norm="instance",
    )


class SegGuidedNets(nn.Module):
    """Every network of the method (see the module docstring)."""

    def __init__(self, config: SegGuidedConfig) -> None:
        from monai.networks.nets import PatchDiscriminator

        super().__init__()
        self.config = config
        d, k = config.ndim, config.n_classes
        self.seg_source = _unet(d, 1, k, config.seg_channels, 2)
        self.seg_target = _unet(d, 1, k, config.seg_channels, 2)
        self.gen_st = ResnetGenerator(d, config.gen_channels, config.gen_blocks)
        self.gen_ts = ResnetGenerator(d, config.gen_channels, config.gen_blocks)

        def disc() -> PatchDiscriminator:
            return PatchDiscriminator(
                spatial_dims=d,
                num_layers_d=3,
                channels=config.disc_channels,
                in_channels=1,
                out_channels=1,
                norm="INSTANCE",
            )

        self.disc_source = disc()
        self.disc_target = disc()
        self.reg = _unet(d, 2 * k, d, config.reg_channels, 0)
        # Start from (almost) the identity: a small last layer.
        convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        last = [m for m in self.reg.modules() if isinstance(m, convs)][-1]
        nn.init.normal_(last.weight, std=1e-5)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def segmenter(self, labelled: bool) -> nn.Module:
        """S_S for the labelled modality, S_T for the other."""
        return self.seg_source if labelled else self.seg_target

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not used
        return self.seg_source(x)


def load_segguided(path: str | Path | None = None) -> SegGuidedNets:
    """The networks of a verified ``mmreg train segguided`` checkpoint (CPU, eval, cached).

    Raises:
        InputError: One line, when no model is given (none is shipped), or the file is
            missing, tampered or not a segguided checkpoint.
    """
    from mmreg.models import load_network

    nets: SegGuidedNets = load_network(
        path,
        family=FAMILY,
        build=lambda config: SegGuidedNets(SegGuidedConfig.from_dict(dict(config))),
        name="segguided",
        how_to_train="segguided learns from your own labelled images: train it with "
        "'mmreg train segguided BIDS_DIR --labels-from SUFFIX --out segguided.pt' and pass "
        "--model segguided=segguided.pt",
    )
    return nets
