"""head_init="fit": the closed-form head initialisation (jasper_jax.train.head_fit) against independent
float64 NumPy solutions, and in the trainer on configs/tiny.py (stage 3's fitted reduced heads run in
tests/test_demo.py, whose config fits fc1 in stage 1 and fc2-fc4 in stage 3)."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.train import head_fit
from jasper_jax.train.config_base import load_config
from jasper_jax.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def _data(rows=300, hidden=12, width=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, hidden)) + 0.3
    y = x @ rng.normal(size=(hidden, width)) + 0.5 + 0.05 * rng.normal(size=(rows, width))
    augmented = np.concatenate([x, np.ones((rows, 1))], axis=1)
    return augmented, y


def test_ridge_head_is_the_least_squares_solution_when_the_ridge_vanishes():
    augmented, y = _data()
    fitted = head_fit.ridge_head(augmented.T @ augmented, augmented.T @ y, ridge=1e-12)
    reference, *_ = np.linalg.lstsq(augmented, y, rcond=None)
    np.testing.assert_allclose(fitted, reference, rtol=1e-7, atol=1e-9)


def test_ridge_head_shrinks_towards_zero_as_the_ridge_grows():
    augmented, y = _data()
    norms = [
        np.linalg.norm(head_fit.ridge_head(augmented.T @ augmented, augmented.T @ y, ridge=r))
        for r in (1e-6, 1e-2, 1.0)
    ]
    assert norms[0] > norms[1] > norms[2]


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_principal_head_spans_the_top_principal_directions_of_the_full_heads_output(dim):
    augmented, _ = _data()
    full = np.random.default_rng(1).normal(size=(augmented.shape[1], 20))
    narrowed = head_fit.principal_head(augmented.T @ augmented, full, dim)
    # reference: eigenvectors of the uncentred output covariance Z^T Z, Z = [x, 1] W~
    outputs = augmented @ full
    values, vectors = np.linalg.eigh(outputs.T @ outputs)
    top = vectors[:, np.argsort(values)[::-1][:dim]]
    np.testing.assert_allclose(
        augmented @ narrowed @ (augmented @ narrowed).T,
        outputs @ top @ (outputs @ top).T,
        rtol=1e-6,
        atol=1e-6 * np.abs(outputs).max() ** 2,
    )
    # and it is the best rank-d reproduction of the full head's similarities: no worse than the prefix
    target = outputs @ outputs.T
    prefix = augmented @ full[:, :dim]
    assert (
        np.linalg.norm(target - (augmented @ narrowed) @ (augmented @ narrowed).T)
        <= np.linalg.norm(target - prefix @ prefix.T) + 1e-9
    )


def test_a_head_wider_than_the_data_rank_keeps_its_width_and_the_principal_part():
    augmented, _ = _data(hidden=3)  # rank 4 features
    full = np.random.default_rng(1).normal(size=(4, 20))
    narrowed = head_fit.principal_head(augmented.T @ augmented, full, 6)
    assert narrowed.shape == (4, 6)
    np.testing.assert_allclose(narrowed[:, :4], head_fit.principal_head(augmented.T @ augmented, full, 4))
    np.testing.assert_allclose(narrowed[:, 4:], full[:, :2])


def test_fitted_heads_narrow_an_existing_full_head_and_refuse_without_one():
    augmented, y = _data(width=20)
    statistics = {"gram": augmented.T @ augmented, "cross": augmented.T @ y, "rows": float(len(y))}
    kernel = np.random.default_rng(2).normal(size=(12, 20))
    bias = np.random.default_rng(3).normal(size=20)
    out = head_fit.fitted_heads(statistics, {"fc2": 4}, 20, {"fc1": {"kernel": kernel, "bias": bias}})
    assert out["fc2"]["kernel"].shape == (12, 4) and out["fc2"]["bias"].shape == (4,)
    expected = head_fit.principal_head(statistics["gram"], np.concatenate([kernel, bias[None]], axis=0), 4)
    np.testing.assert_allclose(out["fc2"]["kernel"], expected[:-1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no head of 20 dims"):
        head_fit.fitted_heads(statistics, {"fc2": 4}, 20, {})
    with pytest.raises(ValueError, match="teacher vectors have 20 dims"):
        head_fit.fitted_heads(statistics, {"fc1": 32}, 32, {})


def _first_losses(workdir, number):
    rows = [json.loads(line) for line in (Path(workdir) / f"stage{number}" / "metrics.jsonl").read_text().splitlines()]
    return rows[0]


def _tiny(workdir, *overrides):
    return load_config(
        TINY,
        [
            f"workdir={workdir}",
            "progress=false",
            "model.vector_dropout=0.0",
            "stages.stage1.steps=2",
            "stages.stage1.lr=1e-9",
            "log_every=1",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_a_fitted_stage1_head_starts_far_closer_to_the_teacher_than_a_random_one(tmp_path):
    train(_tiny(tmp_path / "random"), [1])
    train(_tiny(tmp_path / "fit", "stages.stage1.head_init=fit", "stages.stage1.head_fit_batches=8"), [1])
    random_start, fitted_start = _first_losses(tmp_path / "random", 1), _first_losses(tmp_path / "fit", 1)
    cosine = next(key for key in fitted_start if key.startswith("cosine"))
    assert fitted_start[cosine] < 0.5 * random_start[cosine]
    assert fitted_start["loss"] < random_start["loss"]


def test_each_column_gets_the_ridge_with_the_smallest_held_back_error():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(160, 40))
    exact = x @ rng.normal(size=(40, 3))  # columns the features predict exactly: no shrinkage is best
    noisy = x @ rng.normal(size=(40, 6)) * 0.1 + rng.normal(size=(160, 6))  # few rows, much noise
    y = np.concatenate([exact, noisy], axis=1)
    augmented = np.concatenate([x, np.ones((160, 1))], axis=1)
    fit, held = augmented[:120], augmented[120:]
    statistics = {
        "cross": augmented.T @ y,
        "fit_gram": fit.T @ fit,
        "fit_cross": fit.T @ y[:120],
        "validation_gram": held.T @ held,
        "validation_cross": held.T @ y[120:],
        "validation_rows": 40.0,
    }
    # reference: each column's held-back error for each ridge, from an independent solve of that column alone
    errors = np.array(
        [
            [
                np.sum(
                    (
                        held
                        @ np.linalg.solve(fit.T @ fit + r * np.trace(fit.T @ fit) / 41 * np.eye(41), fit.T @ y[:120, j])
                        - y[120:, j]
                    )
                    ** 2
                )
                for j in range(y.shape[1])
            ]
            for r in head_fit.RIDGES
        ]
    )
    chosen = head_fit.validated_ridge(statistics)
    np.testing.assert_array_equal(chosen, np.asarray(head_fit.RIDGES)[errors.argmin(axis=0)])
    assert np.all(chosen[:3] == min(head_fit.RIDGES)) and np.all(chosen[3:] > min(head_fit.RIDGES))
    np.testing.assert_array_equal(head_fit.validated_ridge({"cross": y, "gram": fit.T @ fit}), head_fit.RIDGE)


def test_ridge_head_with_a_ridge_per_column_solves_each_column_with_its_own():
    augmented, y = _data(width=5)
    ridges = np.array([1e-6, 1.0, 1e-2, 1.0, 0.3])
    fitted = head_fit.ridge_head(augmented.T @ augmented, augmented.T @ y, ridges)
    gram = augmented.T @ augmented
    for column, ridge in enumerate(ridges):  # reference: that column's own ridge system, solved alone
        penalty = ridge * np.trace(gram) / len(gram)
        alone = np.linalg.solve(gram + penalty * np.eye(len(gram)), augmented.T @ y[:, column])
        np.testing.assert_allclose(fitted[:, column], alone, rtol=1e-10)


class _PooledRows(nnx.Module):
    """A stand-in encoder whose pooled output is a fixed matrix row, picked by input_ids[:, 0]."""

    def __init__(self, rows: np.ndarray):
        self.rows = nnx.Variable(jnp.asarray(rows, jnp.float32))

    def pooled(self, input_ids, attention_mask):
        return self.rows[...][input_ids[:, 0]]


def test_a_teacher_that_is_the_students_own_pooled_direction_is_fitted_exactly():
    """The fit regresses directions (target |x| y): when part of the teacher is x/|x| (the student is one
    of the teachers), the fitted head reproduces that part's direction for every text, whatever |x| is."""
    rng = np.random.default_rng(5)
    rows, hidden = 256, 8
    pooled = (rng.normal(size=(rows, hidden)) + 1.0) * rng.uniform(0.3, 3.0, size=(rows, 1))  # norms vary 10x
    own = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    other = np.tanh(pooled @ rng.normal(size=(hidden, 6)))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    teacher = np.concatenate([own, other], axis=1)  # normalised again by feature_statistics
    graphdef, state = nnx.split(_PooledRows(pooled))
    batches = iter(
        [
            {
                "input_ids": jnp.arange(start, start + 32)[:, None],
                "attention_mask": jnp.ones((32, 1)),
                "row_mask": jnp.ones(32, bool),
                "teacher": jnp.asarray(teacher[start : start + 32], jnp.float32),
            }
            for start in range(0, rows, 32)
        ]
    )
    statistics = head_fit.feature_statistics(graphdef, (state,), batches, rows // 32)
    head = head_fit.fitted_heads(statistics, {"fc1": hidden + 6}, hidden + 6, {})["fc1"]
    output = pooled @ head["kernel"] + head["bias"]
    block = output[:, :hidden] / np.linalg.norm(output[:, :hidden], axis=1, keepdims=True)
    np.testing.assert_allclose(np.sum(block * own, axis=1), 1.0, atol=1e-5)  # float32 statistics
    assert np.all(head_fit.validated_ridge(statistics)[:hidden] == min(head_fit.RIDGES))
    # against the plain target y, no linear map gives x/|x|: the old fit missed it by far more
    plain = np.linalg.lstsq(np.concatenate([pooled, np.ones((rows, 1))], axis=1), own, rcond=None)[0]
    plain_block = np.concatenate([pooled, np.ones((rows, 1))], axis=1) @ plain
    plain_block /= np.linalg.norm(plain_block, axis=1, keepdims=True)
    assert np.min(np.sum(plain_block * own, axis=1)) < 1 - 1e-3
