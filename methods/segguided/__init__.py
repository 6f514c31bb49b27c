"""Segmentation-guided multimodal registration from the labels of one modality.

Demir & Niethammer, "Multimodal Image Registration Guided by Few Segmentations from One
Modality" (MIDL 2024): augment the few labelled images by registration within their
modality, train a segmenter on them, adapt it to the other modality with a CycleGAN and
semantic consistency, and register the two images' predicted segmentations.

- :mod:`~mmreg.methods.segguided.model`: the networks, in one checkpointed module;
- :mod:`~mmreg.methods.segguided.grid`: the working grid the networks see;
- :mod:`~mmreg.methods.segguided.losses`: Dice, LSGAN, GradICON, random deformations and
  contrasts;
- :mod:`~mmreg.methods.segguided.train`: ``mmreg train segguided`` (four stages);
- :mod:`~mmreg.methods.segguided.register`: the ``segguided`` method.
"""
