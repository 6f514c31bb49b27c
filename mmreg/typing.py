"""Type aliases shared across mmreg."""

from __future__ import annotations

import os
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

PathLike: TypeAlias = str | os.PathLike[str]
#: A 4x4 homogeneous matrix (voxel->world, or world->world), float64.
Matrix4: TypeAlias = npt.NDArray[np.float64]
#: Image intensities or a label map, spatial axes only (2D or 3D).
Array: TypeAlias = npt.NDArray[np.floating] | npt.NDArray[np.integer]
#: N points, one per row, world coordinates in mm (RAS), shape (N, 3).
Points: TypeAlias = npt.NDArray[np.float64]
