"""STOPGAP motivelist STAR (``data_stopgap_motivelist``), read only.

Position = ``orig_x + x_shift`` (etc.) in pixels of the tomogram ``tomo_num``, taken as
1-based like Dynamo (STOPGAP is MATLAB and converts Dynamo tables without offset):
i = (orig + shift - 1) / binning. Tomogram names are the ``tomo_num`` numbers as text;
``class`` -> class, ``score`` -> score. Angles ``phi, the, psi`` are read as Dynamo-style
extrinsic zxz and converted to RELION ZYZ (unverified against STOPGAP itself).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PicksFormatError
from ..picks import Picks
from . import _star as S
from ._angles import zxz_to_relion
from ._common import ReadOptions, class_names_from_numbers, make_picks

ORIG = ["orig_x", "orig_y", "orig_z"]
SHIFT = ["x_shift", "y_shift", "z_shift"]


def read(path: Path, opts: ReadOptions, blocks: dict | None = None) -> Picks:
    blocks = S.read_blocks(path) if blocks is None else blocks
    if not blocks:
        raise PicksFormatError(f"{path}: holds no STAR data block; is this a STOPGAP motivelist?")
    df = blocks.get("stopgap_motivelist", next(iter(blocks.values())))
    S.require(path, df, ORIG, "STOPGAP motivelist")
    xyz = S.floats(path, df, ORIG) + S.optional(path, df, SHIFT) - 1.0
    tomo = [str(v) for v in df["tomo_num"]] if "tomo_num" in df else None
    angles = zxz_to_relion(S.floats(path, df, ["phi", "the", "psi"])) if all(
        c in df for c in ("phi", "the", "psi")) else None
    score = S.floats(path, df, ["score"])[:, 0] if "score" in df else None
    return make_picks(
        path, xyz[:, ::-1] / float(opts.binning), opts,
        class_name=class_names_from_numbers(df.get("class"), len(df), {}, opts.class_name),
        score=score, tomogram=tomo, raw_tomogram=tomo, angles=angles,
    )
