"""The report's numbers against hand-computed values: each function of cxr_client/validate/metrics.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_module

require_module("sklearn")  # the validate extra (CI installs it with the train extra)

from cxr_client.validate import metrics

LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.2, 0.1, 0.05])


def brute_force_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The probability that a random positive outscores a random negative, ties counting half."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (positives.size * negatives.size)


def test_auroc_is_the_pairwise_ranking_probability() -> None:
    assert metrics.auroc(LABELS, SCORES) == pytest.approx(brute_force_auroc(LABELS, SCORES)) == pytest.approx(21 / 24)
    assert metrics.auroc(np.array([1, 1]), np.array([0.2, 0.3])) is None  # one class: no AUROC, not a crash


def test_operating_point_counts_and_rates() -> None:
    point = metrics.operating_point(LABELS, SCORES, 0.5, name="t")
    assert (point.tp, point.fp, point.tn, point.fn) == (3, 1, 5, 1)
    assert (point.sensitivity, point.specificity, point.ppv, point.npv) == (0.75, 5 / 6, 0.75, 5 / 6)
    nobody = metrics.operating_point(LABELS, SCORES, 0.99, name="t")
    assert nobody.ppv is None and nobody.sensitivity == 0.0  # no positive calls: PPV undefined, said so


def test_threshold_for_sensitivity_is_the_highest_that_reaches_it() -> None:
    assert metrics.threshold_for_sensitivity(LABELS, SCORES, 0.75) == 0.6  # 3 of 4 positives at or above 0.6
    assert metrics.threshold_for_sensitivity(LABELS, SCORES, 0.76) == 0.3  # needs all 4
    assert metrics.threshold_for_sensitivity(np.zeros(3, dtype=int), SCORES[:3], 0.9) is None
    chosen = metrics.threshold_for_sensitivity(LABELS, SCORES, 0.95)
    assert metrics.operating_point(LABELS, SCORES, chosen, name="t").sensitivity >= 0.95


def test_calibration_error_by_hand() -> None:
    labels = np.array([0, 1, 1, 1])
    scores = np.array([0.05, 0.15, 0.95, 0.95])  # bin 0: mean 0.05 vs 0; bin 1: 0.15 vs 1; bin 9: 0.95 vs 1
    ece, bins = metrics.calibration(labels, scores)
    assert ece == pytest.approx((0.05 * 1 + 0.85 * 1 + 0.05 * 2) / 4)
    assert [b.count for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[2].mean_probability is None and bins[9].observed_rate == 1.0
    assert metrics.calibration(labels, np.array([0.0, 1.0, 1.0, 1.0]))[1][9].count == 3  # 1.0 belongs to the top bin


def test_bootstrap_interval_is_seeded_and_brackets_the_value() -> None:
    labels, scores = np.tile(LABELS, 2), np.tile(SCORES, 2)  # 8 effusion, 12 not
    first = metrics.bootstrap(metrics.auroc, labels, scores, resamples=300)
    again = metrics.bootstrap(metrics.auroc, labels, scores, resamples=300)
    assert first == again and first.ci95 is not None
    assert first.ci95[0] <= first.value <= first.ci95[1] <= 1.0 and first.ci95[0] < first.ci95[1]
    assert 0 < first.resamples_used <= 300
    assert metrics.bootstrap(metrics.auroc, LABELS[:4], SCORES[:4]) == metrics.Estimate(None, None, 0)  # one class


def test_no_interval_from_a_handful_of_scans_of_one_class() -> None:
    few = metrics.bootstrap(metrics.auroc, LABELS, SCORES)  # 4 effusion scans
    assert few.value == pytest.approx(21 / 24) and few.ci95 is None


def test_most_confident_errors_order() -> None:
    false_negatives, false_positives = metrics.most_confident_errors(LABELS, SCORES, 0.5, count=5)
    assert false_negatives == [3]  # the positive at 0.3
    assert false_positives == [4]  # the negative at 0.7
