"""The whole-body subject: anatomy drawn, scenes placed for the two scans, both rendered.

:func:`generate_wholebody_subject` draws a subject's anatomy
(:mod:`.anatomy`) and two poses (:mod:`.scene`), places the MR field of view
(a rotation in the coronal plane, a translation, neck to knees), renders the
DXA (:mod:`.dxa`) and the Dixon MR (:mod:`.mr`) and records the ground truth:
landmarks in both worlds, the true DXA -> MR and DXA -> MR-slice maps and the
spine's centre line. The random draws come in a fixed order, so a seed gives
the same subject on every machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mmreg.imaging.image import Grid, Image
from mmreg.imaging.phantoms.wholebody.anatomy import Anatomy, BodyProfiles, draw_anatomy
from mmreg.imaging.phantoms.wholebody.dxa import render_dxa
from mmreg.imaging.phantoms.wholebody.mr import MrSampler, render_mr, upsample_z
from mmreg.imaging.phantoms.wholebody.scene import Scene, build_scene, draw_poses
from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import point, rot_y
from mmreg.typing import Matrix4, Points


@dataclass(frozen=True)
class WholeBodySubject:
    """One synthetic subject: DXA and Dixon MR, labels, landmarks and the true maps.

    Attributes:
        seed: The seed it was generated from.
        dxa_bone: 2D DXA bone channel (areal bone mineral density, g/cm^2).
        dxa_tissue: 2D DXA soft-tissue channel (areal density, g/cm^2).
        mr_fat: 3D Dixon fat image.
        mr_water: 3D Dixon water image (same grid as ``mr_fat``).
        dxa_labels: Evaluation labels on the DXA grid (:data:`WHOLEBODY_LABELS`).
        mr_labels: Evaluation labels on the MR grid.
        mr_tissues: Tissue classes (:class:`Tissue`, uint8) on the MR grid
            (nearest from the acquired slices).
        landmarks_dxa: ``name -> (x, y, 0)`` in the 2D DXA world.
        landmarks_mr: ``name -> (x, y, z)`` in the MR world.
        dxa_to_mr: 4x4 map from the 3D DXA frame (``D.x, B.y, D.z``) to MR world.
        dxa_to_mr_slice: 4x4 2D rigid map from the DXA world to the MR slice world
            (fixed DXA point -> moving MR-slice point, the ITK convention).
        spine_path_mr: ``(N, 3)`` centre line of the vertebral bodies (S1 up to
            C2, 1 mm steps) in MR world; empty without a spine.
        metadata: JSON-serialisable generation parameters.
    """

    seed: int
    dxa_bone: Image
    dxa_tissue: Image
    mr_fat: Image
    mr_water: Image
    dxa_labels: Image
    mr_labels: Image
    mr_tissues: Image
    landmarks_dxa: dict[str, npt.NDArray[np.float64]]
    landmarks_mr: dict[str, npt.NDArray[np.float64]]
    dxa_to_mr: Matrix4
    dxa_to_mr_slice: Matrix4
    spine_path_mr: Points
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def landmarks_mr_slice(self) -> dict[str, npt.NDArray[np.float64]]:
        """Landmarks in the 2D MR-slice world: ``(M.x, M.z, 0)``."""
        return {k: np.array([v[0], v[2], 0.0]) for k, v in self.landmarks_mr.items()}

    def dxa_to_mr_slice_points(self, points: npt.ArrayLike) -> Points:
        """Map 2D DXA world points ``(N, 3)`` (z = 0) to the MR-slice world."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return pts @ self.dxa_to_mr_slice[:3, :3].T + self.dxa_to_mr_slice[:3, 3]


@dataclass(frozen=True)
class _MrPlacement:
    """Where the MR is: ``M = R (B - o_M) + t``, and its acquisition and full grids."""

    angle: float  # in-plane rotation (degrees)
    rot: npt.NDArray[np.float64]  # R
    shift: npt.NDArray[np.float64]  # t
    centre: npt.NDArray[np.float64]  # o_M, the body point at the field-of-view centre
    origin: npt.NDArray[np.float64]  # world position of voxel (0, 0, 0)
    spacing: float
    acq: MrSampler  # the acquired (thick-slice) grid
    full: MrSampler  # the isotropic grid

    def to_mr(self, points: np.ndarray) -> np.ndarray:
        """Body-frame points to MR world."""
        return (np.atleast_2d(points) - self.centre) @ self.rot.T + self.shift

    @property
    def affine(self) -> Matrix4:
        """The full grid's affine: stored left-right flipped (LAS)."""
        sp = self.spacing
        affine = np.diag([-sp, sp, sp, 1.0])
        affine[:3, 3] = self.origin
        return affine


def _place_mr(
    rng: np.random.Generator, height: float, scene: Scene, settings: WholeBodySettings
) -> _MrPlacement:
    """Draw the MR pose (rotation in the coronal plane, translation) and a neck-to-knee
    field of view; the anterior-posterior size follows the body in ``scene``."""
    mr_max = settings.max_rotation_deg
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5 * mr_max, mr_max))
    if settings.large_rotations:
        angle = float(rng.uniform(-180.0, 180.0))
    rot = rot_y(angle)
    shift = rng.uniform(-1.0, 1.0, 3) * settings.max_translation_mm
    z_mid = 0.5 * (0.285 + 0.87) * height + rng.uniform(-20.0, 20.0)
    sp = settings.mr_spacing_mm
    n_lr, n_si = settings.mr_size
    half_si = 0.5 * (n_si - 1) * sp
    y_lo, y_hi = math.inf, -math.inf
    for env in scene.envelopes:
        box = env.outer.bbox()
        if box[1, 2] >= z_mid - half_si - 60.0 and box[0, 2] <= z_mid + half_si + 60.0:
            y_lo, y_hi = min(y_lo, box[0, 1]), max(y_hi, box[1, 1])
    centre = point(rng.uniform(-10.0, 10.0), 0.5 * (y_lo + y_hi), z_mid)
    margin = 12.0 + abs(shift[1])
    n_ap = math.ceil((y_hi - y_lo + 2 * margin) / sp) + 1
    factor = settings.mr_slice_factor
    n_acq = math.ceil((n_si - 1) / factor) + 1
    # Stored left-right flipped (LAS), as many converters do: rendered in that order.
    origin = point(0.5 * (n_lr - 1) * sp, -0.5 * (n_ap - 1) * sp, -half_si)
    acq = MrSampler((n_lr, n_ap, n_acq), (-sp, sp, sp * factor), origin, rot, shift, centre)
    full = MrSampler((n_lr, n_ap, n_si), (-sp, sp, sp), origin, rot, shift, centre)
    return _MrPlacement(angle, rot, shift, centre, origin, sp, acq, full)


def _landmarks(body: BodyProfiles, pose: dict[str, float]) -> dict[str, npt.NDArray[np.float64]]:
    """Femoral and humeral head centres and S1 in the body frame, in one pose."""
    return {
        "femoral_head_left": point(-body.hip_x, body.y_hip, body.z_hip),
        "femoral_head_right": point(body.hip_x, body.y_hip, body.z_hip),
        "humeral_head_left": body.shoulder(-1.0, pose),
        "humeral_head_right": body.shoulder(1.0, pose),
        "s1": body.s1,
    }


def _true_maps(mr: _MrPlacement, dxa_origin: npt.NDArray[np.float64]) -> tuple[Matrix4, Matrix4]:
    """DXA 3D frame (D.x, B.y, D.z) -> MR world, and its 2D (coronal) part."""
    dxa_to_mr = np.eye(4)
    dxa_to_mr[:3, :3] = mr.rot
    dxa_to_mr[:3, 3] = mr.rot @ (dxa_origin - mr.centre) + mr.shift
    dxa_to_slice = np.eye(4)
    dxa_to_slice[np.ix_([0, 1], [0, 1])] = mr.rot[np.ix_([0, 2], [0, 2])]
    dxa_to_slice[[0, 1], 3] = dxa_to_mr[[0, 2], 3]
    return dxa_to_mr, dxa_to_slice


def _spine_path(body: BodyProfiles, mr: _MrPlacement) -> Points:
    """Centre line of the vertebral bodies (S1 up to C2, 1 mm steps) in MR world."""
    if not body.settings.spine:
        return np.zeros((0, 3))
    zline = np.arange(body.z_s1, body.z_c2, 1.0)
    line = np.stack(
        [np.interp(zline, body.zs, body.xs), np.interp(zline, body.zs, body.ys), zline], 1
    )
    return mr.to_mr(line)


def _metadata(
    seed: int,
    settings: WholeBodySettings,
    anat: Anatomy,
    poses: tuple[dict[str, float], dict[str, float]],
    mr: _MrPlacement,
    dxa_origin: npt.NDArray[np.float64],
    dxa_to_slice: Matrix4,
) -> dict[str, Any]:
    """The JSON-serialisable generation parameters of a subject."""
    return {
        "generator": "mmreg.imaging.phantoms.wholebody.generate_wholebody_subject",
        "seed": int(seed),
        "settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
        },
        "height_mm": anat.height,
        "build": anat.build,
        "adiposity": anat.adiposity,
        "subcutaneous_fat_mm": anat.fat_mm,
        "visceral_fat_fraction": anat.visceral_fat,
        "liver_fat_fraction": anat.liver_fat,
        "spine_curvature_mm": anat.spine_amplitudes,
        "scoliosis_mm": list(anat.scoliosis),
        "pose_dxa_deg": poses[0],
        "pose_mr_deg": poses[1],
        "mr_rotation_deg": mr.angle,
        "mr_translation_mm": mr.shift.tolist(),
        "dxa_origin_body_mm": dxa_origin.tolist(),
        "mr_centre_body_mm": mr.centre.tolist(),
        "dxa_to_mr_slice": dxa_to_slice.tolist(),
    }


def dxa_affine(settings: WholeBodySettings) -> Matrix4:
    """2D DXA affine: pixel ``(i, j)`` -> world ``(x, y, 0)``, centred on the field of view."""
    sp = settings.dxa_spacing_mm
    nx, nz = settings.dxa_size
    affine = np.diag([sp, sp, 1.0, 1.0])
    affine[0, 3] = -0.5 * (nx - 1) * sp
    affine[1, 3] = -0.5 * (nz - 1) * sp
    return affine


def generate_wholebody_subject(
    seed: int, *, settings: WholeBodySettings | None = None
) -> WholeBodySubject:
    """Generate one synthetic subject: DXA bone and tissue, Dixon fat and water, ground truth.

    Args:
        seed: Seed of ``np.random.default_rng``; same seed and settings, same subject.
        settings: Generation settings (defaults: :class:`WholeBodySettings`).

    Returns:
        The subject; images are float32, label maps int32.

    Example:
        >>> s = generate_wholebody_subject(0)
        >>> s.dxa_bone.shape, s.mr_fat.shape[0::2], s.mr_fat.spacing
        ((300, 800), (224, 501), (2.2, 2.2, 2.2))
    """
    settings = settings or WholeBodySettings()
    rng = np.random.default_rng(seed)
    anat = draw_anatomy(rng, settings)
    body = BodyProfiles(anat, settings)
    # The shoulders draw from their own stream, so every other draw of a seed is as before.
    pose_dxa, pose_mr = draw_poses(rng, settings, np.random.default_rng([seed, 1]))
    h = anat.height

    # DXA: the body centred in the field of view, give or take a little.
    dxa_origin = point(rng.uniform(-15.0, 15.0), 0.0, 0.5 * h + rng.uniform(-15.0, 15.0))
    dxa_grid = Grid(tuple(settings.dxa_size), dxa_affine(settings))
    scene_mr = build_scene(body, pose_mr)
    mr = _place_mr(rng, h, scene_mr, settings)

    dxa_bone, dxa_tissue, dxa_labels = render_dxa(
        build_scene(body, pose_dxa), anat, dxa_grid, dxa_origin, settings, rng
    )
    tissue, fat, water, labels = render_mr(scene_mr, anat, mr.acq, mr.full, settings, rng)
    factor, n_si, n_acq = settings.mr_slice_factor, mr.full.shape[2], mr.acq.shape[2]
    fat = upsample_z(fat, factor, n_si)
    water = upsample_z(water, factor, n_si)
    nearest = np.minimum(np.rint(np.arange(n_si) / factor).astype(np.intp), n_acq - 1)
    tissue = tissue[..., nearest]
    mr_affine = mr.affine

    lm_dxa = {
        k: point(v[0] - dxa_origin[0], v[2] - dxa_origin[2], 0.0)
        for k, v in _landmarks(body, pose_dxa).items()
    }
    lm_mr = {k: mr.to_mr(v)[0] for k, v in _landmarks(body, pose_mr).items()}
    dxa_to_mr, dxa_to_slice = _true_maps(mr, dxa_origin)
    metadata = _metadata(seed, settings, anat, (pose_dxa, pose_mr), mr, dxa_origin, dxa_to_slice)
    return WholeBodySubject(
        seed=int(seed),
        dxa_bone=dxa_bone,
        dxa_tissue=dxa_tissue,
        mr_fat=Image(fat, mr_affine),
        mr_water=Image(water, mr_affine),
        dxa_labels=dxa_labels,
        mr_labels=Image(labels.astype(np.int32), mr_affine),
        mr_tissues=Image(tissue, mr_affine),
        landmarks_dxa=lm_dxa,
        landmarks_mr=lm_mr,
        dxa_to_mr=dxa_to_mr,
        dxa_to_mr_slice=dxa_to_slice,
        spine_path_mr=_spine_path(body, mr),
        metadata=metadata,
    )
