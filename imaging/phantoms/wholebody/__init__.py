"""Whole-body phantom: 2D DXA (bone, tissue) and 3D Dixon MR (fat, water) of synthetic subjects.

Each subject is an analytic body: soft-tissue envelopes (torso as a stack of
axial ellipses, head and feet as ellipsoids, limbs as tapered capsules), each
with skin, a subcutaneous fat layer and muscle; thoracic and abdominal cavities
with lungs, heart, liver, kidneys, bladder and textured visceral fat; and bones
with cortex and marrow: a vertebral column (bodies, discs, canal, arch,
spinous processes) along a per-subject curve with sagittal (lordosis,
kyphosis) and coronal (scoliosis) curvature, ribs, sternum, clavicles,
scapulae, pelvis (ilia, sacrum, acetabula, pubic and ischial rami), femurs,
tibiae, fibulae, humeri, forearm and hand bones and a skull. Subjects vary in
height, build, adiposity (subcutaneous, visceral and liver fat) and spine
shape.

Every shape answers two questions exactly: which points of a 3D grid lie
inside it (the MR is painted from these, later shapes over earlier ones), and
how long a line along the anterior-posterior axis runs inside it (the DXA is
the sum of these line integrals times a density). The DXA is therefore a
true projection of the same anatomy, computed on the 2D pixel grid only: no
3D volume of the whole body is ever built, and a subject takes well under a
second.

Frames (all RAS mm):

* **body frame** ``B``: x to the subject's right, y anterior, z superior;
  z = 0 at the soles. The anatomy is built here.
* **DXA world** ``D``: ``D = B - o_D``; the 2D DXA image uses the convention of
  every 2D image in mmreg: world ``(x, y, 0)`` with 2D ``x = D.x`` (left-right)
  and 2D ``y = D.z`` (inferior-superior), so ``z = 0``.
* **MR world** ``M``: ``M = R (B - o_M) + t`` with ``R`` a small rotation about
  the anterior-posterior axis (in the coronal plane), ``t`` a translation and
  ``o_M`` the body point at the MR field-of-view centre. The MR grid is
  axis-aligned in ``M`` and stored left-right flipped (LAS), as converters often do.
* **MR slice world**: the mid-coronal slice synthesised from the MR
  (:mod:`mmreg.imaging.slice_synthesis`) keeps the MR's ``x`` and ``z``:
  2D ``(x, y, 0) = (M.x, M.z, 0)``.

Because ``R`` turns about the anterior-posterior axis, the projection along it
commutes with the pose: DXA and MR slice are related by the exact 2D rigid map
``(x, y) -> [[c, s], [-s, c]] (x, y) + T`` (:attr:`WholeBodySubject.dxa_to_mr_slice`),
for the trunk. The limbs break it on purpose: each arm and leg turns by a few
degrees about its humeral or femoral head between the scans, and each shoulder
sits a few millimetres higher or lower and further in or out (patients shrug
differently on the two tables). The femoral heads and S1 are on the rigid trunk,
so the map carries them exactly; the humeral heads move with the shoulders, so
no rigid map fits all five landmarks and the best possible rigid error is not
zero, as with real scans.

Modules: :mod:`.tissues` (tissue classes, signals, densities, labels),
:mod:`.settings`, :mod:`.shapes` (the solids), :mod:`.anatomy` (per-subject
draws and body profiles), :mod:`.parts` (envelopes, organs, bones),
:mod:`.scene` (the parts placed for a pose), :mod:`.dxa` and :mod:`.mr` (the
two renderers) and :mod:`.subject` (:func:`generate_wholebody_subject`).
Only NumPy and SciPy are used; nothing here depends on a registration engine.

Example:
    >>> from mmreg.imaging.phantoms.wholebody import WholeBodySettings, generate_wholebody_subject
    >>> small = WholeBodySettings(mr_spacing_mm=4.4, mr_size=(112, 251),
    ...                           dxa_spacing_mm=4.4, dxa_size=(150, 400))
    >>> subject = generate_wholebody_subject(5, settings=small)
    >>> subject.dxa_bone.shape, sorted(subject.landmarks_mr) == sorted(LANDMARK_NAMES)
    ((150, 400), True)
"""

from mmreg.imaging.phantoms.wholebody.settings import WholeBodySettings
from mmreg.imaging.phantoms.wholebody.shapes import (
    AxialStack,
    Capsule,
    Clipped,
    Ellipsoid,
    FloatArray,
    Prism,
    RibCage,
    Shape,
)
from mmreg.imaging.phantoms.wholebody.subject import WholeBodySubject, generate_wholebody_subject
from mmreg.imaging.phantoms.wholebody.tissues import (
    BONE_DENSITY,
    LANDMARK_NAMES,
    MR_SIGNAL,
    SOFT_DENSITY,
    WHOLEBODY_LABELS,
    Tissue,
)

__all__ = [
    "BONE_DENSITY",
    "LANDMARK_NAMES",
    "MR_SIGNAL",
    "SOFT_DENSITY",
    "WHOLEBODY_LABELS",
    "AxialStack",
    "Capsule",
    "Clipped",
    "Ellipsoid",
    "FloatArray",
    "Prism",
    "RibCage",
    "Shape",
    "Tissue",
    "WholeBodySettings",
    "WholeBodySubject",
    "generate_wholebody_subject",
]
