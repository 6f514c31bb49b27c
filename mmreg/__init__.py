"""mmreg: a BIDS-App for cross-modality registration of medical images.

The code folders at the top of the repository are installed as subpackages:
``mmreg.imaging`` (engine-free numerics), ``mmreg.methods`` (registration
methods behind one interface), ``mmreg.tasks`` (Pydra tasks),
``mmreg.workflows`` (Pydra workflows) and ``mmreg.bids_app`` (the CLI).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
