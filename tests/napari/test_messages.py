"""Messages: in full in the panels' message line and history, short in napari's toasts
(which show one elided line over the activity dock), and info never as a toast."""

from __future__ import annotations

import pytest
from gui_helpers import dock

from napari_cryopicker._napari.messages import MESSAGES, TOAST_CHARS, notify, short

LONG = ("Picking failed: the tomogram /data/lab/project/tomograms/TS_042_bin4_denoised.mrc has "
        "a voxel size of 0 A in its header. Set it in the Tomogram panel, then pick again.")


def test_short_keeps_the_first_sentence_on_one_line_and_cuts_at_a_word():
    assert short("Picked 12 particle(s)") == "Picked 12 particle(s)"
    assert short("Saved.  Now train\nagain.") == "Saved."
    s = short(LONG)
    assert len(s) <= TOAST_CHARS and s.endswith("…") and not s[:-1].endswith(" ")
    assert LONG.startswith(s[:-1])
    with pytest.raises(ValueError):
        MESSAGES.add("x", "fatal")


@pytest.fixture
def toasts():
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def grab(n):
        seen.append(n.message)

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def test_info_goes_to_the_panel_and_status_bar_not_a_toast(viewer, session, toasts, qtbot):
    from napari_cryopicker._napari.widgets.export import ExportWidget

    w = dock(viewer, ExportWidget)
    notify("Exported 3 file(s) to /tmp/x")
    qtbot.waitUntil(lambda: w.messages.text.text() == "Exported 3 file(s) to /tmp/x", timeout=2000)
    assert w.messages.isVisibleTo(w)
    assert viewer.status == "Exported 3 file(s) to /tmp/x"
    assert toasts == []


def test_an_error_toasts_its_first_words_and_the_panel_keeps_it_whole(viewer, session, toasts, qtbot):
    from napari_cryopicker._napari.widgets.all_panels import CryoPickerWidget

    w = CryoPickerWidget(viewer)
    viewer.window.add_dock_widget(w)
    notify(LONG, "error")
    assert len(toasts) == 1 and toasts[0].startswith(short(LONG)) and "CryoPicker panel" in toasts[0]
    for panel in w.panels.values():  # every tab shows the whole message
        qtbot.waitUntil(lambda p=panel: p.messages.text.text() == LONG, timeout=2000)
    # the message line sits under the panel's own groups
    lay = w.panels["Export"].layout()
    assert lay.indexOf(w.panels["Export"].messages) == lay.count() - 1
    dlg = w.panels["Export"].messages.show_history()
    assert LONG in dlg.box.toPlainText() and "error: " in dlg.box.toPlainText()
    dlg.close()


def test_a_failed_button_reports_in_the_panel(viewer, session, toasts, tmp_path):
    from napari_cryopicker._napari.widgets.export import ExportWidget

    w = dock(viewer, ExportWidget)
    w.folder.setText(str(tmp_path))
    assert w.export() is None
    assert "no picks to export" in MESSAGES.last.text and MESSAGES.last.level == "error"
    assert any("no picks to export" in t for t in toasts)
