"""Contrastive whole-body DXA <-> MR alignment (Windsor et al. 2021).

Dual encoders trained with a contrastive loss (:mod:`.model`, :mod:`.losses`,
:mod:`.train`), cross-modal subject matching (:mod:`.matching`), and three rigid 2D
registration methods, registered on import: ``contrastive-dense``,
``contrastive-salient`` (:mod:`.register`) and ``contrastive-refine`` (:mod:`.refine`).
"""

from __future__ import annotations

from mmreg.methods.contrastive import refine as _refine  # noqa: F401  (registers contrastive-refine)
from mmreg.methods.contrastive import register as _register  # noqa: F401  (registers -dense, -salient)
