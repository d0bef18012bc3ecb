"""napari-cryopicker: interactive particle picking for cryo-electron tomography.

The pure core lives in :mod:`napari_cryopicker.core` (no Qt, no napari); the napari
layer in :mod:`napari_cryopicker._napari` imports it lazily.
"""

__version__ = "0.1.0"
