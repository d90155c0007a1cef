"""The three distillation losses of Jasper and Stella (arXiv 2412.19048, section 2) and the stage objective.

All functions take raw (B, D) student and teacher matrices, normalise the rows themselves, compute in
float32 and return a float32 scalar; they are pure, jittable and differentiable. `mask` (B,) bool drops
rows: the result equals the loss of the valid rows alone.

Zero-norm rows: a row whose student or teacher vector has (near) zero norm has no direction, so it is
treated exactly like a masked row (dropped) rather than producing NaN; `distillation_objective` reports
how many rows were kept in its `valid_rows` metric so that a data problem shows up in the logs.
With fewer than one valid row (cosine), or fewer than two pairs (relative similarity), a loss is 0.

Compile-time constants: every public function first passes its array inputs through
`jax.lax.optimization_barrier` (`_opaque`), an identity for values, gradients, vmap and jit. Without it,
an input that is a constant of the traced program, as the teacher is in the benchmark form
`jax.jit(jax.value_and_grad(lambda s: relative_similarity_loss(s, teacher)))`, lets XLA's constant folding
evaluate the teacher's (B, B) Gram matrix and pair sort at compile time, on one thread, without the
compiled kernels: 50 s to the first result at B=1024 against 3.7 s with the teacher passed as an argument.
The barrier keeps that work in the compiled program, so closing over an input costs what passing it does.

The relative-similarity loss compares every pair of in-batch pairs: P = B(B-1)/2 pairs and C(P, 2) pairs
of pairs (3.3e7 at B=128, 3.5e13 at B=4096). Ordering the pairs by the teacher turns it into a
margin-shifted inversion sum, which is computed exactly either densely in row blocks (small batches) or
by divide and conquer over positions after one sort by value, in O(P log P) (large global batches); both
give the same value and the same (exact, count-based) gradient.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jasper_jax.losses import relative_similarity_loss, distillation_objective
    >>> student = jax.random.normal(jax.random.key(0), (8, 64))
    >>> teacher = jax.random.normal(jax.random.key(1), (8, 96))
    >>> loss = relative_similarity_loss(student, teacher)          # float32 scalar
    >>> total, metrics = distillation_objective({"fc1": student}, teacher,
    ...                                         config=ObjectiveConfig(full_head="fc1"))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_MARGIN = 0.015
# Norms below this are "zero-norm rows" (dropped like masked rows).
ZERO_NORM_EPS = 1e-12
# Stand-in for +/- infinity that keeps 0 * BIG == 0 (infinity would give NaN).
_BIG = 1e30
# Pair counts up to this use the dense inversion sum; above it the merge-based one.
DENSE_MAX_PAIRS = 2080  # B <= 65
_DENSE_ROW_CHUNK = 256
# Below this many consecutive positions the merge compares pairs directly (fuses without temporaries).
_MERGE_DENSE_BLOCK = 32


# --------------------------------------------------------------------------------------------------
# input checks and normalisation


def _check_matrix(name: str, x: Array) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (batch, dim) matrix, got shape {tuple(x.shape)}")


def _check_inputs(student: Array, teacher: Array, mask: Array | None, same_width: bool) -> None:
    _check_matrix("student", student)
    _check_matrix("teacher", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher batch sizes differ: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
        )
    if same_width and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"cosine_loss needs equal widths: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}; "
            "use a head whose width equals the teacher's"
        )
    if mask is not None and tuple(mask.shape) != (student.shape[0],):
        raise ValueError(f"mask must have shape ({student.shape[0]},), got {tuple(mask.shape)}")


def _opaque(*inputs):
    """`inputs` unchanged, hidden from XLA's constant folding (see the module docstring).

    An identity under jit, grad and vmap; it only stops the compiler from evaluating work on constant
    inputs (a closed-over teacher) at compile time."""
    return jax.lax.optimization_barrier(inputs)


def _normalize_rows(x: Array) -> tuple[Array, Array]:
    """(rows / norm, nonzero) in float32; zero-norm rows become 0 with a finite gradient."""
    x = x.astype(jnp.float32)
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = squared > ZERO_NORM_EPS**2
    norm = jnp.sqrt(jnp.where(nonzero, squared, 1.0))
    return jnp.where(nonzero, x / norm, 0.0), nonzero[:, 0]


def _valid_rows(mask: Array | None, *nonzero: Array) -> Array:
    valid = nonzero[0]
    for more in nonzero[1:]:
        valid = valid & more
    if mask is not None:
        valid = valid & mask.astype(bool)
    return valid


# --------------------------------------------------------------------------------------------------
# the three terms on normalised inputs


def _cosine(student: Array, teacher: Array, valid: Array) -> Array:
    count = jnp.sum(valid)
    per_row = 1.0 - jnp.sum(student * teacher, axis=-1)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(count, 1)


def _gram(x: Array) -> Array:
    return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


def _similarity(student_gram: Array, teacher_gram: Array, valid: Array) -> Array:
    count = jnp.sum(valid)
    pair_valid = valid[:, None] & valid[None, :]
    squared_error = jnp.square(student_gram - teacher_gram)
    return jnp.sum(jnp.where(pair_valid, squared_error, 0.0)) / jnp.maximum(count * count, 1)


class PairOrder(NamedTuple):
    """The in-batch pairs (i < j) in ascending teacher similarity, ties in pair order (row-major i<j).

    With this order the official label (+1 if t_b - t_a < 0 else -1, for pair a before pair b) makes every
    pair of pairs contribute relu(u_early - u_late + margin), u being student similarities in this order.
    """

    first: Array  # (P,) row index i of each pair, in teacher order
    second: Array  # (P,) row index j of each pair, in teacher order


def _upper_triangle_pairs(batch: int) -> tuple[Array, Array]:
    """Row and column of the P = B(B-1)/2 pairs i<j in row-major order, built in-graph (no big constants)."""
    pairs = batch * (batch - 1) // 2
    rows = jnp.arange(batch, dtype=jnp.int32)
    per_row = batch - 1 - rows
    first = jnp.repeat(rows, per_row, total_repeat_length=pairs)
    row_start = rows * (2 * batch - rows - 1) // 2  # index of the first pair of each row
    position = jnp.arange(pairs, dtype=jnp.int32)
    second = position - row_start[first] + first + 1
    return first, second


def teacher_pair_order(teacher_gram: Array) -> PairOrder:
    """Order the in-batch pairs by the teacher's similarity (stable: exact ties keep pair order)."""
    (teacher_gram,) = _opaque(teacher_gram)
    return _teacher_pair_order(teacher_gram)


def _teacher_pair_order(teacher_gram: Array) -> PairOrder:
    first, second = _upper_triangle_pairs(teacher_gram.shape[0])
    order = jnp.argsort(teacher_gram[first, second], stable=True)
    return PairOrder(first[order], second[order])


def _relative_similarity(student_gram: Array, order: PairOrder, valid: Array, margin: float, method: str) -> Array:
    pair_valid = valid[order.first] & valid[order.second]
    scores = student_gram[order.first, order.second]
    left = jnp.where(pair_valid, scores + margin, -_BIG)  # the earlier pair's role: u_i + margin
    right = jnp.where(pair_valid, scores, _BIG)  # the later pair's role: u_j
    if method == "auto":
        method = "dense" if scores.shape[0] <= DENSE_MAX_PAIRS else "merge"
    if method == "dense":
        total = _inversion_sum_dense(left, right)
    elif method == "merge":
        total = _inversion_sum_merge(left, right)
    else:
        raise ValueError(f"relative-similarity method must be 'auto', 'dense' or 'merge', got {method!r}")
    valid_pairs = jnp.sum(pair_valid).astype(jnp.float32)
    pairs_of_pairs = valid_pairs * (valid_pairs - 1.0) / 2.0
    return total / jnp.maximum(pairs_of_pairs, 1.0)


# --------------------------------------------------------------------------------------------------
# sum_{i<j} relu(left_i - right_j): value and exact gradient from comparison counts
#
# The gradient of relu(left_i - right_j) is [left_i > right_j] (JAX's relu'(0) = 0), so d/d left_i is the
# number of later j it beats and d/d right_j minus the number of earlier i that beat it. Both
# implementations return (total, count_as_left, count_as_right); a custom VJP turns the counts into the
# gradient, so neither implementation keeps O(P^2) residuals for autodiff.


def _make_inversion_sum(stats_fn):
    @jax.custom_vjp
    def inversion_sum(left: Array, right: Array) -> Array:
        return stats_fn(left, right)[0]

    def forward(left, right):
        total, as_left, as_right = stats_fn(left, right)
        return total, (as_left, as_right)

    def backward(residuals, cotangent):
        as_left, as_right = residuals
        return cotangent * as_left, -cotangent * as_right

    inversion_sum.defvjp(forward, backward)
    return inversion_sum


def _pad_to(x: Array, size: int, value: float) -> Array:
    return jnp.pad(x, (0, size - x.shape[0]), constant_values=value)


def _dense_stats(left: Array, right: Array) -> tuple[Array, Array, Array]:
    """Row blocks of the (P, P) comparison matrix, one block in memory at a time."""
    pairs = left.shape[0]
    chunk = min(_DENSE_ROW_CHUNK, max(pairs, 1))
    padded = -(-pairs // chunk) * chunk
    left_blocks = _pad_to(left, padded, -_BIG).reshape(-1, chunk)
    right_padded = _pad_to(right, padded, _BIG)
    columns = jnp.arange(padded)

    def block(carry, inputs):
        total, as_right = carry
        left_block, start = inputs
        rows = start + jnp.arange(chunk)
        active = (rows[:, None] < columns[None, :]) & (left_block[:, None] > right_padded[None, :])
        gap = jnp.where(active, left_block[:, None] - right_padded[None, :], 0.0)
        total = total + jnp.sum(gap)
        as_right = as_right + jnp.sum(active, axis=0, dtype=jnp.float32)
        return (total, as_right), jnp.sum(active, axis=1, dtype=jnp.float32)

    starts = jnp.arange(0, padded, chunk)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((padded,), jnp.float32))
    (total, as_right), as_left = jax.lax.scan(block, init, (left_blocks, starts))
    return total, as_left.reshape(-1)[:pairs], as_right[:pairs]


def _merge_stats(left: Array, right: Array) -> tuple[Array, Array, Array]:
    """Divide and conquer over positions after one sort by value: O(P log P) with no sort per level.

    Requires the structure `_relative_similarity` builds: left = right + margin where valid, and
    (-BIG, +BIG) where not, so one argsort of `right` orders both roles. Every position p gives two items, a
    left-role item (value left_p) and a right-role item (right_p); merging the two sorted lists puts all
    2P items in value order (ties: left-role first, so equal values never count as left_i > right_j).
    Level by level (a `fori_loop`, so memory stays O(P) whatever the depth), from the whole range down to
    blocks of 32 positions (compared directly), the items are kept ordered by
    (segment, value), a segment holding the items of 2h consecutive positions. Within a segment a
    right-role item j of the later half is beaten by exactly the left-role items of the earlier half that
    come after it, and a left-role item i of the earlier half beats the right-role items of the later half
    that come before it: cumulative counts (exact int32) give both. A stable partition by the half bit
    (cumulative counts and a scatter, no comparisons) gives the next level's order. The value follows from
    the counts at the end: sum_i left_i * beats_i - sum_j right_j * beaten_j.
    """
    pairs = left.shape[0]
    size = max(2, 1 << max(0, (pairs - 1).bit_length()))
    left = _pad_to(left, size, -_BIG)
    right = _pad_to(right, size, _BIG)
    # One sort orders both roles: invalid items sit at the top of `right` and at the bottom of `left`.
    right_order = jnp.argsort(right).astype(jnp.int32)
    invalid = jnp.sum(right >= _BIG).astype(jnp.int32)
    left_order = jnp.roll(right_order, invalid)
    left_sorted, right_sorted = left[left_order], right[right_order]
    rank = jnp.arange(size, dtype=jnp.int32)
    left_slot = rank + jnp.searchsorted(right_sorted, left_sorted, side="left").astype(jnp.int32)
    right_slot = rank + jnp.searchsorted(left_sorted, right_sorted, side="right").astype(jnp.int32)
    item = jnp.zeros((2 * size,), jnp.int32)  # items < size are left-role, the others right-role
    item = item.at[left_slot].set(left_order, unique_indices=True)
    item = item.at[right_slot].set(right_order + size, unique_indices=True)

    block = min(size, _MERGE_DENSE_BLOCK)
    block_bits = block.bit_length() - 1
    top_shift = size.bit_length() - 2  # log2(size // 2)
    index = jnp.arange(2 * size, dtype=jnp.int32)

    def level(step: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        item, coefficient = carry
        shift = top_shift - step
        segment = jnp.left_shift(jnp.int32(4), shift)  # two items for each of 2 * 2**shift positions
        segment_start = index & ~(segment - 1)
        segment_last = segment_start + segment - 1
        is_left_role = item < size
        in_later_half = ((item >> shift) & 1).astype(bool)  # bit `shift` of the position
        earlier_left = (is_left_role & ~in_later_half).astype(jnp.int32)
        later_right = (~is_left_role & in_later_half).astype(jnp.int32)
        bit = in_later_half.astype(jnp.int32)
        # Segmented counts from global cumulative sums (exact in int32: at most 2**25 items).
        earlier_left_cumsum = jnp.cumsum(earlier_left)
        later_right_cumsum = jnp.cumsum(later_right)
        bit_cumsum = jnp.cumsum(bit)

        def before(cumsum: Array, counts: Array) -> Array:
            """Count of items before each item in its own segment (exclusive, segmented)."""
            return cumsum - counts - (cumsum[segment_start] - counts[segment_start])

        beaten = earlier_left_cumsum[segment_last] - earlier_left_cumsum  # earlier-half left items after
        beats = before(later_right_cumsum, later_right)  # later-half right items before
        coefficient = coefficient + earlier_left * beats - later_right * beaten
        # Stable partition of every segment into its earlier and later half (for the next level).
        ones_before = before(bit_cumsum, bit)
        zeros_before = index - segment_start - ones_before
        target = segment_start + jnp.where(bit == 1, segment // 2 + ones_before, zeros_before)
        item = jnp.zeros_like(item).at[target].set(item, unique_indices=True)
        coefficient = jnp.zeros_like(coefficient).at[target].set(coefficient, unique_indices=True)
        return item, coefficient

    levels = max(0, top_shift - block_bits + 1)
    coefficient = jnp.zeros((2 * size,), jnp.int32)  # beats (left-role) or minus beaten (right-role)
    item, coefficient = jax.lax.fori_loop(0, levels, level, (item, coefficient))
    by_item = jnp.zeros_like(coefficient).at[item].set(coefficient, unique_indices=True)
    # Pairs inside a block of `block` consecutive positions: compared directly (fused, no temporaries).
    left_blocks, right_blocks = left.reshape(-1, block), right.reshape(-1, block)
    upper = jnp.arange(block)[:, None] < jnp.arange(block)[None, :]
    active = upper & (left_blocks[:, :, None] > right_blocks[:, None, :])
    as_left = (by_item[:size] + jnp.sum(active, axis=2, dtype=jnp.int32).reshape(-1)).astype(jnp.float32)
    as_right = (jnp.sum(active, axis=1, dtype=jnp.int32).reshape(-1) - by_item[size:]).astype(jnp.float32)
    # Centre the values before weighting by counts (up to P) to keep the float32 sums small;
    # sum(as_left) == sum(as_right), so the centre cancels exactly in exact arithmetic.
    valid = right < _BIG
    centre = jnp.sum(jnp.where(valid, right, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    total = jnp.sum(jnp.where(valid, left - centre, 0.0) * as_left) - jnp.sum(
        jnp.where(valid, right - centre, 0.0) * as_right
    )
    return total, as_left[:pairs], as_right[:pairs]


_inversion_sum_dense = _make_inversion_sum(_dense_stats)
_inversion_sum_merge = _make_inversion_sum(_merge_stats)


# --------------------------------------------------------------------------------------------------
# public losses


def cosine_loss(student: Array, teacher: Array, mask: Array | None = None) -> Array:
    """Mean over valid rows of 1 - cos(s_i, t_i) (PAPER Eq. 1 with the official code's batch mean).

    student and teacher are (B, D) with the same D.
    """
    _check_inputs(student, teacher, mask, same_width=True)
    student, teacher, mask = _opaque(student, teacher, mask)
    s, s_nonzero = _normalize_rows(student)
    t, t_nonzero = _normalize_rows(teacher)
    return _cosine(s, t, _valid_rows(mask, s_nonzero, t_nonzero))


def similarity_loss(student: Array, teacher: Array, mask: Array | None = None) -> Array:
    """MSE between the student's and the teacher's (B, B) cosine-similarity matrices (Eq. 2).

    The mean is over all n*n entries of the valid rows (diagonal included); widths may differ.
    """
    _check_inputs(student, teacher, mask, same_width=False)
    student, teacher, mask = _opaque(student, teacher, mask)
    s, s_nonzero = _normalize_rows(student)
    t, t_nonzero = _normalize_rows(teacher)
    return _similarity(_gram(s), _gram(t), _valid_rows(mask, s_nonzero, t_nonzero))


def relative_similarity_loss(
    student: Array,
    teacher: Array,
    margin: float = DEFAULT_MARGIN,
    mask: Array | None = None,
    *,
    method: Literal["auto", "dense", "merge"] = "auto",
) -> Array:
    """CoSENT-like relative-similarity loss (Eq. 3) over all pairs of distinct in-batch pairs.

    For pairs a < b (upper triangle, row-major), relu(label_ab * (s_b - s_a) + margin) with
    label_ab = +1 if t_b - t_a < 0 else -1 (exact teacher ties get -1), averaged over the C(P, 2) pairs of
    pairs of the valid rows. `method` picks the exact implementation ("auto": dense for P <= 2080).
    """
    _check_inputs(student, teacher, mask, same_width=False)
    student, teacher, mask = _opaque(student, teacher, mask)
    s, s_nonzero = _normalize_rows(student)
    t, t_nonzero = _normalize_rows(teacher)
    order = _teacher_pair_order(_gram(t))
    valid = _valid_rows(mask, s_nonzero, t_nonzero)
    return _relative_similarity(_gram(s), order, valid, margin, method)


# --------------------------------------------------------------------------------------------------
# the stage objective


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """How the heads' outputs combine into one loss (PAPER: total = 10 L_cos + 200 L_sim + 20 L_resim).

    mrl_mode "heads" (paper / released model): every head is independent; `full_head` (teacher width) gets
    all three terms, the other (reduced) heads get similarity + relative similarity against the full
    teacher, each head's weighted terms added to the total, times `reduced_head_weight` (1 in the paper;
    below 1 the reduced heads pull the shared encoder less away from what the full head needs, as the
    official code's prefix mode dividing its sums by len(mrl_dims) does).
    mrl_mode "prefix" (official code): `full_head` alone; cosine on its full vector; for each d in
    `mrl_dims` its first d components, renormalised, get similarity + relative similarity, and both sums
    are divided by len(mrl_dims). An empty `mrl_dims` means the full vector only (the official code's 0/0
    NaN does not happen here).

    The `infonce_*`, `score_kl_*` and `pair_distill_texts` fields are read by `pair_objective` only.
    """

    full_head: str = "fc1"
    cosine_weight: float = 10.0
    similarity_weight: float = 200.0
    relative_similarity_weight: float = 20.0
    margin: float = DEFAULT_MARGIN
    mrl_mode: Literal["heads", "prefix"] = "heads"
    mrl_dims: tuple[int, ...] = ()
    reduced_head_weight: float = 1.0
    relative_similarity_method: Literal["auto", "dense", "merge"] = "auto"
    # pair stages only (`pair_objective`, arXiv 2511.14405): contrastive terms on `full_head`, and which texts
    # of each example the three terms above are computed over
    infonce_weight: float = 1.0
    infonce_temperature: float = 0.05
    score_kl_weight: float = 1.0
    score_kl_student_temperature: float = 0.05
    score_kl_teacher_temperature: float = 0.05
    pair_distill_texts: tuple[Literal["queries", "positives", "negatives"], ...] = ("queries", "positives", "negatives")


class _TeacherView(NamedTuple):
    vectors: Array
    gram: Array
    order: PairOrder
    nonzero: Array


def _teacher_view(teacher: Array) -> _TeacherView:
    vectors, nonzero = _normalize_rows(teacher)
    gram = _gram(vectors)
    return _TeacherView(vectors, gram, _teacher_pair_order(gram), nonzero)


def _prefix_grams(student: Array, dims: tuple[int, ...]) -> dict[int, tuple[Array, Array]]:
    """d -> (cosine gram of the renormalised d-prefixes, nonzero rows), from one pass over column blocks.

    The gram of a longer prefix is the shorter prefix's raw gram plus the next column block's, so every
    prefix costs one slice of a single (B, B) product instead of a product of its own.
    """
    result = {}
    raw = jnp.zeros((student.shape[0], student.shape[0]), jnp.float32)
    start = 0
    for dim in sorted(set(dims)):
        raw = raw + _gram(student[:, start:dim])
        start = dim
        squared = jnp.diagonal(raw)
        nonzero = squared > ZERO_NORM_EPS**2
        inverse_norm = jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
        result[dim] = (raw * inverse_norm[:, None] * inverse_norm[None, :], nonzero)
    return result


def distillation_objective(
    head_outputs: Mapping[str, Array],
    teacher: Array,
    mask: Array | None = None,
    *,
    config: ObjectiveConfig = ObjectiveConfig(),
) -> tuple[Array, dict[str, Array]]:
    """The weighted stage loss over the heads' outputs against the (concatenated) teacher vectors.

    Returns (loss, metrics): metrics has `loss`, `valid_rows` and every unweighted term as
    `cosine/<head>`, `similarity/<head>`, `relative_similarity/<head>` (prefix mode adds `@<d>` per dim).
    The teacher's similarity matrix and pair order are computed once and shared by every head.
    """
    if config.full_head not in head_outputs:
        raise ValueError(
            f"the objective's full head {config.full_head!r} is not among the outputs {sorted(head_outputs)}"
        )
    for output in head_outputs.values():
        _check_inputs(output, teacher, mask, same_width=False)
    head_outputs, teacher, mask = _opaque(dict(head_outputs), teacher, mask)
    teacher_view = _teacher_view(teacher)
    metrics: dict[str, Array] = {}
    total = jnp.zeros((), jnp.float32)
    resim = partial(_relative_similarity, margin=config.margin, method=config.relative_similarity_method)

    full, full_nonzero = _normalize_rows(head_outputs[config.full_head])
    valid = _valid_rows(mask, full_nonzero, teacher_view.nonzero)
    if full.shape[1] != teacher_view.vectors.shape[1]:
        raise ValueError(
            f"the full head {config.full_head!r} has width {full.shape[1]} but the teacher has "
            f"{teacher_view.vectors.shape[1]}: the cosine term needs equal widths"
        )
    cosine = _cosine(full, teacher_view.vectors, valid)
    metrics[f"cosine/{config.full_head}"] = cosine
    total = total + config.cosine_weight * cosine

    if not config.reduced_head_weight >= 0:
        raise ValueError(f"reduced_head_weight must be >= 0, got {config.reduced_head_weight!r}")
    if config.mrl_mode == "heads":
        if config.mrl_dims:
            raise ValueError("mrl_dims is for mrl_mode='prefix'; in 'heads' mode every head has its own width")
        for name, output in head_outputs.items():
            if name == config.full_head:
                vectors, head_valid, weight = full, valid, 1.0
            else:
                vectors, nonzero = _normalize_rows(output)
                head_valid = _valid_rows(mask, nonzero, teacher_view.nonzero)
                weight = config.reduced_head_weight
            gram = _gram(vectors)
            similarity = _similarity(gram, teacher_view.gram, head_valid)
            relative = resim(gram, teacher_view.order, head_valid)
            metrics[f"similarity/{name}"] = similarity
            metrics[f"relative_similarity/{name}"] = relative
            total = total + weight * (
                config.similarity_weight * similarity + config.relative_similarity_weight * relative
            )
    elif config.mrl_mode == "prefix":
        if len(head_outputs) != 1:
            raise ValueError(f"mrl_mode='prefix' uses one head, got {sorted(head_outputs)}")
        if config.reduced_head_weight != 1.0:
            raise ValueError("reduced_head_weight is for mrl_mode='heads'; prefix mode averages its dims instead")
        width = full.shape[1]
        dims = tuple(config.mrl_dims) or (width,)
        if any(not 0 < d <= width for d in dims):
            raise ValueError(f"mrl_dims {dims} must lie in 1..{width} (the width of head {config.full_head!r})")
        prefix_grams = _prefix_grams(full, dims)
        similarity_sum = relative_sum = jnp.zeros((), jnp.float32)
        for dim in dims:
            gram, nonzero = prefix_grams[dim]
            prefix_valid = valid & nonzero
            similarity = _similarity(gram, teacher_view.gram, prefix_valid)
            relative = resim(gram, teacher_view.order, prefix_valid)
            metrics[f"similarity/{config.full_head}@{dim}"] = similarity
            metrics[f"relative_similarity/{config.full_head}@{dim}"] = relative
            similarity_sum, relative_sum = similarity_sum + similarity, relative_sum + relative
        similarity, relative = similarity_sum / len(dims), relative_sum / len(dims)
        metrics[f"similarity/{config.full_head}"] = similarity
        metrics[f"relative_similarity/{config.full_head}"] = relative
        total = total + config.similarity_weight * similarity + config.relative_similarity_weight * relative
    else:
        raise ValueError(f"mrl_mode must be 'heads' or 'prefix', got {config.mrl_mode!r}")

    metrics["loss"] = total
    metrics["valid_rows"] = jnp.sum(valid).astype(jnp.float32)
    return total, metrics


# --------------------------------------------------------------------------------------------------
# pair batches: contrastive learning with hard negatives (the successor recipe, arXiv 2511.14405)
#
# A pair batch has B examples: queries (B, D) and documents (B, G, D), G = 1 + k, documents[:, 0] the
# positive and documents[:, 1:] the k hard negatives. Every query is scored against all B*G documents of the
# GLOBAL batch (its positive, its own and the other examples' hard negatives, the other positives), the
# document columns flattened row-major: the positive of query i is column i*G.
#
# Masks: `example_mask` (B,) drops examples (their query and all their documents); `document_mask` (B, G)
# drops single documents (an example with fewer than k negatives); `document_ids` (B, G) int (the store
# rows) removes, from query i's candidates, every other column holding the same text as its positive (a
# positive that is also another example's document is not a negative). A query counts when its example,
# its query vector and its positive are valid; with no query counting a loss is 0.


class _PairValidity(NamedTuple):
    rows: Array  # (B,) bool: the query counts
    columns: Array  # (B, N) bool: document column c is a candidate of query i
    positive: Array  # (B,) int32: the column of query i's positive


def _check_pair_inputs(query: Array, documents: Array, example_mask, document_mask, document_ids, what="") -> None:
    _check_matrix(f"{what}query", query)
    if documents.ndim != 3 or documents.shape[0] != query.shape[0] or documents.shape[1] < 1:
        raise ValueError(
            f"{what}documents must be (batch, 1 + negatives, dim) with the queries' batch: "
            f"query {tuple(query.shape)}, documents {tuple(documents.shape)}"
        )
    batch, group = documents.shape[:2]
    if example_mask is not None and tuple(example_mask.shape) != (batch,):
        raise ValueError(f"example_mask must have shape ({batch},), got {tuple(example_mask.shape)}")
    for name, value in (("document_mask", document_mask), ("document_ids", document_ids)):
        if value is not None and tuple(value.shape) != (batch, group):
            raise ValueError(f"{name} must have shape ({batch}, {group}), got {tuple(value.shape)}")


def _pair_validity(query_nonzero, document_nonzero, example_mask, document_mask, document_ids) -> _PairValidity:
    batch, group = document_nonzero.shape
    document_valid = document_nonzero
    if example_mask is not None:
        document_valid = document_valid & example_mask.astype(bool)[:, None]
    if document_mask is not None:
        document_valid = document_valid & document_mask.astype(bool)
    rows = _valid_rows(example_mask, query_nonzero, document_valid[:, 0])
    positive = jnp.arange(batch, dtype=jnp.int32) * group
    columns = jnp.broadcast_to(document_valid.reshape(1, -1), (batch, batch * group))
    if document_ids is not None:
        flat_ids = document_ids.reshape(-1)
        same_text = flat_ids[None, :] == document_ids[:, 0][:, None]
        not_positive = jnp.arange(batch * group)[None, :] != positive[:, None]
        columns = columns & ~(same_text & not_positive)
    return _PairValidity(rows, columns, positive)


def _normalize_documents(documents: Array) -> tuple[Array, Array]:
    """(B*G, D) unit rows and (B, G) nonzero flags of (B, G, D) documents."""
    batch, group, dim = documents.shape
    flat, nonzero = _normalize_rows(documents.reshape(batch * group, dim))
    return flat, nonzero.reshape(batch, group)


def _scores(query: Array, flat_documents: Array) -> Array:
    return jnp.matmul(query, flat_documents.T, precision=jax.lax.Precision.HIGHEST)


def _masked_log_softmax(logits: Array, columns: Array) -> Array:
    """log_softmax over the candidate columns only (the others get probability 0, finite values)."""
    return jax.nn.log_softmax(jnp.where(columns, logits, -_BIG), axis=-1)


def _row_mean(per_row: Array, rows: Array) -> Array:
    return jnp.sum(jnp.where(rows, per_row, 0.0)) / jnp.maximum(jnp.sum(rows), 1)


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _infonce(scores: Array, validity: _PairValidity, temperature: float) -> Array:
    log_probs = _masked_log_softmax(scores / temperature, validity.columns)
    per_row = -jnp.take_along_axis(log_probs, validity.positive[:, None], axis=1)[:, 0]
    return _row_mean(per_row, validity.rows)


def _score_kl(student_scores, teacher_scores, validity: _PairValidity, student_temperature, teacher_temperature):
    student_log = _masked_log_softmax(student_scores / student_temperature, validity.columns)
    teacher_log = _masked_log_softmax(teacher_scores / teacher_temperature, validity.columns)
    terms = jnp.exp(teacher_log) * (teacher_log - student_log)
    return _row_mean(jnp.sum(jnp.where(validity.columns, terms, 0.0), axis=-1), validity.rows)


def infonce_loss(
    query: Array,
    documents: Array,
    temperature: float = 0.05,
    *,
    example_mask: Array | None = None,
    document_mask: Array | None = None,
    document_ids: Array | None = None,
) -> Array:
    """InfoNCE of each query against every document of the global batch (the report's hard loss).

    Mean over counting queries i of -log softmax_c(cos(q_i, d_c) / temperature)[positive of i], c over the
    candidate columns (see the section comment for the layout and masks). Zero-norm vectors are dropped
    like masked ones.
    """
    _check_pair_inputs(query, documents, example_mask, document_mask, document_ids)
    _check_temperature("temperature", temperature)
    query, documents, example_mask, document_mask, document_ids = _opaque(
        query, documents, example_mask, document_mask, document_ids
    )
    q, q_nonzero = _normalize_rows(query)
    d, d_nonzero = _normalize_documents(documents)
    validity = _pair_validity(q_nonzero, d_nonzero, example_mask, document_mask, document_ids)
    return _infonce(_scores(q, d), validity, temperature)


def score_kl_loss(
    query: Array,
    documents: Array,
    teacher_query: Array,
    teacher_documents: Array,
    *,
    student_temperature: float = 0.05,
    teacher_temperature: float = 0.05,
    example_mask: Array | None = None,
    document_mask: Array | None = None,
    document_ids: Array | None = None,
) -> Array:
    """KL(teacher || student) of the query-document score distributions (the report's soft loss).

    Per counting query i: P = softmax_c(cos(tq_i, td_c) / teacher_temperature), Q the same with the student's
    vectors and `student_temperature`, over the same candidate columns c (all documents of the global
    batch); the loss is the mean of sum_c P_c (log P_c - log Q_c). Student and teacher widths may differ; a
    text counts only where both its vectors are nonzero.
    """
    _check_pair_inputs(query, documents, example_mask, document_mask, document_ids)
    _check_pair_inputs(teacher_query, teacher_documents, None, None, None, what="teacher_")
    if teacher_documents.shape[:2] != documents.shape[:2]:
        raise ValueError(
            f"teacher_documents {tuple(teacher_documents.shape)} and documents {tuple(documents.shape)} "
            "must have the same (batch, 1 + negatives)"
        )
    _check_temperature("student_temperature", student_temperature)
    _check_temperature("teacher_temperature", teacher_temperature)
    inputs = _opaque(query, documents, teacher_query, teacher_documents, example_mask, document_mask, document_ids)
    query, documents, teacher_query, teacher_documents, example_mask, document_mask, document_ids = inputs
    q, q_nonzero = _normalize_rows(query)
    d, d_nonzero = _normalize_documents(documents)
    tq, tq_nonzero = _normalize_rows(teacher_query)
    td, td_nonzero = _normalize_documents(teacher_documents)
    validity = _pair_validity(q_nonzero & tq_nonzero, d_nonzero & td_nonzero, example_mask, document_mask, document_ids)
    return _score_kl(_scores(q, d), _scores(tq, td), validity, student_temperature, teacher_temperature)


def pair_texts(
    query: Array,
    documents: Array,
    texts: tuple[str, ...],
    example_mask: Array | None = None,
    document_mask: Array | None = None,
) -> tuple[Array, Array]:
    """(rows, mask) of the chosen texts of a pair batch stacked as one (n, D) matrix for the Jasper losses.

    `texts` names any of "queries" (B rows), "positives" (B), "negatives" (B*k, row-major), in that order.
    """
    unknown = sorted(set(texts) - {"queries", "positives", "negatives"})
    if unknown or not texts:
        raise ValueError(f"pair_distill_texts must name queries, positives and/or negatives, got {texts!r}")
    batch, group = documents.shape[:2]
    example = jnp.ones((batch,), bool) if example_mask is None else example_mask.astype(bool)
    document = jnp.ones((batch, group), bool) if document_mask is None else document_mask.astype(bool)
    document = document & example[:, None]
    parts, masks = [], []
    if "queries" in texts:
        parts.append(query)
        masks.append(example)
    if "positives" in texts:
        parts.append(documents[:, 0])
        masks.append(document[:, 0])
    if "negatives" in texts and group > 1:
        parts.append(documents[:, 1:].reshape(batch * (group - 1), documents.shape[-1]))
        masks.append(document[:, 1:].reshape(-1))
    if not parts:  # only "negatives" asked for and there are none: no rows
        return jnp.zeros((0, documents.shape[-1]), documents.dtype), jnp.zeros((0,), bool)
    return jnp.concatenate(parts, axis=0), jnp.concatenate(masks, axis=0)


def pair_objective(
    query_outputs: Mapping[str, Array],
    document_outputs: Mapping[str, Array],
    teacher_query: Array,
    teacher_documents: Array,
    example_mask: Array | None = None,
    document_mask: Array | None = None,
    document_ids: Array | None = None,
    *,
    config: ObjectiveConfig = ObjectiveConfig(),
) -> tuple[Array, dict[str, Array]]:
    """The stage loss of a pair batch: distillation + contrastive learning (arXiv 2511.14405, stage 4).

    total = infonce_weight * InfoNCE(full head) + score_kl_weight * KL(full head vs teacher)
            + `distillation_objective` over the texts named by `pair_distill_texts` (every head, its own
              cosine / similarity / relative-similarity weights; skipped when the tuple is empty).
    `query_outputs[head]` is (B, D_head), `document_outputs[head]` (B, G, D_head); the teachers are
    (B, D_t) and (B, G, D_t). Metrics: `loss`, `valid_rows` (counting queries), `infonce`, `score_kl`
    and the distillation terms under their usual names (`distill/valid_rows` its rows).
    """
    head = config.full_head
    if head not in query_outputs or head not in document_outputs:
        raise ValueError(f"the objective's full head {head!r} is not among the outputs {sorted(query_outputs)}")
    if sorted(query_outputs) != sorted(document_outputs):
        raise ValueError(
            f"query and document outputs have different heads: {sorted(query_outputs)}, {sorted(document_outputs)}"
        )
    for name in query_outputs:
        _check_pair_inputs(query_outputs[name], document_outputs[name], example_mask, document_mask, document_ids)
    _check_pair_inputs(teacher_query, teacher_documents, None, None, None, what="teacher_")
    for name, value in (("infonce_weight", config.infonce_weight), ("score_kl_weight", config.score_kl_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    _check_temperature("infonce_temperature", config.infonce_temperature)
    _check_temperature("score_kl_student_temperature", config.score_kl_student_temperature)
    _check_temperature("score_kl_teacher_temperature", config.score_kl_teacher_temperature)
    inputs = _opaque(
        dict(query_outputs),
        dict(document_outputs),
        teacher_query,
        teacher_documents,
        example_mask,
        document_mask,
        document_ids,
    )
    query_outputs, document_outputs, teacher_query, teacher_documents, example_mask, document_mask, document_ids = (
        inputs
    )

    q, q_nonzero = _normalize_rows(query_outputs[head])
    d, d_nonzero = _normalize_documents(document_outputs[head])
    tq, tq_nonzero = _normalize_rows(teacher_query)
    td, td_nonzero = _normalize_documents(teacher_documents)
    validity = _pair_validity(q_nonzero & tq_nonzero, d_nonzero & td_nonzero, example_mask, document_mask, document_ids)
    student_scores = _scores(q, d)
    infonce = _infonce(student_scores, validity, config.infonce_temperature)
    score_kl = _score_kl(
        student_scores,
        _scores(tq, td),
        validity,
        config.score_kl_student_temperature,
        config.score_kl_teacher_temperature,
    )
    total = config.infonce_weight * infonce + config.score_kl_weight * score_kl
    metrics: dict[str, Array] = {"infonce": infonce, "score_kl": score_kl}
    if config.pair_distill_texts:
        teacher_rows, rows_mask = pair_texts(
            teacher_query, teacher_documents, config.pair_distill_texts, example_mask, document_mask
        )
        if teacher_rows.shape[0]:
            student_rows = {
                name: pair_texts(query_outputs[name], document_outputs[name], config.pair_distill_texts)[0]
                for name in query_outputs
            }
            distill_total, distill_metrics = distillation_objective(
                student_rows, teacher_rows, rows_mask, config=config
            )
            total = total + distill_total
            distill_metrics["distill/valid_rows"] = distill_metrics.pop("valid_rows")
            distill_metrics["distill/loss"] = distill_metrics.pop("loss")
            metrics.update(distill_metrics)
    metrics["loss"] = total
    metrics["valid_rows"] = jnp.sum(validity.rows).astype(jnp.float32)
    return total, metrics
