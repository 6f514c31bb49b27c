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
* Given ``initial_transform`` (``-r``), antsRegistration's collapsed output
  ``0GenericAffine.mat`` INCLUDES the initial linear transform (with zero
  iterations it equals it). Without one, antspyx initialises by aligning the
  centres of mass (``-r [fixed,moving,1]``).
"""

from __future__ import annotations

import inspect
import os
import sys
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
from mmreg.methods.base import BaseMethod, engine_seed, pyramid, scratch_dir
from mmreg.methods.registry import register_factory

__all__ = ["AntsMethod", "AntsSettings"]

_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


@dataclass(frozen=True)
class AntsSettings:
    """Parameters of one ANTs method, tuned for ~1-3 mm brain images.

    Attributes:
        type_of_transform: antspyx name: ``Rigid``, ``Affine`` or ``SyN``.
        shrink_factors: Linear-stage pyramid (coarse to fine); levels leaving fewer
            than 8 voxels along an axis are dropped for small images.
        smoothing_sigmas: Gaussian sigma per level, in voxels.
        iterations: Maximum linear iterations per level (ANTs stops earlier on
            convergence, threshold 1e-6 over 10 iterations).
        syn_iterations: SyN iterations per level (shrink 2**k ... 1); ``SyN`` only.
            The SyN stage's own affine pre-stage is fixed by antspyx.
        bins: Mattes histogram bins.
        sampling_rate: Fraction of voxels sampled (regular grid, randomly jittered)
            by the linear stages; raised for small images so that the coarsest level
            still has ``min_samples`` points.
        min_samples: Fewest samples wanted at the coarsest linear level.
        grad_step, flow_sigma, total_sigma: SyN step and regularisation.
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
    total_sigma: float = 0.0
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
        with scratch_dir(".mmreg-ants-") as tmp:
            if initial is not None:
                suffix = ".mat" if initial.is_linear else ".h5"
                args["initial_transform"] = [str(initial.write(tmp / f"initial{suffix}"))]
            with _ants_seed(ants, engine_seed(seed), args), _captured_stderr(tmp) as log:
                try:
                    reg = ants.registration(fixed_a, moving_a, outprefix=str(tmp / "out_"), **args)
                except RuntimeError as exc:
                    raise RegistrationError(f"{self.name}: {_ants_reason(log, exc)}") from exc
            files = [str(p) for p in reg["fwdtransforms"]]
            # Read every file now: the scratch folder is removed on exit.
            transform = Transform.from_ants_files(files, ndim=fixed.ndim)
            metric = float(ants.image_mutual_information(fixed_a, reg["warpedmovout"]))
        extras = {
            "engine": f"antspyx {getattr(ants, '__version__', 'unknown')}",
            "type_of_transform": args["type_of_transform"],
            "metric": "mattes_mi",
            "final_metric": metric if np.isfinite(metric) else None,
            "shrink_factors": list(args["aff_shrink_factors"]),
            "smoothing_sigmas": list(args["aff_smoothing_sigmas"]),
            "max_iterations": list(args["aff_iterations"]),
            "max_syn_iterations": list(args["reg_iterations"]) if self.deformable else None,
            "sampling_rate": args["aff_random_sampling_rate"],
            "engine_seed": engine_seed(seed),
            "transform_files": [Path(f).name for f in files],
            "initialised": "given" if initial is not None else "center_of_mass",
        }
        return transform, extras

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-serialisable (for provenance)."""
        return {"name": self.name, **asdict(self.settings)}


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


@contextmanager
def _captured_stderr(folder: Path) -> Iterator[Path]:
    """Send the process's stderr (fd 2, where ANTs writes its errors) to a file.

    ANTs reports only an exit code to Python; the reason is on the C-level stderr.
    What was captured is passed on to the real stderr afterwards, so nothing is lost.
    """
    path = folder / "ants_stderr.log"
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to capture
        yield path
        return
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield path
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        text = path.read_text(errors="replace") if path.exists() else ""
        if text.strip():
            sys.stderr.write(text)


def _ants_reason(log: Path, exc: BaseException) -> str:
    """The most telling line of ANTs' stderr, else the Python exception's text."""
    from mmreg.methods.base import one_line_reason

    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for key in ("ITK ERROR", "itk::ERROR", "Description:", "ERROR", "Error", "error"):
        hits = [ln for ln in lines if key in ln]
        if hits:
            return one_line_reason(RuntimeError(hits[-1]))
    return one_line_reason(exc)


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
