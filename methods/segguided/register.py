"""``segguided``: register two images through their predicted segmentations.

How one pair is registered (weights from ``--model segguided=PATH``; nothing is shipped,
since the method learns the user's own anatomy and labels):

1. The moving image is resampled onto the fixed image's grid through ``initial`` (the
   affine step of a chain, ``ants-rigid+segguided``), then both onto the fixed image's
   working grid (the checkpoint's shape and spacing, centred on the field of view).
2. The segmenter of each modality (S_S for the labelled one, S_T for the other, as
   recorded at training) turns each image into class probabilities.
3. The registration U-Net maps both probability maps to a displacement field;
   ``refine`` Adam steps then raise the soft Dice of the two maps further (0: the
   network alone), with a diffusion penalty ``lambda_reg``.
4. Folding guard, ``mind-io``'s (:func:`~mmreg.methods.features.register.fold_guard`):
   smoothing, then shrinking, while more than ``max_folding`` percent of the voxels fold.

The result is ``x -> initial(x + u(x))``; extras hold the folding percentage and the label
groups of the classes. Each image's predicted segmentation (on its own grid) is
returned in ``RegistrationResult.label_maps`` and written by the participant level as
``..._space-<mod>_desc-segguided_dseg.nii.gz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod, RegistrationResult
from mmreg.methods.registry import register_factory, settings_from_params
from mmreg.methods.segguided.grid import (
    field_to_transform,
    labels_from_probabilities,
    onto,
    unit_tensor,
    working_grid,
)
from mmreg.methods.segguided.model import FAMILY, SegGuidedNets, load_segguided

__all__ = ["SegGuidedMethod", "SegGuidedSettings", "predict_field", "probabilities"]


@dataclass(frozen=True)
class SegGuidedSettings:
    """Parameters of ``segguided`` (``segguided:key=value``).

    Attributes:
        refine: Adam steps on the soft Dice after the network (0: the network alone).
        lr: Their learning rate (voxels).
        lambda_reg: Their diffusion weight.
        mind: Weight of a MIND-SSC term (mean squared descriptor difference) next to the
            Dice in the refinement (0: segmentations only, as the paper); for pairs where
            local self-similarity also matches, it helps where the segmentations are weak.
        max_folding: Percent of folding voxels the guard allows.
    """

    refine: int = 150
    lr: float = 0.5
    lambda_reg: float = 0.25
    mind: float = 0.0
    max_folding: float = 0.5

    def __post_init__(self) -> None:
        if self.refine < 0 or not self.lr > 0 or self.lambda_reg < 0 or self.mind < 0:
            raise ValueError("refine and lambda_reg must not be negative, lr must be positive")
        if not 0 <= self.max_folding <= 100:
            raise ValueError("max_folding must be within 0-100")


def probabilities(nets: SegGuidedNets, data: np.ndarray, *, fixed_side: bool) -> torch.Tensor:
    """Class probabilities ``(1, K, *shape)`` of an image on its working grid."""
    labelled = (nets.config.labelled_side == "fixed") == fixed_side
    device = next(nets.parameters()).device
    with torch.no_grad():
        return torch.softmax(nets.segmenter(labelled)(unit_tensor(data).to(device)), dim=1)


def predict_field(
    net: torch.nn.Module, p_fixed: torch.Tensor, p_moving: torch.Tensor
) -> torch.Tensor:
    """The network's voxel displacement ``(1, ndim, *shape)`` from fixed to moving."""
    with torch.no_grad():
        return net(torch.cat([p_fixed, p_moving], dim=1))


def _refine(
    u: torch.Tensor,
    p_fixed: torch.Tensor,
    p_moving: torch.Tensor,
    s: SegGuidedSettings,
    seed: int,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    from mmreg.methods.features.optimise import diffusion, warp
    from mmreg.methods.segguided.losses import soft_dice

    torch.manual_seed(seed)
    field = u.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([field], lr=s.lr)
    for _ in range(s.refine):
        loss = 1 - soft_dice(warp(p_moving, field), p_fixed) + s.lambda_reg * diffusion(field)
        if features is not None:
            f_fixed, f_moving = features
            # x10: MIND differences are ~0.03 where 1 - Dice is ~0.3; mind=1 weighs both alike.
            loss = loss + s.mind * (warp(f_moving, field) - f_fixed).pow(2).mean() * 10.0
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return field.detach()


class SegGuidedMethod(BaseMethod):
    """See the module docstring."""

    name = "segguided"
    deformable = True
    #: Segmentations of the last :meth:`register` call, by side (``fixed``, ``moving``).
    label_maps: dict[str, Image]

    def __init__(self, nets: SegGuidedNets, settings: SegGuidedSettings) -> None:
        self.nets = nets
        self.settings = settings

    def _label_map(self, prob: torch.Tensor, grid: Any, image: Image) -> Image:
        """Probabilities on a working ``grid`` as a label map on ``image``'s own grid."""
        # Class k is written as the first ground-truth label of its group (class 0: 0).
        groups = self.nets.config.groups
        lut = np.asarray([g[0] if k else 0 for k, g in enumerate(groups)], np.int32)
        classes = lut[labels_from_probabilities(prob).astype(np.int64)]
        return onto(Image(classes, grid.affine), image.grid, labels=True)

    def _run(
        self,
        fixed: Image,
        moving: Image,
        *,
        initial: Transform | None,
        seed: int,
        device: str,
        threads: int,
    ) -> tuple[Transform, dict[str, Any]]:
        from mmreg.methods.features.register import fold_guard

        config = self.nets.config
        if fixed.ndim != config.ndim:
            raise ValueError(f"the segguided model is {config.ndim}D, the images {fixed.ndim}D")
        start = initial if initial is not None else Transform.identity(fixed.ndim)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            grid = working_grid(fixed.grid, config.shape, config.spacing)
            resampled = start.apply(moving, grid)
            fixed_w = onto(fixed, grid).data
            p_f = probabilities(self.nets, fixed_w, fixed_side=True)
            p_m = probabilities(self.nets, resampled.data, fixed_side=False)
            u = predict_field(self.nets.reg, p_f, p_m)
            if self.settings.refine:
                features = None
                if self.settings.mind > 0:
                    from mmreg.methods.features.mind import mind_ssc

                    features = (
                        mind_ssc(unit_tensor(fixed_w)),
                        mind_ssc(unit_tensor(resampled.data)),
                    )
                u = _refine(u, p_f, p_m, self.settings, seed, features)
            u, passes, folding = fold_guard(u, self.settings.max_folding)
            # The moving image is also segmented on its own working grid, for its derivative.
            own = working_grid(moving.grid, config.shape, config.spacing)
            p_own = probabilities(self.nets, onto(moving, own).data, fixed_side=False)
            self.label_maps = {
                # The fixed image's working grid is the one registered on: reuse p_f.
                "fixed": self._label_map(p_f, grid, fixed),
                "moving": self._label_map(p_own, own, moving),
            }
        finally:
            torch.set_num_threads(previous)
        extras = {
            "neg_jacobian_pct": round(folding, 4),
            "guard_smoothing_passes": passes,
            "max_displacement_vox": round(float(u.abs().max()), 3),
            "labelled_side": config.labelled_side,
            "label_groups": [list(g) for g in config.groups],
        }
        return field_to_transform(u, grid).then(start), extras

    def register(self, fixed: Image, moving: Image, **kwargs: Any) -> RegistrationResult:
        self.label_maps = {}
        result = super().register(fixed, moving, **kwargs)
        result.label_maps = dict(self.label_maps)
        return result


def make_segguided(
    params: Mapping[str, str] | None = None, *, model: str | None = None
) -> SegGuidedMethod:
    """``segguided[:key=value...]`` with the weights ``model`` (``--model segguided=PATH``)."""
    settings = settings_from_params("segguided", SegGuidedSettings(), params)
    return SegGuidedMethod(load_segguided(model), settings)


register_factory("segguided", make_segguided, replace=True, model_family=FAMILY)
