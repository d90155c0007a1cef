"""The quality targets of the report are judged from the numbers (met and missed both reported)."""

from __future__ import annotations

import numpy as np
import pytest

from jasper_jax.eval.report import quality_targets
from jasper_jax.eval.run import agreement, max_score_difference


def _result(name, kind, scores, dims, **extra):
    return {"name": name, "kind": kind, "scores": scores, "dims": dims, **extra}


def _scores(lee, ndcg):
    return {"lee_spearman": lee, "news_ndcg_at_10": ndcg, "news_mrr_at_10": ndcg}


def test_targets_met_and_missed():
    results = {
        "undistilled": _result("undistilled", "undistilled", {"pooled": _scores(0.50, 0.80)}, {"pooled": 384}),
        "teachers_concatenated": _result(
            "teachers_concatenated", "teacher", {"pooled": _scores(0.60, 0.90)}, {"pooled": 1152}
        ),
        "stage1": _result(
            "stage1",
            "stage",
            {"fc1": _scores(0.52, 0.81)},
            {"fc1": 1152},
            agreement={"mean_cosine": 0.80, "similarity_mse": 0.010},
        ),
        "stage2": _result(
            "stage2",
            "stage",
            {"fc1": _scores(0.56, 0.82)},
            {"fc1": 1152, "fc4": 64},
            agreement={"mean_cosine": 0.85, "similarity_mse": 0.008},
        ),
    }
    results["stage2"]["scores"]["fc4"] = _scores(0.55, 0.70)
    targets = {t["target"]: t["met"] for t in quality_targets(results, ["stage1", "stage2"], "fc1")}
    assert targets["held-out agreement improves stage over stage (cosine up, similarity MSE down)"]
    assert targets["Lee Spearman: distilled fc1 >= undistilled"]
    assert targets["Lee Spearman: closes >= half the gap to the concatenated teacher"]  # 0.06 of 0.10
    assert not targets["News nDCG@10: closes >= half the gap to the concatenated teacher"]  # 0.02 of 0.10
    assert targets["Lee Spearman: smallest head fc4 (64) keeps >= 95% of fc1"]  # 0.55 / 0.56
    assert not targets["News nDCG@10: smallest head fc4 (64) keeps >= 95% of fc1"]  # 0.70 / 0.82


def test_agreement_and_backend_difference():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(20, 8))
    same = agreement(teacher * 3.0, teacher)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["similarity_mse"] == pytest.approx(0.0, abs=1e-12)
    narrow = agreement(teacher[:, :4], teacher)
    assert "mean_cosine" not in narrow and narrow["similarity_mse"] > 0
    first = {"fc1": {"lee_spearman": 0.5, "news_ndcg_at_10": 0.8}}
    second = {"fc1": {"lee_spearman": 0.5004, "news_ndcg_at_10": 0.8}, "fc2": {"lee_spearman": 0.1}}
    assert max_score_difference(first, second) == pytest.approx(4e-4)
