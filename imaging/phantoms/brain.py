"""Brain phantom: T1w, T2w and PDw scans of synthetic subjects made from a real template.

The anatomy comes from the MNI ICBM152 2009a symmetric template shipped at
2 mm in ``mmreg/data`` (see ``TEMPLATE_LICENSE.md`` there, and
:mod:`mmreg.imaging.phantoms.make_template`). Each subject is the template
under a random affine (head size and position) and a random smooth
deformation. The fixed T1w scan is sampled from it directly; the moving T2w
and PDw scans (same pose as each other, their own grid) see the subject after
a small extra smooth deformation and a random rigid pose. Intensities come
from tissue partial-volume maps with per-contrast tissue values, a smooth
multiplicative bias field and Rician noise.

Coordinate chain (all world coordinates RAS mm). For a fixed point ``x``::

    MNI point   m = a + u(a),  a = A x                 (A affine, u smooth)
    moving point y = P (x + d(x))                      (P rigid, d smooth)

``d`` is the inverse of the extra deformation ``v`` used to sample the moving
scans (a moving point ``y`` shows the anatomy at fixed point
``z + v(z)``, ``z = P^-1 y``). ``P`` and ``d`` together are the true
fixed->moving transform (ITK convention: it maps fixed points to moving
points). Landmarks are placed in MNI space and mapped forward through the
inverses of the sampling maps, so they sit on the same anatomy in every
image.

Only NumPy and SciPy are used; nothing here depends on a registration engine.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mmreg.imaging.image import Grid, Image
from mmreg.typing import Matrix4, Points

#: Label table of the phantom's label maps (``index -> name``).
BRAIN_LABELS: dict[int, str] = {
    0: "background",
    1: "csf",
    2: "cortex_left",
    3: "cortex_right",
    4: "white_matter_left",
    5: "white_matter_right",
    6: "deep_gray_left",
    7: "deep_gray_right",
    8: "lateral_ventricle_left",
    9: "lateral_ventricle_right",
    10: "cerebellum",
    11: "brainstem",
}

#: Anatomical landmarks in MNI ICBM152 2009a space (RAS mm), read off the template.
MNI_LANDMARKS: dict[str, tuple[float, float, float]] = {
    "anterior_commissure": (0.0, 2.0, -4.0),
    "posterior_commissure": (0.0, -25.0, -2.0),
    "genu_corpus_callosum": (0.0, 27.0, 4.0),
    "splenium_corpus_callosum": (0.0, -38.0, 13.0),
    "frontal_horn_left": (-7.0, 10.0, 15.0),
    "frontal_horn_right": (7.0, 10.0, 15.0),
    "ventricular_atrium_left": (-24.0, -41.0, 14.0),
    "ventricular_atrium_right": (24.0, -41.0, 14.0),
    "fourth_ventricle": (0.0, -42.0, -29.0),
    "temporal_pole_left": (-40.0, 14.0, -30.0),
    "temporal_pole_right": (40.0, 14.0, -30.0),
}

#: Modality suffixes of the phantom's scans; the first is the fixed image.
MODALITIES: tuple[str, ...] = ("T1w", "T2w", "PDw")

TEMPLATE_FILES = {
    "t1": "mni_icbm152_2009a_sym_2mm_T1w.nii.gz",
    "gm": "mni_icbm152_2009a_sym_2mm_probseg-GM.nii.gz",
    "wm": "mni_icbm152_2009a_sym_2mm_probseg-WM.nii.gz",
}

_TISSUES = ("csf", "gm", "wm", "skull", "scalp")


@dataclass(frozen=True)
class TissueContrast:
    """Signal of each tissue in one contrast (arbitrary units, WM of T1w ~ 800).

    ``texture`` scales the template T1's detail that the tissue maps do not
    explain (deep grey matter, vessels, dura) into this contrast; negative
    values invert it, as T2 weighting does.
    """

    csf: float
    gm: float
    wm: float
    skull: float
    scalp: float
    texture: float

    def values(self) -> npt.NDArray[np.float64]:
        return np.array([getattr(self, t) for t in _TISSUES])


#: Tissue signal per contrast: T1w WM > GM > CSF; T2w CSF > GM > WM; PDw GM > WM, CSF moderate.
CONTRASTS: dict[str, TissueContrast] = {
    "T1w": TissueContrast(csf=220, gm=520, wm=800, skull=60, scalp=720, texture=1.0),
    "T2w": TissueContrast(csf=1000, gm=600, wm=420, skull=50, scalp=430, texture=-0.8),
    "PDw": TissueContrast(csf=700, gm=820, wm=660, skull=90, scalp=760, texture=-0.3),
}


@dataclass(frozen=True)
class BrainTemplate:
    """The 2 mm template in MNI space: tissue maps, texture and labels.

    Attributes:
        grid: The template grid (MNI ICBM152 2009a, RAS mm).
        tissues: ``(5,) + grid.shape`` partial-volume maps of CSF, GM, WM,
            skull and scalp (the last two synthetic: the template is skull-stripped).
        texture: Template T1 detail not explained by the tissue maps, in units
            of the T1 WM-CSF contrast.
        labels: Label map (see :data:`BRAIN_LABELS`).
    """

    grid: Grid
    tissues: npt.NDArray[np.float32]
    texture: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int16]


@dataclass(frozen=True)
class BrainSubject:
    """One synthetic subject: three scans, their labels, landmarks and the true transform.

    Attributes:
        seed: The seed it was generated from.
        t1w: Fixed T1-weighted scan.
        t2w: Moving T2-weighted scan.
        pdw: Moving PD-weighted scan (same grid and pose as ``t2w``).
        labels_fixed: Labels on the T1w grid (int32, :data:`BRAIN_LABELS`).
        labels_moving: Labels on the shared T2w/PDw grid.
        landmarks_fixed: ``name -> xyz`` (RAS mm) in T1w world space.
        landmarks_moving: ``name -> xyz`` in the T2w/PDw world space.
        pose: Rigid 4x4 part of the true fixed->moving map (RAS, fixed point -> moving point).
        displacement_grid: Grid (in fixed world space) of ``displacement``.
        displacement: ``displacement_grid.shape + (3,)`` vectors ``d`` (RAS mm); the true
            fixed->moving map is ``y = pose @ (x + d(x))`` with ``d`` linearly interpolated.
        metadata: JSON-serialisable generation parameters.
    """

    seed: int
    t1w: Image
    t2w: Image
    pdw: Image
    labels_fixed: Image
    labels_moving: Image
    landmarks_fixed: dict[str, npt.NDArray[np.float64]]
    landmarks_moving: dict[str, npt.NDArray[np.float64]]
    pose: Matrix4
    displacement_grid: Grid
    displacement: npt.NDArray[np.float32]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> dict[str, Image]:
        """Scans by modality suffix."""
        return {"T1w": self.t1w, "T2w": self.t2w, "PDw": self.pdw}

    @property
    def labels(self) -> dict[str, Image]:
        """Label maps by modality suffix."""
        return {"T1w": self.labels_fixed, "T2w": self.labels_moving, "PDw": self.labels_moving}

    @property
    def landmarks(self) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
        """Landmarks by modality suffix."""
        moving = self.landmarks_moving
        return {"T1w": self.landmarks_fixed, "T2w": moving, "PDw": moving}

    def fixed_to_moving(self, points: npt.ArrayLike) -> Points:
        """Map fixed-space points ``(N, 3)`` to moving space with the true transform."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        moved = pts + _eval_field(self.displacement_grid, self.displacement, pts)
        return _apply_affine(self.pose, moved)


# --------------------------------------------------------------------------- template


def _read_packaged(name: str) -> tuple[npt.NDArray[np.float32], Matrix4]:
    resource = importlib.resources.files("mmreg").joinpath("data", name)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(resource.read_bytes()))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _world(grid: Grid) -> npt.NDArray[np.float64]:
    """World coordinates of every voxel of an axis-aligned grid, ``shape + (3,)``."""
    axes = [np.arange(n, dtype=np.float64) for n in grid.shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return _apply_affine(grid.affine, ijk)


def _head_shell(inside: npt.NDArray[np.bool_], spacing: float) -> tuple[np.ndarray, ...]:
    """Synthetic extra-cerebral CSF, skull and scalp around a skull-stripped brain.

    The template ends below the brainstem, so the mask is extended downwards
    first: the shell then stays open at the neck instead of closing under it.
    """
    pad = 12
    padded = np.pad(inside, ((0, 0), (0, 0), (pad, 0)), mode="edge")
    hull = ndimage.binary_closing(padded, ndimage.generate_binary_structure(3, 1), iterations=3)
    hull = ndimage.binary_fill_holes(hull)
    hull = ndimage.gaussian_filter(hull.astype(np.float32), 1.5) > 0.5
    dist = ndimage.distance_transform_edt(~hull, sampling=spacing)[..., pad:]

    def ramp(lo: float, hi: float) -> np.ndarray:
        # Soft shells (2 mm edges) so the layers have partial-volume boundaries.
        up = np.clip((dist - lo) / 2.0 + 0.5, 0, 1)
        down = np.clip((hi - dist) / 2.0 + 0.5, 0, 1)
        return (up * down).astype(np.float32)

    outside = ~inside
    return ramp(-1.0, 2.5) * outside, ramp(2.5, 8.0), ramp(8.0, 13.0)


def _template_labels(
    grid: Grid, csf: np.ndarray, gm: np.ndarray, wm: np.ndarray, inside: np.ndarray
) -> npt.NDArray[np.int16]:
    """Label map from tissue maps plus simple geometric rules in MNI space."""
    xyz = _world(grid)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0)
    brain = inside & ((csf + gm + wm) > 0.3)
    is_csf, is_gm, is_wm = brain & (tissue == 0), brain & (tissue == 1), brain & (tissue == 2)
    left = x < 0
    labels = np.zeros(grid.shape, np.int16)
    labels[is_csf] = 1
    labels[is_gm & left] = 2
    labels[is_gm & ~left] = 3
    labels[is_wm & left] = 4
    labels[is_wm & ~left] = 5

    # Deep grey matter: grey matter in the basal ganglia / thalamus box, away
    # from the midline (cingulate) and the insula.
    deep_box = (np.abs(x) > 3) & (np.abs(x) < 30) & (y > -36) & (y < 26) & (z > -12) & (z < 22)
    deep = is_gm & deep_box & (z < 22 - 0.25 * np.maximum(y, 0))
    labels[deep & left] = 6
    labels[deep & ~left] = 7

    # Lateral ventricles: CSF components in the central box that contain the
    # frontal-horn and atrium landmarks.
    vent_box = (np.abs(x) < 32) & (y > -52) & (y < 32) & (z > -6) & (z < 36) & (np.abs(x) > 0.5)
    comp, _ = ndimage.label(is_csf & vent_box)
    ventricle_seeds = [MNI_LANDMARKS[k] for k in MNI_LANDMARKS if "horn" in k or "atrium" in k]
    idx = np.rint(grid.world_to_voxel(np.array(ventricle_seeds))).astype(int)
    ids = {int(comp[tuple(i)]) for i in idx} - {0}
    vent = np.isin(comp, list(ids))
    labels[vent & left] = 8
    labels[vent & ~left] = 9

    # Brainstem: a column tilted forward with height, in front of the fourth
    # ventricle, from the template's lower edge up to the midbrain.
    stem_y = -24.0 + 0.3 * (z + 10.0)
    stem = (is_gm | is_wm) & (np.abs(x) < 16) & (np.abs(y - stem_y) < 16) & (z < -8)
    stem &= y > -42
    labels[stem] = 11
    # Cerebellum: tissue below a tent-shaped tentorium (highest at the midline
    # near y = -55, falling laterally, backwards and forwards), behind the
    # brainstem; keep the components holding the vermis and both hemispheres.
    ax = np.abs(x)
    tent = 4.0 - 0.6 * ax - 0.8 * np.maximum(0, -58 - y) - 0.8 * np.maximum(0, y + 52)
    fossa = (is_gm | is_wm) & ~stem & (z < tent) & (y < -30 - 0.3 * ax)
    comp, _ = ndimage.label(fossa)
    cerebellum_seeds = np.array([[0.0, -64.0, -32.0], [-30.0, -66.0, -36.0], [30.0, -66.0, -36.0]])
    idx = np.rint(grid.world_to_voxel(cerebellum_seeds)).astype(int)
    cerebellum = np.isin(comp, list({int(comp[tuple(i)]) for i in idx} - {0}))
    labels[cerebellum] = 10
    return labels


@functools.cache
def load_template() -> BrainTemplate:
    """Load the shipped 2 mm template and derive tissue maps, texture and labels (cached)."""
    t1, affine = _read_packaged(TEMPLATE_FILES["t1"])
    gm = _read_packaged(TEMPLATE_FILES["gm"])[0] / 255.0
    wm = _read_packaged(TEMPLATE_FILES["wm"])[0] / 255.0
    grid = Grid(t1.shape, affine)
    inside = t1 > 4
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * inside
    gap, skull, scalp = _head_shell(inside, float(grid.spacing[0]))
    tissues = np.stack([csf + gap, gm, wm, skull, scalp]).astype(np.float32)

    # Texture: what a linear tissue model of the template T1 misses.
    brain = inside & ((gm + wm) > 0.02)
    design = np.stack([csf[brain], gm[brain], wm[brain]], axis=1)
    coef = np.linalg.lstsq(design, t1[brain], rcond=None)[0]
    fit = csf * coef[0] + gm * coef[1] + wm * coef[2]
    texture = np.where(inside, (t1 - fit) / max(coef[2] - coef[0], 1e-6), 0.0)
    texture = np.clip(texture, -0.5, 0.5).astype(np.float32)
    labels = _template_labels(grid, csf, gm, wm, inside)
    return BrainTemplate(grid, tissues, texture, labels)


# --------------------------------------------------------------------------- geometry


def _apply_affine(matrix: npt.NDArray[np.floating], points: npt.ArrayLike) -> Points:
    pts = np.asarray(points, dtype=np.float64)
    # Column-wise sums: far faster than ``pts @ M.T`` for millions of 3-vectors.
    out = np.empty_like(pts)
    for r in range(3):
        out[..., r] = (
            pts[..., 0] * matrix[r, 0]
            + pts[..., 1] * matrix[r, 1]
            + pts[..., 2] * matrix[r, 2]
            + matrix[r, 3]
        )
    return out


def _eval_field(grid: Grid, vectors: np.ndarray, points: np.ndarray) -> Points:
    """Linearly interpolate a vector field at world points ``(..., 3)`` (edge values outside)."""
    shape = points.shape
    ijk = _apply_affine(np.linalg.inv(grid.affine), points.reshape(-1, 3)).T
    out = np.empty((ijk.shape[1], 3))
    for c in range(3):
        out[:, c] = ndimage.map_coordinates(vectors[..., c], ijk, order=1, mode="nearest")
    return out.reshape(shape)


def _invert_field(
    grid: Grid, vectors: np.ndarray, points: np.ndarray, *, iterations: int = 40
) -> Points:
    """Solve ``z + v(z) = p`` for each point by fixed-point iteration (v smooth, small)."""
    z = np.array(points, dtype=np.float64)
    for _ in range(iterations):
        z_new = points - _eval_field(grid, vectors, z)
        if np.max(np.abs(z_new - z)) < 1e-6:
            return z_new
        z = z_new
    return z


def _random_field(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    max_mm: float,
    spacing: float = 6.0,
    sigma_mm: float = 16.0,
) -> tuple[Grid, npt.NDArray[np.float32]]:
    """Smoothed random displacements on a coarse grid over ``[lo, hi]``, peak norm ``max_mm``."""
    pad = 2 * sigma_mm
    lo = np.asarray(lo, float) - pad
    shape = tuple(int(np.ceil(s)) + 1 for s in (np.asarray(hi, float) + pad - lo) / spacing)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    noise = rng.standard_normal((*shape, 3))
    smooth = np.stack(
        [ndimage.gaussian_filter(noise[..., c], sigma_mm / spacing) for c in range(3)], axis=-1
    )
    # Taper to zero across the padding: the field then means the same whether
    # a consumer reads it as 0 outside its grid (ITK) or as edge-extended.
    for axis, n in enumerate(shape):
        ramp = np.minimum(np.arange(n), np.arange(n)[::-1]) * spacing / pad
        window = np.sin(0.5 * np.pi * np.clip(ramp, 0.0, 1.0)) ** 2
        smooth *= window.reshape([-1 if a == axis else 1 for a in range(3)] + [1])
    peak = np.max(np.linalg.norm(smooth, axis=-1))
    scale = max_mm / peak if peak > 0 else 0.0
    return Grid(shape, affine), (smooth * scale).astype(np.float32)


def _random_rotation(
    rng: np.random.Generator, max_deg: float, large: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    # A random axis and an angle of at least half the maximum: a near-identity pose
    # would make a subject useless for showing what registration does.
    axis = _unit_vector(rng)
    if large:
        angle = rng.uniform(-180.0, 180.0)
    else:
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(0.5 * max_deg, max_deg)
    rot = Rotation.from_rotvec(np.deg2rad(angle) * axis)
    return rot.as_matrix(), {"rotation_axis": axis.tolist(), "rotation_angle_deg": float(angle)}


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def _bbox_grid(points: np.ndarray, spacing: float, margins: np.ndarray, *, flip_x: bool) -> Grid:
    """Axis-aligned grid covering ``points`` plus per-side margins ``(2, 3)`` (mm)."""
    lo = points.min(0) - margins[0]
    hi = points.max(0) + margins[1]
    shape = tuple(int(np.ceil(e / spacing)) + 1 for e in hi - lo)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    if flip_x:
        # Store the first axis right-to-left (LAS), as many converters do, so
        # consumers must honour the affine rather than assume RAS order.
        affine[0, 0] = -spacing
        affine[0, 3] = lo[0] + (shape[0] - 1) * spacing
    return Grid(shape, affine)


# --------------------------------------------------------------------------- intensities


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic in normalised voxel coordinates."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, y * z, x * z]
    coef = rng.uniform(-1.0, 1.0, len(terms)) * strength / 3.0
    log_bias = sum(c * t for c, t in zip(coef, terms, strict=True))
    return np.exp(np.broadcast_to(log_bias, shape)).astype(np.float32)


def _sample(volume: np.ndarray, ijk: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(volume, ijk, order=order, mode="constant", cval=0.0)


def _contrast_volume(tpl: BrainTemplate, name: str, values: np.ndarray) -> np.ndarray:
    """Noise-free scan of the template in one contrast (sampling it is linear in the maps)."""
    clean = np.tensordot(values.astype(np.float32), tpl.tissues, axes=1)
    clean += CONTRASTS[name].texture * abs(values[2] - values[0]) * tpl.texture
    return np.maximum(clean, 0.0)


def _render(
    rng: np.random.Generator,
    tpl: BrainTemplate,
    mni_points: np.ndarray,
    grid: Grid,
    volumes: dict[str, np.ndarray],
    *,
    bias_strength: float,
    noise_frac: float,
) -> tuple[dict[str, Image], Image]:
    """Sample template-space ``volumes`` at ``mni_points`` (one per voxel of ``grid``)."""
    ijk = _apply_affine(np.linalg.inv(tpl.grid.affine), mni_points.reshape(-1, 3)).T
    labels = _sample(tpl.labels, ijk, 0).astype(np.int32).reshape(grid.shape)
    images = {}
    for name, volume in volumes.items():
        clean = _sample(volume, ijk, 1).reshape(grid.shape)
        clean *= _bias_field(rng, grid.shape, bias_strength)
        sigma = np.float32(noise_frac * float(volume.max()))
        real = clean + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
        images[name] = Image(np.hypot(real, imag).astype(np.float32), grid.affine)
    return images, Image(labels, grid.affine)


# --------------------------------------------------------------------------- generator


def generate_brain_subject(
    seed: int,
    *,
    max_rotation_deg: float = 20.0,
    max_translation_mm: float = 10.0,
    large_rotations: bool = False,
    anatomy_deformation_mm: float = 4.0,
    extra_deformation_mm: float = 4.0,
    fixed_spacing_mm: float = 2.0,
    moving_spacing_mm: float = 2.4,
    bias_strength: float = 0.2,
    noise_frac: float = 0.02,
) -> BrainSubject:
    """Generate one synthetic subject: fixed T1w, moving T2w and PDw, labels, landmarks.

    Args:
        seed: Seed of ``np.random.default_rng``; same seed, same subject.
        max_rotation_deg: Largest rotation of the moving scans (about a random axis;
            the angle is drawn between half of this and this).
        max_translation_mm: Largest translation of the moving scans (length drawn
            between half of this and this, in a random direction).
        large_rotations: Rotate the moving scans by up to 180 degrees about a
            random axis instead (``max_rotation_deg`` is then ignored).
        anatomy_deformation_mm: Peak displacement of the subject's deformation
            of the template.
        extra_deformation_mm: Peak displacement of the deformation between the
            fixed and the moving scans, like a distortion (0 for a purely rigid
            relation). At 4 mm, affine registration reaches Dice ~0.80 and SyN
            ~0.85 of a ~0.86 ceiling; at 1.5 mm affine is already at the ceiling.
        fixed_spacing_mm: Voxel size of the T1w grid.
        moving_spacing_mm: Voxel size of the shared T2w/PDw grid.
        bias_strength: Roughly the largest log-amplitude of the bias field.
        noise_frac: Rician noise sigma as a fraction of the brightest tissue.

    Returns:
        The subject; images are float32, label maps int32.

    Example:
        >>> s = generate_brain_subject(0)
        >>> s.t1w.spacing, s.t2w.spacing
        ((2.0, 2.0, 2.0), (2.4, 2.4, 2.4))
    """
    rng = np.random.default_rng(seed)
    tpl = load_template()

    # Subject anatomy: head size and position (A: fixed world -> template
    # space) and a smooth deformation u on top of it.
    scale = 1.0 + rng.uniform(-0.07, 0.07, 3)
    head_rot = Rotation.from_euler("xyz", rng.uniform(-5.0, 5.0, 3), degrees=True).as_matrix()
    head_shift = rng.uniform(-5.0, 5.0, 3)
    to_subject = np.eye(4)
    to_subject[:3, :3] = head_rot @ np.diag(scale)
    to_subject[:3, 3] = head_shift
    to_mni = np.linalg.inv(to_subject)
    head = _apply_affine(tpl.grid.affine, np.argwhere(tpl.tissues.sum(0) > 0.05).astype(float))
    u_grid, u = _random_field(
        rng, head.min(0), head.max(0), max_mm=anatomy_deformation_mm, sigma_mm=18.0
    )

    # Fixed grid around the subject's head (deformation bounded by its peak).
    head_fixed = _apply_affine(to_subject, head)
    margin = anatomy_deformation_mm * scale.max() + 4.0
    fixed_grid = _bbox_grid(head_fixed, fixed_spacing_mm, np.full((2, 3), margin), flip_x=False)

    # Extra deformation v between fixed and moving, and the rigid pose P.
    v_grid, v = _random_field(
        rng, head_fixed.min(0), head_fixed.max(0), max_mm=extra_deformation_mm, sigma_mm=14.0
    )
    rot, rot_meta = _random_rotation(rng, max_rotation_deg, large_rotations)
    shift = _unit_vector(rng) * rng.uniform(0.5 * max_translation_mm, max_translation_mm)
    centre = head_fixed.mean(0)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre + shift - rot @ centre
    # d = inverse of v on v's own grid: y = P (x + d(x)).
    nodes = _world(v_grid)
    disp = (_invert_field(v_grid, v, nodes) - nodes).astype(np.float32)

    # Moving grid around the posed head, with random extra field of view.
    margins = anatomy_deformation_mm + extra_deformation_mm + rng.uniform(2.0, 12.0, (2, 3))
    moving_grid = _bbox_grid(
        _apply_affine(pose, head_fixed), moving_spacing_mm, margins, flip_x=True
    )

    def fixed_to_mni(points: np.ndarray) -> np.ndarray:
        a = _apply_affine(to_mni, points)
        return a + _eval_field(u_grid, u, a)

    # Per-subject jitter of the tissue values, so contrasts vary across subjects.
    values = {
        name: CONTRASTS[name].values() * rng.uniform(0.94, 1.06, len(_TISSUES))
        for name in MODALITIES
    }
    volumes = {name: _contrast_volume(tpl, name, values[name]) for name in MODALITIES}
    fixed_mni = fixed_to_mni(_world(fixed_grid))
    fixed_images, labels_fixed = _render(
        rng,
        tpl,
        fixed_mni,
        fixed_grid,
        {"T1w": volumes["T1w"]},
        bias_strength=bias_strength,
        noise_frac=noise_frac,
    )
    z = _apply_affine(np.linalg.inv(pose), _world(moving_grid))
    moving_mni = fixed_to_mni(z + _eval_field(v_grid, v, z))
    moving_images, labels_moving = _render(
        rng,
        tpl,
        moving_mni,
        moving_grid,
        {"T2w": volumes["T2w"], "PDw": volumes["PDw"]},
        bias_strength=bias_strength,
        noise_frac=noise_frac,
    )

    # Landmarks: invert the sampling maps (u, then A; v, then P).
    names = list(MNI_LANDMARKS)
    mni = np.array([MNI_LANDMARKS[n] for n in names], dtype=np.float64)
    lm_fixed = _apply_affine(to_subject, _invert_field(u_grid, u, mni))
    lm_moving = _apply_affine(pose, _invert_field(v_grid, v, lm_fixed))

    metadata: dict[str, Any] = {
        "generator": "mmreg.imaging.phantoms.brain.generate_brain_subject",
        "seed": int(seed),
        "template": "MNI ICBM152 2009a symmetric (2 mm)",
        "head_scale": scale.tolist(),
        "anatomy_deformation_mm": anatomy_deformation_mm,
        "extra_deformation_mm": extra_deformation_mm,
        "max_rotation_deg": max_rotation_deg,
        "large_rotations": large_rotations,
        **rot_meta,
        "translation_mm": shift.tolist(),
        "pose_fixed_to_moving_ras": pose.tolist(),
        "fixed_spacing_mm": fixed_spacing_mm,
        "moving_spacing_mm": moving_spacing_mm,
        "bias_strength": bias_strength,
        "noise_frac": noise_frac,
        "tissue_values": {
            k: dict(zip(_TISSUES, map(float, vals), strict=True)) for k, vals in values.items()
        },
    }
    return BrainSubject(
        seed=int(seed),
        t1w=fixed_images["T1w"],
        t2w=moving_images["T2w"],
        pdw=moving_images["PDw"],
        labels_fixed=labels_fixed,
        labels_moving=labels_moving,
        landmarks_fixed=dict(zip(names, lm_fixed, strict=True)),
        landmarks_moving=dict(zip(names, lm_moving, strict=True)),
        pose=pose,
        displacement_grid=v_grid,
        displacement=disp,
        metadata=metadata,
    )
