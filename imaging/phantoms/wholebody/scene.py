"""Scene assembly of the whole-body phantom: the anatomy parts placed for one pose.

A pose gives each arm's and leg's abduction (and each elbow's bend and
shoulder's shift); :func:`build_scene` places every part of :mod:`.parts`
for it, in a fixed order: the MR paints later organs and bones over earlier
ones, and the DXA's floating-point sums follow the same order, so the order
is part of a subject's identity.

Example:
    >>> from mmreg.imaging.phantoms.wholebody.anatomy import BodyProfiles, draw_anatomy
    >>> from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
    >>> settings = WholeBodySettings()
    >>> rng = np.random.default_rng(0)
    >>> body = BodyProfiles(draw_anatomy(rng, settings), settings)
    >>> pose_dxa, pose_mr = draw_poses(rng, settings, np.random.default_rng(1))
    >>> len(build_scene(body, pose_dxa).envelopes)  # trunk, head, 2 x (3 leg + 4 arm)
    16
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mmreg.imaging.phantoms.wholebody import parts
from mmreg.imaging.phantoms.wholebody.anatomy import BodyProfiles
from mmreg.imaging.phantoms.wholebody.parts import Bone, Envelope, Organ
from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import FloatArray, Prism, Shape

#: The two sides, right first: ``(sign of x, name)``.
SIDES: tuple[tuple[float, str], ...] = ((1.0, "right"), (-1.0, "left"))


@dataclass(frozen=True)
class Scene:
    """Every shape of one subject in one pose (body frame), in painting order."""

    envelopes: list[Envelope]
    cavities: list[Organ]
    organs: list[Organ]
    bones: list[Bone]
    lungs: list[Shape]
    visceral: Shape  # abdominal cavity (visceral fat lives here)
    cavity: Prism  # pelvic cavity evaluation region
    body_lean: Shape  # torso muscle envelope (the cavity label stays inside it)
    disc_mask: Callable[[FloatArray], npt.NDArray[np.bool_]]


def draw_poses(
    rng: np.random.Generator, settings: WholeBodySettings, shoulder_rng: np.random.Generator
) -> tuple[dict[str, float], dict[str, float]]:
    """Limb angles (degrees) at the DXA and at the MR, and the MR's shoulder shifts (mm)."""
    dxa: dict[str, float] = {}
    for side in ("right", "left"):
        dxa[f"arm_{side}"] = float(rng.uniform(3.0, 9.0))
        dxa[f"elbow_{side}"] = float(rng.uniform(0.0, 5.0))
        dxa[f"leg_{side}"] = float(rng.uniform(2.0, 7.0))
    m = settings.max_limb_deg
    mr = {
        k: v + float(rng.uniform(-m, m) * (0.5 if "elbow" in k else 1.0)) for k, v in dxa.items()
    }
    s = settings.max_shoulder_mm
    for side in ("right", "left"):
        mr[f"shoulder_{side}_z_mm"] = float(shoulder_rng.uniform(-s, s))
        mr[f"shoulder_{side}_x_mm"] = float(shoulder_rng.uniform(-0.5 * s, 0.5 * s))
    return dxa, mr


def _skeleton(body: BodyProfiles) -> list[Bone]:
    """The axial skeleton and the girdles (no ribs without a spine to carry them)."""
    bones: list[Bone] = []
    if body.settings.spine:
        bones.extend(parts.spine(body))
        bones.append(parts.ribs(body))
    bones.append(parts.sternum(body))
    for side, _ in SIDES:
        bones += [parts.clavicle(body, side), parts.scapula(body, side)]
    bones.extend(parts.sacrum(body))
    for side, _ in SIDES:
        bones += parts.ilium(body, side)
        bones.append(parts.acetabulum(body, side))
        bones += parts.pubis_ischium(body, side)
    return bones


def build_scene(body: BodyProfiles, pose: dict[str, float]) -> Scene:
    """All shapes for one pose (limb abduction angles in degrees, see :func:`draw_poses`)."""
    head, skull = parts.head(body)
    envelopes = [parts.trunk(body), head]
    bones = [skull, *_skeleton(body)]
    cavities = list(parts.cavities(body))
    lungs: list[Shape] = []
    organs: list[Organ] = []
    for side, _ in SIDES:
        lung, paired = parts.paired_organs(body, side)
        lungs.append(lung)
        organs.extend(paired)
    organs.extend(parts.midline_organs(body))
    for side, name in SIDES:
        env, limb_bones = parts.leg(body, side, pose[f"leg_{name}"])
        envelopes.extend(env)
        bones.extend(limb_bones)
        env, limb_bones = parts.arm(
            body, side, pose[f"arm_{name}"], pose[f"elbow_{name}"], body.shoulder(side, pose)
        )
        envelopes.extend(env)
        bones.extend(limb_bones)
    return Scene(
        envelopes=envelopes,
        cavities=cavities,
        organs=organs,
        bones=bones,
        lungs=lungs,
        visceral=cavities[1].shape,
        cavity=parts.pelvic_cavity(body),
        body_lean=envelopes[0].muscle,
        disc_mask=body.disc_mask,
    )
