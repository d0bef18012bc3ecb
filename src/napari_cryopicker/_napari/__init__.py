"""The napari layer of napari-cryopicker: reader, writer, sample data and dock widgets.

Everything that imports napari or Qt lives here; the pure core (:mod:`..core`) never does.
torch is only imported inside worker functions (training and picking run off the GUI
thread), so opening a tomogram or docking a widget does not pay for it.
"""
