"""A small 2D U-Net: the segmentation network for label transfer.

Example:
    >>> import torch
    >>> net = UNet2d(in_channels=2, n_classes=4, width=8, depth=3)
    >>> net(torch.zeros(1, 2, 40, 24)).shape
    torch.Size([1, 4, 40, 24])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet2d", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    """What rebuilds a :class:`UNet2d` from a checkpoint."""

    in_channels: int = 2
    n_classes: int = 4
    width: int = 16
    depth: int = 4

    def build(self) -> UNet2d:
        return UNet2d(**asdict(self))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet2d(nn.Module):
    """Encoder-decoder with skip connections; any input size (padded to a multiple of 2^depth).

    Args:
        in_channels: Image channels (e.g. 2 for Dixon fat and water).
        n_classes: Output classes including background.
        width: Channels at full resolution (doubled at each level).
        depth: Number of downsamplings.
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 4, width: int = 16, depth: int = 4):
        super().__init__()
        self.depth = depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(in_channels, widths[0])]
            + [_block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)]
        )
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes, H, W)`` for images ``(B, in_channels, H, W)``."""
        height, width = x.shape[-2:]
        step = 2**self.depth
        # A multiple of 2^depth, and at least 2 pixels at the bottleneck (instance norm).
        size = [max(2 * step, n + (-n) % step) for n in (height, width)]
        pad = (0, size[1] - width, 0, size[0] - height)
        x = F.pad(x, pad)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)[..., :height, :width]
