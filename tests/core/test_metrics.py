import itertools
import math
import re
import time

import numpy as np
import pytest

from napari_cryopicker.core import metrics
from napari_cryopicker.core.classes import ClassTable
from napari_cryopicker.core.metrics import (
    CZII_RADII_A,
    CZII_WEIGHTS,
    Report,
    counts_over_thresholds,
    czii_score,
    evaluate,
    f_alpha,
    fbeta,
    format_report,
    match,
)
from napari_cryopicker.core.picks import Picks

TABLE = ClassTable.parse(["a=10", "b=6"])  # radii 5 and 3 voxels


def P(zyx, cls="a", tomo="t", source="predicted", voxel_size=None):
    return Picks.from_zyx(zyx, class_name=cls, source=source, tomogram=tomo, voxel_size=voxel_size)


# ---------------------------------------------------------------------------- F-beta
def test_fbeta_values():
    assert fbeta(1, 1) == 1.0
    assert fbeta(0, 0) == 0.0
    assert fbeta(0.5, 1.0) == pytest.approx(2 / 3)
    assert fbeta(0.5, 1.0, 3) == pytest.approx(10 * 0.5 / (9 * 0.5 + 1))
    assert fbeta(1.0, 0.5, 3) == pytest.approx(10 * 0.5 / (9 + 0.5))
    # beta > 1 favours recall
    assert fbeta(0.5, 1.0, 3) > fbeta(1.0, 0.5, 3)
    assert f_alpha(0.4, 0.8) == pytest.approx(fbeta(0.4, 0.8, 3))
    assert f_alpha(0.4, 0.8, alpha=2) == pytest.approx(5 * 0.32 / (4 * 0.4 + 0.8))


# ---------------------------------------------------------------------------- matching
def test_match_exact_and_threshold():
    t = [[0, 0, 0], [0, 0, 20]]
    p_idx, t_idx, d = match(t, t, 1.0)
    assert p_idx.tolist() == [0, 1] and t_idx.tolist() == [0, 1] and d.tolist() == [0, 0]
    # inside / outside / exactly on the threshold (inclusive)
    assert len(match([[0, 0, 2.99]], [[0, 0, 0]], 3.0)[0]) == 1
    assert len(match([[0, 0, 3.01]], [[0, 0, 0]], 3.0)[0]) == 0
    assert len(match([[0, 3, 0]], [[0, 0, 0]], 3.0)[0]) == 1
    assert len(match(np.zeros((0, 3)), t, 5)[0]) == 0
    assert len(match(t, [], 5)[0]) == 0


def test_two_picks_near_one_truth_one_tp_one_fp():
    p_idx, t_idx, d = match([[0, 0, 1], [0, 0, -2]], [[0, 0, 0]], 3)
    assert p_idx.tolist() == [0] and t_idx.tolist() == [0] and d[0] == pytest.approx(1)
    r = evaluate(P([[0, 0, 1], [0, 0, -2]]), P([[0, 0, 0]]), TABLE)
    s = r.per_class["a"]
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.precision == 0.5 and s.recall == 1.0
    assert s.mean_distance == pytest.approx(1.0)


def test_optimal_assignment_beats_greedy():
    # greedy (closest pair first) takes p0-t0 (0.9) and leaves p1 without a partner;
    # the optimal matching pairs p0-t1 and p1-t0 (both 1.3)
    pred = [[0, 0, 0.1], [0, 0, 2.3]]
    true = [[0, 0, 1.0], [0, 0, -1.2]]
    p_idx, t_idx, d = match(pred, true, 1.5)
    assert len(p_idx) == 2
    assert dict(zip(p_idx.tolist(), t_idx.tolist())) == {0: 1, 1: 0}
    np.testing.assert_allclose(d, [1.3, 1.3])


def test_among_maximum_matchings_the_shortest_wins():
    p_idx, t_idx, d = match([[0, 0, 0], [0, 0, 1]], [[0, 0, 1.1], [0, 0, 0.1]], 2.0)
    assert dict(zip(p_idx.tolist(), t_idx.tolist())) == {0: 1, 1: 0}
    assert d.sum() == pytest.approx(0.2)


def _brute(pred, true, thr):
    """(max number of matches, min total distance among those) by enumeration."""
    n_p, n_t = len(pred), len(true)
    dist = np.linalg.norm(pred[:, None] - true[None], axis=2) if n_p and n_t else np.zeros((n_p, n_t))
    best = (0, 0.0)
    for k in range(min(n_p, n_t), 0, -1):
        found = None
        for ps in itertools.combinations(range(n_p), k):
            for ts in itertools.permutations(range(n_t), k):
                ds = [dist[i, j] for i, j in zip(ps, ts)]
                if max(ds) <= thr:
                    s = sum(ds)
                    found = s if found is None else min(found, s)
        if found is not None:
            return k, found
    return best


@pytest.mark.parametrize("dense_limit", [metrics._DENSE_LIMIT, 0])
def test_match_equals_brute_force_on_random_tiny_cases(monkeypatch, dense_limit):
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", dense_limit)  # 0: the sparse solver path
    rng = np.random.default_rng(123)
    for _ in range(150):
        n_p, n_t = rng.integers(0, 6, size=2)
        pred = rng.uniform(0, 6, size=(n_p, 3))
        true = rng.uniform(0, 6, size=(n_t, 3))
        thr = float(rng.uniform(0.5, 4))
        p_idx, t_idx, d = match(pred, true, thr)
        assert len(set(p_idx.tolist())) == len(p_idx) and len(set(t_idx.tolist())) == len(t_idx)
        if len(d):
            assert (d <= thr + 1e-12).all()
            np.testing.assert_allclose(d, np.linalg.norm(pred[p_idx] - true[t_idx], axis=1))
        k, total = _brute(pred, true, thr)
        assert len(d) == k
        assert d.sum() == pytest.approx(total, abs=1e-9)


def test_match_is_fast_with_thousands_of_picks():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1000, size=(5000, 3))
    pred = np.vstack([true + rng.normal(0, 1, size=true.shape), rng.uniform(0, 1000, size=(1000, 3))])
    t0 = time.perf_counter()
    p_idx, t_idx, d = match(pred, true, 5.0)
    assert time.perf_counter() - t0 < 20
    assert len(d) >= 4990
    assert (t_idx[p_idx < 5000] == p_idx[p_idx < 5000]).mean() > 0.99


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_per_class_separation():
    truth = P([[10, 10, 10]], cls="a")
    pred = P([[10, 10, 11]], cls="b")
    r = evaluate(pred, truth, TABLE)
    assert (r.per_class["a"].tp, r.per_class["a"].fp, r.per_class["a"].fn) == (0, 0, 1)
    assert (r.per_class["b"].tp, r.per_class["b"].fp, r.per_class["b"].fn) == (0, 1, 0)
    assert (r.overall.tp, r.overall.fp, r.overall.fn) == (0, 1, 1)
    assert list(r.per_class) == ["a", "b"]


def test_threshold_is_fraction_of_class_radius():
    truth = Picks.concat([P([[0, 0, 0]], cls="a"), P([[50, 50, 50]], cls="b")])
    pred = Picks.concat([P([[0, 0, 4.5]], cls="a"), P([[50, 50, 53.5]], cls="b")])
    r = evaluate(pred, truth, TABLE)  # radius a = 5, b = 3
    assert r.per_class["a"].tp == 1 and r.per_class["b"].tp == 0
    r = evaluate(pred, truth, TABLE, distance_fraction=0.5)
    assert r.per_class["a"].tp == 0
    r = evaluate(pred, truth, max_distance=4.0)  # no table needed
    assert r.per_class["a"].tp == 0 and r.per_class["b"].tp == 1


def test_rejected_picks_are_ignored():
    truth = P([[0, 0, 0], [0, 0, 30]])
    pred = Picks.concat(
        [P([[0, 0, 1]]), P([[0, 0, 30], [0, 0, 60]], source="rejected")]
    )
    s = evaluate(pred, truth, TABLE).per_class["a"]
    assert (s.n_pred, s.tp, s.fp, s.fn) == (1, 1, 0, 1)


def test_per_tomogram_matching():
    truth = Picks.concat([P([[0, 0, 0]], tomo="A"), P([[0, 0, 100]], tomo="B")])
    pred = Picks.concat([P([[0, 0, 1]], tomo="B"), P([[0, 0, 101]], tomo="B")])
    r = evaluate(pred, truth, TABLE)
    assert (r.overall.tp, r.overall.fp, r.overall.fn) == (1, 1, 1)
    r = evaluate(pred, truth, TABLE, per_tomogram=False)
    assert r.overall.tp == 2
    # names missing on one side: match across the whole set
    r = evaluate(P([[0, 0, 1]], tomo=""), truth, TABLE)
    assert r.overall.tp == 1


def test_counts_over_thresholds_equal_evaluate_on_each_subset():
    """Validation's fast counts are evaluate()'s on every (score, fill) subset: crowded
    random picks in two tomograms, a class with picks and no truth, one truth class the
    picks never name, and a rejected row on each side."""
    rng = np.random.default_rng(3)
    table = ClassTable.parse(["a=10", "b=6", "c=8"])
    tp_ = Picks.from_zyx(rng.uniform(0, 40, (60, 3)), class_name=rng.choice(["a", "c"], 60).tolist(),
                         tomogram=rng.choice(["A", "B"], 60).tolist(), source="manual")
    near = tp_.zyx[:45] + rng.normal(0, 2.5, (45, 3))
    pred = Picks.from_zyx(np.vstack([near, rng.uniform(0, 40, (30, 3))]),
                          class_name=tp_.table["class_name"].tolist()[:45] + rng.choice(["a", "b"], 30).tolist(),
                          score=rng.uniform(0, 1, 75), source="predicted",
                          tomogram=tp_.table["tomogram"].tolist()[:45] + rng.choice(["A", "B"], 30).tolist())
    pred.table["fill"] = rng.uniform(0, 1, 75)
    pred.table.loc[3, "source"] = "rejected"
    tp_.table.loc[5, "source"] = "rejected"
    grid, fills = (0.1, 0.3, 0.5, 0.9), (0.0, 0.4)
    counts = counts_over_thresholds(pred, tp_, table, grid, fills)
    seen = 0
    for t in grid:
        for f in fills:
            keep = (pred.table["score"].to_numpy() >= t) & (pred.table["fill"].to_numpy() >= f)
            rep = evaluate(pred.subset(keep), tp_, table)
            for name in ("a", "b", "c"):
                cs = rep.per_class.get(name)
                assert counts.get(name, {}).get((t, f)) == (None if cs is None else (cs.tp, cs.fp, cs.fn))
                seen += cs is not None and cs.tp > 0
    assert seen >= 8  # matches happen: the comparison is not between empty sets
    with pytest.raises(ValueError, match="'zz'"):
        counts_over_thresholds(P([[0, 0, 0]], cls="zz"), P([[0, 0, 0]]), table, grid)


def test_voxel_sizes_are_reconciled():
    truth = P([[10, 10, 10]], voxel_size=10.0)
    pred = P([[20, 20, 20]], voxel_size=5.0)  # the same physical position
    assert evaluate(pred, truth, TABLE).overall.tp == 1


def test_unknown_class_is_a_clear_error():
    with pytest.raises(ValueError, match="'ribosome'"):
        evaluate(P([[0, 0, 0]], cls="ribosome"), P([[0, 0, 0]]), TABLE)
    with pytest.raises(ValueError, match="max_distance"):
        evaluate(P([[0, 0, 0]]), P([[0, 0, 0]]))


def test_empty_set_conventions():
    empty = Picks()
    r = evaluate(empty, empty, TABLE)
    assert r.per_class == {}
    o = r.overall
    assert (o.precision, o.recall, o.f1) == (1.0, 1.0, 1.0) and math.isnan(o.mean_distance)
    s = evaluate(empty, P([[0, 0, 0]]), TABLE).per_class["a"]
    assert (s.precision, s.recall, s.f1, s.fn) == (0.0, 0.0, 0.0, 1)
    s = evaluate(P([[0, 0, 0]]), empty, TABLE).per_class["a"]
    assert (s.precision, s.recall, s.f1, s.fp) == (0.0, 0.0, 0.0, 1)


def test_overall_is_micro_average_and_fbeta():
    truth = Picks.concat([P([[0, 0, 0], [0, 0, 20], [0, 0, 40]], cls="a"), P([[30, 0, 0]], cls="b")])
    pred = Picks.concat([P([[0, 0, 1], [0, 0, 21], [9, 9, 9]], cls="a"), P([[30, 0, 1], [60, 0, 0]], cls="b")])
    r = evaluate(pred, truth, TABLE, beta=3)
    o = r.overall
    assert (o.tp, o.fp, o.fn, o.n_pred, o.n_true) == (3, 2, 1, 5, 4)
    assert o.precision == pytest.approx(0.6) and o.recall == pytest.approx(0.75)
    assert o.fbeta == pytest.approx(fbeta(0.6, 0.75, 3))
    assert o.mean_distance == pytest.approx(1.0)
    assert r.beta == 3


# ---------------------------------------------------------------------------- CZII
def test_czii_constants():
    assert CZII_WEIGHTS["beta-amylase"] == 0 and CZII_WEIGHTS["thyroglobulin"] == 2
    assert CZII_RADII_A["ribosome"] == 150 and set(CZII_RADII_A) == set(CZII_WEIGHTS)


def test_czii_score_hand_case():
    vs = 10.0  # thresholds: apo-ferritin 0.5*60/10 = 3 voxels, ribosome 7.5 voxels
    truth = Picks.concat(
        [
            P([[10, 10, 10], [30, 30, 30]], cls="apo-ferritin", voxel_size=vs),
            P([[50, 50, 50]], cls="ribosome", voxel_size=vs),
            P([[70, 70, 70]], cls="thyroglobulin", voxel_size=vs),
        ]
    )
    pred = Picks.concat(
        [
            P([[12, 10, 10], [30, 30, 34]], cls="apo-ferritin", voxel_size=vs),  # TP, FP (+1 FN)
            P([[50, 50, 57], [90, 90, 90]], cls="ribosome", voxel_size=vs),  # TP, FP
            P([[5, 5, 5]], cls="beta-amylase", voxel_size=vs),  # weight 0
            P([[50, 50, 50]], cls="unscored-thing", voxel_size=vs),  # no weight: ignored
        ]
    )
    apo = fbeta(0.5, 0.5, 4)
    ribo = fbeta(0.5, 1.0, 4)
    assert ribo == pytest.approx(8.5 / 9)
    expect = (1 * apo + 1 * ribo + 2 * 0.0 + 0 * 0.0) / (1 + 1 + 2 + 0)
    assert czii_score(pred, truth) == pytest.approx(expect)
    # picks that carry a voxel size are compared physically, whatever the working voxel size
    assert czii_score(pred, truth, voxel_size=20.0) == pytest.approx(expect)
    # without one, voxel_size says what the coordinates mean: at 12 A/voxel the ribosome
    # threshold is 6.25 voxels and the 7-voxel pick no longer matches (apo: 2.5, still does)
    bare_p, bare_t = pred.copy(), truth.copy()
    bare_p.voxel_size = bare_t.voxel_size = None
    assert czii_score(bare_p, bare_t, voxel_size=10.0) == pytest.approx(expect)
    assert czii_score(bare_p, bare_t, voxel_size=12.0) == pytest.approx(apo / 4)
    # TP/FP/FN are summed over tomograms; a pick in the wrong tomogram does not count
    t2 = Picks.concat([truth.select(class_name="ribosome"), P([[0, 0, 0]], cls="ribosome", tomo="u", voxel_size=vs)])
    p2 = Picks.concat([pred.select(class_name="ribosome"), P([[0, 0, 0]], cls="ribosome", tomo="v", voxel_size=vs)])
    # ribosome: tp 1, fp 2, fn 1
    assert czii_score(p2, t2) == pytest.approx(fbeta(1 / 3, 0.5, 4))
    with pytest.raises(ValueError, match="voxel size"):
        czii_score(P([[0, 0, 0]], cls="ribosome"), P([[0, 0, 0]], cls="ribosome"))


def test_czii_perfect_picks_score_one():
    rng = np.random.default_rng(1)
    truth = Picks.concat(
        [P(rng.uniform(0, 300, (20, 3)), cls=c, voxel_size=10.0) for c in CZII_WEIGHTS]
    )
    assert czii_score(truth, truth) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- text
def test_format_report_layout():
    truth = Picks.concat([P([[0, 0, 0], [0, 0, 20]], cls="a"), P([[30, 0, 0]], cls="b")])
    pred = Picks.concat([P([[0, 0, 1]], cls="a"), P([[30, 0, 1], [60, 0, 0]], cls="b")])
    r = evaluate(pred, truth, TABLE)
    text = format_report(r)
    lines = text.splitlines()
    assert lines[-1] == "overall precision=0.667 recall=0.667 f1=0.667"
    table = lines[:-1]
    assert len({len(line) for line in table}) == 1  # aligned columns
    assert table[0].split()[0] == "class" and any(line.startswith("a ") for line in table)
    r3 = evaluate(pred, truth, TABLE, beta=3)
    r3.czii = 0.5
    last = format_report(r3).splitlines()[-1]
    assert re.fullmatch(r"overall precision=0\.667 recall=0\.667 f1=0\.667 f3=0\.\d{3}", last)
    assert "czii=0.500" in format_report(r3)
    assert format_report(Report(beta=0.5)).splitlines()[-1].endswith(" f0.5=1.000")
