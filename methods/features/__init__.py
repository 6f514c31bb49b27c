"""Deformable registration on modality-independent feature maps (``mind-io``, ``dns-io``).

Two parts, both free of Pydra:

- feature extractors, image -> C-channel map, 2D and 3D: MIND-SSC
  (:mod:`~mmreg.methods.features.mind`) and the learned DNS network of Mok et al.
  (:mod:`~mmreg.methods.features.dns`);
- optimisers, two feature maps -> a dense displacement field
  (:mod:`~mmreg.methods.features.optimise`): a ConvexAdam-class coupled convex search
  followed by Adam, and Mok et al.'s three-level Adam instance optimisation.

:mod:`~mmreg.methods.features.register` turns them into registration methods.
"""
