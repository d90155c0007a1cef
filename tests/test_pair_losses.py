"""The pair (contrastive) losses against float64 NumPy references written from their formulas.

InfoNCE: per query i, -log(exp(s_ip / tau) / sum_c exp(s_ic / tau)) over the candidate documents c of the
global batch (all B*G documents that are valid and not a duplicate of i's positive), p = i's positive.
KL: sum_c P_c log(P_c / Q_c), P and Q the softmaxes of the teacher's and the student's scores over the same
candidates, each with its own temperature. Both averaged over counting queries; references loop over rows
in float64. Tolerances: 1e-5 relative on values (float32 vs float64); gradients against central finite
differences of the float64 reference (smooth losses), 1e-3 relative to the largest entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jasper_jax import losses
from jasper_jax.losses import ObjectiveConfig, pair_objective


def unit(x):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def candidates(batch, group, example_mask, document_mask, document_ids, zero_docs=None):
    """(rows (B,), columns (B, N)) from the definitions: which queries count, which documents compete."""
    valid_doc = np.ones((batch, group), bool)
    if example_mask is not None:
        valid_doc &= example_mask[:, None]
    if document_mask is not None:
        valid_doc &= document_mask
    if zero_docs is not None:
        valid_doc &= ~zero_docs
    flat = valid_doc.reshape(-1)
    rows = valid_doc[:, 0].copy()
    columns = np.zeros((batch, batch * group), bool)
    for i in range(batch):
        for c in range(batch * group):
            duplicate = (
                document_ids is not None and c != i * group and document_ids.reshape(-1)[c] == document_ids[i, 0]
            )
            columns[i, c] = flat[c] and not duplicate
    return rows, columns


def ref_log_softmax(logits, columns):
    chosen = logits[columns]
    top = chosen.max()
    return logits - (top + np.log(np.sum(np.exp(chosen - top))))


def ref_infonce(query, documents, tau, example_mask=None, document_mask=None, document_ids=None):
    batch, group, _ = documents.shape
    rows, columns = candidates(batch, group, example_mask, document_mask, document_ids)
    rows &= np.linalg.norm(query, axis=1) > 0  # a zero query has no direction: it does not count
    scores = unit(query) @ unit(documents.reshape(batch * group, -1)).T
    values = [-ref_log_softmax(scores[i] / tau, columns[i])[i * group] for i in range(batch) if rows[i]]
    return float(np.mean(values)) if values else 0.0


def ref_score_kl(query, documents, tq, td, tau_s, tau_t, example_mask=None, document_mask=None, document_ids=None):
    batch, group, _ = documents.shape
    rows, columns = candidates(batch, group, example_mask, document_mask, document_ids)
    student = unit(query) @ unit(documents.reshape(batch * group, -1)).T
    teacher = unit(tq) @ unit(td.reshape(batch * group, -1)).T
    values = []
    for i in range(batch):
        if not rows[i]:
            continue
        log_p = ref_log_softmax(teacher[i] / tau_t, columns[i])[columns[i]]
        log_q = ref_log_softmax(student[i] / tau_s, columns[i])[columns[i]]
        values.append(np.sum(np.exp(log_p) * (log_p - log_q)))
    return float(np.mean(values)) if values else 0.0


def make_batch(batch=6, negatives=3, dim=8, teacher_dim=12, seed=0):
    rng = np.random.default_rng(seed)
    group = 1 + negatives
    return (
        rng.normal(size=(batch, dim)),
        rng.normal(size=(batch, group, dim)),
        rng.normal(size=(batch, teacher_dim)),
        rng.normal(size=(batch, group, teacher_dim)),
    )


def f32(x):
    return jnp.asarray(x, jnp.float32)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    assert abs(float(actual) - expected) <= atol + rtol * abs(expected), (float(actual), expected)


@pytest.mark.parametrize("tau", [0.02, 0.05, 1.0])
@pytest.mark.parametrize("negatives", [0, 1, 4])
def test_infonce_matches_reference(tau, negatives):
    q, d, _, _ = make_batch(negatives=negatives, seed=negatives)
    close(losses.infonce_loss(f32(q), f32(d), tau), ref_infonce(q, d, tau))


@pytest.mark.parametrize("taus", [(0.05, 0.05), (0.02, 0.1), (1.0, 0.5)])
def test_score_kl_matches_reference_and_is_zero_for_the_teacher_itself(taus):
    q, d, tq, td = make_batch(seed=1)
    value = losses.score_kl_loss(
        f32(q), f32(d), f32(tq), f32(td), student_temperature=taus[0], teacher_temperature=taus[1]
    )
    close(value, ref_score_kl(q, d, tq, td, *taus))
    itself = losses.score_kl_loss(
        f32(tq), f32(td), f32(tq), f32(td), student_temperature=0.05, teacher_temperature=0.05
    )
    assert abs(float(itself)) < 1e-5


def masks(batch=6, group=4, seed=2):
    rng = np.random.default_rng(seed)
    example = rng.random(batch) < 0.7
    example[0] = True
    document = rng.random((batch, group)) < 0.75
    document[0, 0] = True
    ids = rng.integers(0, 9, size=(batch, group))
    return example, document, ids


def test_masks_and_duplicate_texts_match_reference():
    q, d, tq, td = make_batch(seed=3)
    example, document, ids = masks()
    kwargs = dict(example_mask=jnp.asarray(example), document_mask=jnp.asarray(document), document_ids=jnp.asarray(ids))
    close(losses.infonce_loss(f32(q), f32(d), 0.05, **kwargs), ref_infonce(q, d, 0.05, example, document, ids))
    close(
        losses.score_kl_loss(
            f32(q), f32(d), f32(tq), f32(td), student_temperature=0.05, teacher_temperature=0.1, **kwargs
        ),
        ref_score_kl(q, d, tq, td, 0.05, 0.1, example, document, ids),
    )


def test_masked_example_equals_the_batch_without_it():
    q, d, _, _ = make_batch(seed=4)
    example = np.ones(6, bool)
    example[[2, 5]] = False
    masked = losses.infonce_loss(f32(q), f32(d), 0.05, example_mask=jnp.asarray(example))
    close(masked, float(losses.infonce_loss(f32(q[example]), f32(d[example]), 0.05)), rtol=1e-6)


def test_empty_rows_and_zero_vectors_give_finite_values_and_gradients():
    q, d, tq, td = make_batch(seed=5)
    none = jnp.zeros((6,), bool)
    for fn in (
        lambda s, **kw: losses.infonce_loss(s, f32(d), 0.05, **kw),
        lambda s, **kw: losses.score_kl_loss(s, f32(d), f32(tq), f32(td), **kw),
    ):
        value, grad = jax.value_and_grad(lambda s, fn=fn: fn(s, example_mask=none))(f32(q))
        assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)
    q_zero, d_zero = q.copy(), d.copy()
    q_zero[1] = 0.0
    d_zero[3, 0] = 0.0  # a zero positive: query 3 does not count
    d_zero[4, 2] = 0.0  # a zero negative: dropped from every query's candidates
    value, grad = jax.value_and_grad(lambda s: losses.infonce_loss(s, f32(d_zero), 0.05))(f32(q_zero))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    document = np.ones((6, 4), bool)
    document[4, 2] = False
    document[3, 0] = False
    close(value, ref_infonce(q_zero, d_zero, 0.05, None, document), rtol=1e-5)


def fd_gradient(fn, x, eps=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def test_gradients_match_finite_differences_of_the_reference():
    q, d, tq, td = make_batch(batch=4, negatives=2, dim=5, teacher_dim=6, seed=6)
    example, document, ids = masks(batch=4, group=3, seed=7)
    kwargs = dict(example_mask=jnp.asarray(example), document_mask=jnp.asarray(document), document_ids=jnp.asarray(ids))
    grad_q, grad_d = jax.grad(lambda a, b: losses.infonce_loss(a, b, 0.1, **kwargs), argnums=(0, 1))(f32(q), f32(d))
    expected_q = fd_gradient(lambda x: ref_infonce(x, d, 0.1, example, document, ids), q)
    expected_d = fd_gradient(lambda x: ref_infonce(q, x, 0.1, example, document, ids), d)
    for got, want in ((grad_q, expected_q), (grad_d, expected_d)):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-3 * np.abs(want).max())
    grad_kl = jax.grad(lambda a: losses.score_kl_loss(a, f32(d), f32(tq), f32(td), teacher_temperature=0.1, **kwargs))(
        f32(q)
    )
    expected_kl = fd_gradient(lambda x: ref_score_kl(x, d, tq, td, 0.05, 0.1, example, document, ids), q)
    np.testing.assert_allclose(np.asarray(grad_kl), expected_kl, atol=1e-3 * np.abs(expected_kl).max())


def ref_cosine(s, t):
    return float(np.mean(1 - np.sum(unit(s) * unit(t), axis=1)))


def ref_similarity(s, t):
    s, t = unit(s), unit(t)
    return float(np.mean((s @ s.T - t @ t.T) ** 2))


@pytest.mark.parametrize("texts", [("queries", "positives", "negatives"), ("positives",), ("queries", "negatives")])
def test_pair_objective_combines_the_terms_with_the_config_weights(texts):
    q, d, tq, td = make_batch(batch=5, negatives=2, dim=12, teacher_dim=12, seed=8)
    config = ObjectiveConfig(
        infonce_weight=0.7,
        score_kl_weight=0.3,
        infonce_temperature=0.05,
        score_kl_student_temperature=0.04,
        score_kl_teacher_temperature=0.08,
        cosine_weight=2.0,
        similarity_weight=5.0,
        relative_similarity_weight=0.0,
        pair_distill_texts=texts,
    )
    total, metrics = jax.jit(lambda *a: pair_objective({"fc1": a[0]}, {"fc1": a[1]}, a[2], a[3], config=config))(
        f32(q), f32(d), f32(tq), f32(td)
    )
    parts_s = {"queries": q, "positives": d[:, 0], "negatives": d[:, 1:].reshape(-1, 12)}
    parts_t = {"queries": tq, "positives": td[:, 0], "negatives": td[:, 1:].reshape(-1, 12)}
    s = np.concatenate([parts_s[name] for name in texts])
    t = np.concatenate([parts_t[name] for name in texts])
    expected = (
        0.7 * ref_infonce(q, d, 0.05)
        + 0.3 * ref_score_kl(q, d, tq, td, 0.04, 0.08)
        + 2.0 * ref_cosine(s, t)
        + 5.0 * ref_similarity(s, t)
    )
    close(total, expected, rtol=2e-5)
    close(metrics["infonce"], ref_infonce(q, d, 0.05))
    assert float(metrics["distill/valid_rows"]) == len(s) and float(metrics["valid_rows"]) == 5


def test_pair_objective_is_finite_when_every_example_is_masked():
    q, d, tq, td = make_batch(batch=3, negatives=1, dim=12, teacher_dim=12, seed=9)
    none = jnp.zeros((3,), bool)
    value, grad = jax.value_and_grad(lambda a: pair_objective({"fc1": a}, {"fc1": f32(d)}, f32(tq), f32(td), none)[0])(
        f32(q)
    )
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def test_bad_inputs_fail_with_messages():
    q, d, tq, td = make_batch()
    with pytest.raises(ValueError, match="documents must be"):
        losses.infonce_loss(f32(q), f32(d[:5]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.infonce_loss(f32(q), f32(d), 0.0)
    with pytest.raises(ValueError, match=r"document_mask must have shape \(6, 4\)"):
        losses.infonce_loss(f32(q), f32(d), document_mask=jnp.ones((6, 3), bool))
    with pytest.raises(ValueError, match="pair_distill_texts"):
        pair_objective(
            {"fc1": f32(q)}, {"fc1": f32(d)}, f32(tq), f32(td), config=ObjectiveConfig(pair_distill_texts=("docs",))
        )


def test_sharded_jit_grad_equals_unsharded():
    """The global-batch losses under a batch-sharded mesh (8 fake devices) equal the single-device ones."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    q, d, tq, td = make_batch(batch=16, negatives=3, dim=12, teacher_dim=12, seed=11)
    example, document, ids = masks(batch=16, group=4, seed=12)
    config = ObjectiveConfig(relative_similarity_method="dense")

    def objective(query, documents, *rest):
        return pair_objective({"fc1": query}, {"fc1": documents}, *rest, config=config)[0]

    inputs = (f32(q), f32(d), f32(tq), f32(td), jnp.asarray(example), jnp.asarray(document), jnp.asarray(ids))
    grad_fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
    loss, grads = grad_fn(*inputs)
    sharded = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    sharded_loss, sharded_grads = grad_fn(*sharded)
    assert len(sharded[1].sharding.device_set) == 8
    close(sharded_loss, float(loss), rtol=1e-5)
    for got, want in zip(sharded_grads, grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
