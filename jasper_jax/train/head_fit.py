"""`head_init="fit"`: new heads start from a closed-form fit on the stage's own data instead of at random.

Stage 1 trains one linear head on a frozen encoder; its optimum under a squared-error stand-in for the
cosine loss has a closed form. Starting there lets a short run (the CPU demo) spend its steps on what the
paper's losses add, instead of on walking a random head to the obvious solution. For a stage's new heads:

- a head as wide as the teacher vector: ridge regression, with a bias, of the (row-normalised) teacher
  vectors scaled by the norm of the pooled output, `[x, 1] W~ ~ |x| y`, ridge `r * trace(G) / (h + 1)` on
  the Gram matrix G. The head's output is normalised, so only its direction matters: scaling the target by
  |x| makes the fit a regression of directions, `|x|^2 |W x/|x| + b/|x| - y|^2`, that ignores how long each
  text's pooled vector is. A teacher whose vector is the student's own normalised pooled output (the demo's
  MiniLM; Jasper's Stella, whose student starts as Stella) then has an exact fit, the identity; against
  the plain target `y` no linear map reproduces `x / |x|`, and the fitted head started far from that
  teacher's similarities (held-out similarity MSE 0.0108 against 0.0023: benchmarks/head_fit_start.py,
  RESULTS.md runs P-U).
  Each output column has its own ridge r, the one of `RIDGES` with the smallest error on every 4th
  batch when fitted on the others: a fit on a few thousand texts overfits the columns that the pooled
  output predicts badly, while the columns it predicts exactly need no shrinkage. The head is then
  refitted on all batches with those ridges;
- a narrower head of width d: the d leading principal directions of the full head's output (uncentred, so
  the mean direction that cosine similarity sees is kept): the kernel `[W; b] V_d` where V_d are the top-d
  right singular vectors of `R [W; b]`, `R^T R = G`; the best rank-d reproduction of the full head's
  similarities on this data. The full head is the fitted one if it is new, else the loaded one. A head
  wider than h + 1 (only with a tiny encoder) gets the full head's first columns for the directions the
  data does not span.

The statistics are sums over `batches` global batches of a separate iterator over the training store
(the training iterator's position is untouched, so resume is unaffected); the jitted function returns
small replicated matrices, so it runs unchanged on a multi-host mesh. The solves are float64 NumPy on the
host: (h + 1)^2 and (h + 1) x D matrices (h = 1536, D = 12288 at paper scale: 75 MB).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

RIDGE = 1e-4
RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
VALIDATION_EVERY = 4  # batch i is a validation batch when i % 4 == 3


def feature_statistics(
    graphdef: nnx.GraphDef, states: tuple, batches: Iterator[Mapping[str, jax.Array]], count: int
) -> dict[str, np.ndarray]:
    """Sums over `count` batches: `gram` = sum [x,1][x,1]^T ((h+1)^2) and `cross` = sum [x,1] (|x| y)^T
    ((h+1) x D), x the pooled output (float32 compute), y the row-normalised teacher vector; masked rows
    excluded. Every 4th batch's sums are also kept apart (`validation_*`) and the others' (`fit_*`)."""

    @jax.jit
    def sums(states, batch):
        model = nnx.merge(graphdef, *states)
        pooled = model.pooled(batch["input_ids"], batch["attention_mask"]).astype(jnp.float32)
        weight = batch["row_mask"].astype(jnp.float32)[:, None]
        augmented = jnp.concatenate([pooled, jnp.ones_like(pooled[:, :1])], axis=1) * weight
        teacher = batch["teacher"].astype(jnp.float32)
        teacher = teacher / jnp.maximum(jnp.linalg.norm(teacher, axis=1, keepdims=True), 1e-12)
        teacher = teacher * jnp.linalg.norm(pooled, axis=1, keepdims=True)  # a regression of directions
        hp = jax.lax.Precision.HIGHEST
        return {
            "gram": jnp.matmul(augmented.T, augmented, precision=hp),
            "cross": jnp.matmul(augmented.T, teacher, precision=hp),
            "rows": jnp.sum(weight),
        }

    totals: dict[str, dict[str, np.ndarray]] = {}
    for index in range(count):
        part = {
            key: np.asarray(jax.device_get(value), np.float64) for key, value in sums(states, next(batches)).items()
        }
        role = "validation" if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "fit"
        totals[role] = part if role not in totals else {key: totals[role][key] + part[key] for key in part}
    if "fit" not in totals or totals["fit"]["rows"] < 1:
        raise ValueError("head fit: the batches held no valid rows")
    total = dict(totals["fit"])
    if "validation" in totals:
        total = {key: total[key] + totals["validation"][key] for key in total}
        total.update({f"validation_{key}": value for key, value in totals["validation"].items()})
        total.update({f"fit_{key}": value for key, value in totals["fit"].items()})
    return total


def validated_ridge(statistics: Mapping[str, np.ndarray], ridges=RIDGES) -> np.ndarray:
    """(D,): for each output column, the ridge of `ridges` whose fit on the fit batches has the smallest
    squared error on the validation batches (column j: w_j^T G w_j - 2 w_j^T c_j + const); `RIDGE` for
    every column without validation batches."""
    columns = statistics["cross"].shape[1]
    if "validation_gram" not in statistics or statistics["validation_rows"] < 1:
        return np.full(columns, RIDGE)
    errors = []
    for ridge in ridges:
        weights = ridge_head(statistics["fit_gram"], statistics["fit_cross"], ridge)
        errors.append(
            np.sum(weights * (statistics["validation_gram"] @ weights), axis=0)
            - 2 * np.sum(weights * statistics["validation_cross"], axis=0)
        )
    return np.asarray(ridges, np.float64)[np.argmin(np.stack(errors), axis=0)]


def ridge_head(gram: np.ndarray, cross: np.ndarray, ridge: float | np.ndarray = RIDGE) -> np.ndarray:
    """`[W; b]` ((h+1) x D): column j minimises |[x,1] w_j - y_j|^2 + r_j * trace(G)/(h+1) * |w_j|^2, with
    r_j = `ridge` (one value, or one per column); one solve per distinct ridge."""
    size = gram.shape[0]
    ridges = np.broadcast_to(np.asarray(ridge, np.float64), (cross.shape[1],))
    scale = np.trace(gram) / size
    weights = np.zeros_like(cross, dtype=np.float64)
    for value in np.unique(ridges):
        columns = ridges == value
        weights[:, columns] = np.linalg.solve(gram + value * scale * np.eye(size), cross[:, columns])
    return weights


def describe_ridges(ridges: np.ndarray) -> str:
    """'1e-06 x 384, 0.3 x 600, ...': how many output columns got each ridge."""
    values, counts = np.unique(np.asarray(ridges), return_counts=True)
    return ", ".join(f"{value:g} x {count}" for value, count in zip(values, counts))


def principal_head(gram: np.ndarray, full: np.ndarray, dim: int) -> np.ndarray:
    """`[W; b] V_d` ((h+1) x d): the full head `[W; b]` projected on the top-`dim` principal directions of
    its uncentred output on the data whose Gram matrix is `gram`."""
    if dim > full.shape[1]:
        raise ValueError(f"head fit: a head of {dim} dims cannot be narrowed from one of {full.shape[1]}")
    values, vectors = np.linalg.eigh(gram)  # G = Q diag(values) Q^T; G may be singular (LayerNorm'd features)
    root = np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T  # root^T root = G
    _, _, right = np.linalg.svd(root @ full, full_matrices=False)
    principal = full @ right[:dim].T
    if principal.shape[1] < dim:  # wider than the rank of the data (a tiny encoder): the full head's first columns
        principal = np.concatenate([principal, full[:, : dim - principal.shape[1]]], axis=1)
    return principal


def fitted_heads(
    statistics: Mapping[str, np.ndarray],
    new_heads: Mapping[str, int],
    teacher_dim: int,
    existing: Mapping[str, Mapping[str, Any]],
    ridge: float | np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """{head: {"kernel": (h, d), "bias": (d,)}} for each new head (float32).

    `existing`: heads already trained ({name: {"kernel", "bias"}}); a narrower new head is derived from the
    widest head of `teacher_dim` dims, fitted here when new, else taken from `existing`. `ridge`: that of
    the wide fit (default: `validated_ridge(statistics)`)."""
    gram, cross = statistics["gram"], statistics["cross"]
    if cross.shape[1] != teacher_dim:
        raise ValueError(f"head fit: teacher vectors have {cross.shape[1]} dims, expected {teacher_dim}")
    full = None
    out: dict[str, dict[str, np.ndarray]] = {}
    if teacher_dim in new_heads.values():
        full = ridge_head(gram, cross, validated_ridge(statistics) if ridge is None else ridge)
    else:
        source = next((head for head in existing.values() if np.shape(head["kernel"])[1] == teacher_dim), None)
        if source is not None:
            full = np.concatenate(
                [np.asarray(source["kernel"], np.float64), np.asarray(source["bias"], np.float64)[None, :]], axis=0
            )
    for name, dim in new_heads.items():
        if full is None:
            raise ValueError(
                f"head fit: head {name!r} ({dim}) is narrower than the teacher ({teacher_dim}) and "
                f"no head of {teacher_dim} dims exists to narrow; add one or use head_init='random'"
            )
        augmented = full if dim == teacher_dim else principal_head(gram, full, dim)
        out[name] = {"kernel": augmented[:-1].astype(np.float32), "bias": augmented[-1].astype(np.float32)}
    return out
