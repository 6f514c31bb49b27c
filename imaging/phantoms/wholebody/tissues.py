"""What the whole-body phantom is made of: tissue classes, their MR signal and density, labels.

Example:
    >>> Tissue.FAT < Tissue.MUSCLE, MR_SIGNAL[Tissue.FAT]
    (True, (1000.0, 60.0))
"""

from __future__ import annotations

from enum import IntEnum

#: Evaluation labels (DXA, MR and MR-slice label maps): ``index -> name``.
WHOLEBODY_LABELS: dict[int, str] = {0: "background", 1: "spine", 2: "pelvis", 3: "pelvic_cavity"}

#: Landmark names, in the order written to the landmark tables.
LANDMARK_NAMES: tuple[str, ...] = (
    "femoral_head_left",
    "femoral_head_right",
    "humeral_head_left",
    "humeral_head_right",
    "s1",
)


class Tissue(IntEnum):
    """Tissue classes of the MR tissue map (:attr:`WholeBodySubject.mr_tissues`).

    The first four are ordered skin < fat < muscle: envelopes are merged with a
    voxel-wise maximum, so where two body parts overlap the inner layer wins.
    """

    BACKGROUND = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    VISCERA = 4
    MEDIASTINUM = 5
    HEART = 6
    LUNG = 7
    LIVER = 8
    KIDNEY = 9
    BLADDER = 10
    BRAIN = 11
    CORTICAL = 12
    RED_MARROW = 13
    YELLOW_MARROW = 14
    DISC = 15
    CSF = 16
    RIB = 17


#: Fat and water signal per tissue (arbitrary units, subcutaneous fat ~ 1000), like a
#: T1-weighted two-point Dixon: fat bright in fat, muscle bright in water, CSF and bone
#: dark, vertebral (red) marrow a fat-water mix, long-bone (yellow) marrow mostly fat.
#: Visceral and liver fat are set per subject.
MR_SIGNAL: dict[Tissue, tuple[float, float]] = {
    Tissue.BACKGROUND: (0.0, 0.0),
    Tissue.SKIN: (250.0, 600.0),
    Tissue.FAT: (1000.0, 60.0),
    Tissue.MUSCLE: (60.0, 750.0),
    Tissue.VISCERA: (0.0, 560.0),
    Tissue.MEDIASTINUM: (80.0, 480.0),
    Tissue.HEART: (50.0, 600.0),
    Tissue.LUNG: (20.0, 50.0),
    Tissue.LIVER: (0.0, 0.0),
    Tissue.KIDNEY: (50.0, 650.0),
    Tissue.BLADDER: (10.0, 150.0),
    Tissue.BRAIN: (50.0, 600.0),
    Tissue.CORTICAL: (20.0, 30.0),
    Tissue.RED_MARROW: (560.0, 360.0),
    Tissue.YELLOW_MARROW: (850.0, 140.0),
    Tissue.DISC: (40.0, 380.0),
    Tissue.CSF: (20.0, 180.0),
    Tissue.RIB: (350.0, 150.0),
}

#: Mineral density (g/cm^3) of bone parts for the DXA bone channel.
BONE_DENSITY: dict[str, float] = {
    "cortical": 1.15,
    "red_marrow": 0.20,
    "yellow_marrow": 0.08,
    "rib": 0.45,
}
#: Soft-tissue densities (g/cm^3) for the DXA tissue channel.
SOFT_DENSITY: dict[str, float] = {"lean": 1.05, "fat": 0.92, "lung": 0.30}
