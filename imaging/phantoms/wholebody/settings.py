"""How a whole-body subject is generated: :class:`WholeBodySettings`.

Example:
    >>> WholeBodySettings().mr_size, WholeBodySettings(mr_spacing_mm=4.4).mr_spacing_mm
    ((224, 501), 4.4)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WholeBodySettings:
    """How a whole-body subject is generated (anatomy is drawn from the seed).

    Attributes:
        mr_spacing_mm: Isotropic voxel size of the MR volumes.
        mr_size: MR field of view in voxels, ``(left-right, superior-inferior)``;
            the anterior-posterior size follows the subject's depth. The default
            501 x 224 (SI x LR) at 2.2 mm is the UK Biobank neck-to-knee Dixon.
        mr_slice_factor: The MR is acquired with slices this many voxels thick
            (along superior-inferior) and resampled to isotropic, like a
            multi-slice Dixon; 1 renders at full resolution (slower).
        dxa_spacing_mm: Pixel size of the DXA images.
        dxa_size: DXA field of view in pixels, ``(left-right, superior-inferior)``
            (the paper's 800 x 300 region, head to feet).
        height_range_mm: Subject heights are drawn uniformly from this range.
        max_rotation_deg: Largest in-plane (coronal) rotation of the MR relative
            to the DXA; the angle is drawn between half of this and this.
        large_rotations: Draw the in-plane rotation from the full circle instead
            (``max_rotation_deg`` is then ignored; a robustness test, not anatomy).
        max_translation_mm: Largest translation of the MR relative to the DXA
            along each axis.
        max_limb_deg: Largest change of each arm's and leg's abduction between
            the DXA and the MR.
        max_shoulder_mm: Largest change of each shoulder's (humeral head's)
            height between the DXA and the MR; half of it left-right.
        spine_curvature: Scale of the sagittal spine curvature (lordosis,
            kyphosis); 0 gives a spine straight in the sagittal plane.
        coronal_curvature: Scale of the coronal curvature (scoliosis); 0: none.
        spine: Build the vertebral column (False: a subject without one, nor the
            ribs it would carry, to test what depends on finding it).
        mr_noise: MR noise sigma relative to the fat signal (magnitude noise).
        mr_bias: Roughly the largest log-amplitude of the smooth MR bias field.
        dxa_noise: DXA noise sigma relative to a typical trunk value.
    """

    mr_spacing_mm: float = 2.2
    mr_size: tuple[int, int] = (224, 501)
    mr_slice_factor: int = 2
    dxa_spacing_mm: float = 2.2
    dxa_size: tuple[int, int] = (300, 800)
    height_range_mm: tuple[float, float] = (1550.0, 1740.0)
    max_rotation_deg: float = 4.0
    large_rotations: bool = False
    max_translation_mm: float = 20.0
    max_limb_deg: float = 4.0
    max_shoulder_mm: float = 10.0
    spine_curvature: float = 1.0
    coronal_curvature: float = 1.0
    spine: bool = True
    mr_noise: float = 0.02
    mr_bias: float = 0.2
    dxa_noise: float = 0.01

    def __post_init__(self) -> None:
        if self.mr_slice_factor < 1:
            raise ValueError(f"mr_slice_factor must be >= 1, got {self.mr_slice_factor}")
        if min(self.mr_size) < 8 or min(self.dxa_size) < 8:
            raise ValueError("mr_size and dxa_size need at least 8 voxels per axis")
        if self.mr_spacing_mm <= 0 or self.dxa_spacing_mm <= 0:
            raise ValueError("spacings must be positive")
