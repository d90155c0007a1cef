"""Stage 4: the image-caption objective and a sharded step that changes only the vision tower."""

import jax
import numpy as np
from flax import nnx

from jasper_jax.losses import ObjectiveConfig, cosine_loss, relative_similarity_loss, similarity_loss
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.image_stage import (
    DEFAULT_TRAINABLE,
    IMAGE_BATCH_KEYS,
    image_caption_forward,
    image_caption_objective,
    image_objective,
)
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.vision.vision_helpers import TINY_BERT, image_inputs, images, vision_student


def _batch(batch_size=8, seed=0):
    ids, mask = image_inputs(batch_size)
    rng = np.random.default_rng(seed)
    caption_mask = (np.arange(8)[None] < rng.integers(3, 9, (batch_size, 1))).astype(np.int32)
    caption_ids = rng.integers(3, 60, (batch_size, 8)).astype(np.int32) * caption_mask
    row_mask = np.ones(batch_size, bool)
    row_mask[-1] = False  # a padding row
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": images(batch_size, seed),
        "caption_ids": caption_ids,
        "caption_mask": caption_mask,
        "row_mask": row_mask,
    }


def test_objective_averages_the_three_weighted_losses_over_heads():
    rng = np.random.default_rng(0)
    images_out = {"fc1": rng.standard_normal((6, 8)), "fc2": rng.standard_normal((6, 4))}
    captions = {"fc1": rng.standard_normal((6, 8)), "fc2": rng.standard_normal((6, 4))}
    mask = np.array([1, 1, 1, 1, 1, 0], bool)
    loss, metrics = image_caption_objective(images_out, captions, mask)
    expected = np.mean(
        [
            10 * cosine_loss(images_out[h], captions[h], mask)
            + 200 * similarity_loss(images_out[h], captions[h], mask)
            + 20 * relative_similarity_loss(images_out[h], captions[h], mask=mask)
            for h in ("fc1", "fc2")
        ]
    )
    assert abs(float(loss) - float(expected)) < 1e-5 * max(1.0, abs(float(expected)))
    assert {"cosine/fc2", "similarity/fc1", "relative_similarity/fc2", "loss"} <= set(metrics)
    # identical image and caption vectors: cosine and similarity vanish
    _, same = image_caption_objective(captions, captions, mask)
    assert max(abs(float(same[f"{kind}/{h}"])) for kind in ("cosine", "similarity") for h in captions) < 1e-6


def test_step_changes_only_vision_parameters():
    """On 8 devices (data 4 x fsdp 2); the Qwen2 student's image path is covered by test_image_tokens."""
    model = vision_student(TINY_BERT)
    before = {
        optimizer_lib.path_string(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, DEFAULT_TRAINABLE)
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.0), 1e-2, 10)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 4, "fsdp": 2}, jax.devices())
    rules = sharding_lib.rules_from_config(None)
    shardings = step_lib.step_shardings(mesh, rules, state, frozen, rest, batch_keys=IMAGE_BATCH_KEYS)
    fn = step_lib.train_step_fn(
        graphdef,
        tx,
        image_objective(ObjectiveConfig(margin=0.015)),
        schedule,
        activation_sharding=sharding_lib.activation_sharding(mesh),
        forward=image_caption_forward,
    )
    step = step_lib.jit_train_step(fn, shardings, mesh)
    state, frozen, rest = (
        step_lib.place(x, s) for x, s in ((state, shardings.state), (frozen, shardings.frozen), (rest, shardings.rest))
    )
    losses = []
    for _ in range(3):
        state, metrics = step(state, frozen, rest, step_lib.place(_batch(seed=0), shardings.batch))
        losses.append(float(metrics["loss"]))
        assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0, metrics
    assert losses[-1] < losses[0], losses
    trained = {optimizer_lib.path_string(p) for p, _ in nnx.to_flat_state(state.params)}
    assert trained == {name for name in before if name.startswith("vision/tower/")}
    for path, value in nnx.to_flat_state(state.params):
        name = optimizer_lib.path_string(path)
        assert not np.array_equal(np.asarray(value[...]), before[name]), f"{name} did not change"
    for path, value in nnx.to_flat_state(frozen):
        name = optimizer_lib.path_string(path)
        assert np.array_equal(np.asarray(value[...]), before[name]), f"frozen {name} changed"
