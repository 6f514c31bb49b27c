"""Small header-aligned BIDS datasets for the reliability probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmreg.imaging.image import Image

from factories import second_contrast, smooth_head, write_dataset_description, write_pair


def write_good_dataset(root: Path, subjects: tuple[str, ...] = ("01",)) -> Path:
    """Header-aligned T1w/T2w pairs (a few voxels' shift), one per subject."""
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -45
    for i, subject in enumerate(subjects):
        head = smooth_head((30, 32, 28), seed=10 + i)
        write_pair(
            root,
            subject,
            fixed=Image(head, affine),
            moving=Image(second_contrast(np.roll(head, 1, axis=0)), affine),
        )
    return root
