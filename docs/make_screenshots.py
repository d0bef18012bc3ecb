"""The screenshots of docs/gui.md that need a trained model: the Particles panel reviewing
the picks of a realistic tomogram, and (``--project``) the Project panel of a six-tomogram job.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        --tomogram benchmarks/.cache/real_200x512x512_s200/tomogram.mrc \
        --model benchmarks/.cache/realistic/fallback_s0.pt

(the tomogram and model that `benchmarks/realistic.py --seeds 0 --tag fallback` leaves in
its cache). Writes docs/images/particles.png. With ``--project benchmarks/.cache`` (and ``--model``): the Project panel
for every ``real_*_m`` tomogram of FOLDER (the benchmark caches of today's bodies; the
legacy ones, ``real_*`` without ``_m``, made the screenshots before session 18) (linked as TS_01 ... into a temporary folder, so
their annotation files stay out of the cache), 40 clicks per class on the first and the
model's picks of the second, as docs/images/project.png. With ``--live FOLDER`` (a realistic
tomogram's cache folder, e.g. benchmarks/.cache/real_200x512x512_s100, and ``--model``): live
mode fine-tuning that model from 10 clicks per class in view, its suggestions on screen
(docs/images/live.png), then the Particles panel's doubtful-first queue (docs/images/queue.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _viewer_with(tomogram, model: str):
    """A 1600x1000 napari window with every CryoPicker panel, ``tomogram`` open and the
    model ``model`` loaded: (viewer, panels, session, checkpoint)."""
    import napari

    from napari_cryopicker._napari.session import get_session
    from napari_cryopicker._napari.widgets.all_panels import dock_all
    from napari_cryopicker.core.model import load_checkpoint

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    panels = dock_all(viewer)
    s = get_session(viewer)
    viewer.open(str(tomogram), plugin="napari-cryopicker")
    ck = load_checkpoint(model)
    s.set_checkpoint(ck, model)
    return viewer, panels, s, ck


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tomogram", default=None, help="the Particles panel shot: this tomogram")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--project", default=None, metavar="FOLDER",
                    help="the Project panel of the realistic tomograms in FOLDER (benchmarks/.cache)")
    ap.add_argument("--live", default=None, metavar="FOLDER",
                    help="live mode and the doubts queue on the realistic tomogram in FOLDER")
    a = ap.parse_args()
    if a.project:
        return project_shot(a)
    if a.live:
        return live_shot(a)
    if not a.tomogram:
        ap.error("give --tomogram (the Particles panel shot) or --project FOLDER")
    a.out = a.out or str(Path(__file__).parent / "images" / "particles.png")

    from qtpy.QtWidgets import QApplication

    from napari_cryopicker._napari.widgets.particles import ParticlesWidget
    from napari_cryopicker.core.predict import PredictConfig, predict_picks

    viewer, panels, s, ck = _viewer_with(a.tomogram, a.model)
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

    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_cryopicker._napari.project import project_for
    from napari_cryopicker._napari.widgets.project import ProjectWidget
    from napari_cryopicker.core.annotations import store_predictions
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    out = a.out or str(Path(__file__).parent / "images" / "project.png")
    job = Path(tempfile.mkdtemp(prefix="cryopicker-shot-"))
    sources = sorted(Path(a.project).glob("real_*_m/tomogram.mrc"))
    for i, src in enumerate(sources):
        (job / f"TS_{i + 1:02d}.mrc").symlink_to(src.resolve())
    viewer, panels, s, ck = _viewer_with(job / "TS_01.mrc", a.model)
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


def live_shot(a) -> int:
    """Live mode on a realistic training tomogram: fine-tune ``--model`` from 10 clicks per
    class around slice 100 with suggestions on, shoot the Training panel once the second
    epoch's suggestions are shown, then the Particles panel's doubtful-first queue on the
    model's predictions, with training still running."""
    import tempfile
    import time

    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_cryopicker._napari.widgets.particles import ParticlesWidget
    from napari_cryopicker._napari.widgets.training import TrainingWidget
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    src = Path(a.live) / "tomogram.mrc"
    job = Path(tempfile.mkdtemp(prefix="cryopicker-shot-"))
    (job / "TS_01.mrc").symlink_to(src.resolve())  # its annotation file stays out of the cache
    viewer, panels, s, ck = _viewer_with(job / "TS_01.mrc", a.model)
    truth = pd.read_csv(src.with_name("picks.csv"))
    near = truth[(truth["z"] - 100).abs() < 20]
    for c in ck.classes:
        sel = near[near["class"] == c.name].head(10) if c.name in BENCHMARK_CLASSES else near.iloc[:0]
        s.add_picks(Picks.from_zyx(sel[["z", "y", "x"]].to_numpy(float), class_name=c.name,
                                   voxel_size=s.voxel_size))
    res = predict_picks(s.tomogram, ck, PredictConfig(device="cpu", score_floor=0.05))
    for name, t in res.thresholds.items():
        s.thresholds[name] = float(t)
    s.set_predictions(res.picks.with_tomogram(s.tomogram_name), checkpoint_classes=ck.classes)
    for layer in viewer.layers:
        if layer.name.startswith("predicted: "):
            layer.visible = False  # the suggestions are the subject of the first shot
    viewer.dims.set_point(0, 100 * s.voxel_size)  # world coordinates are in A
    panels.show_panel(TrainingWidget)
    w = panels.panel(TrainingWidget)
    w.fine_tune.setChecked(True)
    w.live.setChecked(True)
    w.continuous.setChecked(True)
    w.btn_train.click()
    t0 = time.monotonic()
    while w.run.live_updates < 2:
        QApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > 600:
            raise SystemExit("no live suggestions within 10 minutes")
    print(f"suggestions from 2 epochs after {time.monotonic() - t0:.0f} s")
    viewer.camera.zoom = 0.25  # screen pixels per Angstrom: ~260 voxels across the canvas
    for _ in range(20):
        QApplication.processEvents()
    out = Path(a.out or Path(__file__).parent / "images" / "live.png")
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    for layer in viewer.layers:
        if layer.name.startswith(("predicted: ", "suggestions: ")):
            layer.visible = layer.name.startswith("predicted: ")
    panels.show_panel(ParticlesWidget)
    p = panels.panel(ParticlesWidget)
    p.order.setCurrentText("doubtful first")
    shape = s.tomogram.shape
    for _ in range(50):  # the first doubtful candidate away from the tomogram's edges
        p.next()
        cur = p.review.current
        if cur is not None and all(40 <= c <= n - 40 for c, n in zip(cur.zyx[1:], shape[1:])):
            break
    viewer.camera.zoom = 0.45
    for _ in range(20):
        QApplication.processEvents()
    queue = out.with_name("queue.png")
    viewer.screenshot(str(queue), canvas_only=False)
    print(f"wrote {queue}")
    w.btn_stop.click()
    while w.run.running:
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
