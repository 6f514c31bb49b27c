"""Training the DNS network (``mmreg train dns``): contrastive learning on remapped views.

Following Mok et al. (CVPR 2024): a random patch of one image is shown twice, each time
through a random monotone cubic Bezier intensity curve (and inverted with probability
0.5), so the two views have the same structure but unrelated intensities. The network's
features at sampled foreground voxels must match across the views: InfoNCE with the same
voxel in the other view as the positive and the other sampled voxels as negatives.

Data: every image ``mmreg train dns`` selects, reoriented to canonical, resampled to
``spacing`` mm and rescaled with :func:`~mmreg.methods.features.dns.normalise_for_dns`.
Images are split (by file name) into training and validation images with
:func:`mmreg.training.split_items`; validation uses fixed patches and augmentations.

Example:
    >>> import torch
    >>> xs, ys = bezier_curve(torch.tensor([[0.2, 0.9], [0.7, 0.1]]))
    >>> float(ys[0]), float(ys[-1]), bool((ys[1:] >= ys[:-1]).all())
    (0.0, 1.0, True)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmreg.methods.features.dns import FAMILY, DNSConfig, DNSNet, normalise_for_dns

__all__ = [
    "DNSTrainSettings",
    "apply_curve",
    "augment_view",
    "bezier_curve",
    "info_nce",
    "load_volume",
    "train_dns",
]

LOG = logging.getLogger("mmreg.train.dns")


@dataclass
class DNSTrainSettings:
    """Hyperparameters of ``mmreg train dns`` (each is a ``--option``)."""

    seed: int = field(default=0, metadata={"help": "random seed"})
    steps: int = field(default=3500, metadata={"help": "training steps (the shipped dns.pt)"})
    batch: int = field(default=1, metadata={"help": "patches per step"})
    patch: int = field(default=64, metadata={"help": "patch size in voxels"})
    spacing: float = field(default=2.0, metadata={"help": "voxel size in mm"})
    samples: int = field(default=512, metadata={"help": "foreground voxels per patch"})
    tau: float = field(default=0.07, metadata={"help": "InfoNCE temperature"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    val_fraction: float = field(default=0.15, metadata={"help": "images held out"})
    val_patches: int = field(default=8, metadata={"help": "fixed validation patches"})
    validate_every: int = field(default=250, metadata={"help": "steps between validations"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    channels: str = field(default="8,16,32", metadata={"help": "U-Net channels per level"})
    features: int = field(default=24, metadata={"help": "output channels"})
    noise: float = field(default=0.02, metadata={"help": "max Gaussian noise std"})
    flip: bool = field(default=True, metadata={"help": "random flips of the patches"})
    max_minutes: float = field(
        default=0.0, metadata={"help": "stop after this many minutes (0: no limit)"}
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.samples < 2:
            raise ValueError("steps and batch must be >= 1 and samples >= 2")
        if self.patch < 8 or self.spacing <= 0 or self.tau <= 0:
            raise ValueError("patch must be >= 8, spacing and tau positive")
        self.channel_tuple()

    def channel_tuple(self) -> tuple[int, ...]:
        try:
            values = tuple(int(c) for c in str(self.channels).split(",") if c.strip())
        except ValueError:
            raise ValueError(f"channels must be like '4,8,16', got {self.channels!r}") from None
        if not values or min(values) < 1:
            raise ValueError(f"channels must be positive integers, got {self.channels!r}")
        return values

    def model_config(self) -> DNSConfig:
        return DNSConfig(channels=self.channel_tuple(), features=self.features)


# --- augmentation --------------------------------------------------------------------------------


def bezier_curve(inner: torch.Tensor, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of the cubic Bezier curve through (0, 0), ``inner[0]``, ``inner[1]``, (1, 1).

    ``inner``: ``(2, 2)`` control points in ``[0, 1]^2``; the curve is then monotone
    non-decreasing in both coordinates. Returns ``(xs, ys)``, ``n`` points each.
    """
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float32)
    p = torch.cat([torch.zeros(1, 2), inner.float().clamp(0, 1), torch.ones(1, 2)])
    basis = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], 1)
    curve = basis @ p  # (n, 2)
    xs = torch.cummax(curve[:, 0], 0).values
    ys = torch.cummax(curve[:, 1], 0).values
    xs[0], ys[0], xs[-1], ys[-1] = 0.0, 0.0, 1.0, 1.0
    return xs, ys


def apply_curve(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Map ``x`` in ``[0, 1]`` through the piecewise-linear curve ``(xs, ys)``."""
    xs, ys = xs.to(x.device), ys.to(x.device)
    v = x.clamp(0.0, 1.0).contiguous()
    hi = torch.searchsorted(xs, v).clamp(1, xs.numel() - 1)
    lo = hi - 1
    x0, x1, y0, y1 = xs[lo], xs[hi], ys[lo], ys[hi]
    w = ((v - x0) / (x1 - x0).clamp_min(1e-8)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def augment_view(x: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
    """One random view: a Bezier intensity curve, inversion with p = 0.5, mild noise."""
    xs, ys = bezier_curve(torch.rand(2, 2, generator=generator))
    y = apply_curve(x, xs, ys)
    if float(torch.rand(1, generator=generator)) < 0.5:
        y = 1.0 - y
    if noise > 0:
        sigma = float(torch.rand(1, generator=generator)) * noise
        y = y + sigma * torch.randn(y.shape, generator=generator).to(y.device)
    return y


def info_nce(f1: torch.Tensor, f2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE and top-1 accuracy of matching ``(N, C)`` features row by row.

    Features are L2-normalised; row ``i`` of ``f1`` should match row ``i`` of ``f2``
    against all other rows. Returns ``(loss, accuracy)`` (scalars).
    """
    a = F.normalize(f1, dim=-1)
    b = F.normalize(f2, dim=-1)
    logits = a @ b.t() / tau
    target = torch.arange(a.shape[0], device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    with torch.no_grad():
        acc = 0.5 * (
            (logits.argmax(1) == target).float().mean()
            + (logits.argmax(0) == target).float().mean()
        )
    return loss, acc


# --- data ----------------------------------------------------------------------------------------


@dataclass
class _Volume:
    name: str
    data: torch.Tensor  # (D, H, W) in [0, 1], zero-padded by `pad` on every side
    mask: torch.Tensor  # bool, same shape
    points: torch.Tensor  # (M, 3) foreground voxels (padded coordinates)


def load_volume(path: str | Path, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An image as training sees it: canonical, ``spacing`` mm, normalised; and its mask."""
    from mmreg.imaging.image import load_image
    from mmreg.imaging.preprocess import foreground_mask, reorient_canonical, resample_isotropic

    img = resample_isotropic(reorient_canonical(load_image(path, ndim=3)), spacing)
    data = normalise_for_dns(torch.from_numpy(np.ascontiguousarray(img.data, np.float32)))
    mask = torch.from_numpy(np.ascontiguousarray(foreground_mask(img)))
    return data, mask


def _prepare(paths: Sequence[Path], spacing: float, patch: int) -> list[_Volume]:
    volumes = []
    pad = patch // 2 + 1
    for path in paths:
        data, mask = load_volume(path, spacing)
        data = F.pad(data, (pad,) * 6)
        mask = F.pad(mask, (pad,) * 6)
        points = mask.nonzero()
        if points.shape[0] == 0:
            LOG.warning("%s: no foreground, skipped", Path(path).name)
            continue
        volumes.append(_Volume(Path(path).name, data, mask, points))
    return volumes


def _patch(
    volume: _Volume, size: int, generator: torch.Generator, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size``^3 patch centred on a random foreground voxel, and its mask."""
    i = int(torch.randint(volume.points.shape[0], (1,), generator=generator))
    centre = volume.points[i]
    lo = [int(c) - size // 2 for c in centre]
    sl = tuple(slice(s, s + size) for s in lo)
    x, m = volume.data[sl], volume.mask[sl]
    if flip:
        dims = [d for d in range(3) if float(torch.rand(1, generator=generator)) < 0.5]
        if dims:
            x, m = x.flip(dims), m.flip(dims)
    return x, m


def _sample_points(mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` voxel indices (``(n, 3)``) of the mask, without replacement when possible."""
    points = mask.nonzero()
    if points.shape[0] == 0:
        points = torch.stack(
            torch.meshgrid(*[torch.arange(s) for s in mask.shape], indexing="ij"), -1
        ).reshape(-1, 3)
    if points.shape[0] >= n:
        idx = torch.randperm(points.shape[0], generator=generator)[:n]
    else:
        idx = torch.randint(points.shape[0], (n,), generator=generator)
    return points[idx]


def _make_batch(
    volumes: Sequence[_Volume],
    settings: DNSTrainSettings,
    generator: torch.Generator,
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` patches as two views: ``(2 * count, 1, P, P, P)`` and points ``(count, N, 3)``."""
    views1, views2, pts = [], [], []
    for _ in range(count):
        vol = volumes[int(torch.randint(len(volumes), (1,), generator=generator))]
        x, m = _patch(vol, settings.patch, generator, settings.flip)
        views1.append(augment_view(x, generator, settings.noise))
        views2.append(augment_view(x, generator, settings.noise))
        # Unique points: duplicates would be false negatives.
        pts.append(_sample_points(m, settings.samples, generator))
    x = torch.stack(views1 + views2)[:, None].float()
    return x, torch.stack(pts)


def _loss(
    net: DNSNet, x: torch.Tensor, points: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    count = points.shape[0]
    feats = net.features_at(x, torch.cat([points, points]))  # (2 * count, N, F)
    losses, accs = [], []
    for i in range(count):
        loss, acc = info_nce(feats[i], feats[count + i], tau)
        losses.append(loss)
        accs.append(acc)
    return torch.stack(losses).mean(), torch.stack(accs).mean()


# --- training ------------------------------------------------------------------------------------


def train_dns(
    images: Sequence[str | Path],
    *,
    out: str | Path,
    settings: DNSTrainSettings | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Path:
    """Train a DNS network on ``images`` and write the checkpoint to ``out``.

    A resumable state is kept at ``<out>.state`` while training (removed at the end).

    Returns:
        ``out``.
    """
    from mmreg.errors import InputError
    from mmreg.training import fit_and_save, seed_everything, split_items

    settings = settings or DNSTrainSettings()
    out = Path(out)
    started = time.perf_counter()
    generator = seed_everything(settings.seed)
    paths = {Path(p).name: Path(p) for p in images}
    if len(paths) != len(images):
        raise InputError("training images must have distinct file names")
    train_names, val_names = split_items(list(paths), settings.val_fraction, settings.seed)
    if not val_names:
        LOG.warning("one image only: validating on the training image")
        val_names = train_names
    LOG.info("DNS training on %d image(s), validating on %d", len(train_names), len(val_names))
    train_vols = _prepare([paths[n] for n in train_names], settings.spacing, settings.patch)
    val_vols = _prepare([paths[n] for n in val_names], settings.spacing, settings.patch)
    if not train_vols or not val_vols:
        raise InputError("no usable training image (no foreground)")

    config = settings.model_config()
    net = DNSNet(config).to(device)
    LOG.info(
        "DNS network %s: %d parameters", config.channels, sum(p.numel() for p in net.parameters())
    )
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    warmup = max(1, min(100, settings.steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)

    # Fixed validation patches and views (their own seed; the training stream is untouched).
    val_gen = torch.Generator().manual_seed(settings.seed + 1_000_003)
    val_batches = [
        _make_batch(val_vols, settings, val_gen, 1) for _ in range(settings.val_patches)
    ]

    def train_step(step: int) -> dict[str, float]:
        x, pts = _make_batch(train_vols, settings, generator, settings.batch)
        loss, acc = _loss(net, x.to(device), pts.to(device), settings.tau)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss": float(loss.detach()), "acc": float(acc)}

    def validate() -> dict[str, float]:
        losses, accs = [], []
        for x, pts in val_batches:
            loss, acc = _loss(net, x.to(device), pts.to(device), settings.tau)
            losses.append(float(loss))
            accs.append(float(acc))
        return {"val_loss": float(np.mean(losses)), "score": float(np.mean(accs))}

    fit_and_save(
        net,
        optimiser,
        train_step,
        validate,
        out=out,
        family=FAMILY,
        config=config.to_dict(),
        settings=settings,
        data={"train": train_names, "val": val_names, "count": len(paths)},
        score_name="accuracy",
        device=device,
        progress=progress,
        generator=generator,
        started=started,
        scheduler=scheduler,
        log=LOG,
    )
    return out
