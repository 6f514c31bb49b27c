"""Anchors: the points that keep pretraining keypoints spread over the anatomy.

Self-supervised keypoints only have to follow the warp, which a single point does
too; each keypoint is therefore also pulled towards an *anchor*, a fixed point of
its subject's world. By preference (see :func:`mmreg.methods.keymorph.data.prepare_source`):

* ``template-landmarks``: :func:`template_points` (spread over the MNI brain) mapped
  into the subject by an affine fitted to its named landmarks (:func:`landmark_anchors`);
* ``label-kmeans``: k-means centres of the labelled anatomy;
* ``initial-model``: the ``--init`` model's keypoints on the upright image
  (:func:`model_anchors`: fine-tuning keeps each keypoint's identity);
* ``foreground-kmeans``: k-means centres of the image's foreground.

Example:
    >>> import numpy as np
    >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    >>> sorted(kmeans(points, 2)[:, 0].tolist())
    [0.5, 10.5]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from mmreg.imaging.image import Image
from mmreg.imaging.preprocess import foreground_mask
from mmreg.methods.keymorph.augment import View, render_view
from mmreg.methods.keymorph.model import KeypointDetector
from mmreg.methods.keymorph.sampling import antialias

__all__ = ["kmeans", "landmark_anchors", "model_anchors", "template_points"]


def farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Deterministic farthest-point sampling (starting from the point nearest the mean)."""
    chosen = [int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))]
    dist = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
    return points[chosen]


def kmeans(points: np.ndarray, k: int, *, iterations: int = 15) -> np.ndarray:
    """Lloyd's k-means from farthest-point seeds: evenly spread region centres."""
    sub = points[:: max(1, len(points) // 40_000)]
    centres = farthest_points(sub, k)
    for _ in range(iterations):
        d2 = (sub**2).sum(1)[:, None] - 2 * sub @ centres.T + (centres**2).sum(1)[None]
        assign = np.argmin(d2, axis=1)
        for j in range(k):
            members = sub[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


_TEMPLATE_CACHE: dict[int, np.ndarray] = {}


def template_points(n: int) -> npt.NDArray[np.float64]:
    """``n`` points spread over the brain of the shipped MNI template (RAS mm), cached.

    k-means centres of the template's grey + white matter: the pretraining targets
    of brain models, in MNI space.
    """
    if n not in _TEMPLATE_CACHE:
        from mmreg.imaging.phantoms.brain import load_template

        tpl = load_template()
        brain = (tpl.tissues[1] + tpl.tissues[2]) > 0.5
        world = tpl.grid.voxel_to_world(np.argwhere(brain))
        _TEMPLATE_CACHE[n] = kmeans(world, n)
    return _TEMPLATE_CACHE[n].copy()


def landmark_anchors(
    landmarks: Mapping[str, Sequence[float]] | None, n: int
) -> npt.NDArray[np.float64] | None:
    """Template points mapped into the subject by an affine fitted to named landmarks.

    ``None`` with fewer than six of :data:`mmreg.imaging.phantoms.brain.MNI_LANDMARKS`.
    """
    if not landmarks:
        return None
    from mmreg.imaging.phantoms.brain import MNI_LANDMARKS

    names = [k for k in MNI_LANDMARKS if k in landmarks]
    if len(names) < 6:
        return None
    mni = np.array([MNI_LANDMARKS[k] for k in names], dtype=np.float64)
    subj = np.array([np.asarray(landmarks[k], dtype=np.float64)[:3] for k in names])
    design = np.concatenate([mni, np.ones((len(names), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, subj, rcond=None)  # subj = [mni, 1] @ coef
    pts = template_points(n)
    return np.concatenate([pts, np.ones((n, 1))], axis=1) @ coef


@torch.no_grad()
def model_anchors(
    model: KeypointDetector,
    image: Image,
    affine: np.ndarray,
    *,
    size: int,
    spacing: float,
    device: torch.device,
) -> npt.NDArray[np.float64]:
    """The initial model's keypoints on the upright image (fine-tuning keeps their identity).

    Args:
        model: The detector given with ``--init``.
        image: The subject's first (preprocessed) image.
        affine: Its training-space affine (voxel -> world).
        size: Detector grid voxels per axis.
        spacing: Detector grid spacing (mm).
        device: Where the model runs.
    """
    nd = image.ndim
    mask = foreground_mask(image)
    centre_idx = np.argwhere(mask).mean(0)
    centre = centre_idx @ affine[:-1, :-1].T + affine[:-1, -1]
    view = View(centre, np.eye(nd), size, spacing)
    factor = view.spacing / float(np.mean(image.spacing))
    data = torch.from_numpy(antialias(image.data, factor)).to(device)
    rng = np.random.default_rng(0)
    for _ in range(2):  # re-centre once on the keypoints (the brain, not the neck)
        x = render_view(data, affine, view, rng, None)
        kp = model(x[None, None].to(device))[0]
        world = view.to_world(kp).cpu().numpy()
        view = View(world.mean(0), view.linear, view.size, view.spacing)
    return world.astype(np.float64)
