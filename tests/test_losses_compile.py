"""The losses compile the same whether the teacher is an argument or a constant closed over by the caller.

`jax.jit(jax.value_and_grad(lambda s: relative_similarity_loss(s, teacher)))` makes the teacher a constant
of the program; without the optimization barrier at the losses' entry points XLA folds the teacher's
(B, B) Gram matrix at compile time (50 s to the first result at B=1024). These tests check that the
compiled closed-over program holds no constant larger than the teacher itself, that its lower + compile
time stays within 2x of the argument form's, and that both forms give the same values and gradients.
"""

from __future__ import annotations

import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jasper_jax import losses
from jasper_jax.losses import ObjectiveConfig

BATCH = 512


def _inputs(batch: int = BATCH) -> tuple[jax.Array, jax.Array, jax.Array]:
    student = jax.random.normal(jax.random.key(0), (batch, 64))
    teacher = jax.random.normal(jax.random.key(1), (batch, 96))
    mask = jnp.arange(batch) % 7 != 3
    return student, teacher, mask


def _objective(student, teacher, mask):
    outputs = {"fc1": jnp.concatenate([student, student[:, :32]], axis=1), "fc2": student[:, :16]}
    return losses.distillation_objective(outputs, teacher, mask, config=ObjectiveConfig(full_head="fc1"))[0]


# batch of each case: the dense inversion sum is for small batches (above 96 rows a folded Gram matrix is
# still larger than the teacher, which the check below needs)
BATCHES = {"relative_similarity_dense": 128}
LOSSES = {
    "cosine": lambda s, t, m: losses.cosine_loss(jnp.concatenate([s, s[:, :32]], axis=1), t, m),
    "similarity": lambda s, t, m: losses.similarity_loss(s, t, m),
    "relative_similarity": lambda s, t, m: losses.relative_similarity_loss(s, t, mask=m),
    "relative_similarity_dense": lambda s, t, m: losses.relative_similarity_loss(s, t, mask=m, method="dense"),
    "objective": _objective,
}


def _argument_form(loss):
    """A fresh function each call (no jit cache hit): the teacher and mask are arguments."""
    return jax.jit(jax.value_and_grad(lambda s, t, m: loss(s, t, m)))


def _closed_form(loss, teacher, mask):
    """A fresh function each call: the teacher and mask are closed over (constants of the program)."""
    return jax.jit(jax.value_and_grad(lambda s: loss(s, teacher, mask)))


def _compile_seconds(jitted, *args) -> tuple[float, jax.stages.Compiled]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - start, compiled


def _largest_constant(compiled: jax.stages.Compiled) -> int:
    """Element count of the largest constant in the optimised HLO."""
    shapes = re.findall(r"= \w+\[([\d,]*)\]\S* constant\(", compiled.as_text())
    return max((math.prod(int(d) for d in dims.split(",") if d) for dims in shapes), default=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_closed_over_teacher_is_not_folded_and_gives_the_argument_form_values(name):
    loss = LOSSES[name]
    student, teacher, mask = _inputs(BATCHES.get(name, BATCH))
    _, closed = _compile_seconds(_closed_form(loss, teacher, mask), student)
    largest = _largest_constant(closed)
    assert largest <= teacher.size, (
        f"{name}: the closed-over program holds a constant of {largest} elements, more than the teacher's "
        f"{teacher.size}: XLA folded work on the teacher at compile time"
    )
    value, gradient = closed(student)
    expected_value, expected_gradient = _argument_form(loss)(student, teacher, mask)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-7, err_msg=f"{name} value")
    scale = float(jnp.max(jnp.abs(expected_gradient)))
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} gradient")


def test_closed_over_teacher_compiles_within_twice_the_argument_form_time():
    """Best of two fresh compilations each, alternating (the machine is shared; the minimum is the stable figure).

    At this batch the folding costs less than 2x on a 2-core CPU (measured without the barrier: 2.0 s closed
    against 1.3 s), so the test above, on the compiled constants, is the one that fails without the fix; at
    B=1024 the folded form took 5.0 s against 2.0 s."""
    name = "relative_similarity"
    loss = LOSSES[name]
    student, teacher, mask = _inputs()
    argument_times, closed_times = [], []
    for _ in range(2):
        argument_times.append(_compile_seconds(_argument_form(loss), student, teacher, mask)[0])
        closed_times.append(_compile_seconds(_closed_form(loss, teacher, mask), student)[0])
    argument, closed = min(argument_times), min(closed_times)
    assert closed <= 2.0 * argument, (
        f"{name} at B={BATCH}: closed-over teacher compiles in {closed:.2f} s, argument form in {argument:.2f} s "
        f"(limit 2x); all: closed {closed_times}, argument {argument_times}"
    )


def test_barrier_keeps_vmap_and_higher_order_gradients():
    """vmap over a batch of problems and a gradient through the teacher still work and agree with loops."""
    student, teacher, mask = _inputs(12)
    students = jnp.stack([student, 2.0 * student[::-1]])
    teachers = jnp.stack([teacher, teacher[::-1]])
    single = jax.jit(lambda s, t: losses.relative_similarity_loss(s, t, mask=mask))
    batched = jax.jit(jax.vmap(single))(students, teachers)
    looped = [single(s, t) for s, t in zip(students, teachers)]
    np.testing.assert_allclose(batched, looped, rtol=1e-6)
    teacher_gradient = jax.jit(jax.grad(lambda t: losses.similarity_loss(student, t, mask)))(teacher)
    assert bool(jnp.all(jnp.isfinite(teacher_gradient))) and float(jnp.max(jnp.abs(teacher_gradient))) > 0
    gradient = jax.grad(lambda s: losses.similarity_loss(s, teacher, mask))
    hessian_vector = jax.jit(lambda s: jax.jvp(gradient, (s,), (jnp.ones_like(s),))[1])(student)
    assert bool(jnp.all(jnp.isfinite(hessian_vector)))
