"""``napari-cryopicker`` / ``cryopicker gui``: napari with every CryoPicker panel docked.

    napari-cryopicker [TOMOGRAM.mrc ...] [--demo] [--screenshot OUT.png]

``--demo`` opens the simulated sample with a few picks per class, trains for a short time
budget (``--time-limit``, 300 s by default: enough on a laptop CPU for picks of several
classes), picks and shows the predicted picks. ``--screenshot OUT.png`` saves a picture of the whole
window (after the demo, if given) and exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# the demo trains with the engine's defaults for a short wall-clock budget; validating
# every other epoch leaves more of the budget to training
DEMO_TRAIN = {"val_every": 2}
DEMO_TIME_LIMIT = 300.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-cryopicker",
        description="Open napari with the CryoPicker panels: pick a few particles, train, pick, "
                    "correct, retrain, export.",
    )
    p.add_argument("paths", nargs="*", help="tomograms (.mrc/.rec/.map/.st) or picks files to open")
    p.add_argument("--demo", action="store_true",
                   help="open the simulated sample, train briefly, pick and show the picks")
    p.add_argument("--epochs", type=int, default=100, help="at most this many training epochs for --demo")
    p.add_argument("--time-limit", type=float, default=DEMO_TIME_LIMIT, metavar="SECONDS",
                   help=f"training budget for --demo (default {DEMO_TIME_LIMIT:g} s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device for training and picking (default auto)")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="save a screenshot of the whole window (after --demo) and exit")
    p.add_argument("--no-sample", action="store_true",
                   help="without tomograms to open, start empty instead of with the sample tomogram")
    p.add_argument("--separate-docks", action="store_true",
                   help="dock each panel on its own instead of one tabbed panel")
    return p


class Demo:
    """Sample -> brief training -> picking, driven by the run signals (no blocking)."""

    def __init__(self, viewer, panels, epochs: int, device: str, on_done, time_limit: float = DEMO_TIME_LIMIT):
        from .session import get_session
        from .workers import runs_for

        self.viewer = viewer
        self.panels = panels
        self.session = get_session(viewer)
        self.runs = runs_for(self.session)
        self.epochs = epochs
        self.time_limit = float(time_limit)
        self.device = device
        self.on_done = on_done
        self.ok = False

    def start(self) -> None:
        from .messages import notify

        self.viewer.open_sample("napari-cryopicker", "tomogram")
        s = self.session
        if s.tomogram is None:
            raise RuntimeError("the sample tomogram did not open")
        s.train_settings.update(epochs=self.epochs, device=self.device, time_limit=self.time_limit)
        s.train_overrides.update(DEMO_TRAIN)
        s.predict_overrides.update(device=self.device)
        n = sum(v["annotated"] for v in s.counts().values())
        notify(f"Demo: training on {n} sample picks for up to {self.time_limit:.0f} s...")
        self._show("Training")
        self.runs["train"].finished.connect(self._trained)
        self.runs["train"].start()

    def _show(self, title: str) -> None:
        from .widgets.all_panels import PANELS, CryoPickerWidget

        if isinstance(self.panels, CryoPickerWidget):
            for cls in PANELS:
                if cls.title == title:
                    self.panels.show_panel(cls)

    def _trained(self, outcome) -> None:
        self.runs["train"].finished.disconnect(self._trained)
        if not outcome.ok:
            self.on_done(False)
            return
        self._show("Picking")
        self.runs["predict"].finished.connect(self._picked)
        try:
            self.runs["predict"].start()
        except Exception as e:  # pragma: no cover - shown, then finish
            from .messages import notify
            from .tasks import readable_error

            notify(readable_error(e), "error")
            self.on_done(False)

    def _picked(self, outcome) -> None:
        self.runs["predict"].finished.disconnect(self._picked)
        self.ok = outcome.ok
        if outcome.ok:
            from .messages import notify

            s = self.session
            z = s.tomogram.shape[0] // 2
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, z * s.scale[0])
            if not len(s.predictions(shown_only=False)):
                notify("The demo model found no particles yet: train longer (Training panel, more "
                       "epochs) or on a GPU, then Pick again")
        self.on_done(outcome.ok)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import napari
        from qtpy.QtCore import QTimer
    except ImportError as e:  # pragma: no cover - depends on the install
        print(f"napari-cryopicker: the GUI needs napari and Qt ({e}); "
              "install with: pip install 'napari-cryopicker[all]'", file=sys.stderr)
        return 2

    from .widgets.all_panels import dock_all
    from .messages import notify
    from .tasks import readable_error

    viewer = napari.Viewer(title="CryoPicker")
    if args.screenshot:  # a predictable picture, whatever size napari remembered
        viewer.window._qt_window.resize(1600, 1000)
    panels = dock_all(viewer, tabbed=not args.separate_docks)
    with_error = {"failed": False}

    if not args.paths and not args.demo and not args.no_sample:
        try:  # a new user sees a tomogram with a few picks per class straight away
            viewer.open_sample("napari-cryopicker", "tomogram")
        except Exception as e:  # pragma: no cover - shown, the window still opens
            notify(f"Could not open the sample tomogram: {readable_error(e)}", "error")
    for path in args.paths:
        try:
            viewer.open(path, plugin="napari-cryopicker")
        except Exception as e:
            notify(f"Could not open {path}: {readable_error(e)}", "error")
            with_error["failed"] = True

    def finish(ok: bool = True) -> None:
        if not ok:
            with_error["failed"] = True
        if args.screenshot:
            QTimer.singleShot(300, shoot)

    def shoot() -> None:
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            viewer.window._qt_window.raise_()
        except Exception:  # pragma: no cover
            pass
        viewer.screenshot(str(out), canvas_only=False)
        print(f"screenshot saved to {out}")
        viewer.close()

    if args.demo:
        demo = Demo(viewer, panels, args.epochs, args.device, finish, time_limit=args.time_limit)

        def start_demo():
            try:
                demo.start()
            except Exception as e:
                notify(f"Demo failed: {readable_error(e)}", "error")
                finish(False)

        QTimer.singleShot(0, start_demo)
    elif args.screenshot:
        QTimer.singleShot(500, finish)

    napari.run()
    if args.screenshot and not Path(args.screenshot).exists():
        return 1
    return 1 if (args.demo and with_error["failed"]) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
