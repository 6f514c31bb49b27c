"""Register one pair of files outside BIDS: what ``mmreg register`` and Nipype run.

The same steps as the BIDS-App's participant level (:mod:`mmreg.pipeline`: validate,
reorient, resample, normalise, pre-align, register, warp onto the fixed image's original
grid), the same methods, models and one-line errors, with outputs named by a prefix as
``antsRegistrationSyNQuick.sh -o PREFIX`` does:

- ``PREFIX_xfm.txt`` (linear) or ``PREFIX_xfm.h5`` (deformable): ITK transform, fixed
  points to moving points, readable by SimpleITK and antspyx;
- ``PREFIX_warped.nii.gz``: the moving image on the fixed image's grid;
- ``PREFIX_warped_labels.nii.gz``: with ``moving_labels``, the label map (nearest
  neighbour).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmreg.errors import UsageError
from mmreg.imaging.image import Image, load_image, load_labels, save_image
from mmreg.imaging.preprocess import DEFAULT_PREALIGN, DEFAULT_SPACING, PreprocessOptions
from mmreg.imaging.transform import Transform
from mmreg.methods import model_families
from mmreg.models import resolve_model
from mmreg.pipeline import load_pair, prepare, register
from mmreg.runtime import limit_threads, resolve_device

PathLike = str | os.PathLike[str]

#: Isotropic working grid of a single-pair run, mm (as the BIDS-App's ``--resolution``).


@dataclass(frozen=True)
class SingleResult:
    """Files written by :func:`register_files`, and the method's runtime.

    Attributes:
        transform: ITK transform file (fixed-space points to moving-space points).
        warped: The moving image resampled onto the fixed image's grid.
        warped_labels: The moving label map on the fixed grid, or ``None``.
        runtime_s: Seconds the method took (preprocessing excluded).
    """

    transform: Path
    warped: Path
    warped_labels: Path | None
    runtime_s: float


def _output_paths(prefix: PathLike) -> tuple[Path, Path]:
    prefix = Path(prefix)
    if prefix.name in ("", ".", ".."):
        raise UsageError(f"--out {prefix}: give a file name prefix, e.g. {prefix / 'sub-01'}")
    if prefix.parent.exists() and not prefix.parent.is_dir():
        raise UsageError(f"--out {prefix}: {prefix.parent} is not a folder")
    return prefix.parent, Path(f"{prefix}_")


def apply_transform_file(
    transform: PathLike,
    moving: PathLike,
    reference: PathLike,
    out: PathLike,
    *,
    labels: bool = False,
) -> Path:
    """Resample ``moving`` onto ``reference``'s grid through an mmreg/ITK transform file.

    Args:
        transform: ``*_xfm.txt``/``.h5`` from :func:`register_files` (fixed -> moving).
        moving: Image or label map on the moving side.
        reference: The fixed image whose grid the output takes.
        out: Output NIfTI path.
        labels: Nearest-neighbour interpolation and integer output, for label maps.
    """
    grid = load_image(reference).grid
    if labels:
        image = load_labels(moving)
        warped = Transform.read(transform).apply(image, grid, interpolation="nearest")
        return save_image(warped, out, dtype=np.int32)
    image = load_image(moving)
    warped = Transform.read(transform).apply(image, grid, interpolation="linear")
    return save_image(Image(warped.data.astype(np.float32), warped.affine), out)


def register_files(
    fixed: PathLike,
    moving: PathLike,
    method: str,
    out_prefix: PathLike,
    *,
    moving_labels: PathLike | None = None,
    spacing: float = DEFAULT_SPACING,
    prealign: str = DEFAULT_PREALIGN,
    mask: bool = False,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    models: Mapping[str, PathLike] | None = None,
) -> SingleResult:
    """Register ``moving`` onto ``fixed`` with a method or ``A+B`` chain; write the outputs.

    Raises:
        InputError: An image cannot be read or registered (one-line reason).
        UsageError: Unknown method, bad options, or weights that cannot be used.
        RegistrationError: The method failed on valid images.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> folder = Path(tempfile.mkdtemp())
        >>> grid = np.zeros((24, 24, 24), np.float32); grid[6:18, 8:16, 5:19] = 1
        >>> _ = save_image(Image(grid, np.eye(4)), folder / "a.nii.gz")
        >>> _ = save_image(Image(np.roll(grid, 2, 0), np.eye(4)), folder / "b.nii.gz")
        >>> result = register_files(folder / "a.nii.gz", folder / "b.nii.gz", "identity",
        ...                         folder / "p", prealign="com", spacing=1.0)
        >>> sorted(p.name for p in folder.glob("p_*"))
        ['p_warped.nii.gz', 'p_xfm.txt']
    """
    folder, stem = _output_paths(out_prefix)
    options = PreprocessOptions(spacing=spacing, prealign=prealign, mask=mask)
    model_paths = {
        family: str(resolve_model(family, (models or {}).get(family)))
        for family in model_families([method])
    }
    limit_threads(threads)
    prepared = prepare(str(fixed), str(moving), options)
    t0 = time.perf_counter()
    result = register(
        prepared,
        method,
        seed=seed,
        device=resolve_device(device),
        threads=threads,
        models=model_paths,
    )
    runtime = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".txt" if result.transform.is_linear else ".h5"
    xfm = result.transform.write(Path(f"{stem}xfm{suffix}"))
    grid_source = load_pair(str(fixed), str(moving))
    warped = result.transform.apply(grid_source.moving, grid_source.fixed.grid)
    warped_path = save_image(
        Image(warped.data.astype(np.float32), warped.affine), Path(f"{stem}warped.nii.gz")
    )
    labels_path = None
    if moving_labels is not None:
        labels_path = apply_transform_file(
            xfm, moving_labels, fixed, Path(f"{stem}warped_labels.nii.gz"), labels=True
        )
    return SingleResult(xfm, warped_path, labels_path, runtime)
