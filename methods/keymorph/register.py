"""The KeyMorph registration methods: ``keymorph-rigid``, ``keymorph-affine``, ``keymorph-tps``.

How one pair is registered (world coordinates RAS mm throughout):

1. **Keypoints of each image.** Each image is resampled onto the detector's input
   grid (a cube of ``input_mm`` centred on its foreground centroid) and the
   detector finds ``N`` keypoints; the cube is re-centred on the keypoints'
   centroid (the brain, not a neck that pulls the foreground centroid down) and the
   keypoints are detected again. A robust (Tukey-reweighted) rigid fit of the fixed
   keypoints to the moving ones is the first candidate transform.
2. **Search.** Further candidates: the 24 rotations of a cube about the two
   keypoint centroids (every pose is within 63 degrees of one of them, and the
   detector is trained to 70 degrees), and the ``initial`` transform when it
   carries an orientation. For each, the moving image is resampled through it onto
   the fixed image's grid, its keypoints are detected there, carried back into
   moving space, and the rigid fit is redone. The candidates are ranked by the
   normalised mutual information of the two images under their fits (contrast
   independent, and robust where keypoint residuals are too noisy to rank poses).
3. **Refinement** of the best ``keep`` candidates, ``passes`` times: resample the
   moving image through the current map (so it looks upright and sits where the
   fixed image sits, where the detector is most accurate), detect, carry back, fit
   again from the original fixed keypoints (rigid in early passes, the method's
   own model in the last). The candidate with the highest final agreement wins.
4. **Result.** ``keymorph-rigid``/``-affine``: the final rigid/affine fit;
   ``keymorph-tps``: a thin-plate spline through the inlier keypoints with
   smoothing ``lambda`` (in units of the input cube's half-side, as in KeyMorph's
   ``[-1, 1]`` coordinates), returned as a displacement field on the fixed grid
   (every other voxel) followed by the spline's affine part, so points outside the
   field still move affinely.

The result is always the full fixed->moving map. ``passes=0`` keeps only the first
candidate (the detector alone, no search). Inference is deterministic; ``threads``
sets torch's threads for the call.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod
from mmreg.methods.keymorph.model import KeypointDetector
from mmreg.methods.keymorph.sampling import (
    antialias,
    foreground_center,
    input_grid,
    normalize_input,
    sample_image,
)
from mmreg.methods.keymorph.solvers import fit_affine, fit_rigid, fit_tps, irls
from mmreg.methods.keymorph.train import FAMILY, load_detector
from mmreg.methods.registry import register_factory

__all__ = [
    "KINDS",
    "KeyMorphMethod",
    "KeyMorphOptions",
    "make_method",
    "normalized_mutual_information",
]

#: Method kinds -> CLI names.
KINDS = {"rigid": "keymorph-rigid", "affine": "keymorph-affine", "tps": "keymorph-tps"}
#: Default TPS smoothing (cube half-side units).
DEFAULT_LAMBDA = 0.1
#: Median keypoint residual (mm) under which a start is taken as right and the rotation
#: search is skipped. On held-out IXI heads (whole and brain-extracted, 0-180 degrees) a
#: right start re-detects to 0.08-0.31 mm and a wrong one to 0.55 mm or more.
DEFAULT_ACCEPT_MM = 0.4
#: The TPS displacement field is sampled on every FIELD_STRIDE-th voxel of the fixed grid.
FIELD_STRIDE = 2


@dataclass(frozen=True)
class KeyMorphOptions:
    """Per-method parameters (``keymorph-tps:lambda=0.01:passes=3``).

    Attributes:
        lam: TPS smoothing ``lambda`` (``keymorph-tps`` only).
        passes: Refinement passes (0: the independent keypoints' fit alone, no search).
        search: Also try the 24 rotations of a cube as starts (any pose is then within
            63 degrees of one of them).
        accept: Skip that search when the keypoints' own fit or the initial transform
            already explains the re-detected keypoints to within this median residual
            (mm); 0 always searches.
        keep: Best-scoring starts that are refined.
        robust: Tukey cut-off (in robust standard deviations) of the reweighted fits.
    """

    lam: float = DEFAULT_LAMBDA
    passes: int = 3
    search: bool = True
    accept: float = DEFAULT_ACCEPT_MM
    keep: int = 2
    robust: float = 3.0

    @classmethod
    def parse(cls, kind: str, params: Mapping[str, str] | None) -> KeyMorphOptions:
        """Options from spec parameters (strings); one-line :class:`UsageError` if invalid."""
        name = KINDS[kind]
        known = {"passes", "search", "accept", "keep", "robust"}
        known |= {"lambda"} if kind == "tps" else set()
        values: dict[str, Any] = {}
        for key, text in (params or {}).items():
            if key not in known:
                raise UsageError(
                    f"{name}: unknown parameter {key!r}; known: {', '.join(sorted(known))}"
                )
            try:
                number = float(text)
            except ValueError:
                raise UsageError(f"{name}: {key}={text!r} is not a number") from None
            if not math.isfinite(number) or number < 0:
                raise UsageError(f"{name}: {key} must be a non-negative number, got {text}")
            if key == "passes":
                if number != int(number) or number > 10:
                    raise UsageError(f"{name}: passes must be a whole number from 0 to 10")
                values["passes"] = int(number)
            elif key == "search":
                if number not in (0, 1):
                    raise UsageError(f"{name}: search must be 0 or 1, got {text}")
                values["search"] = bool(number)
            elif key == "keep":
                if number != int(number) or not 1 <= number <= 30:
                    raise UsageError(f"{name}: keep must be a whole number from 1 to 30")
                values["keep"] = int(number)
            elif key == "accept":
                values["accept"] = number
            elif key == "robust":
                if number < 1:
                    raise UsageError(f"{name}: robust must be at least 1, got {text}")
                values["robust"] = number
            else:
                values["lam"] = number
        return cls(**values)


# --------------------------------------------------------------------------- model cache

_CACHE: dict[tuple[str, int, int, str], tuple[KeypointDetector, Any]] = {}
_LOCK = threading.Lock()


def _load(path: Path, device: str) -> tuple[KeypointDetector, Any]:
    """Verified detector for ``path`` on ``device`` (cached per file version)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_detector(path, device=device)
        return _CACHE[key]


# --------------------------------------------------------------------------- geometry helpers


def _to_torch(points: npt.NDArray[np.float64]) -> torch.Tensor:
    return torch.as_tensor(points, dtype=torch.float64)[None]


def _matrix4(matrix: torch.Tensor, ndim: int) -> npt.NDArray[np.float64]:
    """A (d+1)x(d+1) fit -> 4x4 RAS matrix (2D: z untouched)."""
    m = matrix[0].detach().cpu().double().numpy()
    if ndim == 3:
        return m
    out = np.eye(4)
    out[:2, :2] = m[:2, :2]
    out[:2, 3] = m[:2, 2]
    return out


def _linear_fit(
    kind: str, src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64], robust: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Robust rigid or affine fit of ``(N, d)`` points; returns (4x4, weights)."""
    ndim = src.shape[1]
    solver = fit_rigid if kind == "rigid" else fit_affine
    matrix, weights = irls(solver, _to_torch(src), _to_torch(dst), iterations=5, c=robust)
    if kind == "affine" and torch.linalg.det(matrix[0, :ndim, :ndim]) <= 0:
        # A reflection means the keypoints are inconsistent (e.g. left and right
        # confused); a proper rigid fit is the safe answer.
        matrix, weights = irls(fit_rigid, _to_torch(src), _to_torch(dst), iterations=5, c=robust)
    return _matrix4(matrix, ndim), weights[0].numpy()


class KeyMorphMethod(BaseMethod):
    """Keypoint detection + closed-form fit; see the module docstring.

    Args:
        kind: ``rigid``, ``affine`` or ``tps``.
        model: Weights file (``None``: the shipped ``keymorph.pt``).
        options: Method parameters.
    """

    def __init__(
        self, kind: str, *, model: str | Path | None = None, options: KeyMorphOptions | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown KeyMorph kind {kind!r}")
        self.kind = kind
        self.name = KINDS[kind]
        self.deformable = kind == "tps"
        self.model_path = model
        self.options = options or KeyMorphOptions()

    # ---- detection

    def _detect(
        self,
        model: KeypointDetector,
        images: list[Image],
        grids: list[Any],
        transforms: list[Transform | None],
        device: str,
    ) -> list[npt.NDArray[np.float64]]:
        """Keypoints (N, 3) of each image pulled through its transform onto its grid,
        in the grid's world space (one batched forward pass).

        The images are already anti-aliased for the grid (see :meth:`_smoothed`).
        """
        x = torch.stack(
            [
                normalize_input(sample_image(im, g, t, device=device, smooth=False))
                for im, g, t in zip(images, grids, transforms, strict=True)
            ]
        )[:, None]
        with torch.no_grad():
            kps = model(x.to(device)).double().cpu().numpy()
        return [g.voxel_to_world(k) for g, k in zip(grids, kps, strict=True)]

    @staticmethod
    def _smoothed(image: Image, spacing: float) -> Image:
        """The image pre-smoothed once for sampling at the detector's voxel size."""
        factor = spacing / float(np.mean(image.spacing))
        return image.with_data(antialias(image.data, factor))

    def _centred_detection(
        self, model: KeypointDetector, images: list[Image], device: str
    ) -> list[tuple[npt.NDArray[np.float64], Any]]:
        """Keypoints of each image in a cube on its foreground centroid, then re-centred
        on the keypoints' centroid (the brain rather than a neck)."""
        cfg = model.config
        centres = [foreground_center(image) for image in images]
        out: list[tuple[npt.NDArray[np.float64], Any]] = []
        for _ in range(2):
            grids = [
                input_grid(c, size=cfg.input_size, side_mm=cfg.input_mm, ndim=im.ndim, like=im)
                for c, im in zip(centres, images, strict=True)
            ]
            worlds = self._detect(model, images, grids, [None] * len(images), device)
            out = list(zip(worlds, grids, strict=True))
            centres = [world.mean(0) for world in worlds]
        return out

    @staticmethod
    def _agreement(
        reference: torch.Tensor, moving: Image, grid: Any, transform: Transform, device: str
    ) -> float:
        """Normalised mutual information of the fixed grid image and the moving image
        pulled through ``transform`` (see :func:`normalized_mutual_information`)."""
        pulled = normalize_input(
            sample_image(moving, grid, transform, device=device, smooth=False)
        )
        return normalized_mutual_information(reference, pulled)

    # ---- fitting

    def _score(
        self,
        model: KeypointDetector,
        moving: Image,
        grid: Any,
        kp_fixed: npt.NDArray[np.float64],
        starts: Mapping[str, Transform],
        kind: str,
        device: str,
    ) -> dict[str, _Fit]:
        """One pass for every start: detect the moving keypoints through it, fit again."""
        nd = moving.ndim
        labels = list(starts)
        seen = self._detect(
            model,
            [moving] * len(labels),
            [grid] * len(labels),
            [starts[k] for k in labels],
            device,
        )
        out = {}
        for label, points in zip(labels, seen, strict=True):
            kp_moving = starts[label].map_points(points)
            matrix, weights = _linear_fit(
                kind, kp_fixed[:, :nd], kp_moving[:, :nd], self.options.robust
            )
            fitted = Transform.from_affine(matrix, ndim=nd)
            residual = np.linalg.norm(fitted.map_points(kp_fixed) - kp_moving, axis=1)
            out[label] = _Fit(fitted, kp_moving, weights, float(np.median(residual)))
        return out

    def _refine(
        self,
        model: KeypointDetector,
        moving: Image,
        grid: Any,
        kp_fixed: npt.NDArray[np.float64],
        starts: Mapping[str, tuple[_Fit, float]],
        reference: torch.Tensor,
        device: str,
    ) -> dict[str, tuple[_Fit, float]]:
        """``passes`` refinement passes from each start (batched across starts).

        ``starts`` maps a label to its fit and agreement; each start keeps its best
        fit by agreement over the passes, so a pass that drifts (keypoints biased by
        an unfamiliar contrast) cannot make the result worse.
        """
        fit_kind = "rigid" if self.kind == "rigid" else "affine"
        best = dict(starts)
        current = {k: f.transform for k, (f, _) in starts.items()}
        for p in range(self.options.passes):
            # Early passes rigid: while the map is still off, rotation matters most.
            kind = "rigid" if p < self.options.passes - 1 else fit_kind
            fits = self._score(model, moving, grid, kp_fixed, current, kind, device)
            for label, fit in fits.items():
                value = self._agreement(reference, moving, grid, fit.transform, device)
                if value >= best[label][1]:
                    best[label] = (fit, value)
            current = {k: f.transform for k, f in fits.items()}
        return best

    def _tps(
        self,
        fixed: Image,
        kp_fixed: npt.NDArray[np.float64],
        kp_moving: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
        centre: npt.NDArray[np.float64],
        half: float,
    ) -> Transform:
        """Displacement field + affine from a TPS through the inlier keypoints."""
        nd = fixed.ndim
        keep = weights > 0.0
        if keep.sum() < nd + 2:
            keep = np.ones(len(weights), bool)
        src = (kp_fixed[keep, :nd] - centre[:nd]) / half
        dst = (kp_moving[keep, :nd] - centre[:nd]) / half
        spline = fit_tps(_to_torch(src), _to_torch(dst), self.options.lam)
        lin = spline.affine_matrix()[0].numpy()  # normalised coordinates
        # World affine part: x -> c + h L((x - c)/h) + h t  ==  L x + (c - L c + h t).
        affine = np.eye(nd + 1)
        affine[:nd, :nd] = lin[:nd, :nd]
        affine[:nd, nd] = centre[:nd] - lin[:nd, :nd] @ centre[:nd] + half * lin[:nd, nd]
        # The bending part of a spline through ~64 points is smooth: a field on every
        # other voxel of the fixed grid (linearly interpolated) is as good and 8x cheaper.
        grid = _coarse_grid(fixed.grid, FIELD_STRIDE)
        world = grid.world_coordinates().reshape(-1, 3)
        norm = torch.as_tensor((world[:, :nd] - centre[:nd]) / half, dtype=torch.float32)
        bend = np.empty((world.shape[0], nd))
        chunk = 1 << 16
        for start in range(0, world.shape[0], chunk):
            part = spline.bending(norm[start : start + chunk][None])[0]
            bend[start : start + chunk] = part.double().numpy() * half
        # f(x) = A x + k(x), written as x -> A (x + u(x)) with u = A^-1 k.
        vectors = np.zeros((world.shape[0], 3))
        vectors[:, :nd] = bend @ np.linalg.inv(affine[:nd, :nd]).T
        m4 = _matrix4(torch.as_tensor(affine)[None], nd)
        field = Transform.from_field(grid, vectors.reshape(*grid.shape, 3))
        return field.then(Transform.from_affine(m4, ndim=nd))

    # ---- the method

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
        del seed  # inference is deterministic
        from mmreg.models import resolve_model

        path = resolve_model(FAMILY, self.model_path)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model, ckpt = _load(path, device)
            if model.config.ndim != fixed.ndim:
                raise InputError(
                    f"{self.name}: the model {path.name} is {model.config.ndim}D but the "
                    f"images are {fixed.ndim}D"
                )
            return self._register(model, ckpt, fixed, moving, initial, device)
        finally:
            torch.set_num_threads(previous)

    def _register(
        self,
        model: KeypointDetector,
        ckpt: Any,
        fixed: Image,
        moving: Image,
        initial: Transform | None,
        device: str,
    ) -> tuple[Transform, dict[str, Any]]:
        nd = fixed.ndim
        spacing = model.config.spacing
        fixed_s, moving_s = self._smoothed(fixed, spacing), self._smoothed(moving, spacing)
        (kp_fixed, grid), (kp_coarse, _) = self._centred_detection(
            model, [fixed_s, moving_s], device
        )
        fit_kind = "rigid" if self.kind == "rigid" else "affine"
        coarse_matrix, coarse_w = _linear_fit(
            "rigid" if self.options.passes else fit_kind,
            kp_fixed[:, :nd],
            kp_coarse[:, :nd],
            self.options.robust,
        )
        coarse = Transform.from_affine(coarse_matrix, ndim=nd)
        residual0 = np.linalg.norm(coarse.map_points(kp_fixed) - kp_coarse, axis=1)
        fits = {"keypoints": _Fit(coarse, kp_coarse, coarse_w, float(np.median(residual0)))}
        scores: dict[str, float] = {}
        if self.options.passes > 0:
            # Candidate starts: the independent keypoints' fit, the initial transform
            # when it carries an orientation (a translation-only pre-alignment adds
            # nothing), and, with ``search``, the rotations of a cube about the
            # keypoints' centres (one is within 63 degrees of any pose, where the
            # detector is reliable). One batched detection pass scores each group; the
            # best ``keep`` are refined.
            starts: dict[str, Transform] = {"keypoints": coarse}
            if initial is not None and _has_orientation(initial):
                starts["initial"] = initial
            scored = self._score(model, moving_s, grid, kp_fixed, starts, "rigid", device)
            # A start that explains the keypoints re-detected through it is right (see
            # DEFAULT_ACCEPT_MM): the search, most of the time and work, is then skipped.
            settled = min(f.residual for f in scored.values()) <= self.options.accept
            if self.options.search and not settled:
                c_f, c_m = kp_fixed.mean(0), kp_coarse.mean(0)
                rotations = {}
                for k, rot in enumerate(_search_rotations(nd)):
                    m = np.eye(4)
                    m[:3, :3] = rot
                    m[:3, 3] = c_m - rot @ c_f
                    rotations[f"rotation{k:02d}"] = Transform.from_affine(m, ndim=nd)
                scored |= self._score(model, moving_s, grid, kp_fixed, rotations, "rigid", device)
            scores = {k: f.residual for k, f in scored.items()}
            # Rank the starts by how well the images agree under their keypoint fits
            # (normalised mutual information on the detector's grid): keypoints found on
            # a contrast or an anatomy unlike the training data can be consistent enough
            # to align, yet too noisy for their residuals to tell the right pose apart.
            reference = normalize_input(sample_image(fixed_s, grid, None, smooth=False))
            agreement = {
                k: self._agreement(reference, moving_s, grid, f.transform, device)
                for k, f in scored.items()
            }
            best = sorted(scored, key=lambda k: -agreement[k])[: self.options.keep]
            refined = self._refine(
                model,
                moving_s,
                grid,
                kp_fixed,
                {k: (scored[k], agreement[k]) for k in best},
                reference,
                device,
            )
            fits = {k: f for k, (f, _) in refined.items()}
            refined_agreement = {k: v for k, (_, v) in refined.items()}
        else:
            agreement = refined_agreement = {}
        chosen = (
            max(fits, key=lambda k: refined_agreement[k])
            if refined_agreement
            else min(fits, key=lambda k: fits[k].residual)
        )
        fit = fits[chosen]
        transform = fit.transform
        extras: dict[str, Any] = {
            "keypoints_fixed": np.round(kp_fixed, 4).tolist(),
            "keypoints_moving": np.round(fit.kp_moving, 4).tolist(),
            "model_sha256": ckpt.sha256,
            "model_file": Path(ckpt.path).name,
            "n_keypoints": len(kp_fixed),
            "passes": self.options.passes,
            "start": chosen,
            "searched": self.options.passes > 0 and any(k.startswith("rotation") for k in scores),
            "start_residuals_mm": {k: round(v, 4) for k, v in sorted(scores.items())},
            "start_nmi": {k: round(v, 5) for k, v in sorted(agreement.items())},
            "refined_residuals_mm": {k: round(f.residual, 4) for k, f in fits.items()},
            "refined_nmi": {k: round(v, 5) for k, v in refined_agreement.items()},
            "keypoint_residual_mm": round(fit.residual, 4),
            "inlier_fraction": round(float(np.mean(fit.weights > 0)), 4),
        }
        if self.kind == "tps":
            centre = kp_fixed.mean(0)
            half = model.config.input_mm / 2.0
            transform = self._tps(fixed, kp_fixed, fit.kp_moving, fit.weights, centre, half)
            extras["lambda"] = self.options.lam
        return transform, extras


@dataclass(frozen=True)
class _Fit:
    """One candidate's fit: the map, the moving keypoints it was fitted to, the robust
    weights and the median keypoint residual (mm)."""

    transform: Transform
    kp_moving: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    residual: float


def _search_rotations(ndim: int) -> list[npt.NDArray[np.float64]]:
    """Rotations tried as starts: the 24 of a cube (3D), every 45 degrees (2D)."""
    if ndim == 2:
        out = []
        for k in range(8):
            a = np.pi / 4 * k
            r = np.eye(3)
            r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
            out.append(r)
        return out
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = np.zeros((3, 3))
            r[range(3), perm] = signs
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


def normalized_mutual_information(a: torch.Tensor, b: torch.Tensor, *, bins: int = 32) -> float:
    """``(H(A) + H(B)) / H(A, B)`` of two images in [0, 1] over voxels where either is
    above the background (1 for independent images, 2 for identical ones).

    Example:
        >>> x = torch.linspace(0, 1, 1000)
        >>> round(normalized_mutual_information(x, 1 - x), 3)
        2.0
    """
    a, b = a.reshape(-1), b.reshape(-1)
    keep = (a > 0.02) | (b > 0.02)
    if int(keep.sum()) < 10:
        return 1.0
    ia = (a[keep] * (bins - 1)).round().long().clamp(0, bins - 1)
    ib = (b[keep] * (bins - 1)).round().long().clamp(0, bins - 1)
    joint = torch.bincount(ia * bins + ib, minlength=bins * bins).double()
    joint = joint / joint.sum()
    pa, pb = joint.reshape(bins, bins).sum(1), joint.reshape(bins, bins).sum(0)

    def entropy(p: torch.Tensor) -> float:
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    h_joint = entropy(joint)
    return (entropy(pa) + entropy(pb)) / h_joint if h_joint > 0 else 2.0


def _coarse_grid(grid: Grid, stride: int) -> Grid:
    """Every ``stride``-th voxel of ``grid``, extended to cover its last voxel."""
    shape = tuple(int(np.ceil((n - 1) / stride)) + 1 for n in grid.shape)
    affine = grid.affine.copy()
    affine[:3, : grid.ndim] *= stride
    return Grid(shape, affine)


def _has_orientation(transform: Transform) -> bool:
    """True unless ``transform`` is a pure translation (or the identity)."""
    if not transform.is_linear:
        return True
    return not np.allclose(transform.as_affine()[:3, :3], np.eye(3), atol=1e-6)


def make_method(
    kind: str, *, model: str | Path | None = None, params: Mapping[str, str] | None = None
) -> KeyMorphMethod:
    """A KeyMorph method object; ``params`` are the spec's ``key=value`` strings."""
    return KeyMorphMethod(kind, model=model, options=KeyMorphOptions.parse(kind, params))


def _factory(kind: str) -> Any:
    def factory(
        *, model: str | Path | None = None, params: Mapping[str, str] | None = None
    ) -> KeyMorphMethod:
        return make_method(kind, model=model, params=params)

    factory.__name__ = f"make_keymorph_{kind}"
    return factory


for _kind, _name in KINDS.items():
    register_factory(_name, _factory(_kind), replace=True, model_family=FAMILY)
