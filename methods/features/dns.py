"""DNS: learned modality-agnostic structural features (Mok et al., CVPR 2024).

"Modality-Agnostic Structural Image Representation Learning for Deformable
Multi-Modality Medical Image Registration": a small 3D U-Net whose last feature maps
are turned into *deep neighbourhood self-similarity* (DNS) descriptors, then squeezed to
a few channels. Like MIND-SSC (:mod:`~mmreg.methods.features.mind`) each voxel is
described by how alike its neighbours are, not by its intensity, but the quantities
compared are learned features, trained contrastively on intensity-remapped views of one
image (:mod:`~mmreg.methods.features.dns_train`).

Network (:class:`DNSNet`): conv blocks (3x3x3 conv, InstanceNorm, LeakyReLU, twice) on
``channels`` levels, anti-aliased downsampling (:class:`BlurPool`: a [1,2,1] binomial
blur then stride 2), trilinear upsampling with skip connections; then :func:`dns_layer`
on the finest level's ``channels[0]`` maps (squared differences of the 12 SSC neighbour
pairs at dilations 1 and 2 = 24 per channel, divided by their mean over the 24,
``exp(-.)``); a linear 1x1x1 squeeze to 24 channels; a pointwise (1x1x1)
conv-LeakyReLU-conv head to ``features`` channels. Everything after the U-Net is local,
so training evaluates it at the sampled voxels only (:meth:`DNSNet.features_at`), and
inference without autograd runs it in slabs, never holding the ``C * 24`` maps of the
whole volume. Defaults (8, 16, 32): about 95k parameters, about 0.9 s for a
96x112x96 volume on 2 CPU cores.

Example:
    >>> import torch
    >>> net = DNSNet(DNSConfig(channels=(4, 8), features=6)).eval()
    >>> with torch.no_grad():
    ...     net(torch.rand(1, 1, 9, 10, 11)).shape
    torch.Size([1, 6, 9, 10, 11])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmreg.methods.features.mind import neighbour_pairs, pair_distances

__all__ = [
    "DILATIONS",
    "DNS_EPS",
    "FAMILY",
    "SQUEEZE",
    "BlurPool",
    "DNSConfig",
    "DNSNet",
    "dns_at",
    "dns_layer",
    "load_dns",
    "normalise_for_dns",
]

#: The method family of the checkpoints (``--model dns=PATH``).
FAMILY = "dns"
#: Neighbour distances of the self-similarity (direct and dilated 6-neighbourhood).
DILATIONS = (1, 2)
#: Self-similarity values per feature channel (12 SSC pairs per dilation).
PAIRS_PER_CHANNEL = 12 * len(DILATIONS)
#: Channels of the linear squeeze after the DNS layer.
SQUEEZE = 24
#: Added to the mean distance before dividing (flat regions give 0 / eps -> exp(0) = 1).
DNS_EPS = 1e-3


@dataclass(frozen=True)
class DNSConfig:
    """What :class:`DNSNet` needs to rebuild itself (plain JSON types).

    Attributes:
        channels: Channels per U-Net level, finest first (``len - 1`` downsamplings).
        features: Output channels.
        in_channels: Input channels (one image).
        spatial_dims: Only 3 is supported.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    features: int = 24
    in_channels: int = 1
    spatial_dims: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.features < 1 or self.in_channels < 1:
            raise ValueError("features and in_channels must be positive")
        if self.spatial_dims != 3:
            raise ValueError(f"DNS is 3D only, got spatial_dims={self.spatial_dims}")

    @property
    def factor(self) -> int:
        """Total downsampling factor (input sizes are padded to a multiple of it)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DNSConfig:
        known = {k: values[k] for k in ("channels", "features", "in_channels", "spatial_dims")}
        known["channels"] = tuple(known["channels"])
        return cls(**known)


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: [1,2,1]^3 / 64 blur, then every second voxel."""

    kernel: torch.Tensor  # a registered buffer

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = k[:, None, None] * k[None, :, None] * k[None, None, :]
        kernel = (kernel / kernel.sum()).expand(channels, 1, 3, 3, 3).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1,) * 6, mode="replicate")
        return F.conv3d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    )


def dns_layer(features: torch.Tensor, eps: float = DNS_EPS) -> torch.Tensor:
    """Deep neighbourhood self-similarity of each channel.

    Args:
        features: ``(B, C, D, H, W)``.
        eps: Added to the per-voxel mean distance.

    Returns:
        ``(B, C * 24, D, H, W)`` in ``(0, 1]``: channel ``c * 24 + k`` is
        ``exp(-d_k / (mean_k d + eps))`` for the 12 SSC pairs at dilation 1 (``k < 12``)
        and 2, the centre voxel never used. Invariant to adding a constant to a channel.
    """
    b, c = features.shape[:2]
    spatial = features.shape[2:]
    dist = torch.cat(
        [pair_distances(features, d).view(b, c, 12, *spatial) for d in DILATIONS], dim=2
    )
    mean = dist.mean(dim=2, keepdim=True)
    out = torch.exp(-dist / (mean + eps))
    return out.reshape(b, c * PAIRS_PER_CHANNEL, *spatial)


class DNSNet(nn.Module):
    """U-Net features -> DNS layer -> linear squeeze -> head (see the module docstring).

    ``forward``: ``(B, in_channels, D, H, W)`` float in ``[0, 1]`` ->
    ``(B, features, D, H, W)``, any size (padded internally, cropped back).
    """

    def __init__(self, config: DNSConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DNSConfig()
        ch = config.channels
        self.encoders = nn.ModuleList(
            [_block(config.in_channels, ch[0])]
            + [_block(ch[i - 1], ch[i]) for i in range(1, len(ch))]
        )
        self.pools = nn.ModuleList([BlurPool(ch[i]) for i in range(len(ch) - 1)])
        self.decoders = nn.ModuleList(
            [_block(ch[i + 1] + ch[i], ch[i]) for i in range(len(ch) - 1)]
        )
        self.squeeze = nn.Conv3d(ch[0] * PAIRS_PER_CHANNEL, SQUEEZE, 1)
        # Pointwise (1x1x1): a voxel's output depends on the U-Net features at it and
        # its 12 neighbours only, so training evaluates it at the sampled voxels alone.
        self.head = nn.Sequential(
            nn.Conv3d(SQUEEZE, SQUEEZE, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(SQUEEZE, config.features, 1),
        )
        # Channels-last convolutions are several times faster on CPUs (backward above all).
        self.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch stubs lack to(memory_format=)

    def unet(self, x: torch.Tensor) -> torch.Tensor:
        """The finest decoder level's ``channels[0]`` maps (input already padded)."""
        x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < len(self.pools):
                skips.append(x)
                x = self.pools[i](x)
        for i in reversed(range(len(self.decoders))):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = self.decoders[i](torch.cat([x, skip], dim=1))
        return x

    def _pointwise(self, dns: torch.Tensor) -> torch.Tensor:
        """Squeeze and head on ``(N, C * 24)`` descriptors -> ``(N, features)``."""
        first, last = self.head[0], self.head[2]
        assert isinstance(first, nn.Conv3d) and isinstance(last, nn.Conv3d)
        w1 = self.squeeze.weight.flatten(1)
        h = F.leaky_relu(F.linear(dns, w1, self.squeeze.bias), 0.2)
        h = F.linear(h, first.weight.flatten(1), first.bias)
        h = F.leaky_relu(h, 0.2)
        return F.linear(h, last.weight.flatten(1), last.bias)

    def features_at(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Output features at some voxels only (what training needs; same values as forward).

        Args:
            x: ``(B, in_channels, D, H, W)``.
            points: ``(B, N, 3)`` integer voxel indices.

        Returns:
            ``(B, N, features)``.
        """
        feats = self._unet_cropped(x)
        return self._pointwise(dns_at(feats, points))

    def _unet_cropped(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"DNSNet expects (B, {self.config.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        size = x.shape[2:]
        f = self.config.factor
        pad = [(-s) % f for s in size]
        if any(pad):
            # F.pad takes the last axis first.
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.unet(x)[..., : size[0], : size[1], : size[2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self._unet_cropped(x)
        b = feats.shape[0]
        spatial = feats.shape[2:]
        if torch.is_grad_enabled():
            dns = dns_layer(feats).flatten(2).transpose(1, 2)  # (B, V, C*24)
            out = self._pointwise(dns)
            return out.transpose(1, 2).reshape(b, -1, *spatial)
        # Without autograd: slabs along the first axis, so the C*24 maps never exist at once.
        out = feats.new_empty(b, self.config.features, *spatial)
        slab = 4
        padded = F.pad(feats, (2,) * 6, mode="replicate")
        for z in range(0, spatial[0], slab):
            n = min(slab, spatial[0] - z)
            part = padded[:, :, z : z + n + 4]
            dns = _dns_padded(part, n)  # (B, C*24, n, H, W)
            res = self._pointwise(dns.flatten(2).transpose(1, 2))
            out[:, :, z : z + n] = res.transpose(1, 2).reshape(b, -1, n, *spatial[1:])
        return out


def _dns_padded(padded: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`dns_layer` of a slab padded by 2 on every side, ``n`` slices along axis 0."""
    b, c = padded.shape[:2]
    h, w = padded.shape[3] - 4, padded.shape[4] - 4
    dist = padded.new_empty(b, c, PAIRS_PER_CHANNEL, n, h, w)
    k = 0
    for d in DILATIONS:
        for a, bb in neighbour_pairs(3):
            pa = padded[
                :,
                :,
                2 + d * a[0] : 2 + d * a[0] + n,
                2 + d * a[1] : 2 + d * a[1] + h,
                2 + d * a[2] : 2 + d * a[2] + w,
            ]
            pb = padded[
                :,
                :,
                2 + d * bb[0] : 2 + d * bb[0] + n,
                2 + d * bb[1] : 2 + d * bb[1] + h,
                2 + d * bb[2] : 2 + d * bb[2] + w,
            ]
            torch.sub(pa, pb, out=dist[:, :, k])
            k += 1
    dist.square_()
    mean = dist.mean(dim=2, keepdim=True).add_(DNS_EPS)
    dist.div_(mean).neg_().exp_()
    return dist.view(b, c * PAIRS_PER_CHANNEL, n, h, w)


def dns_at(feats: torch.Tensor, points: torch.Tensor, eps: float = DNS_EPS) -> torch.Tensor:
    """:func:`dns_layer` at some voxels: ``(B, C, D, H, W)``, ``(B, N, 3)`` -> ``(B, N, C*24)``.

    Borders replicate, as in :func:`dns_layer`.
    """
    b, c = feats.shape[:2]
    size = feats.shape[2:]
    flat = feats.flatten(2)  # (B, C, V)
    points = points.long()

    def at(offset: tuple[int, ...]) -> torch.Tensor:
        idx = [(points[..., i] + offset[i]).clamp(0, size[i] - 1) for i in range(3)]
        lin = (idx[0] * size[1] + idx[1]) * size[2] + idx[2]  # (B, N)
        return torch.gather(flat, 2, lin[:, None, :].expand(b, c, -1))  # (B, C, N)

    dists = []
    for d in DILATIONS:
        for a, bb in neighbour_pairs(3):
            va = at(tuple(d * v for v in a))
            vb = at(tuple(d * v for v in bb))
            dists.append((va - vb).pow(2))
    dist = torch.stack(dists, dim=2)  # (B, C, 24, N)
    mean = dist.mean(dim=2, keepdim=True)
    out = torch.exp(-dist / (mean + eps))
    return out.reshape(b, c * PAIRS_PER_CHANNEL, -1).transpose(1, 2)


def normalise_for_dns(x: torch.Tensor) -> torch.Tensor:
    """One image (any shape) rescaled to ``[0, 1]`` by its nonzero voxels' 0.5/99.5 percentiles.

    The same definition is used for training and inference. Zero (background) voxels stay
    0 when the low percentile is positive; a constant image gives zeros, a two-valued one
    0 and 1.

    Example:
        >>> x = torch.arange(1000.0)
        >>> y = normalise_for_dns(x)
        >>> float(y.min()), float(y.max()), float(y[0])
        (0.0, 1.0, 0.0)
    """
    x = x.float()
    values = x[x != 0]
    if values.numel() == 0:
        return torch.zeros_like(x)
    n = values.numel()
    lo = values.kthvalue(max(1, round(0.005 * (n - 1)) + 1)).values
    hi = values.kthvalue(max(1, round(0.995 * (n - 1)) + 1)).values
    if float(hi - lo) <= 0:
        # Two values (a mask, a phantom): the brighter one is 1.
        return (x > x.min()).to(x.dtype)
    return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)


def load_dns(path: str | Path | None = None) -> DNSNet:
    """The DNS network of a verified checkpoint, on the CPU in eval mode (cached).

    Args:
        path: A ``mmreg train dns`` checkpoint; ``None``: the shipped ``dns.pt``.

    Raises:
        InputError: When there are no shipped weights (one line: how to train them), or
            the file is missing, tampered or not a DNS checkpoint.
    """
    from mmreg.models import load_network

    net: DNSNet = load_network(
        path,
        family=FAMILY,
        build=lambda config: DNSNet(DNSConfig.from_dict(config)),
        name="DNS",
        how_to_train="train them with 'mmreg train dns BIDS_DIR --out dns.pt' "
        "and pass --model dns=PATH",
    )
    return net
