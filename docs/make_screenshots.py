"""The screenshots of docs/gui.md that need a trained model: the Particles panel reviewing
the picks of a realistic tomogram, and (``--project``) the Project panel of a six-tomogram job.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        --tomogram benchmarks/.cache/real_200x512x512_s200/tomogram.mrc \
        --model benchmarks/.cache/realistic/fallback_s0.pt

(the tomogram and model that `benchmarks/realistic.py --seeds 0 --tag fallback` leaves in
its cache). Writes docs/images/particles.png. With ``--project benchmarks/.cache`` (and ``--model``): the Project panel
for every ``real_*`` tomogram of FOLDER (linked as TS_01 ... into a temporary folder, so
their annotation files stay out of the cache), 40 clicks per class on the first and the
model's picks of the second, as docs/images/project.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tomogram", default=None, help="the Particles panel shot: this tomogram")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--project", default=None, metavar="FOLDER",
                    help="the Project panel of the realistic tomograms in FOLDER (benchmarks/.cache)")
    a = ap.parse_args()
    if a.project:
        return project_shot(a)
    if not a.tomogram:
        ap.error("give --tomogram (the Particles panel shot) or --project FOLDER")
    a.out = a.out or str(Path(__file__).parent / "images" / "particles.png")

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


def project_shot(a) -> int:
    import tempfile

    import napari
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_cryopicker._napari.project import project_for
    from napari_cryopicker._napari.session import get_session
    from napari_cryopicker._napari.widgets.all_panels import dock_all
    from napari_cryopicker._napari.widgets.project import ProjectWidget
    from napari_cryopicker.core.annotations import store_predictions
    from napari_cryopicker.core.model import load_checkpoint
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    out = a.out or str(Path(__file__).parent / "images" / "project.png")
    job = Path(tempfile.mkdtemp(prefix="cryopicker-shot-"))
    sources = sorted(Path(a.project).glob("real_*/tomogram.mrc"))
    for i, src in enumerate(sources):
        (job / f"TS_{i + 1:02d}.mrc").symlink_to(src.resolve())
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    panels = dock_all(viewer)
    s = get_session(viewer)
    viewer.open(str(job / "TS_01.mrc"), plugin="napari-cryopicker")
    ck = load_checkpoint(a.model)
    s.set_checkpoint(ck, a.model)
    truth = pd.read_csv(sources[0].with_name("picks.csv"))
    for c in ck.classes:
        sel = truth[truth["class"] == c.name].head(40) if c.name in BENCHMARK_CLASSES else truth.iloc[:0]
        s.add_picks(Picks.from_zyx(sel[["z", "y", "x"]].to_numpy(float), class_name=c.name,
                                   voxel_size=s.voxel_size))
    ctl = project_for(s)
    ctl.add([str(job)])
    from napari_cryopicker.core.tomogram import open_tomogram

    second = open_tomogram(job / "TS_02.mrc")
    res = predict_picks(second, ck, PredictConfig(device="cpu"))
    store_predictions(second, res.picks.with_tomogram(second.name), ck.classes, res.thresholds)
    panels.show_panel(ProjectWidget)
    panels.panel(ProjectWidget).refresh()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
