"""Remat with frozen layers: the step builds frozen Variables outside the gradient trace (stage 2's frozen
layers, stage 4's text encoder); rematerialised layers must not write back into them."""

import jax
import numpy as np
from flax import nnx

from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train.image_stage import DEFAULT_TRAINABLE, image_caption_forward, image_caption_objective
from tests.vision.vision_helpers import TINY_QWEN2, image_inputs, images, vision_student


def test_stage4_gradients_with_remat_equal_those_without():
    batch = dict(zip(("input_ids", "attention_mask"), image_inputs(4)), pixel_values=images(4))
    batch["caption_ids"] = np.array([[5, 6, 7, 0]] * 2 + [[8, 9, 0, 0]] * 2, np.int32)
    batch["caption_mask"] = (batch["caption_ids"] != 0).astype(np.int32)
    grads = []
    for remat in (False, True):
        graphdef, trainable, frozen, rest = optimizer_lib.split_model(
            vision_student(TINY_QWEN2, remat=remat), DEFAULT_TRAINABLE
        )

        @jax.jit
        def gradient(params, frozen, rest):
            def loss(params):
                model = nnx.merge(graphdef, params, frozen, rest)  # noqa: B023 (called in this iteration)
                images_out, captions = image_caption_forward(model, batch, True)
                return image_caption_objective(images_out, captions)[0]

            return jax.grad(loss)(params)

        grads.append(jax.tree.leaves(gradient(trainable, frozen, rest)))
    scale = max(float(np.abs(g).max()) for g in grads[0])  # the loss weights (200, 20) make gradients large
    for plain, rematerialised in zip(*grads):
        np.testing.assert_allclose(plain, rematerialised, atol=1e-6 * scale)
    assert max(float(np.abs(g).max()) for g in grads[0]) > 0
