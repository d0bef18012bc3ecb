"""Correct & retrain panel: accept / reject predictions, show negatives, retrain in one click."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QPushButton

from ..messages import notify
from ..workers import runs_for
from ._common import PanelBase, hint_label, reports_errors


class CorrectWidget(PanelBase):
    title = "Correct & retrain"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.train_run = runs_for(self.session)["train"]
        lay = self.group("Correct the predictions")
        lay.addWidget(hint_label(
            "Select predictions (layer 'predicted: <class>', select mode S) and accept them into the "
            "training set, or press Delete / Reject for false picks: they are remembered as "
            "negatives. Missed particles: click them in the 'picks: <class>' layer."))
        row = QHBoxLayout()
        self.btn_accept = QPushButton("Accept selected")
        self.btn_accept_all = QPushButton("Accept all shown")
        self.btn_reject = QPushButton("Reject selected")
        for b in (self.btn_accept, self.btn_accept_all, self.btn_reject):
            row.addWidget(b)
        lay.addLayout(row)
        self.show_rejected = QCheckBox("show rejected picks (faint)")
        lay.addWidget(self.show_rejected)
        self.counts = hint_label()
        lay.addWidget(self.counts)

        r = self.group("Retrain")
        self.btn_retrain = QPushButton("Retrain from the current model")
        self.btn_retrain.setToolTip("Fine-tune the current model on the corrected training set "
                                    "(settings from the Training panel)")
        r.addWidget(self.btn_retrain)
        self.status = hint_label()
        r.addWidget(self.status)

        self.btn_accept.clicked.connect(self.accept_selected)
        self.btn_accept_all.clicked.connect(self.accept_all)
        self.btn_reject.clicked.connect(self.reject_selected)
        self.show_rejected.toggled.connect(self._show_rejected)
        self.btn_retrain.clicked.connect(self.retrain)
        self.on(self.session.events.picks, self._refresh)
        self.on(self.session.events.model, self._refresh)
        self.on(self.train_run.started, self._refresh)
        self.on(self.train_run.finished, self._refresh)
        self._refresh()

    def _refresh(self, *_):
        c = self.session.counts()
        tot = {k: sum(v.get(k, 0) for v in c.values())
               for k in ("manual", "accepted", "imported", "predicted", "rejected")}
        self.counts.setText(
            f"Training set: {tot['manual']} manual, {tot['accepted']} accepted, {tot['imported']} imported; "
            f"{tot['rejected']} rejected (negatives); {tot['predicted']} predictions shown."
        )
        running = self.train_run.running
        self.btn_retrain.setEnabled(self.session.checkpoint is not None and not running)
        self.status.setText("Training... (see the Training panel)" if running else "")

    @reports_errors
    def accept_selected(self, *_):
        n = self.session.accept_selected()
        if not n:
            raise ValueError("select some predicted picks first (select mode, click or drag a box)")

    @reports_errors
    def accept_all(self, *_):
        n = self.session.accept_shown()
        notify(f"Accepted {n} prediction(s)")

    @reports_errors
    def reject_selected(self, *_):
        n = self.session.reject_selected()
        if not n:
            raise ValueError("select some predicted picks first (select mode, click or drag a box)")

    @reports_errors
    def _show_rejected(self, on: bool):
        if self.session.tomogram is not None:
            self.session.set_rejected_visible(on)

    @reports_errors
    def retrain(self, *_):
        self.train_run.start(fine_tune=True)
