"""Rigid 2D DXA <-> MR registration from contrastive features: ``contrastive-dense``, ``-salient``.

Both methods encode the DXA and the MR slice with the contrastive dual encoder
(:mod:`~mmreg.methods.contrastive.features`) and estimate the rigid map from DXA world
to MR world (rotation + translation in the image plane), which becomes the fixed->moving
transform for whichever image is fixed (Windsor et al. 2021, section 2.3):

* **contrastive-dense**: the MR is encoded on working grids rotated over a small range of
  angles (default -10..10 degrees in 2-degree steps); for each angle the MR map slides
  over the DXA map, and the best correlation over shifts and angles gives the map.
  The shift is refined to sub-cell precision by a parabola through the peak and its
  neighbours, the angle by a parabola through the peak values of neighbouring angles
  (then the MR is encoded once more at the refined angle).
* **contrastive-salient**: salient cells of each map (local maxima of distinctiveness:
  one minus the best similarity to any other cell of the same map away from its
  neighbours) are matched to the other map by nearest neighbour (by default only within
  ``search_mm`` of where the dense estimate puts them: guided matching), kept when the
  match is mutual and passes Lowe's ratio test (nearest vs next-nearest outside the
  match's neighbourhood), placed to sub-cell precision by the patch around them, and a
  rigid map is fitted by RANSAC followed by a least-median-of-squares refit on the RANSAC
  inliers, both under the dense method's rotation and shift priors. With too few inliers
  (or clustered ones) it falls back to the dense estimate (reported in the extras and as
  the CSV column ``salient_fallback``).

Which image is the DXA: ``fixed_modality=dxa|mr|auto`` (default ``auto``: both
assignments are scored by the dense similarity at 0 degrees and the better one is used).

Parameters (``--methods contrastive-dense:angle_range=6:angle_step=1``) are the fields of
:class:`ContrastiveSettings`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import CSV_COLUMNS_KEY, BaseMethod
from mmreg.methods.contrastive import geometry
from mmreg.methods.contrastive.data import ChannelImage, as_channels
from mmreg.methods.contrastive.features import FeatureMap, encode, load_model, prepare
from mmreg.methods.contrastive.losses import correlation
from mmreg.methods.contrastive.model import DualEncoder
from mmreg.methods.registry import register_factory

__all__ = [
    "ContrastiveMethod",
    "ContrastiveSettings",
    "DensePeak",
    "Estimate",
    "Matches",
    "dense_peak",
    "distinctiveness",
    "estimate_dense",
    "estimate_salient",
    "match_salient",
    "oriented_pair",
    "parse_settings",
    "salient_cells",
]

Matrix3 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ContrastiveSettings:
    """Parameters of the contrastive registration methods (strings on the CLI).

    Attributes:
        fixed_modality: ``dxa``, ``mr`` or ``auto`` (decide by the similarity).
        angle_range: Dense: largest rotation searched (degrees, both signs).
        angle_step: Dense: step of the rotation search (degrees).
        max_shift_mm: Dense: largest distance (mm, per axis) between the two images'
            centres after alignment that the correlation peak may imply; ``-1`` (default):
            the prior the model was trained with; 0: any shift.
        n_salient: Salient: most salient cells per map.
        exclusion_cells: Salient: cells within this distance of a cell are its
            neighbourhood (ignored for distinctiveness and the ratio test's second match).
        ratio: Salient: Lowe ratio (nearest / next-nearest embedding distance) below
            which a match is kept.
        ransac_threshold_cells: Salient: RANSAC inlier distance, in feature cells.
        ransac_iterations: Salient: RANSAC (and LMedS) minimal samples.
        min_inliers: Salient: fewest inliers to trust the fit (else the dense estimate).
        guide: Salient: ``dense`` (default) matches each salient cell only against the
            cells within ``search_mm`` of where the dense estimate puts it (guided
            matching: the ratio test then compares local candidates); ``none``: against
            the whole other map.
        search_mm: Salient: radius of the guided search window.
        min_spread_cells: Salient: the inliers must span at least this many cells (a
            rigid fit of clustered points has an arbitrary rotation), else dense.
        patch_radius: Salient: each match is placed to sub-cell precision by the patch
            of ``(2 r + 1)^2`` cells around it (0: by its one descriptor).
    """

    fixed_modality: str = "auto"
    angle_range: float = 10.0
    angle_step: float = 2.0
    max_shift_mm: float = -1.0
    n_salient: int = 96
    exclusion_cells: float = 1.5
    ratio: float = 0.95
    ransac_threshold_cells: float = 0.75
    ransac_iterations: int = 1000
    min_inliers: int = 4
    guide: str = "dense"
    search_mm: float = 60.0
    min_spread_cells: float = 4.0
    patch_radius: int = 3

    def __post_init__(self) -> None:
        if self.fixed_modality not in ("dxa", "mr", "auto"):
            raise ValueError("fixed_modality must be dxa, mr or auto")
        if self.angle_range < 0 or self.angle_step <= 0:
            raise ValueError("need angle_range >= 0 and angle_step > 0")
        if not 0 < self.ratio <= 1 or self.n_salient < 2 or self.min_inliers < 2:
            raise ValueError("need 0 < ratio <= 1, n_salient >= 2 and min_inliers >= 2")
        if self.guide not in ("dense", "none") or self.search_mm <= 0:
            raise ValueError("guide must be dense or none, and search_mm positive")

    @property
    def angles(self) -> npt.NDArray[np.float64]:
        """The searched angles, symmetric about 0 and including it."""
        n = int(np.floor(self.angle_range / self.angle_step + 1e-9))
        return self.angle_step * np.arange(-n, n + 1, dtype=float)


def parse_settings(cls: type, params: dict[str, str] | None) -> Any:
    """A settings dataclass from CLI strings (``{"angle_step": "1"}``), with one-line errors.

    Raises:
        UsageError: For unknown names or values of the wrong type.
    """
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise UsageError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = {}
    for key, text in params.items():
        kind = hints[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                values[key] = text.lower() in ("true", "1", "yes")
            else:
                values[key] = kind(text)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"parameter {key}={text!r} is not a valid {kind.__name__}") from exc
    try:
        return cls(**values)
    except ValueError as exc:
        raise UsageError(f"invalid parameters: {exc}") from exc


# --- estimates --------------------------------------------------------------------------------


@dataclass
class Estimate:
    """A rigid DXA-world -> MR-world map (3x3) and what supports it."""

    matrix: Matrix3
    similarity: float
    extras: dict[str, Any] = field(default_factory=dict)
    dxa_points: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    mr_points: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))


@dataclass(frozen=True)
class DensePeak:
    """The correlation peak of an MR map over a DXA map."""

    matrix: Matrix3  # DXA world -> MR world
    value: float
    shift: tuple[float, float]


def _masked(fm: FeatureMap) -> torch.Tensor:
    return fm.values * torch.from_numpy(fm.mask.astype(np.float32))[None]


def dense_peak(dxa: FeatureMap, mr: FeatureMap, *, max_shift_mm: float = 0.0) -> DensePeak:
    """Slide the MR map over the DXA map; the sub-cell peak gives the rigid map.

    MR cell ``v`` matches DXA cell ``v + t`` at the peak shift ``t``, so a DXA world
    point ``x`` maps to MR world ``G_M (G_D^-1 x - t)`` (``G`` the cell->world matrices).
    """
    mask = torch.from_numpy(mr.mask.astype(np.float32))[None, None]
    corr = correlation(_masked(dxa)[None], mr.values[None], mask)
    values = corr.values[0, 0].double().numpy()
    if max_shift_mm > 0:
        # Keep shifts that put the MR map's centre within max_shift_mm (per DXA axis) of
        # the DXA map's centre, the prior the model was trained with.
        h, w = values.shape
        k = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
        shifts = k - np.asarray(corr.offset)
        centre_m = (np.asarray(mr.shape) - 1) / 2.0
        centre_d = (np.asarray(dxa.shape) - 1) / 2.0
        cell_mm = np.linalg.norm(dxa.grid[:2, :2], axis=0)
        far = np.max(np.abs(centre_m + shifts - centre_d) * cell_mm, axis=1)
        values = np.where((far <= max_shift_mm + 1e-6).reshape(h, w), values, -np.inf)
    row, col, value = geometry.subpixel_peak(np.nan_to_num(values, neginf=-1e9))
    shift = corr.shift((row, col))
    step = np.eye(3)
    step[:2, 2] = -np.asarray(shift)
    matrix = mr.grid @ step @ np.linalg.inv(dxa.grid)
    return DensePeak(matrix, float(value), (float(shift[0]), float(shift[1])))


def _max_shift(model: DualEncoder, settings: ContrastiveSettings) -> float:
    """The shift prior in mm: the setting, or the model's own when the setting is -1."""
    return model.config.max_shift_mm if settings.max_shift_mm < 0 else settings.max_shift_mm


def estimate_dense(
    model: DualEncoder,
    dxa: ChannelImage,
    mr: ChannelImage,
    settings: ContrastiveSettings,
    *,
    device: str = "cpu",
    dxa_map: FeatureMap | None = None,
) -> Estimate:
    """``contrastive-dense`` on prepared images: search angles, then refine the best one."""
    fd = dxa_map or encode(model, dxa, "dxa", device=device)
    max_shift = _max_shift(model, settings)
    peaks: dict[float, DensePeak] = {}
    for angle in settings.angles:
        fm = encode(model, mr, "mr", angle_deg=float(angle), device=device)
        peaks[float(angle)] = dense_peak(fd, fm, max_shift_mm=max_shift)
    angles = sorted(peaks)
    best = max(angles, key=lambda a: peaks[a].value)
    k = angles.index(best)
    chosen = peaks[best]
    angle = best
    if 0 < k < len(angles) - 1:
        offset = geometry.parabola_offset(
            peaks[angles[k - 1]].value, chosen.value, peaks[angles[k + 1]].value
        )
        if offset != 0.0:
            angle = best + offset * settings.angle_step
            fm = encode(model, mr, "mr", angle_deg=angle, device=device)
            refined = dense_peak(fd, fm, max_shift_mm=max_shift)
            # The refined angle must not lose similarity (the parabola is a guess).
            if refined.value >= chosen.value - 1e-6:
                chosen = refined
            else:
                angle = best
    return Estimate(
        chosen.matrix,
        chosen.value,
        {
            "angle_searched_deg": [float(a) for a in angles],
            "peak_by_angle": [round(peaks[a].value, 5) for a in angles],
            "best_angle_deg": float(angle),
        },
    )


# --- salient points ---------------------------------------------------------------------------


def _flat(fm: FeatureMap) -> tuple[torch.Tensor, npt.NDArray[np.int_]]:
    """Unit embeddings ``(N, D)`` of the cells inside the image and their ``(N, 2)`` indices."""
    cells = np.argwhere(fm.mask)
    values = fm.values[:, cells[:, 0], cells[:, 1]].T.contiguous()
    return values, cells


def distinctiveness(fm: FeatureMap, *, exclusion_cells: float = 1.5) -> npt.NDArray[np.float64]:
    """Per cell: 1 - the best similarity to another cell of the map outside its neighbourhood.

    Cells outside the image get 0. A cell that looks like nothing else in its own image
    is a good candidate for an unambiguous cross-modal match.
    """
    values, cells = _flat(fm)
    out = np.zeros(fm.shape)
    if len(cells) < 2:
        return out
    sim = (values @ values.T).double().numpy()
    dist = np.linalg.norm(cells[:, None, :] - cells[None, :, :], axis=-1)
    sim[dist <= exclusion_cells] = -np.inf
    best = sim.max(axis=1)
    out[cells[:, 0], cells[:, 1]] = 1.0 - np.where(np.isfinite(best), best, 1.0)
    return out


def salient_cells(
    fm: FeatureMap, *, n: int = 96, exclusion_cells: float = 1.5
) -> npt.NDArray[np.int_]:
    """Up to ``n`` cells ``(K, 2)``: local maxima (3x3) of distinctiveness, most distinct first."""
    from scipy import ndimage

    score = distinctiveness(fm, exclusion_cells=exclusion_cells)
    peaks = (score == ndimage.maximum_filter(score, size=3, mode="constant")) & fm.mask
    peaks &= score > 0
    cells = np.argwhere(peaks)
    order = np.argsort(-score[peaks], kind="stable")
    return cells[order[:n]]


@dataclass
class Matches:
    """Cross-modal correspondences: DXA and MR cells (fractional) and match scores."""

    dxa_cells: npt.NDArray[np.float64]
    mr_cells: npt.NDArray[np.float64]
    similarity: npt.NDArray[np.float64]
    ratio: npt.NDArray[np.float64]


def _nearest(
    query: torch.Tensor,
    target: torch.Tensor,
    target_cells: npt.NDArray[np.int_],
    exclusion: float,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.int_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Best target index per query, its similarity, and Lowe's distance ratio.

    The second-best match is searched outside the best one's neighbourhood, since the
    best match's neighbours always look alike.
    """
    sim = (query @ target.T).double().numpy()
    if allowed is not None:  # guided: only candidates inside the search window
        sim = np.where(allowed, sim, -np.inf)
    best = np.argmax(sim, axis=1)
    best_sim = sim[np.arange(len(best)), best]
    best_sim = np.where(np.isfinite(best_sim), best_sim, -1.0)
    near = (
        np.linalg.norm(target_cells[None, :, :] - target_cells[best][:, None, :], axis=-1)
        <= exclusion
    )
    second = np.where(near, -np.inf, sim).max(axis=1)
    d1 = np.sqrt(np.maximum(2.0 - 2.0 * best_sim, 0.0))
    d2 = np.sqrt(np.maximum(2.0 - 2.0 * np.where(np.isfinite(second), second, -1.0), 1e-12))
    # Without a second candidate the match's distinctiveness cannot be tested: ratio 1.
    return best, best_sim, np.where(np.isfinite(second), d1 / d2, 1.0)


def _refine_cell(
    fm: FeatureMap, descriptor: torch.Tensor, cell: npt.NDArray[np.int_]
) -> npt.NDArray[np.float64]:
    """Sub-cell position of the best match of ``descriptor`` around ``cell`` (parabola fit)."""
    r, c = int(cell[0]), int(cell[1])
    h, w = fm.shape
    out = np.array([r, c], dtype=float)
    for axis, (lo, hi) in enumerate((((r - 1, c), (r + 1, c)), ((r, c - 1), (r, c + 1)))):
        if not (0 <= lo[0] < h and 0 <= lo[1] < w and 0 <= hi[0] < h and 0 <= hi[1] < w):
            continue
        if not (fm.mask[lo] and fm.mask[hi]):
            continue
        values = [float(fm.values[:, p[0], p[1]] @ descriptor) for p in (lo, (r, c), hi)]
        out[axis] += geometry.parabola_offset(*values)
    return out


def _patch_scores(
    src: npt.NDArray[np.float64],
    src_mask: npt.NDArray[np.bool_],
    p: npt.NDArray[np.int_],
    tgt: npt.NDArray[np.float64],
    tgt_mask: npt.NDArray[np.bool_],
    q: npt.NDArray[np.int_],
    radius: int,
    reach: int,
) -> npt.NDArray[np.float64]:
    """``(2 reach + 1)^2`` mean similarities of the source patch around ``p`` (radius
    ``radius``) placed at ``q + d`` in the target, for every offset ``d``; -inf where no
    cell pair overlaps."""
    out = np.full((2 * reach + 1, 2 * reach + 1), -np.inf)
    u = np.stack(
        np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="ij"),
        -1,
    ).reshape(-1, 2)
    a = p + u
    ok_a = np.all((a >= 0) & (a < src_mask.shape), axis=1)
    ok_a[ok_a] = src_mask[a[ok_a, 0], a[ok_a, 1]]
    for i, di in enumerate(range(-reach, reach + 1)):
        for j, dj in enumerate(range(-reach, reach + 1)):
            b = q + np.array([di, dj]) + u
            ok = ok_a & np.all((b >= 0) & (b < tgt_mask.shape), axis=1)
            ok[ok] = tgt_mask[b[ok, 0], b[ok, 1]]
            if ok.any():
                dots = np.einsum(
                    "dk,dk->k", src[:, a[ok, 0], a[ok, 1]], tgt[:, b[ok, 0], b[ok, 1]]
                )
                out[i, j] = float(dots.mean())
    return out


def _refine_patch(
    src: FeatureMap,
    p: npt.NDArray[np.int_],
    tgt: FeatureMap,
    q: npt.NDArray[np.int_],
    radius: int,
    arrays: dict[int, npt.NDArray[np.float64]] | None = None,
) -> npt.NDArray[np.float64]:
    """Sub-cell target position of a match from the patch around it, not one descriptor.

    The source patch (``(2 radius + 1)^2`` cells) is compared with the target at every
    offset within one cell of ``q`` and around; the best offset, refined per axis by a
    parabola, gives the position. One cell's descriptor localises to about a cell; a
    patch averages that error over its cells, as the dense correlation does over the map.
    ``arrays``: a cache of the maps' values as float64 arrays (by ``id`` of the map), so
    the many matches of one pair of maps convert them once.
    """
    cache = {} if arrays is None else arrays
    for fm in (src, tgt):
        if id(fm) not in cache:
            cache[id(fm)] = fm.values.double().numpy()
    scores = _patch_scores(
        cache[id(src)], src.mask, p, cache[id(tgt)], tgt.mask, q, radius, reach=2
    )
    inner = scores[1:4, 1:4]  # offsets -1..1: the match may move by a cell
    i, j = np.unravel_index(int(np.argmax(inner)), inner.shape)
    i, j = i + 1, j + 1
    out = np.array([q[0] + i - 2, q[1] + j - 2], dtype=float)
    for axis, (lo, hi) in enumerate(
        ((scores[i - 1, j], scores[i + 1, j]), (scores[i, j - 1], scores[i, j + 1]))
    ):
        if np.isfinite(lo) and np.isfinite(hi):
            out[axis] += geometry.parabola_offset(lo, float(scores[i, j]), hi)
    return out


def _window(
    src: FeatureMap,
    src_cells: npt.NDArray[np.int_],
    tgt: FeatureMap,
    tgt_cells: npt.NDArray[np.int_],
    guide: npt.NDArray[np.floating],
    radius_mm: float,
) -> npt.NDArray[np.bool_]:
    """``(S, T)``: target cells within ``radius_mm`` of where ``guide`` puts each source cell."""
    predicted = geometry.apply(guide, src.world(src_cells))
    targets = tgt.world(tgt_cells)
    return np.linalg.norm(predicted[:, None, :] - targets[None, :, :], axis=-1) <= radius_mm


def match_salient(
    dxa: FeatureMap,
    mr: FeatureMap,
    settings: ContrastiveSettings,
    guide: Matrix3 | None = None,
) -> Matches:
    """Mutual nearest-neighbour matches of salient cells that pass the ratio test.

    Salient cells of either map are matched against every cell of the other map (with a
    ``guide``, a DXA->MR map such as the dense estimate: against the cells within
    ``settings.search_mm`` of where it puts them, guided matching); a match ``(p, q)`` is
    kept when ``q``'s own nearest cell in the first map lies within one cell of ``p``
    (mutual) and the distance ratio is below ``settings.ratio``. Positions are refined to
    sub-cell precision in the target map.
    """
    ex = settings.exclusion_cells
    values = {"dxa": _flat(dxa), "mr": _flat(mr)}
    arrays: dict[int, npt.NDArray[np.float64]] = {}  # float64 maps for the patch placement
    maps = {"dxa": dxa, "mr": mr}
    index = {
        name: {tuple(c): k for k, c in enumerate(cells)} for name, (_, cells) in values.items()
    }
    found: dict[
        tuple[tuple[int, int], tuple[int, int]], tuple[float, float, np.ndarray, np.ndarray]
    ] = {}
    for source, target in (("dxa", "mr"), ("mr", "dxa")):
        src_values, src_cells = values[source]
        tgt_values, tgt_cells = values[target]
        salient = salient_cells(maps[source], n=settings.n_salient, exclusion_cells=ex)
        if len(salient) == 0 or len(tgt_cells) < 2:
            continue
        rows = np.array([index[source][tuple(c)] for c in salient])
        allowed = back_allowed = None
        if guide is not None:
            forward = guide if source == "dxa" else np.linalg.inv(guide)
            allowed = _window(
                maps[source], src_cells[rows], maps[target], tgt_cells, forward, settings.search_mm
            )
        best, best_sim, ratio = _nearest(src_values[rows], tgt_values, tgt_cells, ex, allowed)
        if guide is not None:
            backward = np.linalg.inv(guide) if source == "dxa" else guide
            back_allowed = _window(
                maps[target],
                tgt_cells[best],
                maps[source],
                src_cells,
                backward,
                settings.search_mm,
            )
        back, _, _ = _nearest(tgt_values[best], src_values, src_cells, ex, back_allowed)
        for k, row in enumerate(rows):
            mutual = np.max(np.abs(src_cells[back[k]] - src_cells[row])) <= 1
            if not mutual or ratio[k] >= settings.ratio or best_sim[k] <= -1.0:
                continue
            p, q = src_cells[row], tgt_cells[best[k]]
            if settings.patch_radius > 0:
                q_sub = _refine_patch(
                    maps[source], p, maps[target], q, settings.patch_radius, arrays
                )
            else:
                q_sub = _refine_cell(maps[target], src_values[row], q)
            pair = (tuple(p), tuple(q)) if source == "dxa" else (tuple(q), tuple(p))
            subs = (p.astype(float), q_sub) if source == "dxa" else (q_sub, p.astype(float))
            if pair not in found or ratio[k] < found[pair][1]:
                found[pair] = (float(best_sim[k]), float(ratio[k]), subs[0], subs[1])
    if not found:
        empty = np.zeros((0, 2))
        return Matches(empty, empty, np.zeros(0), np.zeros(0))
    items = sorted(found.items())
    return Matches(
        np.array([v[2] for _, v in items]),
        np.array([v[3] for _, v in items]),
        np.array([v[0] for _, v in items]),
        np.array([v[1] for _, v in items]),
    )


def plausible(
    dxa: FeatureMap, mr: FeatureMap, settings: ContrastiveSettings, max_shift_mm: float
) -> Callable[[Matrix3], bool]:
    """The dense method's priors as a test of a rigid DXA->MR map (for RANSAC's hypotheses).

    A map is plausible when its rotation is within ``angle_range + angle_step`` degrees
    and it puts the MR map's centre within ``max_shift_mm`` (per axis; 0: any) of the DXA
    map's centre, as the dense search assumes. Two matched cells always fit some rigid
    map; these priors keep RANSAC from building consensus on a 40-degree turn or a
    half-body shift.
    """
    limit = settings.angle_range + settings.angle_step
    centre_d = dxa.world(((np.asarray(dxa.shape) - 1) / 2.0)[None])[0]
    centre_m = mr.world(((np.asarray(mr.shape) - 1) / 2.0)[None])[0]

    def accept(matrix: Matrix3) -> bool:
        if abs(geometry.angle_of(matrix)) > limit:
            return False
        if max_shift_mm <= 0:
            return True
        # The MR centre seen in DXA world, against the DXA centre.
        back = geometry.apply(np.linalg.inv(matrix), centre_m[None])[0]
        return bool(np.all(np.abs(back - centre_d) <= max_shift_mm))

    return accept


def estimate_salient(
    model: DualEncoder,
    dxa: ChannelImage,
    mr: ChannelImage,
    settings: ContrastiveSettings,
    *,
    seed: int = 0,
    device: str = "cpu",
    dxa_map: FeatureMap | None = None,
    mr_map: FeatureMap | None = None,
) -> Estimate:
    """``contrastive-salient`` on prepared images (falls back to dense with too few inliers).

    ``dxa_map``/``mr_map``: the images' feature maps when already computed (at 0 degrees).
    """
    fd = dxa_map or encode(model, dxa, "dxa", device=device)
    fm = mr_map or encode(model, mr, "mr", device=device)
    dense: Estimate | None = None
    if settings.guide == "dense":
        dense = estimate_dense(model, dxa, mr, settings, device=device, dxa_map=fd)
    matches = match_salient(fd, fm, settings, guide=None if dense is None else dense.matrix)
    cell_mm = float(np.linalg.norm(fd.grid[:2, 0]))
    n = len(matches.similarity)
    extras: dict[str, Any] = {"n_matches": n, "guide": settings.guide}
    if n >= settings.min_inliers:
        src = fd.world(matches.dxa_cells)
        dst = fm.world(matches.mr_cells)
        rng = np.random.default_rng(seed)
        accept = plausible(fd, fm, settings, _max_shift(model, settings))
        _, inliers = geometry.ransac_rigid(
            src,
            dst,
            threshold=settings.ransac_threshold_cells * cell_mm,
            iterations=settings.ransac_iterations,
            rng=rng,
            accept=accept,
        )
        extras["n_ransac_inliers"] = int(inliers.sum())
        if inliers.sum() >= settings.min_inliers:
            matrix, keep = geometry.lmeds_rigid(
                src[inliers],
                dst[inliers],
                iterations=settings.ransac_iterations,
                rng=rng,
                accept=accept,
            )
            used_src, used_dst = src[inliers][keep], dst[inliers][keep]
            spread = float(np.max(np.ptp(used_src, axis=0))) if len(used_src) else 0.0
            extras["n_inliers"] = int(keep.sum())
            extras["inlier_spread_mm"] = round(spread, 1)
            if (
                keep.sum() >= settings.min_inliers
                and spread >= settings.min_spread_cells * cell_mm
                and accept(matrix)
            ):
                residual = np.linalg.norm(geometry.apply(matrix, used_src) - used_dst, axis=1)
                extras["rms_residual_mm"] = float(np.sqrt(np.mean(residual**2)))
                extras["fallback"] = None
                extras[CSV_COLUMNS_KEY] = {"salient_fallback": 0.0}
                return Estimate(
                    matrix,
                    float(matches.similarity[inliers][keep].mean()),
                    extras,
                    used_src,
                    used_dst,
                )
    if dense is None:
        dense = estimate_dense(model, dxa, mr, settings, device=device, dxa_map=fd)
    extras["n_inliers"] = 0
    dense.extras.update(extras, fallback="dense", **{CSV_COLUMNS_KEY: {"salient_fallback": 1.0}})
    return dense


# --- the methods ------------------------------------------------------------------------------


def oriented_pair(
    model: DualEncoder,
    fixed: ChannelImage,
    moving: ChannelImage,
    fixed_modality: str,
    *,
    device: str = "cpu",
) -> tuple[str, float | None]:
    """Which image is the DXA: ``fixed_modality`` unless ``auto``; then the better-scoring one.

    Returns:
        ``dxa`` or ``mr`` (the fixed image's modality) and, for ``auto``, the winning
        similarity margin.
    """
    if fixed_modality != "auto":
        return fixed_modality, None
    config = model.config
    fits = {
        "dxa": fixed.channels == config.dxa_channels and moving.channels == config.mr_channels,
        "mr": fixed.channels == config.mr_channels and moving.channels == config.dxa_channels,
    }
    if not any(fits.values()):
        raise InputError(
            f"the contrastive model reads {config.dxa_channels}-channel DXA and "
            f"{config.mr_channels}-channel MR images; got {fixed.channels} and {moving.channels}"
        )
    if fits["dxa"] != fits["mr"]:
        return ("dxa" if fits["dxa"] else "mr"), None
    scores = {}
    for name, (d, m) in {"dxa": (fixed, moving), "mr": (moving, fixed)}.items():
        scores[name] = dense_peak(
            encode(model, d, "dxa", device=device),
            encode(model, m, "mr", device=device),
            max_shift_mm=model.config.max_shift_mm,
        ).value
    best = max(scores, key=scores.__getitem__)
    return best, float(scores[best] - min(scores.values()))


def channel_image(image: Image) -> ChannelImage:
    """The method input as a prepared channel image (see :func:`as_channels`)."""
    return prepare(as_channels(image))


def pull_back(
    moving: ChannelImage, initial: Transform | None, fixed: ChannelImage
) -> ChannelImage:
    """The moving image in the initial transform's fixed frame: ``moving'(x) = moving(A(x))``.

    A linear ``A`` only changes the affine (no resampling, the whole field of view is
    kept); a deformable one is resampled onto the fixed grid.
    """
    if initial is None:
        return moving
    if initial.is_linear:
        return ChannelImage(moving.data, np.linalg.inv(initial.as_affine()) @ moving.affine)
    # Deformable: pull the moving channels through it onto the fixed grid.
    ij = np.indices(fixed.shape, dtype=np.float64).reshape(2, -1)
    world = fixed.grid @ np.vstack([ij, np.ones(ij.shape[1])])
    points = np.c_[world[:2].T, np.zeros(ij.shape[1])]
    mapped = initial.map_points(points)[:, :2]
    voxel = np.linalg.solve(moving.grid, np.vstack([mapped.T, np.ones(len(mapped))]))[:2]
    channels = [
        ndimage.map_coordinates(c, voxel, order=1, mode="constant").reshape(fixed.shape)
        for c in moving.data
    ]
    return ChannelImage(np.stack(channels), fixed.affine)


def to_transform(matrix3: npt.NDArray[np.floating], ndim: int) -> Transform:
    """A 2D rigid 3x3 (x, y) map as a Transform of the images' dimensionality (z unchanged)."""
    m = np.eye(4)
    m[np.ix_([0, 1], [0, 1])] = matrix3[:2, :2]
    m[[0, 1], 3] = matrix3[:2, 2]
    return Transform.from_affine(m, ndim=ndim)


def _points3(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.c_[points, np.zeros(len(points))] if len(points) else np.zeros((0, 3))


class ContrastiveMethod(BaseMethod):
    """``contrastive-dense`` / ``contrastive-salient``: rigid 2D from contrastive features."""

    deformable = False
    #: The family whose weights ``model`` names.
    family: ClassVar[str] = "contrastive"

    def __init__(
        self,
        name: str,
        *,
        model: str | Path | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        if name not in ("contrastive-dense", "contrastive-salient"):
            raise ValueError(f"unknown contrastive method {name!r}")
        self.name = name
        self.model_path = model
        self.settings: ContrastiveSettings = parse_settings(ContrastiveSettings, params)

    def encoder(self, device: str) -> DualEncoder:
        return load_model(self.model_path, family=self.family, device=device)[0]

    def estimate(
        self, model: DualEncoder, dxa: ChannelImage, mr: ChannelImage, seed: int, device: str
    ) -> Estimate:
        """The DXA->MR estimate of this method on prepared images."""
        if self.name == "contrastive-dense":
            return estimate_dense(model, dxa, mr, self.settings, device=device)
        return estimate_salient(model, dxa, mr, self.settings, seed=seed, device=device)

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
        del threads  # torch's thread count is set process-wide (mmreg.runtime)
        model = self.encoder(device)
        fixed_c = channel_image(fixed)
        moving_c = pull_back(channel_image(moving), initial, fixed_c)
        fixed_is, margin = oriented_pair(
            model, fixed_c, moving_c, self.settings.fixed_modality, device=device
        )
        dxa, mr = (fixed_c, moving_c) if fixed_is == "dxa" else (moving_c, fixed_c)
        est = self.estimate(model, dxa, mr, seed, device)
        dxa_to_mr = est.matrix
        estimate: npt.NDArray[np.floating]
        if fixed_is == "dxa":
            estimate, fixed_pts, moving_pts = dxa_to_mr, est.dxa_points, est.mr_points
        else:
            estimate, fixed_pts, moving_pts = (
                np.linalg.inv(dxa_to_mr),
                est.mr_points,
                est.dxa_points,
            )
        refinement = to_transform(estimate, fixed.ndim)
        transform = refinement if initial is None else refinement.then(initial)
        moving_world = _points3(moving_pts)
        if initial is not None and len(moving_world):
            moving_world = initial.map_points(moving_world)  # back to the moving image's world
        extras = {
            "fixed_modality": fixed_is,
            "modality_margin": margin,
            "similarity": float(est.similarity),
            "rotation_deg": geometry.angle_of(dxa_to_mr),
            "keypoints_fixed": np.round(_points3(fixed_pts), 3).tolist(),
            "keypoints_moving": np.round(moving_world, 3).tolist(),
            **est.extras,
        }
        return transform, extras


def _factory(name: str) -> Any:
    def make(
        model: str | Path | None = None, params: dict[str, str] | None = None
    ) -> ContrastiveMethod:
        return ContrastiveMethod(name, model=model, params=params)

    make.__name__ = f"make_{name.replace('-', '_')}"
    return make


for _name in ("contrastive-dense", "contrastive-salient"):
    register_factory(_name, _factory(_name), replace=True, model_family="contrastive")
