"""Typed records passed between mmreg's layers (BIDS queries -> methods' trainers).

>>> LabelledImage("sub-01_T1w.nii.gz", "01", None, "T1w").dseg is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LabelledImage"]


@dataclass(frozen=True)
class LabelledImage:
    """One anatomical image with its ground-truth files (``mmreg train``'s image mode).

    Attributes:
        path: The image.
        subject: Participant label (no ``sub-``).
        session: Session label or ``None``.
        suffix: BIDS suffix (``T1w``).
        dseg: Label map on the image's grid (``..._space-<suffix>_dseg.nii.gz``) or ``None``.
        landmarks: Landmark table (``..._space-<suffix>_desc-landmarks.tsv``) or ``None``.
    """

    path: str
    subject: str
    session: str | None
    suffix: str
    dseg: str | None = None
    landmarks: str | None = None
