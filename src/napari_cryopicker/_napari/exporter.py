"""Writing the session's picks to files: the formats the core writes (with their labels and
file extensions), the file names, and :class:`Exporter` behind the Export panel."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import CryoPickerError, PicksFormatError
from ..core.picks import Picks

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

WRITE_FORMATS_FALLBACK = ["csv", "relion3", "relion4", "relion5", "dynamo", "copick", "napari"]
FORMAT_LABELS = {
    "relion5": "RELION 5 (.star)",
    "relion4": "RELION 4 (.star)",
    "relion3": "RELION 3 / Warp (.star)",
    "dynamo": "Dynamo table (.tbl)",
    "copick": "copick (.json)",
    "csv": "CSV (.csv)",
    "napari": "napari Points CSV (.csv)",
}
EXTENSIONS = {"relion5": ".star", "relion4": ".star", "relion3": ".star", "dynamo": ".tbl",
              "copick": ".json", "csv": ".csv", "napari": ".csv"}


def write_formats() -> list[str]:
    try:
        from ..core.formats import WRITE_FORMATS

        return list(WRITE_FORMATS)
    except Exception:  # the formats package is not there yet
        return list(WRITE_FORMATS_FALLBACK)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_") or "picks"


class Exporter:
    """Write the session's picks in any format the core can write."""

    def __init__(self, session: PickingSession):
        self.session = session

    def default_folder(self) -> Path:
        t = self.session.tomogram
        if t is not None and t.path is not None:
            return t.path.parent
        return Path.cwd()

    def collect(self, what: str = "annotations") -> Picks:
        """``annotations`` (manual/accepted/imported), ``predictions`` (shown ones) or ``both``."""
        s = self.session
        parts = []
        if what in ("annotations", "both"):
            parts.append(s.annotations())
        if what in ("predictions", "both"):
            parts.append(s.predictions(shown_only=True))
        if what not in ("annotations", "predictions", "both"):
            raise CryoPickerError(f"unknown selection {what!r}")
        out = Picks.concat(parts)
        if out.voxel_size is None:
            out.voxel_size = s.voxel_size
        return out

    @staticmethod
    def filename(fmt: str, tomogram: str, class_name: str | None) -> str:
        ext = EXTENSIONS.get(fmt, ".txt")
        part = safe_name(class_name) if class_name else "picks"
        if fmt == "copick":
            # copick's own naming: {user_id}_{session_id}_{object}.json
            return f"cryopicker_0_{part}{ext}"
        tag = {"relion3": "_relion3", "relion4": "_relion4", "napari": "_napari"}.get(fmt, "")
        return f"{safe_name(tomogram)}_{part}{tag}{ext}"

    def export(
        self,
        formats: str | list[str],
        folder: str | os.PathLike,
        *,
        what: str = "annotations",
        per_class: bool = False,
        tomogram_name: str | None = None,
        voxel_size: float | None = None,
        binning: float = 1.0,
    ) -> list[Path]:
        from ..core.formats import write_picks

        s = self.session
        tomo = s._require_tomogram()
        fmts = [formats] if isinstance(formats, str) else list(formats)
        if not fmts:
            raise CryoPickerError("choose at least one format")
        picks = self.collect(what)
        if not len(picks):
            what_words = {"annotations": "picks", "predictions": "shown predictions",
                          "both": "picks or shown predictions"}[what]
            raise CryoPickerError(f"there are no {what_words} to export")
        name = (tomogram_name or tomo.name).strip() or tomo.name
        picks = picks.with_tomogram(name)
        if voxel_size:
            # the coordinates stay voxel indices; only the stated voxel size changes
            picks.voxel_size = float(voxel_size)
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CryoPickerError(f"{folder}: cannot create the export folder ({e.strerror or e})") from None
        groups = [(c, picks.select(class_name=c)) for c in picks.class_names] if per_class else [(None, picks)]
        written: list[Path] = []
        for fmt in fmts:
            for cls, sub in groups:
                path = folder / self.filename(fmt, name, cls)
                try:
                    out = write_picks(sub, path, fmt, voxel_size=sub.voxel_size, binning=binning,
                                      tomogram_shape=tomo.shape, tomogram=name)
                except (PicksFormatError, CryoPickerError):
                    raise
                except OSError as e:
                    raise CryoPickerError(f"{path}: cannot write ({e.strerror or e})") from None
                except Exception as e:
                    raise CryoPickerError(f"{FORMAT_LABELS.get(fmt, fmt)}: {e}") from None
                written.extend(Path(p) for p in out)
        return written
