"""The napari-cryopicker launcher."""

from __future__ import annotations

from napari_cryopicker._napari.launch import build_parser, main


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert not args.demo and args.screenshot is None and args.paths == [] and not args.no_sample
    args = build_parser().parse_args(["a.mrc", "--demo", "--screenshot", "x.png", "--epochs", "2"])
    assert args.paths == ["a.mrc"] and args.demo and args.epochs == 2


def test_screenshot_of_the_whole_window_then_exit(tmp_path, tomo_path, qapp):
    out = tmp_path / "window.png"
    assert main([str(tomo_path), "--screenshot", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 10_000
    from qtpy.QtGui import QImage

    img = QImage(str(out))
    assert img.width() >= 1200 and img.height() >= 800  # the whole window, docks included


def test_without_files_it_opens_the_sample_with_picks(tmp_path, qapp, monkeypatch):
    import napari

    seen = {}
    real_run = napari.run

    def fake_run(*a, **k):  # inspect the viewer napari would now show, then let it close
        v = napari.current_viewer()
        seen["layers"] = [layer.name for layer in v.layers]
        return real_run(*a, **k)

    monkeypatch.setattr(napari, "run", fake_run)
    out = tmp_path / "w.png"
    assert main(["--screenshot", str(out)]) == 0
    assert any(n.startswith("picks: ") for n in seen["layers"]), seen
    assert any("tomogram" in n for n in seen["layers"]), seen


def test_the_plugin_does_not_import_torch_until_work_starts():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import napari_cryopicker._napari.widgets, napari_cryopicker._napari.reader\n"
        "import napari_cryopicker._napari.writer, napari_cryopicker._napari.sample_data\n"
        "import napari_cryopicker._napari.launch\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scripted_demo_trains_picks_and_saves_the_window(tmp_path, qapp, monkeypatch):
    """`napari-cryopicker --demo --screenshot`: sample -> training -> picking -> picture."""
    import napari

    from napari_cryopicker._napari.session import get_session

    seen = {}
    real_close = napari.Viewer.close

    def spy_close(self):  # what the window showed when the screenshot was taken
        s = get_session(self, create=False)
        seen["layers"] = [layer.name for layer in self.layers]
        seen["history"] = list(s.checkpoint.history) if s is not None and s.checkpoint is not None else None
        return real_close(self)

    monkeypatch.setattr(napari.Viewer, "close", spy_close)
    out = tmp_path / "demo.png"
    assert main(["--demo", "--epochs", "1", "--time-limit", "4", "--device", "cpu", "--screenshot", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 10_000
    assert seen["history"] and seen["history"][0]["epoch"] == 1  # a model was trained
    assert any(n.startswith("picks: ") for n in seen["layers"]), seen
