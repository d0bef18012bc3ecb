"""Pure-Python core of napari-cryopicker: never imports Qt or napari."""
