"""DXA renderer of the whole-body phantom: the scene projected along the anterior-posterior axis.

Each shape's chord along y (:meth:`~.shapes.Shape.chord`) times a density
gives its areal density on the 2D pixel grid: soft tissue (lean, fat, lung)
in the tissue channel, bone mineral in the bone channel. No 3D volume is ever
built. The evaluation labels are the projected footprints of the spine and
pelvis and the pelvic cavity.

Example:
    >>> from mmreg.imaging.phantoms.wholebody import generate_wholebody_subject
    >>> generate_wholebody_subject(0).dxa_bone.shape  # rendered here
    (300, 800)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.imaging.image import Grid, Image
from mmreg.imaging.phantoms.wholebody.anatomy import Anatomy
from mmreg.imaging.phantoms.wholebody.scene import Scene
from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import FloatArray, Shape
from mmreg.imaging.phantoms.wholebody.tissues import SOFT_DENSITY

#: Key of the sacrum among the projected structures (1 and 2 are the spine and pelvis labels).
_SACRUM = 4


class _Projection:
    """The DXA pixel grid in the body frame, and chords of shapes on it.

    Everything is computed on each shape's bounding box only and merged into
    full-size accumulators: a full array per shape would dominate the time.
    """

    def __init__(self, grid: Grid, origin: npt.NDArray[np.float64], spacing: float) -> None:
        nx, nz = grid.shape
        self.shape = (nx, nz)
        self.spacing = spacing
        self.xw = grid.affine[0, 3] + spacing * np.arange(nx) + origin[0]
        self.zw = grid.affine[1, 3] + spacing * np.arange(nz) + origin[2]
        self.x = np.broadcast_to(self.xw[:, None], (nx, nz))
        self.z = np.broadcast_to(self.zw[None, :], (nx, nz))

    def zeros(self) -> npt.NDArray[np.float64]:
        return np.zeros(self.shape)

    def window(self, bbox: np.ndarray) -> tuple[slice, slice] | None:
        """The pixels under a bounding box (a pixel's margin), ``None`` if off the grid."""
        sp = self.spacing
        i0, i1 = np.searchsorted(self.xw, [bbox[0, 0] - sp, bbox[1, 0] + sp])
        k0, k1 = np.searchsorted(self.zw, [bbox[0, 2] - sp, bbox[1, 2] + sp])
        return (slice(i0, i1), slice(k0, k1)) if i1 > i0 and k1 > k0 else None

    def chord(self, shape: Shape, box: tuple[slice, slice]) -> FloatArray:
        return shape.chord(np.array(self.x[box]), np.array(self.z[box]))


def _soft_tissue(scene: Scene, anat: Anatomy, proj: _Projection) -> FloatArray:
    """Areal soft-tissue density (g/cm^2): lean, fat (subcutaneous and visceral), lung."""
    outer, skin, muscle, lung, visceral = (proj.zeros() for _ in range(5))
    for env in scene.envelopes:
        box = proj.window(env.outer.bbox())
        if box is None:
            continue
        # Overlapping body parts (thigh in the buttock, arm at the shoulder) would count
        # twice in a sum; the longer chord approximates the union well.
        for acc, shape in ((outer, env.outer), (skin, env.skin), (muscle, env.muscle)):
            np.maximum(acc[box], proj.chord(shape, box), out=acc[box])
    for shape, acc in [(s, lung) for s in scene.lungs] + [(scene.visceral, visceral)]:
        box = proj.window(shape.bbox())
        if box is not None:
            acc[box] += proj.chord(shape, box)
    visceral *= anat.visceral_fat
    lean = np.maximum((outer - skin) + muscle - lung - visceral, 0.0)
    fat = np.maximum(skin - muscle, 0.0) + visceral
    return 0.1 * (
        SOFT_DENSITY["lean"] * lean + SOFT_DENSITY["fat"] * fat + SOFT_DENSITY["lung"] * lung
    )


def _bone(scene: Scene, proj: _Projection) -> tuple[FloatArray, dict[int, FloatArray]]:
    """Areal bone mineral density (g/cm^2), and the projected path length through the
    spine (1), pelvis (2) and sacrum (4)."""
    disc_all = scene.disc_mask(np.array(proj.z))
    groups: dict[str, FloatArray] = {}
    structures = {key: proj.zeros() for key in (1, 2, _SACRUM)}
    for bone in scene.bones:
        box = proj.window(bone.outer.bbox())
        if box is None:
            continue
        path = proj.chord(bone.outer, box)
        value = bone.cortex_density * path
        if bone.inner is not None:
            value -= (bone.cortex_density - bone.density) * proj.chord(bone.inner, box)
        if bone.discs:
            value[disc_all[box]] = 0.0
        value *= 0.1  # mm -> cm: g/cm^2
        # Parts of one bone (femoral head, neck, shaft) overlap at their joins: the
        # larger value, not the sum; different bones add up.
        acc = groups.setdefault(bone.group, proj.zeros())
        np.maximum(acc[box], value, out=acc[box])
        if bone.structure:
            # In the AP view the sacrum lies behind the pelvic inlet: where they overlap the
            # inlet is what is labelled (as on the MR slice, which passes in front of it).
            key = _SACRUM if bone.group == "sacrum" else bone.structure
            structures[key][box] += path
    return sum(groups.values()), structures  # type: ignore[return-value]


def _labels(scene: Scene, proj: _Projection, structures: dict[int, FloatArray]) -> np.ndarray:
    """Evaluation labels: sacrum and pelvis (2) over the pelvic cavity (3), spine (1) on top."""
    labels = np.zeros(proj.shape, np.int32)
    labels[structures[_SACRUM] > 0.5] = 2
    labels[scene.cavity.footprint(np.array(proj.x), np.array(proj.z))] = 3
    labels[structures[2] > 0.5] = 2
    labels[structures[1] > 0.5] = 1
    return labels


def _finish(img: FloatArray, sigma: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Detector blur and noise."""
    img = ndimage.gaussian_filter(img, 0.6)
    img = img + sigma * rng.standard_normal(img.shape)
    return np.maximum(img, 0.0).astype(np.float32)


def render_dxa(
    scene: Scene,
    anat: Anatomy,
    grid: Grid,
    origin: npt.NDArray[np.float64],
    settings: WholeBodySettings,
    rng: np.random.Generator,
) -> tuple[Image, Image, Image]:
    """Project the scene along y: bone and soft-tissue areal densities, evaluation labels.

    ``origin`` is the body point at the DXA world origin; ``rng`` gives the noise (the
    bone channel's first).
    """
    proj = _Projection(grid, origin, settings.dxa_spacing_mm)
    tissue = _soft_tissue(scene, anat, proj)
    bone, structures = _bone(scene, proj)
    # Bone also attenuates the high-energy beam: a faint skeleton in the tissue image.
    tissue = tissue + 1.0 * bone
    labels = _labels(scene, proj, structures)
    noise = settings.dxa_noise
    return (
        Image(_finish(bone, noise * 1.0, rng), grid.affine),
        Image(_finish(tissue, noise * 20.0, rng), grid.affine),
        Image(labels, grid.affine),
    )
