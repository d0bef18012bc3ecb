"""The tomogram of a picking session: an Image layer (one scale level of a multiscale
one) as a core :class:`~..core.tomogram.Tomogram`, the voxel size and scale every derived
layer shares, switching tomograms and levels, and the slice thickness that shows each
particle's ring."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.annotations import default_autosave_path, saved_level
from ..core.errors import CryoPickerError
from ..core.store import Key
from ..core.tomogram import Tomogram
from .binding import _call_soon
from .convert import cp_meta

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image


def n_levels(layer: Image) -> int:
    """How many scale levels an Image layer has (1 unless it is multiscale)."""
    return len(layer.data) if getattr(layer, "multiscale", False) else 1


def level_factors(layer: Image, level: int) -> tuple[float, float, float]:
    """How many level-0 voxels one voxel of ``level`` spans, per axis (z, y, x): from the
    voxel sizes our reader records, else from the shapes (napari-ome-zarr's layers)."""
    if level == 0:
        return (1.0, 1.0, 1.0)
    sizes = cp_meta(layer).get("levels") or []
    if len(sizes) > level and sizes[0]:
        return (float(sizes[level]) / float(sizes[0]),) * 3
    s0, sk = layer.data[0].shape[-3:], layer.data[level].shape[-3:]
    return tuple(float(round(a / b)) if b else 1.0 for a, b in zip(s0, sk))


def tomogram_from_layer(layer: Image, level: int = 0) -> Tomogram:
    """A core :class:`Tomogram` view of a napari Image layer (no copy of the data); of one
    scale ``level`` of a multiscale layer (0: the finest)."""
    multi = getattr(layer, "multiscale", False)
    if not 0 <= level < n_levels(layer):
        raise CryoPickerError(f"layer {layer.name!r} has scale levels 0-{n_levels(layer) - 1}, not {level}")
    data = layer.data[level] if multi else layer.data
    if getattr(data, "ndim", 0) != 3 or getattr(layer, "rgb", False):
        raise CryoPickerError(
            f"layer {layer.name!r} is not a 3D greyscale volume (shape {getattr(data, 'shape', '?')}); "
            "choose a tomogram layer"
        )
    cm = cp_meta(layer)
    f = level_factors(layer, level) if multi else (1.0, 1.0, 1.0)
    scale = tuple(float(s) * k for s, k in zip(layer.scale[-3:], f))
    vs = float(cm.get("voxel_size") or layer.scale[-1]) * f[2]
    path = cm.get("path") or getattr(getattr(layer, "source", None), "path", None)
    label = cm.get("tomogram") or (Path(path).stem if path else layer.name)
    return Tomogram(
        data=data,
        voxel_size=vs,
        path=Path(path) if path else None,
        voxel_size_xyz=(scale[2], scale[1], scale[0]),
        label=label,
    )


class SessionTomogram:
    """Mixin of :class:`~.session.PickingSession`: its tomogram and scale level."""

    # ------------------------------------------------------------------ tomogram
    @property
    def scale(self) -> tuple[float, float, float]:
        """The world size of one voxel of the session tomogram (at its scale level)."""
        if self.image_layer is not None:
            f = level_factors(self.image_layer, self.level)
            return tuple(float(s) * k for s, k in zip(self.image_layer.scale[-3:], f))  # type: ignore[return-value]
        return (1.0, 1.0, 1.0)

    def levels(self) -> list[tuple[float, tuple[int, ...]]]:
        """(voxel size in A, shape) of each scale level of the session tomogram."""
        layer = self.image_layer
        if layer is None:
            return []
        out = []
        for k in range(n_levels(layer)):
            t = tomogram_from_layer(layer, k)
            out.append((t.voxel_size, tuple(t.shape)))
        return out

    def set_level(self, level: int) -> None:
        """Work on scale ``level`` of a multiscale tomogram: picks, training and picking are
        in that level's voxels. The annotations are saved first and come back rescaled."""
        if self.image_layer is None:
            raise CryoPickerError("open a tomogram first (File > Open, or the Tomogram panel)")
        if level == self.level:
            return
        if self.is_busy():
            raise CryoPickerError("wait for the running job to finish (or stop it) before changing the scale level")
        self.set_tomogram(self.image_layer, level=level)
        self._autosave()  # the file names the level, so reopening the tomogram comes back to it

    @property
    def units(self) -> tuple | None:
        """The tomogram layer's units (Angstrom from the reader), for derived layers."""
        if self.image_layer is None:
            return None
        return tuple(str(u) for u in self.image_layer.units[-3:])

    def layer_kwargs(self) -> dict:
        """scale (and units) shared by every layer derived from the tomogram."""
        kw = {"scale": self.scale}
        if self.units is not None:
            kw["units"] = self.units
        return kw

    @property
    def voxel_size(self) -> float | None:
        return self.tomogram.voxel_size if self.tomogram is not None else None

    @property
    def tomogram_name(self) -> str:
        return self.tomogram.name if self.tomogram is not None else ""

    def image_layers(self) -> list[Image]:
        from napari.layers import Image

        return [
            lyr for lyr in self.viewer.layers
            if isinstance(lyr, Image) and lyr.ndim >= 3 and not getattr(lyr, "rgb", False)
            and cp_meta(lyr).get("kind") not in ("probability", "filtered")
        ]

    def set_tomogram(self, layer: Image | None, *, level: int | None = None) -> None:
        """Make ``layer`` the session tomogram, at scale ``level`` (default: the level in use,
        or the coarsest the layer has); saves and clears the previous one's layers."""
        if layer is None:
            level = 0
        elif level is None:  # where its annotations were saved, else the level in use
            n = n_levels(layer)
            saved = saved_level(cp_meta(layer).get("path")) if n > 1 and layer is not self.image_layer else None
            level = min(self.level if saved is None else saved, n - 1)
        if layer is self.image_layer and level == self.level:
            return
        tomo = tomogram_from_layer(layer, level) if layer is not None else None
        old_vs = self.voxel_size
        self._stash_current()
        self._drop_session_layers()
        self.store.reset(tomo.name if tomo is not None else "", tomo.voxel_size if tomo is not None else None)
        self.image_layer = layer
        self.level = level
        self._projection_set = False
        self.tomogram = tomo
        if tomo is not None and old_vs and tomo.voxel_size and not np.isclose(old_vs, tomo.voxel_size, rtol=1e-3):
            # a class is a size in A: at another binning its diameter in voxels changes
            for c in self.classes:
                c.diameter = c.diameter * old_vs / tomo.voxel_size
        self.autosave_path = default_autosave_path(tomo) if tomo is not None else None
        self.last_autosave_error = None
        if tomo is not None:
            self._bind_layer_keys(layer)
            self._restore_annotations()
            for lyr in list(self.viewer.layers):
                self._maybe_adopt(lyr)
            self._update_slice_thickness()
            # restored picks: their layer, not the tomogram napari selects, takes the clicks
            _call_soon(self._select_restored_picks)
        self.events.tomogram.emit()
        self.events.classes.emit()
        self.events.picks.emit()
        self.events.history.emit()

    def _select_restored_picks(self) -> None:
        name = self.active_class
        if self._viewer_ref() is None or name is None or name not in self.classes:
            return
        layer = self._layers.get(Key("picks", name))
        if layer is not None and layer in self.viewer.layers:
            self.set_active_class(name)

    def _require_tomogram(self) -> Tomogram:
        if self.tomogram is None:
            raise CryoPickerError("open a tomogram first (File > Open, or the Tomogram panel)")
        return self.tomogram

    def _update_slice_thickness(self) -> None:
        """Thick z-slice so that each particle's ring shows on every slice its sphere cuts.

        The thickness is napari's (it applies to every layer), so the tomogram is shown as
        a plain slice (``projection_mode='none'``): napari 0.9 would otherwise average it
        over a particle diameter and wash it out. A thickness the user set by hand is left
        alone; averaging slices is the Tomogram panel's *slab average* filter.
        """
        if self.image_layer is None or not len(self.classes):
            return
        dims = self.viewer.dims
        axis = dims.ndim - 3
        if axis < 0:
            return
        half = max(self.classes.diameters) / 2.0 * self.scale[0]
        left, right = list(dims.margin_left), list(dims.margin_right)
        ours = getattr(self, "_margin_set", None)
        if (left[axis], right[axis]) not in ((0.0, 0.0), (ours, ours)):
            return  # the user's own slice thickness
        with contextlib.suppress(Exception):
            if self.image_layer.projection_mode == "mean" and not getattr(self, "_projection_set", False):
                self.image_layer.projection_mode = "none"
                self._projection_set = True
        left[axis], right[axis] = half, half
        with contextlib.suppress(Exception):
            dims.margin_left, dims.margin_right = tuple(left), tuple(right)
            self._margin_set = half
