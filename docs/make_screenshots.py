"""The screenshots of docs/gui.md that need a trained model: the Particles panel reviewing
the picks of a realistic tomogram.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        --tomogram benchmarks/.cache/real_200x512x512_s200/tomogram.mrc \
        --model benchmarks/.cache/realistic/fallback_s0.pt

(the tomogram and model that `benchmarks/realistic.py --seeds 0 --tag fallback` leaves in
its cache). Writes docs/images/particles.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tomogram", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent / "images" / "particles.png"))
    a = ap.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cryopicker._napari.session import get_session
    from napari_cryopicker._napari.widgets.all_panels import dock_all
    from napari_cryopicker._napari.widgets.particles import ParticlesWidget
    from napari_cryopicker.core.model import load_checkpoint
    from napari_cryopicker.core.predict import PredictConfig, predict_picks

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    panels = dock_all(viewer)
    s = get_session(viewer)
    viewer.open(a.tomogram, plugin="napari-cryopicker")
    ck = load_checkpoint(a.model)
    s.set_checkpoint(ck, a.model)
    res = predict_picks(s.tomogram, ck, PredictConfig(device="cpu", score_floor=0.05))
    for name, t in res.thresholds.items():
        s.thresholds[name] = float(t)
    s.set_predictions(res.picks.with_tomogram(s.tomogram_name), checkpoint_classes=ck.classes)
    panels.show_panel(ParticlesWidget)
    w = panels.panel(ParticlesWidget)
    for _ in range(4):  # the fourth-best candidate
        w.next()
    viewer.camera.zoom = 0.45  # screen pixels per Angstrom: ~150 voxels across the canvas
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(a.out, canvas_only=False)
    print(f"wrote {a.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
