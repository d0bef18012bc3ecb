"""Suite-wide settings."""

import os

# `cryopicker predict` compiles the network (torch.compile) from the second tomogram a
# process picks; that takes 10-30 s per model and tile shape, so the suite runs without it,
# except tests/core/test_predict.py's compile tests, which unset this.
os.environ.setdefault("CRYOPICKER_COMPILE", "0")
