"""Closed-form, differentiable, batched point-set fits: affine, rigid and thin-plate spline.

All solvers take corresponding points ``src`` and ``dst`` of shape ``(B, N, d)``
(``d`` = 2 or 3) and optional non-negative ``weights`` ``(B, N)``, and return the
map taking ``src`` to ``dst``: a ``(B, d + 1, d + 1)`` homogeneous matrix for the
linear fits, a :class:`TPS` for the spline. Gradients flow through every solver
(``torch.linalg.solve`` / ``svd``), so they sit inside the training loss.

Example:
    >>> import torch
    >>> src = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    >>> (fit_affine(src, 2.0 * src + 1.0)[0].round(decimals=4) + 0.0).tolist()  # no -0.0
    [[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "TPS",
    "apply_matrix",
    "fit_affine",
    "fit_rigid",
    "fit_tps",
    "robust_weights",
    "tps_kernel",
]


def _weights(src: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return torch.ones(src.shape[:2], dtype=src.dtype, device=src.device)
    if weights.shape != src.shape[:2]:
        raise ValueError(f"weights must have shape {tuple(src.shape[:2])}, got {weights.shape}")
    return weights.to(src.dtype)


def _check(src: torch.Tensor, dst: torch.Tensor) -> None:
    if src.dim() != 3 or src.shape != dst.shape or src.shape[-1] not in (2, 3):
        raise ValueError(
            f"src and dst must both be (B, N, 2|3), got {tuple(src.shape)} and {tuple(dst.shape)}"
        )


def apply_matrix(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map ``(B, N, d)`` points through ``(B, d + 1, d + 1)`` homogeneous matrices."""
    d = points.shape[-1]
    return points @ matrix[:, :d, :d].transpose(1, 2) + matrix[:, None, :d, d]


def _homogeneous_matrix(linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    b, d = shift.shape
    out = torch.zeros(b, d + 1, d + 1, dtype=shift.dtype, device=shift.device)
    out[:, :d, :d] = linear
    out[:, :d, d] = shift
    out[:, d, d] = 1.0
    return out


def fit_affine(
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    ridge: float = 0.0,
) -> torch.Tensor:
    """Weighted least-squares affine map ``A`` minimising ``sum w_i |A src_i - dst_i|^2``.

    Needs ``d + 1`` points in general position (more for a least-squares fit).

    Args:
        src: ``(B, N, d)`` source points.
        dst: ``(B, N, d)`` target points.
        weights: ``(B, N)`` non-negative weights (default: all 1).
        ridge: Tikhonov term pulling the linear part towards the identity, in units
            of the weighted point spread (0: plain least squares). It keeps the fit
            defined when the points are (nearly) degenerate, e.g. early in training.

    Returns:
        ``(B, d + 1, d + 1)`` homogeneous matrices (last row ``[0, ..., 0, 1]``).
    """
    _check(src, dst)
    w = _weights(src, weights)
    d = src.shape[-1]
    x = torch.cat([src, torch.ones_like(src[..., :1])], dim=-1)  # (B, N, d+1)
    xtw = (x * w[..., None]).transpose(1, 2)  # (B, d+1, N)
    lhs = xtw @ x
    rhs = xtw @ dst  # (B, d+1, d)
    if ridge > 0:
        # Penalise (L - I) of the linear part: adds ridge * s * I to the lhs and
        # ridge * s * I to the rhs rows of the linear part, s = mean weighted spread.
        scale = (lhs.diagonal(dim1=1, dim2=2)[:, :d].mean(-1) * ridge)[:, None, None]
        eye = torch.eye(d + 1, d, dtype=src.dtype, device=src.device)
        lhs = lhs + scale * torch.diag_embed(
            torch.cat([torch.ones(d), torch.zeros(1)]).to(src)
        ).expand_as(lhs)
        rhs = rhs + scale * eye
    params = torch.linalg.solve(lhs, rhs)  # (B, d+1, d): rows act on [x, 1]
    return _homogeneous_matrix(params[:, :d, :].transpose(1, 2), params[:, d, :])


def fit_rigid(
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    scaling: bool = False,
) -> torch.Tensor:
    """Weighted orthogonal Procrustes (Kabsch): the proper rotation + shift (+ scale).

    A reflection is never returned: when the best orthogonal map has determinant
    -1, the singular vector of the smallest singular value is flipped, which gives
    the best proper rotation (Umeyama 1991).

    Args:
        src: ``(B, N, d)`` source points.
        dst: ``(B, N, d)`` target points.
        weights: ``(B, N)`` non-negative weights (default: all 1).
        scaling: Also fit one isotropic scale (a similarity transform).

    Returns:
        ``(B, d + 1, d + 1)`` homogeneous matrices.
    """
    _check(src, dst)
    w = _weights(src, weights)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    c_src = (w[..., None] * src).sum(1)
    c_dst = (w[..., None] * dst).sum(1)
    a = src - c_src[:, None]
    b = dst - c_dst[:, None]
    cov = (b * w[..., None]).transpose(1, 2) @ a  # (B, d, d) = sum w b a^T
    u, s, vh = torch.linalg.svd(cov)
    det = torch.linalg.det(u @ vh)
    signs = torch.ones_like(s)
    signs[:, -1] = torch.where(det < 0, -1.0, 1.0)
    rot = u @ torch.diag_embed(signs) @ vh
    if scaling:
        var = (w * (a**2).sum(-1)).sum(-1).clamp_min(torch.finfo(a.dtype).tiny)
        rot = rot * ((s * signs).sum(-1) / var)[:, None, None]
    shift = c_dst - (rot @ c_src[..., None])[..., 0]
    return _homogeneous_matrix(rot, shift)


def tps_kernel(r2: torch.Tensor, d: int) -> torch.Tensor:
    """The thin-plate radial basis on squared distances: ``r`` in 3D, ``r^2 log r`` in 2D.

    (Both are the fundamental solutions of the biharmonic operator up to constants.)
    """
    if d == 3:
        return torch.sqrt(r2.clamp_min(1e-20))
    return 0.5 * r2 * torch.log(r2.clamp_min(1e-20))


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(B, M, N)`` via ``|a|^2 + |b|^2 - 2 a.b`` (no (B, M, N, d) tensor)."""
    d2 = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2.0 * a @ b.transpose(1, 2)
    return d2.clamp_min(0.0)


@dataclass(frozen=True)
class TPS:
    """A fitted thin-plate spline ``f(x) = A [x; 1] + sum_i w_i U(|x - c_i|)``.

    Attributes:
        centers: ``(B, N, d)`` control points (the ``src`` of the fit).
        weights: ``(B, N, d)`` kernel coefficients ``w``.
        affine: ``(B, d + 1, d)`` coefficients acting on ``[x, 1]``.
    """

    centers: torch.Tensor
    weights: torch.Tensor
    affine: torch.Tensor

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Map ``(B, M, d)`` points."""
        p = points.to(self.centers)
        lin = torch.cat([p, torch.ones_like(p[..., :1])], -1)
        return (self.bending(points) + lin @ self.affine).to(points.dtype)

    def bending(self, points: torch.Tensor) -> torch.Tensor:
        """The non-affine part ``sum_i w_i U(|x - c_i|)`` at ``(B, M, d)`` points
        (computed in the points' dtype: float32 is plenty for dense fields)."""
        c = self.centers.to(points.dtype)
        kernel = tps_kernel(_sq_dist(points, c), points.shape[-1])
        return kernel @ self.weights.to(points.dtype)

    def affine_matrix(self) -> torch.Tensor:
        """The spline's affine part as ``(B, d + 1, d + 1)`` matrices."""
        d = self.affine.shape[-1]
        return _homogeneous_matrix(self.affine[:, :d, :].transpose(1, 2), self.affine[:, d, :])


def fit_tps(src: torch.Tensor, dst: torch.Tensor, lam: float | torch.Tensor = 0.0) -> TPS:
    """Thin-plate spline taking ``src`` to ``dst``, smoothed by ``lam``.

    Solves ``[[K + lam I, P], [P^T, 0]] [w; a] = [dst; 0]`` with ``K_ij = U(|s_i - s_j|)``
    and ``P = [src, 1]``: ``lam = 0`` interpolates the points exactly; as ``lam`` grows
    the bending part vanishes and the spline tends to the least-squares affine fit.
    The system is solved in float64 (it is ill-conditioned for small ``lam``).

    Args:
        src: ``(B, N, d)`` control points, ``N > d + 1`` distinct points.
        dst: ``(B, N, d)`` their targets.
        lam: Regularisation, a number or a ``(B,)`` tensor (one per batch item),
            in the squared units of the coordinates (KeyMorph uses coordinates in
            ``[-1, 1]``).

    Returns:
        The fitted :class:`TPS` (float64 parameters).
    """
    _check(src, dst)
    b, n, d = src.shape
    s = src.double()
    kernel = tps_kernel(_sq_dist(s, s), d)
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=src.device).reshape(-1)
    lam_t = lam_t.expand(b) if lam_t.numel() == 1 else lam_t
    if lam_t.shape != (b,):
        raise ValueError(f"lam must be a number or have shape ({b},)")
    eye = torch.eye(n, dtype=torch.float64, device=src.device)
    p = torch.cat([s, torch.ones_like(s[..., :1])], -1)  # (B, N, d+1)
    top = torch.cat([kernel + lam_t[:, None, None] * eye, p], dim=2)
    bottom = torch.cat([p.transpose(1, 2), s.new_zeros(b, d + 1, d + 1)], dim=2)
    system = torch.cat([top, bottom], dim=1)
    rhs = torch.cat([dst.double(), s.new_zeros(b, d + 1, d)], dim=1)
    sol = torch.linalg.solve(system, rhs)
    return TPS(centers=s, weights=sol[:, :n], affine=sol[:, n:])


def robust_weights(residuals: torch.Tensor, *, c: float = 3.0) -> torch.Tensor:
    """Tukey biweights of residual norms ``(B, N)``, scaled by their median.

    A point whose residual exceeds ``c`` times 1.4826 x the median residual gets
    weight 0; the others get ``(1 - (r / cutoff)^2)^2``. Used for iteratively
    reweighted fits, so that a few keypoints detected in the wrong place (a
    structure missing from one image) do not drag the transform.
    """
    scale = 1.4826 * residuals.median(dim=-1, keepdim=True).values
    cutoff = (c * scale).clamp_min(1e-6)
    u = (residuals / cutoff).clamp(max=1.0)
    return (1.0 - u**2) ** 2


def irls(
    fit: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    iterations: int = 5,
    c: float = 3.0,
    min_weight_sum: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Iteratively reweighted linear fit (``fit`` is :func:`fit_affine` or :func:`fit_rigid`).

    Returns:
        ``(matrix, weights)``: the final ``(B, d+1, d+1)`` fit and the ``(B, N)`` weights.
        When too few points keep weight (less than ``min_weight_sum`` of ``N``), the
        previous weights are kept.
    """
    weights = torch.ones(src.shape[:2], dtype=src.dtype, device=src.device)
    matrix = fit(src, dst, weights)
    for _ in range(iterations):
        residuals = (apply_matrix(matrix, src) - dst).norm(dim=-1)
        new = robust_weights(residuals, c=c)
        ok = new.sum(-1, keepdim=True) >= min_weight_sum * src.shape[1]
        weights = torch.where(ok, new, weights)
        matrix = fit(src, dst, weights)
    return matrix, weights
