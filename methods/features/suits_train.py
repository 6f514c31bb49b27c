"""Training the SUITS feature networks (``mmreg train suits``): supervised iterative descent.

Following Blendowski and Heinrich (MIDL 2019). A training pair is a fixed and a moving
image on one grid, each with a label map. The labels become *signed distance maps*
(:func:`signed_distance_maps`): one channel for the background and one per label, each
``tanh(sdm_scale * d)`` with ``d`` the signed Euclidean distance to the structure's
boundary in voxels of the training grid (positive outside); with more than
``max_labels`` labels the ``max_labels - 1`` largest (by voxel count over the
data) keep their own channel and all others share one (:func:`label_groups`; the DLMUSE
brains' ~148 labels become the background, the 9 largest structures and "the rest").

A pair is registered by the SUITS descent (:class:`~mmreg.methods.features.suits.Descent`),
moved only by the *feature-driven* Demons step ``D_feat`` (features of the two networks).
Every ``every``-th grid iteration, the *label-driven* step ``D_sdm`` (the same Demons
formula on the SDM channels, at the same field) is the target: the loss is the mean
squared difference ``|D_feat - D_sdm|^2`` over the voxels near a boundary (some SDM
channel of the fixed or the warped moving image within ``band`` in squashed units:
``|tanh(0.01 d)| < 0.1``, about 10 voxels), and its gradient reaches both networks through
``D_feat`` (feature Adam, ``lr`` 0.001). The SDM stream never moves the grid.
The descent's regulariser only decides which fields training visits (the loss compares
steps); training uses a stiffer ``smooth=1`` than registration's 0.2, which kept the
training descents near plausible fields and learned faster on the synthetic pairs of the
tests (validation loss ratio 0.91 vs 0.99 after 1000 steps).

Batches hold ``batch`` pairs that sit at different stages of their descents: a pool of
``pool`` descents is kept in flight (at the start they begin at staggered stages, with a
zero field), each step advances ``batch`` of them in turn by ``every`` grid iterations,
and a finished descent makes way for a new one on a random training pair (its moving
side deformed by a random smooth field of up to ``deform`` voxels). Validation runs a
short descent (``val_iterations`` per scale) on each held-out pair with the current
features: ``val_loss`` (the loss along it), ``val_rel`` (the loss over the loss of a
zero feature step) and ``score``, the mean Dice of the moving labels after it.

:func:`pairs_from_arrays` makes training pairs from arrays (tests, scripts);
:func:`train_suits_pairs` trains on such pairs; :func:`train_suits` is
``mmreg train suits``'s entry point. The descent state of the pool is not part of the
resumable training state: a resumed run starts a fresh pool.

``mmreg train suits BIDS_DIR`` (:func:`bids_training_pairs`) takes the pairs the
participant level would register (``--fixed``, default T1w; ``--moving``, default T2w),
with the ground-truth label maps that :mod:`mmreg.bids_app.query` finds for both images
(``derivatives/ground-truth/sub-<l>/anat/sub-<l>_space-<mod>_dseg.nii.gz``); pairs lacking
either map are skipped. Every image is reoriented to RAS and resampled to ``spacing`` mm
(labels: nearest neighbour). Each subject's own pair is used, and with ``cross`` the
fixed image of each subject also meets the moving images of the others (inter-subject
pairs, shuffled; ``max_pairs`` in all). The moving image is brought onto the fixed grid
by ``prealign``: ``affine`` runs ``ants-affine`` (as in ``ants-affine+suits``; once per
pair, when first used), ``auto``/``com``/``moments``/``none`` are the cheap
pre-alignments of :func:`mmreg.imaging.preprocess.prealign`. Subjects are split into
training and validation (:func:`mmreg.training.split_items`); a pair whose two subjects
fall on different sides is not used.

Example:
    >>> import numpy as np
    >>> lab = np.zeros((12, 12), np.int32); lab[3:9, 3:9] = 1
    >>> sdm = signed_distance_maps(lab, ((0,), (1,)), scale=0.01)
    >>> sdm.shape, bool(sdm[1, 6, 6] < 0 < sdm[1, 0, 0]), bool(torch.allclose(sdm[0], -sdm[1]))
    (torch.Size([2, 12, 12]), True, True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage

from mmreg.methods.features.optimise import warp
from mmreg.methods.features.suits import (
    FAMILY,
    Descent,
    DescentSettings,
    SUITSConfig,
    SUITSNet,
    demons_update,
    densify,
    parse_spacings,
)

__all__ = [
    "PREALIGN",
    "SUITSTrainSettings",
    "SUITSTrainer",
    "TrainPair",
    "band_mask",
    "bids_training_pairs",
    "deform_pair",
    "dice_scores",
    "label_groups",
    "make_pair",
    "pairs_from_arrays",
    "random_field",
    "signed_distance_maps",
    "step_loss",
    "train_suits",
    "train_suits_pairs",
]

LOG = logging.getLogger("mmreg.train.suits")

#: Pairs up to this many voxels are kept once made; larger ones (a 2 mm brain has ~1M
#: voxels, and a pair holds 2 images, 2 label maps and 2 x K SDM channels) are remade,
#: resampling and distance transforms included, whenever a descent starts on them.
CACHE_VOXELS = 262_144
#: How ``mmreg train suits`` aligns the moving image of a pair before the descent.
PREALIGN = ("affine", "auto", "com", "moments", "none")


@dataclass
class SUITSTrainSettings:
    """Hyperparameters of ``mmreg train suits`` (each is a ``--option``)."""

    seed: int = field(default=0, metadata={"help": "random seed"})
    steps: int = field(default=3000, metadata={"help": "network updates"})
    batch: int = field(default=2, metadata={"help": "pairs (descents) per update"})
    pool: int = field(default=6, metadata={"help": "descents in flight at different stages"})
    every: int = field(default=5, metadata={"help": "grid iterations per network update"})
    lr: float = field(default=1e-3, metadata={"help": "feature networks' Adam learning rate"})
    spacings: str = field(default="20_10_7", metadata={"help": "control spacings per scale"})
    iterations: int = field(default=300, metadata={"help": "grid iterations per scale"})
    grid_lr: float = field(default=0.005, metadata={"help": "control grid Adam rate"})
    smooth: float = field(default=1.0, metadata={"help": "pull towards the smoothed field"})
    sigma: float = field(default=2.0, metadata={"help": "sigma of the smoothing"})
    fluid: float = field(default=0.0, metadata={"help": "smoothing of the step itself, 0-1"})
    ndim: int = field(default=0, metadata={"help": "2 or 3 (0: that of the images)"})
    spacing: float = field(default=2.0, metadata={"help": "training grid voxel size, mm"})
    max_labels: int = field(default=10, metadata={"help": "label channels before merging"})
    sdm_scale: float = field(default=0.01, metadata={"help": "SDM squashing tanh(s * d)"})
    band: float = field(default=0.1, metadata={"help": "loss where |SDM| is below this"})
    deform: float = field(default=2.0, metadata={"help": "random deformation, voxels"})
    prealign: str = field(
        default="affine",
        metadata={"help": "alignment before the descent", "choices": PREALIGN},
    )
    cross: bool = field(default=True, metadata={"help": "also pair images of two subjects"})
    max_pairs: int = field(default=200, metadata={"help": "most training pairs"})
    val_fraction: float = field(default=0.2, metadata={"help": "subjects held out"})
    val_iterations: int = field(default=60, metadata={"help": "validation steps per scale"})
    validate_every: int = field(default=250, metadata={"help": "steps between validations"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    max_minutes: float = field(
        default=0.0, metadata={"help": "stop after this many minutes (0: no limit)"}
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.every < 1:
            raise ValueError("steps, batch and every must be at least 1")
        if self.pool < self.batch:
            raise ValueError("pool must hold at least batch descents")
        if self.ndim not in (0, 2, 3):
            raise ValueError("ndim must be 0, 2 or 3")
        if self.max_labels < 1 or self.sdm_scale <= 0 or self.band <= 0:
            raise ValueError("max_labels, sdm_scale and band must be positive")
        if self.spacing <= 0 or self.deform < 0 or self.val_iterations < 1:
            raise ValueError("spacing must be positive, deform >= 0, val_iterations >= 1")
        if self.prealign not in PREALIGN:
            raise ValueError(f"prealign must be one of {', '.join(PREALIGN)}")
        self.descent()

    def descent(self, iterations: int | None = None) -> DescentSettings:
        return DescentSettings(
            spacings=parse_spacings(self.spacings),
            iterations=self.iterations if iterations is None else iterations,
            lr=self.grid_lr,
            smooth=self.smooth,
            sigma=self.sigma,
            fluid=self.fluid,
        )


# --- labels -> signed distance maps --------------------------------------------------------------

Groups = tuple[tuple[int, ...], ...]


def label_groups(label_maps: Sequence[np.ndarray], max_labels: int = 10) -> Groups:
    """The SDM channels: the background ``(0,)``, then one group of labels per channel.

    Every foreground label gets its own channel when there are at most ``max_labels``;
    otherwise the ``max_labels - 1`` largest (voxels over all maps; ties: smaller label
    first) do, and the others share the last channel.

    Example:
        >>> a = np.array([0, 1, 1, 1, 2, 2, 3, 4])
        >>> label_groups([a], 10), label_groups([a], 2)
        (((0,), (1,), (2,), (3,), (4,)), ((0,), (1,), (2, 3, 4)))
    """
    counts: dict[int, int] = {}
    for labels in label_maps:
        values, n = np.unique(np.asarray(labels).astype(np.int64), return_counts=True)
        for v, c in zip(values.tolist(), n.tolist(), strict=True):
            if v != 0:
                counts[v] = counts.get(v, 0) + c
    order = sorted(counts, key=lambda v: (-counts[v], v))
    if len(order) <= max_labels:
        return ((0,), *((v,) for v in sorted(order)))
    keep = sorted(order[: max_labels - 1])
    rest = tuple(sorted(order[max_labels - 1 :]))
    return ((0,), *((v,) for v in keep), rest)


def signed_distance_maps(labels: np.ndarray, groups: Groups, scale: float = 0.01) -> torch.Tensor:
    """``tanh(scale * d)`` per group, ``d`` the signed distance (voxels, positive outside).

    ``d = edt(outside) - edt(inside)``: -1 on the structure's boundary voxels, +1 just
    outside. A group absent from the map is +1 everywhere (far outside), one that fills
    it -1. Returns ``(len(groups), *labels.shape)`` float32.
    """
    labels = np.asarray(labels)
    out = np.empty((len(groups), *labels.shape), np.float32)
    for k, group in enumerate(groups):
        inside = np.isin(labels, group)
        if not inside.any():
            out[k] = 1.0
        elif inside.all():
            out[k] = -1.0
        else:
            d = ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside)
            out[k] = np.tanh(scale * d)
    return torch.from_numpy(out)


# --- pairs ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class TrainPair:
    """One training pair on the fixed grid (tensors on the CPU).

    Attributes:
        name: For logs.
        fixed, moving: ``(1, 1, *sp)`` images in ``[0, 1]``.
        fixed_labels, moving_labels: ``(1, 1, *sp)`` label maps (float, integral values).
        fixed_sdm, moving_sdm: ``(1, K, *sp)`` squashed signed distance maps.
    """

    name: str
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_labels: torch.Tensor
    moving_labels: torch.Tensor
    fixed_sdm: torch.Tensor
    moving_sdm: torch.Tensor

    @property
    def ndim(self) -> int:
        return self.fixed.dim() - 2

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.fixed.shape[2:])

    def load(self) -> TrainPair:
        """The pair itself (lazily loaded pairs compute theirs here)."""
        return self


class PairSource(Protocol):
    """Anything that makes a :class:`TrainPair` on demand."""

    name: str

    def load(self) -> TrainPair: ...


def _unit(data: np.ndarray) -> torch.Tensor:
    from mmreg.methods.features.register import unit_range

    return unit_range(np.asarray(data, np.float32))


def make_pair(
    fixed: np.ndarray,
    moving: np.ndarray,
    fixed_labels: np.ndarray,
    moving_labels: np.ndarray,
    *,
    groups: Groups,
    scale: float = 0.01,
    name: str = "pair",
) -> TrainPair:
    """A :class:`TrainPair` from arrays on one grid (images rescaled like the methods do)."""
    shapes = {np.shape(a) for a in (fixed, moving, fixed_labels, moving_labels)}
    if len(shapes) != 1:
        raise ValueError(f"{name}: images and label maps must share one grid, got {shapes}")
    if np.ndim(fixed) not in (2, 3):
        raise ValueError(f"{name}: 2D or 3D arrays are needed")

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.rint(np.asarray(a)).astype(np.float32))[None, None]

    return TrainPair(
        name=name,
        fixed=_unit(fixed),
        moving=_unit(moving),
        fixed_labels=labels(fixed_labels),
        moving_labels=labels(moving_labels),
        fixed_sdm=signed_distance_maps(np.rint(fixed_labels), groups, scale)[None],
        moving_sdm=signed_distance_maps(np.rint(moving_labels), groups, scale)[None],
    )


def pairs_from_arrays(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    max_labels: int = 10,
    sdm_scale: float = 0.01,
    names: Sequence[str] | None = None,
) -> list[TrainPair]:
    """Training pairs from ``(fixed, moving, fixed_labels, moving_labels)`` arrays.

    Each tuple shares one grid; the SDM channels (:func:`label_groups`) are common to all
    pairs.

    Example:
        >>> lab = np.zeros((16, 16), np.int32); lab[4:12, 4:12] = 1
        >>> [p] = pairs_from_arrays([(lab * 1.0, 1.0 - lab, lab, np.roll(lab, 1, 0))])
        >>> p.fixed.shape, p.fixed_sdm.shape
        (torch.Size([1, 1, 16, 16]), torch.Size([1, 2, 16, 16]))
    """
    groups = label_groups([a for item in items for a in item[2:]], max_labels)
    names = list(names) if names is not None else [f"pair-{i:03d}" for i in range(len(items))]
    return [
        make_pair(*item, groups=groups, scale=sdm_scale, name=name)
        for item, name in zip(items, names, strict=True)
    ]


def random_field(
    shape: tuple[int, ...], amplitude: float, generator: torch.Generator, spacing: int = 12
) -> torch.Tensor:
    """A smooth random displacement ``(1, ndim, *shape)`` (voxels) of largest length
    between half and all of ``amplitude`` (B-spline of random control values)."""
    ndim = len(shape)
    grid_shape = tuple(max(2, -(-(n - 1) // spacing) + 1) for n in shape)
    grid = torch.randn(1, ndim, *grid_shape, generator=generator)
    u = densify(grid, shape, spacing)
    top = float(u.norm(dim=1).max())
    if top <= 0 or amplitude <= 0:
        return torch.zeros(1, ndim, *shape)
    length = amplitude * (0.5 + 0.5 * float(torch.rand(1, generator=generator)))
    return u * (length / top)


def deform_pair(pair: TrainPair, amplitude: float, generator: torch.Generator) -> TrainPair:
    """``pair`` with its moving side (image, labels, SDMs) pulled through a random field."""
    if amplitude <= 0:
        return pair
    u = random_field(pair.shape, amplitude, generator)
    return TrainPair(
        name=pair.name,
        fixed=pair.fixed,
        moving=warp(pair.moving, u),
        fixed_labels=pair.fixed_labels,
        moving_labels=warp(pair.moving_labels, u, mode="nearest"),
        fixed_sdm=pair.fixed_sdm,
        moving_sdm=warp(pair.moving_sdm, u),
    )


# --- loss and scores -----------------------------------------------------------------------------


def band_mask(fixed_sdm: torch.Tensor, warped_sdm: torch.Tensor, band: float) -> torch.Tensor:
    """Voxels near a boundary: some channel of either map has ``|SDM| < band``;
    ``(B, 1, *sp)`` bool."""
    near = torch.minimum(fixed_sdm.abs(), warped_sdm.abs()).amin(1, keepdim=True)
    return near < band


def step_loss(
    feat_f: torch.Tensor,
    feat_w: torch.Tensor,
    sdm_f: torch.Tensor,
    sdm_w: torch.Tensor,
    band: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, baseline, D_feat)`` at one field.

    ``loss``: mean over the band voxels of ``|D_feat - D_sdm|^2`` (the squared length of
    the step difference, voxels^2); ``baseline``: the same for a zero feature step
    (``|D_sdm|^2``); ``D_feat``: the feature-driven step (with autograd when the features
    have it). Without band voxels both are 0.
    """
    d_feat = demons_update(feat_f, feat_w)
    with torch.no_grad():
        d_sdm = demons_update(sdm_f, sdm_w)
        mask = band_mask(sdm_f, sdm_w, band).to(d_feat.dtype)
        count = mask.sum()
    if float(count) == 0:
        zero = d_feat.sum() * 0.0
        return zero, zero.detach(), d_feat
    loss = ((d_feat - d_sdm).square().sum(1, keepdim=True) * mask).sum() / count
    baseline = (d_sdm.square().sum(1, keepdim=True) * mask).sum() / count
    return loss, baseline, d_feat


def dice_scores(fixed_labels: torch.Tensor, warped_labels: torch.Tensor) -> dict[int, float]:
    """Dice per foreground label of the fixed map (``(1, 1, *sp)`` maps)."""
    f = fixed_labels.round().long().flatten()
    w = warped_labels.round().long().flatten()
    out = {}
    for value in torch.unique(f).tolist():
        if value == 0:
            continue
        a, b = f == value, w == value
        out[int(value)] = float(2.0 * (a & b).sum() / (a.sum() + b.sum()).clamp(min=1))
    return out


# --- the trainer ---------------------------------------------------------------------------------


def _on(pair: TrainPair, device: torch.device) -> TrainPair:
    """``pair`` with its tensors on ``device``."""
    if pair.fixed.device == device:
        return pair
    return TrainPair(
        pair.name,
        *(
            t.to(device)
            for t in (
                pair.fixed,
                pair.moving,
                pair.fixed_labels,
                pair.moving_labels,
                pair.fixed_sdm,
                pair.moving_sdm,
            )
        ),
    )


@dataclass
class _InFlight:
    pair: TrainPair
    descent: Descent


class SUITSTrainer:
    """The pool of in-flight descents and one network update per :meth:`step`.

    Args:
        net: The two feature networks (trained in place).
        pairs: Training pairs (or sources that load them).
        settings: See :class:`SUITSTrainSettings`.
        generator: Draws the pairs and their random deformations.
        device: Where the networks and the descents run.
    """

    def __init__(
        self,
        net: SUITSNet,
        pairs: Sequence[PairSource],
        settings: SUITSTrainSettings,
        generator: torch.Generator,
        device: str = "cpu",
    ) -> None:
        if not pairs:
            raise ValueError("no training pair")
        self.net = net
        self.pairs = list(pairs)
        self.settings = settings
        self.generator = generator
        self.device = torch.device(device)
        self.optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
        self.descent_settings = settings.descent()
        self._turn = 0
        total = self.descent_settings.total
        # Staggered stages from the start: slot k begins k/pool of the way through.
        self.pool = [self._start(total * k // settings.pool) for k in range(settings.pool)]

    def _start(self, at: int = 0) -> _InFlight:
        index = int(torch.randint(len(self.pairs), (1,), generator=self.generator))
        pair = deform_pair(self.pairs[index].load(), self.settings.deform, self.generator)
        pair = _on(pair, self.device)
        descent = Descent(pair.shape, self.descent_settings, device=self.device, start=at)
        return _InFlight(pair, descent)

    def step(self) -> dict[str, float]:
        """Advance ``batch`` descents by ``every`` grid iterations; one network update."""
        s = self.settings
        losses, baselines = [], []
        self.optimiser.zero_grad(set_to_none=True)
        for _ in range(s.batch):
            slot = self._turn % len(self.pool)
            self._turn += 1
            if self.pool[slot].descent.done:
                self.pool[slot] = self._start()
            flight = self.pool[slot]
            pair, descent = flight.pair, flight.descent
            dev = self.device
            feat_f, feat_m = self.net(pair.fixed.to(dev), pair.moving.to(dev))
            with torch.no_grad():
                for _ in range(s.every - 1):
                    if descent.done:
                        break
                    u = descent.field()
                    descent.update(demons_update(feat_f, warp(feat_m, u)))
            if descent.done:
                continue
            u = descent.field()
            sdm_w = warp(pair.moving_sdm.to(dev), u)
            loss, baseline, d_feat = step_loss(
                feat_f, warp(feat_m, u), pair.fixed_sdm.to(dev), sdm_w, s.band
            )
            descent.update(d_feat.detach())
            (loss / s.batch).backward()
            losses.append(float(loss.detach()))
            baselines.append(float(baseline))
        self.optimiser.step()
        mean_loss = float(np.mean(losses)) if losses else 0.0
        mean_base = float(np.mean(baselines)) if baselines else 0.0
        return {"loss": mean_loss, "rel": mean_loss / mean_base if mean_base > 0 else 0.0}

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[PairSource]) -> dict[str, float]:
        """Two short descents per pair (``val_iterations`` per scale) with the current features.

        ``val_loss``/``val_rel``: the loss (and its ratio to a zero feature step's) at every
        ``every``-th field of a descent moved by the *label-driven* step, so the fields
        visited do not depend on the network and two validations compare alike.
        ``score``: mean label Dice after a descent moved by the feature-driven step, as
        registration runs it (``dice_before``: before it).
        """
        settings = self.settings.descent(self.settings.val_iterations)
        every, band = self.settings.every, self.settings.band
        losses, baselines, dice, before = [], [], [], []
        dev = self.device
        for source in pairs:
            pair = source.load()
            feat_f, feat_m = self.net(pair.fixed.to(dev), pair.moving.to(dev))
            sdm_f, sdm_m = pair.fixed_sdm.to(dev), pair.moving_sdm.to(dev)
            labelled = Descent(pair.shape, settings, device=dev)
            while not labelled.done:
                u = labelled.field()
                sdm_w = warp(sdm_m, u)
                if labelled.step % every == 0:
                    loss, base, _ = step_loss(feat_f, warp(feat_m, u), sdm_f, sdm_w, band)
                    losses.append(float(loss))
                    baselines.append(float(base))
                labelled.update(demons_update(sdm_f, sdm_w))
            learned = Descent(pair.shape, settings, device=dev)
            while not learned.done:
                learned.update(demons_update(feat_f, warp(feat_m, learned.field())))
            fixed_labels = pair.fixed_labels.to(dev)
            moving_labels = pair.moving_labels.to(dev)
            after = dice_scores(fixed_labels, warp(moving_labels, learned.field(), mode="nearest"))
            start = dice_scores(fixed_labels, moving_labels)
            dice.append(float(np.mean(list(after.values()))) if after else 0.0)
            before.append(float(np.mean(list(start.values()))) if start else 0.0)
        mean_loss = float(np.mean(losses)) if losses else 0.0
        mean_base = float(np.mean(baselines)) if baselines else 0.0
        return {
            "val_loss": mean_loss,
            "val_rel": mean_loss / mean_base if mean_base > 0 else 0.0,
            "dice_before": float(np.mean(before)) if before else 0.0,
            "score": float(np.mean(dice)) if dice else 0.0,
        }


def train_suits_pairs(
    train: Sequence[PairSource],
    val: Sequence[PairSource],
    *,
    out: str | Path,
    settings: SUITSTrainSettings | None = None,
    device: str = "cpu",
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Train the SUITS networks on ``train`` (validating on ``val``) and write ``out``.

    ``generator``: the sampling generator (default: :func:`mmreg.training.seed_everything`
    of ``settings.seed``). A resumable state is kept at ``<out>.state`` while training.

    Returns:
        ``out``.
    """
    from mmreg.training import fit_and_save, seed_everything

    settings = settings or SUITSTrainSettings()
    started = time.perf_counter()
    out = Path(out)
    if generator is None:
        generator = seed_everything(settings.seed)
    if not train:
        raise ValueError("no training pair")
    if not val:
        LOG.warning("no validation pair: validating on the training pairs")
        val = list(train)[: max(1, min(4, len(train)))]
    first = train[0].load()
    ndim = settings.ndim or first.ndim
    if first.ndim != ndim:
        raise ValueError(f"the pairs are {first.ndim}D but ndim={ndim} was asked for")
    config = SUITSConfig(ndim=ndim)
    net = SUITSNet(config).to(device)
    LOG.info("SUITS %dD networks: %d parameters", ndim, net.parameter_count())
    trainer = SUITSTrainer(net, train, settings, generator, device)

    fit_and_save(
        net,
        trainer.optimiser,
        lambda step: trainer.step(),
        lambda: trainer.evaluate(val),
        out=out,
        family=FAMILY,
        config=config.to_dict(),
        settings=settings,
        data={"train": [p.name for p in train], "val": [p.name for p in val]},
        score_name="dice",
        device=device,
        progress=progress,
        generator=generator,
        started=started,
        log=LOG,
        metadata=metadata,
    )
    return out


# --- BIDS pairs ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Side:
    """One labelled image of the dataset, on the training grid."""

    subject: str
    image: Any  # mmreg.imaging.image.Image
    labels: Any  # its label map (Image)


class _LazyPair:
    """A fixed and a moving :class:`_Side`: resampled, aligned and turned into SDMs on use."""

    def __init__(
        self, name: str, fixed: _Side, moving: _Side, groups: Groups, settings: SUITSTrainSettings
    ) -> None:
        self.name = name
        self.fixed, self.moving = fixed, moving
        self.groups = groups
        self.settings = settings
        self._transform: Any = None
        self._cached: TrainPair | None = None

    def transform(self) -> Any:
        """The fixed->moving pre-alignment (computed once)."""
        from mmreg.imaging.preprocess import prealign
        from mmreg.imaging.transform import Transform

        if self._transform is None:
            mode = self.settings.prealign
            fixed, moving = self.fixed.image, self.moving.image
            if mode == "affine":
                from mmreg.methods import get_method

                result = get_method("ants-affine").register(fixed, moving, seed=self.settings.seed)
                self._transform = result.transform
            else:
                self._transform = Transform.from_affine(
                    prealign(fixed, moving, mode), ndim=fixed.ndim
                )
        return self._transform

    def load(self) -> TrainPair:
        if self._cached is not None:
            return self._cached
        t = self.transform()
        grid = self.fixed.image.grid
        moving = t.apply(self.moving.image, grid)
        labels = t.apply(self.moving.labels, grid, interpolation="nearest")
        pair = make_pair(
            np.asarray(self.fixed.image.data),
            np.asarray(moving.data),
            np.asarray(self.fixed.labels.data),
            np.asarray(labels.data),
            groups=self.groups,
            scale=self.settings.sdm_scale,
            name=self.name,
        )
        if pair.fixed.numel() <= CACHE_VOXELS:
            self._cached = pair
        return pair


def _load_side(
    subject: str, image_path: str, dseg_path: str, spacing: float, ndim: int | None
) -> _Side:
    from mmreg.imaging.image import load_image, load_labels
    from mmreg.imaging.preprocess import reorient_canonical, resample_isotropic

    image = load_image(image_path, ndim=ndim)
    labels = load_labels(dseg_path, ndim=image.ndim, image=image_path)
    image = resample_isotropic(reorient_canonical(image), spacing)
    labels = resample_isotropic(reorient_canonical(labels), spacing, order=0)
    labels = labels.with_data(np.rint(np.asarray(labels.data)).astype(np.int32))
    return _Side(subject, image, labels)


def bids_training_pairs(
    records: Sequence[Mapping[str, Any]], settings: SUITSTrainSettings
) -> tuple[list[_LazyPair], list[_LazyPair], dict[str, Any]]:
    """Training and validation pairs from ``mmreg train`` pair records.

    Each record with ground-truth label maps for both images (``fixed_dseg``,
    ``moving_dseg``) gives its own pair; with ``cross``, the fixed image of each subject
    is also paired with the moving images of the other subjects (inter-subject pairs;
    at most ``max_pairs`` pairs in all, own pairs first). Subjects (with session) are
    split into training and validation with :func:`mmreg.training.split_items`; a pair
    is used only when both its subjects are on the same side.
    """
    from mmreg.errors import InputError
    from mmreg.training import split_items

    fixed_sides: dict[str, tuple[str, str]] = {}
    moving_sides: list[tuple[str, str, str, str]] = []  # subject, label, image, dseg
    skipped = 0
    for rec in records:
        subject = str(rec["subject"]) + (f"_ses-{rec['session']}" if rec.get("session") else "")
        if not rec.get("fixed_dseg") or not rec.get("moving_dseg"):
            skipped += 1
            continue
        fixed_sides.setdefault(subject, (str(rec["fixed"]), str(rec["fixed_dseg"])))
        moving_sides.append(
            (subject, str(rec.get("moving_label", "")), str(rec["moving"]), rec["moving_dseg"])
        )
    if skipped:
        LOG.warning("%d pair(s) without label maps for both images skipped", skipped)
    if not moving_sides:
        raise InputError(
            "no training pair has label maps (*_dseg) for both images; SUITS learns from "
            "labels (give --ground-truth DIR)"
        )
    spacing = settings.spacing
    ndim = settings.ndim or None
    sides_f = {s: _load_side(s, p, d, spacing, ndim) for s, (p, d) in sorted(fixed_sides.items())}
    sides_m = [(s, lab, _load_side(s, p, d, spacing, ndim)) for s, lab, p, d in moving_sides]
    groups = label_groups(
        [np.asarray(x.labels.data) for x in sides_f.values()]
        + [np.asarray(x.labels.data) for _, _, x in sides_m],
        settings.max_labels,
    )
    train_subjects, val_subjects = split_items(list(sides_f), settings.val_fraction, settings.seed)
    own: list[tuple[str, str, str, _Side, _Side]] = []
    cross: list[tuple[str, str, str, _Side, _Side]] = []
    for s_moving, label, side in sides_m:
        for s_fixed, fixed in sides_f.items():
            name = f"{s_fixed}_fixed-vs-{s_moving}_{label}"
            if s_fixed == s_moving:
                own.append((name, s_fixed, s_moving, fixed, side))
            elif settings.cross:
                cross.append((name, s_fixed, s_moving, fixed, side))
    rng = np.random.default_rng(settings.seed)
    cross = [cross[i] for i in rng.permutation(len(cross))]
    chosen = (own + cross)[: settings.max_pairs]
    train, val = [], []
    for name, s_fixed, s_moving, fixed, side in chosen:
        pair = _LazyPair(name, fixed, side, groups, settings)
        if s_fixed in train_subjects and s_moving in train_subjects:
            train.append(pair)
        elif s_fixed in val_subjects and s_moving in val_subjects:
            val.append(pair)
    if not train:
        raise InputError("no training pair left after holding out validation subjects")
    info = {
        "subjects": {"train": train_subjects, "val": val_subjects},
        "label_groups": [list(g) for g in groups],
        "pairs": {"train": len(train), "val": len(val), "own": len(own)},
    }
    return train, val, info


def train_suits(
    pairs: Sequence[Mapping[str, Any]],
    *,
    out: Path,
    settings: SUITSTrainSettings | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train suits`` entry point: BIDS pair records -> checkpoint file."""
    from mmreg.training import seed_everything

    settings = settings or SUITSTrainSettings()
    generator = seed_everything(settings.seed)
    train, val, info = bids_training_pairs(pairs, settings)
    LOG.info(
        "SUITS training on %d pair(s), validating on %d; %d SDM channels",
        len(train),
        len(val),
        len(info["label_groups"]),
    )
    bids = sorted({str(p.get("bids_dir")) for p in pairs if p.get("bids_dir")})
    return train_suits_pairs(
        train,
        val,
        out=out,
        settings=settings,
        device=device,
        progress=progress,
        metadata={"training_data": {"bids_dirs": bids, **info}},
        generator=generator,
    )
