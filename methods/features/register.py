"""``mind-io`` and ``dns-io``: deformable registration by instance optimisation on features.

How one pair is registered:

1. The moving image is resampled onto the fixed image's grid through ``initial``
   (usually an affine step of the chain, ``ants-affine+dns-io``; identity without one).
2. Both images are rescaled to ``[0, 1]`` (0.5th-99.5th percentile of the nonzero
   voxels, as the DNS network was trained) and turned into feature maps: MIND-SSC
   (``mind-io``) or the learned DNS features (``dns-io``, weights chosen by
   ``--model dns=PATH``).
3. An optimiser (:mod:`~mmreg.methods.features.optimise`) finds the residual field:
   ``opt=convex`` (ConvexAdam-class: coupled convex search then Adam on squared feature
   differences; ``mind-io``'s default), ``opt=mok`` (Mok et al.'s three-level Adam on
   ``-cos``) or ``opt=both`` (the convex search, then Mok et al.'s finer levels from its
   result; ``dns-io``'s default, since DNS features are trained as unit vectors).
4. Folding guard: while more than ``max_folding`` percent of the voxels fold (Jacobian
   determinant <= 0), the field is smoothed once more (at most 20 times), then halved.
5. The result is ``x -> initial(x + u(x))``: a displacement field on the fixed grid
   followed by the initial transform, written as an ITK composite ``.h5``.

Parameters go through the method spec, e.g. ``mind-io:grid=3:window=5:lambda_reg=2``;
``mmreg --help`` lists the methods, and an unknown key gets a one-line error listing
the known ones.

Example:
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> from mmreg.methods import get_method
    >>> yy, xx = np.mgrid[:48, :48]
    >>> disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 100).astype(np.float32)
    >>> fixed, moving = Image(disc, np.eye(4)), Image(np.roll(disc, 2, axis=0), np.eye(4))
    >>> result = get_method("mind-io:grid=2:window=3").register(fixed, moving)
    >>> round(float(result.transform.map_points([[24.0, 24.0, 0.0]])[0, 0]))
    26
    >>> result.extras["neg_jacobian_pct"] < 0.5
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod
from mmreg.methods.features.dns import normalise_for_dns
from mmreg.methods.features.mind import mind_ssc
from mmreg.methods.features.optimise import (
    ConvexAdamSettings,
    MultilevelSettings,
    convex_adam,
    multilevel_adam,
    smooth_field,
)
from mmreg.methods.registry import register_factory, settings_from_params

__all__ = [
    "FeatureIOMethod",
    "FeatureIOSettings",
    "fold_guard",
    "folding_percent",
    "pca_reduce",
    "unit_range",
]

#: Optimisers a spec may choose with ``opt=``.
OPTIMISERS = ("convex", "mok", "both")
#: Smoothing passes the folding guard may add.
MAX_GUARD_PASSES = 20


@dataclass(frozen=True)
class FeatureIOSettings:
    """Parameters of ``mind-io`` / ``dns-io`` (``name:key=value``; voxels of the working grid).

    Attributes:
        opt: ``convex``, ``mok`` or ``both`` (see the module docstring).
        grid: Coarse grid spacing of the convex search.
        window: Search half-width in coarse-grid steps.
        ic: Inverse-consistent convex search.
        adam_grid: Grid spacing of ConvexAdam's Adam stage.
        iterations: ConvexAdam's Adam steps.
        lambda_reg: ConvexAdam's diffusion weight.
        levels: ``mok``'s number of levels, the last ones of 4, 2, 1 (times ``shrink``);
            0: 2 after the convex search (its coarse grid stands in for level 4), all 3
            alone.
        shrink: Grid spacing of ``mok``'s finest level (1: the working grid itself).
        mok_scale: Multiplies ``mok``'s regularisation weights (0.6, 0.5, 0.4).
        sigma: ``mok``'s Gaussian smoothing of the features (voxels of each level).
        control: ``mok``'s least control-grid spacing.
        samples: ``mok``'s voxels per step (0: all).
        radius: MIND patch radius (``mind-io``).
        dilation: MIND neighbour distance (``mind-io``).
        max_folding: Percent of folding voxels the guard allows.
        mind: ``dns-io`` only: MIND-SSC channels next to the learned ones.
        pca: ``dns-io`` only: keep this many principal components of the pair's learned
            features (0: all); the optimisers' cost is linear in the channels.
    """

    opt: str = "both"
    grid: int = 4
    window: int = 4
    ic: bool = True
    adam_grid: int = 2
    iterations: int = 80
    lambda_reg: float = 1.25
    levels: int = 0
    shrink: int = 1
    mok_scale: float = 1.0
    sigma: float = 1.0
    control: int = 2
    samples: int = 10000
    radius: int = 1
    dilation: int = 2
    max_folding: float = 0.5
    mind: bool = False
    pca: int = 0

    def __post_init__(self) -> None:
        if self.opt not in OPTIMISERS:
            raise ValueError(f"opt must be one of {', '.join(OPTIMISERS)}, got {self.opt!r}")
        if not 0 <= self.levels <= 3:
            raise ValueError("levels must be 0 (automatic), 1, 2 or 3")
        if self.radius < 0 or self.dilation < 1:
            raise ValueError("radius must be >= 0 and dilation >= 1")
        if self.pca < 0:
            raise ValueError("pca must not be negative")
        if not (0 <= self.max_folding <= 100 and math.isfinite(self.mok_scale)):
            raise ValueError("max_folding must be within 0-100")
        self.convex()  # validates the shared fields

    def convex(self) -> ConvexAdamSettings:
        """ConvexAdam's settings; with ``opt=both`` its Adam stage gives way to Mok et al.'s."""
        return ConvexAdamSettings(
            grid=self.grid,
            window=self.window,
            inverse_consistent=self.ic,
            adam_grid=self.adam_grid,
            adam_iterations=0 if self.opt == "both" else self.iterations,
            lambda_reg=self.lambda_reg,
        )

    @property
    def mok_levels(self) -> int:
        """The number of Mok levels run (``levels``, or its automatic choice)."""
        return self.levels or (2 if self.opt == "both" else 3)

    def multilevel(self) -> MultilevelSettings:
        base = MultilevelSettings()
        levels = tuple(
            dataclasses.replace(
                level,
                shrink=level.shrink * self.shrink,
                lambda_reg=level.lambda_reg * self.mok_scale,
            )
            for level in base.levels[-self.mok_levels :]
        )
        return MultilevelSettings(
            levels=levels, sigma=self.sigma, control=self.control, samples=self.samples
        )


def unit_range(data: np.ndarray) -> torch.Tensor:
    """``data`` as ``(1, 1, *spatial)`` float32 in ``[0, 1]``: the rescaling the DNS network
    was trained with (:func:`~mmreg.methods.features.dns.normalise_for_dns`), for both
    feature kinds."""
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return normalise_for_dns(x)[None, None]


def folding_percent(u: torch.Tensor) -> float:
    """Percent of voxels where ``p -> p + u(p)`` folds (``det(I + grad u) <= 0``).

    ``u`` is ``(1, ndim, *sp)`` in voxels; central differences, one-sided at the edges.
    """
    ndim = u.shape[1]
    # jac[..., c, a] = d(p + u)_c / d p_a
    jac = torch.stack(
        [torch.stack(torch.gradient(u[0, c], dim=list(range(ndim))), dim=-1) for c in range(ndim)],
        dim=-2,
    )
    jac = jac + torch.eye(ndim, dtype=jac.dtype)
    return float((torch.linalg.det(jac) <= 0).float().mean() * 100.0)


def fold_guard(u: torch.Tensor, limit: float) -> tuple[torch.Tensor, int, float]:
    """Smooth (then, if need be, shrink) the voxel field ``u`` until at most ``limit`` percent
    of the voxels fold; returns the field, the passes made and the folding percent.

    Example:
        >>> u = torch.zeros(1, 2, 16, 16)
        >>> u[0, 0, 8, 8] = 5.0  # one voxel jumping past its neighbours folds
        >>> folding_percent(u) > 0
        True
        >>> v, passes, folding = fold_guard(u, 0.0)
        >>> passes > 0, folding
        (True, 0.0)
    """
    folding = folding_percent(u)
    passes = 0
    while folding > limit and passes < MAX_GUARD_PASSES:
        u = smooth_field(u)
        passes += 1
        folding = folding_percent(u)
    # Smoothing cannot undo a grossly wrong field; a shorter one folds less, and
    # the identity never folds.
    while folding > limit:
        u = 0.5 * u
        passes += 1
        folding = folding_percent(u) if float(u.abs().max()) > 1e-3 else 0.0
    return u, passes, folding


def _field_to_world(u: torch.Tensor, image: Image) -> np.ndarray:
    """Voxel displacements ``(1, ndim, *sp)`` -> RAS mm vectors ``(*sp, 3)``."""
    ndim = image.ndim
    vox = u[0].movedim(0, -1).double().numpy()
    return vox @ np.asarray(image.grid.affine, np.float64)[:3, :ndim].T


Extractor = Callable[[torch.Tensor], torch.Tensor]
Reducer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: Voxels sampled (regularly) to estimate the feature covariance for :func:`pca_reduce`.
PCA_VOXELS = 50_000


def pca_reduce(
    fixed: torch.Tensor, moving: torch.Tensor, components: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature maps projected on the ``components`` leading principal axes of the pair.

    The axes come from the channel covariance of both maps (a regular subsample of
    voxels), so the projection is the same for both images and deterministic.

    Example:
        >>> f = torch.rand(1, 6, 8, 8, 8)
        >>> a, b = pca_reduce(f, f, 2)
        >>> a.shape, bool(torch.equal(a, b))
        (torch.Size([1, 2, 8, 8, 8]), True)
    """
    channels = fixed.shape[1]
    if components <= 0 or components >= channels:
        return fixed, moving
    flat = torch.cat([fixed.reshape(channels, -1), moving.reshape(channels, -1)], dim=1)
    step = max(1, flat.shape[1] // PCA_VOXELS)
    sample = flat[:, ::step].double()
    mean = sample.mean(dim=1, keepdim=True)
    cov = (sample - mean) @ (sample - mean).T / max(1, sample.shape[1] - 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors[:, -components:].flip(1).T.to(fixed.dtype)  # (k, C), largest first
    # Signs fixed by the largest entry, so the result does not depend on the solver.
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * signs

    def project(x: torch.Tensor) -> torch.Tensor:
        out = axes @ (x.reshape(channels, -1) - mean.to(x.dtype))
        return out.reshape(1, components, *x.shape[2:])

    return project(fixed), project(moving)


class GuardedSettings(Protocol):
    """What :class:`FeatureIOMethod` reads from any settings (a subclass's own included)."""

    @property
    def opt(self) -> str:
        """The optimiser's name, for the extras."""
        ...

    @property
    def max_folding(self) -> float:
        """Percent of folding voxels the guard allows."""
        ...


class FeatureIOMethod(BaseMethod):
    """Instance optimisation on feature maps; ``extractor`` maps ``(1, 1, *sp)`` to
    ``(1, C, *sp)`` (see the module docstring).

    ``moving_extractor`` (default: ``extractor``) describes the moving image, for
    features learned per modality (``suits``). Subclasses may replace :meth:`_optimise`;
    their settings need ``opt`` and ``max_folding`` (:class:`GuardedSettings`).
    """

    deformable = True

    def __init__(
        self,
        name: str,
        extractor: Extractor,
        settings: GuardedSettings,
        reduce: Reducer | None = None,
        *,
        moving_extractor: Extractor | None = None,
    ) -> None:
        self.name = name  # instance name (two methods share the class)
        self.extractor = extractor
        self.moving_extractor = moving_extractor or extractor
        self.settings = settings
        self.reduce = reduce

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
        start = initial if initial is not None else Transform.identity(fixed.ndim)
        resampled = start.apply(moving, fixed)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(seed)
            with torch.no_grad():
                feat_f = self.extractor(unit_range(fixed.data))
                feat_m = self.moving_extractor(unit_range(resampled.data))
                if self.reduce is not None:
                    feat_f, feat_m = self.reduce(feat_f, feat_m)
            u = self._optimise(feat_f, feat_m, seed)
            u, passes, folding = fold_guard(u, self.settings.max_folding)
        finally:
            torch.set_num_threads(previous)
        field = Transform.from_field(fixed.grid, _field_to_world(u, fixed))
        extras = {
            "opt": self.settings.opt,
            "neg_jacobian_pct": round(folding, 4),
            "guard_smoothing_passes": passes,
            "max_displacement_vox": round(float(u.abs().max()), 3),
            "feature_channels": int(feat_f.shape[1]),
        }
        return field.then(start), extras

    def _optimise(self, feat_f: torch.Tensor, feat_m: torch.Tensor, seed: int) -> torch.Tensor:
        s = self.settings
        assert isinstance(s, FeatureIOSettings)  # other settings come with their own _optimise
        multilevel = dataclasses.replace(s.multilevel(), seed=seed)
        if s.opt == "mok":
            return multilevel_adam(feat_f, feat_m, multilevel)
        u = convex_adam(feat_f, feat_m, s.convex())
        if s.opt == "both":
            u = multilevel_adam(feat_f, feat_m, multilevel, initial=u)
        return u


# ---------------------------------------------------------------- the two methods


#: ``mind-io``: ConvexAdam (SSD on MIND). On the held-out IXI pairs it beat the convex search
#: followed by Mok et al.'s cosine levels (Dice 0.54 vs 0.46-0.52); 60 Adam steps keep 99%
#: of 80 steps' gain at three quarters of the time.
MIND_DEFAULTS = FeatureIOSettings(opt="convex", iterations=60)
#: ``dns-io``: the convex search, then Mok et al.'s cosine levels. DNS features are trained
#: as unit vectors (InfoNCE on cosines); on squared differences they lose (IXI Dice 0.38
#: with ConvexAdam's Adam vs 0.52 with the cosine levels).
DNS_DEFAULTS = FeatureIOSettings(opt="both")


def _mind_extractor(settings: FeatureIOSettings) -> Extractor:
    return lambda x: mind_ssc(x, radius=settings.radius, dilation=settings.dilation)


def make_mind_io(params: Mapping[str, str] | None = None) -> FeatureIOMethod:
    """``mind-io[:key=value...]``."""
    settings = settings_from_params("mind-io", MIND_DEFAULTS, params)
    return FeatureIOMethod("mind-io", _mind_extractor(settings), settings)


#: Slices in the slab a 2D image is given to the 3D DNS network as.
DNS_SLAB = 8


def make_dns_io(
    params: Mapping[str, str] | None = None, *, model: str | None = None
) -> FeatureIOMethod:
    """``dns-io[:key=value...]`` with the DNS weights ``model`` (``None``: shipped)."""
    from mmreg.methods.features.dns import load_dns

    settings = settings_from_params("dns-io", DNS_DEFAULTS, params)
    net = load_dns(model)

    def learned(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return net(x)
        # A 2D image: the 3D network sees a slab of identical slices (no through-plane
        # structure), and the middle slice of its output is the 2D feature map.
        slab = x[:, :, None].expand(-1, -1, DNS_SLAB, -1, -1)
        return net(slab)[:, :, DNS_SLAB // 2]

    def reduce(f: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pca_reduce(f, m, settings.pca)

    if not settings.mind:
        return FeatureIOMethod("dns-io", learned, settings, reduce)
    mind = _mind_extractor(settings)

    def both(x: torch.Tensor) -> torch.Tensor:
        # Each kind scaled to unit length per voxel: the cosine of the concatenation is
        # the mean of the two kinds' cosines, whatever their channel counts and scales.
        parts = [F.normalize(f(x), dim=1, eps=1e-6) for f in (learned, mind)]
        return torch.cat(parts, dim=1)

    return FeatureIOMethod("dns-io", both, settings)


register_factory("mind-io", make_mind_io, replace=True)
register_factory("dns-io", make_dns_io, replace=True, model_family="dns")
