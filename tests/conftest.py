"""Suite-wide settings."""

import os

# `cryopicker predict` builds a compiled network (core/compiled.py) from the second
# tomogram a process picks and keeps it in ~/.cache: ~30 s per model and tile shape, and
# files in the user's cache. So the suite runs without it, except the compile tests
# (tests/core/test_predict.py, tests/test_cli.py), which unset this and use a tmp cache.
os.environ.setdefault("CRYOPICKER_COMPILE", "0")


import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def copick_project(tmp_path):
    """A copick project made by the copick library itself in a tmp dir (skipped without it):
    ``make(objects, runs={"TS_1": volume or None}, voxel_size=10.0)`` returns (config path,
    project folder, copick root); a run's volume becomes its OME-Zarr ``wbp`` tomogram."""
    copick = pytest.importorskip("copick")

    def make(objects=(), runs=None, voxel_size=10.0):
        cfg = tmp_path / "copick.json"
        folder = tmp_path / "proj"
        cfg.write_text(json.dumps({"config_type": "filesystem", "name": "t", "version": "0.5.0",
                                   "pickable_objects": list(objects), "overlay_root": f"local://{folder}",
                                   "overlay_fs_args": {"auto_mkdir": True}}))
        root = copick.from_file(str(cfg))
        for name, vol in (runs or {}).items():
            run = root.new_run(name)
            if vol is not None:
                run.new_voxel_spacing(voxel_size).new_tomogram("wbp").from_numpy(vol)
        return cfg, folder, root

    return make
