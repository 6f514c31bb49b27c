"""Training contrasts synthesised from label maps (SynthMorph / SynthSeg style).

A detector trained on one contrast of a few subjects fails on any other: real
scans differ in contrast, field of view (faces, necks) and preprocessing (brain
extraction). Drawing a new contrast for every view from the subject's *labels*
makes every real contrast one more sample of the training distribution.

The class map of a subject (:func:`class_map`) has its brain labels (compacted to
``1..K``) and, outside them, ``n_head`` pseudo-classes of the head (scalp, skull,
fat, muscle...) found by clustering the real image's intensities; ``0`` is air.
Each class keeps the median real intensity as its *reference*. A synthetic
contrast (:func:`synth_intensity`) is a random look-up table of the references
(so classes of similar tissue stay alike, in any order), a little independent
jitter per class (so no two labels are forced equal), and the real texture within
each class scaled by a random factor of either sign. The usual augmentation
(gamma, bias, blur, noise) follows in :func:`mmreg.methods.keymorph.augment.intensity_augment`.
:func:`skull_strip` removes everything outside a (randomly dilated) brain mask, so
brain-extracted inputs are in distribution too.

>>> import numpy as np
>>> image = np.array([[0.0, 0.5, 0.9], [0.0, 0.6, 0.2]])
>>> labels = np.array([[0, 3, 7], [0, 3, 0]])
>>> classes, ref = class_map(image, labels, n_head=1)
>>> classes.tolist()
[[0, 1, 2], [0, 1, 3]]
>>> [round(float(r), 2) for r in ref]
[0.0, 0.55, 0.9, 0.2]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = ["SynthSettings", "class_map", "skull_strip", "synth_intensity"]

#: Real intensities (images normalised to ~[0, 1]) below this are air.
AIR = 0.05


@dataclass(frozen=True)
class SynthSettings:
    """How often and how strongly views are synthesised and brain-extracted.

    Attributes:
        prob: Share of views drawn from the labels (the rest: the real image
            with a random intensity remap).
        head_classes: Pseudo-classes of the non-brain head from intensity clustering.
        jitter: Standard deviation of each class's independent intensity offset.
        texture: Largest factor of the real within-class texture (either sign).
        random_prob: Share of synthetic views whose class intensities ignore the
            references entirely (uniform per class, as SynthSeg draws them).
        skullstrip_prob: Share of views (real or synthetic) brain-extracted.
    """

    prob: float = 0.5
    head_classes: int = 4
    jitter: float = 0.06
    texture: float = 1.0
    random_prob: float = 0.2
    skullstrip_prob: float = 0.35

    def __post_init__(self) -> None:
        for name in ("prob", "random_prob", "skullstrip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.head_classes < 0:
            raise ValueError("head_classes must be at least 0")


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
    """Cluster centres (ascending) of 1D ``values``, initialised at quantiles."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None]).argmin(1)
        for j in range(k):
            if np.any(assign == j):
                centres[j] = values[assign == j].mean()
    return np.sort(centres)


def class_map(
    image: npt.ArrayLike, labels: npt.ArrayLike, *, n_head: int = 4
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The synthesis classes of one subject and their reference intensities.

    Args:
        image: The real image (intensities normalised to ~[0, 1]).
        labels: Integer label map on the same grid; ``> 0`` is the labelled anatomy
            (the brain), ``0`` everything else.
        n_head: Pseudo-classes for the unlabelled foreground (``> AIR``), by k-means
            of its intensities.

    Returns:
        ``(classes, reference)``: classes ``0`` (air), ``1..K`` (labels, in
        ascending label order), ``K+1..`` (head clusters, darkest first); reference
        ``(n_classes,)`` the median real intensity per class.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(labels).astype(np.int64)
    if img.shape != lab.shape:
        raise ValueError(f"image {img.shape} and labels {lab.shape} differ in shape")
    ids, compact = np.unique(lab, return_inverse=True)
    compact = compact.reshape(lab.shape)
    if ids[0] != 0:  # no background label: keep 0 free for air
        compact = compact + 1
        ids = np.concatenate([[0], ids])
    classes = compact.astype(np.int64)
    n_brain = len(ids) - 1
    head = (lab == 0) & (img > AIR)
    if n_head > 0 and head.any():
        centres = _kmeans_1d(img[head], n_head)
        classes[head] = n_brain + 1 + np.abs(img[head][:, None] - centres[None]).argmin(1)
    n_classes = n_brain + 1 + max(n_head, 0)
    reference = np.zeros(n_classes, dtype=np.float32)
    flat, values = classes.ravel(), img.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(n_classes + 1))
    for c in range(1, n_classes):
        chunk = values[order[bounds[c] : bounds[c + 1]]]
        reference[c] = float(np.median(chunk)) if chunk.size else 0.0
    return classes, reference


def synth_intensity(
    classes: torch.Tensor,
    image: torch.Tensor,
    reference: torch.Tensor,
    rng: np.random.Generator,
    settings: SynthSettings,
    lut: tuple[np.ndarray, np.ndarray],
) -> torch.Tensor:
    """One random contrast of a subject, on its own grid (air stays 0).

    Args:
        classes: Class map ``(*S)`` (int64) from :func:`class_map`.
        image: The real image ``(*S)`` (its texture is kept within each class).
        reference: Reference intensity per class ``(C,)``.
        rng: Random stream (one contrast per call).
        settings: Jitter, texture and the share of fully random contrasts.
        lut: Control points ``(xs, ys)`` of a random look-up table over [0, 1]
            (:func:`mmreg.methods.keymorph.augment.random_lut`).
    """
    n = reference.numel()
    ref = reference.double().cpu().numpy()
    if rng.random() < settings.random_prob:
        table = rng.uniform(0.05, 1.0, n)
    else:
        table = np.interp(ref, lut[0], lut[1]) + rng.normal(0.0, settings.jitter, n)
    table = np.clip(table, 0.02, 1.0)
    table[0] = 0.0
    values = torch.as_tensor(table, dtype=image.dtype, device=image.device)
    texture = float(rng.uniform(-settings.texture, settings.texture))
    ref_t = reference.to(image)
    out = values[classes] + texture * (image - ref_t[classes]) * (classes > 0)
    return out.clamp(0.0, 1.0)


def skull_strip(view: torch.Tensor, brain: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero ``view`` outside a brain mask of random threshold and dilation.

    ``brain`` is the brain indicator resampled into the view (linear, so values in
    [0, 1] at its edge); brain-extraction tools keep more or less of the CSF rim.
    """
    mask = (brain > rng.uniform(0.2, 0.7)).to(view.dtype)
    if rng.random() < 0.5:
        nd = view.dim()
        pool = F.max_pool3d if nd == 3 else F.max_pool2d
        mask = pool(mask[None, None], 3, stride=1, padding=1)[0, 0]
    return view * mask
