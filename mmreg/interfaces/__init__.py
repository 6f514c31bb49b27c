"""Interfaces to workflow engines other than Pydra.

- :mod:`mmreg.interfaces.nipype`: Nipype 1.x interfaces (``Register``,
  ``ApplyTransform``), so mmreg drops into fMRIPrep-style Nipype workflows as ANTs'
  interfaces do. Nipype is optional (``pip install 'mmreg[nipype]'``): importing this
  package does not import it; only importing :mod:`mmreg.interfaces.nipype` does.
"""
