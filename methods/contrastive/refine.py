"""``contrastive-refine``: a learned rigid correction on top of ``contrastive-salient``.

Windsor et al. (2021) refine the salient-point alignment with a small network that
reads both feature maps at the current alignment. Here, for every MR feature cell, the
DXA embedding map is sampled (bilinearly) where the current estimate puts that cell;
the regressor reads the concatenation ``[MR features, sampled DXA features, mask]`` and
predicts, per cell, a residual displacement (in DXA cells) and a confidence. The new
rigid map is the confidence-weighted least-squares rigid fit of the displaced
correspondences: a residual rigid correction, computed in closed form so that the
network is trained end-to-end on the alignment error itself. It is applied a few times
(``steps``, default 3), each time from the previous estimate.

Training regresses KNOWN perturbations (``mmreg train contrastive-refine``): each
training pair is aligned by a reference (``--reference sitk-rigid``: mutual information on
the mean of the channels, the default; ``salient``: the method's own starting point; or
alignments handed to :func:`fit_refine`, such as a phantom's true transform), each
alignment is perturbed at random (a rotation about the MR centre and a shift), and the
network learns to undo the perturbation; the loss is the mean distance (mm) between MR
cell centres mapped back with the prediction and with the reference alignment. The target
is the perturbation the trainer made, never an estimate of the misalignment: a
reference that is itself off by a few millimetres from subject to subject only adds noise
that one function of the features cannot follow, and averages out (the paper's argument).
At test time the steps start from ``contrastive-salient``.

The checkpoint (family ``contrastive-refine``) carries the encoder it was trained on
(``encoder.*`` weights, from a ``contrastive`` checkpoint) and the regressor
(``regressor.*``), so that the two always match.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from mmreg.errors import InputError
from mmreg.imaging.image import Image
from mmreg.methods.contrastive import geometry
from mmreg.methods.contrastive.data import ChannelImage
from mmreg.methods.contrastive.features import FeatureMap, encode, load_model
from mmreg.methods.contrastive.model import DualEncoder
from mmreg.methods.contrastive.register import (
    ContrastiveMethod,
    ContrastiveSettings,
    Estimate,
    estimate_salient,
    parse_settings,
)
from mmreg.methods.contrastive.train import PairImages, deterministic, read_pairs, split_subjects
from mmreg.methods.registry import register_factory
from mmreg.models import load_checkpoint, resolve_model, save_checkpoint
from mmreg.training import SEED_PROTOCOL, digest, epoch_steps, fit_epochs, state_file

__all__ = [
    "RefineMethod",
    "RefineSettings",
    "RefineTrainSettings",
    "Regressor",
    "RegressorConfig",
    "fit_refine",
    "refine_estimate",
    "rigid_fit_torch",
    "train_refine",
]

LOG = logging.getLogger("mmreg.train.contrastive-refine")

#: Alignments :func:`fit_refine` can make its own training references with.
REFERENCES = ("sitk-rigid", "salient")


@dataclass(frozen=True)
class RegressorConfig:
    """Architecture of the refinement regressor.

    Attributes:
        embed_dim: Channels of each feature map (the encoder's ``embed_dim``).
        width: Channels of the hidden 3x3 convolutions.
        depth: Hidden 3x3 convolutions.
        max_flow: Largest residual displacement per cell, in DXA cells (``tanh`` bound).
    """

    embed_dim: int = 128
    width: int = 64
    depth: int = 3
    max_flow: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegressorConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Regressor(nn.Module):
    """``[MR features, sampled DXA features, mask]`` -> per-cell displacement and confidence."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 2 * config.embed_dim + 1
        for _ in range(config.depth):
            layers += [nn.Conv2d(c_in, config.width, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = config.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 3, 1)
        # Start from "no correction, equal confidence".
        nn.init.zeros_(self.head.weight)
        assert self.head.bias is not None  # Conv2d's bias=True
        nn.init.zeros_(self.head.bias)

    def forward(
        self, mr: torch.Tensor, dxa_sampled: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(B, D, h, w)`` x2, mask ``(B, 1, h, w)`` -> flow ``(B, 2, h, w)``, logits."""
        out = self.head(self.body(torch.cat([mr, dxa_sampled, mask], dim=1)))
        flow = self.config.max_flow * torch.tanh(out[:, :2])
        return flow, out[:, 2]


# --- differentiable geometry ------------------------------------------------------------------


def rigid_fit_torch(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Batched weighted least-squares 2D rigid fit ``(B, N, 2)`` x2, ``(B, N)`` -> ``(B, 3, 3)``.

    The same closed form as :func:`mmreg.methods.contrastive.geometry.fit_rigid`.

    Example:
        >>> src = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
        >>> rigid_fit_torch(src, src + 2.0, torch.ones(1, 2))[0, :2, 2].tolist()
        [2.0, 2.0]
    """
    w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    ca = (w[..., None] * src).sum(dim=1)
    cb = (w[..., None] * dst).sum(dim=1)
    a0, b0 = src - ca[:, None], dst - cb[:, None]
    cross = (w * (a0[..., 0] * b0[..., 1] - a0[..., 1] * b0[..., 0])).sum(dim=1)
    dot = (w * (a0 * b0).sum(dim=-1)).sum(dim=1)
    angle = torch.atan2(cross, dot)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    trans = cb - (rot @ ca[..., None])[..., 0]
    out = torch.zeros(src.shape[0], 3, 3, dtype=src.dtype, device=src.device)
    out[:, :2, :2] = rot
    out[:, :2, 2] = trans
    out[:, 2, 2] = 1.0
    return out


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` on ``(B, N, 2)``."""
    return points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]


@dataclass
class _Batch:
    """Cached feature maps of several subjects, padded to common sizes (torch, one device)."""

    dxa: torch.Tensor  # (B, D, H, W), zero outside the image
    dxa_grid: torch.Tensor  # (B, 3, 3) cell -> world
    mr: torch.Tensor  # (B, D, h, w)
    mr_mask: torch.Tensor  # (B, 1, h, w)
    mr_points: torch.Tensor  # (B, h*w, 2) world centres of the MR cells

    @classmethod
    def from_maps(
        cls, dxa: Sequence[FeatureMap], mr: Sequence[FeatureMap], device: str = "cpu"
    ) -> _Batch:
        def pad(values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
            return F.pad(values, (0, shape[1] - values.shape[-1], 0, shape[0] - values.shape[-2]))

        hd = (max(m.shape[0] for m in dxa), max(m.shape[1] for m in dxa))
        hm = (max(m.shape[0] for m in mr), max(m.shape[1] for m in mr))
        d = torch.stack(
            [pad(m.values * torch.from_numpy(m.mask.astype(np.float32)), hd) for m in dxa]
        )
        m_values = torch.stack([pad(m.values, hm) for m in mr])
        m_mask = torch.stack(
            [pad(torch.from_numpy(m.mask.astype(np.float32))[None], hm) for m in mr]
        )
        ij = np.indices(hm, dtype=np.float64).reshape(2, -1).T
        points = torch.from_numpy(np.stack([m.world(ij) for m in mr])).float()
        grids = torch.from_numpy(np.stack([m.grid for m in dxa])).float()
        return cls(
            d.to(device),
            grids.to(device),
            m_values.to(device),
            m_mask.to(device),
            points.to(device),
        )

    def subset(self, index: list[int]) -> _Batch:
        return _Batch(
            self.dxa[index],
            self.dxa_grid[index],
            self.mr[index],
            self.mr_mask[index],
            self.mr_points[index],
        )


def _step(regressor: Regressor, batch: _Batch, dxa_to_mr: torch.Tensor) -> torch.Tensor:
    """One refinement step: the new DXA->MR maps ``(B, 3, 3)`` from the current ones."""
    b, _, h, w = batch.mr.shape
    mr_to_dxa = torch.linalg.inv(dxa_to_mr)
    x = _apply(mr_to_dxa, batch.mr_points)  # (B, N, 2) DXA world of each MR cell
    inv_grid = torch.linalg.inv(batch.dxa_grid)
    cells = _apply(inv_grid, x)  # fractional DXA cells (row, col)
    hd, wd = batch.dxa.shape[-2:]
    norm = torch.stack(
        [cells[..., 1] / max(wd - 1, 1) * 2 - 1, cells[..., 0] / max(hd - 1, 1) * 2 - 1], dim=-1
    )
    sampled = F.grid_sample(
        batch.dxa, norm.view(b, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    inside = (norm.abs() <= 1).all(dim=-1).view(b, 1, h, w).to(batch.mr.dtype)
    mask = batch.mr_mask * inside
    flow, logits = regressor(batch.mr, sampled, mask)
    flow = flow.permute(0, 2, 3, 1).reshape(b, h * w, 2)
    # Displaced DXA correspondences, back in world millimetres.
    moved = _apply(batch.dxa_grid, cells + flow)
    weights = torch.softmax(
        logits.reshape(b, -1).masked_fill(mask.reshape(b, -1) <= 0, -1e9), dim=1
    )
    weights = weights * mask.reshape(b, -1)
    return rigid_fit_torch(moved, batch.mr_points, weights)


def refine_estimate(
    regressor: Regressor, batch: _Batch, dxa_to_mr: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    """Apply :func:`_step` ``steps`` times; return every intermediate estimate."""
    out = [dxa_to_mr]
    for _ in range(steps):
        out.append(_step(regressor, batch, out[-1]))
    return out


def _alignment_error(batch: _Batch, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean distance (mm) over valid MR cells between their DXA images under two maps."""
    a = _apply(torch.linalg.inv(estimate), batch.mr_points)
    b = _apply(torch.linalg.inv(target), batch.mr_points)
    m = batch.mr_mask.reshape(a.shape[0], -1)
    dist = torch.linalg.norm(a - b, dim=-1)
    return ((dist * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)).mean()


def _perturb(
    target: torch.Tensor,
    batch: _Batch,
    max_angle: float,
    max_shift: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random rigid perturbations (about the MR field-of-view centre) applied after ``target``."""
    b = target.shape[0]
    angle = torch.deg2rad((2 * torch.rand(b, generator=generator) - 1) * max_angle)
    shift = (2 * torch.rand(b, 2, generator=generator) - 1) * max_shift
    m = batch.mr_mask.reshape(b, -1)
    centre = (batch.mr_points.cpu() * m.cpu()[..., None]).sum(1) / m.cpu().sum(1, keepdim=True)
    cos, sin = torch.cos(angle), torch.sin(angle)
    pert = torch.zeros(b, 3, 3)
    pert[:, 0, 0], pert[:, 0, 1], pert[:, 1, 0], pert[:, 1, 1] = cos, -sin, sin, cos
    rotated = (pert[:, :2, :2] @ centre[..., None])[..., 0]
    pert[:, :2, 2] = centre - rotated + shift
    pert[:, 2, 2] = 1.0
    return pert.to(target.device) @ target


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineTrainSettings:
    """Settings of ``mmreg train contrastive-refine`` (each field is a ``--option``)."""

    encoder: str = field(
        default="",
        metadata={"help": "contrastive checkpoint whose encoder to use (default: shipped)"},
    )
    fixed_modality: str = field(
        default="dxa",
        metadata={
            "help": "which image of each training pair is the DXA",
            "choices": ("dxa", "mr"),
        },
    )
    reference: str = field(
        default="sitk-rigid",
        metadata={
            "help": "alignment the perturbations are made around: sitk-rigid (mutual "
            "information on the channel mean) or salient (contrastive-salient itself)",
            "choices": REFERENCES,
        },
    )
    epochs: int = field(default=300, metadata={"help": "passes over the training subjects"})
    batch_size: int = field(default=16, metadata={"help": "subjects per batch"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    max_angle_deg: float = field(
        default=4.0, metadata={"help": "largest random rotation of the perturbations"}
    )
    max_shift_mm: float = field(
        default=40.0, metadata={"help": "largest random shift of the perturbations (per axis)"}
    )
    steps: int = field(default=2, metadata={"help": "refinement steps unrolled in training"})
    width: int = field(default=64, metadata={"help": "regressor channels"})
    depth: int = field(default=3, metadata={"help": "regressor 3x3 convolutions"})
    val_fraction: float = field(default=0.15, metadata={"help": "subjects held out"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, split, perturbations"})

    def __post_init__(self) -> None:
        if self.fixed_modality not in ("dxa", "mr"):
            raise ValueError("fixed_modality must be dxa or mr")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.steps < 1:
            raise ValueError("epochs, batch_size and steps must be positive")


def _sitk_reference(dxa: ChannelImage, mr: ChannelImage) -> npt.NDArray[np.float64]:
    """DXA->MR world map (3x3) by ``sitk-rigid`` on the mean of the normalised channels."""
    from mmreg.imaging.planar import channel_mean
    from mmreg.methods import get_method

    fixed = Image(channel_mean(np.moveaxis(dxa.data, 0, -1)), dxa.affine)
    moving = Image(channel_mean(np.moveaxis(mr.data, 0, -1)), mr.affine)
    m = get_method("sitk-rigid").register(fixed, moving, seed=0).transform.as_affine()
    # Fixed (DXA) world -> moving (MR) world, in the plane.
    return geometry.rigid(geometry.angle_of(m[np.ix_([0, 1, 3], [0, 1, 3])]), m[[0, 1], 3])


def _reference_cohort(
    model: DualEncoder,
    pairs: Sequence[PairImages],
    reference: str,
    given: Sequence[npt.NDArray[np.float64] | None] | None,
    progress: bool,
) -> tuple[list[FeatureMap], list[FeatureMap], list[npt.NDArray[np.float64] | None]]:
    """Feature maps of every pair and its reference alignment (None where it failed)."""
    from tqdm.auto import tqdm

    from mmreg.methods.contrastive.features import prepare

    salient = ContrastiveSettings(fixed_modality="dxa")
    dxa_maps, mr_maps, refs = [], [], []
    desc = "reference alignments" if given is None else "feature maps"
    for k, p in enumerate(tqdm(pairs, desc=desc, disable=not progress)):
        dxa, mr = prepare(p.dxa), prepare(p.mr)
        fd = encode(model, dxa, "dxa")
        fm = encode(model, mr, "mr")
        dxa_maps.append(fd)
        mr_maps.append(fm)
        if given is not None:
            refs.append(None if given[k] is None else np.asarray(given[k], dtype=np.float64))
        elif reference == "salient":
            est = estimate_salient(model, dxa, mr, salient, dxa_map=fd, mr_map=fm)
            refs.append(est.matrix if est.extras.get("fallback") is None else None)
        else:
            try:
                refs.append(_sitk_reference(dxa, mr))
            except Exception as exc:
                LOG.warning("%s: no %s reference (%s); left out", p.subject, reference, exc)
                refs.append(None)
    return dxa_maps, mr_maps, refs


def fit_refine(
    model: DualEncoder,
    pairs: Sequence[PairImages],
    settings: RefineTrainSettings,
    *,
    device: str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    references: Sequence[npt.NDArray[np.float64] | None] | None = None,
    state_path: Path | None = None,
) -> tuple[Regressor, dict[str, Any]]:
    """Train the regressor to undo known perturbations of reference alignments.

    Args:
        model: The dual encoder whose features the regressor reads.
        pairs: Training subjects.
        settings: Hyperparameters; ``settings.reference`` makes the references unless
            ``references`` gives them.
        device: ``cpu`` or ``cuda``.
        progress: Show progress bars.
        on_epoch: Called with each epoch's record.
        references: Per pair, a DXA->MR world map (3x3) to perturb around, e.g. the true
            transform of a phantom (None: leave that pair out).
        state_path: Resumable training state (see :func:`mmreg.training.fit`; ``None``:
            none is kept).

    Returns:
        The best-validation regressor (eval mode, CPU) and a training summary.
    """
    if len(pairs) < 2:
        raise InputError("refinement training needs at least 2 subjects")
    start = time.perf_counter()
    if references is not None and len(references) != len(pairs):
        raise ValueError("references must give one alignment per pair")
    dxa_maps, mr_maps, refs = _reference_cohort(
        model, pairs, settings.reference, references, progress
    )
    kept = [k for k, r in enumerate(refs) if r is not None]
    kept_refs = [r for r in refs if r is not None]
    if len(kept) < 2:
        raise InputError("fewer than 2 training pairs have a reference alignment")
    maps = _Batch.from_maps([dxa_maps[k] for k in kept], [mr_maps[k] for k in kept], device)
    targets = torch.from_numpy(np.stack(kept_refs)).float().to(device)
    train_idx, val_idx = split_subjects(len(kept), settings.val_fraction, settings.seed)
    config = RegressorConfig(
        embed_dim=model.config.embed_dim, width=settings.width, depth=settings.depth
    )
    with deterministic(settings.seed) as generator:
        regressor = Regressor(config).to(device)
        optimiser = torch.optim.Adam(regressor.parameters(), lr=settings.learning_rate)
        total = settings.epochs * epoch_steps(len(train_idx), settings.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
        # Fixed validation perturbations (their own seed: the training stream is untouched),
        # so epochs are compared on the same problems.
        val_gen = torch.Generator().manual_seed(settings.seed + 1)
        eval_sets = val_idx or train_idx
        val_batch = maps.subset(eval_sets)
        val_start = [
            _perturb(
                targets[eval_sets],
                val_batch,
                settings.max_angle_deg,
                settings.max_shift_mm,
                val_gen,
            )
            for _ in range(4)
        ]

        def train_step(step: int, batch: list[int]) -> dict[str, float]:
            idx = [train_idx[k] for k in batch]
            sub = maps.subset(idx)
            start_est = _perturb(
                targets[idx], sub, settings.max_angle_deg, settings.max_shift_mm, generator
            )
            chain = refine_estimate(regressor, sub, start_est, settings.steps)
            # Supervise every step (later steps weigh more): each must move towards the target.
            loss = sum(
                (k / settings.steps) * _alignment_error(sub, est, targets[idx])
                for k, est in enumerate(chain[1:], start=1)
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimiser.step()
            return {"error_mm": float(_alignment_error(sub, chain[-1], targets[idx]).detach())}

        def validate() -> dict[str, float]:
            errors = [
                float(
                    _alignment_error(
                        val_batch,
                        refine_estimate(regressor, val_batch, s, settings.steps)[-1],
                        targets[eval_sets],
                    )
                )
                for s in val_start
            ]
            before = [float(_alignment_error(val_batch, s, targets[eval_sets])) for s in val_start]
            return {
                "val_error_mm": float(np.mean(errors)),
                "val_start_error_mm": float(np.mean(before)),
            }

        subjects = [pairs[k].subject for k in kept]
        best = fit_epochs(
            regressor,
            optimiser,
            train_step,
            validate,
            epochs=settings.epochs,
            items=len(train_idx),
            batch_size=settings.batch_size,
            generator=generator,
            score=lambda record: -record["val_error_mm"],
            scheduler=schedule,
            progress=progress,
            state_path=state_path,
            fingerprint={
                "settings": asdict(settings),
                "encoder": digest(model.state_dict()),
                "reference": "given" if references is not None else settings.reference,
                "targets": digest(targets),
                "subjects": subjects,
                "val": [subjects[i] for i in val_idx],
                "device": device,
            },
            log=LOG,
            desc="contrastive-refine",
            on_epoch=on_epoch,
        )
    best.restore()
    best.started = start  # the wall time includes the reference alignments
    summary = best.summary(
        device=device,
        settings=settings,
        n_subjects=len(pairs),
        reference="given" if references is not None else settings.reference,
        n_aligned=len(kept),
        n_train=len(train_idx),
        n_val=len(val_idx),
        best_val_error_mm=-best.score,
        seed=settings.seed,
        seed_protocol=SEED_PROTOCOL,
    )
    return regressor, summary


def save_refine(
    out: Path,
    model: DualEncoder,
    regressor: Regressor,
    summary: Mapping[str, Any],
    encoder_sha256: str,
) -> str:
    """Write a ``contrastive-refine`` checkpoint: encoder + regressor + training summary."""
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state.update({f"regressor.{k}": v for k, v in regressor.state_dict().items()})
    return save_checkpoint(
        out,
        method="contrastive-refine",
        config={"model": model.config.to_dict(), "regressor": regressor.config.to_dict()},
        state_dict=state,
        metadata={"training": dict(summary), "encoder_sha256": encoder_sha256},
    )


def train_refine(
    pairs: Sequence[Mapping[str, Any]],
    *,
    out: Path,
    settings: RefineTrainSettings,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """``mmreg train contrastive-refine``: align by salient points, learn the correction.

    A resumable state is kept next to ``out`` while training
    (:func:`mmreg.training.state_file`; removed once the checkpoint exists).

    Args:
        pairs: ``mmreg train`` pair records.
        out: The ``.pt`` file to write (with a ``.sha256`` sidecar).
        settings: :class:`RefineTrainSettings` (``encoder``: the contrastive checkpoint).
        device: ``cpu`` or ``cuda``.
        progress: Show progress bars.

    Returns:
        ``out``.
    """
    model, checkpoint = load_model(settings.encoder or None, family="contrastive")
    images = read_pairs(pairs, fixed_modality=settings.fixed_modality)
    state = state_file(out)
    regressor, summary = fit_refine(
        model, images, settings, device=device, progress=progress, state_path=state
    )
    save_refine(Path(out), model, regressor, summary, checkpoint.sha256)
    state.unlink(missing_ok=True)
    return Path(out)


# --- the method -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineSettings(ContrastiveSettings):
    """``contrastive-refine`` parameters: the salient ones plus ``steps`` (refinement steps)."""

    steps: int = 3


_REGRESSORS: dict[tuple[str, str], Regressor] = {}


def load_regressor(path: str | Path | None, device: str = "cpu") -> Regressor:
    """The regressor of a ``contrastive-refine`` checkpoint (cached per file and device)."""
    resolved = resolve_model("contrastive-refine", path)
    checkpoint = load_checkpoint(resolved, method="contrastive-refine")
    key = (checkpoint.sha256, device)
    if key not in _REGRESSORS:
        net = Regressor(RegressorConfig.from_dict(checkpoint.config["regressor"]))
        state = {
            k[len("regressor.") :]: v
            for k, v in checkpoint.state_dict.items()
            if k.startswith("regressor.")
        }
        net.load_state_dict(state)
        _REGRESSORS[key] = net.to(device).eval()
    return _REGRESSORS[key]


class RefineMethod(ContrastiveMethod):
    """``contrastive-refine``: salient-point alignment, then ``steps`` learned corrections."""

    family = "contrastive-refine"
    settings: RefineSettings

    def __init__(
        self, *, model: str | Path | None = None, params: dict[str, str] | None = None
    ) -> None:
        self.name = "contrastive-refine"
        self.model_path = model
        self.settings = parse_settings(RefineSettings, params)

    def encoder(self, device: str) -> DualEncoder:
        return load_model(self.model_path, family=self.family, prefix="encoder.", device=device)[0]

    @torch.no_grad()
    def estimate(
        self, model: DualEncoder, dxa: ChannelImage, mr: ChannelImage, seed: int, device: str
    ) -> Estimate:
        regressor = load_regressor(self.model_path, device)
        fd = encode(model, dxa, "dxa", device=device)
        fm = encode(model, mr, "mr", device=device)
        start = estimate_salient(
            model, dxa, mr, self.settings, seed=seed, device=device, dxa_map=fd, mr_map=fm
        )
        batch = _Batch.from_maps([fd], [fm], device)
        initial = torch.from_numpy(start.matrix).float()[None].to(device)
        chain = refine_estimate(regressor, batch, initial, self.settings.steps)
        matrix = chain[-1][0].double().cpu().numpy()
        # Re-orthonormalise (float32 round-off) before handing the map out.
        matrix = geometry.rigid(geometry.angle_of(matrix), matrix[:2, 2])
        corrections = []
        for before, after in itertools.pairwise(chain):
            delta = after[0].double().cpu().numpy() @ np.linalg.inv(
                before[0].double().cpu().numpy()
            )
            corrections.append(
                {
                    "rotation_deg": round(geometry.angle_of(delta), 4),
                    "mean_shift_mm": round(float(_alignment_error(batch, before, after).cpu()), 3),
                }
            )
        extras = {
            **start.extras,
            "salient_similarity": start.similarity,
            "refine_steps": corrections,
        }
        # Keypoints: the salient inlier matches the refinement started from.
        return Estimate(matrix, start.similarity, extras, start.dxa_points, start.mr_points)


def _make_refine(
    model: str | Path | None = None, params: dict[str, str] | None = None
) -> RefineMethod:
    return RefineMethod(model=model, params=params)


register_factory(
    "contrastive-refine", _make_refine, replace=True, model_family="contrastive-refine"
)
