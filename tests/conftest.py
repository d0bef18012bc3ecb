"""Suite-wide settings."""

import os

# `cryopicker predict` builds a compiled network (core/compiled.py) from the second
# tomogram a process picks and keeps it in ~/.cache: ~30 s per model and tile shape, and
# files in the user's cache. So the suite runs without it, except the compile tests
# (tests/core/test_predict.py, tests/test_cli.py), which unset this and use a tmp cache.
os.environ.setdefault("CRYOPICKER_COMPILE", "0")
