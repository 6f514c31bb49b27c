"""The steps one image pair goes through, free of any workflow engine.

``prepare`` (validate, reorient, resample, normalise, pre-align) ->
``register`` (one method or chain) -> ``evaluate`` (warp the original moving
image onto the original fixed grid and measure). ``mmreg.tasks`` wraps each
step as a Pydra task that reads and writes files.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mmreg.errors import InputError, MmregError
from mmreg.imaging.evaluation import evaluate_transform, folding_pct
from mmreg.imaging.groundtruth import GroundTruth
from mmreg.imaging.image import Image, load_image
from mmreg.imaging.planar import PlanarPair, make_planar, project_ground_truth
from mmreg.imaging.preprocess import PreprocessOptions, prealign, preprocess
from mmreg.imaging.transform import Transform
from mmreg.methods import RegistrationResult, run_chain
from mmreg.methods.base import CSV_COLUMNS_KEY
from mmreg.methods.chain import step_extras


@dataclass(frozen=True)
class Failure:
    """Why a step failed: a one-line reason for the table, a traceback for the log."""

    reason: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, MmregError):
            reason = str(exc)
        else:
            # Unexpected errors still give a one-line row; the log has the rest.
            detail = " ".join(str(exc).split()) or "no message"
            reason = f"internal error: {type(exc).__name__}: {detail}"[:500]
        return cls(reason=reason, traceback="".join(traceback.format_exception(exc)))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class PreparedPair:
    fixed: Image
    moving: Image
    initial: Transform


def load_pair(fixed_path: str, moving_path: str, *, coronal_slice: bool = False) -> PlanarPair:
    """Load both images; a 2D/3D pair becomes 2D with ``coronal_slice`` or is refused.

    Raises:
        InputError: For unreadable images, or different dimensionality without
            ``coronal_slice``.
    """
    fixed = load_image(fixed_path)
    moving = load_image(moving_path)
    if fixed.ndim != moving.ndim and not coronal_slice:
        raise InputError(
            f"fixed image is {fixed.ndim}D but moving image is {moving.ndim}D; "
            "both must have the same dimensionality (or use --coronal-slice to register a "
            "2D image to a 3D image's mid-coronal slice)"
        )
    return make_planar(fixed_path, moving_path, fixed, moving)


def _preprocess_channels(image: Image, options: PreprocessOptions) -> Image:
    """:func:`preprocess`, also applied to each of the image's channels (if any)."""
    out = preprocess(image, options)
    if image.channels is None:
        return out
    channels = [
        preprocess(Image(image.channels[..., c], image.affine), options).data
        for c in range(image.channels.shape[-1])
    ]
    return Image(out.data, out.affine, channels=np.stack(channels, axis=-1))


def prepare(fixed_path: str, moving_path: str, options: PreprocessOptions) -> PreparedPair:
    """Validate and preprocess both images and compute the pre-alignment."""
    planar = load_pair(fixed_path, moving_path, coronal_slice=options.coronal_slice)
    return prepare_loaded(planar, options)


def prepare_loaded(planar: PlanarPair, options: PreprocessOptions) -> PreparedPair:
    """:func:`prepare` for a pair already loaded with :func:`load_pair`."""
    fixed, moving = planar.fixed, planar.moving
    fixed_pre = _preprocess_channels(fixed, options)
    moving_pre = _preprocess_channels(moving, options)
    initial = Transform.from_affine(
        prealign(fixed_pre, moving_pre, options.prealign), ndim=fixed.ndim
    )
    return PreparedPair(fixed_pre, moving_pre, initial)


def register(
    prepared: PreparedPair,
    method: str,
    *,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    models: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register the preprocessed pair with a method or an ``A+B`` chain.

    ``models`` maps a learned method family to its weights file (default: shipped).
    """
    return run_chain(
        method,
        prepared.fixed,
        prepared.moving,
        initial=prepared.initial,
        seed=seed,
        device=device,
        threads=threads,
        models=models,
    )


def evaluate(
    fixed_path: str,
    moving_path: str,
    transform: Transform,
    ground_truth: GroundTruth,
    *,
    coronal_slice: bool = False,
) -> tuple[Image, dict[str, float]]:
    """Warp the original moving image onto the original fixed grid and measure.

    With ``coronal_slice``, a 3D side is its mid-coronal slice, and its ground truth is
    moved onto that slice (:func:`mmreg.imaging.planar.project_ground_truth`).

    Returns:
        The warped moving image and the metric columns, including the
        ``initial_*`` measures of the identity map.
    """
    planar = load_pair(fixed_path, moving_path, coronal_slice=coronal_slice)
    fixed, moving = planar.fixed, planar.moving
    ground_truth = project_ground_truth(ground_truth, planar)
    t0 = time.perf_counter()
    if moving.channels is not None:  # the warped output is the given file's own channel
        moving = Image(moving.channels[..., 0], moving.affine)
    warped = transform.apply(moving, fixed.grid, interpolation="linear")
    identity = Transform.identity(ndim=fixed.ndim)
    row: dict[str, float] = {}
    row.update(evaluate_transform(identity, ground_truth, prefix="initial_", with_hd95=True))
    row.update(evaluate_transform(transform, ground_truth))
    row["neg_jacobian_pct"] = folding_pct(transform, fixed.grid)
    row["evaluation_s"] = time.perf_counter() - t0
    return Image(warped.data.astype(np.float32), warped.affine), row


def method_columns(extras: Mapping[str, Any]) -> dict[str, float]:
    """Numbers a method (or any step of a chain) reports as evaluation columns.

    Example:
        >>> method_columns({"steps": [{"extras": {}}, {"extras": {"csv_columns": {"a": 1}}}]})
        {'a': 1.0}
    """
    out: dict[str, float] = {}
    for step in step_extras(extras):
        for key, value in (step.get(CSV_COLUMNS_KEY) or {}).items():
            out[str(key)] = float(value)
    return out


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of a row: NaN/inf become None."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float | np.floating):
            value = float(value)
            out[key] = value if math.isfinite(value) else None
        elif isinstance(value, np.integer):
            out[key] = int(value)
        else:
            out[key] = value
    return out
