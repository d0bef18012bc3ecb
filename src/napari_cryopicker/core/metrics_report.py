"""The scores of picking accuracy and their report: F-beta, precision and recall with the
empty-set conventions of :mod:`.metrics`, per-class scores (:class:`ClassScore`), the
:class:`Report` of an evaluation, and its text (:func:`format_report`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------
def fbeta(precision: float, recall: float, beta: float = 1.0) -> float:
    """``(1 + b^2) P R / (b^2 P + R)``; 0.0 when P + R == 0. beta > 1 favours recall."""
    p, r, b2 = float(precision), float(recall), float(beta) ** 2
    den = b2 * p + r
    if den <= 0:
        return 0.0
    return (1.0 + b2) * p * r / den


def f_alpha(precision: float, recall: float, alpha: float = 3.0) -> float:
    """The recall-weighted F1-alpha used for validation (DeepETPicker style): F-beta with beta = alpha."""
    return fbeta(precision, recall, alpha)


def safe_precision_recall(tp: int, n_pred: int, n_true: int) -> tuple[float, float]:
    """Precision and recall with this module's empty-set conventions."""
    if n_pred > 0:
        precision = tp / n_pred
    else:
        precision = 1.0 if n_true == 0 else 0.0
    if n_true > 0:
        recall = tp / n_true
    else:
        recall = 1.0 if n_pred == 0 else 0.0
    return precision, recall


@dataclass
class ClassScore:
    name: str
    n_pred: int
    n_true: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    fbeta: float
    mean_distance: float  # mean distance (voxels) of the matched pairs; nan if none

    @classmethod
    def from_counts(
        cls, name: str, tp: int, n_pred: int, n_true: int, beta: float = 1.0, distance_sum: float = 0.0
    ) -> ClassScore:
        p, r = safe_precision_recall(tp, n_pred, n_true)
        return cls(
            name=name,
            n_pred=int(n_pred),
            n_true=int(n_true),
            tp=int(tp),
            fp=int(n_pred - tp),
            fn=int(n_true - tp),
            precision=p,
            recall=r,
            f1=fbeta(p, r, 1.0),
            fbeta=fbeta(p, r, beta),
            mean_distance=(distance_sum / tp) if tp else float("nan"),
        )


@dataclass
class Report:
    per_class: dict[str, ClassScore] = field(default_factory=dict)
    overall: ClassScore | None = None  # micro average: TP/FP/FN summed over classes
    beta: float = 1.0
    czii: float | None = None

    def to_dataframe(self):
        import pandas as pd

        rows = [vars(s).copy() for s in self.per_class.values()]
        if self.overall is not None:
            rows.append(vars(self.overall).copy())
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------
def _fmt_beta(beta: float) -> str:
    return f"{beta:g}"


def format_report(report: Report) -> str:
    """An aligned per-class table; the last line is ``overall precision=… recall=… f1=…``
    (with `` f<beta>=…`` appended when beta != 1)."""
    b = report.beta
    show_fb = not math.isclose(b, 1.0)
    headers = ["class", "true", "pred", "TP", "FP", "FN", "precision", "recall", "F1"]
    if show_fb:
        headers.append(f"F{_fmt_beta(b)}")
    headers.append("AD(vox)")
    rows = []
    scores: Sequence[ClassScore] = list(report.per_class.values())
    every = list(scores) + ([report.overall] if report.overall is not None else [])
    for s in every:
        row = [s.name, s.n_true, s.n_pred, s.tp, s.fp, s.fn, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
        if show_fb:
            row.append(f"{s.fbeta:.3f}")
        row.append("-" if math.isnan(s.mean_distance) else f"{s.mean_distance:.2f}")
        rows.append([str(x) for x in row])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[: len(scores)]]
    if report.overall is not None and scores:
        out.append(line(["-" * w for w in widths]))
        out.append(line(rows[-1]))
    if report.czii is not None:
        out.append(f"czii={report.czii:.3f}")
    o = report.overall or ClassScore.from_counts("overall", 0, 0, 0, b)
    last = f"overall precision={o.precision:.3f} recall={o.recall:.3f} f1={o.f1:.3f}"
    if show_fb:
        last += f" f{_fmt_beta(b)}={o.fbeta:.3f}"
    out.append(last)
    return "\n".join(out)
