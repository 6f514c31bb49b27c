"""Segmentation networks trained on labels moved across modalities by registration.

The whole-body path (Windsor et al.) registers DXA scans, which come with bone labels,
onto the MR mid-coronal slice, then trains a 2D U-Net on the MR slices with those
transferred labels (``mmreg train unet-transfer``).
"""
