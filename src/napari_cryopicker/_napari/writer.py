"""npe2 writers: one or more Points layers -> every picks format the core can write.

The format follows the writer chosen in napari's save dialog (or the first one for the
file extension, as in the core: ``.star`` RELION 4, ``.tbl`` Dynamo, ``.json`` copick,
``.csv`` CryoPicker CSV).
Only shown points are written (hidden predictions below the score threshold are not).
Voxel size and tomogram name come from the layers' ``metadata["cryopicker"]``, else from
the layer scale and name.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import PicksFormatError
from ..core.picks import Picks
from .convert import cp_meta, picks_from_points


def layers_to_picks(layer_data: list[tuple]) -> tuple[Picks, dict]:
    """Merge Points layer-data tuples into one Picks (shown points only) + tomogram info."""
    parts, info = [], {"tomogram": None, "shape": None, "voxel_size": None}
    for data, meta, ltype in layer_data:
        if ltype != "points":
            continue
        cm = cp_meta(meta)
        if cm.get("kind") == "rejected":
            continue
        parts.append(picks_from_points(data, meta, shown_only=True))
        for k in ("tomogram", "shape", "voxel_size"):
            if info[k] is None and cm.get(k):
                info[k] = cm[k]
    if not parts:
        raise PicksFormatError("select at least one Points layer to save as picks")
    vs = {p.voxel_size for p in parts if p.voxel_size is not None and len(p)}
    if len(vs) > 1:
        target = info["voxel_size"] or min(vs)
        parts = [p.rescaled(target) if p.voxel_size is not None else p for p in parts]
    picks = Picks.concat(parts)
    if picks.voxel_size is None and info["voxel_size"]:
        picks.voxel_size = float(info["voxel_size"])
    return picks, info


def write_layers(path: str, layer_data: list[tuple], fmt: str | None) -> list[str]:
    from ..core.formats import write_picks

    picks, info = layers_to_picks(layer_data)
    name = info["tomogram"] or next((t for t in picks.tomograms if t), None) or Path(path).stem
    if len(picks) and not all(picks.table["tomogram"].astype(str).str.len() > 0):
        picks = picks.copy()
        picks.table.loc[picks.table["tomogram"] == "", "tomogram"] = name
    shape = tuple(int(s) for s in info["shape"]) if info["shape"] else None
    out = write_picks(
        picks,
        path,
        fmt,
        voxel_size=picks.voxel_size,
        tomogram_shape=shape,
        tomogram=name,
    )
    return [str(p) for p in out]


# one npe2 command per format (the save dialog lists each by its display name)
def write_relion5(path, layer_data):
    return write_layers(path, layer_data, "relion5")


def write_relion4(path, layer_data):
    return write_layers(path, layer_data, "relion4")


def write_relion3(path, layer_data):
    return write_layers(path, layer_data, "relion3")


def write_dynamo(path, layer_data):
    return write_layers(path, layer_data, "dynamo")


def write_copick(path, layer_data):
    return write_layers(path, layer_data, "copick")


def write_csv(path, layer_data):
    return write_layers(path, layer_data, "csv")


def write_napari_csv(path, layer_data):
    return write_layers(path, layer_data, "napari")
