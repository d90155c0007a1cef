"""The parameter-free pooler between the vision tower and the language model.

Jasper turns the tower's (patches, vision_hidden) token matrix (so400m: 729 x 1152) into
(n_tokens, lm_hidden) rows (paper: 300 x 1536) with `torch.nn.AdaptiveAvgPool2d((n_tokens, lm_hidden))`
applied to the matrix as a one-channel image. Adaptive average pooling is separable: output cell (i, j)
is the mean of input rows [floor(i*H/h), ceil((i+1)*H/h)) and columns [floor(j*W/w), ceil((j+1)*W/w)).
So it is `P_rows @ X @ P_cols^T` with two constant averaging matrices (built with NumPy from the static
shapes); windows may overlap or repeat (upsampling, as 1152 -> 1536) exactly as in torch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=64)
def adaptive_average_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix whose row i averages torch's adaptive window i."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"adaptive pooling needs positive sizes, got in_size={in_size}, out_size={out_size}")
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix.astype(np.float32)


def adaptive_average_pool(tokens: Array, n_tokens: int, hidden: int) -> Array:
    """`AdaptiveAvgPool2d((n_tokens, hidden))` on each (patches, vision_hidden) matrix of `tokens` (..., P, V).

    Returns (..., n_tokens, hidden) float32."""
    patches, width = tokens.shape[-2:]
    rows = jnp.asarray(adaptive_average_matrix(patches, n_tokens))
    cols = jnp.asarray(adaptive_average_matrix(width, hidden))
    x = tokens.astype(jnp.float32)
    x = jnp.einsum("np,...pv->...nv", rows, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("...nv,hv->...nh", x, cols, precision=jax.lax.Precision.HIGHEST)
