"""Anatomy parts of the whole-body phantom: soft-tissue envelopes, organs and bones.

Each function builds one part of the body from its profiles
(:class:`~.anatomy.BodyProfiles`) in the body frame; :mod:`.scene` places
them for a pose. Parts are of three kinds: an :class:`Envelope` (skin,
subcutaneous fat and muscle of a body segment), an :class:`Organ` (painted
over some tissues only) and a :class:`Bone` (cortex and marrow; the parts of
one bone share a ``group``).

Example:
    >>> from mmreg.imaging.phantoms.wholebody.anatomy import BodyProfiles, draw_anatomy
    >>> from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
    >>> settings = WholeBodySettings()
    >>> body = BodyProfiles(draw_anatomy(np.random.default_rng(0), settings), settings)
    >>> [bone.group for bone in spine(body)]
    ['spine_arch', 'spine_spinous', 'spine_body']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mmreg.imaging.phantoms.wholebody.anatomy import REF_HEIGHT_MM, SKIN_MM, BodyProfiles
from mmreg.imaging.phantoms.wholebody.shapes import (
    AxialStack,
    Capsule,
    Clipped,
    Ellipsoid,
    Prism,
    RibCage,
    Shape,
    axes_coronal,
    point,
    rot_y,
)
from mmreg.imaging.phantoms.wholebody.tissues import BONE_DENSITY, Tissue

_YELLOW = BONE_DENSITY["yellow_marrow"]


@dataclass(frozen=True)
class Bone:
    """A bone part: cortex between ``outer`` and ``inner``, marrow (or a canal) inside."""

    outer: Shape
    inner: Shape | None
    marrow: Tissue | None  # tissue of the inner part (CSF: spinal canal); None: hollow
    density: float  # mineral density of the inner part (g/cm^3)
    group: str  # chords within a group combine by max (parts of one bone), across by sum
    structure: int = 0  # evaluation label (WHOLEBODY_LABELS), 0 for none
    cortex: Tissue = Tissue.CORTICAL
    cortex_density: float = BONE_DENSITY["cortical"]
    discs: bool = False  # interrupted at the intervertebral discs


@dataclass(frozen=True)
class Envelope:
    """A body segment's soft tissue: skin, subcutaneous fat and muscle (nested surfaces)."""

    outer: Shape  # skin surface
    skin: Shape  # inner surface of the skin
    muscle: Shape  # inner surface of the subcutaneous fat


@dataclass(frozen=True)
class Organ:
    """A soft-tissue organ or cavity."""

    shape: Shape
    tissue: Tissue
    into: tuple[Tissue, ...]  # painted only over these tissues


def _layered(shape: Capsule | Ellipsoid, fat_mm: float) -> Envelope:
    """A limb segment: muscle ``shape`` under ``fat_mm`` of fat and the skin."""
    return Envelope(shape.grown(fat_mm + SKIN_MM), shape.grown(fat_mm), shape)


def _marrow_bone(
    shape: Capsule | Ellipsoid, cortex_mm: float, group: str, *, structure: int = 0
) -> Bone:
    """A long-bone part: yellow marrow under a cortex ``cortex_mm`` thick."""
    return Bone(
        shape, shape.grown(-cortex_mm), Tissue.YELLOW_MARROW, _YELLOW, group, structure=structure
    )


# ---------------------------------------------------------------------------- trunk and head


def trunk(body: BodyProfiles) -> Envelope:
    """The torso from the buttocks to the neck."""
    zero = np.zeros_like(body.zs)
    zlo, zhi = body.z_torso
    return Envelope(
        body.stack(zlo, zhi, zero, body.yc, body.a_out, body.b_out),
        body.stack(zlo, zhi, zero, body.yc, body.a_out - SKIN_MM, body.b_out - SKIN_MM),
        body.stack(zlo, zhi, zero, body.yc, body.a_lean, body.b_lean),
    )


def head(body: BodyProfiles) -> tuple[Envelope, Bone]:
    """The head and the skull (with the brain inside)."""
    h, s, w = body.anat.height, body.s, body.w
    centre = point(0.0, body.at(body.yc, 0.875 * h) + 5.0 * s, 0.932 * h)
    shape = Ellipsoid(centre, np.array([76.0 * w**0.3, 96.0, 112.0]) * s)
    skull = Bone(shape.grown(-3.0), shape.grown(-10.0), Tissue.BRAIN, 0.0, "skull")
    return Envelope(shape.grown(4.0), shape.grown(2.0), shape), skull


# ---------------------------------------------------------------------------- organs


def cavities(body: BodyProfiles) -> tuple[Organ, Organ]:
    """The thoracic (mediastinum) and abdominal (viscera) cavities inside the torso muscle."""
    h, s = body.anat.height, body.s
    zero = np.zeros_like(body.zs)
    z_d = 0.665 * h
    front = body.yc + body.b_lean
    chest = body.stack(z_d, 0.815 * h, zero, body.yc, body.a_lean - 12 * s, body.b_lean - 12 * s)
    post = body.ys + 0.3 * body.ry  # abdominal viscera lie in front of the spine
    abdomen = body.stack(
        0.50 * h,
        z_d + 10 * s,
        zero,
        0.5 * (front + post),
        body.a_lean - 15 * s,
        np.maximum(0.5 * (front - post) - 8 * s, 10.0),
    )
    return (
        Organ(chest, Tissue.MEDIASTINUM, (Tissue.MUSCLE,)),
        Organ(abdomen, Tissue.VISCERA, (Tissue.MUSCLE,)),
    )


#: Tissues the abdominal organs are painted over.
_SOFT = (Tissue.VISCERA, Tissue.MEDIASTINUM, Tissue.MUSCLE)


def paired_organs(body: BodyProfiles, side: float) -> tuple[Ellipsoid, list[Organ]]:
    """One side's lung, kidney and psoas (``side`` +1 right, -1 left); the lung's shape too."""
    h, s, w = body.anat.height, body.s, body.w
    zk = body.z_s1 + 0.26 * (body.z_c2 - body.z_s1)
    lung = Ellipsoid(
        point(side * 80 * s * w, body.at(body.yc, 0.74 * h) - 8 * s, 0.742 * h),
        np.array([58 * w, 75, 0.077 * REF_HEIGHT_MM]) * s,
    )
    kidney = Ellipsoid(
        point(
            side * (body.at(body.rx, zk) + 45 * s),
            body.at(body.ys, zk) + 12 * s,
            zk - (12 * s if side > 0 else 0.0),
        ),
        np.array([28.0, 24.0, 55.0]) * s,
    )
    y_ps = body.at(body.ys, zk) + 8 * s
    psoas = Capsule(
        point(side * (body.at(body.rx, zk + 40 * s) + 10 * s), y_ps, zk + 40 * s),
        point(side * (body.hip_x - 22 * s), y_ps, body.z_hip + 15 * s),
        16 * s,
        26 * s,
    )
    return lung, [
        Organ(lung, Tissue.LUNG, (Tissue.MEDIASTINUM,)),
        Organ(kidney, Tissue.KIDNEY, _SOFT),
        Organ(psoas, Tissue.MUSCLE, _SOFT),
    ]


def midline_organs(body: BodyProfiles) -> list[Organ]:
    """Heart, liver and bladder."""
    h, s, w = body.anat.height, body.s, body.w
    heart = Ellipsoid(
        point(-22 * s, body.at(body.yc, 0.70 * h) + 22 * s, 0.705 * h),
        np.array([55.0, 46.0, 62.0]) * s,
        rot_y(-25.0),
    )
    liver = Ellipsoid(
        point(45 * s * w, body.at(body.yc, 0.655 * h) + 5 * s, 0.652 * h),
        np.array([100 * w, 72, 62]) * s,
        rot_y(12.0),
    )
    bladder = Ellipsoid(
        point(0.0, body.y_hip + 28 * s, body.z_hip - 2 * s), np.array([36.0, 28.0, 28.0]) * s
    )
    return [
        Organ(heart, Tissue.HEART, (Tissue.MEDIASTINUM, Tissue.LUNG)),
        Organ(liver, Tissue.LIVER, (Tissue.VISCERA, Tissue.MEDIASTINUM, Tissue.LUNG)),
        Organ(bladder, Tissue.BLADDER, _SOFT),
    ]


# ---------------------------------------------------------------------------- spine and thorax


def spine(body: BodyProfiles) -> list[Bone]:
    """The vertebral column, S1 to C2: arches around the canal, spinous processes and
    bodies (both interrupted at the discs)."""
    s = body.s
    zlo, zhi = body.z_s1, body.z_c2
    vertebrae = body.stack(zlo, zhi, body.xs, body.ys, body.rx, body.ry)
    marrow = vertebrae.grown(-2.0 * s)
    canal_y = body.ys - body.ry - 2 * s - body.rc
    canal = body.stack(zlo, zhi, body.xs, canal_y, 1.1 * body.rc, body.rc)
    arch = body.stack(zlo, zhi, body.xs, canal_y, 1.1 * body.rc + 6 * s, body.rc + 5 * s)
    # Spinous processes: from the arch back to 6 mm under the back muscles' surface.
    arch_back = canal_y - body.rc - 5 * s
    length = np.maximum(arch_back - (body.ys - body.ry - body.pd + 6 * s), 4 * s)
    spinous = body.stack(
        zlo,
        zhi,
        body.xs,
        arch_back - 0.5 * length + 2 * s,
        np.full_like(body.zs, 4.5 * s),
        0.5 * length + 2 * s,
    )
    red = BONE_DENSITY["red_marrow"]
    return [
        Bone(arch, canal, Tissue.CSF, 0.0, "spine_arch", structure=1),
        Bone(spinous, None, Tissue.CORTICAL, 0.0, "spine_spinous", structure=1, discs=True),
        Bone(vertebrae, marrow, Tissue.RED_MARROW, red, "spine_body", structure=1, discs=True),
    ]


def _chest_wall(body: BodyProfiles, zlo: float, zhi: float) -> AxialStack:
    """The centre line of the ribs: 9 mm inside the torso muscle."""
    s, zero = body.s, np.zeros_like(body.zs)
    return body.stack(zlo, zhi, zero, body.yc, body.a_lean - 9 * s, body.b_lean - 9 * s)


def ribs(body: BodyProfiles) -> Bone:
    """Twelve pairs of ribs, heads at the thoracic levels (T1..T12), on the chest wall."""
    s = body.s
    thoracic = body.levels[5:17]
    z_top = thoracic[-1][0] + 0.5 * thoracic[-1][1]
    pitch = thoracic[0][1]
    wall = _chest_wall(body, z_top - 12 * pitch - body.anat.drop - 20 * s, z_top + 20 * s)
    psi_end = np.array([0.78] * 7 + [0.68, 0.62, 0.56, 0.42, 0.36]) * np.pi
    z_mid = z_top - 6 * pitch
    wall_a = body.at(body.a_lean, z_mid) - 9 * s
    psi_start = math.asin(min(0.9, (body.at(body.rx, z_mid) + 6 * s) / wall_a))
    cage = RibCage(
        wall, z_top, pitch, body.anat.drop, psi_start, psi_end, 4.5 * s, 6.0 * s, 40.0 * s
    )
    return Bone(
        cage, None, Tissue.RIB, 0.0, "ribs", cortex=Tissue.RIB, cortex_density=BONE_DENSITY["rib"]
    )


def sternum(body: BodyProfiles) -> Bone:
    """A flat bar behind the front of the chest."""
    h, s = body.anat.height, body.s
    zero = np.zeros_like(body.zs)
    y_st = body.yc + body.b_lean - 10 * s
    bar = body.stack(
        0.705 * h, 0.805 * h, zero, y_st, np.full_like(zero, 15 * s), np.full_like(zero, 6 * s)
    )
    return Bone(bar, bar.grown(-2.5 * s), Tissue.RED_MARROW, 0.2, "sternum")


def clavicle(body: BodyProfiles, side: float) -> Bone:
    """From the sternum out to the shoulder, rising a little."""
    h, s = body.anat.height, body.s
    z_cl = 0.815 * h
    y_cl = body.at(body.yc, 0.80 * h) + 30 * s
    bar = Capsule(
        point(side * 22 * s, y_cl, z_cl),
        point(side * (body.sh_x - 8 * s), y_cl, z_cl + 12 * s),
        7.5 * s,
        7.5 * s,
    )
    return _marrow_bone(bar, 3.5 * s, f"clavicle_{side:+.0f}")


def scapula(body: BodyProfiles, side: float) -> Bone:
    """The blade on the back of the rib cage, tangent to the chest wall."""
    h, s, w = body.anat.height, body.s, body.w
    z_sc = 0.765 * h
    wall_a = body.at(body.a_lean, z_sc) - 9 * s
    wall_b = body.at(body.b_lean, z_sc) - 9 * s
    yc = body.at(body.yc, z_sc)
    x0 = side * min(0.055 * h * w, 0.8 * wall_a)
    y_wall = yc - wall_b * math.sqrt(1.0 - (x0 / wall_a) ** 2)
    normal = np.array([x0 / wall_a**2, (y_wall - yc) / wall_b**2, 0.0])
    normal /= np.linalg.norm(normal)
    along = np.array([-normal[1], normal[0], 0.0])
    along *= np.sign(along[0] * side)
    axes = np.stack([along, normal, np.array([0.0, 0.0, 1.0])], axis=1)
    blade = Ellipsoid(
        point(x0, y_wall, z_sc) + 14 * s * normal, np.array([45.0, 5.0, 65.0]) * s, axes
    )
    return _marrow_bone(blade, 2.0 * s, f"scapula_{side:+.0f}")


# ---------------------------------------------------------------------------- pelvis


def sacrum(body: BodyProfiles) -> list[Bone]:
    """Wide alae at S1 on a wedge tapering down to the coccyx (an inverted triangle in
    the AP view)."""
    s, w = body.s, body.w
    y_sac = body.s1[1] - 14 * s
    alae = Ellipsoid(
        point(body.s1[0], y_sac, body.z_s1 - 22 * s), np.array([50.0 * w**0.3, 24.0, 24.0]) * s
    )
    wedge = Capsule(
        point(body.s1[0], y_sac, body.z_s1 - 20 * s),
        point(body.s1[0], y_sac, body.z_s1 - 100 * s),
        28 * s,
        8 * s,
    )
    return [_marrow_bone(part, 3 * s, "sacrum", structure=2) for part in (alae, wedge)]


def _ilium_axes(side: float) -> npt.NDArray[np.float64]:
    """Principal axes of an iliac wing: turned 45 degrees out of the coronal plane and
    rolled so that the crest is highest at the side."""
    yaw = math.radians(45.0)
    axes = np.array(
        [
            [side * math.cos(yaw), math.sin(yaw), 0.0],
            [-math.sin(yaw), side * math.cos(yaw), 0.0],
            [0.0, 0.0, 1.0],
        ]
    ).T
    roll = math.radians(-side * 18.0)
    return axes @ np.array(
        [
            [math.cos(roll), 0.0, math.sin(roll)],
            [0.0, 1.0, 0.0],
            [-math.sin(roll), 0.0, math.cos(roll)],
        ]
    )


def ilium(body: BodyProfiles, side: float) -> list[Bone]:
    """The iliac wing on a thick body that carries it down to the acetabulum."""
    s, w = body.s, body.w
    hx, yh, zh = body.hip_x, body.y_hip, body.z_hip
    wing = Ellipsoid(
        point(side * (hx + 8 * s), yh - 18 * s, zh + 70 * s),
        np.array([70.0 * w**0.5, 7.0, 46.0]) * s,
        _ilium_axes(side),
    )
    pillar = Capsule(
        point(side * (hx - 4 * s), yh - 12 * s, zh + 12 * s),
        point(side * (hx - 14 * s), yh - 12 * s, zh + 48 * s),
        17 * s,
        14 * s,
    )
    group = f"pelvis_{side:+.0f}"
    return [_marrow_bone(part, 2.0 * s, group, structure=2) for part in (wing, pillar)]


def acetabulum(body: BodyProfiles, side: float) -> Bone:
    """The hip socket: a hollow shell round the femoral head, open to the side and below."""
    s, hx, zh = body.s, body.hip_x, body.z_hip
    centre = point(side * hx, body.y_hip, zh)
    outer = Ellipsoid(centre, np.full(3, body.r_fh + 10 * s))
    inner = Ellipsoid(centre, np.full(3, body.r_fh + 2 * s))
    lim = hx + 0.55 * body.r_fh
    xlim = (-math.inf, lim) if side > 0 else (-lim, math.inf)
    zlim = (zh - 0.35 * body.r_fh, math.inf)
    return Bone(
        Clipped(outer, xlim, zlim),
        Clipped(inner, xlim, zlim),
        None,
        0.0,
        f"pelvis_{side:+.0f}",
        structure=2,
    )


def pubis_ischium(body: BodyProfiles, side: float) -> list[Bone]:
    """The pubic rami and body and the ischium, as capsules."""
    s, hx, yh, zh = body.s, body.hip_x, body.y_hip, body.z_hip
    rami = (
        ((hx - 18 * s, 18 * s, -12 * s), (9 * s, 18 * s, -32 * s), 10 * s),  # sup. ramus
        ((9 * s, 18 * s, -28 * s), (12 * s, 18 * s, -50 * s), 10 * s),  # pubic body
        ((12 * s, 5 * s, -50 * s), (hx - 30 * s, 5 * s, -68 * s), 9 * s),  # inf. ramus
        ((hx - 8 * s, -8 * s, -18 * s), (hx - 26 * s, -8 * s, -68 * s), 13 * s),  # ischium
    )
    bones = []
    for (ax_, ay, az), (bx, by, bz), r in rami:
        cap = Capsule(
            point(side * ax_, yh + ay, zh + az), point(side * bx, yh + by, zh + bz), r, r
        )
        bones.append(_marrow_bone(cap, 4 * s, f"pelvis_{side:+.0f}", structure=2))
    return bones


def pelvic_cavity(body: BodyProfiles) -> Prism:
    """The pelvic cavity evaluation region: enclosed by the pelvic ring in the AP view."""
    s = body.s
    return Prism(
        float(body.s1[0]),
        body.z_hip + 12 * s,
        body.hip_x - 25 * s,
        36 * s,
        float(body.s1[1]) - 20 * s,
        body.y_hip + 35 * s,
    )


# ---------------------------------------------------------------------------- limbs


def leg(body: BodyProfiles, side: float, abduct_deg: float) -> tuple[list[Envelope], list[Bone]]:
    """Thigh, calf and foot with femur, tibia, fibula, patella and foot bones, turned
    ``abduct_deg`` about the hip."""
    h, s, w = body.anat.height, body.s, body.w
    beta = math.radians(abduct_deg)
    down = point(side * math.sin(beta), 0.0, -math.cos(beta))
    lat = point(side * math.cos(beta), 0.0, math.sin(beta))
    hip = point(side * body.hip_x, body.y_hip, body.z_hip)
    knee = hip + (body.z_hip - 0.285 * h) * down
    ankle = knee + (0.285 - 0.045) * h * down
    axes = axes_coronal(down, lat)
    fat = body.anat.fat_mm
    grp = f"{side:+.0f}"

    thigh = Capsule(hip - 35 * s * down + 10 * s * lat, knee, 68 * s * w, 40 * s * w)
    calf = Capsule(knee, ankle, 44 * s * w, 21 * s)
    foot = Ellipsoid(ankle + point(0, 55 * s, -15 * s), np.array([35.0, 92.0, 28.0]) * s)
    envelopes = [_layered(thigh, 1.1 * fat), _layered(calf, 0.6 * fat), _layered(foot, 3.0)]

    gt = hip + 42 * s * lat + 30 * s * down
    femoral_head = Ellipsoid(hip, np.full(3, body.r_fh))
    neck = Capsule(hip, gt, 15 * s, 18 * s)
    shaft = Capsule(gt + 8 * s * down - 4 * s * lat, knee - 20 * s * down, 14 * s, 13 * s)
    cond = Ellipsoid(knee, np.array([38.0, 30.0, 24.0]) * s, axes)
    tib = Capsule(knee + 10 * s * down, ankle - 25 * s * down, 14 * s, 10 * s)
    plateau = Ellipsoid(knee + 30 * s * down, np.array([36.0, 28.0, 14.0]) * s, axes)
    fib_a = knee + 35 * s * down + 24 * s * lat
    fib_b = ankle - 10 * s * down + 20 * s * lat
    fib = Capsule(fib_a - point(0, 12 * s, 0), fib_b - point(0, 12 * s, 0), 6 * s, 6 * s)
    patella = Ellipsoid(knee + point(0, 38 * s, 0), np.array([20.0, 9.0, 22.0]) * s, axes)
    foot_bone = Ellipsoid(ankle + point(0, 40 * s, -10 * s), np.array([24.0, 65.0, 16.0]) * s)
    bones = [
        _marrow_bone(femoral_head, 2.5 * s, "femur" + grp),
        _marrow_bone(neck, 6 * s, "femur" + grp),
        _marrow_bone(shaft, 6 * s, "femur" + grp),
        _marrow_bone(cond, 3 * s, "femur" + grp),
        _marrow_bone(tib, 5 * s, "tibia" + grp),
        _marrow_bone(plateau, 3 * s, "tibia" + grp),
        _marrow_bone(fib, 3 * s, "fibula" + grp),
        _marrow_bone(patella, 2 * s, "patella" + grp),
        _marrow_bone(foot_bone, 4 * s, "foot" + grp),
    ]
    return envelopes, bones


def arm(
    body: BodyProfiles,
    side: float,
    abduct_deg: float,
    elbow_deg: float,
    sh: npt.NDArray[np.float64],
) -> tuple[list[Envelope], list[Bone]]:
    """Shoulder, upper arm, forearm and hand with their bones, hanging from the humeral
    head ``sh``: abducted ``abduct_deg``, the forearm ``elbow_deg`` further."""
    h, s, w = body.anat.height, body.s, body.w
    a1 = math.radians(abduct_deg)
    a2 = math.radians(abduct_deg + elbow_deg)
    down = point(side * math.sin(a1), 0.0, -math.cos(a1))
    lat = point(side * math.cos(a1), 0.0, math.sin(a1))
    down2 = point(side * math.sin(a2), 0.0, -math.cos(a2))
    lat2 = point(side * math.cos(a2), 0.0, math.sin(a2))
    elbow = sh + 0.172 * h * down
    wrist = elbow + 0.150 * h * down2
    hand_c = wrist + 0.055 * h * down2
    fat = 0.7 * body.anat.fat_mm
    grp = f"{side:+.0f}"

    shoulder = Ellipsoid(sh + 8 * s * lat, np.array([46.0 * w, 50.0, 55.0]) * s)
    upper = Capsule(sh, elbow, 38 * s * w, 32 * s * w)
    fore = Capsule(elbow, wrist, 32 * s * w, 21 * s)
    hand = Ellipsoid(
        hand_c, np.array([14.0, 40.0, 0.055 * REF_HEIGHT_MM]) * s, axes_coronal(down2, lat2)
    )
    envelopes = [
        _layered(shoulder, fat),
        _layered(upper, fat),
        _layered(fore, 0.8 * fat),
        _layered(hand, 2.0),
    ]
    humeral_head = Ellipsoid(sh, np.full(3, 22.0 * s))
    shaft = Capsule(sh + 15 * s * down, elbow - 12 * s * down, 11 * s, 10 * s)
    distal = Ellipsoid(
        elbow - 10 * s * down, np.array([30.0, 16.0, 12.0]) * s, axes_coronal(down, lat)
    )
    bones = [
        _marrow_bone(humeral_head, 2.5 * s, "humerus" + grp),
        _marrow_bone(shaft, 5 * s, "humerus" + grp),
        _marrow_bone(distal, 3 * s, "humerus" + grp),
    ]
    for name, off, dy in (("radius", 9.0, 6.0), ("ulna", -9.0, -6.0)):
        a = elbow + 5 * s * down2 + off * s * lat2 + point(0, dy * s, 0)
        b = wrist + 1.1 * off * s * lat2 + point(0, dy * s, 0)
        bones.append(_marrow_bone(Capsule(a, b, 7 * s, 8 * s), 3.5 * s, name + grp))
    hand_bone = Ellipsoid(
        hand_c - 0.01 * h * down2, np.array([9.0, 28.0, 60.0]) * s, axes_coronal(down2, lat2)
    )
    bones.append(_marrow_bone(hand_bone, 2 * s, "hand" + grp))
    return envelopes, bones
