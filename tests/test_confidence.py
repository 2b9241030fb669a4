"""Calibrated confidence: the isotonic fit against a brute-force reference, the map, its one reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.fig_confidence import reliability
from analysis.style import styled
from common.errors import MissingResult, WorkbenchError
from trees.confidence import (
    CONFIDENCE_COLUMNS,
    ConfidenceMap,
    fit_confidence,
    isotonic_blocks,
    load_confidence,
)


def reference_isotonic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The isotonic fit at each distinct x by the min-max formula: max over j <= i of min over k >= i
    of the mean of y over distinct values j..k (count-weighted). O(n^3), for small n only."""
    values, inverse = np.unique(x, return_inverse=True)
    s = np.bincount(inverse, weights=y)
    n = np.bincount(inverse).astype(float)
    m = values.size
    fit = np.empty(m)
    for i in range(m):
        fit[i] = max(min(s[j: k + 1].sum() / n[j: k + 1].sum() for k in range(i, m)) for j in range(i + 1))
    return fit


def fitted_at_values(blocks: pd.DataFrame, x: np.ndarray) -> np.ndarray:
    """The block value of every distinct x (which block's [lo, hi] holds it)."""
    values = np.unique(x)
    at = np.searchsorted(blocks["prob_lo"].to_numpy(), values, side="right") - 1
    assert (values <= blocks["prob_hi"].to_numpy()[at]).all()
    return blocks["confidence"].to_numpy()[at]


def test_isotonic_by_hand():
    blocks = isotonic_blocks(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 1, 1]))
    # 1, 0 violate the order and pool to 0.5; then 1, 1 are equal and pool too.
    assert blocks["confidence"].tolist() == [0.5, 1.0]
    assert blocks["count"].tolist() == [2, 2] and blocks["hits"].tolist() == [1, 2]
    assert blocks["prob_lo"].tolist() == [0.1, 0.3] and blocks["prob_hi"].tolist() == [0.2, 0.4]
    np.testing.assert_allclose(blocks["prob_mean"], [0.15, 0.35])


@pytest.mark.parametrize("seed", range(8))
def test_isotonic_matches_min_max_formula(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 25, size=60) / 25  # ties on purpose: equal x must share a block
    y = (rng.random(60) < 0.2 + 0.6 * x).astype(float)
    blocks = isotonic_blocks(x, y)
    np.testing.assert_allclose(fitted_at_values(blocks, x), reference_isotonic(x, y), atol=1e-12)
    assert (np.diff(blocks["confidence"]) > 0).all() and (np.diff(blocks["prob_mean"]) > 0).all()
    assert blocks["count"].sum() == 60 and blocks["hits"].sum() == y.sum()


def test_fit_recovers_a_known_calibration_curve():
    rng = np.random.default_rng(0)
    frames = []
    for head, power in ((1, 1.0), (2, 2.0)):  # head 1 calibrated, head 2 over-confident
        p = rng.random(40_000)
        frames.append(pd.DataFrame({"head": head, "prob": p, "hit": rng.random(p.size) < p ** power}))
    cmap = fit_confidence(pd.concat(frames))
    grid = np.linspace(0.1, 0.9, 9)
    got = cmap.apply(np.stack([grid, grid]))
    np.testing.assert_allclose(got[0], grid, atol=0.04)
    np.testing.assert_allclose(got[1], grid ** 2, atol=0.04)


def small_map() -> ConfidenceMap:
    table = pd.DataFrame([
        (1, 0.0, 0.2, 0.1, 0.05, 1, 20), (1, 0.2, 0.6, 0.4, 0.30, 12, 40), (1, 0.6, 1.0, 0.8, 0.90, 9, 10),
        (2, 0.0, 0.5, 0.2, 0.10, 3, 30), (2, 0.5, 1.0, 0.7, 0.50, 5, 10),
    ], columns=CONFIDENCE_COLUMNS)
    return ConfidenceMap(table)


def test_apply_interpolates_like_numpy_per_head():
    cmap = small_map()
    probs = np.array([[0.0, 0.1, 0.25, 0.4, 0.79, 1.0], [0.05, 0.2, 0.45, 0.7, 0.9, 0.3]])
    want = np.stack([np.interp(probs[0], [0.1, 0.4, 0.8], [0.05, 0.3, 0.9]),
                     np.interp(probs[1], [0.2, 0.7], [0.1, 0.5])])
    np.testing.assert_allclose(cmap.apply(probs), want, atol=1e-12)
    as_tensor = cmap.apply(torch.tensor(probs, dtype=torch.float32))
    assert as_tensor.dtype == torch.float32 and as_tensor.shape == (2, 6)
    np.testing.assert_allclose(as_tensor.numpy(), want, atol=1e-6)
    # fewer heads than the map: row k is still head k + 1; trailing dimensions are kept
    np.testing.assert_allclose(cmap.apply(probs[:1, None, :])[0, 0], want[0], atol=1e-12)
    with pytest.raises(WorkbenchError, match="2 heads"):
        cmap.apply(np.zeros((3, 4)))


def test_save_load_round_trip_and_missing_table(tmp_path):
    cmap = small_map()
    cmap.save(tmp_path / "confidence.csv")
    back = load_confidence(tmp_path)  # a calibration folder
    pd.testing.assert_frame_equal(back.table, cmap.table)
    probs = torch.rand(2, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(back.apply(probs), cmap.apply(probs))
    with pytest.raises(MissingResult, match=r"\(run `python -m bench.calibrate --fresh .*calibrations made before it existed lack it"):
        load_confidence(tmp_path / "old")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.drop(columns="count"), "lacks columns"),
    (lambda t: t.assign(confidence=t["confidence"][::-1].to_numpy()), "not increasing"),
    (lambda t: t.assign(head=t["head"] + 1), "heads 1..K"),
    (lambda t: t.assign(prob_hi=2.0), "outside"),
])
def test_bad_tables_are_one_line_errors(tmp_path, edit, match):
    path = tmp_path / "confidence.csv"
    edit(small_map().table).to_csv(path, index=False)
    with pytest.raises(WorkbenchError, match=match):
        load_confidence(path)


def test_reliability_figure_and_its_missing_input(tmp_path):
    cal = tmp_path / "results" / "calibration" / "heads-x"
    cal.mkdir(parents=True)
    (cal / "accuracy.csv").write_text("head,rank0,accuracy,count\n1,0,0.5,10\n1,-1,0.5,10\n")
    with pytest.raises(MissingResult, match=r"\(run `python -m bench.calibrate"):
        reliability(tmp_path / "results", tmp_path / "figs")
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    fit_confidence(pd.DataFrame({"head": 1 + np.arange(5000) % 2, "prob": p, "hit": rng.random(5000) < p})).save(
        cal / "confidence.csv")
    with styled():
        paths = reliability(tmp_path / "results", tmp_path / "figs")
    assert sorted(q.suffix for q in paths) == [".pdf", ".png"] and all(q.stat().st_size > 2000 for q in paths)
