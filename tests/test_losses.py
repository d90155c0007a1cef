"""The losses against a float64 NumPy reference written here from the formulas in PAPER.md.

Tolerances: values 1e-5 relative (float32 against float64). Gradients against the reference's analytic
gradient (also float64, from the same formulas: hinge derivatives counted per pair of pairs, then the chain
rule through the similarity matrix and the row normalisation), 1e-4 relative to the largest entry. Finite
differences are too coarse for the relative-similarity loss: with C(P, 2) hinges, one kink inside the step
already moves a directional derivative by ~0.2%; they are used for the smooth losses only, as a check of
the reference gradient itself. Dense and merge give the same gradient to 1e-5.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jasper_jax import losses
from jasper_jax.losses import ObjectiveConfig, distillation_objective

MARGIN = 0.015


# ----------------------------------------------------------------------------------------------------
# float64 reference, straight from PAPER.md


def ref_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    s, t = ref_normalize(student), ref_normalize(teacher)
    return float(np.mean(1.0 - np.sum(s * t, axis=1)))


def ref_similarity(student: np.ndarray, teacher: np.ndarray) -> float:
    s, t = ref_normalize(student), ref_normalize(teacher)
    return float(np.mean((s @ s.T - t @ t.T) ** 2))


def ref_pairs(student: np.ndarray, teacher: np.ndarray):
    """(student pair scores, teacher pair scores, a, b): the upper-triangle pairs' cosines and the indices
    of every pair of pairs a < b."""
    s, t = ref_normalize(student), ref_normalize(teacher)
    rows, cols = np.triu_indices(len(s), 1)
    student_pairs, teacher_pairs = (s @ s.T)[rows, cols], (t @ t.T)[rows, cols]
    a, b = np.triu_indices(len(student_pairs), 1)
    return student_pairs, teacher_pairs, a, b


def ref_relative_similarity(student: np.ndarray, teacher: np.ndarray, margin: float = MARGIN) -> float:
    """Pairs a<b of the upper-triangle pairs; relu(label_ab (s_b - s_a) + margin), label +1 iff t_b - t_a < 0."""
    student_pairs, teacher_pairs, a, b = ref_pairs(student, teacher)
    if len(a) == 0:
        return 0.0
    label = np.where(teacher_pairs[b] - teacher_pairs[a] < 0, 1.0, -1.0)
    return float(np.mean(np.maximum(0.0, label * (student_pairs[b] - student_pairs[a]) + margin)))


def ref_grad_through_normalize(x: np.ndarray, grad_normalized: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    n = x / norm
    return (grad_normalized - n * np.sum(n * grad_normalized, axis=1, keepdims=True)) / norm


def ref_grad_from_gram(x: np.ndarray, grad_gram: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. raw rows x of a loss whose gradient w.r.t. G = n n^T (n = normalised x) is grad_gram."""
    return ref_grad_through_normalize(x, (grad_gram + grad_gram.T) @ ref_normalize(x))


def ref_grad_cosine(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    return ref_grad_through_normalize(student, -ref_normalize(teacher) / len(student))


def ref_grad_similarity(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    s, t = ref_normalize(student), ref_normalize(teacher)
    return ref_grad_from_gram(student, 2.0 * (s @ s.T - t @ t.T) / len(s) ** 2)


def ref_grad_relative_similarity(student: np.ndarray, teacher: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    student_pairs, teacher_pairs, a, b = ref_pairs(student, teacher)
    if len(a) == 0:
        return np.zeros_like(student)
    label = np.where(teacher_pairs[b] - teacher_pairs[a] < 0, 1.0, -1.0)
    active = (label * (student_pairs[b] - student_pairs[a]) + margin > 0).astype(np.float64)
    grad_pairs = np.zeros(len(student_pairs))
    np.add.at(grad_pairs, b, active * label / len(a))
    np.add.at(grad_pairs, a, -active * label / len(a))
    grad_gram = np.zeros((len(student), len(student)))
    grad_gram[np.triu_indices(len(student), 1)] = grad_pairs
    return ref_grad_from_gram(student, grad_gram)


def ref_near_hinges(
    student: np.ndarray, teacher: np.ndarray, margin: float = MARGIN, band: float = 1e-5
) -> tuple[int, float]:
    """(hinges float32 may resolve differently, the most one such hinge can move a gradient entry).

    A pair of pairs whose hinge argument or teacher difference lies within `band` of zero can flip between
    float32 and float64; each flip moves the pair gradients by 1/C(P,2), i.e. a gradient entry by at most
    4 / (C(P,2) * min row norm). The gradient tests allow exactly that much per such hinge.
    """
    student_pairs, teacher_pairs, a, b = ref_pairs(student, teacher)
    if len(a) == 0:
        return 0, 0.0
    label = np.where(teacher_pairs[b] - teacher_pairs[a] < 0, 1.0, -1.0)
    hinge = label * (student_pairs[b] - student_pairs[a]) + margin
    teacher_gap = teacher_pairs[b] - teacher_pairs[a]
    near = np.sum((np.abs(hinge) < band) | ((np.abs(teacher_gap) < band) & (teacher_gap != 0)))
    return int(near), 4.0 / (len(a) * np.min(np.linalg.norm(student, axis=1)))


def ref_value_allowance(student: np.ndarray, teacher: np.ndarray, band: float = 1e-6) -> float:
    """How far float32 may move the relative-similarity value through teacher near-ties alone.

    A teacher gap within `band` of zero (exact float64 ties included: duplicate rows give equal scores in
    float64, but a float32 matmul may round two equal dot products differently by output position) can
    take the other label in float32; that moves its hinge from relu(-d + m) to relu(d + m), i.e. by at most
    2|d| (d = the student gap), divided by C(P, 2). The exact tie convention has its own strict test.
    """
    student_pairs, teacher_pairs, a, b = ref_pairs(student, teacher)
    if len(a) == 0:
        return 0.0
    near = np.abs(teacher_pairs[b] - teacher_pairs[a]) < band
    return float(np.sum(2 * np.abs(student_pairs[b] - student_pairs[a])[near] + band) / len(a))


def ref_objective_heads(
    heads: dict[str, np.ndarray], teacher: np.ndarray, full: str = "fc1", reduced_weight: float = 1.0
) -> float:
    total = 10.0 * ref_cosine(heads[full], teacher)
    for name, vectors in heads.items():
        weight = 1.0 if name == full else reduced_weight
        total += weight * (200.0 * ref_similarity(vectors, teacher) + 20.0 * ref_relative_similarity(vectors, teacher))
    return total


def ref_objective_prefix(student: np.ndarray, teacher: np.ndarray, dims: tuple[int, ...]) -> float:
    dims = dims or (student.shape[1],)
    similarity = sum(ref_similarity(student[:, :d], teacher) for d in dims) / len(dims)
    relative = sum(ref_relative_similarity(student[:, :d], teacher) for d in dims) / len(dims)
    return 10.0 * ref_cosine(student, teacher) + 200.0 * similarity + 20.0 * relative


# ----------------------------------------------------------------------------------------------------
# inputs


def make_inputs(batch: int, student_dim: int, teacher_dim: int, seed: int, ties: str):
    """Student and teacher matrices; `ties` puts exact ties into the teacher's pair similarities.

    "binary": every teacher row has exactly four ones, so all similarities are exact multiples of 1/4 in
    float32 as in float64 (massive exact ties, identical in both precisions); "duplicates": repeated
    teacher and student rows.
    """
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(batch, student_dim))
    if ties == "binary":
        teacher = np.zeros((batch, teacher_dim))
        for row in teacher:
            row[rng.choice(teacher_dim, size=4, replace=False)] = 1.0
    else:
        teacher = rng.normal(size=(batch, teacher_dim))
    if ties == "duplicates" and batch >= 3:
        teacher[1] = teacher[0]
        teacher[batch - 1] = teacher[0]
        student[2] = student[1]
    return student, teacher


def as32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def assert_close(actual: float, expected: float, rtol: float = 1e-5, atol: float = 1e-7, what: str = "") -> None:
    assert abs(actual - expected) <= atol + rtol * abs(expected), f"{what}: got {actual!r}, expected {expected!r}"


input_cases = st.tuples(
    st.integers(1, 64),  # batch
    st.sampled_from([3, 8, 33]),  # student width
    st.sampled_from([8, 24]),  # teacher width
    st.integers(0, 2**31 - 1),  # seed
    st.sampled_from(["none", "duplicates", "binary"]),
)
hypothesis_settings = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------
# values and gradients against the reference


@hypothesis_settings
@given(input_cases)
def test_values_match_float64_reference(case):
    batch, student_dim, teacher_dim, seed, ties = case
    student, teacher = make_inputs(batch, student_dim, teacher_dim, seed, ties)
    assert_close(
        float(losses.similarity_loss(as32(student), as32(teacher))), ref_similarity(student, teacher), what="similarity"
    )
    expected = ref_relative_similarity(student, teacher)
    slack = ref_value_allowance(student, teacher)
    for method in ("dense", "merge"):
        actual = float(jax.jit(partial(losses.relative_similarity_loss, method=method))(as32(student), as32(teacher)))
        assert_close(actual, expected, atol=1e-7 + slack, what=f"relative similarity ({method}) B={batch} ties={ties}")
    same_width_teacher = (
        teacher[:, :student_dim] if teacher_dim >= student_dim else np.tile(teacher, 5)[:, :student_dim]
    )
    if np.all(np.linalg.norm(same_width_teacher, axis=1) > 0):
        assert_close(
            float(losses.cosine_loss(as32(student), as32(same_width_teacher))),
            ref_cosine(student, same_width_teacher),
            what="cosine",
        )


@hypothesis_settings
@given(input_cases)
def test_dense_and_merge_give_identical_gradients(case):
    batch, student_dim, teacher_dim, seed, ties = case
    student, teacher = make_inputs(batch, student_dim, teacher_dim, seed, ties)
    grads = {
        method: jax.jit(jax.grad(lambda s, m=method: losses.relative_similarity_loss(s, as32(teacher), method=m)))(
            as32(student)
        )
        for method in ("dense", "merge")
    }
    np.testing.assert_allclose(grads["dense"], grads["merge"], rtol=1e-5, atol=1e-6)


def assert_gradient_close(actual, expected: np.ndarray, what: str, flips: tuple[int, float] = (0, 0.0)) -> None:
    """Max error <= 1e-4 of the largest entry, plus the bound for hinges near a kink (see ref_near_hinges)."""
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(np.max(np.abs(expected)), 1e-12)
    allowed = 1e-4 * scale + 1e-8 + flips[0] * flips[1]
    error = np.max(np.abs(actual - expected))
    assert error <= allowed, (
        f"{what}: gradient error {error:.2e} > {allowed:.2e} (max |grad| {scale:.2e}, {flips[0]} near-kink hinges)"
    )


def test_reference_gradients_agree_with_finite_differences():
    """The analytic reference gradients of the smooth losses are right (checks the checker)."""
    student, teacher = make_inputs(9, 6, 6, seed=1, ties="none")
    for value_fn, grad_fn in ((ref_similarity, ref_grad_similarity), (ref_cosine, ref_grad_cosine)):
        numeric = np.zeros_like(student)
        for index in np.ndindex(student.shape):
            step = np.zeros_like(student)
            step[index] = 1e-6
            numeric[index] = (value_fn(student + step, teacher) - value_fn(student - step, teacher)) / 2e-6
        np.testing.assert_allclose(grad_fn(student, teacher), numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("batch", [2, 7, 30, 64])
@pytest.mark.parametrize("ties", ["none", "duplicates", "binary"])
def test_gradients_match_reference(batch, ties):
    student, teacher = make_inputs(batch, 12, 20, seed=batch, ties=ties)
    teacher32 = as32(teacher)
    for method in ("dense", "merge"):
        grad = jax.jit(jax.grad(lambda s, m=method: losses.relative_similarity_loss(s, teacher32, method=m)))(
            as32(student)
        )
        assert_gradient_close(
            grad,
            ref_grad_relative_similarity(student, teacher),
            f"relative similarity ({method})",
            ref_near_hinges(student, teacher),
        )
    grad = jax.grad(lambda s: losses.similarity_loss(s, teacher32))(as32(student))
    assert_gradient_close(grad, ref_grad_similarity(student, teacher), "similarity")
    same_width_teacher = np.random.default_rng(batch + 1000).normal(size=student.shape)
    grad = jax.grad(lambda s: losses.cosine_loss(s, as32(same_width_teacher)))(as32(student))
    assert_gradient_close(grad, ref_grad_cosine(student, same_width_teacher), "cosine")


@pytest.mark.parametrize("batch", [66, 100, 181])
def test_dense_equals_merge_beyond_the_automatic_switch(batch):
    student, teacher = make_inputs(batch, 16, 16, seed=batch, ties="duplicates")
    values, grads = {}, {}
    for method in ("dense", "merge"):
        fn = jax.jit(
            jax.value_and_grad(lambda s, m=method: losses.relative_similarity_loss(s, as32(teacher), method=m))
        )
        values[method], grads[method] = fn(as32(student))
    assert_close(float(values["merge"]), float(values["dense"]), rtol=2e-6, what=f"merge vs dense at B={batch}")
    np.testing.assert_allclose(grads["merge"], grads["dense"], rtol=1e-5, atol=1e-7)


def test_tie_convention_uses_minus_one_for_exact_ties():
    """Two teacher pairs with exactly equal similarity: the earlier pair is treated as the higher one."""
    student = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # pairs (0,1)=0.6, (0,2)=0, (1,2)=0.8
    teacher = np.eye(3)  # every teacher pair similarity is exactly 0
    # label -1 for every pair of pairs a<b: relu(s_a - s_b + m)
    pairs = [0.6, 0.0, 0.8]
    expected = np.mean([max(0.0, pairs[a] - pairs[b] + MARGIN) for a in range(3) for b in range(a + 1, 3)])
    assert_close(ref_relative_similarity(student, teacher), expected, what="reference")
    for method in ("dense", "merge"):
        assert_close(
            float(losses.relative_similarity_loss(as32(student), as32(teacher), method=method)), expected, what=method
        )


# ----------------------------------------------------------------------------------------------------
# masks, zero rows, shapes


@pytest.mark.parametrize("method", ["dense", "merge"])
def test_mask_equals_loss_on_valid_rows(method):
    student, teacher = make_inputs(20, 8, 8, seed=3, ties="duplicates")
    mask = np.random.default_rng(4).random(20) < 0.6
    kept = {
        "cosine": losses.cosine_loss(as32(student[mask]), as32(teacher[mask])),
        "similarity": losses.similarity_loss(as32(student[mask]), as32(teacher[mask])),
        "relative": losses.relative_similarity_loss(as32(student[mask]), as32(teacher[mask]), method=method),
    }
    masked = {
        "cosine": losses.cosine_loss(as32(student), as32(teacher), mask=jnp.asarray(mask)),
        "similarity": losses.similarity_loss(as32(student), as32(teacher), mask=jnp.asarray(mask)),
        "relative": losses.relative_similarity_loss(
            as32(student), as32(teacher), mask=jnp.asarray(mask), method=method
        ),
    }
    for name in kept:
        assert_close(float(masked[name]), float(kept[name]), rtol=1e-6, what=name)
    grad_masked = jax.grad(
        lambda s: losses.relative_similarity_loss(s, as32(teacher), mask=jnp.asarray(mask), method=method)
    )(as32(student))
    grad_kept = jax.grad(lambda s: losses.relative_similarity_loss(s, as32(teacher[mask]), method=method))(
        as32(student[mask])
    )
    np.testing.assert_allclose(grad_masked[mask], grad_kept, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(grad_masked)[~mask] == 0.0)


def test_zero_norm_rows_are_dropped_like_masked_rows_without_nan():
    student, teacher = make_inputs(10, 8, 8, seed=5, ties="none")
    student[3] = 0.0
    teacher[6] = 0.0
    keep = np.ones(10, bool)
    keep[[3, 6]] = False
    for fn in (losses.cosine_loss, losses.similarity_loss, losses.relative_similarity_loss):
        value, grad = jax.value_and_grad(lambda s, fn=fn: fn(s, as32(teacher)))(as32(student))
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), fn.__name__
        assert_close(float(value), float(fn(as32(student[keep]), as32(teacher[keep]))), rtol=1e-6, what=fn.__name__)


@pytest.mark.parametrize("fn", [losses.cosine_loss, losses.similarity_loss, losses.relative_similarity_loss])
def test_bad_shapes_fail_at_trace_time_naming_the_shapes(fn):
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(5, 8\)"):
        jax.jit(fn)(jnp.ones((4, 8)), jnp.ones((5, 8)))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        fn(jnp.ones((4,)), jnp.ones((4, 8)))
    with pytest.raises(ValueError, match=r"mask.*\(4,\).*\(3,\)"):
        fn(jnp.ones((4, 8)), jnp.ones((4, 8)), mask=jnp.ones((3,), bool))


def test_cosine_rejects_different_widths():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(4, 6\)"):
        losses.cosine_loss(jnp.ones((4, 8)), jnp.ones((4, 6)))


# ----------------------------------------------------------------------------------------------------
# the stage objective


def test_objective_heads_mode_matches_reference_and_reports_every_term():
    student, teacher = make_inputs(24, 24, 24, seed=11, ties="duplicates")
    rng = np.random.default_rng(12)
    heads = {"fc1": student, "fc2": rng.normal(size=(24, 8)), "fc3": rng.normal(size=(24, 4))}
    loss, metrics = distillation_objective({k: as32(v) for k, v in heads.items()}, as32(teacher))
    assert_close(float(loss), ref_objective_heads(heads, teacher), what="heads objective")
    assert_close(float(metrics["cosine/fc1"]), ref_cosine(heads["fc1"], teacher), what="cosine/fc1")
    for name, vectors in heads.items():
        assert_close(float(metrics[f"similarity/{name}"]), ref_similarity(vectors, teacher), what=name)
        assert_close(
            float(metrics[f"relative_similarity/{name}"]), ref_relative_similarity(vectors, teacher), what=name
        )
    assert "cosine/fc2" not in metrics and float(metrics["valid_rows"]) == 24


@pytest.mark.parametrize("weight", [0.25, 0.0])
def test_objective_heads_mode_weights_only_the_reduced_heads(weight):
    student, teacher = make_inputs(24, 24, 24, seed=11, ties="duplicates")
    rng = np.random.default_rng(12)
    heads = {"fc1": student, "fc2": rng.normal(size=(24, 8)), "fc3": rng.normal(size=(24, 4))}
    config = ObjectiveConfig(reduced_head_weight=weight)
    loss, _ = distillation_objective({k: as32(v) for k, v in heads.items()}, as32(teacher), config=config)
    assert_close(float(loss), ref_objective_heads(heads, teacher, reduced_weight=weight), what="weighted heads")
    with pytest.raises(ValueError, match="reduced_head_weight must be >= 0"):
        distillation_objective({"fc1": as32(student)}, as32(teacher), config=ObjectiveConfig(reduced_head_weight=-1.0))
    with pytest.raises(ValueError, match="reduced_head_weight is for mrl_mode='heads'"):
        distillation_objective(
            {"fc1": as32(student)}, as32(teacher), config=ObjectiveConfig(mrl_mode="prefix", reduced_head_weight=0.5)
        )


@pytest.mark.parametrize("dims", [(3, 8, 24), (5,), ()])
def test_objective_prefix_mode_matches_reference(dims):
    student, teacher = make_inputs(16, 24, 24, seed=13, ties="binary")
    config = ObjectiveConfig(mrl_mode="prefix", mrl_dims=dims)
    objective = lambda s: distillation_objective({"fc1": s}, as32(teacher), config=config)[0]  # noqa: E731
    value, grad = jax.jit(jax.value_and_grad(objective))(as32(student))
    assert_close(float(value), ref_objective_prefix(student, teacher, dims), what=f"prefix {dims}")
    expected = 10.0 * ref_grad_cosine(student, teacher)
    for d in dims or (student.shape[1],):
        prefix_grad = 200.0 * ref_grad_similarity(student[:, :d], teacher) + 20.0 * ref_grad_relative_similarity(
            student[:, :d], teacher
        )
        expected[:, :d] += prefix_grad / len(dims or (student.shape[1],))
    near = [ref_near_hinges(student[:, :d], teacher) for d in dims or (student.shape[1],)]
    flips = (sum(n for n, _ in near), 20.0 * max(bound for _, bound in near))
    assert_gradient_close(grad, expected, f"prefix objective {dims}", flips)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode,dims", [("heads", ()), ("prefix", ()), ("prefix", (4,))])
def test_objective_is_finite_for_tiny_batches(batch, mode, dims):
    student, teacher = make_inputs(batch, 8, 8, seed=batch, ties="none")
    config = ObjectiveConfig(mrl_mode=mode, mrl_dims=dims)
    (loss, metrics), grad = jax.value_and_grad(
        lambda s: distillation_objective({"fc1": s}, as32(teacher), config=config), has_aux=True
    )(as32(student))
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(metrics["relative_similarity/fc1"]) == 0.0  # fewer than two pairs: no pair of pairs


def test_objective_rejects_bad_configuration_with_clear_messages():
    student = jnp.ones((4, 8))
    with pytest.raises(ValueError, match="full head 'fc1'"):
        distillation_objective({"fc2": student}, student)
    with pytest.raises(ValueError, match="width 8 but the teacher has 6"):
        distillation_objective({"fc1": student}, jnp.ones((4, 6)))
    with pytest.raises(ValueError, match=r"mrl_dims \(16,\)"):
        distillation_objective({"fc1": student}, student, config=ObjectiveConfig(mrl_mode="prefix", mrl_dims=(16,)))


# ----------------------------------------------------------------------------------------------------
# sharded over the 8-device mesh


@pytest.mark.parametrize("method", ["dense", "merge"])
def test_sharded_jit_grad_equals_unsharded(method):
    assert jax.device_count() == 8, "conftest should give 8 fake CPU devices"
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    student, teacher = make_inputs(64, 16, 32, seed=17, ties="duplicates")
    rng = np.random.default_rng(18)
    heads = {"fc1": as32(rng.normal(size=(64, 32))), "fc2": as32(student)}
    config = ObjectiveConfig(relative_similarity_method=method)

    def objective(head_outputs, teacher_vectors):
        return distillation_objective(head_outputs, teacher_vectors, config=config)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, _), grads = jax.jit(grad_fn)(heads, as32(teacher))
    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    sharded_heads = jax.device_put(heads, batch_sharding)
    sharded_teacher = jax.device_put(as32(teacher), batch_sharding)
    (sharded_loss, _), sharded_grads = jax.jit(grad_fn)(sharded_heads, sharded_teacher)
    assert len(sharded_heads["fc1"].sharding.device_set) == 8
    assert_close(float(sharded_loss), float(loss), rtol=1e-5, what="sharded loss")
    for name in heads:
        np.testing.assert_allclose(sharded_grads[name], grads[name], rtol=1e-5, atol=1e-7)
