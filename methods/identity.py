"""``identity``: no registration; the initial transform (pre-alignment) as the result."""

from __future__ import annotations

from typing import Any

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.base import BaseMethod
from mmreg.methods.registry import register_method

__all__ = ["IdentityMethod"]


@register_method
class IdentityMethod(BaseMethod):
    """Returns ``initial`` unchanged, or the identity: the baseline every method must beat."""

    name = "identity"
    deformable = False
    min_overlap = 0.0  # returns the initial transform, whatever it is

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
        del moving, seed, device, threads
        return (initial if initial is not None else Transform.identity(fixed.ndim)), {}
