"""Registration methods behind one interface (see :mod:`mmreg.methods.base`).

Importing this package registers the classical baselines (``identity``,
``ants-rigid``, ``ants-affine``, ``ants-syn``, ``sitk-rigid``, ``sitk-affine``);
antspyx itself is imported only when an ANTs method runs.

Example:
    >>> from mmreg.methods import available_methods, parse_methods
    >>> "ants-affine" in available_methods()
    True
    >>> parse_methods("identity, sitk-rigid+ants-affine")
    ['identity', 'sitk-rigid+ants-affine']
"""

from __future__ import annotations

from mmreg.methods import ants as _ants  # noqa: F401  (registers ants-*)
from mmreg.methods import identity as _identity  # noqa: F401  (registers identity)
from mmreg.methods import sitk as _sitk  # noqa: F401  (registers sitk-*)
from mmreg.methods.base import BaseMethod, Method, RegistrationResult
from mmreg.methods.chain import ChainMethod, run_chain
from mmreg.methods.registry import (
    available_methods,
    get_method,
    model_families,
    model_family,
    parse_methods,
    register_factory,
    register_lazy,
    register_method,
    split_chain,
)

# Learned methods import torch: announce their names, import them on first use.
for _name in ("keymorph-rigid", "keymorph-affine", "keymorph-tps"):
    register_lazy(_name, "mmreg.methods.keymorph.register")
for _name in ("contrastive-dense", "contrastive-salient"):
    register_lazy(_name, "mmreg.methods.contrastive.register")
register_lazy("contrastive-refine", "mmreg.methods.contrastive.refine")
for _name in ("mind-io", "dns-io"):
    register_lazy(_name, "mmreg.methods.features.register")
for _name in ("suits", "mind-suits"):
    register_lazy(_name, "mmreg.methods.features.suits")
register_lazy("segguided", "mmreg.methods.segguided.register")

__all__ = [
    "BaseMethod",
    "ChainMethod",
    "Method",
    "RegistrationResult",
    "available_methods",
    "get_method",
    "model_families",
    "model_family",
    "parse_methods",
    "register_factory",
    "register_lazy",
    "register_method",
    "run_chain",
    "split_chain",
]
