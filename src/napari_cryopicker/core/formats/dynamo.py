"""Dynamo table (.tbl) with its table map (.doc), read and write (via ``dynamotable``).

Position = (x + dx, y + dy, z + dz) (columns 24-26 + 4-6), 1-based like MATLAB:
i = (x + dx - 1) / binning. Column 20 ``tomo`` indexes the ``.doc`` table map
(``index path`` lines; ``<stem>.doc`` next to the table, or ``tomograms_star=``); tomogram
names are the map's file names without suffix, else the index as text. Column 10 ``cc`` ->
score, 7-9 ``tdrot tilt narot`` (zxz) <-> RELION angles, 36 ``apix`` = pixel size of the
table's coordinates (binning defaults to voxel_size / apix when a voxel size is given).

Class names: column 22 holds class numbers (1..K, in order of first appearance); the names
are kept in a JSON sidecar ``<stem>.classes.json`` (``{"1": "ribosome", ...}``), which
Dynamo ignores. Without it, classes read as ``class<N>`` (or the single default class).
Written: x = i * binning + 1, dx = dy = dz = 0, tag 1..n, tomo index 1..T with a ``.doc``
listing ``<tomogram>.mrc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import dynamotable
import numpy as np
import pandas as pd

from ..picks import Picks
from ._angles import relion_to_zxz, zxz_to_relion
from ._common import (
    ReadOptions, WriteOptions, angles_or_zero, atomic_path, class_names_from_numbers, class_numbers,
    fail, make_picks, picks_for_writing, read_text, tomo_name, write_text,
)

NEEDED = ["tag", "dx", "dy", "dz", "tdrot", "tilt", "narot", "cc", "tomo", "class", "x", "y", "z"]


def doc_path(path: Path) -> Path:
    return path.with_suffix(".doc")


def classes_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.classes.json")


def read_doc(path: Path) -> dict[int, str]:
    out = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise fail(path, f"line {n} {line[:60]!r} is not 'index path'; is this a Dynamo table map?")
        out[int(parts[0])] = tomo_name(parts[1].strip())
    return out


def read_classes(path: Path) -> dict[int, str]:
    p = classes_path(path)
    if not p.is_file():
        return {}
    try:
        return {int(k): str(v) for k, v in json.loads(read_text(p)).items()}
    except (ValueError, AttributeError) as exc:
        raise fail(p, f"is not a class map ({exc}); delete it or fix it") from None


def read(path: Path, opts: ReadOptions) -> Picks:
    if not read_text(path).strip():  # an empty table is what zero picks are written as
        return make_picks(path, [], opts, voxel_size=None)
    try:
        df = dynamotable.read(str(path))
    except Exception as exc:  # pandas parser errors of many kinds
        raise fail(path, f"cannot be parsed as a Dynamo table ({type(exc).__name__}: {exc})") from None
    if df.shape[1] < 26:
        raise fail(path, f"has {df.shape[1]} columns; a Dynamo table has at least 26 (x, y, z in 24-26)")
    num = df[NEEDED].apply(pd.to_numeric, errors="coerce")
    pos = num[["x", "y", "z"]].to_numpy(float) + num[["dx", "dy", "dz"]].to_numpy(float) - 1.0
    if not np.isfinite(pos).all():
        raise fail(path, "has non-numeric x, y, z or dx, dy, dz values")
    apix = None
    if "apix" in df:
        a = pd.to_numeric(df["apix"], errors="coerce").to_numpy(float)
        apix = float(a[0]) if len(a) and np.isfinite(a[0]) and a[0] > 0 else None
    binning = opts.binning
    if binning == 1.0 and opts.voxel_size and apix and abs(opts.voxel_size / apix - 1) > 1e-3:
        binning = opts.voxel_size / apix
    doc = Path(opts.companion) if opts.companion is not None else doc_path(path)
    if opts.companion is not None and not doc.is_file():
        raise fail(doc, "no such Dynamo table map (.doc)")
    tmap = read_doc(doc) if doc.is_file() else {}
    idx = num["tomo"].fillna(0).round().astype(int).tolist()
    names = [tmap.get(i, str(i)) for i in idx]
    return make_picks(
        path, pos[:, ::-1] / binning, opts,
        class_name=class_names_from_numbers(num["class"], len(df), read_classes(path), opts.class_name),
        score=num["cc"].fillna(1.0).to_numpy(float), tomogram=names, raw_tomogram=[str(i) for i in idx],
        angles=zxz_to_relion(num[["tdrot", "tilt", "narot"]].fillna(0).to_numpy(float)),
        voxel_size=None if apix is None else apix * binning,
        stated_voxel_size=None if apix is None else apix * opts.binning,
    )


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    if path.suffix.lower() != ".tbl":
        raise fail(path, "a Dynamo table must end in .tbl")
    t = picks_for_writing(picks, opts)
    b = float(opts.binning)
    vs = opts.voxel_size if opts.voxel_size is not None else picks.voxel_size
    tomos = list(dict.fromkeys(t["tomogram"]))
    tomo_index = {n: i + 1 for i, n in enumerate(tomos)}
    classes, mapping = class_numbers(picks)
    ang = relion_to_zxz(angles_or_zero(t)) if picks.has_angles else np.zeros((len(t), 3))
    df = pd.DataFrame({
        "tag": np.arange(1, len(t) + 1), "aligned_value": 1, "averaged_value": 1,
        "dx": 0.0, "dy": 0.0, "dz": 0.0,
        "tdrot": ang[:, 0], "tilt": ang[:, 1], "narot": ang[:, 2], "cc": t["score"].to_numpy(float),
        "tomo": [tomo_index[n] for n in t["tomogram"]], "class": classes,
        **{a: t[a].to_numpy(float) * b + 1 for a in "xyz"},
        "apix": (vs / b) if vs else 0.0,
    })
    with atomic_path(path) as tmp:
        dynamotable.write(df, str(tmp))
    out = [path]
    if any(tomos):
        doc = "".join(f"{i} {n or 'tomogram'}.mrc\n" for n, i in tomo_index.items())
        out.append(write_text(doc_path(path), doc))
    names = json.dumps({str(k): v for k, v in mapping.items()}, indent=1)
    out.append(write_text(classes_path(path), names + "\n"))
    return out
