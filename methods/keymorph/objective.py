"""What KeyMorph training minimises, and the validation score that picks the checkpoint.

The loss terms of a :class:`~mmreg.methods.keymorph.views.Batch` (:func:`loss_terms`),
built on the primitives of :mod:`mmreg.methods.keymorph.losses`:

* ``consistency``: the two views' keypoints, mapped back to the subject's world, must
  coincide (same-subject pairs, also across contrasts);
* ``anchor``: keypoints stay near their subject's anchors (its weight decays,
  :func:`anchor_weight`), which keeps them spread over the anatomy;
* ``dice`` (supervised) / ``mse`` (unsupervised): the labels / image of view b warped
  onto view a by the transform fitted to the keypoints (least-squares affine, or a
  thin-plate spline with ``lambda`` drawn log-uniformly), against view a's.

:func:`validation_scores`: the error (mm, mean over anchor points) of the affine fitted
to the keypoints of fixed random view pairs of held-out subjects.

Example:
    >>> from mmreg.methods.keymorph.train import KeyMorphTrainSettings
    >>> settings = KeyMorphTrainSettings()
    >>> anchor_weight(0, 100, settings), round(anchor_weight(99, 100, settings), 3)
    (1.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmreg.methods.keymorph.augment import View
from mmreg.methods.keymorph.data import Source
from mmreg.methods.keymorph.losses import (
    keypoint_distance,
    mse_loss,
    soft_dice_loss,
    warp_volume,
)
from mmreg.methods.keymorph.model import KeypointDetector
from mmreg.methods.keymorph.solvers import fit_affine, fit_tps
from mmreg.methods.keymorph.views import Batch, draw_view, render_source

if TYPE_CHECKING:  # the settings live with the loop, which imports this module
    from mmreg.methods.keymorph.train import KeyMorphTrainSettings

__all__ = ["anchor_weight", "loss_terms", "total_loss", "validation_scores"]


def _normalized(points: torch.Tensor, size: int) -> torch.Tensor:
    """Grid voxel coordinates -> ``[-1, 1]`` (the TPS lambda's units)."""
    return 2.0 * points / (size - 1) - 1.0


def _grid_normalized(size: int, ndim: int, device: torch.device) -> torch.Tensor:
    axes = [torch.linspace(-1.0, 1.0, size, device=device)] * ndim
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, ndim)


def _world(views: Sequence[View], kp: torch.Tensor) -> torch.Tensor:
    return torch.stack([v.to_world(k) for v, k in zip(views, kp, strict=True)])


def fit_warp_coords(
    kp_a: torch.Tensor,
    kp_b: torch.Tensor,
    rng: np.random.Generator,
    settings: KeyMorphTrainSettings,
) -> torch.Tensor:
    """Grid coordinates (voxels of view b) of every voxel of view a, from the keypoints."""
    size, ndim = settings.input_size, kp_a.shape[-1]
    a = _normalized(kp_a, size)
    b = _normalized(kp_b, size)
    grid = _grid_normalized(size, ndim, a.device).expand(a.shape[0], -1, -1)
    kind = settings.fit if settings.fit != "mixed" else ("affine", "tps")[int(rng.integers(2))]
    if kind == "affine":
        m = fit_affine(a, b, ridge=1e-3)
        mapped = grid @ m[:, :ndim, :ndim].transpose(1, 2) + m[:, None, :ndim, ndim]
    else:
        lo, hi = math.log(settings.lambda_min), math.log(settings.lambda_max)
        lam = torch.exp(torch.as_tensor(rng.uniform(lo, hi, a.shape[0])))
        mapped = fit_tps(a, b, lam)(grid).float()
    voxels = (mapped + 1.0) * (size - 1) / 2.0
    return voxels.reshape(a.shape[0], *([size] * ndim), ndim)


def loss_terms(
    model: KeypointDetector,
    batch: Batch,
    anchors: torch.Tensor,
    settings: KeyMorphTrainSettings,
) -> dict[str, torch.Tensor]:
    """Run the detector on a batch and return the loss terms.

    Args:
        model: The detector being trained.
        batch: One step's views.
        anchors: ``(n_sources, N, d)`` anchors of the training sources (world mm).
        settings: The fit kind and TPS ``lambda`` range of the image/label losses.
    """
    device = anchors.device
    b = len(batch.views_a)
    x = batch.x.to(device)
    kp = model(x)
    kp_a, kp_b = kp[:b], kp[b:]
    wa = _world(batch.views_a, kp_a)
    wb = _world(batch.views_b, kp_b)
    same = torch.tensor(
        [i == j for i, j in zip(batch.subjects_a, batch.subjects_b, strict=True)], device=device
    )
    terms: dict[str, torch.Tensor] = {}
    if same.any():
        terms["consistency"] = keypoint_distance(wa[same], wb[same])
    else:
        terms["consistency"] = kp.sum() * 0.0
    anchors_a = anchors[batch.subjects_a].to(wa)
    anchors_b = anchors[batch.subjects_b].to(wb)
    terms["anchor"] = 0.5 * (keypoint_distance(wa, anchors_a) + keypoint_distance(wb, anchors_b))
    if batch.mode in ("dice", "mse"):
        rng = np.random.default_rng(batch.fit_seed)
        coords = fit_warp_coords(kp_a, kp_b, rng, settings)
        if batch.mode == "dice":
            assert batch.labels_a is not None and batch.labels_b is not None
            warped = warp_volume(batch.labels_b.to(device), coords)
            terms["dice"] = soft_dice_loss(warped, batch.labels_a.to(device))
        else:
            xa = x[:b]
            warped = warp_volume(x[b:], coords)
            terms["mse"] = mse_loss(warped, xa, (xa > 0.05) | (warped > 0.05))
    return terms


def anchor_weight(step: int, total: int, settings: KeyMorphTrainSettings) -> float:
    """The anchor loss's weight at ``step`` (0-based) of ``total``: a cosine decay from
    ``anchor_weight`` to ``anchor_weight * anchor_final``."""
    frac = step / max(1, total - 1)
    final = settings.anchor_final
    return settings.anchor_weight * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac)))


def total_loss(
    terms: dict[str, torch.Tensor], anchor_w: float, settings: KeyMorphTrainSettings
) -> torch.Tensor:
    """The weighted sum of the loss terms."""
    loss = settings.consistency_weight * terms["consistency"] + anchor_w * terms["anchor"]
    if "dice" in terms:
        loss = loss + settings.dice_weight * terms["dice"]
    if "mse" in terms:
        loss = loss + settings.mse_weight * terms["mse"]
    return loss


@torch.no_grad()
def validation_scores(
    model: KeypointDetector,
    sources: Sequence[Source],
    settings: KeyMorphTrainSettings,
    device: torch.device,
) -> dict[str, float]:
    """Affine-fit errors (mm, mean over anchor points) on fixed random view pairs.

    ``val_affine_error_mm``: an upright view against a view rotated by up to
    ``large_rotation_deg`` (the pose after the test-time rotation search);
    ``val_upright_error_mm``: two near-upright views (where test-time refinement
    brings the images); ``val_score_mm``: their mean, which selects the checkpoint
    (``score``, its negative: the engine keeps the highest).
    """
    ndim = sources[0].ndim
    errors: dict[str, list[float]] = {"full": [], "upright": []}
    consist = []
    for k, src in enumerate(sources):
        # Fixed per subject: every validation sees the same views.
        rng = np.random.default_rng([settings.seed, 7919, k])
        for _ in range(settings.val_pairs):
            ma = int(rng.integers(len(src.images)))
            mb = int(rng.integers(len(src.images)))
            views = [
                draw_view(src, rng, settings, rotation="small"),
                draw_view(src, rng, settings, rotation="large"),
                draw_view(src, rng, settings, rotation="small"),
            ]
            xs = [
                render_source(src, m, v, rng, settings, settings.augment)
                for m, v in zip((ma, mb, mb), views, strict=True)
            ]
            kp = model(torch.stack(xs)[:, None].to(device))
            world = [v.to_world(p) for v, p in zip(views, kp, strict=True)]
            consist.append(float((world[0] - world[1]).norm(dim=-1).mean()))
            pts = torch.as_tensor(src.anchors, dtype=torch.float64, device=kp.device)
            for name, other in (("full", world[1]), ("upright", world[2])):
                m = fit_affine(world[0][None].double(), other[None].double())[0]
                mapped = pts @ m[:ndim, :ndim].T + m[:ndim, ndim]
                errors[name].append(float((mapped - pts).norm(dim=-1).mean()))
    full, upright = float(np.mean(errors["full"])), float(np.mean(errors["upright"]))
    score = 0.5 * (full + upright)
    return {
        "val_affine_error_mm": full,
        "val_affine_error_median_mm": float(np.median(errors["full"])),
        "val_upright_error_mm": upright,
        "val_keypoint_error_mm": float(np.mean(consist)),
        "val_score_mm": score,
        "score": -score,
    }
