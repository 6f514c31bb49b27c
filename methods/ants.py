"""ANTs baselines through antspyx: ``ants-rigid``, ``ants-affine``, ``ants-syn``, ``ants-ai``.

All stages use Mattes mutual information (32 bins), so they work across contrasts.

Notes on antspyx (checked on 0.6.3):

* ``ants.registration`` swallows unknown keyword arguments, and 0.6 has no
  ``random_seed`` parameter: the seed is taken from ``ants.config._random_seed``
  (what ``ants.set_ants_deterministic`` sets). We set that attribute for the call
  only, and pass ``random_seed=`` instead on versions whose signature has it.
* ANTs' ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its
  first registration (later changes have no effect). With more than one thread,
  Mattes MI sums per-thread histograms in varying order, so repeated runs with the
  same seed differ slightly (~1e-3 in the matrix); with one thread they are
  bit-identical. :func:`mmreg.runtime.limit_threads` (or this module, before the
  first call) sets the variable.
* Given ``initial_transform`` (``-r``), the output INCLUDES the initial transform
  (checked with zero iterations, where the output equals it): a linear initial is
  collapsed into ``0GenericAffine.mat``; a deformable one (written as ``.h5``) comes
  back as extra files in ``fwdtransforms`` (e.g. ``[2GenericAffine, 1Warp,
  0GenericAffine]``, the new estimate acting first). Without one, antspyx
  initialises by aligning the centres of mass (``-r [fixed,moving,1]``).
* antspyx collects its outputs by globbing ``outprefix*[0-9]*``: any other file in
  the output folder whose name starts with the prefix and has a digit (``.h5``!)
  would be taken for an output, so the initial transform is named differently.
* antspyx's ``"SyN"`` has a hard-wired affine pre-stage (no iterations at full
  resolution) that missed a 10-degree rotation on small images for some seeds, so
  ``ants-syn`` runs ``"Affine"`` with this module's settings, then ``"SyNOnly"``
  started from its result.
* ``ants-ai`` (:class:`AntsAIMethod`) runs ``ants.affine_initializer``, i.e. ANTs'
  ``antsAffineInitializer`` (the multi-start search that ``antsAI`` generalises), then
  ``ants-affine`` from its best start. What the initializer does (ANTs source, and
  checked on 0.6.3): it aligns the intensity centres of mass (and, with
  ``use_principal_axis``, the principal axes), then starts from rotations about the
  fixed image's secondary and tertiary principal axes, each angle from ``-arc*180``
  to ``arc*180 + search`` degrees in ``search`` steps (3D: 20 x 20 = 400 starts at
  20 degrees; 2D: 20 in-plane starts), runs 20 conjugate-gradient iterations of Mattes
  MI (32 bins) from each, on every 10th voxel of the fixed image (a regular sample:
  no seed, bit-identical runs on one thread), and writes the best affine to ``txfn``,
  whose NAME it returns. Its ``local_search_iterations`` is read but unused (fixed at
  20: 0, 10 and 20 gave identical output and runtime); a failure is only a warning.
"""

from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.errors import RegistrationError
from mmreg.imaging import itk_space
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod, engine_seed, one_line_reason, pyramid, scratch_dir
from mmreg.methods.registry import register_factory, settings_from_params

__all__ = ["AntsAIMethod", "AntsMethod", "AntsSettings", "SearchSettings"]

_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
#: Linear-stage pyramid of every ANTs method here (``ants-ai`` refines with ``ants-affine``'s).
_LINEAR_PYRAMID: dict[str, Any] = {"shrink_factors": (4, 2, 1), "smoothing_sigmas": (2, 1, 0)}
#: Fewest voxels in ``ants-ai``'s search grid: the initializer's MI reads every 10th
#: voxel, and below ~2000 samples its 32x32-bin joint histogram picked wrong rotations
#: (a 72x80 2D phantom searched at 6 mm: 2 of 4 large rotations found; at 2 mm: 4 of 4).
_MIN_SEARCH_VOXELS = 20_000
#: Most voxels of the fixed image on which ``ants-ai`` scores its searches' starts
#: (a 2 mm brain has ~1M; larger images are scored on a coarser copy).
_MAX_SCORE_VOXELS = 2**21
#: Margin (fraction of the fixed field of view, each side) of the box where ``ants-ai``
#: expects the moving content seen through a deformable initial transform.
_SEARCH_MARGIN = 0.2


@dataclass(frozen=True)
class AntsSettings:
    """Parameters of one ANTs method, tuned for ~1-3 mm brain images.

    Attributes:
        type_of_transform: antspyx name: ``Rigid``, ``Affine`` or ``SyN``.
        shrink_factors: Linear-stage pyramid (coarse to fine); levels leaving fewer
            than 16 voxels along an axis are dropped for small images.
        smoothing_sigmas: Gaussian sigma per level, in voxels.
        iterations: Maximum linear iterations per level (ANTs stops earlier on
            convergence, threshold 1e-6 over 10 iterations).
        syn_iterations: SyN iterations per level (shrink 2**k ... 1, smoothing k ... 0
            voxels); ``SyN`` only, after an affine stage with the settings above.
        bins: Mattes histogram bins.
        sampling_rate: Fraction of voxels sampled (regular grid, randomly jittered)
            by the linear stages; raised for small images so that the coarsest level
            still has ``min_samples`` points.
        min_samples: Fewest samples wanted at the coarsest linear level.
        grad_step, flow_sigma, total_sigma: SyN step and regularisation (smoothing the
            total field, sigma 1 voxel, cut SyN's landmark error on the demo brains by
            ~20% against 0, at equal runtime).
        extra: Further ``ants.registration`` keyword arguments (override the above).
    """

    type_of_transform: str
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2, 1, 0)
    iterations: tuple[int, ...] = (500, 250, 100)
    syn_iterations: tuple[int, ...] = (60, 30, 10)
    bins: int = 32
    sampling_rate: float = 0.2
    min_samples: int = 2000
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


class AntsMethod(BaseMethod):
    """One ANTs registration (``ants.registration``) with Mattes MI."""

    def __init__(self, name: str, settings: AntsSettings, *, deformable: bool) -> None:
        self.name = name
        self.deformable = deformable
        self.settings = settings

    def _arguments(self, fixed: Image) -> dict[str, Any]:
        s = self.settings
        shrinks, sigmas = pyramid(fixed.shape, s.shrink_factors, s.smoothing_sigmas)
        iterations = s.iterations[len(s.iterations) - len(shrinks) :]
        coarse_voxels = float(np.prod(fixed.shape)) / float(shrinks[0]) ** fixed.ndim
        rate = float(min(1.0, max(s.sampling_rate, s.min_samples / coarse_voxels)))
        args: dict[str, Any] = {
            "type_of_transform": s.type_of_transform,
            "aff_metric": "mattes",
            "aff_sampling": s.bins,
            "aff_random_sampling_rate": rate,
            "aff_iterations": tuple(int(i) for i in iterations),
            "aff_shrink_factors": tuple(int(f) for f in shrinks),
            "aff_smoothing_sigmas": tuple(float(g) for g in sigmas),
            "syn_metric": "mattes",
            "syn_sampling": s.bins,
            "reg_iterations": tuple(int(i) for i in s.syn_iterations),
            "grad_step": s.grad_step,
            "flow_sigma": s.flow_sigma,
            "total_sigma": s.total_sigma,
            "verbose": False,
        }
        args.update(s.extra)
        return args

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
        del device
        import ants

        # Effective only before ANTs' first registration in this process (see module notes).
        os.environ[_THREADS_VARIABLE] = str(threads)
        args = self._arguments(fixed)
        fixed_a = itk_space.image_to_ants(fixed.with_data(fixed.data.astype(np.float32)))
        moving_a = itk_space.image_to_ants(moving.with_data(moving.data.astype(np.float32)))
        kind = self.settings.type_of_transform
        files: list[str] = []
        with scratch_dir(".mmreg-ants-") as tmp:
            if kind == "SyN":
                # antspyx's own "SyN" has a fixed affine pre-stage (no iterations at full
                # resolution) that is unreliable on small images; ours runs the affine
                # stage with this module's settings, then "SyNOnly" starts from it.
                linear, _, _ = self._call(
                    ants,
                    fixed_a,
                    moving_a,
                    {**args, "type_of_transform": "Affine"},
                    initial,
                    seed,
                    tmp,
                    "affine_",
                )
                transform, warped, files = self._call(
                    ants,
                    fixed_a,
                    moving_a,
                    {**args, "type_of_transform": "SyNOnly"},
                    linear,
                    seed,
                    tmp,
                    "syn_",
                )
            else:
                transform, warped, files = self._call(
                    ants, fixed_a, moving_a, args, initial, seed, tmp, "out_"
                )
            metric = _mutual_information(ants, fixed_a, warped)
        extras = {
            "engine": f"antspyx {getattr(ants, '__version__', 'unknown')}",
            "type_of_transform": kind,
            "metric": "mattes_mi",
            "final_metric": metric,
            "shrink_factors": list(args["aff_shrink_factors"]),
            "smoothing_sigmas": list(args["aff_smoothing_sigmas"]),
            "max_iterations": list(args["aff_iterations"]),
            "max_syn_iterations": list(args["reg_iterations"]) if kind == "SyN" else None,
            "sampling_rate": args["aff_random_sampling_rate"],
            "engine_seed": engine_seed(seed),
            "transform_files": files,
            "initialised": "given" if initial is not None else "center_of_mass",
        }
        return transform, extras

    def _call(
        self,
        ants: Any,
        fixed_a: Any,
        moving_a: Any,
        args: dict[str, Any],
        initial: Transform | None,
        seed: int,
        tmp: Path,
        prefix: str,
    ) -> tuple[Transform, Any, list[str]]:
        """One ``ants.registration``: full transform (initial included), warped image, files."""
        args = dict(args)
        if initial is not None:
            suffix = ".mat" if initial.is_linear else ".h5"
            # Not under ``prefix``: antspyx collects its outputs by globbing "prefix*[0-9]*",
            # which would also pick up "prefix_initial.h5".
            path = tmp / f"initial-for-{prefix.strip('_')}{suffix}"
            args["initial_transform"] = [str(initial.write(path))]
        with _ants_seed(ants, engine_seed(seed), args):
            try:
                reg = ants.registration(fixed_a, moving_a, outprefix=str(tmp / prefix), **args)
            except RuntimeError as exc:
                # antspyx discards antsRegistration's own messages; only the code is left.
                reason = one_line_reason(exc)
                raise RegistrationError(
                    f"{self.name}: antsRegistration failed ({reason})"
                ) from exc
        files = [str(p) for p in reg["fwdtransforms"]]
        # Read every file now: the scratch folder is removed afterwards.
        transform = Transform.from_ants_files(files, ndim=fixed_a.dimension)
        return transform, reg["warpedmovout"], [Path(f).name for f in files]

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-serialisable (for provenance)."""
        return {"name": self.name, **asdict(self.settings)}


@dataclass(frozen=True)
class SearchSettings:
    """Parameters of ``ants-ai``, given as ``ants-ai:key=value[:key=value]``.

    Defaults were chosen on twelve 2 mm brain phantoms (T1w to T2w) rotated 4-157
    degrees about random axes, each registered with and without a centre-of-mass
    initial, on one thread of a shared machine: 23 of the 24 end within 1.7 mm
    (landmarks) in 35-44 s, one at 25 mm (a wrong coarse optimum that both tries
    found). With ``tries=1:res=5`` 22 of 24 succeeded in about the same time.

    Attributes:
        search: Step between the searched rotation angles, degrees (antsAI's search
            factor; its default, 20, found closer starts, within 4.5 mm against 8.4 mm
            at 30 on those phantoms, but ``ants-affine`` refines either, and 30 costs
            2.4 times less). The cost grows with ``(360 * arc / search)**2`` in 3D.
        arc: Searched arc as a fraction of +/-180 degrees (antsAI's arc fraction;
            1: the full circle).
        principal: Start from the principal-axes alignment (1) rather than the identity
            rotation (0). On by default: the search only turns about two axes, and with
            the principal axes aligned first those turns cover every axis flip (without,
            three of the first six phantoms failed, > 40 mm).
        res: Voxel size (mm) of the search grid. The images are smoothed (Gaussian,
            sigma half the added blur) and resampled to it: the search's cost grows
            with the voxel count (at 2 mm it would take ~27 times longer) while 6 mm
            still resolves a head's shape. Small images are searched finer (the grid
            keeps at least 20000 voxels, enough samples for MI), never finer than their
            own voxels.
        refine: Run ``ants-affine`` (Mattes MI, full resolution) from the best start
            (1), or return the best start itself (0, e.g. to chain another method).
        tries: Searches on grids offset by ``1/tries`` of a search voxel, each giving a
            start; the start with the best MI on the full-resolution images is kept.
            The coarse MI of a head has nearly equal optima, and which one wins can
            change with the sampling (one phantom: 123 or 111 degrees, the truth, with
            the grid moved by half a voxel), while at full resolution the true pose
            scores better. Each try costs a search.
    """

    search: float = 30.0
    arc: float = 1.0
    principal: bool = True
    res: float = 6.0
    refine: bool = True
    tries: int = 2

    def __post_init__(self) -> None:
        # Below 5 degrees a 3D search has over 5000 starts (hours); above 90 it misses.
        if not 1 <= self.tries <= 4:
            raise ValueError(f"tries must be 1 to 4, got {self.tries}")
        if not 5.0 <= self.search <= 90.0:
            raise ValueError(f"search must be 5 to 90 degrees, got {self.search:g}")
        if not 0.01 <= self.arc <= 1.0:
            raise ValueError(f"arc must be 0.01 to 1, got {self.arc:g}")
        if not 0.0 < self.res <= 50.0:
            raise ValueError(f"res must be above 0 and at most 50 mm, got {self.res:g}")


class AntsAIMethod(BaseMethod):
    """``ants-ai``: ANTs' multi-start rotation search, then ``ants-affine`` from the best start.

    For large misalignment (any rotation up to 180 degrees), where ``ants-affine`` alone
    stays in the nearest local optimum. Given ``initial``, the search sees the moving
    image through it, ``moving(initial(x))`` (a linear initial just rewrites the moving
    header; a deformable one resamples it onto the fixed box grown by 20% each side), so
    its rotations are relative to the initial's orientation (with ``principal=0``; with
    1 they start from the principal axes of what it sees), its translation start is
    still the centres of mass, and the result includes ``initial``.
    """

    name = "ants-ai"
    deformable = False

    def __init__(self, settings: SearchSettings | None = None) -> None:
        self.settings = settings or SearchSettings()
        # The refinement IS ants-affine (same settings and code), under this name.
        self.affine = AntsMethod(
            self.name, AntsSettings("Affine", **_LINEAR_PYRAMID), deformable=False
        )

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
        start, search = self._search(fixed, moving, initial, threads)
        if not self.settings.refine:
            extras = {"engine": search.pop("engine"), "initialised": "rotation_search"}
            return start, {**extras, "search": search}
        transform, extras = self.affine._run(
            fixed, moving, initial=start, seed=seed, device=device, threads=threads
        )
        extras["initialised"] = "rotation_search"
        extras["search"] = {k: v for k, v in search.items() if k != "engine"}
        return transform, extras

    def _search(
        self, fixed: Image, moving: Image, initial: Transform | None, threads: int
    ) -> tuple[Transform, dict[str, Any]]:
        """The best start over ``tries`` searches (``initial`` included) and their record."""
        import ants

        s = self.settings
        # Effective only before ANTs' first use in this process (see module notes).
        os.environ[_THREADS_VARIABLE] = str(threads)
        began = time.perf_counter()
        spacing = _search_spacing(fixed.grid, s.res)
        starts: list[Transform] = []
        tries: list[dict[str, Any]] = []
        for k in range(s.tries):
            # Each try samples grids offset by k/tries of a voxel: which of two nearly
            # equal coarse optima wins changes with the sampling (see SearchSettings).
            found, record = self._search_once(ants, fixed, moving, initial, spacing, k / s.tries)
            starts.append(found if initial is None else found.then(initial))
            tries.append(record)
        best = 0
        if len(starts) > 1:
            # The full-resolution MI tells the true pose from a wrong coarse optimum
            # (e.g. -0.66 against -0.52 on a brain phantom) before any refinement.
            fixed_s = _scoring_image(fixed)
            fixed_a = itk_space.image_to_ants(fixed_s)
            for start, record in zip(starts, tries, strict=True):
                warped = itk_space.image_to_ants(start.apply(moving, fixed_s))
                record["full_res_mi"] = _mutual_information(ants, fixed_a, warped)
            scores = [r["full_res_mi"] for r in tries]
            best = min(
                range(len(starts)), key=lambda i: math.inf if scores[i] is None else scores[i]
            )
        record = {
            "engine": f"antspyx {getattr(ants, '__version__', 'unknown')}",
            "search_deg": s.search,
            "arc": s.arc,
            "principal_axes": s.principal,
            "spacing_mm": tries[best]["spacing_mm"],
            "rotation_deg": tries[best]["rotation_deg"],
            "chosen_try": best,
            "tries": tries,
            "runtime_s": time.perf_counter() - began,
        }
        return starts[best], record

    def _search_once(
        self,
        ants: Any,
        fixed: Image,
        moving: Image,
        initial: Transform | None,
        spacing: float,
        shift: float,
    ) -> tuple[Transform, dict[str, Any]]:
        """One ``ants.affine_initializer`` on grids offset by ``shift`` voxels: its affine."""
        s = self.settings
        fixed_grid = _search_grid(fixed.grid, spacing, shift=shift)
        fixed_c = Transform.identity(fixed.ndim).apply(_smoothed(fixed, spacing), fixed_grid)
        moving_c = _moving_for_search(fixed_c, moving, initial, spacing, shift=shift)
        if not np.any(fixed_c.data > fixed_c.data.min()) or not np.any(
            moving_c.data > moving_c.data.min()
        ):
            raise RegistrationError(f"{self.name}: an image is empty on the search grid")
        with scratch_dir(".mmreg-ants-ai-") as tmp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = Path(
                ants.affine_initializer(
                    itk_space.image_to_ants(fixed_c),
                    itk_space.image_to_ants(moving_c),
                    search_factor=s.search,
                    radian_fraction=s.arc,
                    use_principal_axis=s.principal,
                    local_search_iterations=20,  # ignored by ANTs (module notes)
                    mask=None,
                    txfn=str(tmp / "search.mat"),
                )
            )
            failed = [str(w.message) for w in caught if "exit status" in str(w.message)]
            if failed or not path.is_file():
                reason = failed[0] if failed else "no transform written"
                raise RegistrationError(f"{self.name}: antsAffineInitializer failed ({reason})")
            found = Transform.read(path, ndim=fixed.ndim)
        return found, {
            "spacing_mm": list(fixed_grid.spacing),
            "shift_voxels": shift,
            "fixed_shape": list(fixed_grid.shape),
            "moving_shape": list(moving_c.shape),
            "rotation_deg": _rotation_angle(found),
        }

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-serialisable (for provenance)."""
        return {"name": self.name, **asdict(self.settings), "affine": self.affine.describe()}


def make_ants_ai(params: dict[str, str] | None = None) -> AntsAIMethod:
    """The ``ants-ai`` factory: ``params`` are the spec's ``key=value`` strings."""
    return AntsAIMethod(settings_from_params("ants-ai", SearchSettings(), params))


def _search_spacing(grid: Grid, res: float) -> float:
    """``res``, reduced so that the field of view holds ``_MIN_SEARCH_VOXELS`` voxels."""
    volume = float(np.prod(np.asarray(grid.shape, dtype=float) * np.asarray(grid.spacing)))
    return float(min(res, (volume / _MIN_SEARCH_VOXELS) ** (1.0 / grid.ndim)))


def _search_grid(grid: Grid, spacing: float, *, margin: float = 0.0, shift: float = 0.0) -> Grid:
    """A grid with ``grid``'s axes and centre, voxels ``max(spacing, own)``, box grown by
    ``margin`` (a fraction of each side), moved by ``shift`` of its voxels along each axis."""
    n = grid.ndim
    own = np.asarray(grid.spacing)
    new = np.maximum(spacing, own)
    extent = np.asarray(grid.shape, dtype=float) * own * (1.0 + 2.0 * margin)
    shape = np.maximum(np.ceil(extent / new - 1e-6).astype(int), 2)
    affine = np.array(grid.affine, dtype=np.float64)
    affine[:3, :n] = affine[:3, :n] / own * new
    centre = grid.voxel_to_world((np.asarray(grid.shape, dtype=float) - 1.0) / 2.0)[0]
    affine[:3, 3] = centre - affine[:3, :n] @ ((shape - 1.0) / 2.0 - shift)
    return Grid(tuple(int(k) for k in shape), affine)


def _moving_for_search(
    fixed_c: Image, moving: Image, initial: Transform | None, spacing: float, *, shift: float
) -> Image:
    """``moving(initial(x))`` smoothed onto a world-axes grid that no search pose leaves.

    ITK's MI skips fixed samples that map outside the moving image, so on a tight moving
    grid a wrong pose that turns part of the head out of it is not penalised: with the
    moving image sampled on the fixed box plus 20%, a wrong pose beat the true one on one
    of three brain phantoms (116 against 157 degrees), and won or lost with the margin.
    The grid therefore also covers a ball around the moving image's centre of mass (where
    the search puts the fixed one) as large as the fixed grid seen from its centre of mass.
    """
    n = fixed_c.ndim
    weights = np.clip(np.asarray(fixed_c.data, dtype=np.float64), 0.0, None)
    fixed_centre = _centre_of_mass(fixed_c.grid, weights)
    radius = float(np.linalg.norm(_corners(fixed_c.grid) - fixed_centre, axis=1).max())
    radius += 2.0 * max(fixed_c.spacing)  # room for the local search's small shifts
    if initial is None or initial.is_linear:
        # The moving data under the header that makes it moving(initial(x)): exact, and
        # nothing outside the fixed box is lost.
        matrix = np.eye(4) if initial is None else initial.as_affine()
        seen = Image(np.asarray(moving.data), np.linalg.inv(matrix) @ moving.affine)
        data = np.clip(np.asarray(seen.data, dtype=np.float64), 0.0, None)
        centre = _centre_of_mass(seen.grid, data)
        content = _corners(seen.grid)
        step = max(spacing, min(seen.spacing))
    else:
        # A deformable initial has no such header; it is assumed to bring the moving
        # content near the fixed one (as it must, for the overlap check to pass).
        seen = moving
        centre = fixed_centre
        content = _corners(_search_grid(fixed_c.grid, spacing, margin=_SEARCH_MARGIN))
        step = spacing
    low = np.minimum(content.min(axis=0), centre - radius)[:n] - shift * step
    high = np.maximum(content.max(axis=0), centre + radius)[:n]
    shape = np.ceil((high - low) / step).astype(int) + 1
    affine = np.array(fixed_c.affine, dtype=np.float64)  # a 2D grid keeps the plane's z
    affine[:3, :n] = 0.0
    affine[:n, :n] = np.eye(n) * step
    affine[:n, 3] = low
    grid = Grid(tuple(int(k) for k in shape), affine)
    through = Transform.identity(n) if initial is None or initial.is_linear else initial
    return through.apply(_smoothed(seen, step), grid)


def _scoring_image(fixed: Image) -> Image:
    """The fixed image, on a coarser grid if it has over ``_MAX_SCORE_VOXELS`` voxels."""
    data = np.asarray(fixed.data, dtype=np.float32)
    if data.size <= _MAX_SCORE_VOXELS:
        return fixed.with_data(data)
    volume = float(np.prod(np.asarray(fixed.shape, dtype=float) * np.asarray(fixed.spacing)))
    spacing = (volume / _MAX_SCORE_VOXELS) ** (1.0 / fixed.ndim)
    grid = _search_grid(fixed.grid, spacing)
    return Transform.identity(fixed.ndim).apply(_smoothed(fixed, spacing), grid)


def _corners(grid: Grid) -> npt.NDArray[np.float64]:
    """World points ``(2**ndim, 3)`` of the grid's outermost voxel centres."""
    last = np.asarray(grid.shape, dtype=float) - 1.0
    ijk = np.array(np.meshgrid(*[[0.0, k] for k in last], indexing="ij"))
    return grid.voxel_to_world(ijk.reshape(grid.ndim, -1).T)


def _centre_of_mass(grid: Grid, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """World centre of mass (3,) of non-negative ``weights`` on ``grid``."""
    total = float(weights.sum())
    if total <= 0:
        raise RegistrationError("ants-ai: an image has no positive intensity to search with")
    ijk = np.asarray(ndimage.center_of_mass(weights), dtype=np.float64)
    return grid.voxel_to_world(ijk)[0]


def _smoothed(image: Image, spacing: float) -> Image:
    """Gaussian anti-aliasing before resampling to ``spacing`` mm (sigma: half the added blur)."""
    own = np.asarray(image.spacing)
    sigma_mm = 0.5 * np.sqrt(np.maximum(spacing**2 - own**2, 0.0))
    data = np.asarray(image.data, dtype=np.float32)
    if not np.any(sigma_mm > 0):
        return image.with_data(data)
    return image.with_data(ndimage.gaussian_filter(data, sigma_mm / own, mode="nearest"))


def _rotation_angle(transform: Transform) -> float:
    """Angle (degrees) of the rotation closest to a linear transform's matrix."""
    n = transform.ndim
    u, _, vt = np.linalg.svd(transform.as_affine()[:n, :n])
    rotation = u @ vt
    cos = (np.trace(rotation) - 1.0) / 2.0 if n == 3 else rotation[0, 0]
    return float(math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0)))))


def _mutual_information(ants: Any, fixed: Any, warped: Any) -> float | None:
    """ANTs' Mattes MI (negated: lower is better), or None where it is undefined."""
    try:
        value = float(ants.image_mutual_information(fixed, warped))
    except RuntimeError:  # e.g. an empty warped image
        return None
    return value if np.isfinite(value) else None


@contextmanager
def _ants_seed(ants: Any, seed: int, args: dict[str, Any]) -> Iterator[None]:
    """Seed antspyx's random sampling for one call, however this version takes it."""
    if "random_seed" in inspect.signature(ants.registration).parameters:
        args["random_seed"] = seed
        yield
        return
    config = getattr(ants, "config", None)
    if config is None or not hasattr(config, "_random_seed"):
        yield  # no way to seed this antspyx: runs are not repeatable
        return
    previous = config._random_seed
    config._random_seed = seed
    try:
        yield
    finally:
        config._random_seed = previous


def _register_all() -> None:
    common = _LINEAR_PYRAMID
    register_factory(
        "ants-rigid",
        lambda: AntsMethod("ants-rigid", AntsSettings("Rigid", **common), deformable=False),
    )
    register_factory(
        "ants-affine",
        lambda: AntsMethod("ants-affine", AntsSettings("Affine", **common), deformable=False),
    )
    register_factory(
        "ants-syn",
        lambda: AntsMethod("ants-syn", AntsSettings("SyN", **common), deformable=True),
    )
    register_factory("ants-ai", make_ants_ai)


_register_all()
