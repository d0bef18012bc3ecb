"""Layers derived from a run's results, beside the session's picks: live suggestions,
gold fiducials, and the per-class probability maps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .convert import META

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession


FIDUCIALS_LAYER = "gold fiducials"
SUGGESTIONS = "suggestions: "


def show_suggestions(session: PickingSession, picks, epoch: int) -> list:
    """Live suggestions: one Points layer per class (a hollow diamond in the class colour,
    sized to the particle), replaced at each epoch; not picks, never saved or trained on."""
    viewer = session.viewer
    out = []
    for c in session.classes:
        sub = picks.select(class_name=c.name)
        name = SUGGESTIONS + c.name
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = sub.zyx
            layer.features = {"score": sub.table["score"].to_numpy()}
            layer.metadata[META]["epoch"] = int(epoch)
        elif len(sub):
            layer = viewer.add_points(
                sub.zyx, name=name, size=c.diameter, **session.layer_kwargs(), symbol="diamond",
                face_color="transparent", border_color=c.colour, border_width=0.08, border_width_is_relative=True,
                projection_mode="rescale_spherical", opacity=0.8, features={"score": sub.table["score"].to_numpy()},
                metadata={META: {"kind": "suggestions", "tomogram": session.tomogram_name, "epoch": int(epoch)}},
            )
        else:
            continue
        out.append(layer)
    if session.active_class is not None and session.active_class in session.classes:
        session.set_active_class(session.active_class)  # clicks keep going to the picks
    return out


def show_fiducials(session: PickingSession, fiducials):
    """The gold beads picking left out, as a Points layer of their masked extent."""
    viewer = session.viewer
    zyx = np.asarray(fiducials.zyx, float).reshape(-1, 3)
    size = 2 * (2.0 * np.asarray(fiducials.radius, float) + 1.0) if len(zyx) else 10.0
    if FIDUCIALS_LAYER in viewer.layers:
        layer = viewer.layers[FIDUCIALS_LAYER]
        layer.data = zyx
        layer.size = size
        return layer
    layer = viewer.add_points(
        zyx, name=FIDUCIALS_LAYER, size=size, **session.layer_kwargs(), face_color="transparent",
        border_color="#ffd700", border_width=0.05, border_width_is_relative=True, symbol="disc",
        projection_mode="rescale_spherical", opacity=0.7,
        metadata={META: {"kind": "fiducials", "tomogram": session.tomogram_name}},
    )
    if session.active_class is not None:  # clicks keep going to the picks, not to this layer
        session.set_active_class(session.active_class)
    return layer


#: Picking keeps candidates down to this score; the sliders start at the model's thresholds.
CANDIDATE_FLOOR = 0.05


def show_probability(session: PickingSession, score_map, classes) -> list:
    """One Image layer per class ("probability: <class>"), replacing earlier ones: the
    class's probability where it is the arg-max class (what MP-NMS picks from), 0 elsewhere.

    Lazy (dask, computed per displayed slice) over the :class:`~..core.predict.ScoreMap`
    that picking keeps anyway, on the network's working grid (scaled and shifted onto the
    tomogram): no copy of the volume, one byte per working voxel."""
    import dask.array as da

    viewer = session.viewer
    lab, conf = score_map.label, score_map.confidence
    chunks = (min(8, lab.shape[0]), *lab.shape[1:])
    lab_d = da.from_array(lab, chunks=chunks, asarray=False)
    conf_d = da.from_array(conf, chunks=chunks, asarray=False)
    f = int(score_map.factor)
    kw = session.layer_kwargs()
    scale = tuple(float(v) * f for v in kw["scale"])
    translate = tuple(float(v) * score_map.offset for v in kw["scale"])
    out = []
    for k, c in enumerate(classes, start=1):
        name = f"probability: {c.name}"
        vol = da.where(lab_d == k, conf_d, np.uint8(0))
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = vol
            layer.scale, layer.translate = scale, translate
        else:
            from napari.utils.colormaps import Colormap

            cmap = Colormap([[0, 0, 0, 0], _rgba(c.colour)], name=f"cryopicker-{c.name}")
            layer = viewer.add_image(
                vol, name=name, **{**kw, "scale": scale}, translate=translate, colormap=cmap,
                blending="additive", contrast_limits=(0, 255), opacity=0.6,
                metadata={META: {"kind": "probability", "class": c.name, "tomogram": session.tomogram_name}},
            )
        out.append(layer)
    return out


def _rgba(colour: str) -> list[float]:
    from napari.utils.colormaps.standardize_color import transform_color

    return [float(v) for v in transform_color(colour)[0]]
