"""Dual VGG-style encoders for DXA and MR, dense (spatial) or globally pooled embeddings.

Each modality has its own encoder (Windsor et al. 2021): blocks of 3x3 convolution +
normalisation + ReLU, a 2x2 max-pool between resolution levels, so that
``len(widths) - 1`` levels reach ``1 / stride`` of the input resolution (1/8 with the
default four levels); a 1x1 convolution gives ``embed_dim`` channels (128), which are
L2-normalised at every location. Those *dense* embeddings are compared by sliding the
MR map over the DXA map (:func:`mmreg.methods.contrastive.losses.correlation`).

The *global* baseline (the paper's comparison) averages the trunk features over the
image and maps them through a projection head to one L2-normalised vector per image.

Images enter the encoders on a *working grid*: world-axis aligned, ``spacing_mm``
millimetres per pixel, intensities per channel scaled to about [0, 1]
(:mod:`mmreg.methods.contrastive.data`).

Example:
    >>> import torch
    >>> config = ContrastiveConfig(widths=(4, 8, 8, 16), embed_dim=8)
    >>> model = DualEncoder(config).eval()
    >>> model.embed(torch.rand(1, 2, 32, 48), "dxa").shape
    torch.Size([1, 8, 4, 6])
    >>> with torch.no_grad():
    ...     float(model.embed(torch.rand(1, 2, 32, 48), "mr").norm(dim=1).mean())  # unit norm
    1.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODALITIES",
    "ContrastiveConfig",
    "DualEncoder",
    "Encoder",
    "Modality",
    "build_model",
    "cell_mask",
]

Modality = Literal["dxa", "mr"]
#: The two encoders, by the modality they read.
MODALITIES: tuple[Modality, Modality] = ("dxa", "mr")
_NORMS = ("batch", "group", "none")
_POOLINGS = ("dense", "global")


@dataclass(frozen=True)
class ContrastiveConfig:
    """Architecture of the dual encoder (stored in checkpoints as a plain dict).

    Attributes:
        dxa_channels: Input channels of the DXA encoder (bone, tissue: 2).
        mr_channels: Input channels of the MR encoder (fat, water: 2).
        widths: Channels per resolution level, full resolution first; a 2x2 max-pool
            separates levels, so the embedding has ``1 / 2 ** (len(widths) - 1)`` of the
            input resolution.
        convs_per_level: 3x3 convolutions per level (VGG uses 1-2).
        embed_dim: Channels of the embedding (128 in the paper).
        norm: ``batch``, ``group`` (8 groups, batch-size independent) or ``none``.
        pooling: ``dense`` (spatial embeddings, the paper's method) or ``global``
            (average-pooled trunk + projection head, the paper's baseline).
        spacing_mm: Pixel size of the working grid the encoders read.
        temperature: InfoNCE temperature the model was trained with (also scales the
            similarities when they are turned into probabilities).
        centre: Subtract each image's mean embedding (over its footprint) before the
            L2 normalisation, so that the sliding correlation becomes a cross-covariance:
            a constant embedding then scores 0 instead of 1, which removes the collapsed
            "every location looks alike" solution that InfoNCE on max-correlations fell
            into early in training (on toy data, 2 of 2 seeds learned with it, 1 of 4
            without).
        shared_levels: The deepest levels whose convolution weights the two encoders
            share (normalisation layers stay per modality). The similarity is blind to
            a constant offset between the two maps, and two separate encoders with a
            large receptive field learned one (features of cell u describing the
            anatomy one to three cells away, consistently over subjects: perfect for
            matching, useless for registration). With shared deep levels only the
            modality-specific first level could shift the maps, by at most its own
            receptive field (a few pixels). 0: fully separate encoders (the paper).
        max_shift_mm: The shift prior the model was trained with: similarities take the
            best shift among those that put the two images' centres within this
            distance along each axis (0: any shift). Registration and matching use the
            same prior by default.
    """

    dxa_channels: int = 2
    mr_channels: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 96)
    convs_per_level: int = 2
    embed_dim: int = 128
    norm: str = "batch"
    pooling: str = "dense"
    spacing_mm: float = 4.4
    temperature: float = 0.01
    centre: bool = True
    max_shift_mm: float = 0.0
    shared_levels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.dxa_channels < 1 or self.mr_channels < 1:
            raise ValueError("dxa_channels and mr_channels must be positive")
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ValueError("widths needs at least one positive entry")
        if self.convs_per_level < 1 or self.embed_dim < 1:
            raise ValueError("convs_per_level and embed_dim must be positive")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        if not 0 <= self.shared_levels < len(self.widths):
            raise ValueError("shared_levels must be in [0, len(widths) - 1]")
        if self.max_shift_mm < 0:
            raise ValueError("max_shift_mm must be >= 0")
        if not self.spacing_mm > 0 or not self.temperature > 0:
            raise ValueError("spacing_mm and temperature must be positive")

    @property
    def cell_mm(self) -> float:
        """Side of an embedding cell in mm."""
        return self.spacing_mm * self.stride

    @property
    def max_shift_cells(self) -> float | None:
        """:attr:`max_shift_mm` in cells (``None`` for any shift)."""
        return self.max_shift_mm / self.cell_mm if self.max_shift_mm > 0 else None

    @property
    def stride(self) -> int:
        """Input pixels per embedding cell along each axis (8 for four levels)."""
        return 2 ** (len(self.widths) - 1)

    def channels(self, modality: Modality) -> int:
        """Input channels of one modality's encoder."""
        return self.dxa_channels if modality == "dxa" else self.mr_channels

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContrastiveConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class Encoder(nn.Module):
    """One modality's VGG-style trunk: ``(B, C_in, H, W)`` -> ``(B, widths[-1], H/s, W/s)``.

    Inputs whose size is not a multiple of the stride are zero-padded at the far end
    (zero is background on the working grid), so cell ``k`` always covers input pixels
    ``[k * s, (k + 1) * s)``.
    """

    def __init__(self, in_channels: int, config: ContrastiveConfig) -> None:
        super().__init__()
        self.stride = config.stride
        levels: list[nn.Module] = []
        c_in = in_channels
        for level, width in enumerate(config.widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if level > 0 else []
            for _ in range(config.convs_per_level):
                layers += [
                    nn.Conv2d(c_in, width, 3, padding=1, bias=config.norm == "none"),
                    _norm_layer(config.norm, width),
                    nn.ReLU(inplace=True),
                ]
                c_in = width
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self.out_channels = c_in

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pad_h = -image.shape[-2] % self.stride
        pad_w = -image.shape[-1] % self.stride
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
        for level in self.levels:
            image = level(image)
        return image


def _tie_convolutions(source: nn.Module, target: nn.Module) -> None:
    """Make ``target``'s convolutions use ``source``'s weights (normalisation stays separate)."""
    convs = [m for m in source.modules() if isinstance(m, nn.Conv2d)]
    others = [m for m in target.modules() if isinstance(m, nn.Conv2d)]
    for a, b in zip(convs, others, strict=True):
        b.weight = a.weight
        if a.bias is not None:
            b.bias = a.bias


class DualEncoder(nn.Module):
    """The two encoders (``dxa``, ``mr``) with dense heads, or pooled projection heads.

    Dense: a 1x1 convolution to ``embed_dim`` channels, L2-normalised per location.
    Global: average pooling of the trunk, ``Linear-ReLU-Linear`` projection head,
    L2-normalised: one ``(embed_dim,)`` vector per image.
    """

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__()
        self.config = config
        encoders: dict[str, Encoder] = {m: Encoder(config.channels(m), config) for m in MODALITIES}
        self.encoders = nn.ModuleDict(encoders)
        n = len(config.widths)
        for level in range(n - config.shared_levels, n):
            _tie_convolutions(encoders["dxa"].levels[level], encoders["mr"].levels[level])
        width = config.widths[-1]
        if config.pooling == "dense":
            self.heads = nn.ModuleDict(
                {m: nn.Conv2d(width, config.embed_dim, 1) for m in MODALITIES}
            )
        else:
            self.heads = nn.ModuleDict(
                {
                    m: nn.Sequential(
                        nn.Linear(width, width),
                        nn.ReLU(inplace=True),
                        nn.Linear(width, config.embed_dim),
                    )
                    for m in MODALITIES
                }
            )

    def embed(
        self, image: torch.Tensor, modality: Modality, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings of a batch of working-grid images of one modality.

        Args:
            image: ``(B, C, H, W)`` with ``C`` the modality's input channels.
            modality: ``dxa`` or ``mr``.
            mask: Optional ``(B, 1, H, W)`` footprint of the images on their canvases
                (1 inside); with ``centre``, the mean embedding is taken over the cells
                inside it (default: over all cells).

        Returns:
            Dense: ``(B, embed_dim, ceil(H / stride), ceil(W / stride))``, unit norm per
            location. Global: ``(B, embed_dim)``, unit norm.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        expected = self.config.channels(modality)
        if image.dim() != 4 or image.shape[1] != expected:
            raise ValueError(
                f"{modality} encoder expects (B, {expected}, H, W), got {tuple(image.shape)}"
            )
        trunk = self.encoders[modality](image)
        if self.config.pooling != "dense":
            return F.normalize(self.heads[modality](trunk.mean(dim=(2, 3))), dim=1)
        dense = self.heads[modality](trunk)
        if self.config.centre:
            if mask is None:
                weights = torch.ones_like(dense[:, :1])
            else:
                weights = cell_mask(mask, self.config.stride)
            total = weights.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
            dense = dense - (dense * weights).sum(dim=(2, 3), keepdim=True) / total
        return F.normalize(dense, dim=1)

    def forward(
        self,
        dxa: torch.Tensor,
        mr: torch.Tensor,
        dxa_mask: torch.Tensor | None = None,
        mr_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embed(dxa, "dxa", dxa_mask), embed(mr, "mr", mr_mask))``."""
        return self.embed(dxa, "dxa", dxa_mask), self.embed(mr, "mr", mr_mask)


def cell_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel footprint ``(B, 1, H, W)`` -> cells at least half inside, ``(B, 1, H/s, W/s)``.

    Example:
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :, :3] = 1.0
        >>> cell_mask(m, 2)[0, 0].tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    h, w = mask.shape[-2:]
    padded = F.pad(mask, (0, -w % stride, 0, -h % stride))
    return (F.avg_pool2d(padded, stride) >= 0.5).to(mask.dtype)


def build_model(config: ContrastiveConfig | dict[str, Any]) -> DualEncoder:
    """A dual encoder from a config (or its dict form, as stored in a checkpoint)."""
    if isinstance(config, dict):
        config = ContrastiveConfig.from_dict(config)
    return DualEncoder(config)
