"""SimpleITK baselines: ``sitk-rigid`` and ``sitk-affine``.

Mattes mutual information (50 bins) on a random voxel sample with a fixed seed, a
three-level pyramid (shrink 4, 2, 1; smoothing 2, 1, 0 voxels), regular-step
gradient descent with parameter scales from physical shifts. ``sitk-affine`` runs
the rigid stage first and starts the affine stage from its result.

Composition with an initial transform ``A``: SimpleITK estimates ``B`` with ``A``
as the moving initial transform (the metric samples ``moving(A(B(x)))``), so the
full map is ``B.then(A)``. Without ``A``, ``B`` starts from a centred initialiser
(intensity moments, i.e. centres of mass).

Determinism: SimpleITK reads seed 0 as "seed from the clock", so the user seed goes
through :func:`~mmreg.methods.base.engine_seed`. ``ImageRegistrationMethod.SetNumberOfThreads``
does not reach the metric, whose multi-threaded histogram sums vary from run to run
(~1e-3 in the matrix, more for affine), so the process-wide default is set to
``threads`` for the duration of the call. With one thread, results are bit-identical
for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from mmreg.imaging import itk_space
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.interrupts import library_callback
from mmreg.methods.base import BaseMethod, engine_seed, pyramid
from mmreg.methods.registry import register_factory

__all__ = ["SitkMethod", "SitkSettings"]


@dataclass(frozen=True)
class SitkSettings:
    """Parameters of the SimpleITK methods.

    Attributes:
        affine: Add an affine stage after the rigid one.
        bins: Mattes histogram bins.
        sampling_percentage: Fraction of voxels sampled at random per level; raised on
            small levels so that each has at least ``min_samples`` points.
        min_samples: Fewest metric samples per level.
        shrink_factors: Pyramid, coarse to fine (levels leaving fewer than 16 voxels
            along an axis are dropped for small images).
        smoothing_sigmas: Gaussian sigma per level, in voxels.
        learning_rate: Initial step (in scaled parameter units, about mm of shift).
        min_step: Stop a level when the step falls below this.
        iterations: Maximum iterations per level.
        relaxation: Step reduction when the gradient direction reverses.
        initializer: ``moments`` or ``geometry`` (used only without an initial transform).
    """

    affine: bool = False
    bins: int = 50
    sampling_percentage: float = 0.2
    min_samples: int = 3000
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    learning_rate: float = 4.0
    min_step: float = 1e-4
    iterations: int = 300
    relaxation: float = 0.7
    initializer: str = "moments"


class SitkMethod(BaseMethod):
    """Rigid (and optionally affine) Mattes-MI registration with SimpleITK."""

    def __init__(self, name: str, settings: SitkSettings) -> None:
        self.name = name
        self.deformable = False
        self.settings = settings

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
        s = self.settings
        fixed_s = sitk.Cast(itk_space.image_to_sitk(fixed), sitk.sitkFloat32)
        moving_s = sitk.Cast(itk_space.image_to_sitk(moving), sitk.sitkFloat32)
        ndim = fixed.ndim
        euler: sitk.Euler3DTransform | sitk.Euler2DTransform = (
            sitk.Euler3DTransform() if ndim == 3 else sitk.Euler2DTransform()
        )
        rigid: sitk.Transform = euler
        moving_initial = None
        if initial is None:
            mode = (
                sitk.CenteredTransformInitializerFilter.MOMENTS
                if s.initializer == "moments"
                else sitk.CenteredTransformInitializerFilter.GEOMETRY
            )
            rigid = sitk.CenteredTransformInitializer(fixed_s, moving_s, euler, mode)
        else:
            # Rotate about the fixed image's centre: rotations and shifts then decouple.
            euler.SetCenter(_centre(fixed_s))
            moving_initial = initial.to_sitk()

        shrinks, sigmas = pyramid(fixed.shape, s.shrink_factors, s.smoothing_sigmas)
        stages: list[dict[str, Any]] = []
        with _global_threads(threads):
            result, info = self._stage(
                fixed_s, moving_s, rigid, moving_initial, shrinks, sigmas, seed, threads
            )
            stages.append({"stage": "rigid", **info})
            if s.affine:
                rigid_out = _as_linear(result, ndim)
                affine = sitk.AffineTransform(ndim)
                affine.SetCenter(rigid_out.GetCenter())
                affine.SetMatrix(rigid_out.GetMatrix())
                affine.SetTranslation(rigid_out.GetTranslation())
                result, info = self._stage(
                    fixed_s, moving_s, affine, moving_initial, shrinks, sigmas, seed, threads
                )
                stages.append({"stage": "affine", **info})

        refinement = Transform.from_sitk(result)
        transform = refinement if initial is None else refinement.then(initial)
        extras = {
            "engine": f"SimpleITK {sitk.Version.VersionString()}",
            "metric": "mattes_mi",
            "final_metric": stages[-1]["final_metric"],
            "iterations": sum(st["iterations"] for st in stages),
            "stages": stages,
            "shrink_factors": list(shrinks),
            "smoothing_sigmas": list(sigmas),
            "engine_seed": engine_seed(seed),
            "initialised": "given" if initial is not None else s.initializer,
        }
        return transform, extras

    def _stage(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        transform: sitk.Transform,
        moving_initial: sitk.Transform | None,
        shrinks: tuple[int, ...],
        sigmas: tuple[float, ...],
        seed: int,
        threads: int,
    ) -> tuple[sitk.Transform, dict[str, Any]]:
        s = self.settings
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(threads)
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.bins)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        n_voxels = float(np.prod(fixed.GetSize()))
        percentages = [
            float(
                min(
                    1.0,
                    max(
                        s.sampling_percentage, s.min_samples * f ** fixed.GetDimension() / n_voxels
                    ),
                )
            )
            for f in shrinks
        ]
        reg.SetMetricSamplingPercentagePerLevel(percentages, engine_seed(seed))
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=s.learning_rate,
            minStep=s.min_step,
            numberOfIterations=s.iterations,
            relaxationFactor=s.relaxation,
            gradientMagnitudeTolerance=1e-8,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([int(f) for f in shrinks])
        reg.SetSmoothingSigmasPerLevel([float(g) for g in sigmas])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        if moving_initial is not None:
            reg.SetMovingInitialTransform(moving_initial)
        reg.SetInitialTransform(transform, inPlace=False)
        count = [0]

        @library_callback
        def _count() -> None:
            count[0] += 1

        reg.AddCommand(sitk.sitkIterationEvent, _count)
        out = reg.Execute(fixed, moving)
        metric = float(reg.GetMetricValue())
        return out, {
            "final_metric": metric if np.isfinite(metric) else None,
            "iterations": count[0],
            "sampling_percentages": percentages,
            "stop_condition": " ".join(reg.GetOptimizerStopConditionDescription().split()),
        }

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-serialisable (for provenance)."""
        return {"name": self.name, **asdict(self.settings)}


@contextmanager
def _global_threads(threads: int) -> Iterator[None]:
    """Set SimpleITK's process-wide default thread count for one registration."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _centre(image: sitk.Image) -> tuple[float, ...]:
    """Physical (LPS) centre of an image's voxel grid."""
    mid = [(n - 1) / 2.0 for n in image.GetSize()]
    return tuple(image.TransformContinuousIndexToPhysicalPoint(mid))


def _as_linear(tx: sitk.Transform, ndim: int) -> sitk.Euler3DTransform | sitk.Euler2DTransform:
    """The optimised (rigid) transform itself, unwrapped from a composite if SimpleITK
    wrapped it."""
    tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform):
        tx = tx.GetNthTransform(tx.GetNumberOfTransforms() - 1).Downcast()
    if tx.GetDimension() != ndim or not isinstance(
        tx, sitk.Euler3DTransform | sitk.Euler2DTransform
    ):
        raise RuntimeError(f"unexpected transform from the rigid stage: {tx.GetName()}")
    return tx


register_factory("sitk-rigid", lambda: SitkMethod("sitk-rigid", SitkSettings()))
register_factory("sitk-affine", lambda: SitkMethod("sitk-affine", SitkSettings(affine=True)))
