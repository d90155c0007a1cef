"""Parameter names: nnx paths and jax tree paths give the same string; flat <-> nested; assignment."""

import jax
import numpy as np
from flax import nnx

from jasper_jax.models import BertConfig, JasperStudent, StudentConfig
from jasper_jax.models.params import (
    assign_params,
    fill_state,
    flat_params,
    flatten_tree,
    param_shapes,
    path_string,
    state_to_tree,
    tree_get,
    tree_paths,
    unflatten_tree,
)

TINY = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=32,
)


def student(heads=None, seed=0):
    return JasperStudent(StudentConfig(encoder=TINY, heads=heads or {"fc1": 8, "fc2": 4}), rngs=nnx.Rngs(seed))


def test_nnx_paths_and_jax_tree_paths_name_a_parameter_alike():
    state = nnx.state(student(), nnx.Param)
    from_nnx = [path_string(path) for path, _ in nnx.to_flat_state(state)]
    from_jax = [path_string(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert sorted(from_nnx) == sorted(from_jax), (from_nnx[:3], from_jax[:3])
    assert "heads/fc1/kernel" in from_nnx and "encoder/layers/1/mlp_norm/scale" in from_nnx
    assert path_string(("encoder", "layers", 3, "value")) == "encoder/layers/3"


def test_flat_and_nested_views_agree():
    model = student()
    flat = flat_params(model)
    tree = state_to_tree(nnx.state(model, nnx.Param))
    assert flatten_tree(tree).keys() == flat.keys()
    assert unflatten_tree(flatten_tree(tree)).keys() == tree.keys()
    assert tree_paths(tree) == {tuple(name.split("/")) for name in flat}
    np.testing.assert_array_equal(tree_get(tree, ("heads", "fc2", "bias")), flat["heads/fc2/bias"])
    assert param_shapes(model) == {name: value.shape for name, value in flat.items()}
    assert param_shapes(nnx.eval_shape(lambda: student())) == param_shapes(model)


def test_assign_and_fill_take_nested_or_flat_values_and_skip_unknown_names():
    source, target = flat_params(student(seed=1)), student(heads={"fc1": 8}, seed=2)
    before = flat_params(target)
    assign_params(target, source)  # the source's fc2 does not exist in the target
    after = flat_params(target)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[name], source[name]) for name in after)

    state = nnx.state(student(seed=3), nnx.Param)
    kernel = np.full((16, 8), 0.5, np.float32)
    from_nested = flat_params(fill_state(state, {"heads": {"fc1": {"kernel": kernel}}}))
    from_flat = flat_params(fill_state(state, {"heads/fc1/kernel": kernel, "heads/fc9/kernel": kernel}))
    np.testing.assert_array_equal(from_nested["heads/fc1/kernel"], kernel)
    assert all(np.array_equal(from_nested[name], from_flat[name]) for name in from_nested)
    untouched = flat_params(state)
    assert np.array_equal(from_flat["heads/fc2/kernel"], untouched["heads/fc2/kernel"])
