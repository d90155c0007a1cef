"""Run the offline tasks through `mteb.evaluate` for every head of a model; compare two backends.

    results = evaluate_heads(source, tasks)           # {head: {"lee_spearman": ..., "news_ndcg_at_10": ..., ...}}
    difference = max_score_difference(jax_results, torch_results)

`agreement(student, teacher)` gives the held-out agreement of PAPER.md's losses: the mean cosine between
the student's full head and the teacher vector of each text, and the MSE between the two similarity matrices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from jasper_jax.eval.encoders import VectorSource, mteb_encoder
from jasper_jax.eval.tasks import TASK_SCORES

AGREEMENT_TOLERANCE = 1e-3


def _offline_environment() -> None:
    """mteb / datasets must never reach the hub (the tasks load local files)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.getLogger("mteb").setLevel(logging.ERROR)


def evaluate_heads(
    source: VectorSource, tasks: Sequence, heads: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """{head: {score name: value}} for each head of `source` (all by default), through `mteb.evaluate`."""
    _offline_environment()
    import mteb

    results: dict[str, dict[str, float]] = {}
    for head in heads or source.heads:
        if head not in source.heads:
            raise ValueError(f"unknown head {head!r} for {source.name}; it has {source.heads}")
        model_result = mteb.evaluate(
            mteb_encoder(source, head), list(tasks), cache=None, show_progress_bar=False, overwrite_strategy="always"
        )
        scores: dict[str, float] = {}
        for task_result in model_result.task_results:
            if task_result.task_name in TASK_SCORES:
                split = task_result.scores["test"][0]
                for key, name in TASK_SCORES[task_result.task_name]:
                    scores[name] = float(split[key])
            else:
                scores.update(main_scores(task_result))
        results[head] = scores
    return results


def main_scores(task_result) -> dict[str, float]:
    """`{"<task>/<split>/<main score>": mean over the split's subsets}` for a task we have no names for."""
    out = {}
    for split, subsets in task_result.scores.items():
        values = [float(subset["main_score"]) for subset in subsets if "main_score" in subset]
        if values:
            out[f"{task_result.task_name}/{split}/main_score"] = float(np.mean(values))
    return out


def max_score_difference(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]]) -> float:
    """The largest |difference| over every (head, score) both result sets have."""
    differences = [
        abs(first[head][name] - second[head][name])
        for head in first
        if head in second
        for name in first[head]
        if name in second[head]
    ]
    if not differences:
        raise ValueError("the two result sets share no (head, score)")
    return float(max(differences))


def agreement(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Held-out agreement: mean cosine of matching rows (same width only) and similarity-matrix MSE."""
    student = student / np.maximum(np.linalg.norm(student, axis=1, keepdims=True), 1e-12)
    teacher = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), 1e-12)
    out = {"similarity_mse": float(np.mean((student @ student.T - teacher @ teacher.T) ** 2))}
    if student.shape[1] == teacher.shape[1]:
        out["mean_cosine"] = float(np.mean(np.sum(student * teacher, axis=1)))
    return out
