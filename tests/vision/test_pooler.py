"""The parameter-free pooler against torch.nn.AdaptiveAvgPool2d on the (patches, vision_hidden) matrix."""

import numpy as np
import pytest
import torch

from jasper_jax.models.vision_pooler import adaptive_average_matrix, adaptive_average_pool

SHAPES = [
    # (patches, vision_hidden) -> (n_tokens, lm_hidden)
    ((16, 32), (4, 8)),  # divides evenly
    ((16, 32), (5, 48)),  # rows uneven (overlapping windows), columns upsampled
    ((29, 31), (7, 13)),  # neither divides
    ((9, 12), (12, 20)),  # both upsampled
    ((16, 32), (16, 32)),  # identity
    ((729, 1152), (300, 1536)),  # the paper: so400m tokens -> 300 Qwen2 rows
]


@pytest.mark.parametrize("source,target", SHAPES)
def test_matches_torch_adaptive_avg_pool2d(source, target):
    tokens = np.random.default_rng(sum(source + target)).standard_normal((2, *source)).astype(np.float32)
    with torch.no_grad():
        expected = torch.nn.AdaptiveAvgPool2d(target)(torch.from_numpy(tokens)).numpy()  # (C=batch, H, W)
    ours = np.asarray(adaptive_average_pool(tokens, *target))
    assert ours.shape == expected.shape == (2, *target)
    error = np.abs(ours - expected).max()
    assert error < 1e-5, f"max |ours - AdaptiveAvgPool2d| = {error} for {source} -> {target}"


def test_has_no_parameters_and_rows_are_averages():
    matrix = adaptive_average_matrix(7, 3)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)
    # torch's windows for 7 -> 3: [0, 3), [2, 5), [4, 7)
    assert [tuple(np.flatnonzero(row)) for row in matrix] == [(0, 1, 2), (2, 3, 4), (4, 5, 6)]
    with pytest.raises(ValueError, match="positive"):
        adaptive_average_matrix(0, 3)
