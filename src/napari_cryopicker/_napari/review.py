"""The particle table's logic, without Qt widgets: one row per pick, prediction and
rejection of the session tomogram, a review cursor over the candidates (the shown
predictions, best score first), jump-to, and the answers (accept, reject, accept as
another class) that move the cursor on. The widget (``widgets/particles.py``) only shows
:meth:`ParticleReview.rows` and forwards clicks and keys."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.errors import CryoPickerError
from .session import Key, PickingSession

KIND = {"picks": "pick", "predicted": "prediction", "rejected": "rejected"}
COLUMNS = ["kind", "class", "score", "z", "y", "x", "z_A", "y_A", "x_A", "source"]
# (key, what it does), bound on the viewer while a particle table is open: letters that
# neither napari's Points nor its Image layers use, so they work whatever layer is active
KEYS = (
    ("N", "next candidate"),
    ("B", "previous candidate (back)"),
    ("G", "good: accept the candidate"),
    ("R", "reject the candidate"),
    ("T", "accept it as the active class (choose it with 1-9)"),
)


@dataclass(frozen=True)
class Row:
    """Where a table row lives: its layer key and index there, and its position (voxels)."""

    key: Key
    index: int
    zyx: tuple[float, float, float]
    class_name: str = ""


class ParticleReview:
    """Rows of every pick / shown prediction / rejection, and a cursor over the candidates."""

    # "unlike the clicks first" is doubtful first plus core.doubt.unlike_clicks: on the
    # realistic benchmark its first 80 answers held 66-73 wrong picks against 46-60, but a
    # round of fine-tuning on them did no better (benchmarks/README.md, session 12)
    ORDERS = ("best first", "doubtful first", "unlike the clicks first")

    def __init__(self, session: PickingSession):
        self.session = session
        self.current: Row | None = None
        self.order = "best first"
        self._profiles: tuple = (None, {})  # (tomogram, doubt.shell_profiles' cache)

    # ------------------------------------------------------------------ rows
    def rows(self) -> pd.DataFrame:
        """One row per particle: COLUMNS plus ``key`` and ``index`` (its place in its layer).
        Predictions below their class's threshold are left out, as on the canvas."""
        s = self.session
        vs = s.voxel_size or 1.0
        parts = []
        for key, state in s.states().items():
            if not len(state):
                continue
            idx = np.arange(len(state))
            if key.kind == "predicted":
                idx = np.flatnonzero(s.store.shown_mask(key.class_name, state))
                if not len(idx):
                    continue
            f = state.features.iloc[idx]
            zyx = state.data[idx]
            n = len(idx)
            cls = f["class"].astype(str).to_numpy() if "class" in f else np.full(n, key.class_name or "")
            if key.class_name is not None:
                cls = np.full(n, key.class_name)
            score = f["score"].to_numpy(dtype=float) if "score" in f else np.full(n, np.nan)
            source = (f["source"].astype(str).to_numpy() if (key.kind == "picks" and "source" in f)
                      else np.full(n, KIND[key.kind] if key.kind != "predicted" else "predicted"))
            parts.append(pd.DataFrame({
                "kind": KIND[key.kind], "class": cls, "score": score,
                "z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2],
                "z_A": zyx[:, 0] * vs, "y_A": zyx[:, 1] * vs, "x_A": zyx[:, 2] * vs,
                "source": source, "key": [key] * n, "index": idx,
            }))
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in [*COLUMNS, "key", "index"]})
        return pd.concat(parts, ignore_index=True)

    def candidates(self) -> pd.DataFrame:
        """The review queue: the shown predictions, best score first, or (``order`` "doubtful
        first") those where an answer tells the model most first (:func:`..core.doubt.doubt`:
        near their class's threshold, with a rival of another class on them, far from every
        click and rejection), the classes in turn (:func:`..core.doubt.class_turns`), or
        ("unlike the clicks first") those ranked so and, above all, unlike the clicks of
        their class (:func:`..core.doubt.unlike_clicks`); ties: class, z, y, x."""
        r = self.rows()
        known = r.loc[r["kind"] != "prediction", ["z", "y", "x"]].to_numpy(float)
        clicks = r[r["kind"] == "pick"]
        r = r[r["kind"] == "prediction"].copy()
        if self.order in ("doubtful first", "unlike the clicks first"):
            from ..core.doubt import class_turns, doubt, unlike_clicks

            s = self.session
            zyx = r[["z", "y", "x"]].to_numpy(float)
            unlike = None
            # only an in-memory or memory-mapped volume: each candidate's cube is read on the GUI
            # thread (~0.2 s for 500), which chunked (OME-Zarr, dask) storage would make seconds
            if (self.order == "unlike the clicks first" and s.tomogram is not None and len(r)
                    and isinstance(s.tomogram.data, np.ndarray)):
                if self._profiles[0] is not s.tomogram:  # cubes read once per tomogram
                    self._profiles = (s.tomogram, {})
                unlike = unlike_clicks(s.tomogram.data, zyx, r["class"].to_numpy(),
                                       clicks[["z", "y", "x"]].to_numpy(float), clicks["class"].to_numpy(),
                                       s.classes, cache=self._profiles[1])
            r["_key"] = doubt(zyx, r["class"].to_numpy(), r["score"].to_numpy(float),
                              s.thresholds, s.classes, known, s.default_threshold, unlike=unlike)
            if self.order == "doubtful first" and len(r):  # the classes in turn, the least picked first
                r["_key"] = class_turns(r["_key"].to_numpy(), r["class"].to_numpy(),
                                        clicks["class"].value_counts().to_dict())
            ascending = True
        else:
            r["_key"] = r["score"]
            ascending = False
        r = r.sort_values(["_key", "class", "z", "y", "x"], ascending=[ascending, True, True, True, True],
                          kind="stable")
        return r.drop(columns="_key").reset_index(drop=True)

    @staticmethod
    def row_of(frame: pd.DataFrame, i: int) -> Row:
        r = frame.iloc[int(i)]
        return Row(r["key"], int(r["index"]), (float(r["z"]), float(r["y"]), float(r["x"])), str(r["class"]))

    # ------------------------------------------------------------------ viewer
    def go_to(self, row: Row) -> None:
        """Centre the viewer on ``row`` (moving the slice to it) and select it in its layer."""
        s = self.session
        world = np.asarray(row.zyx, float) * np.asarray(s.scale, float)  # as the points layers place it
        v = s.viewer
        lead = v.dims.ndim - 3
        point = list(v.dims.point)
        point[lead:] = world.tolist()
        v.dims.point = point
        v.camera.center = tuple(world)
        layer = s.layer_for(row.key, create=False)
        if layer is not None:
            with s._muted():
                layer.selected_data = {row.index}
        self.current = row

    # ------------------------------------------------------------------ the cursor
    def _position(self, queue: pd.DataFrame) -> int | None:
        """Where the current candidate is in ``queue``, matched by layer and position (an
        edit elsewhere, or an undo, moves indices); ``current`` takes its index there."""
        hit = self.find(queue)
        if hit is None:
            return None
        self.current = self.row_of(queue, hit)
        return hit

    def find(self, frame: pd.DataFrame) -> int | None:
        """The row of ``frame`` holding the current particle (by layer and position)."""
        if self.current is None or not len(frame):
            return None
        c = self.current
        same = (frame["key"] == c.key).to_numpy()
        d = np.abs(frame[["z", "y", "x"]].to_numpy(float) - np.asarray(c.zyx)).max(axis=1)
        hit = np.flatnonzero(same & (d < 1e-6))
        return int(hit[0]) if len(hit) else None

    def step(self, delta: int) -> Row | None:
        """Move to the next (+1) or previous (-1) candidate and show it; None when there is
        none. From no current candidate, +1 goes to the best one."""
        q = self.candidates()
        if not len(q):
            self.current = None
            return None
        pos = self._position(q)
        if pos is None:
            pos = 0 if delta >= 0 else len(q) - 1
        else:
            pos = int(np.clip(pos + delta, 0, len(q) - 1))
        row = self.row_of(q, pos)
        self.go_to(row)
        return row

    def _answer(self, fn) -> Row | None:
        """Apply ``fn(class_name, index)`` to the current candidate, then show the one that
        followed it in the queue (or the one before, at the end)."""
        q = self.candidates()
        pos = self._position(q)
        if pos is None:
            if self.current is not None and self.current.key.kind != "predicted":
                raise CryoPickerError(f"the selected row is a {KIND[self.current.key.kind]}, not a prediction: "
                                      "only predictions are accepted or rejected here")
            raise CryoPickerError("no candidate is selected: press N (or click a prediction row) first")
        row = self.current
        fn(row.key.class_name, row.index)
        q = self.candidates()
        if not len(q):
            self.current = None
            return None
        nxt = self.row_of(q, min(pos, len(q) - 1))
        self.go_to(nxt)
        return nxt

    def accept(self) -> Row | None:
        return self._answer(lambda name, i: self.session.accept({name: [i]}))

    def reject(self) -> Row | None:
        return self._answer(lambda name, i: self.session.reject({name: [i]}))

    def accept_as(self, class_name: str | None = None) -> Row | None:
        """Accept the candidate as ``class_name`` (default: the session's active class)."""
        target = class_name or self.session.active_class
        if not target:
            raise CryoPickerError("choose the class first (number keys 1-9 or the Classes panel)")
        return self._answer(lambda name, i: self.session.accept({name: [i]}, as_class=target))


def ortho_slices(data, zyx, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The XY, XZ and YZ planes through ``zyx`` (voxels) of a (z, y, x) volume, each
    (2 half + 1) square, NaN outside the volume; reads only those three planes (a memory
    map stays on disk). XY is indexed [y, x], XZ [z, x], YZ [z, y]."""
    c = np.rint(np.asarray(zyx, float)).astype(int)
    n = 2 * int(half) + 1
    shape = data.shape[-3:]

    def window(axis):
        lo, hi = c[axis] - half, c[axis] + half + 1
        a, b = max(lo, 0), min(hi, shape[axis])
        return slice(a, b), slice(a - lo, a - lo + max(0, b - a))

    out = []
    for fixed, (r, q) in ((0, (1, 2)), (1, (0, 2)), (2, (0, 1))):
        plane = np.full((n, n), np.nan, np.float32)
        if 0 <= c[fixed] < shape[fixed]:
            (sr, dr), (sq, dq) = window(r), window(q)
            idx = [slice(None)] * 3
            idx[fixed], idx[r], idx[q] = int(c[fixed]), sr, sq
            plane[dr, dq] = np.asarray(data[tuple(idx)], dtype=np.float32)
        out.append(plane)
    return out[0], out[1], out[2]
