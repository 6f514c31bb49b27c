"""Dixon MR renderer of the whole-body phantom: tissue map, fat and water, evaluation labels.

The scene is painted onto an axis-aligned MR grid (:class:`MrSampler` maps its
voxels to the body frame): envelopes by layer, then cavities and organs over
the tissues they may replace, then bones. Each tissue gets its (per-subject
jittered) fat and water signal; the viscera get a texture of fat depots; a
smooth bias field and magnitude noise follow. The MR is acquired with thick
slices and resampled to isotropic along superior-inferior (:func:`upsample_z`).

Example:
    >>> upsample_z(np.arange(3, dtype=np.float32)[None, None], 2, 5)[0, 0].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.imaging.phantoms.wholebody.anatomy import Anatomy
from mmreg.imaging.phantoms.wholebody.scene import Scene
from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import FloatArray, Shape
from mmreg.imaging.phantoms.wholebody.tissues import MR_SIGNAL, Tissue


class MrSampler:
    """Body-frame coordinates of an axis-aligned MR grid (``M = R (B - o) + t``)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        origin: np.ndarray,
        rot: np.ndarray,
        shift: np.ndarray,
        centre: np.ndarray,
    ) -> None:
        self.shape, self.spacing, self.origin = shape, np.asarray(spacing), np.asarray(origin)
        self.rot, self.shift, self.centre = rot, shift, centre
        xm, ym, zm = (origin[a] + spacing[a] * np.arange(shape[a]) for a in range(3))
        dx, dz = xm - shift[0], zm - shift[2]
        # B = R^T (M - t) + o, and R mixes only x and z.
        self.xb = (rot[0, 0] * dx[:, None] + rot[2, 0] * dz[None, :] + centre[0]).astype(
            np.float32
        )
        self.zb = (rot[0, 2] * dx[:, None] + rot[2, 2] * dz[None, :] + centre[2]).astype(
            np.float32
        )
        self.yb = (ym - shift[1] + centre[1]).astype(np.float32)

    def box(self, bbox: np.ndarray) -> tuple[slice, slice, slice] | None:
        """The voxels under a body-frame bounding box, ``None`` if off the grid."""
        corners = np.array(np.meshgrid(*bbox.T, indexing="ij")).reshape(3, -1).T
        world = (corners - self.centre) @ self.rot.T + self.shift
        ijk = (world - self.origin) / self.spacing
        lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, self.shape)
        if np.any(hi <= lo):
            return None
        return (
            slice(int(lo[0]), int(hi[0])),
            slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])),
        )

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Broadcastable body-frame ``x, y, z`` of the voxels in ``box``."""
        i, j, k = box
        return self.xb[i, k][:, None, :], self.yb[j][None, :, None], self.zb[i, k][:, None, :]


def paint(
    volume: np.ndarray,
    sampler: MrSampler,
    shape: Shape,
    value: int,
    *,
    into: np.ndarray | None = None,
    where: Callable[[FloatArray], npt.NDArray[np.bool_]] | None = None,
    exclude: Shape | None = None,
) -> None:
    """Set ``volume`` to ``value`` inside ``shape`` (optionally only over tissues ``into``,
    only where ``where(z)``, and not inside ``exclude``)."""
    box = sampler.box(shape.bbox())
    if box is None:
        return
    x, y, z = sampler.coords(box)
    mask = shape.inside(x, y, z)
    if exclude is not None:
        mask &= ~exclude.inside(x, y, z)
    if where is not None:
        mask &= where(z)
    view = volume[box]
    if into is not None:
        mask &= into[view]
    view[mask] = value


def _resize_linear(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a small array onto ``shape`` (end points aligned)."""
    out = coarse
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        pos = np.linspace(0.0, m - 1.0, n)
        lo = np.minimum(np.floor(pos).astype(int), m - 2)
        weights = np.zeros((n, m), np.float32)
        weights[np.arange(n), lo] = 1.0 - (pos - lo)
        weights[np.arange(n), lo + 1] = pos - lo
        out = np.moveaxis(np.tensordot(weights, out, axes=([1], [axis])), 0, axis)
    return out


def _texture(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Smooth random field (unit variance): noise on a 10 mm grid, smoothed, interpolated."""
    coarse_shape = tuple(max(3, math.ceil(n * spacing / 10.0) + 1) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.8)
    coarse /= max(float(coarse.std()), 1e-6)
    return _resize_linear(coarse.astype(np.float32), shape)


def upsample_z(volume: np.ndarray, factor: int, n_out: int) -> np.ndarray:
    """Linear interpolation along the last axis, ``factor`` output slices per input slice."""
    if factor == 1:
        return volume[..., :n_out]
    out = np.empty((*volume.shape[:2], n_out), volume.dtype)
    for r in range(factor):
        part = out[..., r::factor]
        n = part.shape[2]
        if r == 0:
            part[...] = volume[..., :n]
        else:
            # In place: no full-size temporaries.
            w = np.float32(r / factor)
            np.multiply(volume[..., :n], np.float32(1.0) - w, out=part)
            part += w * volume[..., 1 : n + 1]
    return out


def _lut(codes: tuple[Tissue, ...]) -> np.ndarray:
    """Lookup table over tissue codes: True for ``codes``."""
    lut = np.zeros(256, bool)
    lut[list(codes)] = True
    return lut


def _paint_tissues(scene: Scene, sampler: MrSampler) -> np.ndarray:
    """The tissue map (:class:`Tissue`, uint8): envelopes, organs, then bones."""
    tissue = np.zeros(sampler.shape, np.uint8)
    for env in scene.envelopes:
        box = sampler.box(env.outer.bbox())
        if box is None:
            continue
        # Skin 1, fat 2, muscle 3: the count of surfaces a voxel is inside.
        x, y, z = sampler.coords(box)
        layer = env.outer.inside(x, y, z).view(np.uint8)
        layer = layer + env.skin.inside(x, y, z).view(np.uint8)
        layer += env.muscle.inside(x, y, z).view(np.uint8)
        view = tissue[box]
        np.maximum(view, layer, out=view)
    for organ in scene.cavities + scene.organs:
        paint(tissue, sampler, organ.shape, organ.tissue, into=_lut(organ.into))
    discs = scene.disc_mask
    for bone in scene.bones:
        not_disc = (lambda z: ~discs(z)) if bone.discs else None
        if bone.marrow is None and bone.inner is not None:
            paint(tissue, sampler, bone.outer, bone.cortex, where=not_disc, exclude=bone.inner)
            continue
        paint(tissue, sampler, bone.outer, bone.cortex, where=not_disc)
        if bone.discs and bone.group == "spine_body":
            paint(tissue, sampler, bone.outer, Tissue.DISC, where=discs)
        if bone.inner is not None and bone.marrow is not None:
            paint(tissue, sampler, bone.inner, bone.marrow, where=not_disc)
    return tissue


def _signal(anat: Anatomy) -> np.ndarray:
    """``(n_tissues, 2)`` fat and water per tissue: jittered per subject, liver fat too."""
    signal = np.array([MR_SIGNAL[Tissue(i)] for i in range(len(Tissue))]) * anat.tissue_jitter
    signal[Tissue.LIVER] = (900.0 * anat.liver_fat, 800.0 * (1.0 - anat.liver_fat))
    return signal


def _add_visceral_fat(
    fat: np.ndarray,
    water: np.ndarray,
    tissue: np.ndarray,
    signal: np.ndarray,
    scene: Scene,
    anat: Anatomy,
    sampler: MrSampler,
    rng: np.random.Generator,
) -> None:
    """Adipose depots (fat ~ subcutaneous) between bowel loops (water), a fraction
    ``visceral_fat`` of the viscera, mixed only at their borders."""
    box = sampler.box(scene.visceral.bbox())
    if box is None:
        return
    shape = tuple(s.stop - s.start for s in box)
    field = _texture(rng, shape, abs(float(sampler.spacing[0])))
    level = np.quantile(field[::2, ::2, ::2], 1.0 - anat.visceral_fat)
    vis = (tissue[box] == Tissue.VISCERA) * (0.5 + 0.5 * np.tanh((field - level) / 0.1))
    fat[box] += signal[Tissue.FAT, 0] * vis
    water[box] += (signal[Tissue.FAT, 1] - signal[Tissue.VISCERA, 1]) * vis


def _bias_and_noise(
    channels: tuple[np.ndarray, ...],
    shape: tuple[int, int, int],
    settings: WholeBodySettings,
    rng: np.random.Generator,
) -> None:
    """Smooth multiplicative bias (one coil, all channels) and magnitude noise, in place."""
    profiles = []
    for n in shape:
        u = np.linspace(-1.0, 1.0, n, dtype=np.float32)
        c1, c2 = rng.uniform(-1.0, 1.0, 2) * settings.mr_bias / 2.0
        profiles.append(np.exp(c1 * u + c2 * (u * u - 1.0 / 3.0)).astype(np.float32))
    # Separable: two passes over the volume instead of building a 3D field.
    bias_xy = (profiles[0][:, None] * profiles[1][None, :])[:, :, None]
    sigma = np.float32(settings.mr_noise * 1000.0)
    for channel in channels:
        channel *= bias_xy
        channel *= profiles[2]
        noise = rng.standard_normal(channel.shape, dtype=np.float32)
        noise *= sigma
        channel += noise
        np.abs(channel, out=channel)


def _evaluation_labels(scene: Scene, full: MrSampler) -> np.ndarray:
    """Labels at full resolution: pelvic cavity (inside the torso muscle), then pelvis,
    then spine."""
    labels = np.zeros(full.shape, np.uint8)
    paint(labels, full, scene.cavity, 3)
    box = full.box(scene.cavity.bbox())
    if box is not None:
        x, y, z = full.coords(box)
        view = labels[box]
        view[(view == 3) & ~scene.body_lean.inside(x, y, z)] = 0
    for structure in (2, 1):
        for bone in scene.bones:
            if bone.structure == structure:
                paint(labels, full, bone.outer, structure)
    return labels


def render_mr(
    scene: Scene,
    anat: Anatomy,
    sampler: MrSampler,
    full: MrSampler,
    settings: WholeBodySettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paint the tissue map on the acquisition grid (``sampler``); fat and water there;
    evaluation labels on the ``full`` grid."""
    tissue = _paint_tissues(scene, sampler)
    signal = _signal(anat)
    fat = signal[:, 0].astype(np.float32)[tissue]
    water = signal[:, 1].astype(np.float32)[tissue]
    _add_visceral_fat(fat, water, tissue, signal, scene, anat, sampler, rng)
    _bias_and_noise((fat, water), sampler.shape, settings, rng)
    return tissue, fat, water, _evaluation_labels(scene, full)
