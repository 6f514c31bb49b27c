"""Per-subject anatomy of the whole-body phantom: the random draws and the body's profiles.

:func:`draw_anatomy` draws what varies between subjects (height, build,
adiposity, spine shape); :class:`BodyProfiles` turns it into the profiles
along the body axis (torso half-widths and depths, fat thickness, spine centre
line and vertebral sizes) and the key points (hips, shoulders, S1) that the
anatomy parts (:mod:`.parts`) are placed with. Body frame: x to the subject's
right, y anterior, z superior, z = 0 at the soles.

Example:
    >>> from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
    >>> settings = WholeBodySettings()
    >>> body = BodyProfiles(draw_anatomy(np.random.default_rng(0), settings), settings)
    >>> body.z_s1 < body.z_sh < body.anat.height
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.interpolate import PchipInterpolator

from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import AxialStack, FloatArray, point
from mmreg.imaging.phantoms.wholebody.tissues import Tissue

#: Body proportions are those of a 1700 mm reference subject; fractions are of the height.
REF_HEIGHT_MM = 1700.0
#: Skin thickness (mm).
SKIN_MM = 2.0
#: Torso muscle envelope: height fraction, half-width and half-depth (mm, reference subject).
_TORSO = np.array(
    [
        (0.445, 15, 15),
        (0.455, 70, 55),
        (0.47, 112, 75),
        (0.49, 140, 88),
        (0.52, 150, 92),  # hips
        (0.56, 140, 88),
        (0.60, 125, 82),  # waist
        (0.64, 128, 85),
        (0.68, 138, 92),
        (0.72, 145, 98),  # chest
        (0.76, 148, 98),
        (0.79, 148, 92),
        (0.81, 135, 80),  # shoulders
        (0.825, 90, 60),
        (0.84, 55, 47),  # neck
        (0.87, 50, 45),
        (0.885, 40, 34),
    ]
)
#: Vertebral levels, S1 upwards: ``(count, fraction of the spine's length, disc fraction)``
#: for the lumbar, thoracic and cervical spine.
_SPINE_SEGMENTS = ((5, 0.3, 0.26), (12, 0.5, 0.2), (6, 0.2, 0.22))


@dataclass(frozen=True)
class Anatomy:
    """Per-subject anatomy: everything the pose does not change."""

    height: float
    build: float
    adiposity: float
    fat_mm: float  # subcutaneous fat thickness scale
    visceral_fat: float  # fat fraction of the abdominal viscera (0-1)
    liver_fat: float
    spine_amplitudes: dict[str, float]
    scoliosis: tuple[float, float]
    drop: float
    tissue_jitter: npt.NDArray[np.float64]  # (n_tissues, 2) multiplicative


def draw_anatomy(rng: np.random.Generator, settings: WholeBodySettings) -> Anatomy:
    """Draw one subject's anatomy (the first draws of a subject's random stream)."""
    height = float(rng.uniform(*settings.height_range_mm))
    s = height / REF_HEIGHT_MM
    adiposity = float(rng.uniform(0.0, 1.0))
    return Anatomy(
        height=height,
        build=float(rng.uniform(0.9, 1.12)),
        adiposity=adiposity,
        fat_mm=float(max(3.0, 4.0 + 30.0 * adiposity + rng.normal(0.0, 3.0)) * s),
        visceral_fat=float(np.clip(0.15 + 0.6 * adiposity + rng.normal(0.0, 0.08), 0.05, 0.9)),
        liver_fat=float(np.clip(0.02 + 0.2 * adiposity**2 + rng.normal(0.0, 0.02), 0.01, 0.35)),
        spine_amplitudes={
            "lordosis": float(rng.uniform(8.0, 22.0) * s),
            "kyphosis": float(rng.uniform(6.0, 18.0) * s),
            "cervical": float(rng.uniform(4.0, 14.0) * s),
        },
        scoliosis=(float(rng.uniform(-12.0, 12.0) * s), float(rng.uniform(-6.0, 6.0) * s)),
        drop=float(rng.uniform(55.0, 75.0) * s),
        tissue_jitter=rng.uniform(0.95, 1.05, (len(Tissue), 2)),
    )


def _pchip(z_nodes: np.ndarray, values: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Shape-preserving interpolation of a tabulated profile, constant beyond its ends."""
    return PchipInterpolator(z_nodes, values, extrapolate=False)(
        np.clip(z, z_nodes[0], z_nodes[-1])
    )


def bump(z: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump of height 1."""
    return np.exp(-0.5 * ((z - centre) / width) ** 2)


class BodyProfiles:
    """Profiles along the body axis (sampled on :attr:`zs`, 2 mm) and key points of one
    subject, in the body frame; the anatomy parts are built from these.

    Attributes (mm unless noted): ``s`` height scale and ``w`` build; torso
    ``a_lean``/``b_lean`` (muscle half-width/depth), ``fat``, ``a_out``/``b_out``
    (skin surface), ``yc`` (AP centre), ``z_torso``; spine ``xs``/``ys`` (centre
    line), ``rx``/``ry`` (vertebral body half-width/depth), ``rc`` (canal radius),
    ``pd`` (back muscle depth), ``levels``, ``z_s1``/``z_c2``; key points ``hip_x``,
    ``y_hip``, ``z_hip``, ``r_fh`` (femoral head radius), ``sh_x``, ``y_arm``,
    ``z_sh`` (shoulders) and ``s1``.
    """

    def __init__(self, anat: Anatomy, settings: WholeBodySettings) -> None:
        self.anat = anat
        self.settings = settings
        h = anat.height
        self.s = h / REF_HEIGHT_MM
        self.w = anat.build
        self.zs = np.arange(0.0, h + 2.0, 2.0)
        self._torso()
        self._spine()
        self._back()
        self._key_points()

    def _torso(self) -> None:
        """Torso muscle envelope and subcutaneous fat."""
        anat, s, w = self.anat, self.s, self.w
        h = anat.height
        fz = self.zs / h
        # The bottom rounds off into the buttocks (the thighs carry on below), the top
        # narrows into the neck.
        nodes, a_ref, b_ref = _TORSO.T
        bulge = 75.0 * max(anat.visceral_fat - 0.2, 0.0) * bump(fz, 0.585, 0.045)
        self.a_lean = _pchip(nodes, a_ref, fz) * s * w
        self.b_lean = (_pchip(nodes, b_ref, fz) + bulge) * s * math.sqrt(w)
        fat_nodes = np.array([0.455, 0.52, 0.58, 0.64, 0.70, 0.78, 0.81, 0.83, 0.885])
        fat_prof = np.array([1.3, 1.3, 1.25, 1.0, 0.8, 0.6, 0.5, 0.3, 0.25])
        # Fat thins to nothing where the torso closes at the bottom.
        self.fat = (
            anat.fat_mm * _pchip(fat_nodes, fat_prof, fz) * np.clip((fz - 0.445) / 0.01, 0, 1)
        )
        self.z_torso = (0.445 * h, 0.885 * h)

    def _spine(self) -> None:
        """Spine centre line and vertebral sizes: S1 to C2, lumbar 30 %, thoracic 50 %,
        cervical 20 % of its length."""
        anat, s, w, zs = self.anat, self.s, self.w, self.zs
        h = anat.height
        self.z_hip = 0.525 * h
        self.z_s1 = self.z_hip + 0.038 * h
        self.z_c2 = 0.905 * h
        length = self.z_c2 - self.z_s1
        self.levels = self._levels(length)
        u = np.clip((zs - self.z_s1) / length, 0.0, 1.0)
        r_nodes = np.array([0.0, 0.3, 0.55, 0.8, 0.85, 1.0])
        self.rx = _pchip(r_nodes, np.array([25, 22, 17, 13, 11, 10.0]), u) * s * w**0.3
        self.ry = _pchip(r_nodes, np.array([17, 16, 14, 10, 8, 8.0]), u) * s * w**0.3
        self.rc = _pchip(r_nodes, np.array([8.5, 8.5, 7.0, 7.0, 8.0, 8.0]), u) * s
        amp = anat.spine_amplitudes
        curv = (
            amp["lordosis"] * bump(zs, self.z_s1 + 0.5 * 0.3 * length, 0.35 * 0.3 * length)
            - amp["kyphosis"] * bump(zs, self.z_s1 + 0.55 * length, 0.35 * 0.5 * length)
            + amp["cervical"] * bump(zs, self.z_s1 + 0.9 * length, 0.4 * 0.2 * length)
        )
        self.ys = 150.0 * s + self.settings.spine_curvature * curv
        b1, b2 = anat.scoliosis
        self.xs = self.settings.coronal_curvature * (
            b1 * np.sin(np.pi * u) + b2 * np.sin(2 * np.pi * u)
        )

    def _back(self) -> None:
        """Back muscles and the skin surface, which follow the spine."""
        fz = self.zs / self.anat.height
        # Depth of the back muscles behind the vertebral bodies.
        self.pd = pd = (
            _pchip(
                np.array([0.5, 0.6, 0.67, 0.75, 0.82, 0.88]),
                np.array([50, 48, 42, 36, 34, 30.0]),
                fz,
            )
            * self.s
        )
        # Spine depth below the skin = body + muscles + fat.
        self.y_back = self.ys - (self.ry + pd + 0.8 * self.fat + SKIN_MM)
        self.b_out = self.b_lean + self.fat + SKIN_MM
        self.a_out = self.a_lean + self.fat + SKIN_MM
        self.yc = self.y_back + self.b_out

    def _key_points(self) -> None:
        """Hip joints, shoulders and S1."""
        h, s, w = self.anat.height, self.s, self.w
        self.hip_x = 0.05 * h * math.sqrt(w)
        self.y_hip = self.at(self.yc, self.z_hip) + 5.0 * s
        self.sh_x = 0.108 * h * w + 0.5 * self.at(self.fat, 0.8 * h)
        self.z_sh = 0.805 * h
        self.y_arm = self.at(self.yc, self.z_sh) - 15.0 * s
        self.r_fh = 23.0 * s * w**0.3
        self.s1 = point(self.at(self.xs, self.z_s1), self.at(self.ys, self.z_s1), self.z_s1)

    def at(self, profile: np.ndarray, z: float) -> float:
        """A profile's value at height ``z``."""
        return float(np.interp(z, self.zs, profile))

    def _levels(self, length: float) -> list[tuple[float, float, float]]:
        """``(z_bottom, pitch, disc_fraction)`` per vertebral level, S1 upwards."""
        out = []
        z = self.z_s1
        for n, frac, disc in _SPINE_SEGMENTS:
            pitch = frac * length / n
            for _ in range(n):
                out.append((z, pitch, disc))
                z += pitch
        return out

    def disc_mask(self, z: FloatArray) -> npt.NDArray[np.bool_]:
        """True within an intervertebral disc (the bottom part of each level)."""
        bottoms = np.array([lv[0] for lv in self.levels])
        pitch = np.array([lv[1] for lv in self.levels])
        disc = np.array([lv[2] for lv in self.levels])
        k = np.clip(np.searchsorted(bottoms, z, side="right") - 1, 0, len(bottoms) - 1)
        frac = (z - bottoms[k]) / pitch[k]
        return (frac >= 0) & (frac < disc[k]) & (z <= self.z_c2)

    def stack(
        self, zlo: float, zhi: float, xc: np.ndarray, yc: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> AxialStack:
        """The solid between ``zlo`` and ``zhi`` with these section profiles."""
        sel = (self.zs >= zlo) & (self.zs <= zhi)
        zs = np.concatenate([[zlo], self.zs[sel], [zhi]])

        def cut(v: np.ndarray) -> np.ndarray:
            return np.interp(zs, self.zs, v)

        return AxialStack(zs, cut(xc), cut(yc), cut(a), cut(b))

    def shoulder(self, side: float, pose: dict[str, float]) -> npt.NDArray[np.float64]:
        """Humeral head centre in one pose (``side`` +1 right, -1 left)."""
        name = "right" if side > 0 else "left"
        return point(
            side * (self.sh_x + pose.get(f"shoulder_{name}_x_mm", 0.0)),
            self.y_arm,
            self.z_sh + pose.get(f"shoulder_{name}_z_mm", 0.0),
        )
