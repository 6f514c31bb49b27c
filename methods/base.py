"""The one interface every registration method implements, and helpers they share.

A method maps a (preprocessed) fixed and moving image, 2D or 3D, to a
:class:`~mmreg.imaging.transform.Transform` from fixed-space to moving-space world
points (RAS mm). When given an ``initial`` transform, the method refines it and the
returned transform INCLUDES it: the result is the full fixed->moving map, never a
correction on top of the initial one.
"""

from __future__ import annotations

import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from mmreg.errors import InputError, MmregError, RegistrationError
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform

__all__ = [
    "CSV_COLUMNS_KEY",
    "BaseMethod",
    "Method",
    "RegistrationResult",
    "engine_seed",
    "one_line_reason",
    "overlap_fraction",
    "pyramid",
    "scratch_dir",
]

#: Largest seed handed to ITK/ANTs (their seeds are signed 32-bit or unsigned ints).
_MAX_ENGINE_SEED = 2**31 - 1
#: Fewest voxels along any axis at the coarsest pyramid level (coarser levels carry
#: too little structure for a multi-modal histogram).
MIN_LEVEL_VOXELS = 16


#: Key of a method's extras under which it reports numbers for the evaluation CSV
#: (``{"salient_fallback": 1.0}``): each becomes a column of its row.
CSV_COLUMNS_KEY = "csv_columns"


@dataclass
class RegistrationResult:
    """What a method returns.

    Attributes:
        transform: The full fixed->moving map, INCLUDING the initial transform.
        runtime_s: Wall-clock seconds of the registration (a chain: the sum).
        extras: JSON-serialisable method-specific outputs (final metric, iterations...).
        label_maps: Segmentations the method predicted, by side (``fixed``, ``moving``),
            each on that image's grid (``segguided``); written as derivatives.
    """

    transform: Transform
    runtime_s: float
    extras: dict[str, Any] = field(default_factory=dict)
    label_maps: dict[str, Image] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """A registration method, looked up by its CLI name in :mod:`mmreg.methods.registry`."""

    name: str
    deformable: bool

    def register(
        self,
        fixed: Image,
        moving: Image,
        *,
        initial: Transform | None = None,
        seed: int = 0,
        device: str = "cpu",
        threads: int = 1,
    ) -> RegistrationResult:
        """Estimate the fixed->moving transform (see the module docstring)."""
        ...


class BaseMethod(ABC):
    """Shared checks, timing and error translation; subclasses implement :meth:`_run`.

    Engine exceptions (ITK's and ANTs' ``RuntimeError``/``ValueError``) become a
    :class:`~mmreg.errors.RegistrationError` whose message is one line starting with
    the method name; errors already carrying a user-facing reason pass through.
    """

    #: The CLI name; a class shared by several methods sets it per instance.
    name: str = ""
    deformable: bool = False
    #: Least fraction of the fixed image's foreground that ``initial`` must map into the
    #: moving image; below it, engines fail obscurely (or silently), so we refuse first.
    min_overlap: ClassVar[float] = 0.05

    def register(
        self,
        fixed: Image,
        moving: Image,
        *,
        initial: Transform | None = None,
        seed: int = 0,
        device: str = "cpu",
        threads: int = 1,
    ) -> RegistrationResult:
        """Estimate the fixed->moving transform, refining ``initial`` when given.

        Args:
            fixed: The reference image (2D or 3D).
            moving: The image to align to it (same dimensionality).
            initial: A fixed->moving transform to start from; the result includes it.
                ``None`` lets the method choose its own start (e.g. centre alignment).
            seed: Seed for random sampling; the same seed and ``threads=1`` give the
                same result.
            device: ``cpu`` or ``cuda`` (learned methods only).
            threads: Threads the method may use.

        Raises:
            InputError: For images of different dimensionality, or an initial
                transform of the wrong dimensionality.
            RegistrationError: When the engine fails (one-line reason).
        """
        check_inputs(fixed, moving, initial)
        if initial is not None and self.min_overlap > 0:
            fraction = overlap_fraction(fixed, moving, initial)
            if fraction < self.min_overlap:
                raise RegistrationError(
                    f"{self.name}: the initial transform maps only {fraction:.0%} of the fixed "
                    "image into the moving image; the images do not overlap enough to register"
                )
        start = time.perf_counter()
        try:
            transform, extras = self._run(
                fixed, moving, initial=initial, seed=seed, device=device, threads=max(1, threads)
            )
        except MmregError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise RegistrationError(f"{self.name}: {one_line_reason(exc)}") from exc
        return RegistrationResult(transform, time.perf_counter() - start, extras)

    @abstractmethod
    def _run(
        self,
        fixed: Image,
        moving: Image,
        *,
        initial: Transform | None,
        seed: int,
        device: str,
        threads: int,
    ) -> tuple[Transform, dict[str, Any]]:
        """Return the full fixed->moving transform and the JSON-serialisable extras."""

    def __repr__(self) -> str:
        return f"<method {self.name}>"


def check_inputs(fixed: Image, moving: Image, initial: Transform | None) -> None:
    """Raise :class:`InputError` when the pair or the initial transform do not match."""
    if fixed.ndim != moving.ndim:
        raise InputError(
            f"fixed image is {fixed.ndim}D but moving image is {moving.ndim}D; "
            "both must have the same dimensionality"
        )
    if initial is not None and initial.ndim != fixed.ndim:
        raise InputError(f"initial transform is {initial.ndim}D but the images are {fixed.ndim}D")


def overlap_fraction(
    fixed: Image, moving: Image, transform: Transform, *, max_points: int = 32768
) -> float:
    """Fraction of the fixed image's foreground that ``transform`` maps into ``moving``.

    Foreground is every voxel above the minimum; a regular subsample of at most
    ``max_points`` voxels is checked against the moving grid (voxel centres +/- 0.5).
    """
    data = np.asarray(fixed.data)
    step = max(1, int(np.ceil((data.size / max_points) ** (1.0 / data.ndim))))
    sub = tuple(slice(None, None, step) for _ in range(data.ndim))
    mask = data[sub] > data.min()
    if not mask.any():
        return 0.0
    ijk = np.argwhere(mask) * step
    mapped = transform.map_points(fixed.grid.voxel_to_world(ijk))
    idx = moving.grid.world_to_voxel(mapped)
    inside = np.all((idx >= -0.5) & (idx <= np.asarray(moving.shape) - 0.5), axis=1)
    return float(inside.mean())


def engine_seed(seed: int) -> int:
    """The seed handed to ITK/ANTs for a user seed: in ``[1, 2**31 - 1]``.

    SimpleITK treats seed 0 as "seed from the wall clock" (``sitkWallClock``), so
    user seed 0 must not reach it unchanged; shifting every seed by one keeps
    distinct user seeds distinct.
    """
    return int(seed) % _MAX_ENGINE_SEED + 1


def pyramid(
    shape: tuple[int, ...],
    shrink_factors: tuple[int, ...],
    smoothing_sigmas: tuple[float, ...],
    *,
    min_voxels: int = MIN_LEVEL_VOXELS,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Drop the coarse levels that would leave fewer than ``min_voxels`` along an axis.

    The finest level is always kept, so tiny images still register at full resolution.
    """
    if len(shrink_factors) != len(smoothing_sigmas):
        raise ValueError("shrink factors and smoothing sigmas differ in length")
    keep = [
        i
        for i, f in enumerate(shrink_factors)
        if min(shape) // f >= min_voxels or i == len(shrink_factors) - 1
    ]
    return tuple(shrink_factors[i] for i in keep), tuple(smoothing_sigmas[i] for i in keep)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder inside the current directory, removed afterwards.

    Engines that insist on files (ANTs) write here, so that inside a Pydra task
    nothing leaks outside the task's own folder and nothing lands in ``/tmp``.
    """
    with tempfile.TemporaryDirectory(prefix=prefix, dir=Path.cwd()) as tmp:
        yield Path(tmp)


_ITK_LOCATION = re.compile(r"(?:/[^\s:]+:\d+:)|(?:\(0x[0-9a-fA-F]+\))")
_ITK_CLASS_PREFIX = re.compile(r"^[A-Z][A-Za-z0-9_]*[a-z][A-Z][A-Za-z0-9_]*\s*:\s+")


def one_line_reason(exc: BaseException) -> str:
    """A short single-line reason from an engine exception.

    ITK messages look like ``Exception thrown in SimpleITK ...: /path/file.hxx:123:
    ITK ERROR: Class(0x55d...): the reason``; keep only the reason.
    """
    text = str(exc)
    for marker in ("ITK ERROR:", "itk::ERROR:", "Description:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    text = _ITK_LOCATION.sub("", text)
    text = " ".join(text.split()).lstrip(": ")
    # ITK prefixes the reason with the class name, "MattesMutualInformation...: reason".
    text = _ITK_CLASS_PREFIX.sub("", text)
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
