"""Conversions between napari Points layers and the canonical :class:`~..core.picks.Picks`.

Conventions (see FORMATS.md): a Points layer that belongs to a tomogram holds 0-based
voxel indices (z, y, x) and carries the tomogram's ``scale`` (vz, vy, vx) in Angstrom, so
that ``data`` *is* the canonical voxel position. Per-point information lives in
``features``: ``class``, ``score``, ``source`` (and Euler angles ``rot``, ``tilt``,
``psi`` when a file provided them). Layer-wide information lives in
``metadata["cryopicker"]``: ``kind`` (picks / predicted / rejected / imported), ``class``,
``tomogram`` (name), ``voxel_size`` and ``shape`` of the tomogram.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..core.classes import ClassTable
from ..core.errors import PicksFormatError
from ..core.picks import ANGLES, DEFAULT_CLASS, Picks
from ..core.store import empty_features, features_frame

META = "cryopicker"
#: Predictions are filled by score (this ramp, translucent: the particle stays visible)
#: inside a square in the class colour; the Picking panel shows the legend.
SCORE_RAMP = ((0.0, "#440154"), (0.5, "#21918c"), (1.0, "#fde725"))
SCORE_FILL_ALPHA = 0.35


def score_colormap():
    """The napari colormap of prediction scores (0..1), see SCORE_RAMP."""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.standardize_color import transform_color

    colours = [[*transform_color(c)[0][:3], SCORE_FILL_ALPHA] for _, c in SCORE_RAMP]
    return Colormap(colours, controls=[v for v, _ in SCORE_RAMP], name="cryopicker-score")
# layer-name prefixes per kind; "picks: ribosome", "predicted: ribosome"
PREFIX = {"picks": "picks", "predicted": "predicted", "rejected": "rejected", "probability": "probability"}
FEATURES = ["class", "score", "source"]


def cp_meta(obj: Any) -> dict:
    """The ``metadata["cryopicker"]`` dict of a layer or of a layer-data-tuple's meta."""
    md = obj.get("metadata", {}) if isinstance(obj, Mapping) else getattr(obj, "metadata", {})
    md = md or {}
    out = md.get(META, {})
    return out if isinstance(out, dict) else {}


def layer_name(kind: str, class_name: str) -> str:
    return f"{PREFIX.get(kind, kind)}: {class_name}"


def class_from_name(name: str) -> str | None:
    if ":" in name:
        tail = name.split(":", 1)[1].strip()
        return tail or None
    return None


def feature_defaults(columns, base: Mapping) -> dict:
    """napari needs a default for every feature column: ``base`` plus 0 / "" for the rest."""
    out = {}
    for c in columns:
        if c in base:
            out[c] = base[c]
        elif c in ANGLES:
            out[c] = 0.0
        else:
            out[c] = ""
    for c, v in base.items():
        out.setdefault(c, v)
    return out


def points_layer_kwargs(
    picks: Picks,
    *,
    kind: str,
    class_name: str,
    colour: str,
    diameter: float,
    scale: tuple[float, float, float],
    tomogram: str = "",
    shape: tuple[int, ...] | None = None,
    name: str | None = None,
    source: str = "manual",
) -> dict:
    """Keyword arguments for ``Points(...)`` / a layer-data tuple holding ``picks``.

    Styling: a ring in the class colour whose diameter is the particle diameter, drawn for
    every particle whose sphere cuts the current slice (``projection_mode`` with a thick
    z-slice set by the session).
    """
    vs = float(scale[-1]) if scale is not None else None
    meta = {
        "kind": kind,
        "class": class_name,
        "tomogram": tomogram,
        "voxel_size": picks.voxel_size if picks.voxel_size is not None else vs,
        "shape": list(shape) if shape is not None else None,
    }
    features = features_frame(picks) if len(picks) else empty_features()
    kw = {
        "name": name or layer_name(kind, class_name),
        "ndim": 3,
        "scale": tuple(float(s) for s in scale),
        "features": features,
        "feature_defaults": feature_defaults(features.columns, {"class": class_name, "score": 1.0,
                                                                "source": source}),
        "size": float(diameter),
        "border_color": colour,
        "face_color": "transparent",
        "border_width": 0.08 if kind == "predicted" else 0.12,
        "border_width_is_relative": True,
        "projection_mode": "rescale_spherical",
        "metadata": {META: meta},
        "units": ("angstrom",) * 3 if vs not in (None, 1.0) else None,
    }
    if kw["units"] is None:
        del kw["units"]
    if kind == "predicted":
        kw["symbol"] = "square"
        kw["opacity"] = 0.9
    elif kind == "rejected":
        kw["symbol"] = "x"
        kw["opacity"] = 0.9  # a faint grey x at 35 % was invisible even zoomed in
        kw["border_width"] = 0.25
        kw["face_color"] = colour
    return kw


def _column(features: pd.DataFrame | Mapping | None, name: str, n: int, default):
    if features is None:
        return np.full(n, default, dtype=object if isinstance(default, str) else float)
    if isinstance(features, Mapping):
        features = pd.DataFrame(dict(features))
    if name in features and len(features) == n:
        return features[name].to_numpy()
    return np.full(n, default, dtype=object if isinstance(default, str) else float)


def picks_from_points(
    data: np.ndarray,
    meta: Mapping,
    *,
    shown_only: bool = False,
    layer_name_: str | None = None,
) -> Picks:
    """Canonical picks from Points data and layer meta (a layer-data tuple's dict).

    ``meta`` may hold ``features``, ``shown``, ``scale``, ``metadata`` and ``name`` as
    napari's ``as_layer_data_tuple`` gives them.
    """
    data = np.asarray(data, dtype=float)
    if data.ndim != 2:
        data = data.reshape(-1, 3)
    n = len(data)
    if n and data.shape[1] < 3:
        raise PicksFormatError(
            f"layer {layer_name_ or meta.get('name', '')!r} holds {data.shape[1]}D points; "
            "picks must be 3D (z, y, x)"
        )
    zyx = data[:, -3:] if n else np.zeros((0, 3))
    cm = cp_meta(meta)
    name = layer_name_ or meta.get("name", "") or ""
    default_class = cm.get("class") or class_from_name(str(name)) or DEFAULT_CLASS
    kind = cm.get("kind", "picks")
    default_source = {"predicted": "predicted", "rejected": "rejected", "imported": "imported"}.get(kind, "manual")
    features = meta.get("features")
    classes = _column(features, "class", n, default_class)
    scores = _column(features, "score", n, 1.0)
    sources = _column(features, "source", n, default_source)
    classes = np.array([str(c) if c is not None and str(c) not in ("", "nan") else default_class for c in classes],
                       dtype=object)
    sources = np.array([str(s) if s is not None and str(s) not in ("", "nan") else default_source for s in sources],
                       dtype=object)
    scores = pd.to_numeric(pd.Series(scores), errors="coerce").fillna(1.0).to_numpy(dtype=float)
    angles = None
    if features is not None:
        f = pd.DataFrame(dict(features)) if isinstance(features, Mapping) else features
        if all(c in f for c in ANGLES) and len(f) == n:
            angles = f[ANGLES].to_numpy(dtype=float)
    vs = cm.get("voxel_size")
    if vs is None:
        scale = meta.get("scale")
        if scale is not None and len(scale):
            s = float(np.asarray(scale)[-1])
            vs = s if s > 0 else None
    picks = Picks.from_zyx(
        zyx,
        class_name=list(classes),
        score=list(scores),
        source=list(sources),
        tomogram=cm.get("tomogram") or "",
        voxel_size=vs,
        angles=angles,
    )
    if shown_only and n:
        shown = meta.get("shown")
        if shown is not None and len(shown) == n:
            picks = picks.subset(np.asarray(shown, dtype=bool))
    return picks


def picks_from_layer(layer, *, shown_only: bool = False) -> Picks:
    """Canonical picks from a live Points layer."""
    meta = {
        "features": layer.features,
        "shown": layer.shown,
        "scale": layer.scale,
        "metadata": layer.metadata,
        "name": layer.name,
    }
    return picks_from_points(layer.data, meta, shown_only=shown_only)


def classes_for(picks: Picks, known: ClassTable | None = None, default_diameter: float = 10.0) -> ClassTable:
    """A class table covering every class in ``picks`` (known entries first)."""
    table = ClassTable([]) if known is None else ClassTable.from_dict(known.to_dict())
    for name in picks.class_names:
        if name not in table:
            table.add(name, default_diameter)
    return table
