"""ANTs baselines through antspyx: ``ants-rigid``, ``ants-affine``, ``ants-syn``.

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
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmreg.errors import RegistrationError
from mmreg.imaging import itk_space
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod, engine_seed, one_line_reason, pyramid, scratch_dir
from mmreg.methods.registry import register_factory

__all__ = ["AntsMethod", "AntsSettings"]

_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


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
        self.name = name  # type: ignore[misc]  # per-instance names for one class
        self.deformable = deformable  # type: ignore[misc]
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
    common = {"shrink_factors": (4, 2, 1), "smoothing_sigmas": (2, 1, 0)}
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


_register_all()
